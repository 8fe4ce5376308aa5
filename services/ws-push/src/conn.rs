//! `GET /ws`: one task per browser connection that authenticates it, registers it,
//! recovers what it missed, writes its queued pushes and answers its requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use switchboard_bus::event_types;
use switchboard_proto::push::v1::Inbound;
use switchboard_runtime::{Peer, Socket};

use crate::auth::{AuthError, Claims, now_seconds};
use crate::delivery::{self, Replay, Route};
use crate::hub::{ConnEntry, IpSlot, LimitError, Outgoing, Source};
use crate::node::Node;
use crate::pattern;
use crate::protocol::{ClientMessage, PresenceItem, Recover, ServerMessage, close};

/// `?token=` on `/ws`.
#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    /// The JWT, for clients that cannot send it in the first message.
    #[serde(default)]
    pub token: Option<String>,
}

/// Upgrades `/ws` after the origin and per-IP checks.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let ws_config = &node.config.ws;
    if !ws_config.allowed_origins.is_empty() {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or("");
        if !ws_config.allowed_origins.iter().any(|allowed| allowed == origin) {
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    let slot = match node.hub.reserve_ip(peer.addr.ip(), ws_config.max_connections_per_ip) {
        Ok(slot) => slot,
        Err(e) => return (StatusCode::TOO_MANY_REQUESTS, e.to_string()).into_response(),
    };
    let frame = ws_config.max_frame_bytes;
    let burst = f64::from(node.config.inbound.burst.max(1));
    ws.read_buffer_size(ws_config.read_buffer_bytes)
        .write_buffer_size(ws_config.write_buffer_bytes)
        .max_frame_size(frame)
        .max_message_size(frame)
        .on_upgrade(move |socket| {
            Connection {
                node,
                socket,
                _slot: slot,
                tokens: burst,
                refilled: Instant::now(),
            }
            .run(query.token, peer.socket)
        })
}

struct Connection {
    node: Arc<Node>,
    socket: WebSocket,
    _slot: IpSlot,
    /// Inbound rate limiter (token bucket).
    tokens: f64,
    refilled: Instant,
}

/// How a connection ends.
struct Closing(u16, String);

impl Closing {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        // A close reason is at most 123 bytes; ours are short, but cut safely anyway.
        let mut reason: String = reason.into();
        while reason.len() > 120 {
            reason.pop();
        }
        Self(code, reason)
    }
}

fn auth_closing(error: &AuthError) -> Closing {
    match error {
        AuthError::Expired => Closing::new(close::EXPIRED, "token expired"),
        AuthError::Invalid(_) => Closing::new(close::BAD_TOKEN, "invalid token"),
        AuthError::Unavailable(_) => Closing::new(close::AUTH_UNAVAILABLE, "auth unavailable"),
    }
}

