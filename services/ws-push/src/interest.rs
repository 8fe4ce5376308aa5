//! Which pushes this node gets from nats-server: one core NATS subscription per
//! user and channel with a connection here (and one to `all`), on the subjects
//! `SB_PUSH` re-publishes every stored push on (`<prefix>.pushlive.>`).
//!
//! One task takes the messages of every subscription and delivers them to the hub
//! in stream order, as nats-server sent them. Core NATS may drop messages (a slow
//! subscriber, a reconnect); the re-published headers say which push came before
//! on the same subject, so a gap is refilled from the stream before the push after
//! it is delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use async_nats::{HeaderMap, Message};
use futures::stream::{self, BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use switchboard_bus::Bus;
use tokio::sync::{mpsc, watch};
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
    held: tokio::sync::Mutex<HashMap<Route, Held>>,
    /// Numbers subscriptions, so the end of an old one is told from a new one.
    generation: AtomicU64,
    /// New subscriptions, to the delivery task.
    added: mpsc::UnboundedSender<Added>,
    /// Messages the subscriptions got from nats-server.
    received: Arc<AtomicU64>,
}

/// One held route.
#[derive(Debug)]
struct Held {
    /// Connections (or the node itself, for `all`) that need it.
    holders: usize,
    /// Ends the route's subscription (which unsubscribes) when dropped.
    _stop: DropGuard,
}

/// A subscription handed to the delivery task.
struct Added {
    route: Route,
    generation: u64,
    /// The stream position when it became active: pushes after it are this
    /// subscription's to deliver.
    last: u64,
    messages: BoxStream<'static, Item>,
}

/// What the delivery task takes from the subscriptions.
enum Item {
    /// A re-published push.
    Push(Route, Message),
    /// A subscription ended (its route was released).
    End(Route, u64),
}

impl Interest {
    /// Starts the delivery task; holds nothing yet.
    pub fn start(bus: Bus, stream: Stream, hub: Arc<Hub>, epoch: String, shutdown: CancellationToken) -> Self {
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
        let (added, additions) = mpsc::unbounded_channel();
        let received = Arc::new(AtomicU64::new(0));
        let delivery = Delivery {
            bus: bus.clone(),
            stream: stream.clone(),
            hub,
            epoch,
            received: received.clone(),
            last: HashMap::new(),
        };
        tokio::spawn(delivery.run(additions, reconnects, shutdown));
        Self {
            bus,
            stream,
            held: tokio::sync::Mutex::default(),
            generation: AtomicU64::new(0),
            added,
            received,
        }
    }

    /// Messages this node's subscriptions got from nats-server so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The routes held now.
    pub async fn routes(&self) -> Vec<Route> {
        self.held.lock().await.keys().cloned().collect()
    }

    /// Holds `route`: when it returns, nats-server sends this node every push to
    /// it stored from now on (the subscription is active), so a stream position
    /// read afterwards is covered.
    pub async fn hold(&self, route: &Route) -> Result<(), Error> {
        let mut held = self.held.lock().await;
        if let Some(entry) = held.get_mut(route) {
            entry.holders += 1;
            return Ok(());
        }
        let client = self.bus.client();
        let subscriber = client
            .subscribe(route.live_subject(self.bus.subjects()))
            .await
            .map_err(|e| Error::Stream(format!("subscribe: {e}")))?;
        client.flush().await.map_err(|e| Error::Stream(format!("flush: {e}")))?;
        // Everything stored after this was sent to the subscription.
        let (_, last) = delivery::position(&self.stream).await?;
        let stop = CancellationToken::new();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let pushes = route.clone();
        let messages = subscriber
            .take_until(stop.clone().cancelled_owned())
            .map(move |message| Item::Push(pushes.clone(), message))
            .chain(stream::once(std::future::ready(Item::End(route.clone(), generation))))
            .boxed();
        self.added
            .send(Added {
                route: route.clone(),
                generation,
                last,
                messages,
            })
            .map_err(|_| Error::Stream("push delivery stopped".into()))?;
        held.insert(
            route.clone(),
            Held {
                holders: 1,
                _stop: stop.drop_guard(),
            },
        );
        Ok(())
    }

    /// Lets go of `route`; the last holder's release unsubscribes.
    pub async fn release(&self, route: &Route) {
        let mut held = self.held.lock().await;
        if let Some(entry) = held.get_mut(route) {
            entry.holders -= 1;
            if entry.holders == 0 {
                held.remove(route);
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
    /// Per subscribed route: its subscription's generation and the last stream
    /// sequence delivered.
    last: HashMap<Route, (u64, u64)>,
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
        mut additions: mpsc::UnboundedReceiver<Added>,
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
                added = additions.recv() => {
                    let Some(added) = added else {
                        return;
                    };
                    self.last.insert(added.route, (added.generation, added.last));
                    subscriptions.push(added.messages);
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
                        pending.insert(sequence, (route, message));
                    }
                    None => {
                        tracing::debug!(subject = %message.subject, "re-published push without its sequence; dropped")
                    }
                }
            }
            Item::End(route, generation) => {
                if self.last.get(&route).is_some_and(|(current, _)| *current == generation) {
                    self.last.remove(&route);
                }
            }
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
