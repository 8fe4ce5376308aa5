//! Flow F1, screen pop: a call rings extension 101 on a (simulated) Asterisk; the
//! operator logged in as user 101 gets a push over WebSocket with the caller's number.
//!
//! Asterisk (AMI simulator) -> ami-bridge (`call.ringing`) -> hook-runner with the
//! example rule `examples/rules/f1-screen-pop.yaml` -> `sb.push.user.101` -> ws-push ->
//! the operator's socket. Every part is real: nats-server, the three services
//! in-process, the AMI protocol over TCP, a WebSocket client.

use std::time::Duration;

use serde_json::json;
use switchboard_flows::{
    PATIENCE, browser_token, bus, next_push, open_browser, originate, start_hook_runner, start_pbx, start_ws_push,
};
use switchboard_proto::ami::v1 as ami;
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_a_ringing_call_pops_up_in_the_operators_browser() {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let pbx = start_pbx(&nats, &shutdown).await;

    // hook-runner with the example F1 rule, and ws-push.
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(&nats, &shutdown, rules.path(), &[("f1-screen-pop.yaml", "screen-pop")]).await;
    let push_http = start_ws_push(&nats, &shutdown).await;

    // The operator's browser, signed in as user 101.
    let (mut socket, _) = open_browser(push_http, &browser_token("101", json!({}))).await;

    let reply: ami::ActionResponse = bus(&nats)
        .await
        .request(
            "sb.cmd.ami.pbx1.action",
            &originate("101"),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("ami-bridge takes the Originate");
    assert_eq!(reply.response, "Success");

    // The screen pop reaches the operator's socket.
    let pop = next_push(&mut socket, "call.ringing").await;
    let data = &pop["push"]["data"];
    assert_eq!(data["number"], "5551234", "the caller's number: {pop}");
    assert_eq!(data["name"], "Alice Caller", "the caller's name: {pop}");
    assert_eq!(data["extension"], "101");
    assert_eq!(data["pbx"], "pbx1");
    assert_eq!(pop["source"], "user", "delivered to the user, not broadcast: {pop}");

    shutdown.cancel();
    let stopped = tokio::time::timeout(PATIENCE, pbx.bridge).await;
    assert!(stopped.is_ok(), "ami-bridge did not stop after shutdown");
}