// Every connection's future lives as long as the connection, and a future is as big as
// the biggest state it may await in. So the awaits that happen once (signing in,
// leaving, the close frame) or rarely (a request, a write) are boxed: their state is on
// the heap only while they run, and an idle connection keeps just its session loop.
// `run` and `session` return async blocks rather than being async fns: an async fn
// keeps each argument it moves into a local twice (the argument and the local).
impl Connection {
    #[expect(clippy::manual_async_fn, reason = "an async fn would store `self` twice")]
    fn run(mut self, query_token: Option<String>, raw: Socket) -> impl Future<Output = ()> + Send {
        async move {
            let outcome = self.serve(query_token, raw).await;
            if let Err(Closing(code, reason)) = outcome {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                };
                let close = self.socket.send(Message::Close(Some(frame)));
                let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), close)).await;
            }
        }
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), Closing> {
        self.socket
            .send(Message::Text(Utf8Bytes::from(message.to_text())))
            .await
            .map_err(|_| Closing::new(close::SHUTDOWN, "write failed"))
    }

    async fn first_message(&mut self) -> Result<ClientMessage, Closing> {
        let timeout = self.node.config.ws.connect_timeout;
        let read = async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return serde_json::from_str::<ClientMessage>(text.as_str())
                            .map_err(|e| Closing::new(close::PROTOCOL, format!("bad message: {e}")));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        return Err(Closing::new(close::PROTOCOL, "binary frames are not used"));
                    }
                    Some(Ok(Message::Close(_))) | None => return Err(Closing::new(close::NO_TOKEN, "closed")),
                    Some(Err(e)) => return Err(read_error(&e)),
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| Closing::new(close::NO_TOKEN, "no connect message"))?
    }

    async fn serve(&mut self, query_token: Option<String>, raw: Socket) -> Result<(), Closing> {
        let (entry, claims) = Box::pin(self.sign_in(query_token, raw)).await?;
        let result = self.session(&entry, claims).await;
        Box::pin(self.leave(&entry)).await;
        result
    }

    /// Reads `connect`, verifies the token, registers the connection (pushes go
    /// straight to `raw`, its socket), subscribes to its user's pushes, and sends
    /// `connected` with what the client asks to recover.
    async fn sign_in(&mut self, query_token: Option<String>, raw: Socket) -> Result<(Arc<ConnEntry>, Claims), Closing> {
        let (token, recover) = match self.first_message().await? {
            ClientMessage::Connect { token, recover } => (token, recover),
            _ => return Err(Closing::new(close::PROTOCOL, "the first message must be connect")),
        };
        let Some(token) = token.or(query_token).filter(|t| !t.is_empty()) else {
            return Err(Closing::new(close::NO_TOKEN, "no token"));
        };
        let claims = self.node.verifier.verify(&token).await.map_err(|e| {
            tracing::debug!(error = %e, "connection refused");
            auth_closing(&e)
        })?;
        let id = self.node.next_connection_id();
        let entry = Arc::new(ConnEntry::new(
            id,
            &claims.sub,
            claims.admin,
            raw,
            self.node.config.ws.max_queued_bytes,
        ));
        match self
            .node
            .hub
            .register(entry.clone(), self.node.config.ws.max_connections_per_user)
        {
            Ok(_) => {}
            Err(LimitError::PerUser | LimitError::PerIp) => {
                return Err(Closing::new(close::TOO_MANY, "too many connections"));
            }
        }
        // The node closes every registered outbox when it shuts down; one registered
        // after that must see the shutdown here.
        if self.node.shutdown.is_cancelled() {
            self.node.hub.unregister(id);
            return Err(Closing::new(close::SHUTDOWN, "server shutdown"));
        }
        // Before the session reads the stream position its recovery goes up to.
        let user = Route::User(claims.sub.clone());
        if let Err(e) = self.node.interest.hold(&user).await {
            tracing::warn!(error = %e, "no subscription for a connection");
            self.node.hub.unregister(id);
            return Err(Closing::new(close::SHUTDOWN, "stream unavailable"));
        }
        metrics::gauge!("ws_push_connections").increment(1.0);
        self.node.presence.update(&claims.sub).await;
        if let Err(closing) = self.catch_up(&entry, &claims, recover).await {
            self.leave(&entry).await;
            return Err(closing);
        }
        Ok((entry, claims))
    }

    /// Unregisters a signed-in connection, leaves its user's and channels' routes and
    /// updates the user's presence.
    async fn leave(&mut self, entry: &ConnEntry) {
        self.node.hub.unregister(entry.id);
        self.node.interest.release(&Route::User(entry.user.to_string())).await;
        for name in entry.outbox.unsubscribe_all() {
            self.node.interest.release(&Route::Channel(name.to_string())).await;
        }
        metrics::gauge!("ws_push_connections").decrement(1.0);
        // At shutdown the node removes all its presence at once (`Presence::leave`).
        if !self.node.shutdown.is_cancelled() {
            self.node.presence.update(&entry.user).await;
        }
    }

    /// Delivers pushes, answers requests and pings until the connection ends.
    #[expect(clippy::manual_async_fn, reason = "an async fn would store `claims` twice")]
    fn session<'a>(
        &'a mut self,
        entry: &'a ConnEntry,
        mut claims: Claims,
    ) -> impl Future<Output = Result<(), Closing>> + Send + 'a {
        async move {
            let node = self.node.clone();
            let ws = &node.config.ws;
            let mut last_seen = Instant::now();
            let mut next_ping = tokio::time::Instant::now() + ws.ping_interval;
            let mut expires_at = deadline(claims.exp);
            // One timer for both the next ping and the token's expiry.
            let timer = tokio::time::sleep_until(next_ping.min(expires_at.unwrap_or(next_ping)));
            tokio::pin!(timer);
            loop {
                tokio::select! {
                    () = entry.outbox.ready() => {
                        if let Some((code, reason)) = entry.outbox.close_request() {
                            return Err(Closing::new(code, reason));
                        }
                        Box::pin(drain(entry, ws.ping_interval + ws.pong_timeout)).await?;
                    }
                    message = self.socket.next() => {
                        last_seen = Instant::now();
                        match message {
                            Some(Ok(Message::Text(text))) => {
                                let message = serde_json::from_str::<ClientMessage>(text.as_str())
                                    .map_err(|e| Closing::new(close::PROTOCOL, format!("bad message: {e}")))?;
                                Box::pin(self.handle(entry, &mut claims, message)).await?;
                                expires_at = deadline(claims.exp);
                                timer.as_mut().reset(next_ping.min(expires_at.unwrap_or(next_ping)));
                            }
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            Some(Ok(Message::Binary(_))) => return Err(Closing::new(close::PROTOCOL, "binary frames are not used")),
                            Some(Ok(Message::Close(_))) | None => return Ok(()),
                            Some(Err(e)) => return Err(read_error(&e)),
                        }
                    }
                    () = &mut timer => {
                        let now = tokio::time::Instant::now();
                        if expires_at.is_some_and(|at| now >= at) {
                            return Err(Closing::new(close::EXPIRED, "token expired"));
                        }
                        if now >= next_ping {
                            if last_seen.elapsed() > ws.ping_interval + ws.pong_timeout {
                                return Err(Closing::new(close::PING_TIMEOUT, "ping timeout"));
                            }
                            self.socket
                                .send(Message::Ping(bytes::Bytes::new()))
                                .await
                                .map_err(|_| Closing::new(close::SHUTDOWN, "write failed"))?;
                            next_ping = now + ws.ping_interval;
                        }
                        timer.as_mut().reset(next_ping.min(expires_at.unwrap_or(next_ping)));
                    }
                }
            }
        }
    }

    /// Reads the stream position, replays what the client asks to recover, and sends
    /// `connected` followed by the replay.
    async fn catch_up(&mut self, entry: &ConnEntry, claims: &Claims, recover: Option<Recover>) -> Result<(), Closing> {
        let node = self.node.clone();
        let position = delivery::position(&node.stream)
            .await
            .map_err(|_| Closing::new(close::SHUTDOWN, "stream unavailable"))?;
        let mut replayed: Vec<Outgoing> = Vec::new();
        let mut recovered = recover.as_ref().map(|_| true);
        for (source, subject) in [
            (Source::User, node.bus.subjects().push_user(&claims.sub)),
            (Source::All, node.bus.subjects().push_all()),
        ] {
            if let Some(recover) = &recover {
                match recover.offsets.get(&source.label()) {
                    Some(&after) => {
                        let replay = replay(&node, &subject, &source, &recover.epoch, after, position).await;
                        recovered = recovered.map(|r| r && replay.recovered);
                        replayed.extend(replay.items);
                    }
                    None => recovered = Some(false),
                }
            }
            entry.outbox.subscribe(source, position.1);
        }
        replayed.sort_by_key(|item| item.offset);
        self.send(&ServerMessage::Connected {
            client: format!("{}-{}", node.node, entry.id),
            node: node.node.clone(),
            user: claims.sub.clone(),
            admin: claims.admin,
            epoch: node.epoch.clone(),
            offset: position.1,
            expires: claims.exp,
            recovered,
        })
        .await?;
        if entry.outbox.replay(replayed) | entry.outbox.release() {
            entry.outbox.flush();
        }
        Ok(())
    }
}

