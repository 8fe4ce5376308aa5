//! The account manager: one task per account that holds the account's lease,
//! connects, reconnects with backoff, rejoins, publishes link, message and
//! presence events, serves `sb.cmd.im.<account>.send` while it holds the lease,
//! and queues (or refuses) sends while the account is down.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use switchboard_bus::{Bus, Lease, LeaseState, escape_token, event_types};
use switchboard_proto::common::v1::LinkState;
use switchboard_proto::im::v1::{Account, ChatKind, LinkEvent, Message, Presence, Protocol, SendReply, SendRequest};
use switchboard_proto::wkt::Timestamp;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::config::{AccountConfig, OutboundConfig, ProtocolConfig, SessionConfig, WhileDown};
use crate::session::{Inbound, Session, new_message_id, now};

/// The queue group every replica serves commands in.
const QUEUE_GROUP: &str = "im-bridge";

/// How long a send waits for the account task's answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a `client_id` is remembered, so a retried send is not sent twice.
const CLIENT_ID_TTL: Duration = Duration::from_secs(300);

/// At most this many `client_id`s are remembered per account.
const CLIENT_ID_MAX: usize = 10_000;

#[derive(Debug, Clone)]
struct Status {
    state: LinkState,
    since: Timestamp,
    last_error: String,
    address: String,
    rooms: Vec<String>,
}

/// One send on its way to the account task.
#[derive(Debug)]
struct Outbound {
    to: String,
    text: String,
    kind: ChatKind,
    message_id: String,
    created: Instant,
    reply: Option<oneshot::Sender<Result<SendReply, Error>>>,
}

impl Outbound {
    fn answer(&mut self, result: Result<SendReply, Error>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

/// One configured account as the rest of the service sees it.
#[derive(Debug)]
pub struct AccountHandle {
    config: AccountConfig,
    status: Mutex<Status>,
    queued: AtomicU32,
    active: AtomicBool,
    tx: mpsc::Sender<Outbound>,
    rx: Mutex<Option<mpsc::Receiver<Outbound>>>,
    sent_by_client_id: Mutex<std::collections::HashMap<String, (SendReply, Instant)>>,
}

impl AccountHandle {
    fn new(config: AccountConfig, leased: bool) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Self {
            config,
            status: Mutex::new(Status {
                // Until the task runs: on standby while a lease decides, else connecting.
                state: if leased {
                    LinkState::Standby
                } else {
                    LinkState::Connecting
                },
                since: now(),
                last_error: String::new(),
                address: String::new(),
                rooms: Vec::new(),
            }),
            queued: AtomicU32::new(0),
            active: AtomicBool::new(false),
            tx,
            rx: Mutex::new(Some(rx)),
            sent_by_client_id: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The account id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        match self.config.protocol {
            ProtocolConfig::Xmpp(_) => Protocol::Xmpp,
            ProtocolConfig::Irc(_) => Protocol::Irc,
        }
    }

    fn status(&self) -> Status {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        let mut guard = match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let before = guard.state;
        change(&mut guard);
        if guard.state != before {
            guard.since = now();
        }
    }

    /// The current link state.
    pub fn state(&self) -> LinkState {
        self.status().state
    }

    /// The account as ListAccounts shows it.
    pub fn describe(&self) -> Account {
        let status = self.status();
        Account {
            id: self.config.id.clone(),
            protocol: self.protocol() as i32,
            address: status.address,
            state: status.state as i32,
            since: Some(status.since),
            last_error: status.last_error,
            rooms: status.rooms,
            queued: self.queued.load(Ordering::Relaxed),
        }
    }

    /// Checks a send and resolves its kind, without sending.
    fn check(&self, request: &SendRequest, limits: &OutboundConfig) -> Result<ChatKind, Error> {
        if request.text.len() > limits.max_text_bytes {
            return Err(Error::TooLong {
                len: request.text.len(),
                max: limits.max_text_bytes,
            });
        }
        if request.text.trim().is_empty() {
            return Err(Error::EmptyText);
        }
        let kind = ChatKind::try_from(request.kind).unwrap_or(ChatKind::Unspecified);
        match &self.config.protocol {
            ProtocolConfig::Irc(_) => crate::irc::check_recipient(&request.to, kind),
            ProtocolConfig::Xmpp(c) => crate::xmpp::check_recipient(&request.to, kind, &c.rooms),
        }
    }

    /// Sends through this process's session (the caller checked it holds the lease).
    /// A send with a non-empty `client_id` seen in the last five minutes gets the
    /// first send's reply again instead of being sent twice.
    pub async fn send_local(&self, request: SendRequest, limits: &OutboundConfig) -> Result<SendReply, Error> {
        let client_id = request.client_id.clone();
        if !client_id.is_empty()
            && let Some(reply) = self.remembered(&client_id)
        {
            return Ok(reply);
        }
        let result = self.send_once(request, limits).await;
        if let Ok(reply) = &result
            && !client_id.is_empty()
        {
            self.remember(client_id, reply.clone());
        }
        result
    }

    fn remembered(&self, client_id: &str) -> Option<SendReply> {
        let cache = self.sent_by_client_id.lock().ok()?;
        cache
            .get(client_id)
            .filter(|(_, at)| at.elapsed() < CLIENT_ID_TTL)
            .map(|(reply, _)| reply.clone())
    }

    fn remember(&self, client_id: String, reply: SendReply) {
        if let Ok(mut cache) = self.sent_by_client_id.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < CLIENT_ID_TTL);
            if cache.len() < CLIENT_ID_MAX {
                cache.insert(client_id, (reply, Instant::now()));
            }
        }
    }

