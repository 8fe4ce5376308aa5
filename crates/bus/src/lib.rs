//! Switchboard's bus conventions, in one place:
//!
//! - [`Subjects`]: every subject under the configurable prefix, and the one reversible
//!   escaping of ids into tokens ([`escape_token`], [`unescape_token`]).
//! - [`CloudEvent`]: CloudEvents 1.0 binary mode over NATS headers.
//! - [`Bus`]: a connected client that publishes events to JetStream with acks,
//!   sends and serves typed commands ([`command`]), and provisions streams and
//!   buckets ([`provision`]).
//! - [`trace`]: W3C trace context through NATS headers.
//! - [`Lease`]: one active holder of a key across replicas.

pub mod cloudevent;
pub mod command;
pub mod config;
pub mod lease;
pub mod provision;
pub mod subject;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, kv, publish::PublishAck};
use serde::Serialize;

pub use cloudevent::{CloudEvent, DecodeError};
pub use command::{Command, CommandError, error_body};
pub use config::{NatsConfig, NatsTls, Secret};
pub use lease::{Lease, LeaseState};
pub use provision::{BucketSpec, StreamSpec};
pub use subject::{CATALOGUE, Subjects, TokenError, escape_token, event_types, unescape_token};

/// What can go wrong on the bus, each naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A `[nats]` setting is wrong.
    #[error("config: {0}")]
    Config(String),
    /// The first connection failed.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The configured URL.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// A stream or bucket could not be created or read.
    #[error("cannot provision {what}: {reason}")]
    Provision {
        /// Which stream or bucket.
        what: String,
        /// What the server said.
        reason: String,
    },
    /// A stream exists with settings we cannot work with.
    #[error(
        "JetStream {name} exists with {field} = {existing}, but Switchboard needs {wanted}; fix or delete the stream"
    )]
    IncompatibleStream {
        /// The stream name.
        name: String,
        /// The setting.
        field: String,
        /// What the server has.
        existing: String,
        /// What we need.
        wanted: String,
    },
    /// A publish failed or was not acknowledged.
    #[error("publish to {subject} failed: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// What the server or client said.
        reason: String,
    },
    /// A subscription failed.
    #[error("subscribe to {subject} failed: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// What the client said.
        reason: String,
    },
    /// A payload could not be encoded.
    #[error("payload does not encode as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The oldest nats-server whose JetStream KV and stream APIs we use.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

fn check_server_version(client: &async_nats::Client, url: &str) -> Result<(), BusError> {
    let version = client.server_info().version;
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_SERVER_VERSION {
        return Err(BusError::Connect {
            url: url.to_owned(),
            reason: format!(
                "nats-server {version} is too old: Switchboard needs {}.{} or later with JetStream (scripts/install-deps.sh installs one)",
                MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
            ),
        });
    }
    if !client.server_info().jetstream {
        return Err(BusError::Connect {
            url: url.to_owned(),
            reason: "JetStream is not enabled on this nats-server (start it with -js)".to_owned(),
        });
    }
    Ok(())
}

struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
    source: String,
    request_timeout: Duration,
    publish_timeout: Duration,
    config: NatsConfig,
}

