//! Presence shared across nodes through the `SB_PRESENCE` KV bucket.
//!
//! Each node writes one entry per connected user, key `<user>.<node>`, value
//! [`NodeEntry`] (connections, admin, channels, time of writing), rewrites them every
//! `presence.heartbeat` and deletes them when the user's last connection on the node
//! closes. Every node mirrors the whole bucket in memory through a KV watch, so
//! queries are answered locally. An entry not rewritten within `presence.ttl` is
//! stale (its node died): any node sweeping it deletes it and, if that was the
//! user's last entry, publishes `offline` with a deterministic event id so the
//! sweeps of several nodes are deduplicated by JetStream.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_bus::{Bus, escape_token, event_types};
use switchboard_proto::push::v1::{PresenceEvent, UserPresence};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::hub::{Hub, LocalUser};

/// One node's entry for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The user id.
    pub user: String,
    /// The node.
    pub node: String,
    /// Connections of the user on the node.
    pub connections: u32,
    /// Any of them is an admin.
    pub admin: bool,
    /// Channels they subscribe to.
    pub channels: Vec<String>,
    /// When it was written, Unix milliseconds.
    pub at: u64,
}

/// The shared presence.
#[derive(Debug)]
pub struct Presence {
    bus: Bus,
    kv: kv::Store,
    node: String,
    ttl: Duration,
    join_leave: bool,
    hub: Arc<Hub>,
    /// key -> entry, every node's. Ordered, so that one user's entries (their keys
    /// share the prefix `<user>.`) are a range: asking about a user costs a lookup,
    /// not a scan of every user (which made connecting, leaving and the sweep
    /// quadratic in the users online).
    mirror: RwLock<BTreeMap<String, NodeEntry>>,
    /// Serialises this node's changes of one user (by hash shard) so online/offline
    /// are decided in order, without serialising unrelated users.
    changes: Vec<tokio::sync::Mutex<()>>,
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Presence writes (heartbeats, the deletes at shutdown) kept in flight at once: a
/// node with thousands of users must not write them one round trip after another.
const WRITES_IN_FLIGHT: usize = 64;

/// How long a clean shutdown spends removing this node's entries. What is left (NATS
/// unreachable, say) expires on the other nodes after `presence.ttl`, and their sweep
/// publishes the `offline` events.
const LEAVE_BUDGET: Duration = Duration::from_secs(5);

fn key(user: &str, node: &str) -> String {
    format!("{}.{node}", escape_token(user))
}

/// `user`'s entries in the mirror, one per node.
fn entries_of<'a>(mirror: &'a BTreeMap<String, NodeEntry>, user: &str) -> impl Iterator<Item = &'a NodeEntry> {
    let prefix = format!("{}.", escape_token(user));
    let node_at = prefix.len();
    let entries = mirror.range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded));
    entries
        .take_while(move |(key, _)| key.starts_with(&prefix))
        .filter(move |(key, _)| !key[node_at..].contains('.'))
        .map(|(_, entry)| entry)
}

