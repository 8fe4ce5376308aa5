//! The JSON protocol on `/ws` (documented in `docs/ws-push.md`) and its close codes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// WebSocket close codes the server uses. 1001 and 1009 are the standard ones; the
/// 40xx codes are ours. A client reconnects after any of them except
/// [`BAD_TOKEN`], [`FORBIDDEN`] and [`TOO_MANY`] (which need a new token or fewer tabs).
pub mod close {
    /// The server is shutting down: reconnect (to another node) and recover.
    pub const SHUTDOWN: u16 = 1001;
    /// A frame or message was larger than `ws.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// No `connect` with a token arrived within `ws.connect_timeout`.
    pub const NO_TOKEN: u16 = 4001;
    /// The token is malformed, badly signed or refused by the site.
    pub const BAD_TOKEN: u16 = 4002;
    /// The token expired (and was not refreshed in time).
    pub const EXPIRED: u16 = 4003;
    /// The client sent something that is not the protocol.
    pub const PROTOCOL: u16 = 4004;
    /// The client read too slowly: its queue reached `ws.max_queued_bytes`.
    pub const SLOW_CONSUMER: u16 = 4005;
    /// No pong (or any frame) within `ws.pong_timeout` after a ping.
    pub const PING_TIMEOUT: u16 = 4006;
    /// The site disconnected this user through the API.
    pub const DISCONNECTED: u16 = 4007;
    /// The user has `ws.max_connections_per_user` connections already.
    pub const TOO_MANY: u16 = 4008;
    /// The auth callback could not be reached: try again later.
    pub const AUTH_UNAVAILABLE: u16 = 4009;
    /// A refreshed token named another user.
    pub const FORBIDDEN: u16 = 4010;
}

/// Offsets a reconnecting client saw last, per source (`user`, `all`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// The stream epoch the offsets belong to.
    pub epoch: String,
    /// Last offset seen per source.
    #[serde(default)]
    pub offsets: HashMap<String, u64>,
}

/// A message from the browser.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The first message: the token (unless given as `?token=`) and what to recover.
    Connect {
        /// The JWT.
        #[serde(default)]
        token: Option<String>,
        /// Offsets of `user` and `all` from the previous connection.
        #[serde(default)]
        recover: Option<Recover>,
    },
    /// Join a channel, recovering from `offset` when given with `epoch`.
    Subscribe {
        /// Echoed in the reply.
        #[serde(default)]
        id: Option<String>,
        /// The channel.
        channel: String,
        /// Last offset seen on this channel.
        #[serde(default)]
        offset: Option<u64>,
        /// The epoch of `offset`.
        #[serde(default)]
        epoch: Option<String>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// Echoed in the reply.
        #[serde(default)]
        id: Option<String>,
        /// The channel.
        channel: String,
    },
    /// Send `data` on `topic` to the backend (`sb.evt.push.inbound.<user>.<topic>`).
    Publish {
        /// Echoed in the reply.
        #[serde(default)]
        id: Option<String>,
        /// A topic the token's `topics` grant.
        topic: String,
        /// Any JSON.
        #[serde(default)]
        data: serde_json::Value,
    },
    /// Who is online: in a channel the token grants, or among `users`.
    Presence {
        /// Echoed in the reply.
        #[serde(default)]
        id: Option<String>,
        /// A channel.
        #[serde(default)]
        channel: Option<String>,
        /// User ids (only with the admin claim).
        #[serde(default)]
        users: Vec<String>,
    },
    /// A fresh token for the same user before the old one expires.
    Refresh {
        /// Echoed in the reply.
        #[serde(default)]
        id: Option<String>,
        /// The new JWT.
        token: String,
    },
}

/// One user's presence as the browser sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceItem {
    /// User id.
    pub user: String,
    /// Connections across all nodes.
    pub connections: u32,
    /// Has the admin claim.
    pub admin: bool,
}

/// A message to the browser (pushes are written directly, see `delivery`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The connection is authenticated and receives `user` and `all`.
    Connected {
        /// This connection's id.
        client: String,
        /// The node serving it.
        node: String,
        /// The user id.
        user: String,
        /// The admin claim.
        admin: bool,
        /// The stream epoch.
        epoch: String,
        /// The stream position at connect: store it as the offset of `user` and `all`
        /// until a push brings a higher one.
        offset: u64,
        /// Token expiry (Unix seconds).
        expires: u64,
        /// Whether everything missed was replayed (only when `recover` was sent).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// A channel was joined.
    Subscribed {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The channel.
        channel: String,
        /// The stream epoch.
        epoch: String,
        /// The position to store as this channel's offset.
        offset: u64,
        /// Whether everything missed was replayed (only when an offset was sent).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// A channel was left.
    Unsubscribed {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The channel.
        channel: String,
    },
    /// An inbound message was accepted by the bus.
    Published {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// A presence answer.
    Presence {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The channel asked about.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// Online users (those asked about that are online, or the channel's).
        users: Vec<PresenceItem>,
    },
    /// A refresh was accepted.
    Refreshed {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The new expiry.
        expires: u64,
    },
    /// A request failed; the connection stays open.
    Error {
        /// The request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// `forbidden`, `invalid`, `rate_limited`, `too_large`, `unavailable`.
        code: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl ServerMessage {
    /// The JSON text of the message.
    pub fn to_text(&self) -> String {
        // Serialising these plain structs cannot fail; an empty object is never sent.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_messages() {
        let connect: ClientMessage =
            serde_json::from_str(r#"{"type":"connect","token":"t","recover":{"epoch":"e","offsets":{"user":5}}}"#)
                .unwrap();
        let ClientMessage::Connect {
            token: Some(token),
            recover: Some(recover),
        } = connect
        else {
            panic!("not a connect: {connect:?}")
        };
        assert_eq!(token, "t");
        assert_eq!(recover.offsets["user"], 5);
        let subscribe: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","channel":"news","offset":3,"epoch":"e","id":"1"}"#).unwrap();
        assert!(matches!(subscribe, ClientMessage::Subscribe { offset: Some(3), .. }));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"connect","extra":1}"#).is_err());
    }

    #[test]
    fn server_messages_are_tagged() {
        let text = ServerMessage::Error {
            id: None,
            code: "forbidden",
            message: "no".into(),
        }
        .to_text();
        assert_eq!(text, r#"{"type":"error","code":"forbidden","message":"no"}"#);
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panic(text in ".{0,200}") {
            let _ = serde_json::from_str::<ClientMessage>(&text);
        }

        #[test]
        fn any_json_object_parses_or_fails_without_panic(
            kind in "(connect|subscribe|unsubscribe|publish|presence|refresh|x)",
            key in "[a-z]{1,8}",
            value in prop_oneof![Just("1".to_owned()), Just("\"s\"".to_owned()), Just("null".to_owned()), Just("[1,{}]".to_owned())],
        ) {
            let text = format!(r#"{{"type":"{kind}","{key}":{value}}}"#);
            let _ = serde_json::from_str::<ClientMessage>(&text);
        }
    }
}
