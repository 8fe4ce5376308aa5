//! From the `SB_PUSH` stream to the browsers: one ordered consumer per node fans
//! every push out to this node's connections, and recovery replays a subject's
//! missed pushes from the stream.

use std::sync::Arc;

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use switchboard_bus::{Bus, unescape_token};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::hub::{Hub, Outgoing, Source};

/// Where a push goes, parsed from its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `sb.push.user.<id>`
    User(String),
    /// `sb.push.channel.<name>`
    Channel(String),
    /// `sb.push.all`
    All,
}

/// Parses `<prefix>.push.user.<id>`, `<prefix>.push.channel.<name>`, `<prefix>.push.all`.
pub fn route(prefix: &str, subject: &str) -> Option<Route> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".push.")?;
    if rest == "all" {
        return Some(Route::All);
    }
    let (kind, token) = rest.split_once('.')?;
    if token.contains('.') {
        return None;
    }
    let id = unescape_token(token).ok()?;
    match kind {
        "user" => Some(Route::User(id)),
        "channel" => Some(Route::Channel(id)),
        _ => None,
    }
}

/// The stream's epoch: its creation time, which changes when the stream is
/// recreated (offsets of the old stream mean nothing in the new one).
pub fn epoch_of(stream: &Stream) -> String {
    format!("{:x}", stream.cached_info().created.unix_timestamp_nanos())
}

