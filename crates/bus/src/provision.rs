//! Idempotent provisioning of the JetStream streams and KV buckets at start.
//!
//! Creating what is missing is safe from any number of replicas at once. A stream
//! that exists with settings we cannot work with (other subjects, other retention)
//! is an error that names the stream and the setting: we never silently change
//! a stream someone else configured. The one setting we add to an existing stream
//! is its re-publishing (`SB_PUSH` created by an older version has none): it
//! changes nothing stored and nobody else's consumers.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::{BusError, Subjects};

/// What a service wants of one stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stream name, e.g. `SB_EVENTS`.
    pub name: String,
    /// Its subjects.
    pub subjects: Vec<String>,
    /// How long messages are kept.
    pub max_age: Duration,
    /// The de-duplication window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Replicas.
    pub replicas: usize,
    /// Where the stream re-publishes what it stored, if anywhere.
    pub republish: Option<stream::Republish>,
}

impl StreamSpec {
    /// `SB_EVENTS`: every event, durable, deduplicated over two minutes.
    pub fn events(subjects: &Subjects, max_age: Duration, replicas: usize) -> Self {
        Self {
            name: subjects.stream_name("EVENTS"),
            subjects: vec![subjects.all_events()],
            max_age,
            duplicate_window: Duration::from_secs(120),
            replicas,
            republish: None,
        }
    }

    /// `SB_PUSH`: deliveries to browsers, kept briefly for recovery, and
    /// re-published once stored on `<prefix>.pushlive.>` for the ws-push nodes.
    pub fn pushes(subjects: &Subjects, max_age: Duration, replicas: usize) -> Self {
        Self {
            name: subjects.stream_name("PUSH"),
            subjects: vec![subjects.all_pushes()],
            max_age,
            duplicate_window: max_age.min(Duration::from_secs(120)),
            replicas,
            republish: Some(stream::Republish {
                source: subjects.all_pushes(),
                destination: subjects.all_live_pushes(),
                headers_only: false,
            }),
        }
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            allow_direct: true,
            republish: self.republish.clone(),
            ..Default::default()
        }
    }
}

/// Creates the stream if missing; checks it if present. Returns the stream.
pub async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<stream::Stream, BusError> {
    let mut stream = js
        .get_or_create_stream(spec.config())
        .await
        .map_err(|e| BusError::Provision {
            what: format!("stream {}", spec.name),
            reason: e.to_string(),
        })?;
    let info = stream.info().await.map_err(|e| BusError::Provision {
        what: format!("stream {}", spec.name),
        reason: e.to_string(),
    })?;
    let config = &info.config;
    let incompatible = |field: &str, existing: String, wanted: String| BusError::IncompatibleStream {
        name: spec.name.clone(),
        field: field.to_owned(),
        existing,
        wanted,
    };
    for subject in &spec.subjects {
        if !config.subjects.contains(subject) {
            return Err(incompatible(
                "subjects",
                format!("{:?}", config.subjects),
                format!("{:?}", spec.subjects),
            ));
        }
    }
    if config.retention != stream::RetentionPolicy::Limits {
        return Err(incompatible(
            "retention",
            format!("{:?}", config.retention),
            "Limits".into(),
        ));
    }
    if config.duplicate_window.is_zero() {
        return Err(incompatible(
            "duplicate_window",
            "0s".into(),
            format!("{:?}", spec.duplicate_window),
        ));
    }
    if spec.republish.is_some() && config.republish != spec.republish {
        let mut updated = config.clone();
        updated.republish = spec.republish.clone();
        js.update_stream(&updated).await.map_err(|e| BusError::Provision {
            what: format!("stream {} (republish)", spec.name),
            reason: e.to_string(),
        })?;
        tracing::info!(stream = %spec.name, "stream now re-publishes what it stores");
    }
    Ok(stream)
}

/// What a service wants of one KV bucket.
#[derive(Debug, Clone)]
pub struct BucketSpec {
    /// Bucket name, e.g. `SB_LEASES`.
    pub name: String,
    /// Entries expire this long after their last write (0 = never).
    pub max_age: Duration,
    /// Revisions kept per key.
    pub history: i64,
    /// Replicas.
    pub replicas: usize,
}

/// Creates the bucket if missing; checks its TTL if present.
pub async fn ensure_bucket(js: &jetstream::Context, spec: &BucketSpec) -> Result<kv::Store, BusError> {
    let store = match js.get_key_value(&spec.name).await {
        Ok(store) => store,
        Err(_) => {
            let created = js
                .create_key_value(kv::Config {
                    bucket: spec.name.clone(),
                    history: spec.history,
                    max_age: spec.max_age,
                    num_replicas: spec.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(store) => store,
                // Another replica may have created it between our get and create.
                Err(create_error) => js.get_key_value(&spec.name).await.map_err(|_| BusError::Provision {
                    what: format!("KV bucket {}", spec.name),
                    reason: create_error.to_string(),
                })?,
            }
        }
    };
    let mut backing = js
        .get_stream(format!("KV_{}", spec.name))
        .await
        .map_err(|e| BusError::Provision {
            what: format!("KV bucket {}", spec.name),
            reason: e.to_string(),
        })?;
    let info = backing.info().await.map_err(|e| BusError::Provision {
        what: format!("KV bucket {}", spec.name),
        reason: e.to_string(),
    })?;
    if info.config.max_age != spec.max_age {
        return Err(BusError::IncompatibleStream {
            name: format!("KV_{}", spec.name),
            field: "max_age".into(),
            existing: format!("{:?}", info.config.max_age),
            wanted: format!("{:?}", spec.max_age),
        });
    }
    Ok(store)
}
