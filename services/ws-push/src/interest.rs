//! Which pushes this node gets from nats-server: one core NATS subscription per
//! channel with a subscriber here and one to `all`, and one per user with a
//! connection here up to `[interest] user_subscriptions`; past that, the users it
//! takes on come through one wildcard subscription to every user's pushes, of which
//! the node keeps those of the users it holds. All on the subjects `SB_PUSH`
//! re-publishes every stored push on (`<prefix>.pushlive.>`).
//!
//! Why the limit: every async-nats subscription owns a message queue that allocates
//! 32 message slots when it is made (5.5 KiB, measured with heaptrack at 5,000
//! connected users), more than the rest of an idle connection.
//!
//! One task takes the messages of every subscription and delivers them to the hub
//! in stream order, as nats-server sent them. Core NATS may drop messages (a slow
//! subscriber, a reconnect); the re-published headers say which push came before
//! on the same subject, so a gap is refilled from the stream before the push after
//! it is delivered. A push that comes both through a user's own subscription and the
//! wildcard is delivered once (pushes are kept by their stream sequence).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use async_nats::{HeaderMap, Message};
use futures::stream::{self, BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use switchboard_bus::Bus;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Error;
use crate::delivery::{self, Route};
use crate::hub::{Hub, Outgoing};

/// How often the connection to NATS is checked for a reconnect (after which what
/// was published while it was down is read from the stream).
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// The node's subscriptions to re-published pushes, counted by holder.
#[derive(Debug)]
pub struct Interest {
    bus: Bus,
    /// `SB_PUSH`, whose position a new subscription starts after.
    stream: Stream,
    /// Held routes; the lock is held across subscribing, so a second holder of a
    /// route returns only once the first one's subscription is active.
    routes: tokio::sync::Mutex<Routes>,
    /// How many users get a subscription of their own before the wildcard serves.
    user_subscriptions: usize,
    /// Numbers holds, so the end of an old one is told from a new one.
    generation: AtomicU64,
    /// New subscriptions and wildcard users, to the delivery task.
    commands: mpsc::UnboundedSender<Command>,
    /// Messages the subscriptions got from nats-server.
    received: Arc<AtomicU64>,
}

/// What the node holds, under one lock.
#[derive(Debug, Default)]
struct Routes {
    held: HashMap<Route, Held>,
    /// Held users, and how many of them have a subscription of their own.
    users: usize,
    own_user_subscriptions: usize,
    /// Ends the wildcard subscription to every user's pushes when dropped; there
    /// while some user is delivered through it.
    users_wildcard: Option<DropGuard>,
}

/// One held route.
#[derive(Debug)]
struct Held {
    /// Connections (or the node itself, for `all`) that need it.
    holders: usize,
    /// This hold's number.
    generation: u64,
    /// Ends the route's own subscription (which unsubscribes) when dropped; none
    /// for a user delivered through the wildcard.
    own: Option<DropGuard>,
}

/// What the delivery task is told.
enum Command {
    /// A new subscription's messages; for a route's own, the route, registered as
    /// delivered up to the stream position when the subscription became active.
    Subscribed {
        messages: BoxStream<'static, Item>,
        registration: Option<(Route, u64, u64)>,
    },
    /// A user delivered through the wildcard from now on, registered as delivered up
    /// to the highest sequence taken so far (answered once done): a connection reads
    /// the stream position it starts after later than that, so nothing it needs is
    /// skipped.
    Register {
        route: Route,
        generation: u64,
        done: oneshot::Sender<()>,
    },
    /// A user delivered through the wildcard was released.
    End(Route, u64),
}

/// What the delivery task takes from the subscriptions.
enum Item {
    /// A re-published push.
    Push(Route, Message),
    /// A route's own subscription ended (the route was released).
    End(Route, u64),
}

fn delivery_stopped() -> Error {
    Error::Stream("push delivery stopped".into())
}

impl Interest {
    /// Starts the delivery task; holds nothing yet. Up to `user_subscriptions` users
    /// get a subscription of their own.
    pub fn start(
        bus: Bus,
        stream: Stream,
        hub: Arc<Hub>,
        epoch: String,
        user_subscriptions: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let statistics = bus.client().statistics();
        let (connected, reconnects) = watch::channel(statistics.connects.load(Ordering::Relaxed));
        let watcher_stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECONNECT_CHECK);
            loop {
                tokio::select! {
                    _ = watcher_stop.cancelled() => return,
                    _ = tick.tick() => {
                        let connects = statistics.connects.load(Ordering::Relaxed);
                        connected.send_if_modified(|seen| std::mem::replace(seen, connects) != connects);
                    }
                }
            }
        });
        let (commands, received_commands) = mpsc::unbounded_channel();
        let received = Arc::new(AtomicU64::new(0));
        let delivery = Delivery {
            bus: bus.clone(),
            stream: stream.clone(),
            hub,
            epoch,
            received: received.clone(),
            last: HashMap::new(),
            taken: 0,
        };
        tokio::spawn(delivery.run(received_commands, reconnects, shutdown));
        Self {
            bus,
            stream,
            routes: tokio::sync::Mutex::default(),
            user_subscriptions,
            generation: AtomicU64::new(0),
            commands,
            received,
        }
    }

    /// Messages this node's subscriptions got from nats-server so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The routes held now.
    pub async fn routes(&self) -> Vec<Route> {
        self.routes.lock().await.held.keys().cloned().collect()
    }

    /// Whether users are delivered through the wildcard subscription now.
    pub async fn users_wildcard(&self) -> bool {
        self.routes.lock().await.users_wildcard.is_some()
    }

    /// Holds `route`: when it returns, nats-server sends this node every push to
    /// it stored from now on (the subscription is active), so a stream position
    /// read afterwards is covered.
    pub async fn hold(&self, route: &Route) -> Result<(), Error> {
        let mut routes = self.routes.lock().await;
        if let Some(entry) = routes.held.get_mut(route) {
            entry.holders += 1;
            return Ok(());
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let is_user = matches!(route, Route::User(_));
        let own = if is_user && routes.own_user_subscriptions >= self.user_subscriptions {
            if routes.users_wildcard.is_none() {
                routes.users_wildcard = Some(self.subscribe(None).await?);
                tracing::info!(
                    limit = self.user_subscriptions,
                    "users past the limit now come through one wildcard subscription"
                );
            }
            let (done, registered) = oneshot::channel();
            self.commands
                .send(Command::Register {
                    route: route.clone(),
                    generation,
                    done,
                })
                .map_err(|_| delivery_stopped())?;
            registered.await.map_err(|_| delivery_stopped())?;
            None
        } else {
            Some(self.subscribe(Some((route, generation))).await?)
        };
        if is_user {
            routes.users += 1;
            if own.is_some() {
                routes.own_user_subscriptions += 1;
            }
        }
        routes.held.insert(
            route.clone(),
            Held {
                holders: 1,
                generation,
                own,
            },
        );
        Ok(())
    }

    /// Subscribes to `route`'s re-published pushes (registered with its hold's
    /// generation), or with none to every user's, and hands the subscription to the
    /// delivery task once it is active; dropping the guard unsubscribes.
    async fn subscribe(&self, route: Option<(&Route, u64)>) -> Result<DropGuard, Error> {
        let subjects = self.bus.subjects();
        let subject = route.map_or_else(|| subjects.live_push_users(), |(route, _)| route.live_subject(subjects));
        let client = self.bus.client();
        let subscriber = client
            .subscribe(subject)
            .await
            .map_err(|e| Error::Stream(format!("subscribe: {e}")))?;
        client.flush().await.map_err(|e| Error::Stream(format!("flush: {e}")))?;
        let stop = CancellationToken::new();
        let until_stopped = subscriber.take_until(stop.clone().cancelled_owned());
        let (messages, registration) = match route {
            Some((route, generation)) => {
                // Everything stored after this was sent to the subscription.
                let (_, last) = delivery::position(&self.stream).await?;
                let pushes = route.clone();
                let messages = until_stopped
                    .map(move |message| Item::Push(pushes.clone(), message))
                    .chain(stream::once(std::future::ready(Item::End(route.clone(), generation))))
                    .boxed();
                (messages, Some((route.clone(), generation, last)))
            }
            None => {
                let messages = until_stopped
                    .filter_map(|message| {
                        std::future::ready(
                            Route::of_live_user_subject(&message.subject).map(|route| Item::Push(route, message)),
                        )
                    })
                    .boxed();
                (messages, None)
            }
        };
        self.commands
            .send(Command::Subscribed { messages, registration })
            .map_err(|_| delivery_stopped())?;
        Ok(stop.drop_guard())
    }

    /// Lets go of `route`; the last holder's release unsubscribes (for a user
    /// delivered through the wildcard: stops its delivery, and with the last such
    /// user the wildcard goes too).
    pub async fn release(&self, route: &Route) {
        let mut routes = self.routes.lock().await;
        let Some(entry) = routes.held.get_mut(route) else {
            return;
        };
        entry.holders -= 1;
        if entry.holders > 0 {
            return;
        }
        let Some(released) = routes.held.remove(route) else {
            return;
        };
        if matches!(route, Route::User(_)) {
            routes.users -= 1;
            if released.own.is_some() {
                routes.own_user_subscriptions -= 1;
            } else {
                let _ = self.commands.send(Command::End(route.clone(), released.generation));
            }
            if routes.users == 0 {
                routes.users_wildcard = None;
            }
        }
    }
}

