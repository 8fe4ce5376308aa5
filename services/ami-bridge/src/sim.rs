//! An AMI simulator that speaks like Asterisk 18–22 on a TCP port, for tests,
//! benchmarks and demos (`ami-sim` binary; in tests start it on port 0).
//!
//! It answers: `Login` (plain `Secret`, or `AuthType: MD5` + `Key` after
//! `Challenge`), `Ping`, `Logoff`, `Events`, `Filter`, `Getvar`/`Setvar`,
//! `Command` (modern `Output:` headers or, with [`SimConfig::old_command_style`],
//! `Response: Follows` ... `--END COMMAND--`), `CoreShowChannels` and `Status`
//! (event lists), `UserEvent`, and `Originate` with event sequences shaped like the
//! real Asterisk 22.6 transcripts: an answered call (`Local/<exten>@<context>`),
//! a busy one (exten `102` or anything ending in `busy`), a failed one (context
//! `nowhere` or exten `999`).
//!
//! Test controls, through [`SimHandle`] or as actions on the wire:
//! `SimFlood` (`Rate` events/s, 0 = as fast as possible; `Count`), `SimDrop`
//! (close every connection), `SimStall` (`Ms`: stop reading and writing),
//! `SimMalformed` (a line without a colon, an over-long line, invalid UTF-8, then a
//! valid event).
//!
//! Time is compressed for tests: `Application: Wait` with `Data: N` holds the
//! answered call N × 100 ms; other answered calls last [`SimConfig::call_duration`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::parser::{Frame, Limits, Message, Parser};

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The AMI version in the banner (`Asterisk Call Manager/<version>`).
    pub ami_version: String,
    /// The Asterisk version reported by `CoreSettings` and `core show version`.
    pub asterisk_version: String,
    /// Accepted accounts: username -> secret.
    pub users: BTreeMap<String, String>,
    /// Answer `Command` the pre-14 way (`Response: Follows`).
    pub old_command_style: bool,
    /// How long an answered call lasts when the Originate gives no `Data` seconds.
    pub call_duration: Duration,
    /// Serve TLS instead of plain TCP (Asterisk's `tlsenable`).
    pub tls: Option<SimTls>,
}

/// The simulator's TLS certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTls {
    /// The server certificate chain.
    pub cert: std::path::PathBuf,
    /// Its private key (unencrypted).
    pub key: std::path::PathBuf,
}

fn tls_acceptor(tls: &SimTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    switchboard_runtime::install_crypto_provider();
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(&tls.cert.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| invalid(&tls.key.display().to_string(), &e))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("TLS certificate", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ami_version: "11.0.0".into(),
            asterisk_version: "22.6.0".into(),
            users: BTreeMap::from([("sb".to_owned(), "sbsecret".to_owned())]),
            old_command_style: false,
            call_duration: Duration::from_millis(300),
            tls: None,
        }
    }
}

/// A test control sent to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Send `count` events at `rate` per second (0: as fast as the socket takes).
    Flood {
        /// Events per second; 0 = unthrottled.
        rate: u64,
        /// How many events.
        count: u64,
    },
    /// Close the connection abruptly.
    Drop,
    /// Stop reading and writing for this long (a hung PBX).
    Stall(Duration),
    /// Write broken bytes, then a valid `Event: SimAfterMalformed`.
    Malformed,
}

#[derive(Debug, Clone)]
struct Chan {
    name: String,
    uniqueid: String,
    linkedid: String,
    context: String,
    exten: String,
    state: u8,
    caller_num: String,
    caller_name: String,
    application: String,
    data: String,
    created: std::time::Instant,
}

struct Shared {
    config: SimConfig,
    channels: Mutex<BTreeMap<String, Chan>>,
    globals: Mutex<BTreeMap<String, String>>,
    /// Events for every logged-in connection with events on.
    events: broadcast::Sender<Bytes>,
    controls: broadcast::Sender<Control>,
    next_id: AtomicU64,
    base_time: u64,
}