impl Presence {
    /// Opens (or creates) the bucket and starts mirroring it.
    pub async fn start(
        bus: Bus,
        node: String,
        config: &crate::config::PresenceConfig,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        let (ttl, heartbeat) = (config.ttl, config.heartbeat);
        // Twice the TTL: the stream keeps what the sweep needs to see to publish
        // `offline` for a dead node, and no longer.
        let kv = bus.bucket("PRESENCE", ttl * 2, 1).await?;
        let presence = Arc::new(Self {
            bus,
            kv,
            node,
            ttl,
            join_leave: config.join_leave,
            hub,
            mirror: RwLock::default(),
            changes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        });
        let mut watch = presence
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| Error::Stream(format!("presence watch: {e}")))?;
        // Load what is there before serving, so the first queries are right. An
        // empty bucket sends nothing: stop waiting after a short while.
        loop {
            match tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
                Ok(Some(Ok(entry))) => {
                    let current = entry.seen_current || entry.delta == 0;
                    presence.apply(entry);
                    if current {
                        break;
                    }
                }
                Ok(Some(Err(e))) => return Err(Error::Stream(format!("presence watch: {e}"))),
                Ok(None) | Err(_) => break,
            }
        }
        let watcher = presence.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => watcher.apply(entry),
                        Some(Err(e)) => tracing::warn!(error = %e, "presence watch error"),
                        None => {
                            tracing::warn!("presence watch ended; restarting");
                            match watcher.kv.watch_with_history(">").await {
                                Ok(w) => watch = w,
                                Err(e) => {
                                    tracing::warn!(error = %e, "presence watch restart failed");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        }
                    }
                }
            }
        });
        let beater = presence.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        beater.heartbeat().await;
                        beater.sweep().await;
                    }
                }
            }
        });
        Ok(presence)
    }

    fn apply(&self, entry: kv::Entry) {
        let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<NodeEntry>(&entry.value) {
                Ok(value) => {
                    // Our own writes are applied directly; an older echo must not undo a newer local state.
                    if value.node == self.node {
                        return;
                    }
                    mirror.insert(entry.key, value);
                }
                Err(e) => tracing::debug!(key = entry.key, error = %e, "presence entry ignored"),
            },
            Operation::Delete | Operation::Purge => {
                if !entry.key.ends_with(&format!(".{}", self.node)) {
                    mirror.remove(&entry.key);
                }
            }
        }
    }

    fn is_live(&self, entry: &NodeEntry, now: u64) -> bool {
        entry.connections > 0 && entry.at + self.ttl.as_millis() as u64 >= now
    }

    /// The user's presence across nodes.
    pub fn user(&self, user: &str) -> UserPresence {
        let now = now_millis();
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        let mut presence = UserPresence {
            user: user.to_owned(),
            ..Default::default()
        };
        for entry in entries_of(&mirror, user).filter(|entry| self.is_live(entry, now)) {
            presence.connections += entry.connections;
            presence.admin |= entry.admin;
        }
        presence.online = presence.connections > 0;
        presence
    }

    fn online_users(&self, filter: impl Fn(&NodeEntry) -> bool) -> BTreeMap<String, UserPresence> {
        let now = now_millis();
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        let mut users: BTreeMap<String, UserPresence> = BTreeMap::new();
        for entry in mirror.values() {
            if self.is_live(entry, now) && filter(entry) {
                let item = users.entry(entry.user.clone()).or_insert_with(|| UserPresence {
                    user: entry.user.clone(),
                    online: true,
                    ..Default::default()
                });
                item.connections += entry.connections;
                item.admin |= entry.admin;
            }
        }
        users
    }

    /// Online users sorted by id, after `cursor`, at most `limit`; the bool is true
    /// when more follow.
    pub fn list_online(&self, admins_only: bool, cursor: &str, limit: usize) -> (Vec<UserPresence>, bool) {
        let users = self.online_users(|_| true);
        let mut page: Vec<UserPresence> = users
            .into_values()
            .filter(|u| !admins_only || u.admin)
            .filter(|u| cursor.is_empty() || u.user.as_str() > cursor)
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Users subscribed to `channel` on any node (their counts are all their connections).
    pub fn channel(&self, channel: &str) -> Vec<UserPresence> {
        let members = self.online_users(|e| e.channels.iter().any(|c| c == channel));
        let all = self.online_users(|_| true);
        members.into_keys().filter_map(|user| all.get(&user).cloned()).collect()
    }

    /// Writes this node's entry of `user` from the hub and publishes `online` or
    /// `offline` when the user's state across nodes changed.
    pub async fn update(&self, user: &str) {
        let shard = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(user) as usize % self.changes.len()
        };
        let _order = self.changes[shard].lock().await;
        let before = self.user(user);
        let channels_before = self.channels_of(user);
        let local = self.hub.local_user(user);
        let key = key(user, &self.node);
        self.apply_local(&key, user, &local);
        let after = self.user(user);
        let channels_after = self.channels_of(user);
        let written = if local.connections > 0 {
            self.write(&key, user, &local).await
        } else {
            self.kv.delete(&key).await.map(|_| ()).map_err(|e| e.to_string())
        };
        if let Err(e) = written {
            tracing::warn!(user, error = %e, "presence not written");
        }
        if before.online != after.online {
            self.publish_event(user, &after, None).await;
        }
        if self.join_leave {
            for channel in channels_after.difference(&channels_before) {
                self.publish_join_leave(channel, user, "join").await;
            }
            for channel in channels_before.difference(&channels_after) {
                self.publish_join_leave(channel, user, "leave").await;
            }
        }
    }

    /// Channels `user` is in on any node (live entries).
    fn channels_of(&self, user: &str) -> std::collections::BTreeSet<String> {
        let now = now_millis();
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        entries_of(&mirror, user)
            .filter(|e| self.is_live(e, now))
            .flat_map(|e| e.channels.iter().cloned())
            .collect()
    }

    /// A `join`/`leave` push to the channel's subscribers: `{"type": "join", "data": {"user": ..}}`.
    async fn publish_join_leave(&self, channel: &str, user: &str, kind: &str) {
        let push = serde_json::json!({"type": kind, "data": {"user": user}});
        let subject = self.bus.subjects().push_channel(channel);
        let result = match self.bus.event(event_types::PUSH, &push) {
            Ok(event) => self.bus.publish(subject, &event).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(channel, user, error = %e, "join/leave push not published");
        }
    }

    fn apply_local(&self, key: &str, user: &str, local: &LocalUser) {
        let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
        if local.connections == 0 {
            mirror.remove(key);
        } else {
            mirror.insert(key.to_owned(), self.entry(user, local));
        }
    }

    fn entry(&self, user: &str, local: &LocalUser) -> NodeEntry {
        NodeEntry {
            user: user.to_owned(),
            node: self.node.clone(),
            connections: local.connections,
            admin: local.admin,
            channels: local.channels.clone(),
            at: now_millis(),
        }
    }

    async fn write(&self, key: &str, user: &str, local: &LocalUser) -> Result<(), String> {
        let value = serde_json::to_vec(&self.entry(user, local)).map_err(|e| e.to_string())?;
        self.kv
            .put(key, value.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn heartbeat(&self) {
        futures::stream::iter(self.hub.local_users())
            .for_each_concurrent(WRITES_IN_FLIGHT, |(user, local)| async move {
                let key = key(&user, &self.node);
                self.apply_local(&key, &user, &local);
                if let Err(e) = self.write(&key, &user, &local).await {
                    tracing::warn!(user, error = %e, "presence heartbeat not written");
                }
            })
            .await;
    }

    /// Deletes stale entries of other nodes and publishes `offline` for users left
    /// with none.
    async fn sweep(&self) {
        let now = now_millis();
        let stale: Vec<(String, NodeEntry)> = {
            let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
            mirror
                .iter()
                .filter(|(_, e)| e.node != self.node && !self.is_live(e, now))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        };
        for (key, entry) in stale {
            let was_online = self.user(&entry.user).online || entry.connections > 0;
            {
                let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
                mirror.remove(&key);
            }
            if let Err(e) = self.kv.delete(&key).await {
                tracing::debug!(key, error = %e, "stale presence entry not deleted");
            }
            let after = self.user(&entry.user);
            if was_online && !after.online {
                let id = format!("offline-{}-{}-{}", escape_token(&entry.user), entry.node, entry.at);
                self.publish_event(&entry.user, &after, Some(id)).await;
            }
        }
    }

    async fn publish_event(&self, user: &str, presence: &UserPresence, id: Option<String>) {
        let now = time::OffsetDateTime::now_utc();
        let event = PresenceEvent {
            user: user.to_owned(),
            online: presence.online,
            connections: presence.connections,
            at: Some(switchboard_proto::wkt::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: now.nanosecond() as i32,
            }),
            admin: presence.admin,
        };
        let subject = self.bus.subjects().push_presence(user, presence.online);
        let result = match self.bus.event(event_types::PUSH_PRESENCE, &event) {
            Ok(event) => {
                let event = match id {
                    Some(id) => event.with_id(id),
                    None => event,
                };
                self.bus.publish(subject, &event).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(user, error = %e, "presence event not published");
        }
    }

    /// Deletes this node's entries (clean shutdown) and publishes `offline` for users
    /// that were only here, [`WRITES_IN_FLIGHT`] at a time, for at most
    /// [`LEAVE_BUDGET`].
    pub async fn leave(&self) {
        let keys: Vec<(String, String)> = {
            let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
            mirror
                .iter()
                .filter(|(_, e)| e.node == self.node)
                .map(|(k, e)| (k.clone(), e.user.clone()))
                .collect()
        };
        let count = keys.len();
        let removals = futures::stream::iter(keys).for_each_concurrent(WRITES_IN_FLIGHT, |(key, user)| async move {
            let before = self.user(&user);
            self.apply_local(&key, &user, &LocalUser::default());
            let _ = self.kv.delete(&key).await;
            let after = self.user(&user);
            if before.online && !after.online {
                self.publish_event(&user, &after, None).await;
            }
        });
        if tokio::time::timeout(LEAVE_BUDGET, removals).await.is_err() {
            tracing::warn!(
                entries = count,
                "presence not all removed within {LEAVE_BUDGET:?}; the other nodes expire the rest after presence.ttl"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::unescape_token;

    fn user_of_key(key: &str) -> Option<String> {
        let (user, _node) = key.split_once('.')?;
        unescape_token(user).ok()
    }

    #[test]
    fn keys_round_trip_odd_user_ids() {
        for user in ["42", "a.b", "ünï", "x y*>"] {
            let key = key(user, "node-1");
            assert_eq!(key.matches('.').count(), 1, "{key}");
            assert_eq!(user_of_key(&key).as_deref(), Some(user));
        }
    }
}
