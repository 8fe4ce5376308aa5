//! Flow F1, screen pop: a call rings extension 101 on a (simulated) Asterisk; the
//! operator logged in as user 101 gets a push over WebSocket with the caller's number.
//!
//! Asterisk (AMI simulator) -> ami-bridge (`call.ringing`) -> hook-runner with the
//! example rule `examples/rules/f1-screen-pop.yaml` -> `sb.push.user.101` -> ws-push ->
//! the operator's socket. Every part is real: nats-server, the three services
//! in-process, the AMI protocol over TCP, a WebSocket client.

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_bus::{Bus, NatsConfig, Secret};
use switchboard_proto::ami::v1 as ami;
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A guard against hangs only; nothing passes or fails on timing.
const PATIENCE: Duration = Duration::from_secs(30);
const JWT_SECRET: &str = "flow-secret";

fn nats_config(nats: &NatsServer) -> NatsConfig {
    NatsConfig {
        url: nats.url(),
        ..Default::default()
    }
}

fn operator_token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_a_ringing_call_pops_up_in_the_operators_browser() {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();

    // The PBX.
    let sim = ami_bridge::sim::SimHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        ami_bridge::sim::SimConfig::default(),
        shutdown.clone(),
    )
    .await
    .expect("AMI simulator");

    // ami-bridge, connected to it.
    let ami_config = ami_bridge::Config {
        nats: nats_config(&nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        pbx: vec![ami_bridge::PbxConfig {
            id: "pbx1".into(),
            host: "127.0.0.1".into(),
            port: sim.addr().port(),
            username: "sb".into(),
            secret: Secret::new("sbsecret"),
            ..ami_bridge::PbxConfig::default()
        }],
        ..ami_bridge::Config::default()
    };
    let ami_app = ami_bridge::App::build(ami_config, shutdown.clone())
        .await
        .expect("ami-bridge");
    let ami_task = tokio::spawn(ami_app.run());

    // hook-runner with the example F1 rule.
    let rules = tempfile::tempdir().expect("rules dir");
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/rules/f1-screen-pop.yaml");
    std::fs::copy(&example, rules.path().join("f1-screen-pop.yaml")).expect("copy the example rule");
    let mut hook_config = hook_runner::Config {
        nats: nats_config(&nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..hook_runner::Config::default()
    };
    hook_config.rules.dir = rules.path().to_path_buf();
    let hook_app = hook_runner::App::build(hook_config, shutdown.clone())
        .await
        .expect("hook-runner");
    let hook_task = tokio::spawn(hook_app.run());

    // ws-push, and the operator's browser connection as user 101.
    let mut push_config = ws_push::Config {
        nats: nats_config(&nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..ws_push::Config::default()
    };
    push_config.auth.jwt_secret = Some(Secret::new(JWT_SECRET));
    let push_app = ws_push::App::build(push_config, shutdown.clone())
        .await
        .expect("ws-push");
    let ws_url = format!("ws://{}/ws", push_app.http_addr());
    let push_task = tokio::spawn(push_app.run());

    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("websocket");
    let connect = json!({ "type": "connect", "token": operator_token("101") });
    socket
        .send(Message::Text(connect.to_string().into()))
        .await
        .expect("send connect");
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");

    // The rule's consumer exists before the call (consumers start at new events).
    let bus = Bus::connect(&nats_config(&nats), "flow-test").await.expect("bus");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stream = bus.jetstream().get_stream("SB_EVENTS").await.expect("SB_EVENTS");
        if stream.consumer_info("hook-screen-pop").await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hook-runner never consumed for screen-pop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And ami-bridge holds its PBX session (the action command is served).
    let originate = ami::ActionRequest {
        action: "Originate".into(),
        headers: [
            ("Channel", "Local/101@from-internal"),
            ("Application", "Wait"),
            ("Data", "1"),
            ("CallerID", "\"Alice Caller\" <5551234>"),
        ]
        .iter()
        .map(|(name, value)| ami::Header {
            name: (*name).into(),
            value: (*value).into(),
        })
        .collect(),
        ..Default::default()
    };
    let mut reply = None;
    while reply.is_none() {
        match bus
            .request::<_, ami::ActionResponse>("sb.cmd.ami.pbx1.action", &originate, Some(Duration::from_secs(10)))
            .await
        {
            Ok(response) => reply = Some(response),
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "ami-bridge never took the Originate: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(reply.expect("reply").response, "Success");

    // The screen pop reaches the operator's socket.
    let pop = loop {
        let frame = next_json(&mut socket).await;
        if frame["type"] == "push" && frame["push"]["type"] == "call.ringing" {
            break frame;
        }
    };
    let data = &pop["push"]["data"];
    assert_eq!(data["number"], "5551234", "the caller's number: {pop}");
    assert_eq!(data["name"], "Alice Caller", "the caller's name: {pop}");
    assert_eq!(data["extension"], "101");
    assert_eq!(data["pbx"], "pbx1");
    assert_eq!(pop["source"], "user", "delivered to the user, not broadcast: {pop}");

    shutdown.cancel();
    let stopped = tokio::time::timeout(PATIENCE, async {
        let _ = ami_task.await;
        let _ = hook_task.await;
        let _ = push_task.await;
    })
    .await;
    assert!(stopped.is_ok(), "the services did not stop after shutdown");
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Value {
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