/// A running simulator.
#[derive(Clone)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Binds `addr` (port 0 picks a free port) and serves until `shutdown`;
    /// over TLS when `config.tls` is set.
    pub async fn start(addr: SocketAddr, config: SimConfig, shutdown: CancellationToken) -> std::io::Result<Self> {
        let acceptor = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(65_536);
        let (controls, _) = broadcast::channel(64);
        let base_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let shared = Arc::new(Shared {
            config,
            channels: Mutex::new(BTreeMap::new()),
            globals: Mutex::new(BTreeMap::new()),
            events,
            controls,
            next_id: AtomicU64::new(0),
            base_time,
        });
        let accept_shared = shared.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let (shared, token) = (accept_shared.clone(), token.clone());
                        match acceptor.clone() {
                            None => drop(tokio::spawn(Connection::run(shared, stream, token))),
                            Some(acceptor) => drop(tokio::spawn(async move {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    Connection::run(shared, stream, token).await;
                                }
                            })),
                        }
                    }
                }
            }
        });
        Ok(Self { addr, shared, shutdown })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a test control to every connection.
    pub fn control(&self, control: Control) {
        let _ = self.shared.controls.send(control);
    }

    /// Writes `messages` (whole AMI events, each ending in an empty line) to every
    /// logged-in connection with events on, as if the PBX had sent them: benchmarks
    /// inject call traffic this way and timestamp it as they hand it over.
    pub fn inject(&self, messages: Bytes) {
        let _ = self.shared.events.send(messages);
    }

    /// The live channels' names.
    pub async fn channels(&self) -> Vec<String> {
        self.shared
            .channels
            .lock()
            .await
            .values()
            .map(|c| c.name.clone())
            .collect()
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// Builds one wire message.
#[derive(Default)]
struct Out(String);

impl Out {
    fn h(mut self, name: &str, value: &str) -> Self {
        // CR/LF never reach the wire, even from a client's own headers echoed back.
        let value = value.replace(['\r', '\n'], " ");
        let _ = write!(self.0, "{name}: {value}\r\n");
        self
    }
    fn action_id(self, id: Option<&str>) -> Self {
        match id {
            Some(id) => self.h("ActionID", id),
            None => self,
        }
    }
    fn end(mut self) -> String {
        self.0.push_str("\r\n");
        self.0
    }
}

fn now_timestamp() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

fn state_desc(state: u8) -> &'static str {
    match state {
        0 => "Down",
        4 => "Ring",
        5 => "Ringing",
        6 => "Up",
        7 => "Busy",
        _ => "Unknown",
    }
}

fn channel_headers(out: Out, c: &Chan, priority: u32) -> Out {
    out.h("Channel", &c.name)
        .h("ChannelState", &c.state.to_string())
        .h("ChannelStateDesc", state_desc(c.state))
        .h("CallerIDNum", &c.caller_num)
        .h("CallerIDName", &c.caller_name)
        .h("ConnectedLineNum", &c.caller_num)
        .h("ConnectedLineName", &c.caller_name)
        .h("Language", "en")
        .h("AccountCode", "")
        .h("Context", &c.context)
        .h("Exten", &c.exten)
        .h("Priority", &priority.to_string())
        .h("Uniqueid", &c.uniqueid)
        .h("Linkedid", &c.linkedid)
}

fn dest_headers(out: Out, c: &Chan) -> Out {
    out.h("DestChannel", &c.name)
        .h("DestChannelState", &c.state.to_string())
        .h("DestChannelStateDesc", state_desc(c.state))
        .h("DestCallerIDNum", &c.caller_num)
        .h("DestCallerIDName", &c.caller_name)
        .h("DestConnectedLineNum", &c.caller_num)
        .h("DestConnectedLineName", &c.caller_name)
        .h("DestLanguage", "en")
        .h("DestAccountCode", "")
        .h("DestContext", &c.context)
        .h("DestExten", &c.exten)
        .h("DestPriority", "1")
        .h("DestUniqueid", &c.uniqueid)
        .h("DestLinkedid", &c.linkedid)
}

