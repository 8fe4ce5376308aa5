//! The connections of this node: who is connected, who listens to which channel,
//! and each connection's bounded outgoing queue.
//!
//! A push is serialised once, as a whole WebSocket frame, and the same bytes are
//! queued on every matching connection's socket; every [`FLUSH_CHUNK`] sockets queued
//! are handed to a task that writes each with one system call, the last ones the
//! fan-out's caller writes ([`flush`]). No connection's task wakes for a push: it
//! only waits when its socket is full. Frames queued while a socket is busy go out
//! together in its next write.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use smallvec::SmallVec;
use switchboard_runtime::Socket;
use tokio::sync::Notify;

use crate::protocol::close;

/// A connection id, unique on this node.
pub type ConnId = u64;

/// Where a delivery came from, as the browser's offsets are keyed.
#[derive(Debug, Clone, Eq)]
pub enum Source {
    /// `sb.push.user.<this user>`
    User,
    /// `sb.push.all`
    All,
    /// `sb.push.channel.<name>`
    Channel(Arc<str>),
}

impl PartialEq for Source {
    /// Channel names are compared by address first: the fan-out's and its members'
    /// offsets share the hub's one copy of each name ([`Hub::subscribe`]), so a
    /// delivery does not read every member's copy of the name.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Source::User, Source::User) | (Source::All, Source::All) => true,
            (Source::Channel(a), Source::Channel(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

impl Source {
    /// The label browsers see in `source` and use as their offsets' key.
    pub fn label(&self) -> String {
        match self {
            Source::User => "user".to_owned(),
            Source::All => "all".to_owned(),
            Source::Channel(name) => format!("channel:{name}"),
        }
    }
}

/// One push for a connection.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its source.
    pub source: Source,
    /// Its stream offset.
    pub offset: u64,
    /// The whole WebSocket text frame, shared by every connection it goes to.
    pub frame: Bytes,
}

/// The last offset delivered per subscribed source (a source absent here is not
/// subscribed). A connection has a handful (its user, `all`, a few channels), so a
/// vector scanned in order costs less, in every idle connection, than a hash table.
/// The first three are kept inline: a fan-out reads them for every member, and a
/// vector's own allocation was a cache miss per member (11 % of a 20k/s profile).
#[derive(Debug, Default)]
struct Offsets(SmallVec<[(Source, u64); 3]>);

impl Offsets {
    fn get_mut(&mut self, source: &Source) -> Option<&mut u64> {
        self.0.iter_mut().find(|(s, _)| s == source).map(|(_, offset)| offset)
    }

    /// Sets a source's offset, subscribing it when it is new.
    fn insert(&mut self, source: Source, offset: u64) {
        match self.get_mut(&source) {
            Some(last) => *last = offset,
            None => self.0.push((source, offset)),
        }
    }

    /// The subscribed channels' names.
    fn channels(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.0.iter().filter_map(|(source, _)| match source {
            Source::Channel(name) => Some(name.clone()),
            _ => None,
        })
    }

    fn remove(&mut self, source: &Source) -> bool {
        let Some(index) = self.0.iter().position(|(s, _)| s == source) else {
            return false;
        };
        self.0.swap_remove(index);
        true
    }
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued on the socket; `needs_flush`: the caller must [`flush`] this connection.
    Queued {
        /// Nobody was going to write the socket.
        needs_flush: bool,
    },
    /// Not for this connection (a source it does not subscribe, or an offset it has).
    Skipped,
    /// The connection is closing (or was just closed as a slow consumer).
    Refused,
}

#[derive(Debug)]
struct OutboxState {
    offsets: Offsets,
    /// While the connection catches up (its recovery, a subscription's replay),
    /// pushes wait here, so that they follow what it replays.
    held: Option<Vec<Outgoing>>,
    held_bytes: usize,
    close: Option<(u16, String)>,
}

/// A connection's outgoing side: its delivered offsets and its socket's queue,
/// bounded in bytes.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    socket: Socket,
    /// Wakes the connection's task: its socket is full, or a close was requested.
    notify: Notify,
    /// Wakes a task waiting on a full socket when a close is requested.
    closing: Notify,
    limit: usize,
}

impl Outbox {
    /// A queue on `socket` holding at most `limit` bytes, holding pushes until
    /// [`Outbox::release`] (a new connection first sends what it recovers).
    fn new(socket: Socket, limit: usize) -> Self {
        Self {
            state: Mutex::new(OutboxState {
                offsets: Offsets::default(),
                held: Some(Vec::new()),
                held_bytes: 0,
                close: None,
            }),
            socket,
            notify: Notify::new(),
            closing: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic while holding this lock cannot leave the state inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection's socket.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Queues a push if the connection subscribes its source and does not have its
    /// offset yet. A socket whose queue goes over the limit is closed as a slow
    /// consumer instead of growing.
    pub fn push(&self, item: &Outgoing) -> Pushed {
        let mut state = self.lock();
        if state.close.is_some() {
            return Pushed::Refused;
        }
        if let Some(held) = &mut state.held {
            let len = item.frame.len();
            held.push(item.clone());
            state.held_bytes += len;
            if state.held_bytes > self.limit {
                state.held = None;
                state.held_bytes = 0;
                self.request_close(&mut state, close::SLOW_CONSUMER, "slow consumer");
                return Pushed::Refused;
            }
            return Pushed::Queued { needs_flush: false };
        }
        self.send(&mut state, item, false)
    }

    /// Queues `item` if it is new to its source (or, replaying, if its source is
    /// subscribed at all: a replay may go below the subscription's position).
    fn send(&self, state: &mut OutboxState, item: &Outgoing, replay: bool) -> Pushed {
        let Some(last) = state.offsets.get_mut(&item.source) else {
            return Pushed::Skipped;
        };
        if item.offset <= *last && !replay {
            return Pushed::Skipped;
        }
        *last = (*last).max(item.offset);
        let queued = self.socket.queue(item.frame.clone());
        if queued.bytes > self.limit {
            self.socket.discard_unstarted();
            self.request_close(state, close::SLOW_CONSUMER, "slow consumer");
            return Pushed::Refused;
        }
        Pushed::Queued {
            needs_flush: queued.needs_flush,
        }
    }

    /// Queues what the connection recovered, in order, ahead of the pushes held
    /// meanwhile. Returns whether the socket needs a [`Outbox::flush`].
    pub fn replay(&self, items: Vec<Outgoing>) -> bool {
        self.send_all(&mut self.lock(), &items, true)
    }

    /// Holds pushes (until [`Outbox::release`]) while the connection replays.
    pub fn hold(&self) {
        let mut state = self.lock();
        if state.held.is_none() {
            state.held = Some(Vec::new());
        }
    }

    /// Queues the pushes held since [`Outbox::hold`] and delivers the next ones
    /// straight away. Returns whether the socket needs a [`Outbox::flush`].
    pub fn release(&self) -> bool {
        let mut state = self.lock();
        let Some(held) = state.held.take() else {
            return false;
        };
        state.held_bytes = 0;
        self.send_all(&mut state, &held, false)
    }

    /// [`Outbox::send`]s `items` in order; whether the socket needs a flush.
    fn send_all(&self, state: &mut OutboxState, items: &[Outgoing], replay: bool) -> bool {
        let mut needs_flush = false;
        for item in items {
            match self.send(state, item, replay) {
                Pushed::Queued { needs_flush: needs } => needs_flush |= needs,
                Pushed::Skipped => {}
                Pushed::Refused => return false,
            }
        }
        needs_flush
    }

    /// Writes what the socket holds as far as it takes it now; a full socket is
    /// left to the connection's task to wait for.
    pub fn flush(&self) {
        match self.socket.try_flush() {
            Ok(true) => {}
            Ok(false) => self.notify.notify_one(),
            Err(_) => self.close(close::SHUTDOWN, "write failed"),
        }
    }

    /// Subscribes `source`, delivered up to `offset`.
    pub fn subscribe(&self, source: Source, offset: u64) {
        self.lock().offsets.insert(source, offset);
    }

    /// Unsubscribes `source`; false when it was not subscribed.
    pub fn unsubscribe(&self, source: &Source) -> bool {
        self.lock().offsets.remove(source)
    }

    /// Whether `source` is subscribed.
    pub fn subscribes(&self, source: &Source) -> bool {
        self.lock().offsets.0.iter().any(|(s, _)| s == source)
    }

    /// The channels it subscribes.
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.lock().offsets.channels().collect()
    }

    /// Unsubscribes everything; returns the channels it subscribed.
    pub fn unsubscribe_all(&self) -> Vec<Arc<str>> {
        let mut state = self.lock();
        let channels = state.offsets.channels().collect();
        state.offsets.0.clear();
        channels
    }

    /// Asks the connection to close with `code` (first request wins).
    pub fn close(&self, code: u16, reason: &str) {
        self.request_close(&mut self.lock(), code, reason);
    }

    /// [`Outbox::close`] with the state already locked.
    fn request_close(&self, state: &mut OutboxState, code: u16, reason: &str) {
        if state.close.is_none() {
            state.close = Some((code, reason.to_owned()));
        }
        self.notify.notify_one();
        self.closing.notify_waiters();
    }

    /// The close requested, if any.
    pub fn close_request(&self) -> Option<(u16, String)> {
        self.lock().close.clone()
    }

    /// Resolves with the close request once there is one.
    pub async fn closed(&self) -> (u16, String) {
        loop {
            // Registered before the check, so a close between the two is not missed.
            let notified = self.closing.notified();
            if let Some(close) = self.close_request() {
                return close;
            }
            notified.await;
        }
    }

    /// Waits until the socket is full or a close is requested.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

/// How many sockets a fan-out queues on before it hands their writes to a task of
/// their own. Small enough that what the queueing touched of each connection is still
/// in cache when the other worker writes it, large enough that a task costs little
/// beside its writes.
const FLUSH_CHUNK: usize = 256;

/// Writes the sockets a fan-out queued on and left to its caller (see [`Fanout`]).
pub fn flush(entries: Vec<Arc<ConnEntry>>) {
    for entry in entries {
        entry.outbox.flush();
    }
}

/// One connection as the hub knows it.
#[derive(Debug)]
pub struct ConnEntry {
    /// Its id.
    pub id: ConnId,
    /// The user.
    pub user: Arc<str>,
    /// The admin claim.
    pub admin: bool,
    /// Its queue.
    pub outbox: Outbox,
}

impl ConnEntry {
    /// A new connection writing to `socket`, with a queue of `max_queued_bytes`.
    pub fn new(id: ConnId, user: &str, admin: bool, socket: Socket, max_queued_bytes: usize) -> Self {
        Self {
            id,
            user: Arc::from(user),
            admin,
            outbox: Outbox::new(socket, max_queued_bytes),
        }
    }
}

/// What a fan-out did. Every [`FLUSH_CHUNK`] sockets it queued on are written by a
/// task of their own as soon as they are queued; the rest are left to the caller.
#[derive(Debug, Default)]
pub struct Fanout {
    /// Connections it was queued for.
    pub delivered: usize,
    /// Sockets the caller must write (see [`flush`]).
    pub to_flush: Vec<Arc<ConnEntry>>,
}

impl Fanout {
    fn push<'a>(entries: impl Iterator<Item = &'a Arc<ConnEntry>>, item: &Outgoing) -> Self {
        let mut fanout = Fanout::default();
        for entry in entries {
            if let Pushed::Queued { needs_flush } = entry.outbox.push(item) {
                fanout.delivered += 1;
                if needs_flush {
                    fanout.to_flush.push(entry.clone());
                    if fanout.to_flush.len() == FLUSH_CHUNK {
                        let chunk = std::mem::replace(&mut fanout.to_flush, Vec::with_capacity(FLUSH_CHUNK));
                        tokio::spawn(async move { flush(chunk) });
                    }
                }
            }
        }
        fanout
    }
}

/// What this node has of one user, for presence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalUser {
    /// Connections on this node.
    pub connections: u32,
    /// Any of them has the admin claim.
    pub admin: bool,
    /// Channels any of them subscribes to, sorted.
    pub channels: Vec<String>,
}

#[derive(Debug, Default)]
struct Registry {
    conns: HashMap<ConnId, Arc<ConnEntry>>,
    users: HashMap<Arc<str>, Vec<Arc<ConnEntry>>>,
    channels: HashMap<Arc<str>, HashMap<ConnId, Arc<ConnEntry>>>,
    subscriptions: HashMap<ConnId, HashSet<Arc<str>>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Too many connections from one IP.
    #[error("too many connections from this address")]
    PerIp,
    /// Too many connections of one user.
    #[error("too many connections of this user")]
    PerUser,
}

/// The connections of this node.
#[derive(Debug, Default)]
pub struct Hub {
    registry: RwLock<Registry>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// Holds one connection slot of an IP until dropped.
#[derive(Debug)]
pub struct IpSlot {
    hub: Arc<Hub>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.hub.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Hub {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a connection slot for `ip` (limit 0 = unlimited).
    pub fn reserve_ip(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Result<IpSlot, LimitError> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_default();
        if limit > 0 && *count >= limit {
            return Err(LimitError::PerIp);
        }
        *count += 1;
        Ok(IpSlot { hub: self.clone(), ip })
    }

    /// Adds a connection (limit 0 = unlimited). Returns the user's connections on
    /// this node, this one included.
    pub fn register(&self, entry: Arc<ConnEntry>, max_per_user: u32) -> Result<u32, LimitError> {
        let mut registry = self.write();
        let tabs = registry.users.entry(entry.user.clone()).or_default();
        if max_per_user > 0 && tabs.len() >= max_per_user as usize {
            if tabs.is_empty() {
                registry.users.remove(&entry.user);
            }
            return Err(LimitError::PerUser);
        }
        tabs.push(entry.clone());
        let count = tabs.len() as u32;
        registry.conns.insert(entry.id, entry);
        Ok(count)
    }

    /// Removes a connection and its subscriptions.
    pub fn unregister(&self, id: ConnId) {
        let mut registry = self.write();
        let Some(entry) = registry.conns.remove(&id) else {
            return;
        };
        if let Some(tabs) = registry.users.get_mut(&entry.user) {
            tabs.retain(|e| e.id != id);
            if tabs.is_empty() {
                registry.users.remove(&entry.user);
            }
        }
        for channel in registry.subscriptions.remove(&id).unwrap_or_default() {
            if let Some(members) = registry.channels.get_mut(&channel) {
                members.remove(&id);
                if members.is_empty() {
                    registry.channels.remove(&channel);
                }
            }
        }
    }

    /// Subscribes a registered connection to `channel`. Returns the hub's copy of
    /// the name, which the connection's offsets should key the channel with (see
    /// [`Source`]'s equality), or `None` if the connection is not registered.
    pub fn subscribe(&self, id: ConnId, channel: &str) -> Option<Arc<str>> {
        let mut registry = self.write();
        let entry = registry.conns.get(&id).cloned()?;
        let name = match registry.channels.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => Arc::from(channel),
        };
        registry.channels.entry(name.clone()).or_default().insert(id, entry);
        registry.subscriptions.entry(id).or_default().insert(name.clone());
        Some(name)
    }

