//! The `ws-push` config sections beyond the shared `[nats]`, `[http]`, `[grpc]`, `[log]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::{NatsConfig, Secret};
use switchboard_runtime::{GrpcConfig, HttpConfig, LogConfig, ServiceConfig, Validate};

/// The `ws-push` config: `--config ws-push.toml`, overridden by `SB_*` variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Health, metrics, `/ws`, the site API and `/client.js` listen here; default port 8083.
    pub http: HttpConfig,
    /// gRPC (`PushService`) listens here; default port 9083.
    pub grpc: GrpcConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// This node's name in presence entries and inbound events; empty picks a random one.
    pub node: String,
    /// How browsers prove who they are.
    pub auth: AuthConfig,
    /// WebSocket limits.
    pub ws: WsConfig,
    /// The site API.
    pub api: ApiConfig,
    /// Presence sharing across nodes.
    pub presence: PresenceConfig,
    /// Messages browsers publish.
    pub inbound: InboundConfig,
    /// What this node subscribes to in NATS.
    pub interest: InterestConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            http: HttpConfig::on_port(8083),
            grpc: GrpcConfig::on_port(9083),
            log: LogConfig::default(),
            node: String::new(),
            auth: AuthConfig::default(),
            ws: WsConfig::default(),
            api: ApiConfig::default(),
            presence: PresenceConfig::default(),
            inbound: InboundConfig::default(),
            interest: InterestConfig::default(),
        }
    }
}

/// `[auth]`: JWT verification (HS256 secret and/or a JWKS file for RS256/ES256), or a
/// site callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens (`SB_AUTH__JWT_SECRET`; the same one chat-store uses).
    pub jwt_secret: Option<Secret>,
    /// A JWKS file (`{"keys":[...]}`) with RS256/ES256 public keys, chosen by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Site-callback auth: POST `{"token": ...}` here; a 200 answer with claims JSON
    /// (`sub`, `channels`, `topics`, `admin`, `exp`) accepts the connection.
    pub callback_url: Option<String>,
    /// How long the callback may take.
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            callback_url: None,
            callback_timeout: Duration::from_secs(5),
        }
    }
}

impl AuthConfig {
    /// True when at least one way to accept a token is configured.
    pub fn any(&self) -> bool {
        self.jwt_secret.as_ref().is_some_and(|s| !s.is_empty())
            || self.jwks_file.is_some()
            || self.callback_url.is_some()
    }
}

/// `[ws]`: per-connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Origins allowed to open `/ws` (exact `scheme://host[:port]`); empty allows any
    /// origin (and requests without one, such as native clients).
    pub allowed_origins: Vec<String>,
    /// How long a new connection may take to send its `connect` message.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A connection silent this long after a ping is closed.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Largest frame and message a browser may send.
    pub max_frame_bytes: usize,
    /// tungstenite's read buffer per connection (its default, 128 KiB, is far too much
    /// for many idle connections).
    pub read_buffer_bytes: usize,
    /// tungstenite's write buffer target per connection.
    pub write_buffer_bytes: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer.
    pub max_queued_bytes: usize,
    /// Connections per client IP on this node (0 = unlimited).
    pub max_connections_per_ip: u32,
    /// Connections per user on this node (0 = unlimited).
    pub max_connections_per_user: u32,
    /// Channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Most messages replayed for one recovery; more means `recovered: false`.
    pub max_recover: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            max_frame_bytes: 64 * 1024,
            read_buffer_bytes: 512,
            write_buffer_bytes: 0,
            max_queued_bytes: 1024 * 1024,
            max_connections_per_ip: 0,
            max_connections_per_user: 32,
            max_subscriptions: 128,
            max_recover: 10_000,
        }
    }
}

/// `[api]`: the site API (HTTP JSON and gRPC).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Keys accepted as `Authorization: Bearer <key>` or `X-Api-Key: <key>`; empty
    /// disables the site API (every call gets 401).
    pub keys: Vec<Secret>,
    /// Most items in one batch publish.
    pub max_batch: usize,
}

