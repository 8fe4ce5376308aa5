//! One PBX session: connect, banner, login, filters, keepalive, reconnect with
//! backoff, actions matched by ActionID, and every event onto the bus in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use switchboard_bus::cloudevent::{RFC3339_MAX_LEN, rfc3339};
use switchboard_bus::{Bus, CloudEvent, Subjects, event_types};
use switchboard_proto::ami::v1 as pb;
use switchboard_proto::common::v1::LinkState;
use switchboard_proto::wkt;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{AmiSettings, AuthMode, PbxConfig};
use crate::parser::{Frame, Message, ParseError, Parser};
use crate::sim::md5_key;

/// Why an action got no AMI response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No session to this PBX right now.
    #[error("PBX {0} is not connected")]
    NotConnected(String),
    /// No complete response within the timeout.
    #[error("no complete response to {action} within {timeout:?}")]
    Timeout {
        /// The action.
        action: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The session dropped while the action was in flight.
    #[error("the session to PBX {pbx} dropped while {action} was in flight: {reason}")]
    SessionLost {
        /// The PBX.
        pbx: String,
        /// The action.
        action: String,
        /// Why the session ended.
        reason: String,
    },
    /// Refused before sending: CR/LF in a header, a denied action, a bad name.
    #[error("refused: {0}")]
    Refused(String),
    /// No such PBX configured.
    #[error("no PBX {0}")]
    UnknownPbx(String),
}

/// An action on its way to the session.
#[derive(Debug)]
pub struct ActionCall {
    request: pb::ActionRequest,
    reply: oneshot::Sender<Result<pb::ActionResponse, ActionError>>,
}

/// What callers hold to reach one PBX session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pbx: String,
    calls: mpsc::Sender<ActionCall>,
    settings: Arc<AmiSettings>,
    status: Arc<Mutex<pb::PbxStatus>>,
}

/// A header name or value that could end a line on the wire.
fn has_crlf(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

impl SessionHandle {
    /// The PBX id.
    pub fn pbx(&self) -> &str {
        &self.pbx
    }

    /// A snapshot of the session's status.
    pub fn status(&self) -> pb::PbxStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Checks a caller's action: a sane name, no CR/LF anywhere, allowed here.
    pub fn check(&self, request: &pb::ActionRequest) -> Result<(), ActionError> {
        let name = request.action.as_str();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ActionError::Refused(format!("bad action name {name:?}")));
        }
        for h in &request.headers {
            if has_crlf(&h.name) || has_crlf(&h.value) {
                return Err(ActionError::Refused(format!(
                    "header {:?} contains CR or LF (command injection on a line protocol)",
                    h.name.replace(['\r', '\n'], "")
                )));
            }
            if h.name.is_empty() || h.name.contains(':') || h.name.contains(' ') {
                return Err(ActionError::Refused(format!("bad header name {:?}", h.name)));
            }
            if h.name.eq_ignore_ascii_case("Action") || h.name.eq_ignore_ascii_case("ActionID") {
                return Err(ActionError::Refused("Action and ActionID are set by ami-bridge".into()));
            }
        }
        if !self.settings.allows_action(name) {
            return Err(ActionError::Refused(format!(
                "action {name} is not allowed on this deployment"
            )));
        }
        Ok(())
    }

    /// Sends an action and waits for its complete response (event lists collected;
    /// `Originate` waits for its `OriginateResponse`).
    pub async fn action(&self, request: pb::ActionRequest) -> Result<pb::ActionResponse, ActionError> {
        self.check(&request)?;
        self.send_unchecked(request).await
    }

    /// As [`SessionHandle::action`] without the allow/deny list (internal callers).
    pub(crate) async fn send_unchecked(
        &self,
        mut request: pb::ActionRequest,
    ) -> Result<pb::ActionResponse, ActionError> {
        let mut timeout = if request.timeout_ms == 0 {
            self.settings.action_timeout
        } else {
            Duration::from_millis(u64::from(request.timeout_ms))
        };
        if request.action.eq_ignore_ascii_case("Originate") {
            // Always async underneath: the reply waits for OriginateResponse.
            request.headers.retain(|h| !h.name.eq_ignore_ascii_case("Async"));
            request.headers.push(pb::Header {
                name: "Async".into(),
                value: "true".into(),
            });
            if request.timeout_ms == 0 {
                let ring = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("Timeout"))
                    .and_then(|h| h.value.parse::<u64>().ok())
                    .unwrap_or(30_000);
                timeout = Duration::from_millis(ring) + self.settings.originate_grace;
            }
        }
        let action = request.action.clone();
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(ActionCall { request, reply: tx })
            .await
            .map_err(|_| ActionError::NotConnected(self.pbx.clone()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ActionError::NotConnected(self.pbx.clone())),
            Err(_) => Err(ActionError::Timeout { action, timeout }),
        }
    }
}

/// What the session hands to the publisher, in wire order.
#[derive(Debug)]
pub enum Outbound {
    /// A raw event.
    Raw(RawItem),
    /// The link changed.
    Link(pb::LinkEvent),
    /// Live channels after a (re)connect.
    Snapshot(pb::ChannelSnapshot),
    /// A protocol error the session survived.
    Error(pb::ProtocolError),
}

/// One raw event with its session facts.
#[derive(Debug, Clone)]
pub struct RawItem {
    /// The PBX id.
    pub pbx: Arc<str>,
    /// The session id.
    pub session_id: Arc<str>,
    /// Position in the session (1 = first message after the banner).
    pub sequence: u64,
    /// When its last byte was read.
    pub received_at: OffsetDateTime,
    /// The message.
    pub message: Message,
}

