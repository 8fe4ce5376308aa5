//! XMPP: one session per account over tokio-xmpp's `StanzaStream` (STARTTLS or
//! direct TLS through [`crate::tls::XmppConnector`], or plaintext when explicitly
//! allowed), joining MUC rooms, turning chat and groupchat messages and presence
//! into events, and sending. minidom escapes text for XML; characters XML 1.0
//! cannot carry at all are removed.
//!
//! tokio-xmpp reconnects by itself; we close the stream when it reports the
//! connection lost, or when our TLS connector reports a failed attempt (refused
//! connection, untrusted certificate, no STARTTLS), so the account loop owns
//! reconnects, backoff and link events, with the failure as the link-down reason.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use switchboard_proto::im::v1::{ChatKind, Message, Presence, Protocol};
use tokio::sync::mpsc;
use tokio_xmpp::Stanza;
use tokio_xmpp::connect::{DnsConfig, TcpServerConnector};
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::parsers::message::{Id, Lang, Message as XmppMessage, MessageType};
use tokio_xmpp::parsers::muc::user::{MucUser, Status as MucStatus};
use tokio_xmpp::parsers::muc::{Muc, muc::History};
use tokio_xmpp::parsers::presence::{Presence as XmppPresence, Show, Type as PresenceType};
use tokio_xmpp::stanzastream::{Event, StanzaStage, StanzaState, StanzaStream, StreamEvent};
use tokio_xmpp::xmlstream::Timeouts;

use crate::Error;
use crate::config::{RoomConfig, XmppConfig, XmppTls};
use crate::session::{Inbound, new_message_id, now};
use crate::tls::{Mode, XmppConnector, client_config};

/// The occupant JID `room/nick` of a MUC nickname.
pub fn occupant(room: &str, nick: &str) -> Result<FullJid, String> {
    let room: BareJid = room.parse().map_err(|e| format!("{e}"))?;
    room.with_resource_str(nick).map_err(|e| format!("{e}"))
}

