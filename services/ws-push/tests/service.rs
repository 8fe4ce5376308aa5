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

#[tokio::test]
async fn unsigned_alg_none_tokens_are_refused() {
    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let claims = json!({"sub": "mallory", "exp": now() + 600, "channels": ["*"], "topics": ["*"], "admin": true});
    let unsigned = switchboard_test_support::unsigned_jwt(&claims.to_string());
    // The same claims with an HS256 signature, relabelled `alg: none`.
    let signed = token_with(claims);
    let relabelled = format!(
        "{}.{}",
        unsigned.trim_end_matches('.'),
        signed.rsplit('.').next().unwrap()
    );
    for token in [unsigned.clone(), relabelled] {
        let mut ws = open(&app.ws_url()).await;
        send(&mut ws, json!({"type": "connect", "token": token})).await;
        assert_eq!(close_code(&mut ws).await, Some(close::BAD_TOKEN));
    }
    // In the query string too.
    let mut ws = open(&format!("{}?token={unsigned}", app.ws_url())).await;
    send(&mut ws, json!({"type": "connect"})).await;
    assert_eq!(close_code(&mut ws).await, Some(close::BAD_TOKEN));
    // And on a live session's refresh: the session ends, as for any bad token.
    let (mut ws, _) = connect(&app, &token("mallory")).await;
    send(&mut ws, json!({"type": "refresh", "id": "1", "token": unsigned})).await;
    assert_eq!(close_code(&mut ws).await, Some(close::BAD_TOKEN));
    app.shutdown().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_checked_against_the_jwks_file() {
    let nats = NatsServer::start().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut config = config(&nats.url());
    config.auth.jwks_file = Some(fixtures.join("jwks.json"));
    let app = Running::start(config).await;
    let sign = |algorithm, kid: &str, pem: &str, user: &str| {
        let pem = std::fs::read(fixtures.join(pem)).unwrap();
        let key = match algorithm {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut header = jsonwebtoken::Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &json!({"sub": user, "exp": now() + 60}), &key).unwrap()
    };
    let (_ws, connected) = connect(
        &app,
        &sign(jsonwebtoken::Algorithm::ES256, "ec-1", "es256.pem", "ec-user"),
    )
    .await;
    assert_eq!(connected["user"], "ec-user");
    let (_ws, connected) = connect(
        &app,
        &sign(jsonwebtoken::Algorithm::RS256, "rsa-1", "rs256.pem", "rsa-user"),
    )
    .await;
    assert_eq!(connected["user"], "rsa-user");
    // A key id the JWKS does not have, and an RSA key under the EC key's id.
    for token in [
        sign(jsonwebtoken::Algorithm::ES256, "unknown", "es256.pem", "x"),
        sign(jsonwebtoken::Algorithm::RS256, "ec-1", "rs256.pem", "x"),
    ] {
        let mut ws = open(&app.ws_url()).await;
        send(&mut ws, json!({"type": "connect", "token": token})).await;
        assert_eq!(close_code(&mut ws).await, Some(close::BAD_TOKEN));
    }
    app.shutdown().await;
}

// ---- presence and the site APIs ----

async fn api_post(app: &Running, path: &str, body: serde_json::Value) -> serde_json::Value {
    let response = http()
        .post(app.api(path))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

async fn api_get(app: &Running, path: &str) -> serde_json::Value {
    let response = http()
        .get(app.api(path))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

async fn presence_event(sub: &mut async_nats::Subscriber) -> switchboard_proto::push::v1::PresenceEvent {
    let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a presence event")
        .expect("subscription open");
    serde_json::from_slice(&message.payload).expect("PresenceEvent JSON")
}

#[tokio::test]
async fn presence_events_and_queries_over_http_grpc_nats_and_the_socket() {
    use switchboard_proto::push::v1::push_service_client::PushServiceClient;
    use switchboard_proto::push::v1::{ChannelPresenceRequest, ListOnlineRequest, PresenceReply, PresenceRequest};

    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let bus = bus(&nats.url()).await;
    let mut events = bus.client().subscribe("sb.evt.push.presence.>").await.unwrap();
    bus.client().flush().await.unwrap();

    let (mut tab1, _) = connect(&app, &token("alice")).await;
    let online = presence_event(&mut events).await;
    assert_eq!(
        (online.user.as_str(), online.online, online.connections),
        ("alice", true, 1)
    );
    let (tab2, _) = connect(&app, &token("alice")).await;
    let (mut admin, _) = connect(&app, &admin_token("root")).await;
    let root_online = presence_event(&mut events).await;
    assert_eq!(
        (root_online.user.as_str(), root_online.admin),
        ("root", true),
        "no event for alice's second tab"
    );
    send(&mut tab1, json!({"type": "subscribe", "channel": "news"})).await;
    assert_eq!(next_json(&mut tab1).await["type"], "subscribed");

    // HTTP: the seed's is_connected / connection count / has_connected_admin.
    let reply = api_post(&app, "/api/v1/presence", json!({"users": ["alice", "nobody"]})).await;
    assert_eq!(reply["users"][0]["online"], true);
    assert_eq!(reply["users"][0]["connections"], 2);
    assert_eq!(reply["users"][1]["user"], "nobody");
    assert!(reply["users"][1].get("online").is_none_or(|o| o == false));
    let page = api_get(&app, "/api/v1/online?page_size=1").await;
    assert_eq!(page["users"][0]["user"], "alice");
    assert_eq!(page["page"]["hasMore"], true);
    let cursor = page["page"]["nextCursor"].as_str().unwrap().to_owned();
    let page = api_get(&app, &format!("/api/v1/online?page_size=1&cursor={cursor}")).await;
    assert_eq!(page["users"][0]["user"], "root");
    assert!(page["page"].get("hasMore").is_none_or(|m| m == false));
    let admins = api_get(&app, "/api/v1/online?admins_only=true").await;
    assert_eq!(admins["users"].as_array().unwrap().len(), 1);
    assert_eq!(admins["users"][0]["user"], "root");
    let channel = api_get(&app, "/api/v1/channels/news/presence").await;
    assert_eq!(channel["users"][0]["user"], "alice");
    assert_eq!(channel["users"].as_array().unwrap().len(), 1);

    // gRPC, with and without the key.
    let channel_grpc = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PushServiceClient::new(channel_grpc);
    let mut request = tonic::Request::new(PresenceRequest {
        users: vec!["alice".into()],
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {API_KEY}").parse().unwrap());
    let reply = client.presence(request).await.unwrap().into_inner();
    assert_eq!((reply.users[0].online, reply.users[0].connections), (true, 2));
    let denied = client.list_online(ListOnlineRequest::default()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(ChannelPresenceRequest { channel: "news".into() });
    request.metadata_mut().insert("x-api-key", API_KEY.parse().unwrap());
    assert_eq!(
        client.channel_presence(request).await.unwrap().into_inner().users[0].user,
        "alice"
    );

    // NATS command.
    let reply: PresenceReply = bus
        .request(
            &bus.subjects().push_presence_query(),
            &PresenceRequest {
                users: vec!["root".into()],
            },
            None,
        )
        .await
        .unwrap();
    assert!(reply.users[0].online && reply.users[0].admin);

    // The socket: channel presence for a granted channel, users for admins only.
    send(&mut tab1, json!({"type": "presence", "id": "p", "channel": "news"})).await;
    let answer = next_json(&mut tab1).await;
    assert_eq!(
        (answer["id"].as_str(), answer["users"][0]["user"].as_str()),
        (Some("p"), Some("alice"))
    );
    send(&mut tab1, json!({"type": "presence", "users": ["root"]})).await;
    assert_eq!(next_json(&mut tab1).await["code"], "forbidden");
    send(&mut admin, json!({"type": "presence", "users": ["alice", "ghost"]})).await;
    let answer = next_json(&mut admin).await;
    assert_eq!(answer["users"].as_array().unwrap().len(), 1);
    assert_eq!(answer["users"][0]["connections"], 2);

    // Last tab closes: offline.
    drop(tab1);
    drop(tab2);
    let offline = presence_event(&mut events).await;
    assert_eq!(
        (offline.user.as_str(), offline.online, offline.connections),
        ("alice", false, 0)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn publish_and_disconnect_through_the_http_api() {
    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let (mut alice, connected) = connect(&app, &token("alice")).await;

    let reply = api_post(
        &app,
        "/api/v1/publish",
        json!({"target": {"user": "alice"}, "push": {"type": "screen_pop", "data": {"caller": "+48 600"}}}),
    )
    .await;
    assert_eq!(reply["online"], true);
    assert_eq!(reply["connections"], 1);
    assert_eq!(reply["epoch"], connected["epoch"]);
    let offset: u64 = reply["offset"].as_str().unwrap().parse().unwrap();
    let push = next_json(&mut alice).await;
    assert_eq!(push["offset"], offset);
    assert_eq!(push["push"]["type"], "screen_pop");
    assert_eq!(push["push"]["data"]["caller"], "+48 600");

    let batch = api_post(
        &app,
        "/api/v1/publish/batch",
        json!({"items": [
            {"target": {"user": "alice"}, "push": {"type": "a"}},
            {"target": {"all": true}, "push": {"type": "b"}},
            {"target": {"user": "offline-user"}, "push": {"type": "c"}},
        ]}),
    )
    .await;
    let items = batch["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items[2].get("online").is_none_or(|o| o == false));
    assert_eq!(next_json(&mut alice).await["push"]["type"], "a");
    assert_eq!(next_json(&mut alice).await["push"]["type"], "b");

    // Refusals: no key, bad bodies.
    let client = http();
    let no_key = client
        .post(app.api("/api/v1/publish"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let wrong_key = client
        .get(app.api("/api/v1/online"))
        .bearer_auth("site-key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
    for body in [
        json!({"push": {"type": "x"}}),
        json!({"target": {"channel": "bad channel"}, "push": {}}),
        json!({"target": {"all": false}, "push": {}}),
        json!({"target": {"user": "a"}}),
        json!("not an object"),
    ] {
        let response = client
            .post(app.api("/api/v1/publish"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }

    let reply = api_post(
        &app,
        "/api/v1/disconnect",
        json!({"user": "alice", "reason": "bye\r\nX-Injected: 1"}),
    )
    .await;
    assert_eq!(reply["connectionsClosed"], 1);
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(10), alice.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(frame.code), close::DISCONNECTED);
    assert!(!frame.reason.as_str().contains('\n') && !frame.reason.as_str().contains('\r'));
    app.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let document: serde_json::Value = http()
        .get(app.api("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (method, path) in ws_push::api::ROUTES {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not in openapi.json"
        );
        // Every route is really served (not 404/405).
        let url = app.api(&path.replace("{channel}", "news"));
        let response = match *method {
            "get" => http().get(&url).send().await.unwrap(),
            _ => http().post(&url).json(&json!({})).send().await.unwrap(),
        };
        assert!(
            ![404, 405].contains(&response.status().as_u16()),
            "{method} {path}: {}",
            response.status()
        );
    }
    let listed: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        listed,
        ws_push::api::ROUTES.len(),
        "openapi.json lists routes the server does not serve"
    );
    // The static files.
    let js = http().get(app.api("/client.js")).send().await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.text().await.unwrap().contains("SwitchboardPush"));
    let module = http()
        .get(app.api("/client.mjs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(module.contains("export default SwitchboardPush"));
    app.shutdown().await;
}

// ---- inbound ----

#[tokio::test]
async fn browsers_publish_on_granted_topics_within_size_and_rate() {
    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.inbound.burst = 3;
    config.inbound.rate_per_second = 0.5;
    config.inbound.max_bytes = 256;
    let app = Running::start(config).await;
    let bus = bus(&nats.url()).await;
    let mut inbound = bus.client().subscribe("sb.evt.push.inbound.>").await.unwrap();
    bus.client().flush().await.unwrap();
    let (mut ws, connected) = connect(&app, &admin_token("admin.1")).await;

    send(
        &mut ws,
        json!({"type": "publish", "id": "c1", "topic": "command", "data": {"run": "uptime"}}),
    )
    .await;
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("published"), Some("c1"))
    );
    let message = tokio::time::timeout(Duration::from_secs(10), inbound.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        message.subject.as_str(),
        bus.subjects().push_inbound("admin.1", "command")
    );
    let event: switchboard_proto::push::v1::Inbound = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(
        (event.user.as_str(), event.topic.as_str(), event.admin),
        ("admin.1", "command", true)
    );
    assert_eq!(event.connection_id, connected["client"].as_str().unwrap());
    let data = serde_json::to_value(event.data.unwrap()).unwrap();
    assert_eq!(data["run"], "uptime");

    send(
        &mut ws,
        json!({"type": "publish", "id": "big", "topic": "command", "data": "x".repeat(300)}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["code"], "too_large");
    send(&mut ws, json!({"type": "publish", "topic": "bad topic"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "invalid");
    let mut codes = Vec::new();
    for _ in 0..4 {
        send(&mut ws, json!({"type": "publish", "topic": "command", "data": 1})).await;
        codes.push(next_json(&mut ws).await["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        codes,
        ["published", "published", "error", "error"],
        "burst 3, one already used"
    );

    let (mut user, _) = connect(&app, &token("u1")).await;
    send(&mut user, json!({"type": "publish", "topic": "admin.only"})).await;
    assert_eq!(next_json(&mut user).await["code"], "forbidden");
    app.shutdown().await;
}

// ---- recovery ----

/// Reads pushes until `want` user pushes and `want` channel pushes arrived or the
/// socket ends; records (source, data) and the last offsets.
/// Reads pushes into `seen` until it holds `stop_after`, or the socket ends: then
/// the close code (`None` for a connection cut without a close frame).
async fn read_pushes(
    ws: &mut Ws,
    seen: &mut Vec<(String, u64)>,
    offsets: &mut std::collections::HashMap<String, u64>,
    stop_after: usize,
) -> Option<u16> {
    while seen.len() < stop_after {
        let message = match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<serde_json::Value>(text.as_str()).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Err(_))) | Ok(None) => return None,
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Err(_) => panic!("no push within 20 s after {} ({offsets:?})", seen.len()),
        };
        if message["type"] != "push" {
            continue;
        }
        let source = message["source"].as_str().unwrap().to_owned();
        offsets.insert(source.clone(), message["offset"].as_u64().unwrap());
        seen.push((source, message["push"]["data"].as_u64().unwrap()));
    }
    None
}

/// Publishes `u-<i>` to alice and `c-<i>` to channel news for i in 0..total, with
/// fixed message ids (a retried publish is stored once), retrying through outages.
fn publish_user_and_channel(bus: switchboard_bus::Bus, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..total {
            for (kind, subject) in [
                ("u", bus.subjects().push_user("alice")),
                ("c", bus.subjects().push_channel("news")),
            ] {
                let event = bus
                    .event(switchboard_bus::event_types::PUSH, &json!({"type": kind, "data": i}))
                    .unwrap()
                    .with_id(format!("{kind}-{i}"));
                while bus.publish(subject.clone(), &event).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// Every push of `user` and `channel:news` exactly once, in order.
fn assert_exactly_once_in_order(seen: &[(String, u64)], total: u64) {
    for source in ["user", "channel:news"] {
        let got: Vec<u64> = seen.iter().filter(|(s, _)| s == source).map(|(_, d)| *d).collect();
        let want: Vec<u64> = (0..total).collect();
        assert_eq!(got, want, "{source}: every push exactly once, in order");
    }
}

/// Connects to `url` as alice recovering `offsets` of `epoch`, subscribes to news
/// from its offset, and checks the recovery was granted.
async fn reconnect_recovering(url: &str, epoch: &str, offsets: &std::collections::HashMap<String, u64>) -> Ws {
    let mut ws = open(url).await;
    send(
        &mut ws,
        json!({"type": "connect", "token": token("alice"), "recover": {"epoch": epoch, "offsets": {"user": offsets["user"], "all": offsets["all"]}}}),
    )
    .await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["epoch"], epoch, "{connected}");
    assert_eq!(connected["recovered"], true, "{connected}");
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": "news", "offset": offsets["channel:news"], "epoch": epoch}),
    )
    .await;
    ws
}

/// Connects as alice and subscribes to news: the socket, the epoch, the offsets.
async fn connect_alice(url: &str) -> (Ws, String, std::collections::HashMap<String, u64>) {
    let mut ws = open(url).await;
    send(&mut ws, json!({"type": "connect", "token": token("alice")})).await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    let mut offsets = std::collections::HashMap::new();
    offsets.insert("user".to_owned(), connected["offset"].as_u64().unwrap());
    offsets.insert("all".to_owned(), connected["offset"].as_u64().unwrap());
    send(&mut ws, json!({"type": "subscribe", "channel": "news"})).await;
    let subscribed = next_json(&mut ws).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    offsets.insert("channel:news".to_owned(), subscribed["offset"].as_u64().unwrap());
    (ws, epoch, offsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_node_recovers_every_push_exactly_once_on_another_node() {
    const TOTAL: u64 = 300;
    let nats = NatsServer::start().unwrap();
    // Node A is the real binary, so it can die the hard way (SIGKILL); node B runs
    // in-process on the same NATS.
    let port = switchboard_test_support::free_port();
    let mut a = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_ws-push"))
            .env("SB_NATS__URL", nats.url())
            .env("SB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("SB_GRPC__LISTEN", "127.0.0.1:0")
            .env("SB_AUTH__JWT_SECRET", SECRET)
            // The presence settings of `config()`: every node must agree on them.
            .env("SB_PRESENCE__TTL", "3s")
            .env("SB_PRESENCE__HEARTBEAT", "1s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let b = Running::start(config(&nats.url())).await;
    let url_a = format!("ws://127.0.0.1:{port}/ws");
    eventually("node A to accept connections", || async {
        tokio_tungstenite::connect_async(url_a.as_str()).await.ok().map(|_| ())
    })
    .await;
    let (mut ws, epoch, mut offsets) = connect_alice(&url_a).await;
    let publisher = publish_user_and_channel(bus(&nats.url()).await, TOTAL);

    let mut seen = Vec::new();
    read_pushes(&mut ws, &mut seen, &mut offsets, 100).await;
    a.0.kill().unwrap();
    let _ = a.0.wait();
    // The socket is cut without a close frame; whatever was already on the wire is
    // read first.
    assert_eq!(read_pushes(&mut ws, &mut seen, &mut offsets, usize::MAX).await, None);
    let at_kill = seen.len();

    let mut ws = reconnect_recovering(&b.ws_url(), &epoch, &offsets).await;
    read_pushes(&mut ws, &mut seen, &mut offsets, (2 * TOTAL) as usize).await;
    publisher.await.unwrap();
    assert!(
        (100..(2 * TOTAL) as usize).contains(&at_kill),
        "the kill was mid-stream ({at_kill})"
    );
    assert_exactly_once_in_order(&seen, TOTAL);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_closes_with_1001_and_clients_recover_on_another_node() {
    const TOTAL: u64 = 200;
    const CLIENTS: usize = 20;
    let nats = NatsServer::start().unwrap();
    let a = Running::start(config(&nats.url())).await;
    let b = Running::start(config(&nats.url())).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connect_alice(&a.ws_url()).await);
    }
    let publisher = publish_user_and_channel(bus(&nats.url()).await, TOTAL);
    // Every client reads until it has 50 pushes; then node A shuts down while the
    // publisher goes on, and each reads what is left until its close frame.
    let mut readers = Vec::new();
    let (half_tx, half_rx) = tokio::sync::mpsc::channel::<()>(CLIENTS);
    for (mut ws, epoch, mut offsets) in clients {
        let half_tx = half_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            read_pushes(&mut ws, &mut seen, &mut offsets, 50).await;
            half_tx.send(()).await.unwrap();
            let code = read_pushes(&mut ws, &mut seen, &mut offsets, usize::MAX).await;
            (ws, epoch, offsets, seen, code)
        }));
    }
    drop(half_tx);
    let mut half_rx = half_rx;
    for _ in 0..CLIENTS {
        half_rx.recv().await.expect("every client read 50 pushes");
    }
    a.shutdown().await;

    let b_url = b.ws_url();
    let mut recovering = Vec::new();
    for reader in readers {
        let (_, epoch, mut offsets, mut seen, code) = reader.await.unwrap();
        assert_eq!(code, Some(close::SHUTDOWN), "closed with 1001 (reconnect and recover)");
        let b_url = b_url.clone();
        recovering.push(tokio::spawn(async move {
            let mut ws = reconnect_recovering(&b_url, &epoch, &offsets).await;
            read_pushes(&mut ws, &mut seen, &mut offsets, (2 * TOTAL) as usize).await;
            seen
        }));
    }
    for client in recovering {
        assert_exactly_once_in_order(&client.await.unwrap(), TOTAL);
    }
    publisher.await.unwrap();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_every_push_exactly_once_after_nats_and_the_server_restart() {
    const TOTAL: u64 = 300;
    let mut nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let (mut ws, connected) = connect(&app, &token("alice")).await;
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    let mut offsets = std::collections::HashMap::new();
    offsets.insert("user".to_owned(), connected["offset"].as_u64().unwrap());
    offsets.insert("all".to_owned(), connected["offset"].as_u64().unwrap());
    send(&mut ws, json!({"type": "subscribe", "channel": "news"})).await;
    let subscribed = next_json(&mut ws).await;
    offsets.insert("channel:news".to_owned(), subscribed["offset"].as_u64().unwrap());

    // A publisher that keeps going through the outage; fixed message ids make its
    // retries exactly-once in the stream (JetStream de-duplication).
    let publisher_bus = bus(&nats.url()).await;
    let publisher = tokio::spawn(async move {
        for i in 0..TOTAL {
            for (kind, subject) in [
                ("u", publisher_bus.subjects().push_user("alice")),
                ("c", publisher_bus.subjects().push_channel("news")),
            ] {
                let event = publisher_bus
                    .event(switchboard_bus::event_types::PUSH, &json!({"type": kind, "data": i}))
                    .unwrap()
                    .with_id(format!("{kind}-{i}"));
                while publisher_bus.publish(subject.clone(), &event).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let mut seen = Vec::new();
    read_pushes(&mut ws, &mut seen, &mut offsets, 100).await;
    // Mid-stream: the server goes away and NATS crashes and comes back.
    app.shutdown().await;
    tokio::task::block_in_place(|| nats.restart().unwrap());
    read_pushes(&mut ws, &mut seen, &mut offsets, usize::MAX).await;
    let before_restart = seen.len();

    let app = Running::start(config(&nats.url())).await;
    let mut ws = open(&app.ws_url()).await;
    send(
        &mut ws,
        json!({"type": "connect", "token": token("alice"), "recover": {"epoch": epoch, "offsets": {"user": offsets["user"], "all": offsets["all"]}}}),
    )
    .await;
    let connected = next_json(&mut ws).await;
    assert_eq!(
        connected["epoch"],
        epoch.as_str(),
        "the stream survived the NATS restart"
    );
    assert_eq!(connected["recovered"], true, "{connected}");
    send(
        &mut ws,
        json!({"type": "subscribe", "channel": "news", "offset": offsets["channel:news"], "epoch": epoch}),
    )
    .await;
    // Pushes of `user` may arrive before the `subscribed` reply: read_pushes skips it.
    read_pushes(&mut ws, &mut seen, &mut offsets, (2 * TOTAL) as usize).await;
    publisher.await.unwrap();
    assert!(
        before_restart >= 100 && before_restart < (2 * TOTAL) as usize,
        "the outage was mid-stream ({before_restart})"
    );

    for (kind, source) in [("u", "user"), ("c", "channel:news")] {
        let got: Vec<u64> = seen.iter().filter(|(s, _)| s == source).map(|(_, d)| *d).collect();
        let want: Vec<u64> = (0..TOTAL).collect();
        assert_eq!(got, want, "{kind}: every push exactly once, in order");
    }
    app.shutdown().await;
}

// ---- several nodes ----

#[tokio::test]
async fn two_nodes_share_delivery_and_presence() {
    let nats = NatsServer::start().unwrap();
    let a = Running::start(config(&nats.url())).await;
    let b = Running::start(config(&nats.url())).await;
    assert_ne!(a.node, b.node);
    let (mut on_a, _) = connect(&a, &token("alice")).await;
    let (mut also_on_b, _) = connect(&b, &token("alice")).await;
    send(&mut also_on_b, json!({"type": "subscribe", "channel": "news"})).await;
    assert_eq!(next_json(&mut also_on_b).await["type"], "subscribed");

    // A push sent through B's API reaches alice's tab on A (and on B).
    let reply = api_post(
        &b,
        "/api/v1/publish",
        json!({"target": {"user": "alice"}, "push": {"type": "hello"}}),
    )
    .await;
    assert_eq!(next_json(&mut on_a).await["push"]["type"], "hello");
    assert_eq!(next_json(&mut also_on_b).await["push"]["type"], "hello");
    assert_eq!(reply["online"], true);

    // Both nodes count both connections and see the channel member on B.
    for node in [&a, &b] {
        let count = eventually("both nodes to count two connections", || async {
            let reply = api_post(node, "/api/v1/presence", json!({"users": ["alice"]})).await;
            (reply["users"][0]["connections"] == 2).then_some(2)
        })
        .await;
        assert_eq!(count, 2);
        let channel = api_get(node, "/api/v1/channels/news/presence").await;
        assert_eq!(channel["users"][0]["user"], "alice");
    }

    // A disconnect through A's API closes the tab on B too.
    api_post(&a, "/api/v1/disconnect", json!({"user": "alice"})).await;
    assert_eq!(close_code(&mut also_on_b).await, Some(close::DISCONNECTED));
    assert_eq!(close_code(&mut on_a).await, Some(close::DISCONNECTED));
    for node in [&a, &b] {
        eventually("both nodes to see alice offline", || async {
            let reply = api_post(node, "/api/v1/presence", json!({"users": ["alice"]})).await;
            (reply["users"][0]["online"] != true).then_some(())
        })
        .await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_node_gets_from_nats_only_the_pushes_its_connections_need() {
    let nats = NatsServer::start().unwrap();
    let a = Running::start(config(&nats.url())).await;
    let b = Running::start(config(&nats.url())).await;
    let bus = bus(&nats.url()).await;
    let (mut bob_on_a, _) = connect(&a, &token("bob")).await;
    let (mut alice_on_b, _) = connect(&b, &token("alice")).await;
    send(&mut alice_on_b, json!({"type": "subscribe", "channel": "news"})).await;
    assert_eq!(next_json(&mut alice_on_b).await["type"], "subscribed");

    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push((
            "user",
            push(&bus, bus.subjects().push_user("alice"), "u", json!(i)).await,
        ));
    }
    expected.push((
        "channel:news",
        push(&bus, bus.subjects().push_channel("news"), "c", json!(0)).await,
    ));
    let all = push(&bus, bus.subjects().push_all(), "a", json!(0)).await;
    expected.push(("all", all));
    for (source, offset) in expected {
        let message = next_json(&mut alice_on_b).await;
        assert_eq!(
            (message["source"].as_str(), message["offset"].as_u64()),
            (Some(source), Some(offset))
        );
    }
    let message = next_json(&mut bob_on_a).await;
    assert_eq!(
        (message["source"].as_str(), message["offset"].as_u64()),
        (Some("all"), Some(all))
    );

    // A has no connection of alice and no subscriber of news: nats-server sent it
    // only the push to all. B got the seven its connection needed.
    assert_eq!(a.interest.received(), 1, "node A got only the push to all");
    assert_eq!(b.interest.received(), 7);
    let alice = ws_push::delivery::Route::User("alice".into());
    let news = ws_push::delivery::Route::Channel("news".into());
    let on_a = a.interest.routes().await;
    assert!(on_a.contains(&ws_push::delivery::Route::User("bob".into())));
    assert!(!on_a.contains(&alice) && !on_a.contains(&news), "{on_a:?}");

    // Alice's last connection on B goes: B unsubscribes from her and from news.
    alice_on_b.close(None).await.unwrap();
    eventually("B to let go of alice and news", || async {
        let on_b = b.interest.routes().await;
        (on_b == vec![ws_push::delivery::Route::All]).then_some(())
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn past_the_user_limit_users_come_through_one_wildcard_each_push_once_in_order() {
    let nats = NatsServer::start().unwrap();
    let mut node_config = config(&nats.url());
    node_config.interest.user_subscriptions = 1;
    let app = Running::start(node_config).await;
    let bus = bus(&nats.url()).await;
    // alice gets the one subscription of a user's own; bob and carol come after the
    // limit, through the wildcard.
    let mut sockets = Vec::new();
    for user in ["alice", "bob", "carol"] {
        sockets.push((user, connect(&app, &token(user)).await.0));
        assert_eq!(app.interest.users_wildcard().await, user != "alice", "after {user}");
    }

    let mut expected: std::collections::HashMap<&str, Vec<u64>> = std::collections::HashMap::new();
    for (i, user) in ["alice", "bob", "dave", "carol", "alice", "bob"]
        .into_iter()
        .enumerate()
    {
        let offset = push(&bus, bus.subjects().push_user(user), "u", json!(i)).await;
        expected.entry(user).or_default().push(offset);
    }
    let all = push(&bus, bus.subjects().push_all(), "a", json!(0)).await;
    for (user, ws) in &mut sockets {
        // Exactly its own, once each, in order, then the push to all: nothing else
        // (dave, not connected here, is dropped by the node).
        for offset in &expected[user] {
            let message = next_json(ws).await;
            assert_eq!(
                (message["source"].as_str(), message["offset"].as_u64()),
                (Some("user"), Some(*offset)),
                "{user}"
            );
        }
        let message = next_json(ws).await;
        assert_eq!(
            (message["source"].as_str(), message["offset"].as_u64()),
            (Some("all"), Some(all)),
            "{user}"
        );
    }
    // The wildcard brought all six user pushes (dave's too); alice's own
    // subscription brought her two again; and the push to all.
    assert_eq!(app.interest.received(), 6 + 2 + 1);

    // With the last user gone, the wildcard goes; the next user gets a subscription
    // of its own again.
    for (_, mut ws) in sockets {
        ws.close(None).await.unwrap();
    }
    eventually("the node to drop the wildcard", || async {
        (!app.interest.users_wildcard().await).then_some(())
    })
    .await;
    let (mut erin, _) = connect(&app, &token("erin")).await;
    assert!(!app.interest.users_wildcard().await);
    let offset = push(&bus, bus.subjects().push_user("erin"), "u", json!(0)).await;
    assert_eq!(next_json(&mut erin).await["offset"], offset);
    app.shutdown().await;
}

#[tokio::test]
async fn pushes_nats_server_did_not_send_are_refilled_from_the_stream_in_order() {
    pushes_nats_server_did_not_send_are_refilled(1000).await;
}

#[tokio::test]
async fn pushes_the_wildcard_did_not_bring_are_refilled_from_the_stream_in_order() {
    pushes_nats_server_did_not_send_are_refilled(0).await;
}

/// Two pushes stored while `SB_PUSH` does not re-publish reach alice from the stream,
/// before the next one; `user_subscriptions` 0 has every user come through the wildcard.
async fn pushes_nats_server_did_not_send_are_refilled(user_subscriptions: usize) {
    let nats = NatsServer::start().unwrap();
    let mut node_config = config(&nats.url());
    node_config.interest.user_subscriptions = user_subscriptions;
    let app = Running::start(node_config).await;
    let bus = bus(&nats.url()).await;
    let (mut ws, _) = connect(&app, &token("alice")).await;

    // SB_PUSH stops re-publishing for a moment: two pushes are stored that
    // nats-server never sends the node.
    let js = bus.jetstream();
    let mut stream = js.get_stream(bus.subjects().stream_name("PUSH")).await.unwrap();
    let mut stream_config = stream.info().await.unwrap().config.clone();
    assert!(stream_config.republish.is_some(), "SB_PUSH re-publishes");
    stream_config.republish = None;
    js.update_stream(&stream_config).await.unwrap();
    let mut offsets = Vec::new();
    for i in 0..2 {
        offsets.push(push(&bus, bus.subjects().push_user("alice"), "u", json!(i)).await);
    }

    // A node that starts puts the re-publishing back (an existing stream without it
    // is updated); the next push says which came before it on its subject.
    let other = Running::start(config(&nats.url())).await;
    assert!(stream.info().await.unwrap().config.republish.is_some());
    offsets.push(push(&bus, bus.subjects().push_user("alice"), "u", json!(2)).await);

    for (i, offset) in offsets.iter().enumerate() {
        let message = next_json(&mut ws).await;
        assert_eq!(
            (message["source"].as_str(), message["offset"].as_u64()),
            (Some("user"), Some(*offset))
        );
        assert_eq!(message["push"]["data"], i);
    }
    assert_eq!(app.interest.received(), 1, "the first two came from the stream");
    other.shutdown().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_what_it_missed_from_the_stream_after_a_nats_reconnect() {
    reads_what_it_missed_after_a_nats_reconnect(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_what_its_wildcard_users_missed_after_a_nats_reconnect() {
    reads_what_it_missed_after_a_nats_reconnect(0).await;
}

/// Pushes stored while the node was not re-published to, with none after them,
/// arrive through the catch-up after a nats-server restart; `user_subscriptions` 0
/// has alice come through the wildcard.
async fn reads_what_it_missed_after_a_nats_reconnect(user_subscriptions: usize) {
    let mut nats = NatsServer::start().unwrap();
    let mut node_config = config(&nats.url());
    node_config.interest.user_subscriptions = user_subscriptions;
    let app = Running::start(node_config).await;
    let (mut ws, _) = connect(&app, &token("alice")).await;
    let publisher = bus(&nats.url()).await;
    let publish = |i: u64| {
        let publisher = publisher.clone();
        async move {
            // A fixed id makes a retry through the outage exactly-once in the stream.
            let event = publisher
                .event(switchboard_bus::event_types::PUSH, &json!({"type": "u", "data": i}))
                .unwrap()
                .with_id(format!("u-{i}"));
            loop {
                match publisher.publish(publisher.subjects().push_user("alice"), &event).await {
                    Ok(ack) => return ack.sequence,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    };
    let mut offsets = vec![publish(0).await];
    assert_eq!(next_json(&mut ws).await["offset"], offsets[0]);

    // Two pushes are stored that nats-server never sends the node (re-publishing is
    // off meanwhile), and none follows them: only the catch-up after the node
    // reconnects to the restarted nats-server brings them.
    let js = publisher.jetstream();
    let mut stream_config = js
        .get_stream(publisher.subjects().stream_name("PUSH"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    let republish = stream_config.republish.take();
    js.update_stream(&stream_config).await.unwrap();
    offsets.push(publish(1).await);
    offsets.push(publish(2).await);
    stream_config.republish = republish;
    js.update_stream(&stream_config).await.unwrap();
    tokio::task::block_in_place(|| nats.restart().unwrap());
    for (i, offset) in offsets.iter().enumerate().skip(1) {
        let message = next_json(&mut ws).await;
        assert_eq!(
            (message["source"].as_str(), message["offset"].as_u64()),
            (Some("user"), Some(*offset))
        );
        assert_eq!(message["push"]["data"], i);
    }
    assert_eq!(app.interest.received(), 1, "the two came from the stream");

    // And live delivery goes on.
    let offset = publish(3).await;
    assert_eq!(next_json(&mut ws).await["offset"], offset);
    app.shutdown().await;
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_takes_every_user_offline_once() {
    const USERS: usize = 100;
    let nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let bus = bus(&nats.url()).await;
    let mut sockets = Vec::new();
    for i in 0..USERS {
        sockets.push(connect(&app, &token(&format!("u{i}"))).await.0);
    }
    let mut events = bus.client().subscribe("sb.evt.push.presence.*.offline").await.unwrap();
    bus.client().flush().await.unwrap();
    app.stop.cancel();
    app.task.await.unwrap().unwrap();
    let mut offline = std::collections::HashSet::new();
    while offline.len() < USERS {
        let event = presence_event(&mut events).await;
        assert!(!event.online);
        assert!(offline.insert(event.user.clone()), "{} went offline twice", event.user);
    }
    let presence = bus
        .jetstream()
        .get_key_value(bus.subjects().stream_name("PRESENCE"))
        .await
        .unwrap();
    let mut keys = presence.keys().await.unwrap();
    assert!(keys.next().await.is_none(), "the node left no presence entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_nats_gone_ends_within_the_presence_budget() {
    let mut nats = NatsServer::start().unwrap();
    let app = Running::start(config(&nats.url())).await;
    let mut sockets = Vec::new();
    for i in 0..100 {
        sockets.push(connect(&app, &token(&format!("u{i}"))).await.0);
    }
    nats.stop();
    app.stop.cancel();
    // Each user's removal would wait for NATS (a KV delete, then an offline event
    // retried for nats.publish_timeout); the node gives them five seconds in all and
    // leaves the rest to expire.
    let ended = tokio::time::timeout(Duration::from_secs(30), app.task).await;
    assert!(ended.is_ok(), "ws-push still shutting down after 30 s with NATS gone");
}

#[tokio::test]
async fn a_dead_nodes_users_go_offline_after_the_ttl() {
    let nats = NatsServer::start().unwrap();
    let a = Running::start(config(&nats.url())).await;
    let bus = bus(&nats.url()).await;
    let mut events = bus.client().subscribe("sb.evt.push.presence.>").await.unwrap();
    bus.client().flush().await.unwrap();
    // Node B is the real binary, so it can die the hard way (SIGKILL).
    let port = switchboard_test_support::free_port();
    let mut b = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_ws-push"))
            .env("SB_NATS__URL", nats.url())
            .env("SB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("SB_GRPC__LISTEN", "127.0.0.1:0")
            .env("SB_AUTH__JWT_SECRET", SECRET)
            .env("SB_PRESENCE__TTL", "3s")
            .env("SB_PRESENCE__HEARTBEAT", "1s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut ws = eventually("node B to accept connections", || async {
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .ok()
            .map(|(ws, _)| ws)
    })
    .await;
    send(&mut ws, json!({"type": "connect", "token": token("carol")})).await;
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    assert!(presence_event(&mut events).await.online);
    eventually("node A to see carol", || async {
        let reply = api_post(&a, "/api/v1/presence", json!({"users": ["carol"]})).await;
        (reply["users"][0]["online"] == true).then_some(())
    })
    .await;
    b.0.kill().unwrap();
    let _ = b.0.wait();
    // Node A's sweep notices the stale entry and says so.
    let offline = presence_event(&mut events).await;
    assert_eq!((offline.user.as_str(), offline.online), ("carol", false));
    let reply = api_post(&a, "/api/v1/presence", json!({"users": ["carol"]})).await;
    assert_ne!(reply["users"][0]["online"], true);
    a.shutdown().await;
}

#[tokio::test]
async fn a_site_callback_can_vouch_for_its_own_session_tokens() {
    use axum::routing::post;
    // The site: accepts one session id, refuses the rest, and fails for "down".
    let site = axum::Router::new().route(
        "/auth",
        post(|axum::Json(body): axum::Json<serde_json::Value>| async move {
            match body["token"].as_str() {
                Some("session-abc") => (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"sub": "site-user-7", "admin": true, "channels": ["news"], "exp": now() + 60})),
                ),
                Some("down") => (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({}))),
                _ => (axum::http::StatusCode::FORBIDDEN, axum::Json(json!({}))),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, site).await });

    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.auth.callback_url = Some(format!("http://{site_addr}/auth"));
    let app = Running::start(config).await;
    let (_ws, connected) = connect(&app, "session-abc").await;
    assert_eq!(
        (connected["user"].as_str(), connected["admin"].as_bool()),
        (Some("site-user-7"), Some(true))
    );
    // JWTs still work beside the callback.
    let (_ws, connected) = connect(&app, &token("jwt-user")).await;
    assert_eq!(connected["user"], "jwt-user");
    for (session, code) in [("session-xyz", close::BAD_TOKEN), ("down", close::AUTH_UNAVAILABLE)] {
        let mut ws = open(&app.ws_url()).await;
        send(&mut ws, json!({"type": "connect", "token": session})).await;
        assert_eq!(close_code(&mut ws).await, Some(code), "{session}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn channel_join_and_leave_events_reach_subscribers_when_enabled() {
    let nats = NatsServer::start().unwrap();
    let mut config = config(&nats.url());
    config.presence.join_leave = true;
    let app = Running::start(config).await;
    let (mut bob, _) = connect(&app, &token("bob")).await;
    send(&mut bob, json!({"type": "subscribe", "channel": "news"})).await;
    assert_eq!(next_json(&mut bob).await["type"], "subscribed");
    assert_eq!(next_json(&mut bob).await["push"]["type"], "join", "bob's own join");
    let (mut alice, _) = connect(&app, &token("alice")).await;
    send(&mut alice, json!({"type": "subscribe", "channel": "news"})).await;
    let join = next_json(&mut bob).await;
    assert_eq!(
        (join["push"]["type"].as_str(), join["push"]["data"]["user"].as_str()),
        (Some("join"), Some("alice"))
    );
    assert_eq!(join["source"], "channel:news");
    // A second tab of alice in the same channel is not a new join; closing both is one leave.
    let (mut alice2, _) = connect(&app, &token("alice")).await;
    send(&mut alice2, json!({"type": "subscribe", "channel": "news"})).await;
    assert_eq!(next_json(&mut alice2).await["type"], "subscribed");
    drop(alice);
    send(&mut alice2, json!({"type": "unsubscribe", "channel": "news"})).await;
    let leave = next_json(&mut bob).await;
    assert_eq!(
        (leave["push"]["type"].as_str(), leave["push"]["data"]["user"].as_str()),
        (Some("leave"), Some("alice"))
    );
    app.shutdown().await;
}