impl RawItem {
    /// Appends the proto3 JSON of `RawEvent`, written straight from the message,
    /// to `out` (the publisher carves each event's payload off one buffer).
    pub fn write_json(&self, out: &mut BytesMut) {
        out.reserve(self.message.text().len() * 2 + 256);
        let mut ser = serde_json::Serializer::new(out.writer());
        // Writing to memory with string keys cannot fail.
        let _ = RawJson(self).serialize(&mut ser);
    }

    /// The `RawEvent` proto (gRPC).
    pub fn to_proto(&self) -> pb::RawEvent {
        pb::RawEvent {
            pbx: self.pbx.to_string(),
            event: self.message.event().unwrap_or_default().to_owned(),
            headers: headers_of(&self.message),
            fields: Some(fields_of(&self.message)),
            received_at: Some(timestamp(self.received_at)),
            sequence: self.sequence,
            session_id: self.session_id.to_string(),
        }
    }

    /// Replaces `id` with a deterministic message id: the same event read by two
    /// replicas during a lease overlap gets the same id, so JetStream keeps one.
    /// Written into the caller's `String`, which the publisher reuses.
    pub fn write_msg_id(&self, id: &mut String) {
        use std::fmt::Write as _;
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.message.text().hash(&mut h);
        id.clear();
        // Writing to a String cannot fail.
        let _ = write!(id, "ami-{}-{:016x}-{}", self.pbx, h.finish(), self.message.text().len());
    }
}

/// The wire headers as proto headers.
pub fn headers_of(m: &Message) -> Vec<pb::Header> {
    m.headers()
        .map(|(n, v)| pb::Header {
            name: n.to_owned(),
            value: v.to_owned(),
        })
        .collect()
}

/// The convenience map: name -> string, or list of strings when repeated.
pub fn fields_of(m: &Message) -> wkt::Struct {
    let mut fields: HashMap<String, wkt::Value> = HashMap::new();
    for (n, v) in m.headers() {
        match fields.get_mut(n) {
            None => {
                fields.insert(n.to_owned(), wkt::Value::from(v.to_owned()));
            }
            Some(existing) => {
                let previous = std::mem::take(existing);
                let mut list = match previous.kind {
                    Some(wkt::value::Kind::ListValue(l)) => l.values,
                    other => vec![wkt::Value { kind: other }],
                };
                list.push(wkt::Value::from(v.to_owned()));
                *existing = wkt::Value::from(list);
            }
        }
    }
    wkt::Struct { fields }
}

fn timestamp(t: OffsetDateTime) -> wkt::Timestamp {
    wkt::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// Serializes a number as a JSON string (proto3 JSON's 64-bit integers) through
/// the serializer's `collect_str`, which serde_json writes in place; `to_string`
/// would allocate.
struct Decimal(u64);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

struct RawJson<'a>(&'a RawItem);

struct HeadersJson<'a>(&'a Message);
struct FieldsJson<'a>(&'a Message);
struct Values<'a>(&'a Message, &'a str);

impl Serialize for HeadersJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (name, value) in self.0.headers() {
            seq.serialize_element(&HeaderJson { name, value })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    name: &'a str,
    value: &'a str,
}

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.headers().filter(|(n, _)| *n == self.1).map(|(_, v)| v))
    }
}

impl Serialize for FieldsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Walks the message's headers again for each one rather than collecting
        // them into a Vec first: messages have tens of headers, and this runs
        // for every event.
        let headers = || self.0.headers();
        let mut map = s.serialize_map(None)?;
        for (i, (name, value)) in headers().enumerate() {
            if headers().take(i).any(|(n, _)| n == name) {
                continue; // written with its first occurrence
            }
            let repeats = headers().skip(i + 1).any(|(n, _)| n == name);
            if repeats {
                map.serialize_entry(name, &Values(self.0, name))?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl Serialize for RawJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let item = self.0;
        let mut map = s.serialize_map(Some(7))?;
        map.serialize_entry("pbx", &*item.pbx)?;
        map.serialize_entry("event", item.message.event().unwrap_or_default())?;
        map.serialize_entry("headers", &HeadersJson(&item.message))?;
        map.serialize_entry("fields", &FieldsJson(&item.message))?;
        map.serialize_entry("receivedAt", rfc3339(item.received_at, &mut [0; RFC3339_MAX_LEN]))?;
        map.serialize_entry("sequence", &Decimal(item.sequence))?;
        map.serialize_entry("sessionId", &*item.session_id)?;
        map.end()
    }
}

/// Maps the AMI version of the banner to the Asterisk release that ships it.
pub fn asterisk_release(ami_version: &str) -> &'static str {
    let mut parts = ami_version.split('.').map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    let major = parts.next().unwrap_or(u32::MAX);
    let minor = parts.next().unwrap_or(0);
    match (major, minor) {
        (1, 0) => "1.4",
        (1, 1) => "1.6",
        (1, 2) => "1.6.2",
        (1, 3) => "1.8/10",
        (1, 4) => "11",
        (2, 0..=4) => "12",
        (2, _) => "13",
        (3, _) => "14",
        (4, _) => "15",
        (5, _) => "16",
        (6, _) => "17",
        (7, _) => "18",
        (8, _) => "19",
        (9, _) => "20",
        (10, _) => "21",
        (11, _) => "22",
        (12, _) => "23",
        _ => "unknown",
    }
}

/// Everything a session needs besides its own config.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The global `[ami]` settings.
    pub settings: Arc<AmiSettings>,
    /// Where events go (the publisher, in order).
    pub outbound: mpsc::Sender<Outbound>,
}