    /// Unsubscribes a connection from `channel`.
    pub fn unsubscribe(&self, id: ConnId, channel: &str) {
        let mut registry = self.write();
        if let Some(subscriptions) = registry.subscriptions.get_mut(&id) {
            subscriptions.remove(channel);
        }
        if let Some(members) = registry.channels.get_mut(channel) {
            members.remove(&id);
            if members.is_empty() {
                registry.channels.remove(channel);
            }
        }
    }

    /// Queues a user push for every connection of `user`.
    pub fn deliver_user(&self, user: &str, item: &Outgoing) -> Fanout {
        let registry = self.read();
        registry
            .users
            .get(user)
            .map_or_else(Fanout::default, |tabs| Fanout::push(tabs.iter(), item))
    }

    /// Queues a channel push for every subscriber.
    pub fn deliver_channel(&self, channel: &str, item: &Outgoing) -> Fanout {
        let registry = self.read();
        let Some((name, members)) = registry.channels.get_key_value(channel) else {
            return Fanout::default();
        };
        // Keyed by the hub's copy of the name, as the members' offsets are.
        let item = Outgoing {
            source: Source::Channel(name.clone()),
            ..item.clone()
        };
        Fanout::push(members.values(), &item)
    }

    /// Queues a push for every connection.
    pub fn deliver_all(&self, item: &Outgoing) -> Fanout {
        Fanout::push(self.read().conns.values(), item)
    }

