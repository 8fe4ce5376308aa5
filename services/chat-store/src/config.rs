//! The `chat-store` config: `--config chat-store.toml`, overridden by `SB_*` variables.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::{NatsConfig, Secret};
use switchboard_runtime::{GrpcConfig, HttpConfig, LogConfig, ServiceConfig, Validate};

/// The whole config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// The browser JSON API, health and metrics listen here; default port 8084.
    pub http: HttpConfig,
    /// gRPC `ChatService` listens here; default port 9084.
    pub grpc: GrpcConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// The SQLite file (when no database URL is set) and local attachments live here.
    pub data_dir: PathBuf,
    /// Where messages are kept.
    pub database: DatabaseConfig,
    /// Limits on messages.
    pub chat: ChatConfig,
    /// Who callers are.
    pub auth: AuthConfig,
    /// The management API (erase a user, set admins).
    pub management: ManagementConfig,
    /// Translation of messages on request (off unless a URL is set).
    pub translate: TranslateConfig,
    /// Image attachments.
    pub attachments: AttachmentsConfig,
    /// The chat widget and the admin console pages.
    pub widget: WidgetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            http: HttpConfig::on_port(8084),
            grpc: GrpcConfig::on_port(9084),
            log: LogConfig::default(),
            data_dir: PathBuf::from("data"),
            database: DatabaseConfig::default(),
            chat: ChatConfig::default(),
            auth: AuthConfig::default(),
            management: ManagementConfig::default(),
            translate: TranslateConfig::default(),
            attachments: AttachmentsConfig::default(),
            widget: WidgetConfig::default(),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...` for PostgreSQL, `sqlite://FILE` for another SQLite file;
    /// empty keeps SQLite in `data_dir/chat.db`.
    pub url: Secret,
    /// Pooled database connections.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            max_connections: 8,
        }
    }
}

/// `[chat]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Longest message text, in characters (Unicode scalar values).
    pub max_text_chars: usize,
    /// How long after sending a user may edit or delete their message.
    #[serde(with = "humantime_serde")]
    pub edit_window: Duration,
    /// Requests per minute one user may make (sustained).
    pub rate_per_minute: u32,
    /// Requests one user may make in a burst.
    pub rate_burst: u32,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            edit_window: Duration::from_secs(15 * 60),
            rate_per_minute: 120,
            rate_burst: 30,
        }
    }
}

/// `[auth]`: JWT and/or the seed's per-user key checked by the site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret shared with the site (and ws-push): tokens with `sub`, `admin`, `exp`.
    pub jwt_secret: Secret,
    /// The seed's `URL_getUsersHash`: POST `id=<user>` answers the user's key.
    pub key_url: String,
    /// The seed's `URL_getUsersInfo`: POST `users=1,2` answers a JSON array of users.
    pub users_url: String,
    /// How long fetched user details (and keys) stay cached.
    #[serde(with = "humantime_serde")]
    pub users_ttl: Duration,
    /// How long to wait for the site.
    #[serde(with = "humantime_serde")]
    pub site_timeout: Duration,
    /// Users who are admins whatever their token says (the seed's `admin_ids`).
    pub admin_ids: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::default(),
            key_url: String::new(),
            users_url: String::new(),
            users_ttl: Duration::from_secs(300),
            site_timeout: Duration::from_secs(5),
            admin_ids: Vec::new(),
        }
    }
}

/// `[management]`: the API a site's backend uses (and the gRPC API's key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Callers send it as `Authorization: Bearer <key>` (HTTP) or `x-api-key` (gRPC).
    /// Empty disables the management API and gRPC.
    pub api_key: Secret,
    /// Addresses allowed to call it (the seed's `trusted_ip`); empty allows none.
    pub trusted_ips: Vec<IpAddr>,
}

/// `[translate]`: a LibreTranslate-compatible API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranslateConfig {
    /// Base URL (`http://translator:5000`); empty turns translation off.
    pub url: String,
    /// Sent as `api_key` when set.
    pub api_key: Secret,
    /// How long to wait for a translation.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            api_key: Secret::default(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[attachments]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// The largest upload, in bytes.
    pub max_bytes: usize,
    /// The largest width or height accepted, in pixels.
    pub max_dimension: u32,
    /// Thumbnails fit in this square, in pixels.
    pub thumbnail_size: u32,
    /// Where files are kept; empty means `data_dir/attachments`. Unused with `url`.
    pub dir: PathBuf,
    /// An S3-compatible bucket instead of `dir`: `s3://bucket` or
    /// `s3://bucket/prefix`; empty keeps files in `dir`.
    pub url: String,
    /// How to reach the bucket of `url`.
    pub s3: S3Config,
}

/// `[attachments.s3]`: the S3 (or S3-compatible: MinIO, Ceph, R2) server. Keys left
/// empty come from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, web identity in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The server's URL (`https://minio.example.com:9000`); empty: AWS.
    pub endpoint: String,
    /// The bucket's region; empty: `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// The access key id; empty: from the environment.
    pub access_key_id: String,
    /// The secret access key; empty: from the environment.
    pub secret_access_key: Secret,
    /// Allows an `http://` endpoint (a server on a private network); off: TLS only.
    pub allow_http: bool,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        Self {
            max_bytes: 5 * 1024 * 1024,
            max_dimension: 8192,
            thumbnail_size: 256,
            dir: PathBuf::new(),
            url: String::new(),
            s3: S3Config::default(),
        }
    }
}

/// `[widget]`: what the widget and the admin console need to know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WidgetConfig {
    /// ws-push's WebSocket URL (`wss://push.example.com/ws`), told to pages by
    /// `GET /api/v1/me` and allowed by their Content-Security-Policy; empty: no live
    /// updates unless the page passes `push` to `SwitchboardChat.init`.
    pub push_url: String,
    /// Origins (`https://www.example.com`) whose pages may call the API from the
    /// browser (CORS), for the widget embedded in another site; empty: same origin only.
    pub allowed_origins: Vec<String>,
}