/// Starts the session task of one PBX; it runs until `shutdown` (or until the
/// lease is lost, when the caller cancels `shutdown`) and hands the action
/// receiver back.
pub fn spawn(
    pbx: PbxConfig,
    ctx: SessionContext,
    status: Arc<Mutex<pb::PbxStatus>>,
    calls: mpsc::Receiver<ActionCall>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<mpsc::Receiver<ActionCall>> {
    tokio::spawn(Session::new(pbx, ctx, status).run(calls, shutdown))
}

/// A handle plus the receiver its session task consumes.
pub fn channel(pbx: &PbxConfig, settings: Arc<AmiSettings>) -> (SessionHandle, mpsc::Receiver<ActionCall>) {
    let (tx, rx) = mpsc::channel(1024);
    let status = pb::PbxStatus {
        id: pbx.id.clone(),
        address: pbx.address(),
        state: LinkState::Down as i32,
        ..Default::default()
    };
    (
        SessionHandle {
            pbx: pbx.id.clone(),
            calls: tx,
            settings,
            status: Arc::new(Mutex::new(status)),
        },
        rx,
    )
}

/// Answers an action that arrives while this replica is on standby.
pub fn refuse_standby(call: ActionCall, pbx: &str) {
    let _ = call.reply.send(Err(ActionError::NotConnected(format!(
        "{pbx} (another replica holds its session)"
    ))));
}

impl SessionHandle {
    /// The shared status the session task updates.
    pub fn status_cell(&self) -> Arc<Mutex<pb::PbxStatus>> {
        self.status.clone()
    }
}

/// What a pending ActionID waits for.
enum Waiter {
    Caller {
        call: ActionCall,
        originate: bool,
        response: Option<Message>,
        events: Vec<Message>,
        list: bool,
    },
    Ping,
    Snapshot {
        events: Vec<Message>,
        started: bool,
    },
    Ignore,
}

struct Session {
    pbx: PbxConfig,
    pbx_id: Arc<str>,
    ctx: SessionContext,
    status: Arc<Mutex<pb::PbxStatus>>,
    /// Actions to send again on the next session (`retry_on_reconnect`).
    carry: Vec<ActionCall>,
}

/// Why a connection ended, for `link.down`.
type Reason = String;

/// The connection to the manager: plain TCP or TLS, dispatched statically.
type AmiStream = Either<TcpStream, TlsStream<TcpStream>>;

impl Session {
    fn new(pbx: PbxConfig, ctx: SessionContext, status: Arc<Mutex<pb::PbxStatus>>) -> Self {
        Self {
            pbx_id: Arc::from(pbx.id.as_str()),
            pbx,
            ctx,
            status,
            carry: Vec::new(),
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut pb::PbxStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    async fn run(
        mut self,
        mut calls: mpsc::Receiver<ActionCall>,
        shutdown: CancellationToken,
    ) -> mpsc::Receiver<ActionCall> {
        let mut attempt: u32 = 0;
        loop {
            self.set_status(|s| s.state = LinkState::Connecting as i32);
            let session_id: Arc<str> = Arc::from(uuid::Uuid::now_v7().to_string().as_str());
            let (reason, was_up) = self.connection(&session_id, attempt, &mut calls, &shutdown).await;
            if was_up {
                attempt = 0;
                self.link(false, &reason, &session_id, "", 0).await;
            }
            self.set_status(|s| {
                s.state = LinkState::Down as i32;
                s.last_error.clone_from(&reason);
            });
            if shutdown.is_cancelled() {
                for call in self.carry.drain(..) {
                    let _ = call.reply.send(Err(ActionError::NotConnected(self.pbx.id.clone())));
                }
                return calls;
            }
            attempt = attempt.saturating_add(1);
            let delay = backoff(&self.ctx.settings, attempt);
            tracing::warn!(pbx = %self.pbx.id, %reason, attempt, ?delay, "AMI session down; reconnecting");
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(wake) => break,
                    Some(call) = calls.recv() => {
                        if call.request.retry_on_reconnect {
                            self.carry.push(call);
                        } else {
                            let _ = call.reply.send(Err(ActionError::NotConnected(self.pbx.id.clone())));
                        }
                    }
                }
            }
            if shutdown.is_cancelled() {
                return calls;
            }
        }
    }

    async fn link(&self, up: bool, reason: &str, session_id: &str, ami_version: &str, attempt: u32) {
        let event = pb::LinkEvent {
            pbx: self.pbx.id.clone(),
            state: if up { LinkState::Up } else { LinkState::Down } as i32,
            reason: reason.to_owned(),
            address: self.pbx.address(),
            ami_version: ami_version.to_owned(),
            asterisk_version: if ami_version.is_empty() {
                String::new()
            } else {
                asterisk_release(ami_version).to_owned()
            },
            session_id: session_id.to_owned(),
            attempt,
        };
        let _ = self.ctx.outbound.send(Outbound::Link(event)).await;
    }

    /// One TCP session, from connect to its end. Returns why it ended and whether
    /// it got as far as `link.up`.
    async fn connection(
        &mut self,
        session_id: &Arc<str>,
        attempt: u32,
        calls: &mut mpsc::Receiver<ActionCall>,
        shutdown: &CancellationToken,
    ) -> (Reason, bool) {
        let settings = self.ctx.settings.clone();
        let mut parser = Parser::new(settings.limits());
        let setup = tokio::time::timeout(settings.connect_timeout, self.login(&mut parser));
        let (mut stream, ami_version, early) = tokio::select! {
            () = shutdown.cancelled() => return ("shutdown".into(), false),
            r = setup => match r {
                Err(_) => return (format!("connect/login timed out after {:?}", settings.connect_timeout), false),
                Ok(Err(reason)) => return (reason, false),
                Ok(Ok(ok)) => ok,
            },
        };
        let release = asterisk_release(&ami_version).to_owned();
        tracing::info!(pbx = %self.pbx.id, %ami_version, asterisk = %release, session = %session_id, "AMI session up");
        self.set_status(|s| {
            s.state = LinkState::Up as i32;
            s.ami_version.clone_from(&ami_version);
            s.asterisk_version.clone_from(&release);
            s.session_id = session_id.to_string();
            s.since = Some(timestamp(OffsetDateTime::now_utc()));
            s.last_error.clear();
        });
        self.link(true, "connected", session_id, &ami_version, attempt).await;

        let mut pending: HashMap<String, Waiter> = HashMap::new();
        let mut next_id: u64 = 0;
        let mut out = Vec::with_capacity(4096);
        let new_id = |next_id: &mut u64| {
            *next_id += 1;
            format!("{session_id}-{next_id}")
        };
        // Server-side filters, then the resync snapshot.
        for filter in &self.pbx.filters {
            let id = new_id(&mut next_id);
            write_action(
                &mut out,
                "Filter",
                &id,
                [("Operation", "Add"), ("Filter", filter.as_str())],
            );
            pending.insert(id, Waiter::Ignore);
        }
        let snapshot_id = new_id(&mut next_id);
        write_action(&mut out, "CoreShowChannels", &snapshot_id, []);
        pending.insert(
            snapshot_id,
            Waiter::Snapshot {
                events: Vec::new(),
                started: false,
            },
        );
        for call in std::mem::take(&mut self.carry) {
            let id = new_id(&mut next_id);
            send_call(&mut out, &mut pending, id, call);
        }
        if let Err(e) = stream.write_all(&out).await {
            return (format!("write failed: {e}"), true);
        }
        out.clear();

        let mut sequence: u64 = 0;
        let mut frames: Vec<Frame> = early;
        let mut ping_tick = tokio::time::interval(settings.ping_interval);
        ping_tick.tick().await;
        let mut ping_deadline: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let reason: Reason = 'session: loop {
            for frame in frames.drain(..) {
                let received_at = OffsetDateTime::now_utc();
                match frame {
                    Frame::Banner(_) => {}
                    Frame::Error(e) => self.protocol_error(session_id, &e).await,
                    Frame::Message(m) => {
                        sequence += 1;
                        if let Some(reason) = self
                            .dispatch(m, sequence, received_at, session_id, &mut pending, &mut ping_deadline)
                            .await
                        {
                            break 'session reason;
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let id = new_id(&mut next_id);
                    write_action(&mut out, "Logoff", &id, []);
                    let _ = stream.write_all(&out).await;
                    break 'session "shutdown".into();
                }
                read = stream.read_buf(parser.buffer_mut()) => match read {
                    Ok(0) => break 'session "eof".into(),
                    Err(e) => break 'session format!("read failed: {e}"),
                    Ok(_) => {
                        while let Some(frame) = parser.next_frame() {
                            frames.push(frame);
                        }
                    }
                },
                Some(call) = calls.recv() => {
                    let id = new_id(&mut next_id);
                    send_call(&mut out, &mut pending, id, call);
                    // Batch whatever else is queued into the same write.
                    while let Ok(call) = calls.try_recv() {
                        let id = new_id(&mut next_id);
                        send_call(&mut out, &mut pending, id, call);
                    }
                    if let Err(e) = stream.write_all(&out).await {
                        break 'session format!("write failed: {e}");
                    }
                    out.clear();
                }
                _ = ping_tick.tick() => {
                    // Forget callers that gave up (their timeout fired).
                    pending.retain(|_, w| !matches!(w, Waiter::Caller { call, .. } if call.reply.is_closed()));
                    if ping_deadline.is_none() {
                        let id = new_id(&mut next_id);
                        write_action(&mut out, "Ping", &id, []);
                        pending.insert(id, Waiter::Ping);
                        ping_deadline = Some(Instant::now() + settings.ping_timeout);
                        if let Err(e) = stream.write_all(&out).await {
                            break 'session format!("write failed: {e}");
                        }
                        out.clear();
                    }
                }
                () = tokio::time::sleep_until(ping_deadline.unwrap_or(far)), if ping_deadline.is_some() => {
                    break 'session format!("ping timeout: no pong within {:?}", settings.ping_timeout);
                }
            }
        };
        for (_, waiter) in pending.drain() {
            if let Waiter::Caller { call, .. } = waiter {
                if call.request.retry_on_reconnect && reason != "shutdown" {
                    self.carry.push(call);
                } else {
                    let action = call.request.action.clone();
                    let _ = call.reply.send(Err(ActionError::SessionLost {
                        pbx: self.pbx.id.clone(),
                        action,
                        reason: reason.clone(),
                    }));
                }
            }
        }
        (reason, true)
    }

    /// Connects, reads the banner and logs in. Frames that arrive in the same read
    /// as the login response are kept and returned.
    async fn login(&self, parser: &mut Parser) -> Result<(AmiStream, String, Vec<Frame>), Reason> {
        let address = self.pbx.address();
        let tcp = TcpStream::connect(&address)
            .await
            .map_err(|e| format!("connect to {address} failed: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = if self.pbx.tls {
            let name = self.pbx.tls_server_name.as_deref().unwrap_or(&self.pbx.host);
            let server = ServerName::try_from(name.to_owned()).map_err(|e| format!("TLS server name {name:?}: {e}"))?;
            let config = switchboard_runtime::tls::client_config(self.pbx.ca_file.as_deref())?;
            let tls = TlsConnector::from(config)
                .connect(server, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {address} ({name}) failed: {e}"))?;
            Either::Right(tls)
        } else {
            Either::Left(tcp)
        };
        let mut early = Vec::new();
        let banner = loop {
            if let Some(frame) = parser.next_frame() {
                match frame {
                    Frame::Banner(b) => break b,
                    other => early.push(other),
                }
                continue;
            }
            read_more(&mut stream, parser).await?;
        };
        let ami_version = banner.rsplit_once('/').map_or("", |(_, v)| v).trim().to_owned();
        if !banner.contains("Call Manager") {
            return Err(format!("not an AMI banner: {banner:?}"));
        }
        let mut out = Vec::new();
        let secret = self.pbx.secret.expose();
        let events = self.pbx.events.as_str();
        match self.pbx.auth {
            AuthMode::Plain => write_action(
                &mut out,
                "Login",
                "login",
                [
                    ("Username", self.pbx.username.as_str()),
                    ("Secret", secret),
                    ("Events", events),
                ],
            ),
            AuthMode::Md5 => {
                write_action(&mut out, "Challenge", "challenge", [("AuthType", "MD5")]);
                stream.write_all(&out).await.map_err(|e| format!("write failed: {e}"))?;
                out.clear();
                let reply = wait_reply(&mut stream, parser, "challenge", &mut early).await?;
                let Some(challenge) = reply.get("Challenge") else {
                    return Err(format!(
                        "login failed: no MD5 challenge ({})",
                        reply.get("Message").unwrap_or("no message")
                    ));
                };
                let key = md5_key(challenge, secret);
                write_action(
                    &mut out,
                    "Login",
                    "login",
                    [
                        ("AuthType", "MD5"),
                        ("Username", self.pbx.username.as_str()),
                        ("Key", key.as_str()),
                        ("Events", events),
                    ],
                );
            }
        }
        stream.write_all(&out).await.map_err(|e| format!("write failed: {e}"))?;
        let reply = wait_reply(&mut stream, parser, "login", &mut early).await?;
        if !reply.response().is_some_and(|r| r.eq_ignore_ascii_case("Success")) {
            return Err(format!(
                "login failed: {}",
                reply.get("Message").unwrap_or("no message")
            ));
        }
        // Whatever else the read brought (events after the login response) is kept.
        while let Some(frame) = parser.next_frame() {
            early.push(frame);
        }
        Ok((stream, ami_version, early))
    }

    async fn protocol_error(&self, session_id: &str, e: &ParseError) {
        tracing::warn!(pbx = %self.pbx.id, kind = e.kind.as_str(), "AMI protocol error: {}", e.message);
        let error = pb::ProtocolError {
            pbx: self.pbx.id.clone(),
            session_id: session_id.to_owned(),
            kind: e.kind.as_str().to_owned(),
            message: e.message.clone(),
            bytes_skipped: e.bytes_skipped,
        };
        let _ = self.ctx.outbound.send(Outbound::Error(error)).await;
    }

    /// Routes one message. Returns a reason when the session must end.
    async fn dispatch(
        &self,
        m: Message,
        sequence: u64,
        received_at: OffsetDateTime,
        session_id: &Arc<str>,
        pending: &mut HashMap<String, Waiter>,
        ping_deadline: &mut Option<Instant>,
    ) -> Option<Reason> {
        let id = m.action_id().map(str::to_owned);
        let is_response = m.response().is_some() && m.event().is_none();
        if let Some(id) = id.as_deref()
            && let Some(waiter) = pending.get_mut(id)
        {
            match waiter {
                Waiter::Ping => {
                    pending.remove(id);
                    *ping_deadline = None;
                    return None;
                }
                Waiter::Ignore => {
                    if is_response {
                        if m.response().is_some_and(|r| r.eq_ignore_ascii_case("Error")) {
                            tracing::warn!(pbx = %self.pbx.id, "AMI refused a filter: {}", m.get("Message").unwrap_or(""));
                        }
                        pending.remove(id);
                    }
                    return None;
                }
                Waiter::Snapshot { events, started } => {
                    if is_response {
                        *started = true;
                        if !m.get("EventList").is_some_and(|e| e.eq_ignore_ascii_case("start")) {
                            pending.remove(id);
                        }
                        return None;
                    }
                    if m.get("EventList").is_some_and(|e| e.eq_ignore_ascii_case("Complete")) {
                        let channels = events.iter().map(channel_of).collect();
                        pending.remove(id);
                        let snapshot = pb::ChannelSnapshot {
                            pbx: self.pbx.id.clone(),
                            session_id: session_id.to_string(),
                            channels,
                            taken_at: Some(timestamp(received_at)),
                        };
                        let _ = self.ctx.outbound.send(Outbound::Snapshot(snapshot)).await;
                    } else {
                        events.push(m);
                    }
                    return None;
                }
                Waiter::Caller {
                    originate,
                    response,
                    events,
                    list,
                    ..
                } => {
                    if is_response {
                        let failed = !m.response().is_some_and(|r| r.eq_ignore_ascii_case("Success"));
                        *list = m.get("EventList").is_some_and(|e| e.eq_ignore_ascii_case("start"));
                        let done = failed || (!*list && !*originate);
                        *response = Some(m);
                        if done {
                            self.complete(pending.remove(id));
                        }
                        return None;
                    }
                    if *originate && m.event().is_some_and(|e| e.eq_ignore_ascii_case("OriginateResponse")) {
                        events.push(m.clone());
                        self.complete(pending.remove(id));
                        // OriginateResponse is a real event too: publish it below.
                    } else if *list {
                        let end = m.get("EventList").is_some_and(|e| e.eq_ignore_ascii_case("Complete"));
                        events.push(m);
                        if end {
                            self.complete(pending.remove(id));
                        }
                        return None;
                    }
                }
            }
        }
        if is_response {
            // A response nobody waits for (its caller timed out).
            return None;
        }
        if m.response().is_some_and(|r| r.eq_ignore_ascii_case("Goodbye")) {
            return Some("logged off by the PBX".into());
        }
        let event = m.event()?;
        if event.eq_ignore_ascii_case("Shutdown") {
            self.publish_raw(m, sequence, received_at, session_id).await;
            return Some("PBX shutting down".into());
        }
        if self.pbx.publishes(event) {
            self.publish_raw(m, sequence, received_at, session_id).await;
        }
        None
    }

    async fn publish_raw(&self, message: Message, sequence: u64, received_at: OffsetDateTime, session_id: &Arc<str>) {
        if let Ok(mut s) = self.status.lock() {
            s.events_received += 1;
        }
        let item = RawItem {
            pbx: self.pbx_id.clone(),
            session_id: session_id.clone(),
            sequence,
            received_at,
            message,
        };
        let _ = self.ctx.outbound.send(Outbound::Raw(item)).await;
    }

    fn complete(&self, waiter: Option<Waiter>) {
        let Some(Waiter::Caller {
            call, response, events, ..
        }) = waiter
        else {
            return;
        };
        let response = response.unwrap_or_else(|| Message::from_headers([]));
        let output: Vec<String> = response.command_output().into_iter().map(str::to_owned).collect();
        let reply = pb::ActionResponse {
            pbx: self.pbx.id.clone(),
            action_id: response.action_id().unwrap_or_default().to_owned(),
            response: response.response().unwrap_or_default().to_owned(),
            message: response.get("Message").unwrap_or_default().to_owned(),
            headers: headers_of(&response),
            events: events
                .into_iter()
                .map(|m| {
                    RawItem {
                        pbx: self.pbx_id.clone(),
                        session_id: Arc::from(""),
                        sequence: 0,
                        received_at: OffsetDateTime::now_utc(),
                        message: m,
                    }
                    .to_proto()
                })
                .collect(),
            output,
            fields: Some(fields_of(&response)),
        };
        let _ = call.reply.send(Ok(reply));
    }
}

fn channel_of(m: &Message) -> pb::Channel {
    let g = |n: &str| m.get(n).unwrap_or_default().to_owned();
    pb::Channel {
        channel: g("Channel"),
        uniqueid: g("Uniqueid"),
        linkedid: g("Linkedid"),
        context: g("Context"),
        extension: g("Exten"),
        priority: g("Priority"),
        state: g("ChannelStateDesc"),
        caller_id_num: g("CallerIDNum"),
        caller_id_name: g("CallerIDName"),
        connected_line_num: g("ConnectedLineNum"),
        connected_line_name: g("ConnectedLineName"),
        application: g("Application"),
        application_data: g("ApplicationData"),
        duration: g("Duration"),
        bridge_id: g("BridgeId"),
        account_code: g("AccountCode"),
    }
}

/// Capped exponential backoff with jitter: `min * 2^(attempt-1)`, at most `max`,
/// then a random 50-100% of it so replicas and PBXs do not reconnect in step.
pub fn backoff(settings: &AmiSettings, attempt: u32) -> Duration {
    let exp = settings
        .reconnect_min
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(settings.reconnect_max);
    let jitter: f64 = rand::random_range(0.5..=1.0);
    exp.mul_f64(jitter)
}

fn send_call(out: &mut Vec<u8>, pending: &mut HashMap<String, Waiter>, id: String, call: ActionCall) {
    let headers = call.request.headers.iter().map(|h| (h.name.as_str(), h.value.as_str()));
    write_action(out, &call.request.action, &id, headers);
    let originate = call.request.action.eq_ignore_ascii_case("Originate");
    pending.insert(
        id,
        Waiter::Caller {
            call,
            originate,
            response: None,
            events: Vec::new(),
            list: false,
        },
    );
}

/// Writes one action. CR and LF were refused before; any left are replaced so
/// they can never end a line.
fn write_action<'a>(out: &mut Vec<u8>, action: &str, id: &str, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let mut line = |name: &str, value: &str| {
        for part in [name, ": ", value] {
            out.extend(part.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        }
        out.extend_from_slice(b"\r\n");
    };
    line("Action", action);
    line("ActionID", id);
    for (name, value) in headers {
        line(name, value);
    }
    out.extend_from_slice(b"\r\n");
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, parser: &mut Parser) -> Result<(), Reason> {
    match stream.read_buf(parser.buffer_mut()).await {
        Ok(0) => Err("eof".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read failed: {e}")),
    }
}

async fn wait_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    parser: &mut Parser,
    id: &str,
    early: &mut Vec<Frame>,
) -> Result<Message, Reason> {
    loop {
        while let Some(frame) = parser.next_frame() {
            match frame {
                Frame::Message(m) if m.action_id() == Some(id) && m.response().is_some() => return Ok(m),
                other => early.push(other),
            }
        }
        read_more(stream, parser).await.map_err(|e| {
            if e == "eof" {
                "login failed: the PBX closed the connection".to_owned()
            } else {
                e
            }
        })?;
    }
}

/// The raw-event subject of each PBX and event name seen, made once: the
/// publisher clones a [`async_nats::Subject`] (a reference count) for each event
/// instead of formatting a new subject `String` that the client then copies.
#[derive(Debug, Default)]
struct RawSubjects {
    /// Subjects by PBX, then by the event name as the PBX spelled it.
    by_pbx: HashMap<Arc<str>, HashMap<String, async_nats::Subject>>,
}

impl RawSubjects {
    /// Most event names kept per PBX. Asterisk has a few hundred; a PBX that
    /// sends more (made-up names) has its map cleared rather than grown without
    /// bound.
    const MAX_NAMES: usize = 1024;

    /// `sb.evt.ami.<pbx>.raw.<event>`, as [`Subjects::ami_raw`] makes it.
    fn get(&mut self, subjects: &Subjects, pbx: &Arc<str>, event: &str) -> async_nats::Subject {
        let names = self.by_pbx.entry(pbx.clone()).or_default();
        if let Some(subject) = names.get(event) {
            return subject.clone();
        }
        if names.len() >= Self::MAX_NAMES {
            names.clear();
        }
        let subject = async_nats::Subject::from(subjects.ami_raw(pbx, event));
        names.insert(event.to_owned(), subject.clone());
        subject
    }
}

/// How much the publisher's JSON buffer takes from the allocator at a time. Each
/// raw event's payload is split off it, so one allocation serves about a hundred
/// events of a flood; it stays alive until the last payload cut from it is sent.
const JSON_CHUNK: usize = 64 * 1024;

/// Publishes one event and queues its ack (a failure is counted and logged: the
/// publisher goes on with the next event).
async fn publish(
    bus: &Bus,
    subject: impl Into<async_nats::Subject>,
    event: &CloudEvent,
    span: tracing::Span,
    acks: &mut std::collections::VecDeque<async_nats::jetstream::context::PublishAckFuture>,
) {
    match bus.publish_async(subject, event).instrument(span).await {
        Ok(ack) => acks.push_back(ack),
        Err(e) => {
            metrics::counter!("ami_publish_failures_total").increment(1);
            tracing::warn!("publish failed: {e}");
        }
    }
}

/// Publishes what sessions produce, in order, with pipelined acks.
pub async fn publisher(
    bus: Bus,
    mut rx: mpsc::Receiver<Outbound>,
    window: usize,
    live: broadcast::Sender<Arc<pb::EventsItem>>,
) {
    let subjects = bus.subjects().clone();
    let mut acks = std::collections::VecDeque::with_capacity(window);
    let mut tracker = crate::calls::CallTracker::default();
    let mut raw_subjects = RawSubjects::default();
    // One raw event, refilled for every raw event (its id and subject strings
    // keep their memory), and one buffer the JSON payloads are split off.
    let mut raw_event = CloudEvent::new(bus.source(), event_types::AMI_RAW, Bytes::new());
    let mut json = BytesMut::with_capacity(JSON_CHUNK);
    // A derived call event starts a trace (its span's context rides in the NATS
    // headers, so the rules and pushes it causes join it); raw events do not, at
    // tens of thousands per second. Kept across items for its memory.
    let mut published: Vec<(String, CloudEvent, tracing::Span)> = Vec::with_capacity(2);
    // Counted locally and flushed to the metrics registry in batches: the hot path
    // stays free of registry lookups.
    let mut unflushed: u64 = 0;
    loop {
        if unflushed >= 4096 {
            metrics::counter!("ami_raw_events_published_total").increment(unflushed);
            unflushed = 0;
        }
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Idle: settle the acks in flight, then wait.
                settle(&mut acks, 0).await;
                metrics::counter!("ami_raw_events_published_total").increment(unflushed);
                unflushed = 0;
                match rx.recv().await {
                    Some(item) => item,
                    None => break,
                }
            }
        };
        match item {
            Outbound::Raw(raw) => {
                unflushed += 1;
                let event = raw.message.event().unwrap_or_default();
                raw.write_json(&mut json);
                raw_event.data = json.split().freeze();
                raw.write_msg_id(&mut raw_event.id);
                let subject = raw_event.subject.get_or_insert_default();
                subject.clear();
                subject.push_str(event);
                raw_event.time = Some(raw.received_at);
                let subject = raw_subjects.get(&subjects, &raw.pbx, event);
                publish(&bus, subject, &raw_event, tracing::Span::none(), &mut acks).await;
                for call in tracker.observe(&raw) {
                    let state = crate::calls::state_name(call.state);
                    let id = format!("call-{}-{}-{state}", raw.pbx, call.call_id);
                    if let Ok(ce) = bus.event(event_types::AMI_CALL, &call) {
                        let span = tracing::info_span!("ami.call", pbx = %raw.pbx, call = %call.call_id, state);
                        published.push((
                            subjects.ami_call(&raw.pbx, state),
                            ce.with_id(id).with_subject(call.call_id.clone()),
                            span,
                        ));
                    }
                    let _ = live.send(Arc::new(pb::EventsItem {
                        item: Some(pb::events_item::Item::Call(call)),
                    }));
                }
                if live.receiver_count() > 0 {
                    let _ = live.send(Arc::new(pb::EventsItem {
                        item: Some(pb::events_item::Item::Raw(raw.to_proto())),
                    }));
                }
            }
            Outbound::Link(link) => {
                let up = link.state == LinkState::Up as i32;
                metrics::gauge!("ami_link_up", "pbx" => link.pbx.clone()).set(if up { 1.0 } else { 0.0 });
                if !up {
                    metrics::counter!("ami_link_down_total", "pbx" => link.pbx.clone()).increment(1);
                }
                if let Ok(ce) = bus.event(event_types::AMI_LINK, &link) {
                    let id = format!(
                        "link-{}-{}-{}",
                        link.pbx,
                        link.session_id,
                        if up { "up" } else { "down" }
                    );
                    published.push((subjects.ami_link(&link.pbx, up), ce.with_id(id), tracing::Span::none()));
                }
                if !up {
                    tracker.clear(&link.pbx);
                }
                let _ = live.send(Arc::new(pb::EventsItem {
                    item: Some(pb::events_item::Item::Link(link)),
                }));
            }
            Outbound::Snapshot(snapshot) => {
                if let Ok(ce) = bus.event(event_types::AMI_SNAPSHOT, &snapshot) {
                    let id = format!("snapshot-{}-{}", snapshot.pbx, snapshot.session_id);
                    published.push((
                        subjects.ami_snapshot(&snapshot.pbx),
                        ce.with_id(id),
                        tracing::Span::none(),
                    ));
                }
            }
            Outbound::Error(error) => {
                metrics::counter!("ami_protocol_errors_total", "pbx" => error.pbx.clone(), "kind" => error.kind.clone())
                    .increment(1);
                if let Ok(ce) = bus.event(event_types::AMI_ERROR, &error) {
                    published.push((subjects.ami_error(&error.pbx), ce, tracing::Span::none()));
                }
            }
        }
        for (subject, ce, span) in published.drain(..) {
            publish(&bus, subject, &ce, span, &mut acks).await;
        }
        settle(&mut acks, window).await;
    }
    settle(&mut acks, 0).await;
    metrics::counter!("ami_raw_events_published_total").increment(unflushed);
}

/// Awaits the oldest acks until at most `keep` are in flight.
async fn settle(acks: &mut std::collections::VecDeque<async_nats::jetstream::context::PublishAckFuture>, keep: usize) {
    while acks.len() > keep {
        if let Some(ack) = acks.pop_front()
            && let Err(e) = ack.await
        {
            metrics::counter!("ami_publish_failures_total").increment(1);
            tracing::warn!("JetStream did not ack an AMI event: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_mapping() {
        assert_eq!(asterisk_release("11.0.0"), "22");
        assert_eq!(asterisk_release("7.0.3"), "18");
        assert_eq!(asterisk_release("2.10.4"), "13");
        assert_eq!(asterisk_release("garbage"), "unknown");
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let s = AmiSettings {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            ..AmiSettings::default()
        };
        for attempt in 1..40 {
            let want = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(2));
            let got = backoff(&s, attempt);
            assert!(got <= want && got >= want / 2, "attempt {attempt}: {got:?} vs {want:?}");
        }
    }

    #[test]
    fn raw_json_is_the_proto_json() {
        let m = Message::from_headers([
            ("Event", "VarSet"),
            ("Variable", "A"),
            ("Variable", "B"),
            ("Value", "x"),
        ]);
        let item = RawItem {
            pbx: Arc::from("pbx1"),
            session_id: Arc::from("s1"),
            sequence: 7,
            received_at: OffsetDateTime::UNIX_EPOCH,
            message: m,
        };
        let mut out = BytesMut::new();
        item.write_json(&mut out);
        // The exact bytes on the bus: field order, strings for 64-bit numbers, RFC 3339.
        assert_eq!(
            std::str::from_utf8(&out).expect("utf-8"),
            concat!(
                r#"{"pbx":"pbx1","event":"VarSet","headers":[{"name":"Event","value":"VarSet"},"#,
                r#"{"name":"Variable","value":"A"},{"name":"Variable","value":"B"},{"name":"Value","value":"x"}],"#,
                r#""fields":{"Event":"VarSet","Variable":["A","B"],"Value":"x"},"#,
                r#""receivedAt":"1970-01-01T00:00:00Z","sequence":"7","sessionId":"s1"}"#
            )
        );
        let json: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(json["fields"]["Variable"], serde_json::json!(["A", "B"]));
        assert_eq!(json["fields"]["Value"], "x");
        assert_eq!(json["headers"][2]["value"], "B");
        assert_eq!(json["sequence"], "7");
        // The same bytes decode as the proto type.
        let proto: pb::RawEvent = serde_json::from_slice(&out).expect("proto json");
        assert_eq!(proto.headers.len(), 4);
        assert_eq!(proto.sequence, 7);
        assert_eq!(proto.fields, item.to_proto().fields);
    }

    #[test]
    fn msg_id_is_deterministic_per_content() {
        let a = Message::from_headers([("Event", "X"), ("Uniqueid", "1")]);
        let b = Message::from_headers([("Event", "X"), ("Uniqueid", "2")]);
        let item = |m: Message, seq| RawItem {
            pbx: Arc::from("p"),
            session_id: Arc::from(if seq == 1 { "one" } else { "two" }),
            sequence: seq,
            received_at: OffsetDateTime::now_utc(),
            message: m,
        };
        let id = |item: RawItem| {
            let mut id = "left over from the event before".to_owned();
            item.write_msg_id(&mut id);
            id
        };
        assert_eq!(id(item(a.clone(), 1)), id(item(a, 2)));
        assert_ne!(id(item(b, 1)), id(item(Message::from_headers([("Event", "X")]), 1)));
        let text_len = "Event: X\nUniqueid: 1\n".len();
        assert!(id(item(Message::from_headers([("Event", "X"), ("Uniqueid", "1")]), 1)).starts_with("ami-p-"));
        assert!(
            id(item(Message::from_headers([("Event", "X"), ("Uniqueid", "1")]), 1)).ends_with(&format!("-{text_len}"))
        );
    }

    #[test]
    fn raw_subjects_are_the_bus_subjects() {
        let subjects = Subjects::new("sb").expect("prefix");
        let mut cache = RawSubjects::default();
        let pbx: Arc<str> = Arc::from("pbx.1");
        for event in ["Newexten", "Odd Name*", "Newexten", ""] {
            assert_eq!(
                cache.get(&subjects, &pbx, event).as_str(),
                subjects.ami_raw(&pbx, event)
            );
        }
        for n in 0..RawSubjects::MAX_NAMES + 10 {
            let event = format!("Made{n}");
            assert_eq!(
                cache.get(&subjects, &pbx, &event).as_str(),
                subjects.ami_raw(&pbx, &event)
            );
        }
        assert!(
            cache
                .by_pbx
                .get("pbx.1")
                .is_some_and(|names| names.len() <= RawSubjects::MAX_NAMES)
        );
    }
}