    /// Asks every connection of `user` to close; returns how many.
    pub fn close_user(&self, user: &str, code: u16, reason: &str) -> usize {
        let registry = self.read();
        registry.users.get(user).map_or(0, |tabs| {
            for entry in tabs {
                entry.outbox.close(code, reason);
            }
            tabs.len()
        })
    }

    /// Asks every connection of this node to close with `code` (at shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for entry in self.read().conns.values() {
            entry.outbox.close(code, reason);
        }
    }

    /// What this node has of `user` (zero connections when none).
    pub fn local_user(&self, user: &str) -> LocalUser {
        let registry = self.read();
        Self::summarise(&registry, user)
    }

    fn summarise(registry: &Registry, user: &str) -> LocalUser {
        let Some(tabs) = registry.users.get(user) else {
            return LocalUser::default();
        };
        let mut channels: Vec<String> = tabs
            .iter()
            .flat_map(|e| registry.subscriptions.get(&e.id).into_iter().flatten())
            .map(|c| c.to_string())
            .collect();
        channels.sort();
        channels.dedup();
        LocalUser {
            connections: tabs.len() as u32,
            admin: tabs.iter().any(|e| e.admin),
            channels,
        }
    }

    /// Every user connected to this node.
    pub fn local_users(&self) -> Vec<(String, LocalUser)> {
        let registry = self.read();
        registry
            .users
            .keys()
            .map(|user| (user.to_string(), Self::summarise(&registry, user)))
            .collect()
    }

