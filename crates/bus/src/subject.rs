//! Subject names: the three kinds (events, commands, pushes) under a configurable
//! prefix, and the one reversible escaping of ids into subject tokens.
//!
//! Every subject Switchboard uses is built here, so the catalogue in
//! [`CATALOGUE`] and `docs/subjects.md` can be checked against each other.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::BusError;

/// Why a token could not be unescaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token holds a byte that escaping never produces.
    #[error("subject token {token:?} has {found:?} at byte {at}; tokens carry only [A-Za-z0-9-] and `_XX` escapes")]
    InvalidChar {
        /// The token as given.
        token: String,
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// A `_` is not followed by two upper-case hex digits, or escapes a byte that
    /// needs no escape (so one id has exactly one token).
    #[error("subject token {token:?} has a malformed escape at byte {at}")]
    BadEscape {
        /// The token as given.
        token: String,
        /// The byte offset of the `_`.
        at: usize,
    },
    /// An empty token: subjects have none, and the empty id is spelled `_`.
    #[error("empty subject token")]
    Empty,
    /// The escapes decode to bytes that are not UTF-8.
    #[error("subject token {token:?} does not decode to UTF-8")]
    NotUtf8 {
        /// The token as given.
        token: String,
    },
}

fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-'
}

/// Escapes an id (a user, a PBX, an account, an AMI event name...) into one subject
/// token that carries only `[A-Za-z0-9_-]`.
///
/// Bytes outside `[A-Za-z0-9-]` become `_XX` (their UTF-8 bytes in upper-case hex),
/// so `_` itself becomes `_5F`. The empty id becomes the lone token `_`. The mapping
/// is one-to-one: [`unescape_token`] reverses it and rejects any other spelling.
pub fn escape_token(id: &str) -> Cow<'_, str> {
    if id.is_empty() {
        return Cow::Borrowed("_");
    }
    if id.bytes().all(is_plain) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for byte in id.bytes() {
        if is_plain(byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "_{byte:02X}");
        }
    }
    Cow::Owned(out)
}

/// Reverses [`escape_token`]. Accepts only what `escape_token` produces.
pub fn unescape_token(token: &str) -> Result<String, TokenError> {
    if token == "_" {
        return Ok(String::new());
    }
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if is_plain(byte) {
            out.push(byte);
            i += 1;
        } else if byte == b'_' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(|| TokenError::BadEscape {
                token: token.to_owned(),
                at: i,
            })?;
            let decoded = decode_hex_pair(hex).ok_or_else(|| TokenError::BadEscape {
                token: token.to_owned(),
                at: i,
            })?;
            if is_plain(decoded) {
                return Err(TokenError::BadEscape {
                    token: token.to_owned(),
                    at: i,
                });
            }
            out.push(decoded);
            i += 3;
        } else {
            let found = token[i..].chars().next().unwrap_or('\u{FFFD}');
            return Err(TokenError::InvalidChar {
                token: token.to_owned(),
                found,
                at: i,
            });
        }
    }
    String::from_utf8(out).map_err(|_| TokenError::NotUtf8 {
        token: token.to_owned(),
    })
}

fn decode_hex_pair(hex: &[u8]) -> Option<u8> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    Some(digit(hex[0])? << 4 | digit(hex[1])?)
}

/// Builds every subject under one prefix (default `sb`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: "sb".to_owned(),
        }
    }
}

