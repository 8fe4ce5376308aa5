//! Every service starts in-process on free ports against a real nats-server, reports
//! healthy and ready over HTTP and gRPC, exposes Prometheus metrics and gRPC
//! reflection, and stops cleanly when its shutdown token is cancelled.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_proto::service_names;
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// What one running service exposes.
struct Running {
    http: SocketAddr,
    grpc: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The service names gRPC reflection lists, as `grpcurl list` would print them.
async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("reflection reply").expect("one reply");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("reflection answered {other:?}"),
    }
}

async fn check_serving(name: &str, grpc_service: &str, running: Running) {
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let response = client
            .get(format!("http://{}{path}", running.http))
            .send()
            .await
            .expect("http");
        assert_eq!(response.status(), 200, "{name} {path}");
    }
    let metrics = client
        .get(format!("http://{}/metrics", running.http))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200, "{name} /metrics");
    let content_type = metrics
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    assert!(
        content_type.unwrap_or_default().starts_with("text/plain"),
        "{name} /metrics is Prometheus text"
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("grpc connect");
    let listed = reflected_services(channel.clone()).await;
    assert!(
        listed.iter().any(|s| s == grpc_service),
        "{name}: reflection lists {listed:?}, not {grpc_service}"
    );
    assert!(
        listed.iter().any(|s| s == "grpc.health.v1.Health"),
        "{name}: reflection lists {listed:?}"
    );
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: grpc_service.to_owned(),
        })
        .await
        .expect("grpc health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32, "{name} gRPC health");

    running.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .unwrap_or_else(|_| panic!("{name} did not stop within 10 s"))
        .expect("join");
    assert!(result.is_ok(), "{name} stopped with an error: {result:?}");
    assert!(
        tokio::net::TcpStream::connect(running.http).await.is_err(),
        "{name} still listens on HTTP after shutdown"
    );
}

macro_rules! start {
    ($krate:ident, $nats:expr) => {
        start!($krate, $nats, |_config: &mut $krate::Config| {})
    };
    ($krate:ident, $nats:expr, $adjust:expr) => {{
        let mut config = $krate::Config::default();
        $adjust(&mut config);
        config.nats.url = $nats.url();
        config.http.listen = "127.0.0.1:0".parse().expect("addr");
        config.grpc.listen = "127.0.0.1:0".parse().expect("addr");
        let shutdown = CancellationToken::new();
        let app = $krate::App::build(config, shutdown.clone()).await.expect("build");
        let (http, grpc) = (app.http_addr(), app.grpc_addr());
        let task = tokio::spawn(async move { app.run().await.map_err(anyhow::Error::from) });
        Running {
            http,
            grpc,
            shutdown,
            task,
        }
    }};
}

#[tokio::test]
async fn ami_bridge_serves_health_and_stops() {
    let nats = NatsServer::start().expect("nats-server");
    check_serving("ami-bridge", service_names::AMI, start!(ami_bridge, nats)).await;
}

#[tokio::test]
async fn im_bridge_serves_health_and_stops() {
    let nats = NatsServer::start().expect("nats-server");
    check_serving("im-bridge", service_names::IM, start!(im_bridge, nats)).await;
}

#[tokio::test]
async fn ws_push_serves_health_and_stops() {
    let nats = NatsServer::start().expect("nats-server");
    check_serving("ws-push", service_names::PUSH, start!(ws_push, nats)).await;
}

#[tokio::test]
async fn chat_store_serves_health_and_stops() {
    let nats = NatsServer::start().expect("nats-server");
    let data = tempfile::tempdir().expect("data dir");
    let in_temp_dir = |config: &mut chat_store::Config| config.data_dir = data.path().to_path_buf();
    check_serving("chat-store", service_names::CHAT, start!(chat_store, nats, in_temp_dir)).await;
    assert!(
        data.path().join("chat.db").is_file(),
        "SQLite is the embedded default, in data_dir"
    );
}

#[tokio::test]
async fn hook_runner_serves_health_and_stops() {
    let nats = NatsServer::start().expect("nats-server");
    check_serving("hook-runner", service_names::HOOK, start!(hook_runner, nats)).await;
}
