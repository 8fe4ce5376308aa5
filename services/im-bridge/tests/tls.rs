//! TLS against the real servers with certificates from a private CA made per
//! test: prosody with STARTTLS required and with direct TLS, ngircd on its SSL
//! port; and a server certificate from another CA refused with a clear reason.

mod support;

use std::path::Path;

use support::*;
use switchboard_proto::common::v1::LinkState;
use switchboard_proto::im::v1::{LinkEvent, Message, SendReply, SendRequest};
use switchboard_test_support::NatsServer;

fn send(account: &str, to: &str, text: &str) -> SendRequest {
    SendRequest {
        account: account.to_owned(),
        to: to.to_owned(),
        text: text.to_owned(),
        ..SendRequest::default()
    }
}

/// Account `id` logged in as `user@localhost` on 127.0.0.1:`port` over `tls`,
/// trusting `ca`.
fn xmpp_tls(
    id: &str,
    prosody: &Prosody,
    user: &str,
    port: u16,
    tls: im_bridge::XmppTls,
    ca: &Path,
) -> im_bridge::AccountConfig {
    let mut account = xmpp_account(id, prosody, user, "pw", &[]);
    if let im_bridge::ProtocolConfig::Xmpp(x) = &mut account.protocol {
        x.port = Some(port);
        x.tls = tls;
        x.allow_plaintext = false;
        x.ca_file = Some(ca.to_owned());
    }
    account
}