fn event(name: &str, privilege: &str) -> Out {
    Out::default().h("Event", name).h("Privilege", privilege)
}

/// A flood in progress (`Control::Flood`).
struct Flooding {
    /// Events per second; 0: as fast as the socket takes them.
    rate: u64,
    /// Events still to send.
    remaining: u64,
    /// When it began, and how many it sent since.
    started: std::time::Instant,
    sent: u64,
}

impl Flooding {
    /// How many events to send now: a batch when unpaced, else what the rate has made
    /// due since the start and is not sent yet.
    fn due(&self) -> u64 {
        if self.rate == 0 {
            return 512;
        }
        let due = u128::from(self.rate) * self.started.elapsed().as_micros() / 1_000_000;
        u64::try_from(due).unwrap_or(u64::MAX).saturating_sub(self.sent)
    }
}

/// A realistic ~360-byte event for floods (the shape of a real `Newexten`), with
/// `SimSeq` (1, 2, ...) to check order and loss and `SimTs` (Unix nanoseconds at
/// write) to measure latency.
fn flood_event(n: u64, ts: u128) -> String {
    format!(
        "Event: Newexten\r\nPrivilege: dialplan,all\r\nChannel: PJSIP/101-{n:08x}\r\nChannelState: 6\r\n\
ChannelStateDesc: Up\r\nCallerIDNum: 101\r\nCallerIDName: Alice\r\nConnectedLineNum: 102\r\n\
ConnectedLineName: Bob\r\nLanguage: en\r\nAccountCode: \r\nContext: internal\r\nExten: 102\r\nPriority: 2\r\n\
Uniqueid: 1795319248.{n}\r\nLinkedid: 1795319248.{n}\r\nExtension: 102\r\nApplication: Dial\r\n\
AppData: PJSIP/102,30\r\nSimSeq: {n}\r\nSimTs: {ts}\r\n\r\n"
    )
}