/// Removes the characters XML 1.0 cannot carry (most C0 controls); the rest is
/// escaped by the serializer.
pub fn xml_safe(text: &str) -> String {
    text.chars()
        .filter(|&c| matches!(c, '\t' | '\n' | '\r') || !(c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}'))
        .collect()
}

/// Checks `to`: a JID, and for groups a configured room. Unspecified kind is
/// GROUP for a configured room, else DIRECT.
pub fn check_recipient(to: &str, kind: ChatKind, rooms: &[RoomConfig]) -> Result<ChatKind, Error> {
    let jid: Jid = to.parse().map_err(|e| Error::InvalidRecipient {
        to: to.to_owned(),
        reason: format!("not a JID: {e}"),
    })?;
    let is_room = rooms
        .iter()
        .any(|r| r.jid.parse::<BareJid>().ok().as_ref() == Some(&jid.to_bare()));
    match kind {
        ChatKind::Group if jid.resource().is_some() => Err(Error::InvalidRecipient {
            to: to.to_owned(),
            reason: "a room is addressed by its bare JID".to_owned(),
        }),
        ChatKind::Group if !is_room => Err(Error::InvalidRecipient {
            to: to.to_owned(),
            reason: "not one of this account's rooms".to_owned(),
        }),
        ChatKind::Group => Ok(ChatKind::Group),
        ChatKind::Direct => Ok(ChatKind::Direct),
        _ if is_room && jid.resource().is_none() => Ok(ChatKind::Group),
        _ => Ok(ChatKind::Direct),
    }
}

/// A connecting or connected XMPP session.
pub struct XmppSession {
    account: String,
    stream: StanzaStream,
    config: XmppConfig,
    bound: Option<FullJid>,
    pending_rooms: HashSet<BareJid>,
    rooms: Vec<(BareJid, String)>,
    ready: bool,
    failures: mpsc::UnboundedReceiver<String>,
}

impl std::fmt::Debug for XmppSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppSession")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl XmppSession {
    /// Starts connecting; [`Inbound::Ready`] follows once logged in and in the rooms.
    pub fn connect(account: &str, config: &XmppConfig) -> Result<Self, Error> {
        let bare: BareJid = config
            .jid
            .parse()
            .map_err(|e| Error::Session(format!("jid {:?}: {e}", config.jid)))?;
        let full = bare
            .with_resource_str(&config.resource)
            .map_err(|e| Error::Session(format!("resource {:?}: {e}", config.resource)))?;
        let domain = bare.domain().to_string();
        let host = config.host.clone().unwrap_or_else(|| domain.clone());
        let timeouts = Timeouts {
            read_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(30),
        };
        let password = config.password.expose().to_owned();
        let jid = Jid::from(full);
        let (failures_tx, failures) = mpsc::unbounded_channel();
        let stream = match config.tls {
            XmppTls::Starttls => {
                let dns = match config.host {
                    Some(_) => DnsConfig::no_srv(&host, config.port.unwrap_or(5222)),
                    None => DnsConfig::srv_default_client(&domain),
                };
                let tls = client_config(config.ca_file.as_deref())?;
                let connector = XmppConnector::new(dns, Mode::StartTls, tls, failures_tx);
                StanzaStream::new_c2s(connector, jid, password, timeouts, 256)
            }
            XmppTls::Direct => {
                let dns = match config.host {
                    Some(_) => DnsConfig::no_srv(&host, config.port.unwrap_or(5223)),
                    None => DnsConfig::srv_xmpps(&domain),
                };
                let tls = client_config(config.ca_file.as_deref())?;
                let connector = XmppConnector::new(dns, Mode::Direct, tls, failures_tx);
                StanzaStream::new_c2s(connector, jid, password, timeouts, 256)
            }
            XmppTls::Plaintext => {
                if !config.allow_plaintext {
                    return Err(Error::Session(
                        "plaintext XMPP is not allowed for this account".to_owned(),
                    ));
                }
                let dns = DnsConfig::no_srv(&host, config.port.unwrap_or(5222));
                StanzaStream::new_c2s(TcpServerConnector::from(dns), jid, password, timeouts, 256)
            }
        };
        let rooms: Vec<(BareJid, String)> = config
            .rooms
            .iter()
            .filter_map(|r| r.jid.parse::<BareJid>().ok().map(|j| (j, r.nick.clone())))
            .collect();
        Ok(Self {
            account: account.to_owned(),
            stream,
            config: config.clone(),
            bound: None,
            pending_rooms: HashSet::new(),
            rooms,
            ready: false,
            failures,
        })
    }

    /// The bound JID, or the configured one before binding.
    pub fn address(&self) -> String {
        self.bound
            .as_ref()
            .map(|j| j.to_string())
            .unwrap_or_else(|| self.config.jid.clone())
    }

    /// The configured rooms.
    pub fn rooms(&self) -> Vec<String> {
        self.config.rooms.iter().map(|r| r.jid.clone()).collect()
    }

    async fn send_stanza(&mut self, stanza: Stanza) -> Result<(), Error> {
        let mut token = self.stream.send(Box::new(stanza)).await;
        match tokio::time::timeout(Duration::from_secs(10), token.wait_for(StanzaStage::Sent)).await {
            Ok(Some(StanzaState::Sent { .. } | StanzaState::Acked { .. })) => Ok(()),
            Ok(Some(StanzaState::Failed { error })) => {
                Err(Error::Session(format!("XMPP send failed: {}", error.into_io_error())))
            }
            Ok(_) => Err(Error::Session(
                "XMPP stream closed before the stanza was sent".to_owned(),
            )),
            Err(_) => Err(Error::Session("XMPP stanza not sent within 10s".to_owned())),
        }
    }

    async fn on_online(&mut self, bound: Jid) -> Result<Option<Inbound>, Error> {
        self.bound = bound.try_as_full().ok().cloned();
        self.send_stanza(XmppPresence::available().into()).await?;
        self.pending_rooms.clear();
        for (i, (room, nick)) in self.rooms.clone().into_iter().enumerate() {
            let Ok(to) = room.with_resource_str(&nick) else {
                continue;
            };
            let mut muc = Muc::new().with_history(History::new().with_maxstanzas(0));
            if let Some(password) = self.config.rooms.get(i).and_then(|r| r.password.as_ref()) {
                muc = muc.with_password(password.expose().to_owned());
            }
            let presence = XmppPresence::available().with_to(to).with_payload(muc);
            self.send_stanza(presence.into()).await?;
            self.pending_rooms.insert(room);
        }
        Ok(self.check_ready())
    }

    fn check_ready(&mut self) -> Option<Inbound> {
        if !self.ready && self.bound.is_some() && self.pending_rooms.is_empty() {
            self.ready = true;
            return Some(Inbound::Ready);
        }
        None
    }

    fn room_nick(&self, room: &BareJid) -> Option<&str> {
        self.rooms.iter().find(|(r, _)| r == room).map(|(_, n)| n.as_str())
    }

    /// The next thing that happened on the stream.
    pub async fn next(&mut self) -> Inbound {
        loop {
            let event = tokio::select! {
                event = self.stream.next() => match event {
                    Some(event) => event,
                    None => return Inbound::Closed("XMPP stream closed".to_owned()),
                },
                Some(failure) = self.failures.recv() => {
                    return Inbound::Closed(format!("XMPP connection failed: {failure}"));
                }
            };
            let outcome = match event {
                Event::Stream(StreamEvent::Reset { bound_jid, .. }) => {
                    if self.ready {
                        return Inbound::Closed("XMPP stream was reset".to_owned());
                    }
                    self.on_online(bound_jid).await
                }
                Event::Stream(StreamEvent::Suspended) => return Inbound::Closed("XMPP connection lost".to_owned()),
                Event::Stream(StreamEvent::Resumed) => Ok(None),
                Event::Stanza(Stanza::Message(message)) => Ok(self.on_message(message)),
                Event::Stanza(Stanza::Presence(presence)) => Ok(self.on_presence(presence)),
                Event::Stanza(_) => Ok(None),
            };
            match outcome {
                Ok(Some(inbound)) => return inbound,
                Ok(None) => {}
                Err(e) => return Inbound::Closed(e.to_string()),
            }
        }
    }

    fn on_message(&mut self, message: XmppMessage) -> Option<Inbound> {
        let from = message.from.clone()?;
        let text = message
            .bodies
            .get("")
            .or_else(|| message.bodies.values().next())?
            .clone();
        let message_id = message
            .id
            .as_ref()
            .map(|id| id.0.clone())
            .unwrap_or_else(new_message_id);
        let own = self.bound.as_ref().map(|j| j.to_bare().to_string()).unwrap_or_default();
        let base = Message {
            account: self.account.clone(),
            protocol: Protocol::Xmpp as i32,
            text,
            message_id,
            timestamp: Some(now()),
            from_full: from.to_string(),
            ..Message::default()
        };
        match message.type_ {
            MessageType::Groupchat => {
                let room = from.to_bare();
                let nick = from.resource()?.to_string();
                if self.room_nick(&room) == Some(nick.as_str()) {
                    return None; // our own message echoed by the room
                }
                Some(Inbound::Message(Message {
                    kind: ChatKind::Group as i32,
                    from: nick,
                    to: room.to_string(),
                    room: room.to_string(),
                    ..base
                }))
            }
            MessageType::Chat | MessageType::Normal => Some(Inbound::Message(Message {
                kind: ChatKind::Direct as i32,
                from: from.to_bare().to_string(),
                to: own,
                ..base
            })),
            MessageType::Error | MessageType::Headline => None,
        }
    }

    fn on_presence(&mut self, presence: XmppPresence) -> Option<Inbound> {
        let from = presence.from.clone()?;
        let bare = from.to_bare();
        let is_room = self.room_nick(&bare).is_some();
        if is_room {
            let nick = from.resource().map(|r| r.to_string()).unwrap_or_default();
            let own_nick = self.room_nick(&bare).map(str::to_owned);
            if presence.type_ == PresenceType::Error {
                if self.pending_rooms.remove(&bare) {
                    tracing::warn!(account = %self.account, room = %bare, "cannot join room");
                    return self.check_ready();
                }
                return None;
            }
            let self_presence = presence
                .payloads
                .iter()
                .filter_map(|p| MucUser::try_from(p.clone()).ok())
                .any(|u| u.status.contains(&MucStatus::SelfPresence))
                || own_nick.as_deref() == Some(nick.as_str());
            if self_presence {
                if self.pending_rooms.remove(&bare) {
                    return self.check_ready();
                }
                return None;
            }
            return Some(Inbound::Presence(self.presence_event(
                &presence,
                nick,
                bare.to_string(),
            )));
        }
        if !matches!(presence.type_, PresenceType::None | PresenceType::Unavailable) {
            return None; // subscription requests and probes are not availability
        }
        Some(Inbound::Presence(self.presence_event(
            &presence,
            bare.to_string(),
            String::new(),
        )))
    }

    fn presence_event(&self, presence: &XmppPresence, from: String, room: String) -> Presence {
        Presence {
            account: self.account.clone(),
            protocol: Protocol::Xmpp as i32,
            from,
            available: presence.type_ == PresenceType::None,
            show: match presence.show {
                Some(Show::Away) => "away",
                Some(Show::Chat) => "chat",
                Some(Show::Dnd) => "dnd",
                Some(Show::Xa) => "xa",
                None => "",
            }
            .to_owned(),
            status: presence.statuses.values().next().cloned().unwrap_or_default(),
            room,
        }
    }

    /// Sends `text` to `to` as a chat or groupchat message with id `id`.
    pub async fn send(&mut self, to: &str, text: &str, kind: ChatKind, id: &str) -> Result<(), Error> {
        let jid: Jid = to.parse().map_err(|e| Error::InvalidRecipient {
            to: to.to_owned(),
            reason: format!("not a JID: {e}"),
        })?;
        let text = xml_safe(text);
        if text.is_empty() {
            return Err(Error::EmptyText);
        }
        let type_ = if kind == ChatKind::Group {
            MessageType::Groupchat
        } else {
            MessageType::Chat
        };
        let mut message = XmppMessage::new_with_type(type_, Some(jid)).with_body(Lang::new(), text);
        message.id = Some(Id(id.to_owned()));
        self.send_stanza(message.into()).await
    }

    /// Closes the stream cleanly (bounded, so a dead server cannot hold us).
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms() -> Vec<RoomConfig> {
        vec![RoomConfig {
            jid: "ops@conference.localhost".to_owned(),
            nick: "bot".to_owned(),
            password: None,
        }]
    }

    #[test]
    fn recipients_are_checked() {
        let r = rooms();
        assert_eq!(
            check_recipient("alice@localhost", ChatKind::Unspecified, &r).ok(),
            Some(ChatKind::Direct)
        );
        assert_eq!(
            check_recipient("ops@conference.localhost", ChatKind::Unspecified, &r).ok(),
            Some(ChatKind::Group)
        );
        assert_eq!(
            check_recipient("ops@conference.localhost/alice", ChatKind::Unspecified, &r).ok(),
            Some(ChatKind::Direct)
        );
        assert!(check_recipient("other@conference.localhost", ChatKind::Group, &r).is_err());
        assert!(check_recipient("", ChatKind::Unspecified, &r).is_err());
        assert!(check_recipient("a b@@", ChatKind::Unspecified, &r).is_err());
    }

    #[test]
    fn xml_safe_keeps_text_and_drops_what_xml_cannot_carry() {
        assert_eq!(xml_safe("a<b>&\"'\u{0}\u{1b}[31m\tł\n"), "a<b>&\"'[31m\tł\n");
    }
}