    async fn send_once(&self, request: SendRequest, limits: &OutboundConfig) -> Result<SendReply, Error> {
        let kind = self.check(&request, limits)?;
        let (reply, answer) = oneshot::channel();
        let outbound = Outbound {
            to: request.to,
            text: request.text,
            kind,
            message_id: new_message_id(),
            created: Instant::now(),
            reply: Some(reply),
        };
        let not_running = || Error::NotConnected {
            account: self.config.id.clone(),
            reason: "the account is stopping".to_owned(),
        };
        self.tx.send(outbound).await.map_err(|_| not_running())?;
        match tokio::time::timeout(SEND_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(not_running()),
            Err(_) => Err(Error::Session(format!(
                "no answer from the session within {SEND_TIMEOUT:?}"
            ))),
        }
    }

    fn allowed(&self, from: &str, from_full: &str) -> bool {
        let allow = &self.config.allow_from;
        allow.is_empty()
            || allow.iter().any(|a| {
                a.eq_ignore_ascii_case(from)
                    || a.eq_ignore_ascii_case(from_full)
                    || from_full
                        .split('/')
                        .next()
                        .is_some_and(|bare| a.eq_ignore_ascii_case(bare))
            })
    }
}

/// Every configured account, and what they share.
#[derive(Debug, Clone)]
pub struct Accounts {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    map: BTreeMap<String, Arc<AccountHandle>>,
    bus: Bus,
    outbound: OutboundConfig,
    session: SessionConfig,
    messages: broadcast::Sender<Message>,
    holder: String,
}