impl WidgetConfig {
    /// The `scheme://host[:port]` of `push_url`, empty when it is not set.
    pub fn push_origin(&self) -> &str {
        let url = self.push_url.as_str();
        let Some((scheme, rest)) = url.split_once("://") else {
            return "";
        };
        let host_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        &url[..scheme.len() + 3 + host_len]
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), String> {
        self.nats.validate().map_err(|e| e.to_string())?;
        let url = self.database.url.expose();
        if !url.is_empty()
            && !url.starts_with("postgres://")
            && !url.starts_with("postgresql://")
            && !url.starts_with("sqlite:")
        {
            return Err("database.url must start with postgres://, postgresql:// or sqlite:".into());
        }
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be at least 1".into());
        }
        if self.chat.max_text_chars == 0 {
            return Err("chat.max_text_chars must be at least 1".into());
        }
        if self.chat.rate_per_minute == 0 || self.chat.rate_burst == 0 {
            return Err("chat.rate_per_minute and chat.rate_burst must be at least 1".into());
        }
        let attachments = &self.attachments;
        if !attachments.url.is_empty() {
            let bucket = attachments
                .url
                .strip_prefix("s3://")
                .map(|rest| rest.split('/').next().unwrap_or_default());
            if bucket.is_none_or(str::is_empty) {
                return Err("attachments.url must be s3://bucket or s3://bucket/prefix".into());
            }
        }
        let endpoint = &attachments.s3.endpoint;
        if endpoint.starts_with("http://") && !attachments.s3.allow_http {
            return Err("attachments.s3.endpoint is http://: set attachments.s3.allow_http = true to allow it".into());
        }
        if !endpoint.is_empty() && !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err("attachments.s3.endpoint must be an http:// or https:// URL".into());
        }
        for (key, url) in [
            ("auth.key_url", &self.auth.key_url),
            ("auth.users_url", &self.auth.users_url),
        ] {
            if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(format!("{key} must be an http:// or https:// URL"));
            }
        }
        if self.attachments.max_bytes == 0
            || self.attachments.max_dimension == 0
            || self.attachments.thumbnail_size == 0
        {
            return Err("attachments.max_bytes, max_dimension and thumbnail_size must be at least 1".into());
        }
        let push = &self.widget.push_url;
        let push_ok = push.is_empty()
            || ((push.starts_with("ws://") || push.starts_with("wss://"))
                && self.widget.push_origin().len() > push.find("://").unwrap_or(0) + 3
                && !push
                    .chars()
                    .any(|c| c.is_whitespace() || c == ';' || c == '\'' || c == ','));
        if !push_ok {
            return Err("widget.push_url must be a ws:// or wss:// URL".into());
        }
        for origin in &self.widget.allowed_origins {
            let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.parse::<axum::http::HeaderValue>().is_ok();
            if !valid {
                return Err(format!(
                    "widget.allowed_origins: {origin:?} is not an origin like https://www.example.com"
                ));
            }
        }
        Ok(())
    }
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_origin_is_scheme_host_and_port() {
        let widget = |url: &str| WidgetConfig {
            push_url: url.into(),
            allowed_origins: vec![],
        };
        assert_eq!(
            widget("wss://push.example.com/ws").push_origin(),
            "wss://push.example.com"
        );
        assert_eq!(
            widget("ws://127.0.0.1:8083/ws?x#y").push_origin(),
            "ws://127.0.0.1:8083"
        );
        assert_eq!(widget("ws://h:1").push_origin(), "ws://h:1");
        assert_eq!(widget("").push_origin(), "");
        assert_eq!(widget("nonsense").push_origin(), "");
    }

    #[test]
    fn s3_settings_are_checked() {
        let check = |url: &str, endpoint: &str, allow_http: bool| {
            let mut config = Config::default();
            config.attachments.url = url.into();
            config.attachments.s3.endpoint = endpoint.into();
            config.attachments.s3.allow_http = allow_http;
            config.validate()
        };
        assert!(check("", "", false).is_ok(), "local files by default");
        assert!(check("s3://chat", "", false).is_ok());
        assert!(check("s3://chat/uploads/", "https://minio.example.com:9000", false).is_ok());
        assert!(check("s3://chat", "http://127.0.0.1:9000", true).is_ok());
        let http = check("s3://chat", "http://127.0.0.1:9000", false).expect_err("plain http needs consent");
        assert!(http.contains("allow_http"), "{http}");
        for bad in ["chat", "s3://", "s3:///prefix", "gs://chat"] {
            let error = check(bad, "", false).expect_err(bad);
            assert!(error.contains("attachments.url"), "{bad}: {error}");
        }
        assert!(check("s3://chat", "minio:9000", false).is_err(), "an endpoint is a URL");
    }

    #[test]
    fn widget_urls_are_checked() {
        let check = |push: &str, origins: &[&str]| {
            let mut config = Config::default();
            config.widget.push_url = push.into();
            config.widget.allowed_origins = origins.iter().map(|s| (*s).to_owned()).collect();
            config.validate()
        };
        assert!(check("", &[]).is_ok());
        assert!(check("wss://push.example.com/ws", &["https://www.example.com"]).is_ok());
        assert!(check("http://push.example.com/ws", &[]).is_err());
        assert!(check("ws://", &[]).is_err());
        assert!(check("ws://a.example.com; script-src *", &[]).is_err());
        assert!(check("", &["https://www.example.com/"]).is_err());
        assert!(check("", &["*"]).is_err());
    }
}
