//! Flow F7, site to IM: a site or a shell script sends an IM. Three ways in, one way
//! out, against a real IRC server (ngircd) with a second IRC user on the other side:
//! - a NATS request `sb.cmd.im.main.send` (any language's NATS client);
//! - a site event `sb.evt.site.shop.notify` routed by the example rule
//!   `examples/rules/f7-site-to-im.yaml` in hook-runner;
//! - a line written to im-bridge's FIFO, as EKG2's `rc` plugin took it.

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;
use switchboard_flows::{PATIENCE, bus, nats_config, start_hook_runner};
use switchboard_proto::im::v1::{SendReply, SendRequest};
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use switchboard_test_support::im::{IrcPeer, Ngircd};
use tokio_util::sync::CancellationToken;

fn irc_account(id: &str, port: u16, nick: &str) -> im_bridge::AccountConfig {
    im_bridge::AccountConfig {
        id: id.to_owned(),
        allow_from: Vec::new(),
        protocol: im_bridge::ProtocolConfig::Irc(im_bridge::IrcConfig {
            server: "127.0.0.1".to_owned(),
            port: Some(port),
            tls: false,
            nick: nick.to_owned(),
            alt_nicks: Vec::new(),
            username: None,
            realname: None,
            server_password: None,
            sasl_user: None,
            sasl_password: None,
            nickserv_password: None,
            channels: Vec::new(),
            rate_burst: 100,
            rate_window: Duration::from_secs(1),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_nats_a_site_event_and_the_fifo_each_deliver_an_im() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let shutdown = CancellationToken::new();
    let work = tempfile::tempdir().expect("temp dir");
    let fifo = work.path().join("im.fifo");

    let mut config = im_bridge::Config {
        nats: nats_config(&nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..im_bridge::Config::default()
    };
    config.script.fifo = Some(fifo.clone());
    config.accounts.push(irc_account("main", ngircd.port, "sbbot"));
    let observer = bus(&nats).await;
    let mut link_up = observer
        .client()
        .subscribe("sb.evt.im.main.link.up")
        .await
        .expect("subscribe");
    let app = im_bridge::App::build(config, shutdown.clone())
        .await
        .expect("im-bridge");
    tokio::spawn(app.run());
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(&nats, &shutdown, rules.path(), &[("f7-site-to-im.yaml", "site-to-im")]).await;
    tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut link_up))
        .await
        .expect("the IRC account comes up");
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;

    // 1. A NATS request.
    let request = SendRequest {
        to: "alice".into(),
        text: "hello from NATS".into(),
        ..Default::default()
    };
    let reply: SendReply = observer
        .request("sb.cmd.im.main.send", &request, Some(Duration::from_secs(10)))
        .await
        .expect("sent");
    assert!(!reply.message_id.is_empty(), "a message id comes back");
    let message = alice.next_privmsg().await;
    assert_eq!(
        (message.from.as_str(), message.text.as_str()),
        ("sbbot", "hello from NATS")
    );

    // 2. A site's event, routed by the example rule.
    let event = observer
        .event(
            "com.example.shop.notify.v1",
            &json!({ "to": "alice", "text": "Order 1234 has shipped" }),
        )
        .expect("event");
    observer
        .publish("sb.evt.site.shop.notify".into(), &event)
        .await
        .expect("publish");
    let message = alice.next_privmsg().await;
    assert_eq!(message.text, "[shop] Order 1234 has shipped");

    // 3. A shell script's line into the FIFO.
    let path = fifo.clone();
    tokio::task::spawn_blocking(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open the FIFO");
        pipe.write_all(b"/msg main alice hello from a script\n")
            .expect("write a line");
    })
    .await
    .expect("writer");
    let message = alice.next_privmsg().await;
    assert_eq!(message.text, "hello from a script");
    shutdown.cancel();
}
