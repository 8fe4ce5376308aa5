//! ws-push end to end: a real nats-server, the app in-process, real WebSocket clients.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use switchboard_test_support::NatsServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use ws_push::protocol::close;

// ---- connections, auth, close codes ----

#[tokio::test]
async fn token_in_query_or_first_message_connects() {
    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;

    let (_ws, connected) = connect(&app, &token("alice")).await;
    assert_eq!(connected["user"], "alice");
    assert_eq!(connected["admin"], false);
    assert!(connected["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(connected.get("recovered").is_none());

    let mut ws = open(&format!("{}?token={}", app.ws_url(), token("bob"))).await;
    send(&mut ws, json!({"type": "connect"})).await;
    let connected = next_json(&mut ws).await;
    assert_eq!(
        (connected["type"].as_str(), connected["user"].as_str()),
        (Some("connected"), Some("bob"))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn refused_connections_get_their_documented_close_codes() {
    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.ws.connect_timeout = Duration::from_millis(300);
    let app = Running::start(config).await;

    // Nothing sent: no token.
    let mut ws = open(&app.ws_url()).await;
    assert_eq!(close_code(&mut ws).await, Some(close::NO_TOKEN));

    // A connect without a token.
    let mut ws = open(&app.ws_url()).await;
    send(&mut ws, json!({"type": "connect"})).await;
    assert_eq!(close_code(&mut ws).await, Some(close::NO_TOKEN));

    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "mallory", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"other"),
    )
    .unwrap();
    let mut ws = open(&app.ws_url()).await;
    send(&mut ws, json!({"type": "connect", "token": forged})).await;
    assert_eq!(close_code(&mut ws).await, Some(close::BAD_TOKEN));

    // Expired.
    let mut ws = open(&app.ws_url()).await;
    send(
        &mut ws,
        json!({"type": "connect", "token": token_with(json!({"sub": "a", "exp": now() - 10}))}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, Some(close::EXPIRED));

    // Not the protocol.
    let mut ws = open(&app.ws_url()).await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(close::PROTOCOL));
    let (mut ws, _) = connect(&app, &token("alice")).await;
    ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(close::PROTOCOL));
    let (mut ws, _) = connect(&app, &token("alice")).await;
    send(&mut ws, json!({"type": "connect", "token": token("alice")})).await;
    assert_eq!(close_code(&mut ws).await, Some(close::PROTOCOL));

    // Shutdown.
    let (mut ws, _) = connect(&app, &token("alice")).await;
    app.stop.cancel();
    assert_eq!(close_code(&mut ws).await, Some(close::SHUTDOWN));
    app.shutdown().await;
}

#[tokio::test]
async fn frames_over_the_limit_are_refused() {
    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.ws.max_frame_bytes = 1024;
    let app = Running::start(config).await;
    let (mut ws, _) = connect(&app, &token("alice")).await;
    let big = json!({"type": "publish", "topic": "command", "data": "x".repeat(4096)});
    send(&mut ws, big).await;
    assert_eq!(close_code(&mut ws).await, Some(close::TOO_BIG));
    app.shutdown().await;
}

#[tokio::test]
async fn origin_allowlist_and_connection_limits() {
    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.ws.allowed_origins = vec!["https://site.example".into()];
    config.ws.max_connections_per_user = 1;
    config.ws.max_connections_per_ip = 3;
    let app = Running::start(config).await;

    let request = |origin: &str| {
        let mut request = app.ws_url().into_client_request().unwrap();
        request.headers_mut().insert("origin", origin.parse().unwrap());
        request
    };
    let refused = tokio_tungstenite::connect_async(request("https://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let (mut first, _) = tokio_tungstenite::connect_async(request("https://site.example"))
        .await
        .unwrap();
    send(&mut first, json!({"type": "connect", "token": token("alice")})).await;
    assert_eq!(next_json(&mut first).await["type"], "connected");

    // A second tab of the same user is over the per-user limit.
    let (mut second, _) = tokio_tungstenite::connect_async(request("https://site.example"))
        .await
        .unwrap();
    send(&mut second, json!({"type": "connect", "token": token("alice")})).await;
    assert_eq!(close_code(&mut second).await, Some(close::TOO_MANY));

    // Three connections from this IP (the closed one released its slot eventually).
    let (_b, _) = tokio_tungstenite::connect_async(request("https://site.example"))
        .await
        .unwrap();
    let third = eventually("the per-IP limit to refuse a fourth connection", || async {
        let (_c, _) = tokio_tungstenite::connect_async(request("https://site.example"))
            .await
            .ok()?;
        match tokio_tungstenite::connect_async(request("https://site.example")).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Some(response.status().as_u16()),
            _ => None,
        }
    })
    .await;
    assert_eq!(third, 429);
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed() {
    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.ws.ping_interval = Duration::from_millis(200);
    config.ws.pong_timeout = Duration::from_millis(200);
    let app = Running::start(config).await;
    let (mut ws, _) = connect(&app, &token("alice")).await;
    // Not reading means tungstenite sends no pongs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(close_code(&mut ws).await, Some(close::PING_TIMEOUT));
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_memory_stays_bounded() {
    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.ws.max_queued_bytes = 64 * 1024;
    let app = Running::start(config).await;
    let bus = bus(&nats.url()).await;
    let (mut ws, _) = connect(&app, &token("slow")).await;
    // 400 pushes of 32 KiB (12.5 MiB): more than the socket buffers and the queue hold.
    let body = "x".repeat(32 * 1024);
    let subject = bus.subjects().push_user("slow");
    for _ in 0..400 {
        let event = bus
            .event(
                switchboard_bus::event_types::PUSH,
                &json!({"type": "bulk", "data": body}),
            )
            .unwrap();
        bus.publish_async(subject.clone(), &event).await.unwrap();
    }
    push(&bus, subject, "last", json!(null)).await;
    // The server drops the connection: its presence goes away while we are not reading.
    let client = http();
    let presence_url = app.api("/api/v1/presence");
    eventually("the slow consumer to be dropped", || async {
        let reply: serde_json::Value = client
            .post(&presence_url)
            .bearer_auth(API_KEY)
            .json(&json!({"users": ["slow"]}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (reply["users"][0]["online"] != true).then_some(())
    })
    .await;
    // What we read afterwards is short of everything and ends with a close or a reset.
    let mut received = 0;
    let mut code = None;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match message {
            Ok(Message::Text(_)) => received += 1,
            Ok(Message::Close(frame)) => {
                code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(received < 401, "a slow consumer must not get everything ({received})");
    assert!(
        code.is_none() || code == Some(close::SLOW_CONSUMER),
        "close code {code:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn refresh_extends_the_session_and_must_name_the_same_user() {
    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let short = token_with(json!({"sub": "alice", "exp": now() + 2, "channels": ["news"]}));
    let (mut ws, connected) = connect(&app, &short).await;
    assert_eq!(connected["expires"], now() + 2);
    let fresh = token_with(json!({"sub": "alice", "exp": now() + 600, "channels": []}));
    send(&mut ws, json!({"type": "refresh", "id": "r1", "token": fresh})).await;
    let refreshed = next_json(&mut ws).await;
    assert_eq!(
        (refreshed["type"].as_str(), refreshed["id"].as_str()),
        (Some("refreshed"), Some("r1"))
    );
    // Past the first token's expiry the connection still answers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send(&mut ws, json!({"type": "subscribe", "id": "s1", "channel": "news"})).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(
        refused["code"], "forbidden",
        "the new token no longer grants news: {refused}"
    );
    send(&mut ws, json!({"type": "refresh", "token": token("bob")})).await;
    assert_eq!(close_code(&mut ws).await, Some(close::FORBIDDEN));

    // Without a refresh, the token's expiry closes the connection.
    let (mut ws, _) = connect(&app, &token_with(json!({"sub": "carol", "exp": now() + 1}))).await;
    assert_eq!(close_code(&mut ws).await, Some(close::EXPIRED));
    app.shutdown().await;
}

// ---- delivery ----

#[tokio::test]
async fn user_channel_and_all_pushes_arrive_in_order_with_offsets() {
    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let bus = bus(&nats.url()).await;
    let (mut tab1, connected) = connect(&app, &token("alice")).await;
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    let (mut tab2, _) = connect(&app, &token("alice")).await;
    let (mut other, _) = connect(&app, &token("bob")).await;
    send(&mut other, json!({"type": "subscribe", "id": "1", "channel": "room.7"})).await;
    let subscribed = next_json(&mut other).await;
    assert_eq!(
        (subscribed["type"].as_str(), subscribed["id"].as_str()),
        (Some("subscribed"), Some("1"))
    );
    send(&mut other, json!({"type": "subscribe", "id": "2", "channel": "secret"})).await;
    assert_eq!(next_json(&mut other).await["code"], "forbidden");

    let mut offsets = Vec::new();
    for i in 0..50 {
        offsets.push(push(&bus, bus.subjects().push_user("alice"), "n", json!(i)).await);
    }
    let channel_offset = push(&bus, bus.subjects().push_channel("room.7"), "chat", json!("hi")).await;
    let all_offset = push(&bus, bus.subjects().push_all(), "notice", json!({"text": "<b>x</b>"})).await;

    for tab in [&mut tab1, &mut tab2] {
        for (i, offset) in offsets.iter().enumerate() {
            let message = next_json(tab).await;
            assert_eq!(message["type"], "push");
            assert_eq!(message["source"], "user");
            assert_eq!(message["offset"], *offset);
            assert_eq!(message["epoch"], epoch.as_str());
            assert_eq!(message["push"]["type"], "n");
            assert_eq!(message["push"]["data"], i);
        }
        let all = next_json(tab).await;
        assert_eq!(
            (all["source"].as_str(), all["offset"].as_u64()),
            (Some("all"), Some(all_offset))
        );
        assert_eq!(
            all["push"]["data"]["text"], "<b>x</b>",
            "user text is passed as data, never rendered"
        );
    }
    let chat = next_json(&mut other).await;
    assert_eq!(
        (chat["source"].as_str(), chat["offset"].as_u64()),
        (Some("channel:room.7"), Some(channel_offset))
    );
    assert_eq!(next_json(&mut other).await["source"], "all");

    // Unsubscribed: the next channel push does not arrive, the next user push does.
    send(&mut other, json!({"type": "unsubscribe", "channel": "room.7"})).await;
    assert_eq!(next_json(&mut other).await["type"], "unsubscribed");
    push(&bus, bus.subjects().push_channel("room.7"), "chat", json!("gone")).await;
    push(&bus, bus.subjects().push_user("bob"), "direct", json!(1)).await;
    assert_eq!(next_json(&mut other).await["push"]["type"], "direct");
    app.shutdown().await;
}
