//! Shared helpers for the cross-service tests in `tests/tests/`: start services
//! in-process against one real nats-server, and talk to ws-push as a browser would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_bus::{Bus, NatsConfig, Secret};
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A guard against hangs only; no flow passes or fails on timing.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The JWT secret ws-push verifies browser tokens with in the flows.
pub const JWT_SECRET: &str = "flow-secret";
/// The API key sites use for ws-push's HTTP API in the flows.
pub const PUSH_API_KEY: &str = "flow-site-key";

/// A browser's WebSocket connection.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The NATS settings of a service on `nats`.
pub fn nats_config(nats: &NatsServer) -> NatsConfig {
    NatsConfig {
        url: nats.url(),
        ..Default::default()
    }
}

/// A client of the bus, as a test's own observer.
pub async fn bus(nats: &NatsServer) -> Bus {
    Bus::connect(&nats_config(nats), "flow-test").await.expect("bus")
}

/// An example rule file from `examples/rules/`.
pub fn example_rule(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/rules")
        .join(file)
}

/// Starts ws-push with [`JWT_SECRET`] and [`PUSH_API_KEY`]; returns its HTTP address.
pub async fn start_ws_push(nats: &NatsServer, shutdown: &CancellationToken) -> SocketAddr {
    let mut config = ws_push::Config {
        nats: nats_config(nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..ws_push::Config::default()
    };
    config.auth.jwt_secret = Some(Secret::new(JWT_SECRET));
    config.api.keys = vec![Secret::new(PUSH_API_KEY)];
    let app = ws_push::App::build(config, shutdown.clone()).await.expect("ws-push");
    let http = app.http_addr();
    tokio::spawn(app.run());
    http
}

/// Starts hook-runner with copies of the example rule files in `rules_dir`, and
/// waits until the durable consumer of each named rule exists (consumers start at
/// new events). `rules` pairs a file of `examples/rules/` with its rule's name.
pub async fn start_hook_runner(
    nats: &NatsServer,
    shutdown: &CancellationToken,
    rules_dir: &Path,
    rules: &[(&str, &str)],
) {
    for (file, _) in rules {
        std::fs::copy(example_rule(file), rules_dir.join(file)).expect("copy the example rule");
    }
    let mut config = hook_runner::Config {
        nats: nats_config(nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..hook_runner::Config::default()
    };
    config.rules.dir = rules_dir.to_path_buf();
    let app = hook_runner::App::build(config, shutdown.clone())
        .await
        .expect("hook-runner");
    tokio::spawn(app.run());

    let observer = bus(nats).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for (_, name) in rules {
        loop {
            let stream = observer.jetstream().get_stream("SB_EVENTS").await.expect("SB_EVENTS");
            if stream.consumer_info(format!("hook-{name}")).await.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hook-runner never consumed for {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A browser token for `user` signed with [`JWT_SECRET`], with extra claims merged in
/// (`admin`, `topics`, `channels`).
pub fn browser_token(user: &str, extra: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let mut claims = json!({ "sub": user, "exp": exp });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

/// Opens `/ws` on ws-push at `http` and signs in with `token`; returns the socket and
/// the `connected` frame.
pub async fn open_browser(http: SocketAddr, token: &str) -> (Socket, Value) {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
        .await
        .expect("websocket");
    send_json(&mut socket, json!({ "type": "connect", "token": token })).await;
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    (socket, connected)
}

/// Sends one JSON frame.
pub async fn send_json(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .expect("send a frame");
}

/// The next JSON text frame (pings and pongs skipped).
pub async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// The next push frame whose `push.type` is `ty`, skipping others.
pub async fn next_push(socket: &mut Socket, ty: &str) -> Value {
    loop {
        let frame = next_json(socket).await;
        if frame["type"] == "push" && frame["push"]["type"] == ty {
            return frame;
        }
    }
}
