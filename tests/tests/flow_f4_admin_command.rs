//! Flow F4, admin command: an admin's browser asks to run `ping` on a host; the rule
//! `examples/rules/f4-admin-ping.yaml` runs `/usr/bin/ping` with an argument vector (no
//! shell) and the output comes back to that admin's browser, tagged with the asking
//! connection. A non-admin asking gets nothing run, and shell metacharacters in the host
//! never reach a shell.
//!
//! browser -> ws-push inbound (`sb.evt.push.inbound.<user>.admin-ping`) -> hook-runner
//! exec -> `sb.push.user.<user>` -> ws-push -> the same browser.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use switchboard_flows::{
    browser_token, bus, next_json, next_push, open_browser, send_json, start_hook_runner, start_ws_push,
};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_an_admins_browser_runs_ping_and_sees_the_output() {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(&nats, &shutdown, rules.path(), &[("f4-admin-ping.yaml", "admin-ping")]).await;
    let push_http = start_ws_push(&nats, &shutdown).await;
    let observer = bus(&nats).await;
    let mut results = observer
        .client()
        .subscribe("sb.evt.hook.admin-ping.>")
        .await
        .expect("subscribe");

    let admin_claims = json!({ "admin": true, "topics": ["admin-ping"] });
    let (mut admin, connected) = open_browser(push_http, &browser_token("admin1", admin_claims.clone())).await;
    // A second tab of the same admin: pushes go to the user, the frame names the asking connection.
    let (mut other_tab, _) = open_browser(push_http, &browser_token("admin1", admin_claims)).await;

    send_json(
        &mut admin,
        json!({ "type": "publish", "id": "1", "topic": "admin-ping", "data": { "host": "127.0.0.1" } }),
    )
    .await;
    let ack = next_json(&mut admin).await;
    assert_eq!(ack["type"], "published", "the inbound message is stored: {ack}");

    let result = next_push(&mut admin, "admin.ping.result").await;
    let data = &result["push"]["data"];
    assert_eq!(data["host"], "127.0.0.1");
    assert_eq!(data["exitCode"], 0, "ping of loopback succeeds: {result}");
    let output = data["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("127.0.0.1 ping statistics"),
        "ping's own output comes back: {output}"
    );
    let connection = connected["client"]
        .as_str()
        .expect("the connection's id in `connected`");
    assert_eq!(
        data["connection"], connection,
        "tagged with the asking connection: {result}"
    );
    let other = next_push(&mut other_tab, "admin.ping.result").await;
    assert_eq!(
        other["push"]["data"]["connection"], data["connection"],
        "the other tab can tell it did not ask"
    );

    let outcome = tokio::time::timeout(Duration::from_secs(30), results.next())
        .await
        .expect("a result event")
        .expect("subscription open");
    assert_eq!(outcome.subject.as_str(), "sb.evt.hook.admin-ping.succeeded");

    // Shell metacharacters are refused by the rule's condition (and would be one
    // literal argument anyway): nothing runs, so no result comes back.
    send_json(
        &mut admin,
        json!({ "type": "publish", "id": "2", "topic": "admin-ping", "data": { "host": "127.0.0.1; touch /tmp/pwned" } }),
    )
    .await;
    // A non-admin may not even publish on the topic.
    let (mut user, _) = open_browser(push_http, &browser_token("user7", json!({ "topics": ["other"] }))).await;
    send_json(
        &mut user,
        json!({ "type": "publish", "id": "3", "topic": "admin-ping", "data": { "host": "127.0.0.1" } }),
    )
    .await;
    let refused = next_json(&mut user).await;
    assert_eq!(
        refused["type"], "error",
        "a topic the token does not allow is refused: {refused}"
    );
    let nothing = tokio::time::timeout(Duration::from_secs(3), results.next()).await;
    assert!(
        nothing.is_err(),
        "no rule run for the injected or unauthorised requests: {nothing:?}"
    );
    assert!(
        !std::path::Path::new("/tmp/pwned").exists(),
        "no shell ever ran the host text"
    );
    shutdown.cancel();
}