/// The JSON frame of one push, built once for every connection it goes to.
/// `payload` must be valid JSON (the `Push` as published).
pub fn frame(source: &Source, offset: u64, epoch: &str, payload: &[u8]) -> Option<Utf8Bytes> {
    let payload = std::str::from_utf8(payload).ok()?;
    serde_json::from_str::<serde::de::IgnoredAny>(payload).ok()?;
    let source = serde_json::to_string(&source.label()).ok()?;
    let epoch = serde_json::to_string(epoch).ok()?;
    let mut text = String::with_capacity(payload.len() + source.len() + epoch.len() + 64);
    text.push_str(r#"{"type":"push","source":"#);
    text.push_str(&source);
    text.push_str(r#","offset":"#);
    text.push_str(&offset.to_string());
    text.push_str(r#","epoch":"#);
    text.push_str(&epoch);
    text.push_str(r#","push":"#);
    text.push_str(payload);
    text.push('}');
    Some(Utf8Bytes::from(text))
}

/// The first and last sequence of the stream now.
pub async fn position(stream: &Stream) -> Result<(u64, u64), Error> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| Error::Stream(format!("stream info: {e}")))?;
    Ok((info.state.first_sequence, info.state.last_sequence))
}

/// What a recovery found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Whether everything after the client's offset is here.
    pub recovered: bool,
    /// The missed pushes, in order.
    pub items: Vec<Outgoing>,
}

/// Replays `subject`'s pushes after `after` up to `upto` (the position read when the
/// subscription was registered), if the client's `epoch` is current, nothing it
/// missed has expired, and there are at most `max` of them.
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    stream: &Stream,
    subject: &str,
    source: &Source,
    epoch: &str,
    client_epoch: &str,
    after: u64,
    (first, upto): (u64, u64),
    max: usize,
) -> Replay {
    if client_epoch != epoch || after > upto {
        return Replay::default();
    }
    if after >= upto {
        return Replay {
            recovered: true,
            items: Vec::new(),
        };
    }
    if after + 1 < first {
        return Replay::default();
    }
    let mut items = Vec::new();
    let mut next = after + 1;
    while next <= upto {
        match stream.direct_get_next_for_subject(subject, Some(next)).await {
            Ok(message) => {
                if message.sequence > upto {
                    break;
                }
                if items.len() >= max {
                    return Replay::default();
                }
                if let Some(frame) = frame(source, message.sequence, epoch, &message.payload) {
                    items.push(Outgoing {
                        source: source.clone(),
                        offset: message.sequence,
                        frame,
                    });
                }
                next = message.sequence + 1;
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
            Err(e) => {
                tracing::warn!(subject, error = %e, "recovery read failed");
                return Replay::default();
            }
        }
    }
    Replay { recovered: true, items }
}

/// Runs the node's ordered consumer from `start` (a stream sequence) until shutdown.
pub async fn consume(
    bus: Bus,
    stream: Stream,
    hub: Arc<Hub>,
    epoch: String,
    start: u64,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let prefix = bus.subjects().prefix().to_owned();
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: bus.client().new_inbox(),
            filter_subject: bus.subjects().all_pushes(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Stream(format!("push consumer: {e}")))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::Stream(format!("push consumer: {e}")))?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "push consumer error; it resumes by itself");
                continue;
            }
            None => return Err(Error::Stream("push consumer ended".into())),
        };
        let Ok(info) = message.info() else {
            continue;
        };
        let offset = info.stream_sequence;
        let Some(route) = route(&prefix, message.subject.as_str()) else {
            continue;
        };
        let source = match &route {
            Route::User(_) => Source::User,
            Route::All => Source::All,
            Route::Channel(name) => Source::Channel(Arc::from(name.as_str())),
        };
        let Some(frame) = frame(&source, offset, &epoch, &message.payload) else {
            tracing::debug!(subject = %message.subject, "push payload is not JSON; dropped");
            continue;
        };
        let item = Outgoing { source, offset, frame };
        // A push that carries a trace context (its producer exports traces) gets a
        // span in that trace; the others cost nothing more.
        let span = match message.headers.as_ref() {
            Some(headers) if headers.get("traceparent").is_some() => {
                let span = tracing::info_span!("ws_push.deliver", subject = %message.subject, offset, delivered = tracing::field::Empty);
                switchboard_bus::trace::set_parent_from(&span, Some(headers));
                span
            }
            _ => tracing::Span::none(),
        };
        let delivered = span.in_scope(|| match &route {
            Route::User(user) => hub.deliver_user(user, &item),
            Route::Channel(channel) => hub.deliver_channel(channel, &item),
            Route::All => hub.deliver_all(&item),
        });
        span.record("delivered", delivered);
        metrics::counter!("ws_push_deliveries_total").increment(delivered as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes_subjects() {
        assert_eq!(route("sb", "sb.push.all"), Some(Route::All));
        assert_eq!(route("sb", "sb.push.user.42"), Some(Route::User("42".into())));
        assert_eq!(
            route("sb", "sb.push.channel.room_2E1"),
            Some(Route::Channel("room.1".into()))
        );
        assert_eq!(route("sb", "sb.push.user.a.b"), None);
        assert_eq!(route("sb", "sb.push.other.a"), None);
        assert_eq!(route("sb", "xx.push.all"), None);
        assert_eq!(route("a.b", "a.b.push.all"), Some(Route::All));
    }

    #[test]
    fn frames_embed_the_payload_once() {
        let frame = frame(&Source::Channel("news".into()), 7, "e1", br#"{"type":"t","data":[1]}"#).unwrap();
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value["type"], "push");
        assert_eq!(value["source"], "channel:news");
        assert_eq!(value["offset"], 7);
        assert_eq!(value["epoch"], "e1");
        assert_eq!(value["push"]["data"][0], 1);
        assert!(super::frame(&Source::All, 1, "e", b"{not json").is_none());
        assert!(super::frame(&Source::All, 1, "e", b"{} {}").is_none());
    }

    proptest! {
        #[test]
        fn any_subject_routes_or_not_without_panic(subject in "[a-z._>*0-9A-F]{0,40}") {
            let _ = route("sb", &subject);
        }

        #[test]
        fn any_payload_is_framed_as_json_or_refused(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(frame) = frame(&Source::User, 1, "e", &payload) {
                prop_assert!(serde_json::from_str::<serde_json::Value>(frame.as_str()).is_ok());
            }
        }
    }
}