impl Shared {
    fn uid(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.base_time)
    }

    fn emit(&self, text: String) {
        let _ = self.events.send(Bytes::from(text));
    }

    async fn add(&self, c: &Chan) {
        self.channels.lock().await.insert(c.uniqueid.clone(), c.clone());
    }

    async fn set_state(&self, c: &mut Chan, state: u8) {
        c.state = state;
        if let Some(live) = self.channels.lock().await.get_mut(&c.uniqueid) {
            live.state = state;
        }
        self.emit(channel_headers(event("Newstate", "call,all"), c, 1).end());
    }

    async fn hangup(&self, c: &Chan, cause: u32, text: &str) {
        if self.channels.lock().await.remove(&c.uniqueid).is_none() {
            return;
        }
        self.emit(
            channel_headers(event("Hangup", "call,all"), c, 1)
                .h("Cause", &cause.to_string())
                .h("Cause-txt", text)
                .end(),
        );
    }

    /// Runs one Originate as Asterisk would for Local channels.
    async fn originate(self: Arc<Self>, req: OriginateReq) {
        let (exten, context) = req
            .channel
            .split_once('/')
            .map(|(_, rest)| rest)
            .and_then(|r| r.split_once('@'))
            .map_or(("s".to_owned(), "default".to_owned()), |(e, c)| {
                (e.to_owned(), c.to_owned())
            });
        let seq = self.next_id.load(Ordering::Relaxed);
        let base = format!("{}-{seq:08x}", req.channel);
        let linked = self.uid();
        let mut one = Chan {
            name: format!("{base};1"),
            uniqueid: linked.clone(),
            linkedid: linked.clone(),
            context: context.clone(),
            exten: exten.clone(),
            state: 0,
            caller_num: req.caller_num.clone(),
            caller_name: req.caller_name.clone(),
            application: req.application.clone(),
            data: req.data.clone(),
            created: std::time::Instant::now(),
        };
        let mut two = Chan {
            name: format!("{base};2"),
            uniqueid: self.uid(),
            state: 4,
            ..one.clone()
        };
        self.add(&one).await;
        self.add(&two).await;
        self.emit(channel_headers(event("Newchannel", "call,all"), &one, 1).end());
        self.emit(channel_headers(event("Newchannel", "call,all"), &two, 1).end());
        let failed = context == "nowhere" || exten == "999";
        let busy = exten == "102" || exten.ends_with("busy");
        let response = |ok: bool, reason: u32, uid: &str, chan: &str| {
            let out = event("OriginateResponse", "call,all")
                .action_id(req.action_id.as_deref())
                .h("Response", if ok { "Success" } else { "Failure" })
                .h("Channel", chan);
            let out = if req.application.is_empty() {
                out.h("Context", &req.context).h("Exten", &req.exten)
            } else {
                out.h("Application", &req.application).h("Data", &req.data)
            };
            out.h("Reason", &reason.to_string())
                .h("Uniqueid", uid)
                .h("CallerIDNum", if ok { &req.caller_num } else { "<unknown>" })
                .h("CallerIDName", if ok { &req.caller_name } else { "<unknown>" })
                .end()
        };
        if failed {
            self.hangup(&two, 0, "Unknown").await;
            self.emit(response(false, 0, "<unknown>", &req.channel));
            self.hangup(&one, 0, "Unknown").await;
            return;
        }
        self.emit(
            dest_headers(event("DialBegin", "call,all"), &one)
                .h("DialString", &format!("{exten}@{context}"))
                .end(),
        );
        if busy {
            self.set_state(&mut two, 7).await;
            self.emit(
                dest_headers(event("DialEnd", "call,all"), &one)
                    .h("DialStatus", "BUSY")
                    .end(),
            );
            self.hangup(&two, 17, "User busy").await;
            self.emit(response(false, 5, "<unknown>", &req.channel));
            self.hangup(&one, 0, "Unknown").await;
            return;
        }
        self.set_state(&mut one, 5).await;
        self.emit(
            dest_headers(event("DialState", "call,all"), &one)
                .h("DialStatus", "RINGING")
                .end(),
        );
        self.set_state(&mut two, 6).await;
        self.set_state(&mut one, 6).await;
        self.emit(
            dest_headers(event("DialEnd", "call,all"), &one)
                .h("DialStatus", "ANSWER")
                .end(),
        );
        self.emit(response(true, 4, &one.uniqueid, &one.name));
        let hold = req
            .data
            .parse::<u64>()
            .ok()
            .filter(|_| req.application.eq_ignore_ascii_case("Wait"))
            .map_or(self.config.call_duration, |s| {
                Duration::from_millis(s.min(3600) * 1000 / 10)
            });
        tokio::time::sleep(hold).await;
        self.hangup(&two, 16, "Normal Clearing").await;
        self.hangup(&one, 16, "Normal Clearing").await;
    }
}

struct OriginateReq {
    action_id: Option<String>,
    channel: String,
    context: String,
    exten: String,
    application: String,
    data: String,
    caller_num: String,
    caller_name: String,
}

/// Splits `"Name" <number>` / `Name <number>` / `number`.
fn split_caller_id(cid: &str) -> (String, String) {
    match cid.rsplit_once('<') {
        Some((name, num)) => (
            num.trim_end_matches('>').trim().to_owned(),
            name.trim().trim_matches('"').to_owned(),
        ),
        None => (cid.trim().to_owned(), String::new()),
    }
}

struct Connection {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Bytes>,
    logged_in: bool,
    events_on: bool,
    challenge: Option<String>,
    /// Simple `Filter` support: `Event: X` lines to keep (allow) or drop (`!`).
    allow: Vec<String>,
    deny: Vec<String>,
}

