//! The `im-bridge` config: `[[account]]` entries (XMPP or IRC), what happens to
//! sends while an account is down, the lease, reconnect backoff, and the script
//! FIFO and socket.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::Secret;

/// One IM account: `[[account]]` with `protocol = "xmpp"` or `"irc"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountConfig {
    /// The account id: the `<account>` token of its subjects and the `/msg` target.
    pub id: String,
    /// Inbound messages from senders not on this list are dropped (IRC nicks,
    /// case-insensitive; XMPP bare JIDs, or MUC occupant nicks). Empty: everyone.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// The protocol and its options.
    #[serde(flatten)]
    pub protocol: ProtocolConfig,
}

/// The protocol of an account, with its own options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum ProtocolConfig {
    /// An XMPP account.
    Xmpp(XmppConfig),
    /// An IRC account.
    Irc(IrcConfig),
}

/// How an XMPP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XmppTls {
    /// Plain TCP upgraded with STARTTLS (port 5222). The default.
    #[default]
    Starttls,
    /// TLS from the first byte (XEP-0368, port 5223).
    Direct,
    /// No TLS at all; refused unless `allow_plaintext = true` (tests only).
    Plaintext,
}

/// `protocol = "xmpp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// The account's bare JID, e.g. `bot@example.org`.
    pub jid: String,
    /// Its password.
    pub password: Secret,
    /// Connect to this host instead of the JID's domain (no SRV lookup).
    #[serde(default)]
    pub host: Option<String>,
    /// The port with `host` (default 5222, or 5223 for direct TLS).
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `direct` or `plaintext`.
    #[serde(default)]
    pub tls: XmppTls,
    /// Must be true for `tls = "plaintext"`.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// PEM file of CA certificates trusted for this account's server in addition
    /// to the system roots (a private CA). Not allowed with `tls = "plaintext"`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The resource to bind (default `switchboard`).
    #[serde(default = "default_resource")]
    pub resource: String,
    /// MUC rooms to join.
    #[serde(default)]
    pub rooms: Vec<RoomConfig>,
}

fn default_resource() -> String {
    "switchboard".to_owned()
}

/// One MUC room to join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    /// The room's bare JID, e.g. `ops@conference.example.org`.
    pub jid: String,
    /// Our nickname in it.
    pub nick: String,
    /// The room password, if it has one.
    #[serde(default)]
    pub password: Option<Secret>,
}

/// `protocol = "irc"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// The server's host name.
    pub server: String,
    /// Its port (default 6697 with TLS, 6667 without).
    #[serde(default)]
    pub port: Option<u16>,
    /// TLS (default true).
    #[serde(default = "yes")]
    pub tls: bool,
    /// PEM file of CA certificates trusted for this server in addition to the
    /// system roots (a private CA). Needs `tls = true`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The nickname.
    pub nick: String,
    /// Nicknames to try, in order, when `nick` is taken.
    #[serde(default)]
    pub alt_nicks: Vec<String>,
    /// The user name (default: the nick).
    #[serde(default)]
    pub username: Option<String>,
    /// The real name (default `Switchboard`).
    #[serde(default)]
    pub realname: Option<String>,
    /// The server password (`PASS`), if the server needs one.
    #[serde(default)]
    pub server_password: Option<Secret>,
    /// SASL PLAIN account name; with `sasl_password`, authenticates before
    /// registration and fails the connection when the server refuses.
    #[serde(default)]
    pub sasl_user: Option<String>,
    /// SASL PLAIN password.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// Sent as `NICKSERV IDENTIFY <password>` after registration.
    #[serde(default)]
    pub nickserv_password: Option<Secret>,
    /// Channels to join (`#ops`; `#ops key` for a keyed channel is not supported).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Flood control: at most this many lines per `rate_window` (default 5).
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Flood control window (default 8s, whole seconds).
    #[serde(default = "default_rate_window", with = "humantime_serde")]
    pub rate_window: Duration,
}

fn yes() -> bool {
    true
}

fn default_rate_burst() -> u32 {
    5
}

fn default_rate_window() -> Duration {
    Duration::from_secs(8)
}

/// What a send does while its account is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhileDown {
    /// Keep it in a bounded queue; send on reconnect unless it expired. The default.
    #[default]
    Queue,
    /// Answer at once with an `UNAVAILABLE` error.
    Reject,
}

