//! Shared test helpers: a real nats-server, the app in-process, tokens, WebSocket clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use switchboard_bus::{Bus, NatsConfig, Secret};
use switchboard_runtime::{GrpcConfig, HttpConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use ws_push::{App, Config};

pub(crate) const SECRET: &str = "test-secret";
pub(crate) const API_KEY: &str = "site-key-1";

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) fn config(nats_url: &str) -> Config {
    let mut config = Config {
        nats: NatsConfig {
            url: nats_url.to_owned(),
            ..Default::default()
        },
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..Default::default()
    };
    config.auth.jwt_secret = Some(Secret::new(SECRET));
    config.api.keys = vec![Secret::new(API_KEY)];
    config.presence.ttl = Duration::from_secs(3);
    config.presence.heartbeat = Duration::from_secs(1);
    config
}

pub(crate) struct Running {
    pub(crate) http: SocketAddr,
    pub(crate) grpc: SocketAddr,
    pub(crate) node: String,
    pub(crate) interest: std::sync::Arc<ws_push::interest::Interest>,
    pub(crate) stop: CancellationToken,
    pub(crate) task: tokio::task::JoinHandle<Result<(), ws_push::Error>>,
}

impl Running {
    pub(crate) async fn start(config: Config) -> Self {
        let stop = CancellationToken::new();
        let app = App::build(config, stop.clone()).await.expect("app builds");
        let http = app.http_addr();
        let grpc = app.grpc_addr();
        let node = app.node_name().to_owned();
        let interest = app.interest();
        let task = tokio::spawn(app.run());
        Self {
            http,
            grpc,
            node,
            interest,
            stop,
            task,
        }
    }

    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    pub(crate) fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub(crate) fn token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now() + 600, "channels": ["news", "room.*"], "topics": ["command"]}))
}

pub(crate) fn admin_token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now() + 600, "channels": ["*"], "topics": ["*"], "admin": true}))
}

pub(crate) async fn open(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
    ws
}

pub(crate) async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into())).await.expect("send");
}

/// The next JSON text message (pings are skipped), or panics after 10 s.
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("no error");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Waits for the close frame and returns its code (pushes and pings are skipped).
pub(crate) async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("close within 15 s");
        match message {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Connects with `token` (sent in the connect message) and returns the socket and
/// the `connected` reply.
pub(crate) async fn connect(app: &Running, token: &str) -> (Ws, Value) {
    let mut ws = open(&app.ws_url()).await;
    send(&mut ws, json!({"type": "connect", "token": token})).await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    (ws, connected)
}

pub(crate) async fn bus(nats_url: &str) -> Bus {
    Bus::connect(
        &NatsConfig {
            url: nats_url.to_owned(),
            ..Default::default()
        },
        "test",
    )
    .await
    .expect("test bus")
}

/// Publishes a push as any backend would: straight to SB_PUSH. Returns the offset.
pub(crate) async fn push(bus: &Bus, subject: String, kind: &str, data: Value) -> u64 {
    let event = bus
        .event(switchboard_bus::event_types::PUSH, &json!({"type": kind, "data": data}))
        .unwrap();
    bus.publish(subject, &event).await.expect("push published").sequence
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Polls `check` every 50 ms until it returns Some, for at most 15 s.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
