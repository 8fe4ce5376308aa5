//! The connections of this node: who is connected, who listens to which channel,
//! and each connection's bounded outgoing queue.
//!
//! A push is serialised once into a [`Utf8Bytes`] frame and the same bytes are
//! queued for every matching connection; each connection's task drains its whole
//! queue at once and writes it with one flush (frames are coalesced per socket).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::protocol::close;

/// A connection id, unique on this node.
pub type ConnId = u64;

/// Where a delivery came from, as the browser's offsets are keyed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// `sb.push.user.<this user>`
    User,
    /// `sb.push.all`
    All,
    /// `sb.push.channel.<name>`
    Channel(Arc<str>),
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

/// One frame queued for a connection.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its source.
    pub source: Source,
    /// Its stream offset.
    pub offset: u64,
    /// The JSON text, shared by every connection it goes to.
    pub frame: Utf8Bytes,
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    close: Option<(u16, String)>,
}

/// A connection's outgoing queue, bounded in bytes.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
    /// Wakes a writer blocked on a stalled socket when a close is requested.
    closing: Notify,
    limit: usize,
}

impl Outbox {
    fn new(limit: usize) -> Self {
        Self {
            state: Mutex::default(),
            notify: Notify::new(),
            closing: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame; a queue over its limit is dropped and the connection is told
    /// to close as a slow consumer. Returns false when the connection is closing.
    pub fn push(&self, item: Outgoing) -> bool {
        let mut state = self.lock();
        if state.close.is_some() {
            return false;
        }
        let len = item.frame.as_str().len();
        if state.bytes + len > self.limit {
            state.queue = VecDeque::new();
            state.bytes = 0;
            state.close = Some((close::SLOW_CONSUMER, "slow consumer".to_owned()));
            drop(state);
            self.notify.notify_one();
            self.closing.notify_waiters();
            return false;
        }
        state.bytes += len;
        state.queue.push_back(item);
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Asks the connection to close with `code` (first request wins).
    pub fn close(&self, code: u16, reason: &str) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some((code, reason.to_owned()));
        }
        drop(state);
        self.notify.notify_one();
        self.closing.notify_waiters();
    }

    /// Resolves with the close request once there is one.
    pub async fn closed(&self) -> (u16, String) {
        loop {
            // Registered before the check, so a close between the two is not missed.
            let notified = self.closing.notified();
            if let Some(close) = self.lock().close.clone() {
                return close;
            }
            notified.await;
        }
    }

    /// Waits until something is queued or a close is requested.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Takes everything queued, and the close request if any.
    pub fn take(&self) -> (VecDeque<Outgoing>, Option<(u16, String)>) {
        let mut state = self.lock();
        state.bytes = 0;
        let queue = std::mem::take(&mut state.queue);
        (queue, state.close.clone())
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
    /// A new connection with a queue of `max_queued_bytes`.
    pub fn new(id: ConnId, user: &str, admin: bool, max_queued_bytes: usize) -> Self {
        Self {
            id,
            user: Arc::from(user),
            admin,
            outbox: Outbox::new(max_queued_bytes),
        }
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

    /// Subscribes a registered connection to `channel`; returns its subscription count.
    pub fn subscribe(&self, id: ConnId, channel: &str) -> usize {
        let mut registry = self.write();
        let Some(entry) = registry.conns.get(&id).cloned() else {
            return 0;
        };
        let name: Arc<str> = Arc::from(channel);
        registry.channels.entry(name.clone()).or_default().insert(id, entry);
        let subscriptions = registry.subscriptions.entry(id).or_default();
        subscriptions.insert(name);
        subscriptions.len()
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

    /// Queues a user push for every connection of `user`; returns how many.
    pub fn deliver_user(&self, user: &str, item: &Outgoing) -> usize {
        let registry = self.read();
        registry
            .users
            .get(user)
            .map_or(0, |tabs| tabs.iter().filter(|e| e.outbox.push(item.clone())).count())
    }

    /// Queues a channel push for every subscriber; returns how many.
    pub fn deliver_channel(&self, channel: &str, item: &Outgoing) -> usize {
        let registry = self.read();
        registry.channels.get(channel).map_or(0, |members| {
            members.values().filter(|e| e.outbox.push(item.clone())).count()
        })
    }

    /// Queues a push for every connection; returns how many.
    pub fn deliver_all(&self, item: &Outgoing) -> usize {
        let registry = self.read();
        registry.conns.values().filter(|e| e.outbox.push(item.clone())).count()
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
    use super::*;

    fn item(offset: u64, text: &str) -> Outgoing {
        Outgoing {
            source: Source::All,
            offset,
            frame: Utf8Bytes::from(text.to_owned()),
        }
    }

    #[test]
    fn outbox_closes_a_slow_consumer_instead_of_growing() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(item(1, "12345")));
        assert!(outbox.push(item(2, "12345")));
        assert!(!outbox.push(item(3, "1")));
        let (queue, close) = outbox.take();
        assert!(queue.is_empty(), "the queue is dropped, not kept");
        assert_eq!(close.map(|c| c.0), Some(close::SLOW_CONSUMER));
        assert!(!outbox.push(item(4, "1")));
    }

    #[test]
    fn take_frees_the_budget() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(item(1, "1234567890")));
        let (queue, close) = outbox.take();
        assert_eq!(queue.len(), 1);
        assert!(close.is_none());
        assert!(outbox.push(item(2, "1234567890")));
    }

    #[test]
    fn routes_by_user_channel_and_all_and_cleans_up() {
        let hub = Hub::default();
        let a1 = Arc::new(ConnEntry::new(1, "a", false, 1000));
        let a2 = Arc::new(ConnEntry::new(2, "a", true, 1000));
        let b = Arc::new(ConnEntry::new(3, "b", false, 1000));
        assert_eq!(hub.register(a1.clone(), 2), Ok(1));
        assert_eq!(hub.register(a2.clone(), 2), Ok(2));
        assert_eq!(
            hub.register(Arc::new(ConnEntry::new(9, "a", false, 1000)), 2),
            Err(LimitError::PerUser)
        );
        assert_eq!(hub.register(b.clone(), 2), Ok(1));
        hub.subscribe(2, "news");
        hub.subscribe(3, "news");
        assert_eq!(hub.deliver_user("a", &item(1, "x")), 2);
        assert_eq!(hub.deliver_channel("news", &item(2, "x")), 2);
        assert_eq!(hub.deliver_all(&item(3, "x")), 3);
        let local = hub.local_user("a");
        assert_eq!(
            (local.connections, local.admin, local.channels),
            (2, true, vec!["news".to_owned()])
        );
        hub.unregister(2);
        assert_eq!(hub.deliver_channel("news", &item(4, "x")), 1);
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
