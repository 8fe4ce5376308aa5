//! How to reach NATS, and the one function that connects.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BusError;

/// A secret from config: readable by code, never printed by `Debug` or logs.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

/// TLS to the NATS server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsTls {
    /// Require TLS even when the server does not ask for it.
    pub required: bool,
    /// PEM file of CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

/// The `[nats]` section every service shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subject prefix for every Switchboard subject (default `sb`).
    pub prefix: String,
    /// User for user/password auth.
    pub user: Option<String>,
    /// Password for user/password auth.
    pub password: Option<Secret>,
    /// Token auth.
    pub token: Option<Secret>,
    /// A `.creds` file (JWT + NKey) for decentralised auth.
    pub creds_file: Option<PathBuf>,
    /// TLS settings.
    pub tls: NatsTls,
    /// How long the first connection may take before start-up fails.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Default timeout of command requests.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long [`crate::Bus::publish`] keeps retrying one event (same `Nats-Msg-Id`,
    /// so JetStream stores it once) while NATS is unreachable, before it fails. Keep
    /// it under the streams' two-minute duplicate window.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long `SB_EVENTS` keeps events.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// How long `SB_PUSH` keeps pushes for browsers to recover.
    #[serde(with = "humantime_serde")]
    pub push_max_age: Duration,
    /// JetStream replicas for the streams and buckets this service creates.
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: "sb".to_owned(),
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls: NatsTls::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(30),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            push_max_age: Duration::from_secs(300),
            replicas: 1,
        }
    }
}

impl NatsConfig {
    /// Checks what can be checked without connecting; errors name the key.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.url.trim().is_empty() {
            return Err(BusError::Config("nats.url must not be empty".into()));
        }
        crate::Subjects::new(&self.prefix)?;
        if self.password.is_some() && self.user.is_none() {
            return Err(BusError::Config("nats.password is set but nats.user is not".into()));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(BusError::Config(
                "nats.tls.cert_file and nats.tls.key_file must be set together".into(),
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(BusError::Config("nats.replicas must be 1 to 5".into()));
        }
        if self.push_max_age.is_zero() {
            return Err(BusError::Config("nats.push_max_age must be more than 0".into()));
        }
        Ok(())
    }

    /// Connects with the configured auth and TLS. The first connection must succeed
    /// within `connect_timeout`; after that the client reconnects forever, quickly
    /// (100 ms steps up to 1 s), so services are back within ~1 s of NATS returning.
    pub async fn connect(&self, client_name: &str) -> Result<async_nats::Client, BusError> {
        self.validate()?;
        let mut options = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| BusError::Config(format!("nats.creds_file {}: {e}", path.display())))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(ca) = &self.tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert_file, &self.tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let name = client_name.to_owned();
        options = options
            .require_tls(self.tls.required)
            .name(client_name)
            .connection_timeout(self.connect_timeout)
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).clamp(100, 1000)))
            .event_callback(move |event| {
                let name = name.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(client = %name, "nats connected"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!(client = %name, "nats disconnected; reconnecting")
                        }
                        other => tracing::debug!(client = %name, event = %other, "nats event"),
                    }
                }
            });
        let connect = options.connect(self.url.as_str());
        match tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(BusError::Connect {
                url: self.url.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(BusError::Connect {
                url: self.url.clone(),
                reason: format!("no answer within {:?}", self.connect_timeout),
            }),
        }
    }
}