/// The answer to a request that failed.
fn refusal(id: &Option<String>, code: &'static str, message: &str) -> ServerMessage {
    ServerMessage::Error {
        id: id.clone(),
        code,
        message: message.to_owned(),
    }
}

/// Waits for a full socket to take what is queued on it. A socket that stalls is
/// abandoned when its queue overflows (or the API disconnects it or the node shuts
/// down), or after `stall` (a ping period plus the pong timeout).
async fn drain(entry: &ConnEntry, stall: Duration) -> Result<(), Closing> {
    // Biased: a socket that takes everything at once never polls the timer or
    // registers for the close notification.
    tokio::select! {
        biased;
        written = tokio::time::timeout(stall, entry.outbox.socket().flush_queued()) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Closing::new(close::SHUTDOWN, "write failed")),
            Err(_) => Err(Closing::new(close::PING_TIMEOUT, "write stalled")),
        },
        (code, reason) = entry.outbox.closed() => Err(Closing::new(code, reason)),
    }
}

/// Replays a source's missed pushes (a free function: a `&Connection` held across
/// an await would need the socket to be `Sync`).
async fn replay(
    node: &Node,
    subject: &str,
    source: &Source,
    client_epoch: &str,
    after: u64,
    position: (u64, u64),
) -> Replay {
    {
        delivery::replay(
            &node.stream,
            subject,
            source,
            &node.epoch,
            client_epoch,
            after,
            position,
            node.config.ws.max_recover,
        )
        .await
    }
}

