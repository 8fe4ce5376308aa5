//! IRC: one session per account over the `irc` crate (TLS by rustls), with SASL
//! PLAIN negotiated by hand (CAP REQ / AUTHENTICATE), nick fallback, NickServ and
//! channel joins done by the crate after the MOTD, and sending split on UTF-8
//! boundaries so no line exceeds 512 bytes. CR, LF and NUL never reach the wire:
//! a text with line breaks is sent as one PRIVMSG per line.

use std::collections::HashSet;

use base64::Engine;
use futures::StreamExt;
use irc::client::prelude::{Capability, Command, Config as IrcClientConfig, Message as IrcMessage, Response};
use irc::proto::CapSubCommand;
use switchboard_proto::im::v1::{ChatKind, Message, Presence, Protocol};

use crate::Error;
use crate::config::IrcConfig;
use crate::session::{Inbound, new_message_id, now};

/// An error with its chain of sources (`an io error occurred: invalid peer
/// certificate: UnknownIssuer`): the irc crate's own messages hide the cause.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The IRC line limit, CR LF included (RFC 1459 2.3).
pub const LINE_LIMIT: usize = 512;

/// What we keep free for the `:nick!user@host ` prefix the server adds when it
/// relays our line: the nick, a user name of up to 10 bytes and a host of up to
/// 63 bytes, with the separators.
fn prefix_reserve(nick: &str) -> usize {
    1 + nick.len() + 1 + 10 + 1 + 63 + 1
}

/// True for `#chan`, `&chan`, `+chan`, `!chan` without spaces, commas, BEL or
/// control characters.
pub fn valid_channel(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 200
        && name.starts_with(['#', '&', '+', '!'])
        && !name
            .chars()
            .any(|c| c == ' ' || c == ',' || c == '\u{7}' || c.is_control())
}

/// True for a nickname the servers we know accept (letters, digits, `[]\\`_^{|}-`,
/// not starting with a digit or `-`).
pub fn valid_nick(nick: &str) -> bool {
    let mut chars = nick.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let special = |c: char| "[]\\`_^{|}".contains(c);
    nick.len() <= 64
        && (first.is_ascii_alphabetic() || special(first))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
}

/// Checks `to` and says whether it is a channel (GROUP) or a nick (DIRECT).
pub fn check_recipient(to: &str, kind: ChatKind) -> Result<ChatKind, Error> {
    let invalid = |reason: &str| Error::InvalidRecipient {
        to: to.to_owned(),
        reason: reason.to_owned(),
    };
    if valid_channel(to) {
        if kind == ChatKind::Direct {
            return Err(invalid("a channel name cannot be a direct recipient"));
        }
        Ok(ChatKind::Group)
    } else if valid_nick(to) {
        if kind == ChatKind::Group {
            return Err(invalid("a group recipient must be a channel (#name)"));
        }
        Ok(ChatKind::Direct)
    } else {
        Err(invalid("not an IRC nickname or #channel"))
    }
}