/// A stream sequence from the re-publish headers: `Nats-Sequence` (the push's) or
/// `Nats-Last-Sequence` (the one before it on the same subject; 0 when none is left).
fn sequence(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get_last(name)?.as_str().parse().ok()
}

/// The delivery task's state.
struct Delivery {
    bus: Bus,
    /// `SB_PUSH`, read from to refill gaps.
    stream: Stream,
    hub: Arc<Hub>,
    /// `SB_PUSH`'s epoch, in every frame.
    epoch: String,
    /// Messages the subscriptions got from nats-server.
    received: Arc<AtomicU64>,
    /// Per held route: its hold's generation and the last stream sequence delivered.
    last: HashMap<Route, (u64, u64)>,
    /// The highest stream sequence taken from any subscription.
    taken: u64,
}

impl Delivery {
    /// Takes the subscriptions' messages until shutdown.
    ///
    /// nats-server re-publishes in stream order and the client hands each message
    /// to its subscription's queue in the order it read them, so every message
    /// sent before one already taken is in some queue by then. Each round takes
    /// what is ready and delivers, in sequence order, only up to the highest
    /// sequence taken before it: whatever preceded those is in `pending` by then.
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut reconnects: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let mut subscriptions: SelectAll<BoxStream<'static, Item>> = SelectAll::new();
        let mut pending: BTreeMap<u64, (Route, Message)> = BTreeMap::new();
        loop {
            // Yields now and then under a steady flow, where every branch is ready.
            tokio::task::consume_budget().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = commands.recv() => {
                    let Some(command) = command else {
                        return;
                    };
                    match command {
                        Command::Subscribed { messages, registration } => {
                            if let Some((route, generation, last)) = registration {
                                self.last.insert(route, (generation, last));
                            }
                            subscriptions.push(messages);
                        }
                        Command::Register { route, generation, done } => {
                            self.last.insert(route, (generation, self.taken));
                            let _ = done.send(());
                        }
                        Command::End(route, generation) => self.end(&route, generation),
                    }
                }
                changed = reconnects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.catch_up().await;
                }
                Some(item) = subscriptions.next(), if !subscriptions.is_empty() => self.take(item, &mut pending),
                () = std::future::ready(()), if !pending.is_empty() => {}
            }
            if pending.is_empty() {
                continue;
            }
            let bound = pending.last_key_value().map_or(0, |(sequence, _)| *sequence);
            while let Some(Some(item)) = subscriptions.next().now_or_never() {
                self.take(item, &mut pending);
            }
            while let Some(entry) = pending.first_entry() {
                if *entry.key() > bound {
                    break;
                }
                let (sequence, (route, message)) = entry.remove_entry();
                self.deliver(route, sequence, message).await;
            }
        }
    }

    /// Puts a push in `pending` by its sequence, or forgets an ended subscription.
    fn take(&mut self, item: Item, pending: &mut BTreeMap<u64, (Route, Message)>) {
        match item {
            Item::Push(route, message) => {
                self.received.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ws_push_nats_messages_total").increment(1);
                match sequence(message.headers.as_ref(), "Nats-Sequence") {
                    Some(sequence) => {
                        self.taken = self.taken.max(sequence);
                        pending.insert(sequence, (route, message));
                    }
                    None => {
                        tracing::debug!(subject = %message.subject, "re-published push without its sequence; dropped")
                    }
                }
            }
            Item::End(route, generation) => self.end(&route, generation),
        }
    }

    /// Forgets a released route, unless it was held again since.
    fn end(&mut self, route: &Route, generation: u64) {
        if self.last.get(route).is_some_and(|(current, _)| *current == generation) {
            self.last.remove(route);
        }
    }

    /// Delivers one re-published push, after refilling what its subject lost
    /// before it.
    async fn deliver(&mut self, route: Route, offset: u64, message: Message) {
        let Some(&(generation, last)) = self.last.get(&route) else {
            // Its route was released meanwhile.
            return;
        };
        if offset <= last {
            // Delivered already, by a refill.
            return;
        }
        let headers = message.headers.as_ref();
        let previous = sequence(headers, "Nats-Last-Sequence").unwrap_or(0);
        if previous > last {
            self.refill(&route, last, previous).await;
        }
        self.last.insert(route.clone(), (generation, offset));
        let source = route.source();
        let Some(frame) = delivery::frame(&source, offset, &self.epoch, &message.payload) else {
            tracing::debug!(subject = %message.subject, "push payload is not JSON; dropped");
            return;
        };
        let item = Outgoing { source, offset, frame };
        // A push that carries a trace context (its producer exports traces) gets a
        // span in that trace; the others cost nothing more.
        let span = match headers {
            Some(headers) if headers.get("traceparent").is_some() => {
                let span = tracing::info_span!("ws_push.deliver", subject = %message.subject, offset, delivered = tracing::field::Empty);
                switchboard_bus::trace::set_parent_from(&span, Some(headers));
                span
            }
            _ => tracing::Span::none(),
        };
        let delivered = span.in_scope(|| delivery::deliver(&self.hub, &route, &item));
        span.record("delivered", delivered);
    }

    /// Delivers `route`'s stored pushes after its last delivered one up to `upto`
    /// from the stream.
    async fn refill(&mut self, route: &Route, after: u64, upto: u64) {
        if upto <= after {
            return;
        }
        let source = route.source();
        let subject = route.subject(self.bus.subjects());
        // First sequence 0: a push that expired meanwhile is skipped, not a failure.
        let replay = delivery::replay(
            &self.stream,
            &subject,
            &source,
            &self.epoch,
            &self.epoch,
            after,
            (0, upto),
            usize::MAX,
        )
        .await;
        if !replay.recovered {
            tracing::warn!(subject, after, upto, "a gap could not be read from the stream");
        }
        metrics::counter!("ws_push_refilled_total").increment(replay.items.len() as u64);
        for item in &replay.items {
            delivery::deliver(&self.hub, route, item);
            if let Some((_, last)) = self.last.get_mut(route) {
                *last = item.offset;
            }
        }
    }

    /// After a reconnect: what every route missed while the connection was down,
    /// read from the stream once the re-subscriptions are active.
    async fn catch_up(&mut self) {
        if let Err(e) = self.bus.client().flush().await {
            tracing::warn!(error = %e, "no catch-up after a reconnect");
            return;
        }
        let upto = match delivery::position(&self.stream).await {
            Ok((_, upto)) => upto,
            Err(e) => {
                tracing::warn!(error = %e, "no catch-up after a reconnect");
                return;
            }
        };
        let routes: Vec<(Route, u64)> = self
            .last
            .iter()
            .map(|(route, (_, last))| (route.clone(), *last))
            .collect();
        for (route, last) in routes {
            self.refill(&route, last, upto).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_come_from_the_republish_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(sequence(None, "Nats-Sequence"), None);
        assert_eq!(sequence(Some(&headers), "Nats-Sequence"), None);
        headers.insert("Nats-Sequence", "12");
        headers.insert("Nats-Last-Sequence", "x");
        assert_eq!(sequence(Some(&headers), "Nats-Sequence"), Some(12));
        assert_eq!(sequence(Some(&headers), "Nats-Last-Sequence"), None);
    }
}