impl Connection {
    async fn handle(&mut self, entry: &ConnEntry, claims: &mut Claims, message: ClientMessage) -> Result<(), Closing> {
        match message {
            ClientMessage::Connect { .. } => Err(Closing::new(close::PROTOCOL, "already connected")),
            ClientMessage::Subscribe {
                id,
                channel,
                offset,
                epoch,
            } => self.subscribe(entry, claims, id, channel, offset, epoch).await,
            ClientMessage::Unsubscribe { id, channel } => {
                let source = Source::Channel(Arc::from(channel.as_str()));
                if entry.outbox.unsubscribe(&source) {
                    self.node.hub.unsubscribe(entry.id, &channel);
                    self.node.interest.release(&Route::Channel(channel.clone())).await;
                    self.node.presence.update(&claims.sub).await;
                }
                self.send(&ServerMessage::Unsubscribed { id, channel }).await
            }
            ClientMessage::Publish { id, topic, data } => {
                let reply = match self.publish(entry, claims, &topic, data).await {
                    Ok(()) => ServerMessage::Published { id },
                    Err((code, message)) => ServerMessage::Error { id, code, message },
                };
                self.send(&reply).await
            }
            ClientMessage::Presence { id, channel, users } => {
                let reply = self.presence(claims, id, channel, users);
                self.send(&reply).await
            }
            ClientMessage::Refresh { id, token } => {
                let fresh = match self.node.verifier.verify(&token).await {
                    Ok(fresh) => fresh,
                    Err(AuthError::Unavailable(e)) => {
                        return self
                            .send(&ServerMessage::Error {
                                id,
                                code: "unavailable",
                                message: e,
                            })
                            .await;
                    }
                    Err(e) => return Err(auth_closing(&e)),
                };
                if fresh.sub != claims.sub {
                    return Err(Closing::new(
                        close::FORBIDDEN,
                        "a refreshed token must name the same user",
                    ));
                }
                *claims = fresh;
                // Channels the new token no longer grants are left.
                let revoked: Vec<Arc<str>> = entry
                    .outbox
                    .channels()
                    .into_iter()
                    .filter(|name| !claims.may_subscribe(name))
                    .collect();
                for name in &revoked {
                    entry.outbox.unsubscribe(&Source::Channel(name.clone()));
                    self.node.hub.unsubscribe(entry.id, name);
                    self.node.interest.release(&Route::Channel(name.to_string())).await;
                }
                if !revoked.is_empty() {
                    self.node.presence.update(&claims.sub).await;
                }
                self.send(&ServerMessage::Refreshed {
                    id,
                    expires: claims.exp,
                })
                .await
            }
        }
    }

