//! From the `SB_PUSH` stream to the browsers: routes, frames, the fan-out of a push
//! to this node's connections, and recovery, which replays a subject's missed
//! pushes from the stream (what reaches the node is in [`crate::interest`]).

use std::sync::Arc;

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;
use switchboard_bus::Subjects;

use crate::Error;
use crate::hub::{self, Hub, Outgoing, Source};

/// Where a push goes: the subject it was published on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// `sb.push.user.<id>`
    User(String),
    /// `sb.push.channel.<name>`
    Channel(String),
    /// `sb.push.all`
    All,
}

impl Route {
    /// The subject its pushes are published (and stored) on.
    pub fn subject(&self, subjects: &Subjects) -> String {
        match self {
            Route::User(user) => subjects.push_user(user),
            Route::Channel(channel) => subjects.push_channel(channel),
            Route::All => subjects.push_all(),
        }
    }

    /// The subject `SB_PUSH` re-publishes them on once stored.
    pub fn live_subject(&self, subjects: &Subjects) -> String {
        match self {
            Route::User(user) => subjects.live_push_user(user),
            Route::Channel(channel) => subjects.live_push_channel(channel),
            Route::All => subjects.live_push_all(),
        }
    }

    /// The user whose re-published pushes `subject` (`<prefix>.pushlive.user.<id>`,
    /// as the wildcard subscription to every user's gets them) carries.
    pub fn of_live_user_subject(subject: &str) -> Option<Route> {
        let (_, token) = subject.rsplit_once('.')?;
        switchboard_bus::unescape_token(token).ok().map(Route::User)
    }

    /// The source its pushes are delivered as.
    pub fn source(&self) -> Source {
        match self {
            Route::User(_) => Source::User,
            Route::All => Source::All,
            Route::Channel(name) => Source::Channel(Arc::from(name.as_str())),
        }
    }
}

/// The stream's epoch: its creation time, which changes when the stream is
/// recreated (offsets of the old stream mean nothing in the new one).
pub fn epoch_of(stream: &Stream) -> String {
    format!("{:x}", stream.cached_info().created.unix_timestamp_nanos())
}

/// The WebSocket frame of one push, built once for every connection it goes to.
/// `payload` must be valid JSON (the `Push` as published).
pub fn frame(source: &Source, offset: u64, epoch: &str, payload: &[u8]) -> Option<Bytes> {
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
    Some(text_frame(text.as_bytes()))
}

/// A whole unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server
/// sends it: the same bytes for every connection.
pub fn text_frame(text: &[u8]) -> Bytes {
    const FIN_TEXT: u8 = 0x81;
    let len = text.len();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(FIN_TEXT);
    if len < 126 {
        frame.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        frame.push(126);
        frame.extend_from_slice(&len.to_be_bytes());
    } else {
        frame.push(127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(text);
    Bytes::from(frame)
}

/// The text of a frame made by [`text_frame`].
#[cfg(test)]
pub fn frame_text(frame: &[u8]) -> &str {
    let header = match frame[1] {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    std::str::from_utf8(&frame[header..]).expect("frames are text")
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

/// Sends one push to this node's connections it is for; returns how many.
pub fn deliver(hub: &Hub, route: &Route, item: &Outgoing) -> usize {
    let fanout = match route {
        Route::User(user) => hub.deliver_user(user, item),
        Route::Channel(channel) => hub.deliver_channel(channel, item),
        Route::All => hub.deliver_all(item),
    };
    hub::flush(fanout.to_flush);
    metrics::counter!("ws_push_deliveries_total").increment(fanout.delivered as u64);
    fanout.delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_embed_the_payload_once() {
        let frame = frame(&Source::Channel("news".into()), 7, "e1", br#"{"type":"t","data":[1]}"#).unwrap();
        let value: serde_json::Value = serde_json::from_str(frame_text(&frame)).unwrap();
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
        fn any_payload_is_framed_as_json_or_refused(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(frame) = frame(&Source::User, 1, "e", &payload) {
                prop_assert!(serde_json::from_str::<serde_json::Value>(frame_text(&frame)).is_ok());
            }
        }

        #[test]
        fn text_frames_parse_as_one_whole_frame(
            len in prop_oneof![0usize..130, 65_530usize..65_540, 70_000usize..70_010],
            letter in proptest::char::range('a', '\u{10ffff}'),
        ) {
            let text: String = std::iter::repeat_n(letter, len / letter.len_utf8()).collect();
            let frame = text_frame(text.as_bytes());
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_frame_size(None)
                .max_message_size(None);
            let mut socket = tokio_tungstenite::tungstenite::WebSocket::from_raw_socket(
                std::io::Cursor::new(frame.to_vec()),
                tokio_tungstenite::tungstenite::protocol::Role::Client,
                Some(config),
            );
            let received = socket.read().expect("a valid frame").into_text().expect("a text frame");
            prop_assert_eq!(received.as_str(), text.as_str());
        }
    }
}