impl Accounts {
    /// Builds the handles; nothing connects until [`Accounts::spawn`].
    pub fn new(configs: &[AccountConfig], bus: Bus, outbound: OutboundConfig, session: SessionConfig) -> Self {
        let map = configs
            .iter()
            .map(|c| (c.id.clone(), Arc::new(AccountHandle::new(c.clone(), session.lease))))
            .collect();
        let (messages, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Shared {
                map,
                bus,
                outbound,
                session,
                messages,
                holder: format!("im-bridge-{}-{}", std::process::id(), uuid::Uuid::now_v7()),
            }),
        }
    }

    /// The accounts, in id order.
    pub fn list(&self) -> Vec<Account> {
        self.inner.map.values().map(|h| h.describe()).collect()
    }

    /// The `/readyz` check: ready when every account this replica is active
    /// for is UP. Accounts on standby (another replica holds the lease) do not
    /// count. Not ready names each account that is not up, with its last error.
    pub fn readiness(&self) -> Result<(), String> {
        let not_up: Vec<String> = self
            .inner
            .map
            .values()
            .map(|h| (h.id(), h.status()))
            .filter(|(_, s)| !matches!(s.state, LinkState::Up | LinkState::Standby))
            .map(|(id, s)| {
                let state = s.state.as_str_name().trim_start_matches("LINK_STATE_").to_lowercase();
                if s.last_error.is_empty() {
                    format!("{id}: {state}")
                } else {
                    format!("{id}: {state} ({})", s.last_error)
                }
            })
            .collect();
        if not_up.is_empty() {
            Ok(())
        } else {
            Err(format!("accounts not up: {}", not_up.join("; ")))
        }
    }

    /// One account.
    pub fn get(&self, id: &str) -> Option<&Arc<AccountHandle>> {
        self.inner.map.get(id)
    }

    /// Received messages, for StreamMessages.
    pub fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.inner.messages.subscribe()
    }

    /// Sends through the replica that holds the account: here when this process
    /// holds its lease, else over `sb.cmd.im.<account>.send`.
    pub async fn send(&self, request: SendRequest) -> Result<SendReply, Error> {
        let handle = self
            .get(&request.account)
            .ok_or_else(|| Error::UnknownAccount(request.account.clone()))?;
        if handle.active.load(Ordering::Acquire) {
            return handle.send_local(request, &self.inner.outbound).await;
        }
        handle.check(&request, &self.inner.outbound)?;
        let subject = self.inner.bus.subjects().im_send(handle.id());
        self.inner
            .bus
            .request::<SendRequest, SendReply>(&subject, &request, Some(SEND_TIMEOUT))
            .await
            .map_err(|e| {
                let body = e.to_error_body();
                match body.code() {
                    switchboard_proto::common::v1::ErrorCode::Unavailable => Error::NotConnected {
                        account: handle.id().to_owned(),
                        reason: format!("no replica holds it ({})", body.message),
                    },
                    _ => Error::Session(body.message),
                }
            })
    }

    /// Starts one task per account; they stop when `shutdown` is cancelled.
    /// With `lease` set, each account competes for its key in that bucket.
    pub fn spawn(&self, lease: Option<kv::Store>, shutdown: CancellationToken) -> tokio_util::task::TaskTracker {
        let tracker = tokio_util::task::TaskTracker::new();
        for handle in self.inner.map.values() {
            let task = AccountTask {
                handle: handle.clone(),
                accounts: self.clone(),
                lease: lease.clone(),
                shutdown: shutdown.clone(),
                queue: VecDeque::new(),
            };
            tracker.spawn(task.run());
        }
        tracker.close();
        tracker
    }
}

struct AccountTask {
    handle: Arc<AccountHandle>,
    accounts: Accounts,
    lease: Option<kv::Store>,
    shutdown: CancellationToken,
    queue: VecDeque<Outbound>,
}

/// Whether a publish waits for JetStream's ack or checks it in the background.
#[derive(Clone, Copy)]
enum Ack {
    /// Return once JetStream has stored the event.
    Wait,
    /// Return once the event is on its way (the inbound hot path).
    InBackground,
}

/// How a session ended.
struct Ended {
    was_up: bool,
    reason: String,
}

impl AccountTask {
    fn shared(&self) -> &Shared {
        &self.accounts.inner
    }

    fn id(&self) -> &str {
        self.handle.id()
    }

