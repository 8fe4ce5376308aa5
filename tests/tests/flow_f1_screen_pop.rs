//! Flow F1, screen pop: a call rings extension 101 on a (simulated) Asterisk; the
//! operator logged in as user 101 gets a push over WebSocket with the caller's number.
//!
//! Asterisk (AMI simulator) -> ami-bridge (`call.ringing`) -> hook-runner with the
//! example rule `examples/rules/f1-screen-pop.yaml` -> `sb.push.user.101` -> ws-push ->
//! the operator's socket. Every part is real: nats-server, the three services
//! in-process, the AMI protocol over TCP, a WebSocket client.

use std::time::Duration;

use serde_json::json;
use switchboard_bus::Secret;
use switchboard_flows::{
    PATIENCE, browser_token, bus, nats_config, next_push, open_browser, start_hook_runner, start_ws_push,
};
use switchboard_proto::ami::v1 as ami;
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

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

    // hook-runner with the example F1 rule, and ws-push.
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(&nats, &shutdown, rules.path(), &[("f1-screen-pop.yaml", "screen-pop")]).await;
    let push_http = start_ws_push(&nats, &shutdown).await;

    // The operator's browser, signed in as user 101.
    let (mut socket, _) = open_browser(push_http, &browser_token("101", json!({}))).await;

    let bus = bus(&nats).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
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
    let pop = next_push(&mut socket, "call.ringing").await;
    let data = &pop["push"]["data"];
    assert_eq!(data["number"], "5551234", "the caller's number: {pop}");
    assert_eq!(data["name"], "Alice Caller", "the caller's name: {pop}");
    assert_eq!(data["extension"], "101");
    assert_eq!(data["pbx"], "pbx1");
    assert_eq!(pop["source"], "user", "delivered to the user, not broadcast: {pop}");

    shutdown.cancel();
    let stopped = tokio::time::timeout(PATIENCE, ami_task).await;
    assert!(stopped.is_ok(), "ami-bridge did not stop after shutdown");
}