/// `[outbound]`: sending limits and what happens while an account is down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// `queue` (default) or `reject`.
    pub while_down: WhileDown,
    /// Queue length per account.
    pub queue_max: usize,
    /// Queued messages older than this are dropped, not sent.
    #[serde(with = "humantime_serde")]
    pub queue_expiry: Duration,
    /// Longer texts are refused with `INVALID_ARGUMENT` ("text too long").
    pub max_text_bytes: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            while_down: WhileDown::Queue,
            queue_max: 100,
            queue_expiry: Duration::from_secs(300),
            max_text_bytes: 4096,
        }
    }
}

/// `[session]`: lease and reconnect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Hold a lease per account in the `SB_IM_LEASES` bucket, so only one replica
    /// connects each account. Default true.
    pub lease: bool,
    /// Lease time to live: how soon a standby takes over a dead holder.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// First reconnect delay; doubles per failed attempt.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How long connecting, logging in and joining may take before the attempt fails.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            lease: true,
            lease_ttl: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// `[script]`: the FIFO and Unix socket for scripts (EKG2's `rc` plugin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptConfig {
    /// Create a FIFO (mode 0600) here and read `/msg` or JSON lines from it.
    pub fifo: Option<PathBuf>,
    /// Listen on a Unix socket (mode 0600) here; one reply line per request line.
    pub socket: Option<PathBuf>,
}

/// `[grpc_auth]`: who may call ImService.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcAuthConfig {
    /// When set, every call must carry `authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

/// Checks the accounts; errors name the key (`account[1].nick ...`).
pub fn validate_accounts(accounts: &[AccountConfig]) -> Result<(), String> {
    let mut ids = HashSet::new();
    for (i, account) in accounts.iter().enumerate() {
        let key = format!("account[{i}]");
        if account.id.is_empty() {
            return Err(format!("{key}.id must not be empty"));
        }
        if account.id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{key}.id must not contain spaces or control characters"));
        }
        if !ids.insert(account.id.as_str()) {
            return Err(format!("{key}.id {:?} is used twice", account.id));
        }
        match &account.protocol {
            ProtocolConfig::Xmpp(x) => {
                let jid: tokio_xmpp::jid::BareJid = x
                    .jid
                    .parse()
                    .map_err(|e| format!("{key}.jid {:?} is not a JID: {e}", x.jid))?;
                if jid.node().is_none() {
                    return Err(format!("{key}.jid must be user@domain"));
                }
                if x.tls == XmppTls::Plaintext && !x.allow_plaintext {
                    return Err(format!(
                        "{key}.tls = \"plaintext\" sends the password in clear; set {key}.allow_plaintext = true to allow it (tests only)"
                    ));
                }
                if x.port == Some(0) {
                    return Err(format!("{key}.port must be 1-65535"));
                }
                if x.ca_file.is_some() && x.tls == XmppTls::Plaintext {
                    return Err(format!("{key}.ca_file needs tls = \"starttls\" or \"direct\""));
                }
                for (r, room) in x.rooms.iter().enumerate() {
                    let room_jid: Result<tokio_xmpp::jid::BareJid, _> = room.jid.parse();
                    if room_jid.is_err() {
                        return Err(format!("{key}.rooms[{r}].jid {:?} is not a room JID", room.jid));
                    }
                    if room.nick.is_empty() || crate::xmpp::occupant(&room.jid, &room.nick).is_err() {
                        return Err(format!("{key}.rooms[{r}].nick {:?} is not a valid nickname", room.nick));
                    }
                }
            }
            ProtocolConfig::Irc(c) => {
                if c.server.is_empty() {
                    return Err(format!("{key}.server must not be empty"));
                }
                if c.port == Some(0) {
                    return Err(format!("{key}.port must be 1-65535"));
                }
                if c.ca_file.is_some() && !c.tls {
                    return Err(format!("{key}.ca_file needs tls = true"));
                }
                for nick in std::iter::once(&c.nick).chain(&c.alt_nicks) {
                    if !crate::irc::valid_nick(nick) {
                        return Err(format!("{key}: nick {nick:?} is not a valid IRC nickname"));
                    }
                }
                for channel in &c.channels {
                    if !crate::irc::valid_channel(channel) {
                        return Err(format!(
                            "{key}.channels: {channel:?} is not a channel name (#name, no spaces or commas)"
                        ));
                    }
                }
                if c.sasl_user.is_some() != c.sasl_password.is_some() {
                    return Err(format!("{key}: sasl_user and sasl_password go together"));
                }
                if c.rate_burst == 0 {
                    return Err(format!("{key}.rate_burst must be at least 1"));
                }
                if c.rate_window.as_secs() == 0 || c.rate_window.as_secs() > u64::from(u32::MAX) {
                    return Err(format!("{key}.rate_window must be at least 1s"));
                }
            }
        }
    }
    Ok(())
}