    async fn run(mut self) {
        let Some(mut rx) = self.handle.rx.lock().ok().and_then(|mut rx| rx.take()) else {
            return;
        };
        let session_config = self.shared().session.clone();
        let lease = self.lease.clone().map(|bucket| {
            Lease::spawn(
                bucket,
                format!("im.{}", escape_token(self.id())),
                self.shared().holder.clone(),
                session_config.lease_ttl,
                self.shutdown.clone(),
            )
        });
        let mut lease_state = lease.as_ref().map(|l| l.watch());
        loop {
            if let Some(watch) = lease_state.as_mut() {
                self.handle.update(|s| s.state = LinkState::Standby);
                self.handle.active.store(false, Ordering::Release);
                loop {
                    if *watch.borrow_and_update() == LeaseState::Held {
                        break;
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return self.finish(lease).await,
                        changed = watch.changed() => if changed.is_err() { return self.finish(lease).await },
                        Some(mut out) = rx.recv() => out.answer(Err(Error::NotConnected {
                            account: self.id().to_owned(),
                            reason: "another replica holds it".to_owned(),
                        })),
                    }
                }
                tracing::info!(account = %self.id(), "lease held; connecting");
            }
            self.handle.active.store(true, Ordering::Release);
            let held = self.shutdown.child_token();
            let watcher = lease_state.clone().map(|mut watch| {
                let held = held.clone();
                tokio::spawn(async move {
                    loop {
                        if *watch.borrow_and_update() != LeaseState::Held {
                            break;
                        }
                        tokio::select! {
                            _ = held.cancelled() => break,
                            changed = watch.changed() => if changed.is_err() { break },
                        }
                    }
                    held.cancel();
                })
            });
            let server = self.serve_commands(held.clone()).await;
            self.connection_loop(&mut rx, &held).await;
            held.cancel();
            if let Some(watcher) = watcher {
                let _ = watcher.await;
            }
            let reason = if self.shutdown.is_cancelled() {
                "im-bridge is stopping"
            } else {
                "the lease moved to another replica"
            };
            if let Some(mut server) = server {
                // The command server waits for its handlers in flight, and each waits
                // for the answer to its send: answer what still reaches the queue until
                // the server is done, or the stop would wait out SEND_TIMEOUT.
                loop {
                    tokio::select! {
                        _ = &mut server => break,
                        Some(mut out) = rx.recv() => out.answer(Err(Error::Session(reason.to_owned()))),
                    }
                }
            }
            self.handle.active.store(false, Ordering::Release);
            while let Some(mut out) = self.queue.pop_front() {
                tracing::warn!(account = %self.id(), message_id = %out.message_id, "queued message dropped: {reason}");
                out.answer(Err(Error::Session(reason.to_owned())));
            }
            self.handle.queued.store(0, Ordering::Relaxed);
            if self.shutdown.is_cancelled() || lease_state.is_none() {
                break;
            }
        }
        self.finish(lease).await;
    }

    async fn finish(&self, lease: Option<Lease>) {
        self.handle.update(|s| s.state = LinkState::Down);
        if let Some(lease) = lease {
            lease.stopped().await;
        }
    }

    async fn serve_commands(&self, held: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let bus = self.shared().bus.clone();
        let subject = bus.subjects().im_send(self.id());
        let handle = self.handle.clone();
        let limits = self.shared().outbound.clone();
        let served = bus
            .serve(
                subject.clone(),
                QUEUE_GROUP.to_owned(),
                held,
                move |cmd: switchboard_bus::Command<SendRequest>| {
                    let handle = handle.clone();
                    let limits = limits.clone();
                    async move {
                        let mut request = cmd.body;
                        request.account = handle.id().to_owned();
                        handle.send_local(request, &limits).await.map_err(|e| e.to_body())
                    }
                },
            )
            .await;
        match served {
            Ok(task) => Some(task),
            Err(e) => {
                tracing::error!(account = %self.id(), %subject, error = %e, "cannot serve sends on the bus");
                None
            }
        }
    }

