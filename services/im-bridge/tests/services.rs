//! SASL PLAIN and NickServ IDENTIFY against a real InspIRCd 3 with Atheme
//! services (NickServ, SaslServ) linked to it, with a real nats-server.

mod support;

use std::time::Duration;

use support::*;
use switchboard_proto::common::v1::LinkState;
use switchboard_proto::im::v1::{LinkEvent, Message};
use switchboard_test_support::NatsServer;

/// The account `irc` as `sbbot` on `services`, with `change` applied.
fn account(services: &IrcServices, change: impl FnOnce(&mut im_bridge::IrcConfig)) -> im_bridge::AccountConfig {
    let mut account = irc_account("irc", services.port, "sbbot", &[]);
    if let im_bridge::ProtocolConfig::Irc(irc) = &mut account.protocol {
        change(irc);
    }
    account
}

/// The services account `nick` is logged in to, as WHOIS shows it (`330`), or
/// None when not logged in.
async fn logged_in_as(peer: &mut IrcPeer, nick: &str) -> Option<String> {
    peer.line(&format!("WHOIS {nick}")).await;
    let mut account = None;
    loop {
        let line = peer
            .wait_for(|l| matches!(l.split(' ').nth(1), Some("330" | "318")))
            .await;
        let fields: Vec<&str> = line.trim_end().split(' ').collect();
        if fields[1] == "318" {
            return account;
        }
        account = fields.get(4).map(|a| (*a).to_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_logs_in_before_registration() {
    let services = IrcServices::start();
    services.register("sbbot", "s3cret").await;
    let nats = NatsServer::start().expect("nats-server");
    let mut config = base_config(&nats);
    config.accounts.push(account(&services, |irc| {
        irc.sasl_user = Some("sbbot".to_owned());
        irc.sasl_password = Some(switchboard_bus::Secret::new("s3cret"));
    }));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let mut messages = subscribe(&nats, "sb.evt.im.irc.message".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(
        (up.state(), up.address.as_str()),
        (LinkState::Up, "sbbot"),
        "{}",
        up.reason
    );

    // Logged in to the services account from the start, and the session works.
    let mut alice = IrcPeer::connect(services.port, "alice").await;
    assert_eq!(logged_in_as(&mut alice, "sbbot").await.as_deref(), Some("sbbot"));
    alice.privmsg("sbbot", "hello authenticated bot").await;
    let message: Message = next_event(&mut messages).await;
    assert_eq!(message.text, "hello authenticated bot");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_wrong_password_is_a_link_down_and_never_registers() {
    let services = IrcServices::start();
    services.register("sbbot", "s3cret").await;
    let nats = NatsServer::start().expect("nats-server");
    let mut config = base_config(&nats);
    config.accounts.push(account(&services, |irc| {
        irc.sasl_user = Some("sbbot".to_owned());
        irc.sasl_password = Some(switchboard_bus::Secret::new("wrong"));
    }));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let bridge = Running::start(config).await;
    let down: LinkEvent = next_event(&mut links).await;
    assert_eq!(down.state(), LinkState::Down);
    assert!(down.reason.starts_with("SASL authentication failed"), "{}", down.reason);
    assert!(!down.reason.contains("wrong"), "the password leaked: {}", down.reason);
    assert_ne!(bridge.accounts.list()[0].state(), LinkState::Up);
    // Not registered unauthenticated: nobody is on the nick.
    let mut alice = IrcPeer::connect(services.port, "alice").await;
    alice.line("WHOIS sbbot").await;
    let reply = alice
        .wait_for(|l| matches!(l.split(' ').nth(1), Some("311" | "401")))
        .await;
    assert_eq!(reply.split(' ').nth(1), Some("401"), "{reply}");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nickserv_identify_after_registration() {
    let services = IrcServices::start();
    services.register("sbbot", "s3cret").await;
    let nats = NatsServer::start().expect("nats-server");
    let mut config = base_config(&nats);
    config.accounts.push(account(&services, |irc| {
        irc.nickserv_password = Some(switchboard_bus::Secret::new("s3cret"));
    }));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(
        (up.state(), up.address.as_str()),
        (LinkState::Up, "sbbot"),
        "{}",
        up.reason
    );

    // IDENTIFY goes after the MOTD; NickServ logs the session in shortly after.
    let mut alice = IrcPeer::connect(services.port, "alice").await;
    let account = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(account) = logged_in_as(&mut alice, "sbbot").await {
                return account;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sbbot never identified: {}", services.log()));
    assert_eq!(account, "sbbot");
    bridge.stop().await;
}