enum After {
    Continue,
    Close,
}

impl Connection {
    async fn run<S: AsyncRead + AsyncWrite + Send + 'static>(
        shared: Arc<Shared>,
        stream: S,
        shutdown: CancellationToken,
    ) {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
        let mut controls = shared.controls.subscribe();
        let mut events = shared.events.subscribe();
        let banner = format!("Asterisk Call Manager/{}\r\n", shared.config.ami_version);
        if writer.write_all(banner.as_bytes()).await.is_err() {
            return;
        }
        let mut conn = Connection {
            shared: shared.clone(),
            out: out_tx,
            logged_in: false,
            events_on: false,
            challenge: None,
            allow: Vec::new(),
            deny: Vec::new(),
        };
        let mut parser = Parser::without_banner(Limits::default());
        let mut read_buf = vec![0u8; 16 * 1024];
        let mut flood: Option<Flooding> = None;
        let mut flood_seq = 0u64;
        // A paced flood sends every millisecond what is due by then, so a rate is a
        // steady stream rather than bursts (a 10 ms tick made every event wait behind
        // up to rate/100 others, which measured the burst, not the bridge).
        let mut flood_tick = tokio::time::interval(Duration::from_millis(1));
        flood_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                ctl = controls.recv() => match ctl {
                    Ok(Control::Drop) => return,
                    Ok(Control::Stall(d)) => tokio::time::sleep(d).await,
                    Ok(Control::Malformed) => {
                        let mut bad = b"this line has no colon\r\nEvent: Broken\r\n\r\n".to_vec();
                        bad.extend(std::iter::repeat_n(b'x', 100_000));
                        bad.extend_from_slice(b"\r\n\r\nEvent: Bad\xff\xfeUtf8\r\n\r\n");
                        bad.extend_from_slice(b"Event: SimAfterMalformed\r\nPrivilege: system,all\r\n\r\n");
                        if writer.write_all(&bad).await.is_err() { return; }
                    }
                    Ok(Control::Flood { rate, count }) => {
                        flood = Some(Flooding { rate, remaining: count, started: std::time::Instant::now(), sent: 0 });
                    }
                    Err(_) => {}
                },
                Some(bytes) = out_rx.recv() => {
                    if writer.write_all(&bytes).await.is_err() { return; }
                    if bytes.is_empty() { return; } // the close marker
                }
                ev = events.recv(), if conn.logged_in && conn.events_on => {
                    if let Ok(ev) = ev && conn.passes(&ev) && writer.write_all(&ev).await.is_err() {
                        return;
                    }
                }
                _ = flood_tick.tick(), if flood.is_some() => {
                    let Some(flooding) = flood.as_mut() else { continue };
                    let rate = flooding.rate;
                    let batch = flooding.due().min(flooding.remaining);
                    if batch > 0 {
                        let mut buf = BytesMut::with_capacity(batch as usize * 400);
                        let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
                        for _ in 0..batch {
                            flood_seq += 1;
                            buf.extend_from_slice(flood_event(flood_seq, ts).as_bytes());
                        }
                        flooding.sent += batch;
                        flooding.remaining -= batch;
                        if flooding.remaining == 0 { flood = None; }
                        if writer.write_all(&buf).await.is_err() { return; }
                    }
                    if rate == 0 { flood_tick.reset_immediately(); }
                }
                n = reader.read(&mut read_buf) => {
                    let Ok(n) = n else { return };
                    if n == 0 { return; }
                    parser.feed(read_buf.get(..n).unwrap_or_default());
                    while let Some(frame) = parser.next_frame() {
                        let Frame::Message(m) = frame else { continue };
                        if let After::Close = conn.action(&m).await {
                            // Let the writer flush what is queued, then close.
                            let _ = conn.out.send(Bytes::new());
                        }
                    }
                }
            }
        }
    }

    fn passes(&self, ev: &[u8]) -> bool {
        let line = ev.split(|&b| b == b'\r').next().unwrap_or_default();
        let line = std::str::from_utf8(line).unwrap_or_default();
        if self.deny.iter().any(|d| d == line) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|a| a == line)
    }

    fn reply(&self, text: String) {
        let _ = self.out.send(Bytes::from(text));
    }

    async fn action(&mut self, m: &Message) -> After {
        let id = m.action_id();
        let name = m.get("Action").unwrap_or_default().to_ascii_lowercase();
        let ok = || Out::default().h("Response", "Success").action_id(id);
        let error = |msg: &str| {
            Out::default()
                .h("Response", "Error")
                .action_id(id)
                .h("Message", msg)
                .end()
        };
        if !self.logged_in && !matches!(name.as_str(), "login" | "challenge" | "logoff" | "ping") {
            self.reply(error("Permission denied"));
            return After::Continue;
        }
        match name.as_str() {
            "login" => {
                let user = m.get("Username").unwrap_or_default();
                let secret = self.shared.config.users.get(user);
                let accepted = match (m.get("AuthType"), secret) {
                    (Some(t), Some(secret)) if t.eq_ignore_ascii_case("md5") => {
                        let challenge = self.challenge.take().unwrap_or_default();
                        let want = md5_key(&challenge, secret);
                        !challenge.is_empty() && m.get("Key").is_some_and(|k| k.eq_ignore_ascii_case(&want))
                    }
                    (None, Some(secret)) => m.get("Secret") == Some(secret.as_str()),
                    _ => false,
                };
                if !accepted {
                    self.reply(error("Authentication failed"));
                    return After::Close;
                }
                self.logged_in = true;
                self.events_on = !m.get("Events").is_some_and(|e| e.eq_ignore_ascii_case("off"));
                self.reply(ok().h("Message", "Authentication accepted").end());
                if self.events_on {
                    self.reply(
                        event("FullyBooted", "system,all")
                            .h("Uptime", "27")
                            .h("LastReload", "27")
                            .h("Status", "Fully Booted")
                            .end(),
                    );
                }
            }
            "challenge" => {
                let challenge = format!(
                    "{:09}",
                    self.shared.next_id.fetch_add(7919, Ordering::Relaxed) * 104_729 % 1_000_000_000
                );
                self.challenge = Some(challenge.clone());
                self.reply(ok().h("Challenge", &challenge).end());
            }
            "ping" => self.reply(ok().h("Ping", "Pong").h("Timestamp", &now_timestamp()).end()),
            "logoff" => {
                self.reply(
                    Out::default()
                        .h("Response", "Goodbye")
                        .action_id(id)
                        .h("Message", "Thanks for all the fish.")
                        .end(),
                );
                return After::Close;
            }
            "events" => {
                self.events_on = !m.get("EventMask").is_some_and(|e| e.eq_ignore_ascii_case("off"));
                self.reply(ok().h("Events", if self.events_on { "On" } else { "Off" }).end());
            }
            "filter" => {
                let filter = m.get("Filter").unwrap_or_default();
                match filter.strip_prefix('!') {
                    Some(deny) => self.deny.push(deny.to_owned()),
                    None => self.allow.push(filter.to_owned()),
                }
                self.reply(ok().h("Message", "Filter Added Successfully").end());
            }
            "getvar" => {
                let var = m.get("Variable").unwrap_or_default();
                let value = self.shared.globals.lock().await.get(var).cloned().unwrap_or_default();
                self.reply(ok().h("Variable", var).h("Value", &value).end());
            }
            "setvar" => {
                let var = m.get("Variable").unwrap_or_default().to_owned();
                let value = m.get("Value").unwrap_or_default().to_owned();
                self.shared.globals.lock().await.insert(var, value);
                self.reply(ok().h("Message", "Variable Set").end());
            }
            "coresettings" => self.reply(
                ok().h("AMIversion", &self.shared.config.ami_version)
                    .h("AsteriskVersion", &self.shared.config.asterisk_version)
                    .h("SystemName", "")
                    .h("CoreMaxCalls", "0")
                    .h("CoreMaxLoadAvg", "0.000000")
                    .h("CoreRunUser", "")
                    .h("CoreRunGroup", "")
                    .h("CoreMaxFilehandles", "0")
                    .h("CoreRealTimeEnabled", "No")
                    .h("CoreCDRenabled", "Yes")
                    .h("CoreHTTPenabled", "No")
                    .h("SoundsSearchCustomDir", "No")
                    .end(),
            ),
            "extensionstate" => self.reply(
                ok().h("Message", "Extension Status")
                    .h("Exten", m.get("Exten").unwrap_or_default())
                    .h("Context", m.get("Context").unwrap_or_default())
                    .h("Hint", "")
                    .h("Status", "-1")
                    .h("StatusText", "Unknown")
                    .end(),
            ),
            "command" => {
                let output = self.command(m.get("Command").unwrap_or_default()).await;
                if self.shared.config.old_command_style {
                    let mut text = Out::default()
                        .h("Response", "Follows")
                        .h("Privilege", "Command")
                        .action_id(id)
                        .0;
                    for line in output {
                        text.push_str(&line);
                        text.push('\n');
                    }
                    text.push_str("--END COMMAND--\r\n\r\n");
                    self.reply(text);
                } else {
                    let mut out = ok().h("Message", "Command output follows");
                    for line in output {
                        out = out.h("Output", &line);
                    }
                    self.reply(out.end());
                }
            }
            "coreshowchannels" | "status" => {
                let status = name == "status";
                let channels: Vec<Chan> = self.shared.channels.lock().await.values().cloned().collect();
                let msg = if status {
                    "Channel status will follow"
                } else {
                    "Channels will follow"
                };
                self.reply(ok().h("EventList", "start").h("Message", msg).end());
                for c in &channels {
                    let secs = c.created.elapsed().as_secs();
                    if status {
                        let out = channel_headers(event("Status", "Call"), c, 1);
                        self.reply(
                            out.h("Type", "Local")
                                .h("DNID", "")
                                .h("EffectiveConnectedLineNum", &c.caller_num)
                                .h("EffectiveConnectedLineName", &c.caller_name)
                                .h("TimeToHangup", "0")
                                .h("BridgeID", "")
                                .h("Application", &c.application)
                                .h("Data", &c.data)
                                .h("Nativeformats", "(slin)")
                                .h("Readformat", "slin")
                                .h("Readtrans", "")
                                .h("Writeformat", "slin")
                                .h("Writetrans", "")
                                .h("Callgroup", "0")
                                .h("Pickupgroup", "0")
                                .h("Seconds", &secs.to_string())
                                .action_id(id)
                                .end(),
                        );
                    } else {
                        let out = channel_headers(Out::default().h("Event", "CoreShowChannel").action_id(id), c, 1);
                        self.reply(
                            out.h("Application", &c.application)
                                .h("ApplicationData", &c.data)
                                .h(
                                    "Duration",
                                    &format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
                                )
                                .h("BridgeId", "")
                                .end(),
                        );
                    }
                }
                let n = channels.len().to_string();
                let done = if status {
                    "StatusComplete"
                } else {
                    "CoreShowChannelsComplete"
                };
                let mut out = Out::default()
                    .h("Event", done)
                    .action_id(id)
                    .h("EventList", "Complete")
                    .h("ListItems", &n);
                if status {
                    out = out.h("Items", &n);
                }
                self.reply(out.end());
            }
            "userevent" => {
                self.reply(ok().h("Message", "Event Sent").end());
                let mut out = event("UserEvent", "user,all").h("UserEvent", m.get("UserEvent").unwrap_or_default());
                for (n, v) in m.headers() {
                    if !n.eq_ignore_ascii_case("Action") && !n.eq_ignore_ascii_case("UserEvent") {
                        out = out.h(n, v);
                    }
                }
                self.shared.emit(out.end());
            }
            "originate" => {
                let Some(channel) = m.get("Channel").filter(|c| c.contains('/')) else {
                    self.reply(error("Channel not specified"));
                    return After::Continue;
                };
                let (caller_num, caller_name) = split_caller_id(m.get("CallerID").unwrap_or_default());
                let req = OriginateReq {
                    action_id: id.map(str::to_owned),
                    channel: channel.to_owned(),
                    context: m.get("Context").unwrap_or_default().to_owned(),
                    exten: m.get("Exten").unwrap_or_default().to_owned(),
                    application: m.get("Application").unwrap_or_default().to_owned(),
                    data: m.get("Data").unwrap_or_default().to_owned(),
                    caller_num,
                    caller_name,
                };
                self.reply(ok().h("Message", "Originate successfully queued").end());
                tokio::spawn(self.shared.clone().originate(req));
            }
            "simflood" => {
                let rate = m.get("Rate").and_then(|r| r.parse().ok()).unwrap_or(0);
                let count = m.get("Count").and_then(|r| r.parse().ok()).unwrap_or(1000);
                self.reply(ok().end());
                let _ = self.shared.controls.send(Control::Flood { rate, count });
            }
            "simdrop" => {
                let _ = self.shared.controls.send(Control::Drop);
            }
            "simstall" => {
                let ms = m.get("Ms").and_then(|r| r.parse().ok()).unwrap_or(5000);
                self.reply(ok().end());
                let _ = self.shared.controls.send(Control::Stall(Duration::from_millis(ms)));
            }
            "simmalformed" => {
                self.reply(ok().end());
                let _ = self.shared.controls.send(Control::Malformed);
            }
            _ => {
                let action = m.get("Action").unwrap_or_default();
                self.reply(error(&format!(
                    "Invalid/unknown command: {action}. Use Action: ListCommands to show available commands."
                )));
            }
        }
        After::Continue
    }

    async fn command(&self, command: &str) -> Vec<String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["core", "show", "version"] => vec![format!(
                "Asterisk {} built by sim @ switchboard on a x86_64 running Linux",
                self.shared.config.asterisk_version
            )],
            ["core", "show", "channels"] => {
                let channels = self.shared.channels.lock().await;
                let mut out = vec![format!(
                    "{:<64} {:<32} {:<7} {:<30}",
                    "Channel", "Location", "State", "Application(Data)"
                )];
                for c in channels.values() {
                    out.push(format!(
                        "{:<64} {:<32} {:<7} {}({})",
                        c.name,
                        format!("{}@{}:1", c.exten, c.context),
                        state_desc(c.state),
                        c.application,
                        c.data
                    ));
                }
                out.push(format!("{} active channels", channels.len()));
                out.push(format!("{} active calls", channels.len() / 2));
                out.push(format!(
                    "{} calls processed",
                    self.shared.next_id.load(Ordering::Relaxed) / 2
                ));
                out
            }
            ["channel", "request", "hangup", "all"] => {
                let channels: Vec<Chan> = self.shared.channels.lock().await.values().cloned().collect();
                for c in &channels {
                    self.shared.hangup(c, 16, "Normal Clearing").await;
                }
                // Asterisk answers this one with a single empty output line.
                vec![String::new()]
            }
            _ => vec![format!(
                "No such command '{command}' (type 'core show help {command}' for other possible commands)"
            )],
        }
    }
}

/// MD5 of the challenge and secret, as Asterisk's `Login` with `AuthType: MD5` wants.
pub fn md5_key(challenge: &str, secret: &str) -> String {
    use md5::Digest as _;
    let digest = md5::Md5::digest(format!("{challenge}{secret}").as_bytes());
    digest.iter().fold(String::with_capacity(32), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[cfg(test)]
mod tests;