impl Subjects {
    /// A builder for `prefix`, which is one or more dot-separated tokens of
    /// `[A-Za-z0-9_-]`.
    pub fn new(prefix: &str) -> Result<Self, BusError> {
        let valid = !prefix.is_empty()
            && prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !valid {
            return Err(BusError::Config(format!(
                "nats.prefix {prefix:?} must be dot-separated tokens of [A-Za-z0-9_-]"
            )));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix, e.g. `sb`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of a JetStream stream or KV bucket that belongs to this prefix:
    /// `SB_EVENTS` for prefix `sb` and kind `EVENTS`.
    pub fn stream_name(&self, kind: &str) -> String {
        format!("{}_{}", self.prefix.replace('.', "_").to_uppercase(), kind)
    }

    fn join(&self, kind: &str, tokens: &[&str]) -> String {
        let mut subject = String::with_capacity(self.prefix.len() + 64);
        subject.push_str(&self.prefix);
        subject.push('.');
        subject.push_str(kind);
        for token in tokens {
            subject.push('.');
            subject.push_str(token);
        }
        subject
    }

    /// `<prefix>.evt.<domain>.<tokens...>`. Tokens are used as given: escape ids with
    /// [`escape_token`] (the typed builders below do).
    pub fn event(&self, domain: &str, tokens: &[&str]) -> String {
        let mut all = Vec::with_capacity(tokens.len() + 1);
        all.push(domain);
        all.extend_from_slice(tokens);
        self.join("evt", &all)
    }

    /// `<prefix>.cmd.<domain>.<target>.<verb>`; the target is escaped.
    pub fn command(&self, domain: &str, target: &str, verb: &str) -> String {
        self.join("cmd", &[domain, &escape_token(target), verb])
    }

    /// `<prefix>.evt.>`: every event (the `SB_EVENTS` stream's subjects).
    pub fn all_events(&self) -> String {
        self.join("evt", &[">"])
    }

    /// `<prefix>.push.>`: every push (the `SB_PUSH` stream's subjects).
    pub fn all_pushes(&self) -> String {
        self.join("push", &[">"])
    }

    /// `<prefix>.pushlive.>`: where `SB_PUSH` re-publishes every push it stored
    /// (core NATS, with the stream sequence in headers), so a ws-push node can
    /// subscribe to only the users and channels its connections need.
    pub fn all_live_pushes(&self) -> String {
        self.join("pushlive", &[">"])
    }

    // ---- ami-bridge ----

    /// `sb.evt.ami.<pbx>.raw.<Event>`
    pub fn ami_raw(&self, pbx: &str, event: &str) -> String {
        self.event("ami", &[&escape_token(pbx), "raw", &escape_token(event)])
    }

    /// `sb.evt.ami.<pbx>.call.<state>` with state `started|ringing|answered|ended`.
    pub fn ami_call(&self, pbx: &str, state: &str) -> String {
        self.event("ami", &[&escape_token(pbx), "call", state])
    }

    /// `sb.evt.ami.<pbx>.link.<up|down>`
    pub fn ami_link(&self, pbx: &str, up: bool) -> String {
        self.event("ami", &[&escape_token(pbx), "link", up_down(up)])
    }

    /// `sb.evt.ami.<pbx>.snapshot`: live channels after a (re)connect.
    pub fn ami_snapshot(&self, pbx: &str) -> String {
        self.event("ami", &[&escape_token(pbx), "snapshot"])
    }

    /// `sb.evt.ami.<pbx>.error`: a protocol error the session survived.
    pub fn ami_error(&self, pbx: &str) -> String {
        self.event("ami", &[&escape_token(pbx), "error"])
    }

    /// `sb.cmd.ami.<pbx>.action`
    pub fn ami_action(&self, pbx: &str) -> String {
        self.command("ami", pbx, "action")
    }

    // ---- im-bridge ----

    /// `sb.evt.im.<account>.message`
    pub fn im_message(&self, account: &str) -> String {
        self.event("im", &[&escape_token(account), "message"])
    }

    /// `sb.evt.im.<account>.presence`
    pub fn im_presence(&self, account: &str) -> String {
        self.event("im", &[&escape_token(account), "presence"])
    }

    /// `sb.evt.im.<account>.link.<up|down>`
    pub fn im_link(&self, account: &str, up: bool) -> String {
        self.event("im", &[&escape_token(account), "link", up_down(up)])
    }

    /// `sb.cmd.im.<account>.send`
    pub fn im_send(&self, account: &str) -> String {
        self.command("im", account, "send")
    }

    // ---- ws-push ----

    /// `sb.push.user.<id>`
    pub fn push_user(&self, user: &str) -> String {
        self.join("push", &["user", &escape_token(user)])
    }

    /// `sb.push.channel.<name>`
    pub fn push_channel(&self, channel: &str) -> String {
        self.join("push", &["channel", &escape_token(channel)])
    }

    /// `sb.push.all`
    pub fn push_all(&self) -> String {
        self.join("push", &["all"])
    }

    /// `sb.pushlive.user.<id>`: the stored pushes of `sb.push.user.<id>`, re-published.
    pub fn live_push_user(&self, user: &str) -> String {
        self.join("pushlive", &["user", &escape_token(user)])
    }

    /// `sb.pushlive.user.*`: every user's re-published pushes (one subscription for
    /// a node that holds many users).
    pub fn live_push_users(&self) -> String {
        self.join("pushlive", &["user", "*"])
    }

    /// `sb.pushlive.channel.<name>`: the stored pushes of `sb.push.channel.<name>`, re-published.
    pub fn live_push_channel(&self, channel: &str) -> String {
        self.join("pushlive", &["channel", &escape_token(channel)])
    }

    /// `sb.pushlive.all`: the stored pushes of `sb.push.all`, re-published.
    pub fn live_push_all(&self) -> String {
        self.join("pushlive", &["all"])
    }

    /// `sb.evt.push.presence.<user>.<online|offline>`
    pub fn push_presence(&self, user: &str, online: bool) -> String {
        let state = if online { "online" } else { "offline" };
        self.event("push", &["presence", &escape_token(user), state])
    }

    /// `sb.evt.push.inbound.<user>.<topic>`
    pub fn push_inbound(&self, user: &str, topic: &str) -> String {
        self.event("push", &["inbound", &escape_token(user), &escape_token(topic)])
    }

    /// `sb.cmd.push.presence`
    pub fn push_presence_query(&self) -> String {
        self.join("cmd", &["push", "presence"])
    }

    /// `sb.cmd.push.disconnect`: a broadcast (not request-reply) every ws-push node
    /// listens to, closing the named user's connections.
    pub fn push_disconnect(&self) -> String {
        self.join("cmd", &["push", "disconnect"])
    }

    // ---- chat-store ----

    /// `sb.evt.chat.<object>.<change>`, e.g. `message.created`, `complaint.created`,
    /// `relation.changed`.
    pub fn chat_event(&self, object: &str, change: &str) -> String {
        self.event("chat", &[object, change])
    }

    /// `sb.cmd.chat.<verb>`
    pub fn chat_command(&self, verb: &str) -> String {
        self.join("cmd", &["chat", verb])
    }

    /// `sb.cmd.chat.rate.spent`: a broadcast (not request-reply) between chat-store
    /// replicas of what each user spent of their rate budget.
    pub fn chat_rate_spent(&self) -> String {
        self.join("cmd", &["chat", "rate", "spent"])
    }

    // ---- hook-runner ----

    /// `sb.evt.hook.<rule>.<succeeded|failed|dead>`
    pub fn hook_result(&self, rule: &str, outcome: &str) -> String {
        self.event("hook", &[&escape_token(rule), outcome])
    }

    /// `sb.cmd.hook.<verb>`
    pub fn hook_command(&self, verb: &str) -> String {
        self.join("cmd", &["hook", verb])
    }
}

fn up_down(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

/// One family of subjects: its pattern (with the default prefix) and its payload.
#[derive(Debug, Clone, Copy)]
pub struct SubjectInfo {
    /// The pattern as `docs/subjects.md` spells it, e.g. `sb.evt.ami.<pbx>.raw.<Event>`.
    pub pattern: &'static str,
    /// The proto message of the payload, e.g. `switchboard.ami.v1.RawEvent`.
    pub payload: &'static str,
}

/// Every subject family Switchboard publishes or serves. `docs/subjects.md` must
/// list each pattern; a test checks it.
pub const CATALOGUE: &[SubjectInfo] = &[
    SubjectInfo {
        pattern: "sb.evt.ami.<pbx>.raw.<Event>",
        payload: "switchboard.ami.v1.RawEvent",
    },
    SubjectInfo {
        pattern: "sb.evt.ami.<pbx>.call.<started|ringing|answered|ended>",
        payload: "switchboard.ami.v1.CallEvent",
    },
    SubjectInfo {
        pattern: "sb.evt.ami.<pbx>.link.<up|down>",
        payload: "switchboard.ami.v1.LinkEvent",
    },
    SubjectInfo {
        pattern: "sb.evt.ami.<pbx>.snapshot",
        payload: "switchboard.ami.v1.ChannelSnapshot",
    },
    SubjectInfo {
        pattern: "sb.evt.ami.<pbx>.error",
        payload: "switchboard.ami.v1.ProtocolError",
    },
    SubjectInfo {
        pattern: "sb.cmd.ami.<pbx>.action",
        payload: "switchboard.ami.v1.ActionRequest",
    },
    SubjectInfo {
        pattern: "sb.evt.im.<account>.message",
        payload: "switchboard.im.v1.Message",
    },
    SubjectInfo {
        pattern: "sb.evt.im.<account>.presence",
        payload: "switchboard.im.v1.Presence",
    },
    SubjectInfo {
        pattern: "sb.evt.im.<account>.link.<up|down>",
        payload: "switchboard.im.v1.LinkEvent",
    },
    SubjectInfo {
        pattern: "sb.cmd.im.<account>.send",
        payload: "switchboard.im.v1.SendRequest",
    },
    SubjectInfo {
        pattern: "sb.push.user.<id>",
        payload: "switchboard.push.v1.Push",
    },
    SubjectInfo {
        pattern: "sb.push.channel.<name>",
        payload: "switchboard.push.v1.Push",
    },
    SubjectInfo {
        pattern: "sb.push.all",
        payload: "switchboard.push.v1.Push",
    },
    SubjectInfo {
        pattern: "sb.pushlive.user.<id>",
        payload: "switchboard.push.v1.Push",
    },
    SubjectInfo {
        pattern: "sb.pushlive.channel.<name>",
        payload: "switchboard.push.v1.Push",
    },
    SubjectInfo {
        pattern: "sb.pushlive.all",
        payload: "switchboard.push.v1.Push",
    },
    SubjectInfo {
        pattern: "sb.evt.push.presence.<user>.<online|offline>",
        payload: "switchboard.push.v1.PresenceEvent",
    },
    SubjectInfo {
        pattern: "sb.evt.push.inbound.<user>.<topic>",
        payload: "switchboard.push.v1.Inbound",
    },
    SubjectInfo {
        pattern: "sb.cmd.push.presence",
        payload: "switchboard.push.v1.PresenceRequest",
    },
    SubjectInfo {
        pattern: "sb.cmd.push.disconnect",
        payload: "switchboard.push.v1.DisconnectRequest",
    },
    SubjectInfo {
        pattern: "sb.evt.chat.message.<created|delivered|read|edited|deleted>",
        payload: "switchboard.chat.v1.MessageEvent / ReceiptEvent",
    },
    SubjectInfo {
        pattern: "sb.evt.chat.complaint.<created|resolved>",
        payload: "switchboard.chat.v1.ComplaintEvent",
    },
    SubjectInfo {
        pattern: "sb.evt.chat.relation.changed",
        payload: "switchboard.chat.v1.RelationEvent",
    },
    SubjectInfo {
        pattern: "sb.cmd.chat.<verb>",
        payload: "switchboard.chat.v1 request of the verb",
    },
    SubjectInfo {
        pattern: "sb.cmd.chat.rate.spent",
        payload: "switchboard.chat.v1.RateSpent",
    },
    SubjectInfo {
        pattern: "sb.evt.hook.<rule>.<succeeded|failed>",
        payload: "switchboard.hook.v1.RunResult",
    },
    SubjectInfo {
        pattern: "sb.evt.hook.<rule>.dead",
        payload: "switchboard.hook.v1.DeadLetter",
    },
    SubjectInfo {
        pattern: "sb.cmd.hook.<verb>",
        payload: "switchboard.hook.v1 request of the verb",
    },
];

/// The CloudEvents `type` of each kind of event.
pub mod event_types {
    /// Every raw AMI event.
    pub const AMI_RAW: &str = "switchboard.ami.raw.v1";
    /// A derived call event.
    pub const AMI_CALL: &str = "switchboard.ami.call.v1";
    /// A PBX session went up or down.
    pub const AMI_LINK: &str = "switchboard.ami.link.v1";
    /// Live channels after a (re)connect.
    pub const AMI_SNAPSHOT: &str = "switchboard.ami.snapshot.v1";
    /// A protocol error the session survived.
    pub const AMI_ERROR: &str = "switchboard.ami.error.v1";
    /// An IM message received.
    pub const IM_MESSAGE: &str = "switchboard.im.message.v1";
    /// An IM contact's presence.
    pub const IM_PRESENCE: &str = "switchboard.im.presence.v1";
    /// An IM account's session went up or down.
    pub const IM_LINK: &str = "switchboard.im.link.v1";
    /// A push to browsers.
    pub const PUSH: &str = "switchboard.push.v1";
    /// A user came online or went offline.
    pub const PUSH_PRESENCE: &str = "switchboard.push.presence.v1";
    /// A browser published on a topic.
    pub const PUSH_INBOUND: &str = "switchboard.push.inbound.v1";
    /// A chat message was created, edited or deleted.
    pub const CHAT_MESSAGE: &str = "switchboard.chat.message.v1";
    /// Messages were delivered or read.
    pub const CHAT_RECEIPT: &str = "switchboard.chat.receipt.v1";
    /// A complaint was filed or resolved.
    pub const CHAT_COMPLAINT: &str = "switchboard.chat.complaint.v1";
    /// A favourite/blocked relation changed.
    pub const CHAT_RELATION: &str = "switchboard.chat.relation.v1";
    /// A rule run ended.
    pub const HOOK_RESULT: &str = "switchboard.hook.result.v1";
    /// A rule gave up on an event.
    pub const HOOK_DEAD: &str = "switchboard.hook.dead.v1";
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_ids_pass_through() {
        assert_eq!(escape_token("pbx-1"), "pbx-1");
        assert!(matches!(escape_token("Newchannel"), Cow::Borrowed(_)));
    }

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(escape_token("a.b"), "a_2Eb");
        assert_eq!(escape_token("a_b"), "a_5Fb");
        assert_eq!(escape_token("*"), "_2A");
        assert_eq!(escape_token(">"), "_3E");
        assert_eq!(escape_token("a b"), "a_20b");
        assert_eq!(escape_token("é"), "_C3_A9");
        assert_eq!(escape_token(""), "_");
    }

    #[test]
    fn non_canonical_tokens_are_refused() {
        assert!(matches!(unescape_token("a_2e"), Err(TokenError::BadEscape { .. })));
        assert!(matches!(unescape_token("_41"), Err(TokenError::BadEscape { .. })));
        assert!(matches!(unescape_token("a_2"), Err(TokenError::BadEscape { .. })));
        assert!(matches!(unescape_token("a.b"), Err(TokenError::InvalidChar { .. })));
        assert!(matches!(unescape_token("_FF"), Err(TokenError::NotUtf8 { .. })));
    }

    #[test]
    fn typed_builders_escape_ids() {
        let s = Subjects::default();
        assert_eq!(s.ami_raw("pbx.1", "Newchannel"), "sb.evt.ami.pbx_2E1.raw.Newchannel");
        assert_eq!(s.push_user("alice@example.org"), "sb.push.user.alice_40example_2Eorg");
        assert_eq!(s.ami_action("pbx1"), "sb.cmd.ami.pbx1.action");
        assert_eq!(s.push_presence_query(), "sb.cmd.push.presence");
        assert_eq!(s.stream_name("EVENTS"), "SB_EVENTS");
        let custom = Subjects::new("acme.sb").unwrap();
        assert_eq!(custom.push_all(), "acme.sb.push.all");
        assert_eq!(custom.stream_name("PUSH"), "ACME_SB_PUSH");
        assert!(Subjects::new("a..b").is_err());
        assert!(Subjects::new("a b").is_err());
        assert!(Subjects::new("").is_err());
    }

    proptest! {
        #[test]
        fn escaping_round_trips(id in any::<String>()) {
            let token = escape_token(&id);
            prop_assert!(!token.is_empty());
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            prop_assert_eq!(unescape_token(&token).unwrap(), id);
        }

        #[test]
        fn unescaping_is_injective(token in "[A-Za-z0-9_-]{0,12}") {
            if let Ok(id) = unescape_token(&token) {
                prop_assert_eq!(escape_token(&id), token);
            }
        }
    }
}
