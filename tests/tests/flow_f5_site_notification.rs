//! Flow F5, site notification: a PHP-style site pushes to a user over ws-push's HTTP API
//! with its API key; every open tab of that user shows it; the call's answer says the
//! user is online, and says offline once the tabs are closed.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_flows::{PATIENCE, PUSH_API_KEY, browser_token, next_push, open_browser, start_ws_push};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

async fn site_publish(http: std::net::SocketAddr, user: &str, text: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/publish"))
        .header("Authorization", format!("Bearer {PUSH_API_KEY}"))
        .json(&json!({
            "target": { "user": user },
            "push": { "type": "notice", "data": { "text": text } },
        }))
        .send()
        .await
        .expect("the site's HTTP call");
    assert_eq!(response.status(), 200, "publish accepted");
    response.json().await.expect("JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_a_site_push_reaches_every_tab_and_reports_presence() {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let http = start_ws_push(&nats, &shutdown).await;

    let (mut tab1, _) = open_browser(http, &browser_token("42", json!({}))).await;
    let (mut tab2, _) = open_browser(http, &browser_token("42", json!({}))).await;

    let answer = site_publish(http, "42", "Your invoice is paid").await;
    assert_eq!(answer["online"], true, "{answer}");
    assert_eq!(answer["connections"], 2, "{answer}");
    for tab in [&mut tab1, &mut tab2] {
        let push = next_push(tab, "notice").await;
        assert_eq!(push["push"]["data"]["text"], "Your invoice is paid");
    }

    // A key that is not the site's is refused.
    let refused = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/publish"))
        .header("Authorization", "Bearer not-the-key")
        .json(&json!({ "target": { "user": "42" }, "push": { "type": "notice", "data": {} } }))
        .send()
        .await
        .expect("HTTP");
    assert_eq!(refused.status(), 401);

    drop(tab1);
    drop(tab2);
    // Presence follows the closes (asynchronously): poll the answer, bounded.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = site_publish(http, "42", "anyone there?").await;
        if answer["online"] == false || answer["online"].is_null() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still online after the tabs closed: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
}
