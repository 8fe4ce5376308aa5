//! Flow F6, private chat: A sends B a message through chat-store's HTTP API with the
//! site's JWT; B's browser gets it live over ws-push; B opens the dialog and marks it
//! read; A's browser sees "read"; the admin monitor channel sees the message. The text
//! is stored and delivered exactly as typed, never as HTML.

use serde_json::{Value, json};
use switchboard_bus::Secret;
use switchboard_flows::{
    JWT_SECRET, browser_token, nats_config, next_json, next_push, open_browser, send_json, start_ws_push,
};
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

async fn call(
    http: std::net::SocketAddr,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{http}{path}"))
        .bearer_auth(browser_token(user, json!({})));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("chat-store HTTP");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_a_message_arrives_live_is_read_and_the_admin_monitor_sees_it() {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let push_http = start_ws_push(&nats, &shutdown).await;
    let data = tempfile::tempdir().expect("data dir");
    let mut config = chat_store::Config {
        nats: nats_config(&nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        data_dir: data.path().to_path_buf(),
        ..chat_store::Config::default()
    };
    config.auth.jwt_secret = Secret::new(JWT_SECRET);
    let chat = chat_store::App::build(config, shutdown.clone())
        .await
        .expect("chat-store");
    let chat_http = chat.http_addr();
    tokio::spawn(chat.run());

    let (mut alice_tab, _) = open_browser(push_http, &browser_token("alice", json!({}))).await;
    let (mut bob_tab, _) = open_browser(push_http, &browser_token("bob", json!({}))).await;
    let (mut monitor, _) = open_browser(
        push_http,
        &browser_token("admin1", json!({ "admin": true, "channels": ["chat-admin"] })),
    )
    .await;
    send_json(
        &mut monitor,
        json!({ "type": "subscribe", "id": "1", "channel": "chat-admin" }),
    )
    .await;
    let subscribed = next_json(&mut monitor).await;
    assert_ne!(
        subscribed["type"], "error",
        "the admin may watch the monitor channel: {subscribed}"
    );

    let text = "<img src=x onerror=alert(1)> see you at 5";
    let (status, sent) = call(
        chat_http,
        "alice",
        reqwest::Method::POST,
        "/api/v1/messages",
        Some(json!({ "to": "bob", "text": text, "clientId": "c-1" })),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let id = sent["message"]["id"].as_str().expect("message id").to_owned();

    let live = next_push(&mut bob_tab, "chat.message").await;
    assert_eq!(live["push"]["data"]["text"], text, "delivered exactly as typed: {live}");
    assert_eq!(live["push"]["data"]["from"], "alice");
    let watched = next_push(&mut monitor, "chat.message").await;
    assert_eq!(watched["push"]["data"]["id"], id.as_str(), "the admin monitor sees it");

    let (status, unread) = call(chat_http, "bob", reqwest::Method::GET, "/api/v1/unread", None).await;
    assert_eq!((status, unread["unread"].as_i64()), (200, Some(1)), "{unread}");
    let (status, _) = call(
        chat_http,
        "bob",
        reqwest::Method::POST,
        "/api/v1/dialogs/alice/read",
        Some(json!({ "upToMessageId": id })),
    )
    .await;
    assert_eq!(status, 200);
    let receipt = next_push(&mut alice_tab, "chat.receipt").await;
    assert_eq!(
        receipt["push"]["data"]["kind"], "read",
        "alice sees the two ticks: {receipt}"
    );
    assert_eq!(receipt["push"]["data"]["upToMessageId"], id.as_str());

    shutdown.cancel();
}
