//! What one ws-push node shares between its connections and its APIs, and the
//! operations the HTTP, gRPC and NATS APIs all call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::stream::Stream;
use switchboard_bus::{Bus, Secret, event_types};
use switchboard_proto::push::v1::{
    ChannelPresenceReply, DisconnectReply, DisconnectRequest, ListOnlineReply, PresenceReply, PublishReply,
    PublishRequest, target,
};
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::Config;
use crate::hub::Hub;
use crate::interest::Interest;
use crate::pattern;
use crate::presence::Presence;
use crate::protocol::close;

/// Why an API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No or a wrong API key.
    #[error("missing or wrong API key")]
    Unauthenticated,
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// NATS did not take it.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The node's shared state.
#[derive(Debug)]
pub struct Node {
    /// The config.
    pub config: Config,
    /// This node's name.
    pub node: String,
    /// Token checks.
    pub verifier: Verifier,
    /// Local connections.
    pub hub: Arc<Hub>,
    /// The users and channels this node gets pushes for.
    pub interest: Arc<Interest>,
    /// Shared presence.
    pub presence: Arc<Presence>,
    /// The bus.
    pub bus: Bus,
    /// `SB_PUSH`.
    pub stream: Stream,
    /// `SB_PUSH`'s epoch.
    pub epoch: String,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    next_id: AtomicU64,
}

impl Node {
    /// Puts the parts together.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        node: String,
        verifier: Verifier,
        hub: Arc<Hub>,
        interest: Arc<Interest>,
        presence: Arc<Presence>,
        bus: Bus,
        stream: Stream,
        epoch: String,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            config,
            node,
            verifier,
            hub,
            interest,
            presence,
            bus,
            stream,
            epoch,
            shutdown,
            next_id: AtomicU64::new(1),
        }
    }

    /// A new connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// True when `key` is one of the configured API keys (compared in constant time).
    pub fn api_key_ok(&self, key: Option<&str>) -> bool {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return false;
        };
        self.config
            .api
            .keys
            .iter()
            .filter(|k| !k.is_empty())
            .any(|k| constant_time_eq(k, key))
    }

    fn subject(&self, request: &PublishRequest) -> Result<(String, Option<String>), ApiError> {
        let target = request
            .target
            .as_ref()
            .and_then(|t| t.target.as_ref())
            .ok_or_else(|| ApiError::Invalid("target is required (user, channel or all)".into()))?;
        let subjects = self.bus.subjects();
        match target {
            target::Target::User(user) if !user.is_empty() && user.len() <= 256 => {
                Ok((subjects.push_user(user), Some(user.clone())))
            }
            target::Target::User(_) => Err(ApiError::Invalid("target.user must be 1-256 bytes".into())),
            target::Target::Channel(channel) if pattern::valid_name(channel) => {
                Ok((subjects.push_channel(channel), None))
            }
            target::Target::Channel(_) => Err(ApiError::Invalid(
                "target.channel must be 1-128 of [A-Za-z0-9._:@-]".into(),
            )),
            target::Target::All(true) => Ok((subjects.push_all(), None)),
            target::Target::All(false) => Err(ApiError::Invalid("target.all must be true".into())),
        }
    }

    /// Publishes pushes to `SB_PUSH` (pipelined, in order) and returns their offsets.
    pub async fn publish(&self, requests: Vec<PublishRequest>) -> Result<Vec<PublishReply>, ApiError> {
        if requests.len() > self.config.max_batch() {
            return Err(ApiError::Invalid(format!(
                "at most {} items per batch",
                self.config.max_batch()
            )));
        }
        let mut prepared = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            let (subject, user) = self
                .subject(request)
                .map_err(|e| ApiError::Invalid(format!("items[{index}]: {e}")))?;
            let push = request
                .push
                .as_ref()
                .ok_or_else(|| ApiError::Invalid(format!("items[{index}]: push is required")))?;
            let event = self
                .bus
                .event(event_types::PUSH, push)
                .map_err(|e| ApiError::Invalid(e.to_string()))?;
            prepared.push((subject, user, event));
        }
        let mut acks = Vec::with_capacity(prepared.len());
        for (subject, user, event) in &prepared {
            let ack = self
                .bus
                .publish_async(subject.clone(), event)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            acks.push((ack, user));
        }
        let mut replies = Vec::with_capacity(acks.len());
        for (ack, user) in acks {
            let ack = ack.await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let presence = user.as_deref().map(|u| self.presence.user(u));
            replies.push(PublishReply {
                offset: ack.sequence,
                epoch: self.epoch.clone(),
                online: presence.as_ref().is_some_and(|p| p.online),
                connections: presence.map_or(0, |p| p.connections),
            });
        }
        Ok(replies)
    }

    /// Presence of each user asked about (at most 1000).
    pub fn presence_of(&self, users: &[String]) -> Result<PresenceReply, ApiError> {
        if users.len() > 1000 {
            return Err(ApiError::Invalid("at most 1000 users per request".into()));
        }
        Ok(PresenceReply {
            users: users.iter().map(|u| self.presence.user(u)).collect(),
        })
    }

    /// A page of online users.
    pub fn list_online(&self, admins_only: bool, cursor: &str, page_size: u32) -> ListOnlineReply {
        let limit = match page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let (users, has_more) = self.presence.list_online(admins_only, cursor, limit);
        let next_cursor = if has_more {
            users.last().map(|u| u.user.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        ListOnlineReply {
            users,
            page: Some(switchboard_proto::common::v1::PageInfo { next_cursor, has_more }),
        }
    }

    /// Users in a channel.
    pub fn channel_presence(&self, channel: &str) -> Result<ChannelPresenceReply, ApiError> {
        if !pattern::valid_name(channel) {
            return Err(ApiError::Invalid("channel must be 1-128 of [A-Za-z0-9._:@-]".into()));
        }
        Ok(ChannelPresenceReply {
            channel: channel.to_owned(),
            users: self.presence.channel(channel),
        })
    }

    /// Closes every connection of a user on every node; answers how many the shared
    /// presence counted.
    pub async fn disconnect(&self, request: DisconnectRequest) -> Result<DisconnectReply, ApiError> {
        if request.user.is_empty() {
            return Err(ApiError::Invalid("user is required".into()));
        }
        let counted = self.presence.user(&request.user).connections;
        self.bus
            .broadcast(self.bus.subjects().push_disconnect(), &request)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(DisconnectReply {
            connections_closed: counted,
        })
    }

    /// Runs a disconnect broadcast on this node.
    pub fn disconnect_local(&self, request: &DisconnectRequest) -> usize {
        let reason = if request.reason.is_empty() {
            "disconnected"
        } else {
            request.reason.as_str()
        };
        // CR/LF and control characters never reach the close frame.
        let reason: String = reason.chars().filter(|c| !c.is_control()).take(100).collect();
        self.hub.close_user(&request.user, close::DISCONNECTED, &reason)
    }
}

fn constant_time_eq(expected: &Secret, given: &str) -> bool {
    let a = expected.expose().as_bytes();
    let b = given.as_bytes();
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