    async fn connection_loop(&mut self, rx: &mut mpsc::Receiver<Outbound>, stop: &CancellationToken) {
        let config = self.shared().session.clone();
        let mut delay = config.reconnect_min;
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            self.handle.update(|s| s.state = LinkState::Connecting);
            let ended = self.run_session(rx, stop, attempt).await;
            if stop.is_cancelled() {
                return;
            }
            self.handle.update(|s| {
                s.state = LinkState::Down;
                s.last_error = ended.reason.clone();
            });
            if ended.was_up {
                delay = config.reconnect_min;
                attempt = 0;
            }
            if ended.was_up || attempt == 1 {
                self.publish_link(false, &ended.reason, attempt).await;
            }
            tracing::warn!(account = %self.id(), reason = %ended.reason, retry_in = ?delay, "IM link down");
            // Jitter of up to a quarter keeps replicas and accounts from reconnecting in step.
            let jitter = delay.mul_f64(rand::random::<f64>() * 0.25);
            let wake = Instant::now() + delay + jitter;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(wake) => break,
                    out = rx.recv() => match out {
                        Some(out) => self.hold(out),
                        None => return,
                    },
                }
            }
            delay = (delay * 2).min(config.reconnect_max);
        }
    }

    async fn run_session(
        &mut self,
        rx: &mut mpsc::Receiver<Outbound>,
        stop: &CancellationToken,
        attempt: u32,
    ) -> Ended {
        let deadline = Instant::now() + self.shared().session.connect_timeout;
        let connect = Session::connect(&self.handle.config);
        let mut session = tokio::select! {
            _ = stop.cancelled() => return Ended { was_up: false, reason: "stopping".to_owned() },
            _ = tokio::time::sleep_until(deadline) => return Ended { was_up: false, reason: "connect timed out".to_owned() },
            session = connect => match session {
                Ok(session) => session,
                Err(e) => return Ended { was_up: false, reason: e.to_string() },
            },
        };
        let mut up = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    if up {
                        // Sends already handed to this account are work in flight:
                        // they go out before the session closes (`run` answers any
                        // that come later).
                        while let Ok(out) = rx.try_recv() {
                            self.deliver(&mut session, out).await;
                        }
                    }
                    session.close().await;
                    if up {
                        self.publish_link(false, "im-bridge is stopping", 0).await;
                    }
                    return Ended { was_up: up, reason: "stopping".to_owned() };
                }
                _ = tokio::time::sleep_until(deadline), if !up => {
                    session.close().await;
                    return Ended { was_up: false, reason: format!("not logged in and joined within {:?}", self.shared().session.connect_timeout) };
                }
                inbound = session.next() => match inbound {
                    Inbound::Ready => {
                        up = true;
                        let (address, rooms) = (session.address(), session.rooms());
                        self.handle.update(|s| {
                            s.state = LinkState::Up;
                            s.last_error.clear();
                            s.address = address.clone();
                            s.rooms = rooms;
                        });
                        tracing::info!(account = %self.id(), %address, attempt, "IM link up");
                        self.publish_link(true, "", attempt).await;
                        self.drain_queue(&mut session).await;
                    }
                    Inbound::Message(message) => self.publish_message(message).await,
                    Inbound::Presence(presence) => self.publish_presence(presence).await,
                    Inbound::Closed(reason) => {
                        session.close().await;
                        return Ended { was_up: up, reason };
                    }
                },
                out = rx.recv() => match out {
                    Some(out) if up => self.deliver(&mut session, out).await,
                    Some(out) => self.hold(out),
                    None => return Ended { was_up: up, reason: "stopping".to_owned() },
                },
            }
        }
    }

    async fn deliver(&self, session: &mut Session, mut out: Outbound) {
        let result = session.send(&out.to, &out.text, out.kind, &out.message_id).await;
        match &result {
            Ok((id, parts)) => {
                metrics::counter!("im_messages_sent_total", "account" => self.id().to_owned()).increment(1);
                tracing::debug!(account = %self.id(), message_id = %id, parts, "sent");
            }
            Err(e) => {
                metrics::counter!("im_send_failures_total", "account" => self.id().to_owned()).increment(1);
                tracing::warn!(account = %self.id(), message_id = %out.message_id, error = %e, "send failed");
            }
        }
        out.answer(result.map(|(message_id, parts)| SendReply {
            message_id,
            queued: false,
            parts,
        }));
    }

    fn hold(&mut self, mut out: Outbound) {
        let outbound = self.shared().outbound.clone();
        if outbound.while_down == WhileDown::Reject {
            let status = self.handle.status();
            let state = format!("{:?}", status.state).to_lowercase();
            let reason = if status.last_error.is_empty() {
                state
            } else {
                format!("{state}; last error: {}", status.last_error)
            };
            out.answer(Err(Error::NotConnected {
                account: self.id().to_owned(),
                reason,
            }));
            return;
        }
        let expiry = outbound.queue_expiry;
        while self.queue.front().is_some_and(|o| o.created.elapsed() > expiry) {
            if let Some(expired) = self.queue.pop_front() {
                tracing::warn!(account = %self.id(), message_id = %expired.message_id, "queued message expired");
            }
        }
        if self.queue.len() >= outbound.queue_max {
            out.answer(Err(Error::QueueFull(self.id().to_owned())));
            return;
        }
        let reply = out.reply.take();
        let message_id = out.message_id.clone();
        self.queue.push_back(out);
        self.handle
            .queued
            .store(u32::try_from(self.queue.len()).unwrap_or(u32::MAX), Ordering::Relaxed);
        if let Some(reply) = reply {
            let _ = reply.send(Ok(SendReply {
                message_id,
                queued: true,
                parts: 0,
            }));
        }
    }

    async fn drain_queue(&mut self, session: &mut Session) {
        let expiry = self.shared().outbound.queue_expiry;
        while let Some(out) = self.queue.pop_front() {
            if out.created.elapsed() > expiry {
                tracing::warn!(account = %self.id(), message_id = %out.message_id, "queued message expired");
                continue;
            }
            self.deliver(session, out).await;
        }
        self.handle.queued.store(0, Ordering::Relaxed);
    }

    async fn publish_link(&self, up: bool, reason: &str, attempt: u32) {
        let status = self.handle.status();
        let event = LinkEvent {
            account: self.id().to_owned(),
            protocol: self.handle.protocol() as i32,
            state: if up { LinkState::Up } else { LinkState::Down } as i32,
            reason: reason.to_owned(),
            address: status.address,
            attempt,
        };
        metrics::gauge!("im_link_up", "account" => self.id().to_owned()).set(if up { 1.0 } else { 0.0 });
        let bus = &self.shared().bus;
        let subject = bus.subjects().im_link(self.id(), up);
        // Waits for JetStream's ack: at a stop, `link.down` is the last thing the
        // account publishes, and the NATS connection may close right after it.
        self.publish(subject, event_types::IM_LINK, &event, None, Ack::Wait)
            .await;
    }

    async fn publish_message(&self, message: Message) {
        if !self.handle.allowed(&message.from, &message.from_full) {
            tracing::debug!(account = %self.id(), from = %message.from, "message from a sender not on allow_from dropped");
            return;
        }
        metrics::counter!("im_messages_received_total", "account" => self.id().to_owned()).increment(1);
        let subject = self.shared().bus.subjects().im_message(self.id());
        let about = if message.room.is_empty() {
            message.from.clone()
        } else {
            message.room.clone()
        };
        self.publish(
            subject,
            event_types::IM_MESSAGE,
            &message,
            Some(about),
            Ack::InBackground,
        )
        .await;
        let _ = self.shared().messages.send(message);
    }

    async fn publish_presence(&self, presence: Presence) {
        if !self.handle.allowed(&presence.from, &presence.from) && presence.room.is_empty() {
            return;
        }
        let subject = self.shared().bus.subjects().im_presence(self.id());
        let about = presence.from.clone();
        self.publish(
            subject,
            event_types::IM_PRESENCE,
            &presence,
            Some(about),
            Ack::InBackground,
        )
        .await;
    }

    async fn publish<T: serde::Serialize>(&self, subject: String, ty: &str, data: &T, about: Option<String>, ack: Ack) {
        let bus = &self.shared().bus;
        let event = match bus.event(ty, data) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(%subject, error = %e, "event does not encode");
                return;
            }
        };
        let event = match about {
            Some(about) => event.with_subject(about),
            None => event,
        };
        match bus.publish_async(subject.clone(), &event).await {
            Ok(acked) => {
                let confirm = async move {
                    if let Err(e) = acked.await {
                        tracing::warn!(%subject, error = %e, "event not acknowledged by JetStream");
                    }
                };
                match ack {
                    Ack::Wait => confirm.await,
                    Ack::InBackground => {
                        tokio::spawn(confirm);
                    }
                }
            }
            Err(e) => tracing::warn!(%subject, error = %e, "event not published"),
        }
    }
}
