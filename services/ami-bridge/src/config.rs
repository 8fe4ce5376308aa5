//! The `[ami]` settings and the `[[pbx]]` list.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::Secret;

use crate::parser::Limits;

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `Secret:` in the clear (use on loopback or a private network).
    #[default]
    Plain,
    /// `Action: Challenge` then `Key: md5(challenge + secret)`: the secret never
    /// crosses the wire.
    Md5,
}

/// One PBX: `[[pbx]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PbxConfig {
    /// Id used in subjects and APIs (`sb.evt.ami.<id>...`).
    pub id: String,
    /// Host name or address of the Asterisk manager.
    pub host: String,
    /// Manager port (5038).
    pub port: u16,
    /// The `manager.conf` user.
    pub username: String,
    /// Its secret; never logged.
    pub secret: Secret,
    /// `plain` or `md5`.
    pub auth: AuthMode,
    /// The `Events:` of the Login: `on`, `off`, or a class mask such as `call,user`.
    pub events: String,
    /// Server-side filters sent as `Action: Filter` / `Operation: Add` after login,
    /// e.g. `Event: Newchannel` or `!Event: VarSet` (Asterisk's `eventfilter` syntax).
    pub filters: Vec<String>,
    /// Event names to publish (case-insensitive); empty means all.
    pub allow_events: Vec<String>,
    /// Event names never published (checked after `allow_events`).
    pub deny_events: Vec<String>,
    /// TLS to the manager port (Asterisk's `tlsenable`); no plaintext fallback.
    pub tls: bool,
    /// PEM certificates trusted in addition to the system roots (only with `tls`).
    pub ca_file: Option<PathBuf>,
    /// The name the server certificate must carry; default: `host`.
    pub tls_server_name: Option<String>,
}

impl Default for PbxConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            host: "127.0.0.1".into(),
            port: 5038,
            username: String::new(),
            secret: Secret::default(),
            auth: AuthMode::Plain,
            events: "on".into(),
            filters: Vec::new(),
            allow_events: Vec::new(),
            deny_events: Vec::new(),
            tls: false,
            ca_file: None,
            tls_server_name: None,
        }
    }
}

impl PbxConfig {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Whether `event` passes the allow/deny lists.
    pub fn publishes(&self, event: &str) -> bool {
        (self.allow_events.is_empty() || self.allow_events.iter().any(|a| a.eq_ignore_ascii_case(event)))
            && !self.deny_events.iter().any(|d| d.eq_ignore_ascii_case(event))
    }
}

/// Settings shared by every PBX session: `[ami]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AmiSettings {
    /// How often to send `Ping`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A `Ping` unanswered this long declares the session dead.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// TCP connect plus banner plus login must finish within this.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `reconnect_max`,
    /// each delay randomised to 50-100% (jitter).
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Default per-action timeout.
    #[serde(with = "humantime_serde")]
    pub action_timeout: Duration,
    /// Extra wait for `OriginateResponse` beyond the ring timeout.
    #[serde(with = "humantime_serde")]
    pub originate_grace: Duration,
    /// Actions callers may send (case-insensitive); empty means all but `deny_actions`.
    pub allow_actions: Vec<String>,
    /// Actions refused from the bus and gRPC. `Command` runs CLI commands on the
    /// PBX, so it is denied unless removed from here.
    pub deny_actions: Vec<String>,
    /// Longest accepted line, in bytes.
    pub max_line: usize,
    /// Biggest accepted message, in bytes.
    pub max_message: usize,
    /// Most header lines in one message.
    pub max_headers: usize,
    /// Raw events published without waiting for their acks (pipelining window).
    pub publish_window: usize,
    /// When set, gRPC callers must send `authorization: Bearer <token>`. Bus
    /// callers are authorised by NATS itself (account permissions on
    /// `sb.cmd.ami.<pbx>.action`).
    pub api_token: Option<Secret>,
    /// Hold one active session per PBX across replicas with a lease in the KV
    /// bucket `SB_AMI_LEASES`; off runs every session unconditionally.
    pub lease: bool,
    /// The lease's TTL: a dead holder's lease expires after at most this, and a
    /// standby takes over within about TTL + TTL/6.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for AmiSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            action_timeout: Duration::from_secs(10),
            originate_grace: Duration::from_secs(5),
            allow_actions: Vec::new(),
            deny_actions: vec!["Command".into()],
            max_line: limits.max_line,
            max_message: limits.max_message,
            max_headers: limits.max_headers,
            publish_window: 4096,
            api_token: None,
            lease: true,
            lease_ttl: Duration::from_secs(3),
        }
    }
}