fn irc_tls(ngircd: &Ngircd, ca: &Path) -> im_bridge::AccountConfig {
    let mut account = irc_account("irc", ngircd.tls_port.expect("TLS port"), "sbbot", &[]);
    if let im_bridge::ProtocolConfig::Irc(irc) = &mut account.protocol {
        irc.tls = true;
        irc.ca_file = Some(ca.to_owned());
    }
    account
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_starttls_and_direct_tls_with_a_private_ca() {
    switchboard_runtime::install_crypto_provider();
    let ca = TestCa::new("switchboard test CA");
    let cert = ca.issue("prosody", &["localhost", "conference.localhost"]);
    let nats = NatsServer::start().expect("nats-server");
    let prosody = Prosody::start_tls("localhost", &[("bot", "pw"), ("alice", "pw")], &cert);
    let direct_port = prosody.direct_tls_port.expect("direct TLS port");
    let mut config = base_config(&nats);
    // STARTTLS on the port that requires encryption, direct TLS on the other.
    let ca_file = ca.cert_file();
    config.accounts.push(xmpp_tls(
        "starttls",
        &prosody,
        "bot",
        prosody.port,
        im_bridge::XmppTls::Starttls,
        &ca_file,
    ));
    config.accounts.push(xmpp_tls(
        "direct",
        &prosody,
        "alice",
        direct_port,
        im_bridge::XmppTls::Direct,
        &ca_file,
    ));
    let mut ups = subscribe(&nats, "sb.evt.im.*.link.up".to_owned()).await;
    let mut messages = subscribe(&nats, "sb.evt.im.direct.message".to_owned()).await;
    let bridge = Running::start(config).await;
    for _ in 0..2 {
        let up: LinkEvent = next_event(&mut ups).await;
        assert_eq!(up.state(), LinkState::Up, "{}", prosody.log());
    }
    let states: Vec<_> = bridge.accounts.list().iter().map(|a| a.state()).collect();
    assert_eq!(states, [LinkState::Up, LinkState::Up]);

    // From the STARTTLS session to the direct TLS one, through prosody.
    let bus = bus(&nats).await;
    let reply: SendReply = bus
        .request(
            "sb.cmd.im.starttls.send",
            &send("", "alice@localhost", "über TLS"),
            None,
        )
        .await
        .expect("send over the bus");
    let received: Message = next_event(&mut messages).await;
    assert_eq!(
        (
            received.from.as_str(),
            received.text.as_str(),
            received.message_id.as_str()
        ),
        ("bot@localhost", "über TLS", reply.message_id.as_str())
    );
    // prosody logs one "Stream encrypted (TLSv1.3 with ...)" per client session.
    assert!(
        prosody.log().matches("Stream encrypted (TLS").count() >= 2,
        "prosody did not see two encrypted sessions: {}",
        prosody.log()
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_certificate_from_another_ca_is_refused() {
    switchboard_runtime::install_crypto_provider();
    let server_ca = TestCa::new("server CA");
    let trusted_ca = TestCa::new("some other CA");
    let cert = server_ca.issue("prosody", &["localhost"]);
    let nats = NatsServer::start().expect("nats-server");
    let prosody = Prosody::start_tls("localhost", &[("bot", "pw")], &cert);
    let direct_port = prosody.direct_tls_port.expect("direct TLS port");
    let mut config = base_config(&nats);
    let ca_file = trusted_ca.cert_file();
    config.accounts.push(xmpp_tls(
        "starttls",
        &prosody,
        "bot",
        prosody.port,
        im_bridge::XmppTls::Starttls,
        &ca_file,
    ));
    config.accounts.push(xmpp_tls(
        "direct",
        &prosody,
        "bot",
        direct_port,
        im_bridge::XmppTls::Direct,
        &ca_file,
    ));
    let mut downs = subscribe(&nats, "sb.evt.im.*.link.down".to_owned()).await;
    let bridge = Running::start(config).await;
    for _ in 0..2 {
        let down: LinkEvent = next_event(&mut downs).await;
        assert!(
            down.reason.contains("TLS handshake") && down.reason.contains("UnknownIssuer"),
            "{}",
            down.reason
        );
    }
    for account in bridge.accounts.list() {
        assert_ne!(account.state(), LinkState::Up, "{}", account.id);
        assert!(account.last_error.contains("certificate"), "{}", account.last_error);
    }
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_tls_with_a_private_ca() {
    switchboard_runtime::install_crypto_provider();
    let ca = TestCa::new("switchboard test CA");
    let cert = ca.issue("ngircd", &["127.0.0.1"]);
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start_tls(&cert);
    let mut config = base_config(&nats);
    config.accounts.push(irc_tls(&ngircd, &ca.cert_file()));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let mut messages = subscribe(&nats, "sb.evt.im.irc.message".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up, "{}", up.reason);

    // alice on the plain port, the bridge on the TLS port: both ways.
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    alice.privmsg("sbbot", "hello over TLS").await;
    let message: Message = next_event(&mut messages).await;
    assert_eq!(
        (message.from.as_str(), message.text.as_str()),
        ("alice", "hello over TLS")
    );
    let bus = bus(&nats).await;
    let _: SendReply = bus
        .request("sb.cmd.im.irc.send", &send("", "alice", "zażółć over TLS"), None)
        .await
        .expect("send over the bus");
    let got = alice.next_privmsg().await;
    assert_eq!((got.from.as_str(), got.text.as_str()), ("sbbot", "zażółć over TLS"));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_certificate_from_another_ca_is_refused() {
    switchboard_runtime::install_crypto_provider();
    let server_ca = TestCa::new("server CA");
    let trusted_ca = TestCa::new("some other CA");
    let cert = server_ca.issue("ngircd", &["127.0.0.1"]);
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start_tls(&cert);
    let mut config = base_config(&nats);
    config.accounts.push(irc_tls(&ngircd, &trusted_ca.cert_file()));
    let mut downs = subscribe(&nats, "sb.evt.im.irc.link.down".to_owned()).await;
    let bridge = Running::start(config).await;
    let down: LinkEvent = next_event(&mut downs).await;
    assert!(
        down.reason.contains("certificate") && down.reason.contains("UnknownIssuer"),
        "{}",
        down.reason
    );
    assert_ne!(bridge.accounts.list()[0].state(), LinkState::Up);
    bridge.stop().await;
}
