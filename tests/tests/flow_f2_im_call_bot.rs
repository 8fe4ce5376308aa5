//! Flow F2, IM bot: an IRC user (a real client on ngircd) writes "call 101" to the
//! bot; the example rule `examples/rules/f2-im-call-bot.yaml` asks ami-bridge to
//! Originate on the (simulated) Asterisk, waits for the OriginateResponse, and answers
//! the user with the result over IRC. A user not on the rule's list gets nothing.
//!
//! im-bridge (`sb.evt.im.main.message`) -> hook-runner -> `sb.cmd.ami.pbx1.action` ->
//! ami-bridge -> AMI -> back -> `sb.cmd.im.main.send` -> im-bridge -> IRC.

use std::time::Duration;

use switchboard_bus::Secret;
use switchboard_flows::{PATIENCE, bus, nats_config, start_hook_runner};
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
async fn f2_call_101_over_irc_places_a_call_and_answers_with_the_result() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let shutdown = CancellationToken::new();
    let observer = bus(&nats).await;

    // The PBX and ami-bridge.
    let sim = ami_bridge::sim::SimHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        ami_bridge::sim::SimConfig::default(),
        shutdown.clone(),
    )
    .await
    .expect("AMI simulator");
    let mut ami_up = observer
        .client()
        .subscribe("sb.evt.ami.pbx1.link.up")
        .await
        .expect("subscribe");
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
    tokio::spawn(ami_app.run());

    // im-bridge with the bot's IRC account, and hook-runner with the F2 rule.
    let mut im_up = observer
        .client()
        .subscribe("sb.evt.im.main.link.up")
        .await
        .expect("subscribe");
    let mut im_config = im_bridge::Config {
        nats: nats_config(&nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..im_bridge::Config::default()
    };
    im_config.accounts.push(irc_account("main", ngircd.port, "sbbot"));
    let im_app = im_bridge::App::build(im_config, shutdown.clone())
        .await
        .expect("im-bridge");
    tokio::spawn(im_app.run());
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(
        &nats,
        &shutdown,
        rules.path(),
        &[("f2-im-call-bot.yaml", "im-call-bot")],
    )
    .await;
    for (what, link) in [("AMI", &mut ami_up), ("IRC", &mut im_up)] {
        tokio::time::timeout(PATIENCE, futures::StreamExt::next(link))
            .await
            .unwrap_or_else(|_| panic!("the {what} link comes up"));
    }

    // A user the rule does not know asks first: nothing is called, nothing answers.
    let mut mallory = IrcPeer::connect(ngircd.port, "mallory").await;
    mallory.privmsg("sbbot", "call 666").await;
    // Alice asks.
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    alice.privmsg("sbbot", "call 101").await;
    let answer = alice.next_privmsg().await;
    assert_eq!(answer.from, "sbbot");
    assert!(
        answer.text.starts_with("Calling 101: Success"),
        "the call's result comes back: {:?}",
        answer.text
    );

    let nothing = tokio::time::timeout(Duration::from_secs(2), mallory.next_privmsg()).await;
    assert!(nothing.is_err(), "an unlisted sender gets no call and no answer");
    shutdown.cancel();
}