/// How long [`Bus::publish`] waits for one ack before it sends the same message again.
pub const PUBLISH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connected bus client for one service. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("source", &self.inner.source)
            .field("prefix", &self.inner.subjects.prefix())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects as `service` (used for the client name and the CloudEvents source
    /// `/switchboard/<service>`).
    pub async fn connect(config: &NatsConfig, service: &str) -> Result<Self, BusError> {
        let client = config.connect(service).await?;
        check_server_version(&client, &config.url)?;
        Self::from_client(client, config, service)
    }

    /// Wraps an existing client.
    pub fn from_client(client: async_nats::Client, config: &NatsConfig, service: &str) -> Result<Self, BusError> {
        let subjects = Subjects::new(&config.prefix)?;
        Ok(Self {
            inner: Arc::new(Inner {
                jetstream: jetstream::new(client.clone()),
                client,
                subjects,
                source: format!("/switchboard/{service}"),
                request_timeout: config.request_timeout,
                publish_timeout: config.publish_timeout,
                config: config.clone(),
            }),
        })
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.jetstream
    }

    /// The subject builder for the configured prefix.
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// The CloudEvents source of this service's events.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The `[nats]` config this bus was made from.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// True while the connection to NATS is up.
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// A new event from this service with `data` as JSON.
    pub fn event<T: Serialize + ?Sized>(&self, ty: &str, data: &T) -> Result<CloudEvent, BusError> {
        Ok(CloudEvent::json(self.inner.source.clone(), ty, data)?)
    }

    fn headers_for(event: &CloudEvent) -> HeaderMap {
        let mut headers = HeaderMap::new();
        trace::inject_current(&mut headers);
        event.write_headers(&mut headers);
        headers
    }

    /// Publishes to JetStream (events and pushes) and waits for the ack.
    ///
    /// While NATS is unreachable or restarting it retries the same message, waiting
    /// at most [`PUBLISH_ATTEMPT_TIMEOUT`] for each ack, for up to
    /// `nats.publish_timeout`: the `Nats-Msg-Id` (the event's id) makes JetStream store
    /// it once however many attempts reach it. Only the final failure is returned.
    pub async fn publish(&self, subject: String, event: &CloudEvent) -> Result<PublishAck, BusError> {
        let deadline = tokio::time::Instant::now() + self.inner.publish_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = async {
                let ack = self.publish_async(subject.clone(), event).await?;
                ack.await.map_err(|e| BusError::Publish {
                    subject: subject.clone(),
                    reason: e.to_string(),
                })
            };
            let error = match tokio::time::timeout(PUBLISH_ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(ack)) => return Ok(ack),
                Ok(Err(error)) => error,
                Err(_) => BusError::Publish {
                    subject: subject.clone(),
                    reason: format!("no ack within {PUBLISH_ATTEMPT_TIMEOUT:?}"),
                },
            };
            if tokio::time::Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::debug!(%subject, %error, "publish not acknowledged; retrying the same message");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Publishes to JetStream and returns the ack future, so a producer can keep
    /// many publishes in flight and check the acks as they come.
    ///
    /// `subject` is anything that becomes a NATS subject: a `String`, or a
    /// [`async_nats::Subject`] a producer keeps and clones for each publish (a
    /// reference count, where a `String` is copied into a new buffer every time).
    pub async fn publish_async(
        &self,
        subject: impl Into<async_nats::Subject>,
        event: &CloudEvent,
    ) -> Result<PublishAckFuture, BusError> {
        let subject = subject.into();
        let headers = Self::headers_for(event);
        self.inner
            .jetstream
            .publish_with_headers(subject.clone(), headers, event.data.clone())
            .await
            .map_err(|e| BusError::Publish {
                subject: subject.to_string(),
                reason: e.to_string(),
            })
    }

    /// Publishes on core NATS without storing or acking (ephemeral signals such as
    /// typing indicators).
    pub async fn publish_ephemeral(&self, subject: String, event: &CloudEvent) -> Result<(), BusError> {
        let headers = Self::headers_for(event);
        self.inner
            .client
            .publish_with_headers(subject.clone(), headers, event.data.clone())
            .await
            .map_err(|e| BusError::Publish {
                subject,
                reason: e.to_string(),
            })
    }

    /// Creates or checks `SB_EVENTS` and `SB_PUSH`. Every service calls this at start.
    pub async fn provision_streams(&self) -> Result<(), BusError> {
        let config = &self.inner.config;
        let subjects = &self.inner.subjects;
        provision::ensure_stream(
            &self.inner.jetstream,
            &StreamSpec::events(subjects, config.events_max_age, config.replicas),
        )
        .await?;
        provision::ensure_stream(
            &self.inner.jetstream,
            &StreamSpec::pushes(subjects, config.push_max_age, config.replicas),
        )
        .await?;
        Ok(())
    }

    /// Creates or checks the KV bucket `<PREFIX>_<kind>` (e.g. `SB_LEASES`).
    pub async fn bucket(&self, kind: &str, max_age: Duration, history: i64) -> Result<kv::Store, BusError> {
        provision::ensure_bucket(
            &self.inner.jetstream,
            &BucketSpec {
                name: self.inner.subjects.stream_name(kind),
                max_age,
                history,
                replicas: self.inner.config.replicas,
            },
        )
        .await
    }
}