    /// Connections on this node.
    pub fn connection_count(&self) -> usize {
        self.read().conns.len()
    }
}

#[cfg(test)]
mod tests {
    use switchboard_runtime::SocketIo;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn item(source: Source, offset: u64, text: &str) -> Outgoing {
        Outgoing {
            source,
            offset,
            frame: Bytes::from(text.to_owned()),
        }
    }

    /// A server-side socket and the client end it writes to.
    async fn socket() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (SocketIo::new(server).socket().clone(), client)
    }

    async fn live_outbox(limit: usize) -> (Outbox, TcpStream) {
        let (socket, client) = socket().await;
        let outbox = Outbox::new(socket, limit);
        outbox.subscribe(Source::All, 0);
        assert!(!outbox.release());
        (outbox, client)
    }

    #[tokio::test]
    async fn outbox_closes_a_slow_consumer_instead_of_growing() {
        let (outbox, _client) = live_outbox(10).await;
        assert_eq!(
            outbox.push(&item(Source::All, 1, "12345")),
            Pushed::Queued { needs_flush: true }
        );
        assert_eq!(
            outbox.push(&item(Source::All, 2, "12345")),
            Pushed::Queued { needs_flush: false }
        );
        assert_eq!(outbox.push(&item(Source::All, 3, "1")), Pushed::Refused);
        assert_eq!(outbox.socket().queued_bytes(), 0, "the queue is dropped, not kept");
        assert_eq!(outbox.close_request().map(|c| c.0), Some(close::SLOW_CONSUMER));
        assert_eq!(outbox.push(&item(Source::All, 4, "1")), Pushed::Refused);
    }

    #[tokio::test]
    async fn a_flush_frees_the_budget_and_writes_in_order() {
        let (outbox, mut client) = live_outbox(10).await;
        assert_eq!(
            outbox.push(&item(Source::All, 1, "0123456789")),
            Pushed::Queued { needs_flush: true }
        );
        outbox.flush();
        assert_eq!(outbox.socket().queued_bytes(), 0);
        assert_eq!(
            outbox.push(&item(Source::All, 2, "abcdefghij")),
            Pushed::Queued { needs_flush: true }
        );
        outbox.flush();
        let mut read = [0u8; 20];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"0123456789abcdefghij");
    }

    #[tokio::test]
    async fn held_pushes_follow_the_replay_without_repeating_it() {
        let (socket, mut client) = socket().await;
        let outbox = Outbox::new(socket, 1000);
        outbox.subscribe(Source::All, 5);
        assert_eq!(
            outbox.push(&item(Source::All, 6, "six ")),
            Pushed::Queued { needs_flush: false }
        );
        assert_eq!(
            outbox.push(&item(Source::All, 7, "seven")),
            Pushed::Queued { needs_flush: false }
        );
        assert_eq!(
            outbox.push(&item(Source::User, 8, "not subscribed")),
            Pushed::Queued { needs_flush: false }
        );
        assert_eq!(outbox.socket().queued_bytes(), 0, "held, not written");
        assert!(outbox.replay(vec![item(Source::All, 4, "four "), item(Source::All, 6, "six ")]));
        outbox.release();
        assert_eq!(outbox.push(&item(Source::All, 7, "again")), Pushed::Skipped);
        assert_eq!(
            outbox.push(&item(Source::All, 9, " nine")),
            Pushed::Queued { needs_flush: false }
        );
        outbox.flush();
        let mut read = [0u8; 19];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"four six seven nine");
    }

    async fn live_entry(id: ConnId, user: &str, admin: bool) -> (Arc<ConnEntry>, TcpStream) {
        let (socket, client) = socket().await;
        let entry = Arc::new(ConnEntry::new(id, user, admin, socket, 1000));
        entry.outbox.subscribe(Source::User, 0);
        entry.outbox.subscribe(Source::All, 0);
        entry.outbox.release();
        (entry, client)
    }

    #[tokio::test]
    async fn a_fan_out_past_one_chunk_reaches_every_member_once() {
        let hub = Hub::default();
        let members = FLUSH_CHUNK * 2 + 10;
        let mut clients = Vec::with_capacity(members);
        for id in 0..members as ConnId {
            let (entry, client) = live_entry(id, &format!("u{id}"), false).await;
            hub.register(entry, 0).unwrap();
            clients.push(client);
        }
        let fanout = hub.deliver_all(&item(Source::All, 1, "one"));
        assert_eq!(fanout.delivered, members);
        assert_eq!(fanout.to_flush.len(), 10, "whole chunks went to tasks of their own");
        flush(fanout.to_flush);
        for client in &mut clients {
            let mut read = [0u8; 3];
            tokio::time::timeout(std::time::Duration::from_secs(10), client.read_exact(&mut read))
                .await
                .expect("every member is written")
                .unwrap();
            assert_eq!(&read, b"one");
        }
        for client in &clients {
            let more = client.try_read(&mut [0u8; 1]);
            assert!(
                matches!(&more, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "written once: {more:?}"
            );
        }
    }

    #[tokio::test]
    async fn routes_by_user_channel_and_all_and_cleans_up() {
        let hub = Hub::default();
        let (a1, _c1) = live_entry(1, "a", false).await;
        let (a2, _c2) = live_entry(2, "a", true).await;
        let (b, _c3) = live_entry(3, "b", false).await;
        let (a3, _c9) = live_entry(9, "a", false).await;
        assert_eq!(hub.register(a1.clone(), 2), Ok(1));
        assert_eq!(hub.register(a2.clone(), 2), Ok(2));
        assert_eq!(hub.register(a3, 2), Err(LimitError::PerUser));
        assert_eq!(hub.register(b.clone(), 2), Ok(1));
        let names: Vec<Arc<str>> = [(2, &a2), (3, &b)]
            .into_iter()
            .map(|(id, entry)| {
                let name = hub.subscribe(id, "news").expect("registered");
                entry.outbox.subscribe(Source::Channel(name.clone()), 0);
                name
            })
            .collect();
        assert!(
            Arc::ptr_eq(&names[0], &names[1]),
            "members share the hub's copy of the name"
        );
        assert_eq!(hub.subscribe(42, "news"), None, "not registered");
        let news = Source::Channel("news".into());
        let user = hub.deliver_user("a", &item(Source::User, 1, "x"));
        assert_eq!((user.delivered, user.to_flush.len()), (2, 2));
        assert_eq!(hub.deliver_channel("news", &item(news.clone(), 2, "x")).delivered, 2);
        let all = hub.deliver_all(&item(Source::All, 3, "x"));
        assert_eq!(all.delivered, 3);
        assert!(all.to_flush.is_empty(), "every socket has a flush due already");
        let local = hub.local_user("a");
        assert_eq!(
            (local.connections, local.admin, local.channels),
            (2, true, vec!["news".to_owned()])
        );
        hub.unregister(2);
        assert_eq!(hub.deliver_channel("news", &item(news, 4, "x")).delivered, 1);
        assert_eq!(hub.local_user("a").channels, Vec::<String>::new());
        hub.unregister(3);
        hub.unregister(1);
        assert_eq!(hub.connection_count(), 0);
        assert!(hub.local_users().is_empty());
    }

    #[test]
    fn ip_slots_are_released() {
        let hub = Arc::new(Hub::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let slot = hub.reserve_ip(ip, 1).unwrap();
        assert_eq!(hub.reserve_ip(ip, 1).unwrap_err(), LimitError::PerIp);
        drop(slot);
        assert!(hub.reserve_ip(ip, 1).is_ok());
    }
}