impl AmiSettings {
    /// The parser limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_line: self.max_line,
            max_message: self.max_message,
            max_headers: self.max_headers,
        }
    }

    /// Whether callers may send `action`.
    pub fn allows_action(&self, action: &str) -> bool {
        (self.allow_actions.is_empty() || self.allow_actions.iter().any(|a| a.eq_ignore_ascii_case(action)))
            && !self.deny_actions.iter().any(|d| d.eq_ignore_ascii_case(action))
    }

    /// Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err("ami.ping_interval and ami.ping_timeout must be > 0".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err("ami.reconnect_min must be > 0 and <= ami.reconnect_max".into());
        }
        if self.max_line == 0 || self.max_message < self.max_line || self.max_headers == 0 {
            return Err("ami.max_line, ami.max_headers must be > 0 and ami.max_message >= ami.max_line".into());
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err("ami.lease_ttl must be at least 300ms".into());
        }
        if self.publish_window == 0 {
            return Err("ami.publish_window must be > 0".into());
        }
        Ok(())
    }
}

/// Checks the `[[pbx]]` list; errors name the key, e.g. `pbx[0].port`.
pub fn validate_pbx(list: &[PbxConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in list.iter().enumerate() {
        if p.id.is_empty() {
            return Err(format!("pbx[{i}].id must be set"));
        }
        if !seen.insert(p.id.as_str()) {
            return Err(format!("pbx[{i}].id {:?} is used twice", p.id));
        }
        if p.host.is_empty() {
            return Err(format!("pbx[{i}].host must be set"));
        }
        if p.port == 0 {
            return Err(format!("pbx[{i}].port must be 1-65535"));
        }
        if p.username.is_empty() {
            return Err(format!("pbx[{i}].username must be set"));
        }
        if !p.tls && p.ca_file.is_some() {
            return Err(format!("pbx[{i}].ca_file needs pbx[{i}].tls = true"));
        }
        if !p.tls && p.tls_server_name.is_some() {
            return Err(format!("pbx[{i}].tls_server_name needs pbx[{i}].tls = true"));
        }
        let crlf = |s: &str| s.contains(['\r', '\n']);
        if crlf(&p.username) || crlf(p.secret.expose()) || crlf(&p.events) || p.filters.iter().any(|f| crlf(f)) {
            return Err(format!("pbx[{i}]: CR or LF in username, secret, events or filters"));
        }
    }
    Ok(())
}

/// The environment variable holding a PBX's secret when the config has none:
/// `SB_PBX_SECRET_<ID>`, the id upper-cased with anything but `A-Z0-9` as `_`
/// (how the deployment files pass AMI passwords from a Secret).
pub fn secret_env(id: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SB_PBX_SECRET_{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_env_names() {
        assert_eq!(secret_env("main"), "SB_PBX_SECRET_MAIN");
        assert_eq!(secret_env("pbx-2.office"), "SB_PBX_SECRET_PBX_2_OFFICE");
    }

    #[test]
    fn validation_names_the_key() {
        let ok = PbxConfig {
            id: "a".into(),
            username: "u".into(),
            ..PbxConfig::default()
        };
        assert!(validate_pbx(std::slice::from_ref(&ok)).is_ok());
        let dup = validate_pbx(&[ok.clone(), ok.clone()]).expect_err("duplicate");
        assert!(dup.starts_with("pbx[1].id"), "{dup}");
        let port = PbxConfig { port: 0, ..ok.clone() };
        assert_eq!(validate_pbx(&[port]).expect_err("port"), "pbx[0].port must be 1-65535");
        let ca = PbxConfig {
            ca_file: Some("/etc/ca.pem".into()),
            ..ok.clone()
        };
        assert_eq!(
            validate_pbx(&[ca]).expect_err("ca_file without tls"),
            "pbx[0].ca_file needs pbx[0].tls = true"
        );
        let tls = PbxConfig {
            tls: true,
            ca_file: Some("/etc/ca.pem".into()),
            ..ok.clone()
        };
        assert!(validate_pbx(&[tls]).is_ok());
        let crlf = PbxConfig {
            filters: vec!["Event: X\r\nAction: Logoff".into()],
            ..ok
        };
        assert!(validate_pbx(&[crlf]).is_err());
        assert!(AmiSettings::default().validate().is_ok());
        assert!(
            AmiSettings {
                lease_ttl: std::time::Duration::from_millis(10),
                ..AmiSettings::default()
            }
            .validate()
            .is_err()
        );
        // Commands from the bus are off unless the deployment removes the deny entry.
        assert!(!AmiSettings::default().allows_action("command"));
        assert!(AmiSettings::default().allows_action("Originate"));
    }
}
