//! The ws-push client protocol: any bytes in a text frame parse to a
//! `ClientMessage` or are refused, never panic; the names a message carries go
//! through the checks the connection makes; an error echoing the client's request
//! id serialises to JSON that carries that id back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_push::pattern;
use ws_push::protocol::{ClientMessage, ServerMessage};

fuzz_target!(|input: &[u8]| {
    // A WebSocket text frame is UTF-8 (tungstenite refuses anything else).
    let Ok(text) = std::str::from_utf8(input) else { return };
    let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
        return;
    };
    let (id, names): (Option<String>, Vec<&str>) = match &message {
        ClientMessage::Connect { .. } => (None, Vec::new()),
        ClientMessage::Subscribe { id, channel, .. } | ClientMessage::Unsubscribe { id, channel } => {
            (id.clone(), vec![channel.as_str()])
        }
        ClientMessage::Publish { id, topic, .. } => (id.clone(), vec![topic.as_str()]),
        ClientMessage::Presence { id, channel, users } => (
            id.clone(),
            channel
                .iter()
                .map(String::as_str)
                .chain(users.iter().map(String::as_str))
                .collect(),
        ),
        ClientMessage::Refresh { id, .. } => (id.clone(), Vec::new()),
    };
    for name in names {
        if pattern::valid_name(name) {
            assert!(pattern::matches("*", name));
            assert!(pattern::matches(name, name));
        }
    }
    let reply = ServerMessage::Error {
        id: id.clone(),
        code: "invalid",
        message: "refused".to_owned(),
    }
    .to_text();
    let echoed: serde_json::Value = serde_json::from_str(&reply).expect("our replies are JSON");
    assert_eq!(echoed.get("id").and_then(|v| v.as_str()), id.as_deref());
});
