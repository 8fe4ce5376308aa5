//! The running service over HTTP, with a real nats-server, on SQLite and PostgreSQL:
//! auth (JWT and the seed's user key against a local fake site), the browser API,
//! events and pushes, admin and management APIs, translation, the OpenAPI document.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chat_store::{App, Config};
use common::{Backend, TestDb};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_bus::{CloudEvent, Secret};
use switchboard_test_support::{NatsServer, S3Server};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-secret";
const API_KEY: &str = "manage-key";

struct Running {
    base: String,
    grpc: String,
    nats: async_nats::Client,
    shutdown: CancellationToken,
    _db: TestDb,
    _data: tempfile::TempDir,
    _nats_server: NatsServer,
    http: reqwest::Client,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(backend: Backend, configure: impl FnOnce(&mut Config)) -> Running {
    let nats_server = NatsServer::start().expect("nats-server");
    let db = TestDb::new(backend).await;
    let data = tempfile::tempdir().expect("data dir");
    let mut config = common::service_config(nats_server.url(), data.path());
    config.database.url = Secret::new(db.url.clone());
    config.auth.jwt_secret = Secret::new(SECRET);
    config.auth.admin_ids = vec!["root".into()];
    config.management.api_key = Secret::new(API_KEY);
    config.management.trusted_ips = vec!["127.0.0.1".parse().expect("ip")];
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let app = App::build(config, shutdown.clone()).await.expect("build");
    let base = format!("http://{}", app.http_addr());
    let grpc = format!("http://{}", app.grpc_addr());
    tokio::spawn(app.run());
    let nats = async_nats::connect(nats_server.url()).await.expect("nats client");
    Running {
        base,
        grpc,
        nats,
        shutdown,
        _db: db,
        _data: data,
        _nats_server: nats_server,
        http: reqwest::Client::new(),
    }
}

fn token(user: &str, admin: bool) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user, "admin": admin, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

impl Running {
    async fn call(&self, method: &str, user: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token(user, false));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

async fn next_event(sub: &mut async_nats::Subscriber) -> CloudEvent {
    let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message within 10 s")
        .expect("subscription open");
    CloudEvent::from_message(message.headers.as_ref(), message.payload).expect("cloudevent")
}

async fn browser_flow_sends_pushes_and_receipts(backend: Backend) {
    let app = start(backend, |_| {}).await;
    let mut bob_pushes = app.nats.subscribe("sb.push.user.bob").await.expect("sub");
    let mut alice_pushes = app.nats.subscribe("sb.push.user.alice").await.expect("sub");
    let mut monitor = app.nats.subscribe("sb.push.channel.chat-admin").await.expect("sub");
    let mut events = app.nats.subscribe("sb.evt.chat.>").await.expect("sub");

    let (status, _) = app.call("GET", "alice", "/api/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    let anonymous = app
        .http
        .get(format!("{}/api/v1/dialogs", app.base))
        .send()
        .await
        .expect("req");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let forged = app
        .http
        .get(format!("{}/api/v1/dialogs", app.base))
        .bearer_auth(token("alice", false) + "x")
        .send()
        .await
        .expect("req");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    let body = json!({ "to": "bob", "text": "<script>hi</script>", "clientId": "k1" });
    let (status, sent) = app.call("POST", "alice", "/api/v1/messages", Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    let id = sent["message"]["id"].as_str().expect("id").to_owned();
    assert_eq!(sent["message"]["text"], "<script>hi</script>");
    let (status, again) = app.call("POST", "alice", "/api/v1/messages", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["duplicate"], true);

    let push = next_event(&mut bob_pushes).await;
    let data: Value = push.data_as().expect("json");
    assert_eq!(data["type"], "chat.message");
    assert_eq!(data["data"]["id"], id.as_str());
    assert_eq!(
        next_event(&mut alice_pushes).await.data_as::<Value>().expect("json")["type"],
        "chat.message"
    );
    assert_eq!(
        next_event(&mut monitor).await.data_as::<Value>().expect("json")["data"]["from"],
        "alice"
    );
    let created = next_event(&mut events).await;
    assert_eq!(created.ty, "switchboard.chat.message.v1");
    assert_eq!(created.data_as::<Value>().expect("json")["message"]["to"], "bob");

    let (status, dialogs) = app.call("GET", "bob", "/api/v1/dialogs", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dialogs["dialogs"][0]["peer"], "alice");
    assert_eq!(dialogs["dialogs"][0]["unread"], 1);
    let (_, unread) = app.call("GET", "bob", "/api/v1/unread", None).await;
    assert_eq!(unread["unread"], 1);

    app.call("POST", "bob", "/api/v1/dialogs/alice/typing", None).await;
    let typing = next_event(&mut alice_pushes).await.data_as::<Value>().expect("json");
    assert_eq!(typing["type"], "chat.typing");
    assert_eq!(typing["data"]["from"], "bob");

    let (status, marked) = app
        .call(
            "POST",
            "bob",
            "/api/v1/dialogs/alice/read",
            Some(json!({ "upToMessageId": id })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(marked["marked"], 1);
    let receipt = next_event(&mut alice_pushes).await.data_as::<Value>().expect("json");
    assert_eq!(receipt["type"], "chat.receipt");
    assert_eq!(receipt["data"]["kind"], "read");
    assert_eq!(receipt["data"]["upToMessageId"], id.as_str());
    let (_, history) = app
        .call("GET", "alice", "/api/v1/dialogs/bob/messages?pageSize=10", None)
        .await;
    assert!(history["messages"][0]["readAt"].is_string(), "{history}");

    // Blocking: refused with a clear error; admins cannot be blocked.
    let (status, _) = app.call("PUT", "bob", "/api/v1/relations/blocked/alice", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, refused) = app
        .call(
            "POST",
            "alice",
            "/api/v1/messages",
            Some(json!({ "to": "bob", "text": "again" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(refused["reason"], "blocked");
    let (status, refused) = app.call("PUT", "bob", "/api/v1/relations/blocked/root", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");

    // Only participants read a dialog: eve's view of bob/alice is her own, empty one.
    let (_, eves) = app.call("GET", "eve", "/api/v1/dialogs/alice/messages", None).await;
    // proto3 JSON leaves empty lists out.
    assert!(eves["messages"].as_array().is_none_or(Vec::is_empty), "{eves}");
    let (status, _) = app
        .call(
            "PATCH",
            "eve",
            &format!("/api/v1/messages/{id}"),
            Some(json!({"text": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Admin views need admin.
    let (status, _) = app.call("GET", "alice", "/api/v1/admin/messages", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, all) = app.call("GET", "root", "/api/v1/admin/messages?user=alice", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(1));
    let (status, complaint) = app
        .call(
            "POST",
            "bob",
            "/api/v1/complaints",
            Some(json!({ "messageId": id, "reason": "spam" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{complaint}");
    let (_, open) = app
        .call("GET", "root", "/api/v1/admin/complaints?state=open", None)
        .await;
    assert_eq!(open["complaints"][0]["targetUser"], "alice");
    let (status, removed) = app
        .call("DELETE", "root", &format!("/api/v1/admin/messages/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(removed["message"]["deletedAt"].is_string());

    // Bad input is a clear 4xx, never a crash.
    for (method, path, body) in [
        ("POST", "/api/v1/messages", Some(json!({ "text": "no recipient" }))),
        ("GET", "/api/v1/dialogs/bob/messages?cursor=abc", None),
        ("PATCH", "/api/v1/messages/not-a-number", Some(json!({ "text": "x" }))),
        ("GET", "/api/v1/search?q=", None),
        ("PUT", "/api/v1/relations/enemy/bob", None),
    ] {
        let (status, error) = app.call(method, "alice", path, body).await;
        assert!(status.is_client_error(), "{method} {path}: {status} {error}");
    }
}
both!(browser_flow, browser_flow_sends_pushes_and_receipts);

async fn management_needs_the_key_and_a_trusted_address(backend: Backend) {
    let app = start(backend, |_| {}).await;
    app.call(
        "POST",
        "alice",
        "/api/v1/messages",
        Some(json!({ "to": "bob", "text": "1" })),
    )
    .await;
    let put = |key: &str| {
        app.http
            .put(format!("{}/api/v1/manage/admins", app.base))
            .bearer_auth(key)
            .json(&json!({ "admins": ["mod"] }))
            .send()
    };
    assert_eq!(put("wrong").await.expect("req").status(), StatusCode::UNAUTHORIZED);
    let ok = put(API_KEY).await.expect("req");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.json::<Value>().await.expect("json")["admins"], json!(["mod"]));
    // The new admin's token carries no claim; the admins table makes them admin.
    let (status, _) = app.call("GET", "mod", "/api/v1/admin/messages", None).await;
    assert_eq!(status, StatusCode::OK);
    let erased = app
        .http
        .delete(format!("{}/api/v1/manage/users/alice", app.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(erased.status(), StatusCode::OK);
    assert_eq!(erased.json::<Value>().await.expect("json")["messagesErased"], "1");

    // From an address not on the list, even the right key is refused.
    let other = start(backend, |c| {
        c.management.trusted_ips = vec!["10.9.9.9".parse().expect("ip")]
    })
    .await;
    let refused = other
        .http
        .get(format!("{}/api/v1/manage/admins", other.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}
both!(management, management_needs_the_key_and_a_trusted_address);

/// A fake site: `/key` answers `key-<id>`, `/users` answers the seed's JSON, counting calls.
async fn fake_site(
    key_calls: Arc<AtomicUsize>,
    user_calls: Arc<AtomicUsize>,
    batches: Arc<std::sync::Mutex<Vec<String>>>,
) -> SocketAddr {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/key",
            post(move |body: String| {
                let calls = key_calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let id = body.strip_prefix("id=").unwrap_or_default().to_owned();
                    format!("key-{id}\n")
                }
            }),
        )
        .route(
            "/users",
            post(move |body: String| {
                let calls = user_calls.clone();
                let batches = batches.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let list = body.strip_prefix("users=").unwrap_or_default().replace("%2C", ",");
                    if let Ok(mut b) = batches.lock() {
                        b.push(list.clone());
                    }
                    let users: Vec<Value> = list
                        .split(',')
                        .filter(|id| *id != "404")
                        .map(|id| {
                            json!({ "user_id": id.parse::<u64>().map(Value::from).unwrap_or(Value::from(id)),
                                    "name": format!("User {id}"), "login": format!("u{id}"),
                                    "avatar_url": "http://x/a.png", "city": "Vladivostok", "age": 24, "status": "active" })
                        })
                        .collect();
                    axum::Json(users)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn user_keys_and_users_come_from_the_site(backend: Backend) {
    let key_calls = Arc::new(AtomicUsize::new(0));
    let user_calls = Arc::new(AtomicUsize::new(0));
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let site = fake_site(key_calls.clone(), user_calls.clone(), batches.clone()).await;
    let app = start(backend, |c| {
        c.auth.jwt_secret = Secret::default();
        c.auth.key_url = format!("http://{site}/key");
        c.auth.users_url = format!("http://{site}/users");
    })
    .await;
    let with_key = |user: &str, key: &str| {
        app.http
            .get(format!("{}/api/v1/me", app.base))
            .header("x-chat-user", user)
            .header("x-chat-key", key)
            .send()
    };
    assert_eq!(with_key("7", "key-7").await.expect("req").status(), StatusCode::OK);
    assert_eq!(with_key("7", "key-7").await.expect("req").status(), StatusCode::OK);
    assert_eq!(key_calls.load(Ordering::SeqCst), 1, "a confirmed key is cached");
    assert_eq!(
        with_key("7", "key-8").await.expect("req").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        with_key("8", "wrong").await.expect("req").status(),
        StatusCode::UNAUTHORIZED
    );
    // JWT is off in this config.
    let jwt = app
        .http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(token("7", true))
        .send()
        .await
        .expect("req");
    assert_eq!(jwt.status(), StatusCode::UNAUTHORIZED);

    let get_users = |ids: &str| {
        app.http
            .get(format!("{}/api/v1/users?ids={ids}", app.base))
            .header("x-chat-user", "7")
            .header("x-chat-key", "key-7")
            .send()
    };
    let users: Value = get_users("1,2,404").await.expect("req").json().await.expect("json");
    assert_eq!(users["users"].as_array().map(Vec::len), Some(2), "{users}");
    assert_eq!(users["users"][0]["name"], "User 1");
    assert_eq!(users["users"][0]["age"], 24);
    assert_eq!(user_calls.load(Ordering::SeqCst), 1, "one batch for three ids");
    assert_eq!(batches.lock().expect("lock")[0], "1,2,404");
    let again: Value = get_users("2,1").await.expect("req").json().await.expect("json");
    assert_eq!(again["users"].as_array().map(Vec::len), Some(2));
    assert_eq!(user_calls.load(Ordering::SeqCst), 1, "cached within the TTL");
    let contacts: Value = app
        .http
        .get(format!("{}/api/v1/contacts?q=user", app.base))
        .header("x-chat-user", "7")
        .header("x-chat-key", "key-7")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(contacts["users"].as_array().map(Vec::len), Some(2), "{contacts}");
}
both!(site_auth, user_keys_and_users_come_from_the_site);

async fn translations_are_fetched_once_and_cached(backend: Backend) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let translator = axum::Router::new().route(
        "/translate",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let text = body["q"].as_str().unwrap_or_default().to_uppercase();
                axum::Json(
                    json!({ "translatedText": format!("[{}] {text}", body["target"].as_str().unwrap_or_default()) }),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, translator).await });
    let app = start(backend, |c| c.translate.url = format!("http://{addr}")).await;
    let (_, sent) = app
        .call(
            "POST",
            "alice",
            "/api/v1/messages",
            Some(json!({ "to": "bob", "text": "privet" })),
        )
        .await;
    let id = sent["message"]["id"].as_str().expect("id").to_owned();
    let path = format!("/api/v1/messages/{id}/translation?lang=en");
    let (status, first) = app.call("GET", "bob", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["text"], "[en] PRIVET");
    let (_, second) = app.call("GET", "bob", &path, None).await;
    assert_eq!(second["text"], "[en] PRIVET");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "cached per (message, language)");
    let (status, _) = app.call("GET", "eve", &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only participants translate");
    let (status, _) = app
        .call(
            "GET",
            "bob",
            &format!("/api/v1/messages/{id}/translation?lang=e%20n"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
both!(translation, translations_are_fetched_once_and_cached);

#[tokio::test]
async fn openapi_document_lists_every_route_and_each_is_routed() {
    let app = start(Backend::Sqlite, |_| {}).await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path, _, _) in chat_store::openapi::ROUTES {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} documented");
        // Every documented route exists: without credentials it is refused, not 404/405.
        let concrete = path
            .replace("{id}", "1")
            .replace("{peer}", "bob")
            .replace("{kind}", "blocked")
            .replace("{other}", "bob");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let status = app
            .http
            .request(method.clone(), format!("{}{concrete}", app.base))
            .send()
            .await
            .expect("req")
            .status();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{method} {concrete}: {status}"
        );
    }
}

async fn site_backends_use_grpc_with_a_key_and_nats_commands(backend: Backend) {
    use switchboard_proto::chat::v1 as pb;
    use switchboard_proto::chat::v1::chat_service_client::ChatServiceClient;
    let app = start(backend, |_| {}).await;
    let mut client = ChatServiceClient::connect(app.grpc.clone()).await.expect("grpc");
    let send = pb::SendMessageRequest {
        from: "alice".into(),
        to: "bob".into(),
        text: "over gRPC".into(),
        client_id: "g1".into(),
        attachment_id: String::new(),
    };
    let refused = client.send_message(send.clone()).await.expect_err("no key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let sent = client.send_message(with_key(send)).await.expect("send").into_inner();
    let id = sent.message.expect("message").id;
    let history = client
        .get_history(with_key(pb::GetHistoryRequest {
            user: "bob".into(),
            peer: "alice".into(),
            page: None,
        }))
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].id, id);
    client
        .set_relation(with_key(pb::SetRelationRequest {
            user: "bob".into(),
            other: "alice".into(),
            kind: pb::RelationKind::Blocked.into(),
            on: true,
        }))
        .await
        .expect("block");
    let blocked = client
        .send_message(with_key(pb::SendMessageRequest {
            from: "alice".into(),
            to: "bob".into(),
            text: "again".into(),
            ..Default::default()
        }))
        .await
        .expect_err("blocked");
    assert_eq!(blocked.code(), tonic::Code::PermissionDenied);
    assert!(blocked.message().contains("blocked"), "{}", blocked.message());

    // The same operations as NATS commands.
    let reply = app
        .nats
        .request("sb.cmd.chat.unread", r#"{"user":"bob"}"#.into())
        .await
        .expect("reply");
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("sb-status"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("ok"));
    let unread: Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(unread["unread"], 1);
    let reply = app
        .nats
        .request("sb.cmd.chat.mark-read", r#"{"user":"bob","peer":"alice"}"#.into())
        .await
        .expect("reply");
    let marked: Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(marked["marked"], 1);
    let reply = app
        .nats
        .request("sb.cmd.chat.nonsense", "{}".into())
        .await
        .expect("reply");
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("sb-status"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("error"));
    let error: Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(error["code"], "ERROR_CODE_NOT_FOUND");
    let reply = app
        .nats
        .request("sb.cmd.chat.send", "not json".into())
        .await
        .expect("reply");
    let error: Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(error["code"], "ERROR_CODE_INVALID_ARGUMENT");
}
fn with_key<T>(body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("x-api-key", API_KEY.parse().expect("meta"));
    request
}

both!(site_backends, site_backends_use_grpc_with_a_key_and_nats_commands);

/// A PNG with a `tEXt` chunk carrying `secret` after the header.
fn png_with_metadata(width: u32, height: u32, secret: &str) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).expect("png");
    let png = png.into_inner();
    let mut chunk_data = b"Comment\0".to_vec();
    chunk_data.extend_from_slice(secret.as_bytes());
    let mut chunk = (chunk_data.len() as u32).to_be_bytes().to_vec();
    let mut typed = b"tEXt".to_vec();
    typed.extend_from_slice(&chunk_data);
    chunk.extend_from_slice(&typed);
    chunk.extend_from_slice(&crc32(&typed).to_be_bytes());
    // Signature (8) + IHDR chunk (25), then the text chunk.
    let mut out = png[..33].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[33..]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn images_are_decoded_reencoded_and_served_to_participants_only(backend: Backend) {
    images_are_stored_in(backend, None).await;
}

/// The attachment round trip with files in the local dir, or in `s3`'s bucket under
/// the prefix `uploads`.
async fn images_are_stored_in(backend: Backend, s3: Option<&S3Server>) {
    let app = start(backend, |c| {
        c.attachments.max_bytes = 200_000;
        if let Some(s3) = s3 {
            c.attachments.url = format!("s3://{}/uploads", s3.bucket);
            c.attachments.s3.endpoint = s3.endpoint();
            c.attachments.s3.allow_http = true;
            c.attachments.s3.access_key_id = s3.access_key_id.clone();
            c.attachments.s3.secret_access_key = Secret::new(s3.secret_access_key.clone());
        }
    })
    .await;
    let stored_files = || match s3 {
        Some(s3) => s3.objects("uploads").len(),
        None => std::fs::read_dir(app._data.path().join("attachments"))
            .expect("attachments dir")
            .count(),
    };
    let upload = |user: &str, body: Vec<u8>| {
        app.http
            .post(format!("{}/api/v1/attachments", app.base))
            .bearer_auth(token(user, false))
            .body(body)
            .send()
    };
    let original = png_with_metadata(600, 300, "GPS-SECRET-42");
    assert!(image::load_from_memory(&original).is_ok(), "the crafted PNG is valid");
    let response = upload("alice", original).await.expect("upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(stored_files(), 2, "the image and its thumbnail");
    let attachment: Value = response.json().await.expect("json");
    assert_eq!(attachment["contentType"], "image/png");
    assert_eq!(attachment["width"], 600);
    let id = attachment["id"].as_str().expect("id").to_owned();

    // Not images, or too big: refused before anything is stored.
    let refused = upload("alice", b"GIF89a but not really".to_vec())
        .await
        .expect("upload");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused = upload("alice", b"<html>hi</html>".to_vec()).await.expect("upload");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused = upload("alice", vec![0u8; 300_000]).await.expect("upload");
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Bob cannot fetch it until it is sent to him; eve never.
    let fetch = |user: &str, path: String| {
        app.http
            .get(format!("{}{path}", app.base))
            .bearer_auth(token(user, false))
            .send()
    };
    let url = format!("/api/v1/attachments/{id}");
    assert_eq!(
        fetch("bob", url.clone()).await.expect("get").status(),
        StatusCode::NOT_FOUND
    );
    let (status, sent) = app
        .call(
            "POST",
            "alice",
            "/api/v1/messages",
            Some(json!({ "to": "bob", "attachmentId": id })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(sent["message"]["attachment"]["id"], id.as_str());
    let (status, _) = app
        .call(
            "POST",
            "alice",
            "/api/v1/messages",
            Some(json!({ "to": "carol", "attachmentId": id })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "an attachment is sent once");
    let stored = fetch("bob", url.clone()).await.expect("get");
    assert_eq!(stored.status(), StatusCode::OK);
    assert_eq!(stored.headers()["content-type"], "image/png");
    assert_eq!(stored.headers()["x-content-type-options"], "nosniff");
    let bytes = stored.bytes().await.expect("bytes");
    assert!(!bytes.windows(13).any(|w| w == b"GPS-SECRET-42"), "metadata dropped");
    let decoded = image::load_from_memory(&bytes).expect("decodes");
    assert_eq!((decoded.width(), decoded.height()), (600, 300));
    let thumb = fetch("bob", format!("{url}/thumbnail")).await.expect("thumb");
    let thumb = image::load_from_memory(&thumb.bytes().await.expect("bytes")).expect("decodes");
    assert_eq!((thumb.width(), thumb.height()), (256, 128));
    assert_eq!(
        fetch("eve", url.clone()).await.expect("get").status(),
        StatusCode::NOT_FOUND
    );

    let root = app
        .http
        .get(format!("{}/api/v1/admin/messages?attachmentsOnly=true", app.base))
        .bearer_auth(token("root", false))
        .send()
        .await
        .expect("admin");
    let only: Value = root.json().await.expect("json");
    assert_eq!(only["messages"].as_array().map(Vec::len), Some(1), "{only}");

    // Erasing the uploader removes the files too.
    let erased: Value = app
        .http
        .delete(format!("{}/api/v1/manage/users/alice", app.base))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("erase")
        .json()
        .await
        .expect("json");
    assert_eq!(erased["attachmentsErased"], "1");
    assert_eq!(stored_files(), 0, "blobs deleted");
}
both!(
    attachments,
    images_are_decoded_reencoded_and_served_to_participants_only
);

#[tokio::test]
async fn attachments_go_to_an_s3_bucket_when_configured() {
    let s3 = S3Server::start().expect("s3s-fs");
    images_are_stored_in(Backend::Sqlite, Some(&s3)).await;
    let files = std::fs::read_dir(s3.bucket_dir()).expect("bucket dir").count();
    assert_eq!(files, 1, "everything under the one prefix");
}

#[tokio::test]
async fn a_wrong_s3_secret_stops_the_start_with_the_cause_and_without_the_secret() {
    let s3 = S3Server::start().expect("s3s-fs");
    let nats = NatsServer::start().expect("nats-server");
    let data = tempfile::tempdir().expect("data dir");
    let mut config = common::service_config(nats.url(), data.path());
    config.attachments.url = format!("s3://{}", s3.bucket);
    config.attachments.s3.endpoint = s3.endpoint();
    config.attachments.s3.allow_http = true;
    config.attachments.s3.access_key_id = s3.access_key_id.clone();
    config.attachments.s3.secret_access_key = Secret::new("not-the-secret-5f2c");
    let error = match App::build(config, CancellationToken::new()).await {
        Ok(_) => panic!("a wrong secret is refused at start"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("attachments.url s3://chat"), "{error}");
    assert!(error.contains("cannot be listed"), "{error}");
    assert!(
        !error.contains("not-the-secret-5f2c"),
        "the secret never shows: {error}"
    );
}

#[tokio::test]
async fn widget_and_admin_pages_are_served_with_a_strict_policy() {
    let app = start(Backend::Sqlite, |c| {
        c.widget.push_url = "ws://127.0.0.1:18083/ws".into();
        c.widget.allowed_origins = vec!["https://www.example.com".into()];
    })
    .await;
    for (path, content_type, page) in [
        ("/widget/demo.html", "text/html", true),
        ("/admin/", "text/html", true),
        ("/widget/switchboard-chat.js", "text/javascript", false),
        ("/widget/switchboard-chat.css", "text/css", false),
        ("/widget/switchboard-chat.d.ts", "text/plain", false),
        ("/widget/demo.js", "text/javascript", false),
        ("/admin/admin.js", "text/javascript", false),
        ("/admin/admin.css", "text/css", false),
    ] {
        // No credentials needed: the pages hold no data.
        let response = app.http.get(format!("{}{path}", app.base)).send().await.expect("req");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let csp = header("content-security-policy");
        if page {
            assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
            assert!(
                csp.contains("connect-src 'self' ws://127.0.0.1:18083;"),
                "{path}: {csp}"
            );
            assert!(csp.contains("img-src 'self' blob: data:;"), "{path}: {csp}");
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
            let body = response.text().await.expect("body");
            assert!(!body.contains("<script>"), "{path}: no inline scripts");
        }
    }
    let script = app
        .http
        .get(format!("{}/widget/switchboard-chat.js", app.base))
        .send()
        .await
        .expect("req")
        .text()
        .await
        .expect("body");
    assert!(
        script.contains("root.SwitchboardPush = SwitchboardPush"),
        "ws-push's client first"
    );
    assert!(
        script.contains("root.SwitchboardChat = SwitchboardChat"),
        "then the widget"
    );
    assert!(!script.contains("innerHTML"), "user text is set as text only");

    // The widget learns ws-push's URL and whether translation is on from /me.
    let (status, me) = app.call("GET", "alice", "/api/v1/me", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"], "alice");
    assert_eq!(me["pushUrl"], "ws://127.0.0.1:18083/ws");
    assert_eq!(me["translate"], false);

    // CORS: the configured origin may call the API from its pages; another may not.
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, format!("{}/api/v1/dialogs", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://www.example.com").await.expect("req");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://www.example.com")
    );
    let other = preflight("https://evil.example.net").await.expect("req");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn page_size_is_accepted_on_every_paged_route() {
    let app = start(Backend::Sqlite, |_| {}).await;
    for text in ["one", "two"] {
        let (status, _) = app
            .call(
                "POST",
                "alice",
                "/api/v1/messages",
                Some(json!({ "to": "bob", "text": text })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    for (user, path, list) in [
        ("alice", "/api/v1/dialogs/bob/messages?pageSize=1", "messages"),
        ("alice", "/api/v1/dialogs?filter=all&pageSize=1", "dialogs"),
        ("alice", "/api/v1/search?q=one&pageSize=1", "messages"),
        ("root", "/api/v1/admin/messages?pageSize=1&user=alice", "messages"),
        ("root", "/api/v1/admin/complaints?pageSize=1&state=open", "complaints"),
    ] {
        let (status, body) = app.call("GET", user, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body[list].as_array().map_or(0, Vec::len) <= 1, "{path}: {body}");
    }
    let (status, body) = app.call("GET", "root", "/api/v1/admin/messages?pageSize=1", None).await;
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["page"]["hasMore"], true, "{status} {body}");
    let (status, _) = app.call("GET", "alice", "/api/v1/dialogs?pageSize=x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unsigned_alg_none_tokens_are_refused() {
    let app = start(Backend::Sqlite, |_| {}).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = json!({ "sub": "root", "admin": true, "exp": exp });
    let unsigned = switchboard_test_support::unsigned_jwt(&claims.to_string());
    // The same claims validly signed, relabelled `alg: none`.
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token");
    let relabelled = format!(
        "{}.{}",
        unsigned.trim_end_matches('.'),
        signed.rsplit('.').next().expect("signature")
    );
    for token in [&unsigned, &relabelled] {
        for path in ["/api/v1/me", "/api/v1/dialogs", "/api/v1/admin/messages"] {
            let response = app
                .http
                .get(format!("{}{path}", app.base))
                .bearer_auth(token)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
            let body: Value = response.json().await.expect("JSON error");
            assert_eq!(body["code"], "ERROR_CODE_UNAUTHENTICATED", "{path}: {body}");
        }
        let response = app
            .http
            .post(format!("{}/api/v1/messages", app.base))
            .bearer_auth(token)
            .json(&json!({ "to": "bob", "text": "forged" }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Nothing was sent as root.
    let (_, history) = app.call("GET", "bob", "/api/v1/dialogs/root/messages", None).await;
    assert_eq!(history["messages"].as_array().map_or(0, Vec::len), 0, "{history}");
}

#[tokio::test]
async fn attachment_names_and_ids_cannot_reach_outside_the_store() {
    let app = start(Backend::Sqlite, |c| c.attachments.max_bytes = 200_000).await;
    let data = app._data.path();
    std::fs::write(data.join("secret.txt"), "TOP-SECRET-FILE").expect("secret");
    // The upload's name (however the client sends one) never becomes a path.
    let response = app
        .http
        .post(format!("{}/api/v1/attachments", app.base))
        .bearer_auth(token("alice", false))
        .header(
            "content-disposition",
            "attachment; filename=\"../../../../../tmp/sb-evil.png\"",
        )
        .header("x-filename", "../secret.txt")
        .body(png_with_metadata(40, 20, "x"))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::CREATED);
    let attachment: Value = response.json().await.expect("json");
    let id = attachment["id"].as_str().expect("id").to_owned();
    assert!(!std::path::Path::new("/tmp/sb-evil.png").exists());
    assert_eq!(
        std::fs::read_to_string(data.join("secret.txt")).expect("secret"),
        "TOP-SECRET-FILE",
        "not overwritten"
    );
    let mut stored: Vec<String> = std::fs::read_dir(data.join("attachments"))
        .expect("attachments dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    assert_eq!(stored, vec![format!("{id}.png"), format!("{id}.thumb.png")]);

    // Ids that try to walk out of the store find nothing, and never a file's bytes.
    for bad in [
        "..%2Fsecret.txt",
        "..%2F..%2Fsecret.txt",
        "%2E%2E%2Fsecret.txt",
        "..%5Csecret.txt",
        "%2Fetc%2Fpasswd",
        "..",
        "secret.txt",
        "chat.db",
        &format!("{id}%2F..%2F..%2Fsecret.txt"),
        &format!("{id}%00.png"),
    ] {
        for suffix in ["", "/thumbnail"] {
            let response = app
                .http
                .get(format!("{}/api/v1/attachments/{bad}{suffix}", app.base))
                .bearer_auth(token("alice", false))
                .send()
                .await
                .expect("request");
            let status = response.status();
            let body = response.text().await.expect("body");
            assert!(
                status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
                "{bad}{suffix}: {status} {body}"
            );
            assert!(
                !body.contains("TOP-SECRET") && !body.contains("SQLite"),
                "{bad}{suffix}: {body}"
            );
        }
        // Nor can a message carry one.
        let (status, body) = app
            .call(
                "POST",
                "alice",
                "/api/v1/messages",
                Some(json!({ "to": "bob", "attachmentId": percent_decode(bad) })),
            )
            .await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{bad}: {status} {body}"
        );
    }
    // The real one is still served to its owner.
    let (status, _) = app
        .call("GET", "alice", &format!("/api/v1/attachments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// `%XX` escapes decoded (the ids above as a JSON body carries them).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}