/// Splits `text` into pieces that fit `max_bytes` each: one piece per line of the
/// text (CR, LF and NUL are never part of a piece), long lines cut at the last
/// space that keeps the piece over half full, else at a UTF-8 character boundary.
/// Empty lines are dropped.
pub fn split_text(text: &str, max_bytes: usize) -> Vec<String> {
    let max_bytes = max_bytes.max(4);
    let mut pieces = Vec::new();
    for line in text.split(['\r', '\n']) {
        let line: String = line.chars().filter(|&c| c != '\0').collect();
        let mut rest = line.as_str();
        while !rest.is_empty() {
            if rest.len() <= max_bytes {
                pieces.push(rest.to_owned());
                break;
            }
            let mut cut = max_bytes;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            if let Some(space) = rest[..cut].rfind(' ')
                && space >= cut / 2
                && space > 0
            {
                cut = space;
            }
            pieces.push(rest[..cut].to_owned());
            rest = rest[cut..].strip_prefix(' ').unwrap_or(&rest[cut..]);
        }
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// How many text bytes fit in one `PRIVMSG <to> :<text>` line from `nick`.
pub fn text_budget(nick: &str, to: &str) -> usize {
    let fixed = prefix_reserve(nick) + "PRIVMSG ".len() + to.len() + " :".len() + "\r\n".len();
    LINE_LIMIT.saturating_sub(fixed)
}

#[derive(Debug, PartialEq, Eq)]
enum Sasl {
    Off,
    Requested,
    Authenticating,
    Done,
}

/// A connected IRC session.
pub struct IrcSession {
    account: String,
    client: irc::client::Client,
    stream: irc::client::ClientStream,
    sasl: Sasl,
    sasl_user: String,
    sasl_password: String,
    motd_done: bool,
    pending_joins: HashSet<String>,
    channels: Vec<String>,
    ready: bool,
}

impl std::fmt::Debug for IrcSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrcSession")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

impl IrcSession {
    /// Connects and starts registration (CAP/SASL, PASS, NICK, USER).
    pub async fn connect(account: &str, config: &IrcConfig) -> Result<Self, Error> {
        let client_config = IrcClientConfig {
            nickname: Some(config.nick.clone()),
            alt_nicks: config.alt_nicks.clone(),
            username: Some(config.username.clone().unwrap_or_else(|| config.nick.clone())),
            realname: Some(config.realname.clone().unwrap_or_else(|| "Switchboard".to_owned())),
            server: Some(config.server.clone()),
            port: Some(config.port.unwrap_or(if config.tls { 6697 } else { 6667 })),
            use_tls: Some(config.tls),
            cert_path: config.ca_file.as_ref().map(|p| p.to_string_lossy().into_owned()),
            password: config.server_password.as_ref().map(|p| p.expose().to_owned()),
            nick_password: config.nickserv_password.as_ref().map(|p| p.expose().to_owned()),
            channels: config.channels.clone(),
            burst_window_length: Some(u32::try_from(config.rate_window.as_secs()).unwrap_or(u32::MAX)),
            max_messages_in_burst: Some(config.rate_burst),
            ping_time: Some(60),
            ping_timeout: Some(30),
            encoding: Some("UTF-8".to_owned()),
            ..IrcClientConfig::default()
        };
        let mut client = irc::client::Client::from_config(client_config)
            .await
            .map_err(|e| Error::Session(format!("cannot connect to {}: {}", config.server, with_sources(&e))))?;
        let stream = client
            .stream()
            .map_err(|e| Error::Session(format!("IRC stream: {e}")))?;
        let sasl = match (&config.sasl_user, &config.sasl_password) {
            (Some(_), Some(_)) => Sasl::Requested,
            _ => Sasl::Off,
        };
        let send = |m: Command| client.send(m).map_err(|e| Error::Session(format!("IRC send: {e}")));
        if sasl == Sasl::Requested {
            send(Command::CAP(
                None,
                CapSubCommand::REQ,
                None,
                Some(Capability::Sasl.as_ref().to_owned()),
            ))?;
            if let Some(password) = &config.server_password {
                send(Command::PASS(password.expose().to_owned()))?;
            }
            send(Command::NICK(config.nick.clone()))?;
            send(Command::USER(
                config.username.clone().unwrap_or_else(|| config.nick.clone()),
                "0".to_owned(),
                config.realname.clone().unwrap_or_else(|| "Switchboard".to_owned()),
            ))?;
        } else {
            client
                .identify()
                .map_err(|e| Error::Session(format!("IRC send: {e}")))?;
        }
        Ok(Self {
            account: account.to_owned(),
            client,
            stream,
            sasl,
            sasl_user: config.sasl_user.clone().unwrap_or_default(),
            sasl_password: config
                .sasl_password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
            motd_done: false,
            pending_joins: config.channels.iter().map(|c| lower(c)).collect(),
            channels: config.channels.clone(),
            ready: false,
        })
    }

    /// The nick in use.
    pub fn address(&self) -> String {
        self.client.current_nickname().to_owned()
    }

    /// The configured channels.
    pub fn rooms(&self) -> Vec<String> {
        self.channels.clone()
    }

    fn send_raw(&self, command: Command) -> Result<(), Error> {
        self.client
            .send(command)
            .map_err(|e| Error::Session(format!("IRC send: {e}")))
    }

    /// The next thing that happened on the connection.
    pub async fn next(&mut self) -> Inbound {
        loop {
            let message = match self.stream.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Inbound::Closed(format!("IRC connection failed: {e}")),
                None => return Inbound::Closed("IRC connection closed".to_owned()),
            };
            match self.handle(message) {
                Ok(Some(inbound)) => return inbound,
                Ok(None) => {}
                Err(e) => return Inbound::Closed(e.to_string()),
            }
        }
    }

    fn check_ready(&mut self) -> Option<Inbound> {
        if !self.ready && self.motd_done && self.pending_joins.is_empty() {
            self.ready = true;
            return Some(Inbound::Ready);
        }
        None
    }

    fn handle(&mut self, message: IrcMessage) -> Result<Option<Inbound>, Error> {
        let own = lower(self.client.current_nickname());
        let source = message.source_nickname().map(str::to_owned);
        let from_full = message.prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
        let msgid = message
            .tags
            .as_ref()
            .and_then(|tags| tags.iter().find(|t| t.0 == "msgid").and_then(|t| t.1.clone()));
        match message.command {
            Command::CAP(_, CapSubCommand::ACK, ref a, ref b) if self.sasl == Sasl::Requested => {
                let caps = format!("{} {}", a.as_deref().unwrap_or(""), b.as_deref().unwrap_or(""));
                if caps.split_whitespace().any(|c| c == "sasl") {
                    self.sasl = Sasl::Authenticating;
                    self.send_raw(Command::AUTHENTICATE("PLAIN".to_owned()))?;
                }
            }
            Command::CAP(_, CapSubCommand::NAK, _, _) if self.sasl == Sasl::Requested => {
                return Err(Error::Session("the IRC server does not offer SASL".to_owned()));
            }
            Command::AUTHENTICATE(ref data) if data == "+" && self.sasl == Sasl::Authenticating => {
                let plain = format!("{}\0{}\0{}", self.sasl_user, self.sasl_user, self.sasl_password);
                let encoded = base64::engine::general_purpose::STANDARD.encode(plain.as_bytes());
                // AUTHENTICATE carries at most 400 bytes; a piece of exactly 400 is
                // followed by `+`.
                let chunks: Vec<&[u8]> = encoded.as_bytes().chunks(400).collect();
                for chunk in &chunks {
                    self.send_raw(Command::AUTHENTICATE(String::from_utf8_lossy(chunk).into_owned()))?;
                }
                if chunks.last().is_none_or(|c| c.len() == 400) {
                    self.send_raw(Command::AUTHENTICATE("+".to_owned()))?;
                }
            }
            Command::Response(Response::RPL_SASLSUCCESS, _) => {
                self.sasl = Sasl::Done;
                self.send_raw(Command::CAP(None, CapSubCommand::END, None, None))?;
            }
            Command::Response(
                Response::ERR_SASLFAIL | Response::ERR_SASLTOOLONG | Response::ERR_SASLABORT | Response::ERR_NICKLOCKED,
                ref args,
            ) => {
                return Err(Error::Session(format!(
                    "SASL authentication failed: {}",
                    args.last().map(String::as_str).unwrap_or("refused")
                )));
            }
            Command::Response(Response::RPL_ENDOFMOTD | Response::ERR_NOMOTD, _) => {
                self.motd_done = true;
                return Ok(self.check_ready());
            }
            Command::Response(
                Response::ERR_NOSUCHCHANNEL
                | Response::ERR_TOOMANYCHANNELS
                | Response::ERR_CHANNELISFULL
                | Response::ERR_INVITEONLYCHAN
                | Response::ERR_BANNEDFROMCHAN
                | Response::ERR_BADCHANNELKEY,
                ref args,
            ) => {
                if let Some(channel) = args.get(1)
                    && self.pending_joins.remove(&lower(channel))
                {
                    tracing::warn!(account = %self.account, %channel, reason = ?args.last(), "cannot join channel");
                    return Ok(self.check_ready());
                }
            }
            Command::JOIN(ref channel, _, _) => {
                if source.as_deref().map(lower).as_deref() == Some(own.as_str()) {
                    self.pending_joins.remove(&lower(channel));
                    return Ok(self.check_ready());
                }
                return Ok(Some(Inbound::Presence(Presence {
                    account: self.account.clone(),
                    protocol: Protocol::Irc as i32,
                    from: source.unwrap_or_default(),
                    available: true,
                    room: channel.clone(),
                    ..Presence::default()
                })));
            }
            Command::PART(ref channel, ref reason) if source.as_deref().map(lower).as_deref() != Some(own.as_str()) => {
                return Ok(Some(Inbound::Presence(Presence {
                    account: self.account.clone(),
                    protocol: Protocol::Irc as i32,
                    from: source.unwrap_or_default(),
                    available: false,
                    status: reason.clone().unwrap_or_default(),
                    room: channel.clone(),
                    ..Presence::default()
                })));
            }
            Command::QUIT(ref reason) if source.as_deref().map(lower).as_deref() != Some(own.as_str()) => {
                return Ok(Some(Inbound::Presence(Presence {
                    account: self.account.clone(),
                    protocol: Protocol::Irc as i32,
                    from: source.unwrap_or_default(),
                    available: false,
                    status: reason.clone().unwrap_or_default(),
                    ..Presence::default()
                })));
            }
            Command::KICK(ref channel, ref user, _) if lower(user) == own => {
                tracing::warn!(account = %self.account, %channel, "kicked; rejoining");
                self.send_raw(Command::JOIN(channel.clone(), None, None))?;
            }
            Command::ERROR(ref reason) => {
                return Err(Error::Session(format!("IRC server closed the link: {reason}")));
            }
            Command::PRIVMSG(ref target, ref body) => {
                let Some(from) = source else {
                    return Ok(None);
                };
                let text = match body.strip_prefix('\u{1}') {
                    Some(ctcp) => match ctcp.strip_prefix("ACTION ") {
                        Some(action) => format!("/me {}", action.trim_end_matches('\u{1}')),
                        None => return Ok(None),
                    },
                    None => body.clone(),
                };
                let group = valid_channel(target);
                return Ok(Some(Inbound::Message(Message {
                    account: self.account.clone(),
                    protocol: Protocol::Irc as i32,
                    kind: if group { ChatKind::Group } else { ChatKind::Direct } as i32,
                    from,
                    to: target.clone(),
                    room: if group { target.clone() } else { String::new() },
                    text,
                    message_id: msgid.unwrap_or_else(new_message_id),
                    timestamp: Some(now()),
                    from_full,
                })));
            }
            _ => {}
        }
        Ok(None)
    }

    /// Sends `text` to `to`, one PRIVMSG per piece; returns the number of pieces.
    pub fn send(&mut self, to: &str, text: &str) -> Result<u32, Error> {
        let budget = text_budget(self.client.current_nickname(), to);
        if budget < 32 {
            return Err(Error::InvalidRecipient {
                to: to.to_owned(),
                reason: "too long to leave room for text in a 512-byte line".to_owned(),
            });
        }
        let pieces = split_text(text, budget);
        if pieces.is_empty() {
            return Err(Error::EmptyText);
        }
        for piece in &pieces {
            self.send_raw(Command::PRIVMSG(to.to_owned(), piece.clone()))?;
        }
        Ok(u32::try_from(pieces.len()).unwrap_or(u32::MAX))
    }

    /// Says goodbye.
    pub fn close(self) {
        let _ = self.client.send_quit("im-bridge stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_keeps_short_text_whole() {
        assert_eq!(split_text("hello", 100), vec!["hello"]);
    }

    #[test]
    fn split_makes_one_piece_per_line_and_drops_cr_lf_nul() {
        assert_eq!(split_text("a\r\nb\n\nc\rd\0e", 100), vec!["a", "b", "c", "de"]);
    }

    #[test]
    fn split_cuts_at_spaces_and_char_boundaries() {
        let pieces = split_text("zażółć gęślą jaźń zażółć", 12);
        for p in &pieces {
            assert!(p.len() <= 12, "{p:?}");
        }
        assert_eq!(pieces.join(" "), "zażółć gęślą jaźń zażółć");
    }

    #[test]
    fn budget_keeps_lines_under_512() {
        let nick = "switchboard";
        let to = "#ops";
        let budget = text_budget(nick, to);
        let line = format!(
            ":{nick}!{}@{} PRIVMSG {to} :{}\r\n",
            "u".repeat(10),
            "h".repeat(63),
            "x".repeat(budget)
        );
        assert_eq!(line.len(), LINE_LIMIT);
    }

    #[test]
    fn recipients_are_checked() {
        assert_eq!(
            check_recipient("#ops", ChatKind::Unspecified).ok(),
            Some(ChatKind::Group)
        );
        assert_eq!(
            check_recipient("alice", ChatKind::Unspecified).ok(),
            Some(ChatKind::Direct)
        );
        assert!(check_recipient("alice bob", ChatKind::Unspecified).is_err());
        assert!(check_recipient("a\r\nQUIT", ChatKind::Unspecified).is_err());
        assert!(check_recipient("#a,#b", ChatKind::Unspecified).is_err());
        assert!(check_recipient(":x", ChatKind::Unspecified).is_err());
        assert!(check_recipient("", ChatKind::Unspecified).is_err());
        assert!(check_recipient("#ops", ChatKind::Direct).is_err());
        assert!(check_recipient("alice", ChatKind::Group).is_err());
    }

    proptest! {
        #[test]
        fn split_never_breaks_limits(text in "\\PC{0,400}|[a\r\n\0 ł€😀]{0,300}", max in 4usize..600) {
            let pieces = split_text(&text, max);
            for p in &pieces {
                prop_assert!(p.len() <= max);
                prop_assert!(!p.contains(['\r', '\n', '\0']));
                prop_assert!(!p.is_empty());
            }
            let kept: String = text.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0' | ' ')).collect();
            let joined: String = pieces.concat().chars().filter(|c| *c != ' ').collect();
            prop_assert_eq!(kept, joined);
        }
    }
}
