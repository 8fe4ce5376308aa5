//! A protocol session as the account loop sees it: something that connects,
//! reports [`Inbound`] events, sends text and closes.

use switchboard_proto::im::v1::{ChatKind, Message, Presence};
use switchboard_proto::wkt::Timestamp;

use crate::Error;
use crate::config::{AccountConfig, ProtocolConfig};
use crate::irc::IrcSession;
use crate::xmpp::XmppSession;

/// What a session reports.
#[derive(Debug)]
pub enum Inbound {
    /// Logged in and in every room or channel that could be joined.
    Ready,
    /// A message arrived.
    Message(Message),
    /// A contact's or occupant's availability changed.
    Presence(Presence),
    /// The session ended; the reason is for people.
    Closed(String),
}

/// A new message id (UUIDv7) for messages whose protocol has none.
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now as a protobuf timestamp.
pub fn now() -> Timestamp {
    let now = time::OffsetDateTime::now_utc();
    Timestamp {
        seconds: now.unix_timestamp(),
        nanos: i32::try_from(now.nanosecond()).unwrap_or(0),
    }
}

/// A session of either protocol.
#[derive(Debug)]
pub enum Session {
    /// IRC.
    Irc(Box<IrcSession>),
    /// XMPP.
    Xmpp(Box<XmppSession>),
}

impl Session {
    /// Connects (IRC: TCP/TLS and registration start; XMPP: the stream starts
    /// connecting in the background).
    pub async fn connect(account: &AccountConfig) -> Result<Self, Error> {
        match &account.protocol {
            ProtocolConfig::Irc(c) => Ok(Self::Irc(Box::new(IrcSession::connect(&account.id, c).await?))),
            ProtocolConfig::Xmpp(c) => Ok(Self::Xmpp(Box::new(XmppSession::connect(&account.id, c)?))),
        }
    }

    /// The next event; cancel-safe.
    pub async fn next(&mut self) -> Inbound {
        match self {
            Self::Irc(s) => s.next().await,
            Self::Xmpp(s) => s.next().await,
        }
    }

    /// Sends a checked text; returns the message id and the number of lines used.
    pub async fn send(
        &mut self,
        to: &str,
        text: &str,
        kind: ChatKind,
        message_id: &str,
    ) -> Result<(String, u32), Error> {
        match self {
            Self::Irc(s) => Ok((message_id.to_owned(), s.send(to, text)?)),
            Self::Xmpp(s) => {
                s.send(to, text, kind, message_id).await?;
                Ok((message_id.to_owned(), 1))
            }
        }
    }

    /// Our address (nick or JID).
    pub fn address(&self) -> String {
        match self {
            Self::Irc(s) => s.address(),
            Self::Xmpp(s) => s.address(),
        }
    }

    /// The rooms or channels this session joins.
    pub fn rooms(&self) -> Vec<String> {
        match self {
            Self::Irc(s) => s.rooms(),
            Self::Xmpp(s) => s.rooms(),
        }
    }

    /// Leaves cleanly.
    pub async fn close(self) {
        match self {
            Self::Irc(s) => (*s).close(),
            Self::Xmpp(s) => (*s).close().await,
        }
    }
}
