//! Flow F7, site to IM: a site or a shell script sends an IM. Three ways in, one way
//! out, against a real XMPP server (prosody) and a real IRC server (ngircd), with a
//! second user on the other side:
//! - a NATS request `sb.cmd.im.main.send` (any language's NATS client);
//! - a site event `sb.evt.site.shop.notify` routed by the example rule
//!   `examples/rules/f7-site-to-im.yaml` in hook-runner;
//! - a line written to im-bridge's FIFO, as EKG2's `rc` plugin took it.

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;
use switchboard_flows::{ImServer, bus, start_hook_runner, start_im_bridge};
use switchboard_proto::im::v1::{SendReply, SendRequest};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

async fn nats_a_site_event_and_the_fifo_each_deliver_an_im(im: ImServer) {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let work = tempfile::tempdir().expect("temp dir");
    let fifo = work.path().join("im.fifo");
    let observer = bus(&nats).await;
    start_im_bridge(&nats, &shutdown, im.bot_account("main"), Some(fifo.clone())).await;
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(&nats, &shutdown, rules.path(), &[("f7-site-to-im.yaml", "site-to-im")]).await;
    let mut alice = im.user("alice").await;
    let (alice_address, bot) = (im.address("alice"), im.address("sbbot"));

    // 1. A NATS request.
    let request = SendRequest {
        to: alice_address.clone(),
        text: "hello from NATS".into(),
        ..Default::default()
    };
    let reply: SendReply = observer
        .request("sb.cmd.im.main.send", &request, Some(Duration::from_secs(10)))
        .await
        .expect("sent");
    assert!(!reply.message_id.is_empty(), "a message id comes back");
    assert_eq!(alice.next_message().await, (bot.clone(), "hello from NATS".to_owned()));

    // 2. A site's event, routed by the example rule.
    let event = observer
        .event(
            "com.example.shop.notify.v1",
            &json!({ "to": alice_address, "text": "Order 1234 has shipped" }),
        )
        .expect("event");
    observer
        .publish("sb.evt.site.shop.notify".into(), &event)
        .await
        .expect("publish");
    assert_eq!(alice.next_message().await.1, "[shop] Order 1234 has shipped");

    // 3. A shell script's line into the FIFO.
    let path = fifo.clone();
    let line = format!("/msg main {alice_address} hello from a script\n");
    tokio::task::spawn_blocking(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the FIFO");
        pipe.write_all(line.as_bytes()).expect("write a line");
    })
    .await
    .expect("writer");
    assert_eq!(alice.next_message().await.1, "hello from a script");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_nats_a_site_event_and_the_fifo_each_deliver_an_xmpp_message() {
    nats_a_site_event_and_the_fifo_each_deliver_an_im(ImServer::xmpp()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_nats_a_site_event_and_the_fifo_each_deliver_an_irc_message() {
    nats_a_site_event_and_the_fifo_each_deliver_an_im(ImServer::irc()).await;
}