    async fn subscribe(
        &mut self,
        entry: &ConnEntry,
        claims: &Claims,
        id: Option<String>,
        channel: String,
        offset: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Closing> {
        if !pattern::valid_name(&channel) {
            return self
                .send(&refusal(&id, "invalid", "channel names are 1-128 of [A-Za-z0-9._:@-]"))
                .await;
        }
        if !claims.may_subscribe(&channel) {
            return self
                .send(&refusal(&id, "forbidden", "the token does not grant this channel"))
                .await;
        }
        let source = Source::Channel(Arc::from(channel.as_str()));
        let known = entry.outbox.subscribes(&source);
        let channels = entry.outbox.channels().len();
        if !known && channels >= self.node.config.ws.max_subscriptions {
            return self.send(&refusal(&id, "too_many", "too many subscriptions")).await;
        }
        // Pushes wait while this runs, so the replay comes before them.
        entry.outbox.hold();
        let subscribed = self
            .subscribe_held(entry, claims, id, channel, source, known, offset, epoch)
            .await;
        if entry.outbox.release() {
            entry.outbox.flush();
        }
        subscribed
    }

    /// Subscribes, replays what the client asks to recover and answers.
    #[expect(clippy::too_many_arguments, reason = "the parts of one request")]
    async fn subscribe_held(
        &mut self,
        entry: &ConnEntry,
        claims: &Claims,
        id: Option<String>,
        channel: String,
        mut source: Source,
        known: bool,
        offset: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Closing> {
        // Subscribe and register first, then read the position: a push after the
        // position is either held or in the replay, and offsets drop the overlap.
        let route = Route::Channel(channel.clone());
        if !known {
            if let Err(e) = self.node.interest.hold(&route).await {
                return self.send(&refusal(&id, "unavailable", &e.to_string())).await;
            }
            let interned = self.node.hub.subscribe(entry.id, &channel);
            source = interned.map_or(source, Source::Channel);
        }
        let position = match delivery::position(&self.node.stream).await {
            Ok(position) => position,
            Err(e) => {
                if !known {
                    self.node.hub.unsubscribe(entry.id, &channel);
                    self.node.interest.release(&route).await;
                }
                return self.send(&refusal(&id, "unavailable", &e.to_string())).await;
            }
        };
        let (recovered, items) = match (offset, epoch) {
            (Some(after), Some(epoch)) => {
                let subject = self.node.bus.subjects().push_channel(&channel);
                let node = self.node.clone();
                let replay = replay(&node, &subject, &source, &epoch, after, position).await;
                (Some(replay.recovered), replay.items)
            }
            _ => (None, Vec::new()),
        };
        entry.outbox.subscribe(source, position.1);
        if !known {
            self.node.presence.update(&claims.sub).await;
        }
        self.send(&ServerMessage::Subscribed {
            id,
            channel,
            epoch: self.node.epoch.clone(),
            offset: position.1,
            recovered,
        })
        .await?;
        if entry.outbox.replay(items) {
            entry.outbox.flush();
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        entry: &ConnEntry,
        claims: &Claims,
        topic: &str,
        data: serde_json::Value,
    ) -> Result<(), (&'static str, String)> {
        let inbound = &self.node.config.inbound;
        if !pattern::valid_name(topic) {
            return Err(("invalid", "topic names are 1-128 of [A-Za-z0-9._:@-]".into()));
        }
        if !claims.may_publish(topic) {
            return Err(("forbidden", "the token does not grant this topic".into()));
        }
        let size = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > inbound.max_bytes {
            return Err(("too_large", format!("data is over {} bytes", inbound.max_bytes)));
        }
        let now = Instant::now();
        let burst = f64::from(inbound.burst.max(1));
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * inbound.rate_per_second).min(burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Err(("rate_limited", "too many messages; slow down".into()));
        }
        self.tokens -= 1.0;
        let payload = Inbound {
            user: claims.sub.clone(),
            topic: topic.to_owned(),
            data: Some(json_to_value(data)),
            admin: claims.admin,
            connection_id: format!("{}-{}", self.node.node, entry.id),
            node: self.node.node.clone(),
        };
        let subject = self.node.bus.subjects().push_inbound(&claims.sub, topic);
        let event = self
            .node
            .bus
            .event(event_types::PUSH_INBOUND, &payload)
            .map_err(|e| ("invalid", e.to_string()))?;
        self.node
            .bus
            .publish(subject, &event)
            .await
            .map(|_| ())
            .map_err(|e| ("unavailable", e.to_string()))
    }

    fn presence(
        &self,
        claims: &Claims,
        id: Option<String>,
        channel: Option<String>,
        users: Vec<String>,
    ) -> ServerMessage {
        let item = |p: switchboard_proto::push::v1::UserPresence| PresenceItem {
            user: p.user,
            connections: p.connections,
            admin: p.admin,
        };
        if let Some(channel) = channel {
            if !claims.may_subscribe(&channel) {
                return ServerMessage::Error {
                    id,
                    code: "forbidden",
                    message: "the token does not grant this channel".into(),
                };
            }
            let users = self.node.presence.channel(&channel).into_iter().map(item).collect();
            return ServerMessage::Presence {
                id,
                channel: Some(channel),
                users,
            };
        }
        if !claims.admin {
            return ServerMessage::Error {
                id,
                code: "forbidden",
                message: "only admins may ask about users".into(),
            };
        }
        let users = users
            .iter()
            .take(1000)
            .map(|u| self.node.presence.user(u))
            .filter(|p| p.online)
            .map(item)
            .collect();
        ServerMessage::Presence {
            id,
            channel: None,
            users,
        }
    }
}

/// When a token with this `exp` expires, as a timer deadline (None: too far to matter).
fn deadline(exp: u64) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(Duration::from_secs(exp.saturating_sub(now_seconds())))
}

fn read_error(error: &axum::Error) -> Closing {
    let text = error.to_string();
    if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
        Closing::new(close::TOO_BIG, "message too big")
    } else {
        Closing::new(close::PROTOCOL, "protocol error")
    }
}

/// serde_json to the protobuf `Value` the bus payloads carry (its serde impl is
/// plain JSON, so the conversion is lossless).
pub fn json_to_value(json: serde_json::Value) -> switchboard_proto::wkt::Value {
    serde_json::from_value(json).unwrap_or_default()
}