/// `[presence]`: the shared `SB_PRESENCE` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Entries not refreshed for this long are gone (a dead node's users go offline).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How often a node refreshes its entries and sweeps stale ones.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Push `join`/`leave` to a channel's subscribers when a user enters or leaves it
    /// (on any node).
    pub join_leave: bool,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            join_leave: false,
        }
    }
}

/// `[inbound]`: what a browser may publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// Largest `data` of one inbound message, in bytes of JSON.
    pub max_bytes: usize,
    /// Sustained inbound messages per second per connection.
    pub rate_per_second: f64,
    /// Burst allowance above the rate.
    pub burst: u32,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024,
            rate_per_second: 5.0,
            burst: 10,
        }
    }
}

/// `[interest]`: which re-published pushes this node asks nats-server for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterestConfig {
    /// Users with a connection here get a NATS subscription of their own, up to this
    /// many; past it the node takes every user's pushes through one wildcard
    /// subscription and drops those of users it does not hold. Each subscription
    /// costs about 5.5 KiB in the NATS client (a message queue), which at thousands
    /// of connected users outweighs the connections themselves; 0 always uses the
    /// wildcard. Channels and `all` always get their own.
    pub user_subscriptions: usize,
}

impl Default for InterestConfig {
    fn default() -> Self {
        Self {
            user_subscriptions: 1000,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), String> {
        self.nats.validate().map_err(|e| e.to_string())?;
        if self.node.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'-')) {
            return Err("node must contain only [A-Za-z0-9-]".into());
        }
        let auth = &self.auth;
        if auth.callback_url.is_some() && auth.callback_timeout.is_zero() {
            return Err("auth.callback_timeout must be more than 0".into());
        }
        let ws = &self.ws;
        if ws.max_frame_bytes < 128 {
            return Err("ws.max_frame_bytes must be at least 128".into());
        }
        if ws.read_buffer_bytes == 0 {
            return Err("ws.read_buffer_bytes must be more than 0".into());
        }
        if ws.max_queued_bytes < 1024 {
            return Err("ws.max_queued_bytes must be at least 1024".into());
        }
        if ws.ping_interval.is_zero() || ws.pong_timeout.is_zero() || ws.connect_timeout.is_zero() {
            return Err("ws.ping_interval, ws.pong_timeout and ws.connect_timeout must be more than 0".into());
        }
        for origin in &ws.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) || origin.ends_with('/') {
                return Err(format!(
                    "ws.allowed_origins: {origin:?} must be scheme://host[:port] without a path"
                ));
            }
        }
        if self.presence.heartbeat.is_zero() || self.presence.ttl <= self.presence.heartbeat * 2 {
            return Err("presence.ttl must be more than twice presence.heartbeat (and heartbeat more than 0)".into());
        }
        if !(self.inbound.rate_per_second > 0.0 && self.inbound.rate_per_second.is_finite()) {
            return Err("inbound.rate_per_second must be a positive number".into());
        }
        Ok(())
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl Config {
    /// The largest batch publish; 0 in the file means the default of 1000.
    pub fn max_batch(&self) -> usize {
        if self.api.max_batch == 0 {
            1000
        } else {
            self.api.max_batch
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            auth: AuthConfig {
                jwt_secret: Some(Secret::new("s")),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_valid_and_auth_is_detected() {
        assert_eq!(Config::default().validate(), Ok(()));
        assert!(!Config::default().auth.any());
        assert_eq!(valid().validate(), Ok(()));
        assert!(valid().auth.any());
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = valid();
        config.ws.allowed_origins = vec!["example.com".into()];
        assert!(config.validate().unwrap_err().contains("ws.allowed_origins"));
        let mut config = valid();
        config.presence.ttl = config.presence.heartbeat;
        assert!(config.validate().unwrap_err().contains("presence.ttl"));
        let mut config = valid();
        config.node = "a.b".into();
        assert!(config.validate().unwrap_err().contains("node"));
    }
}
