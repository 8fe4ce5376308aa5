//! Graceful shutdown under load, against a real prosody and a real ngircd: while a
//! sender asks im-bridge to send at a steady rate over NATS, the shutdown token is
//! cancelled. Every send im-bridge acknowledged reached the peer, exactly once; the
//! account's `link.down` says im-bridge is stopping; the service stops (bounded by
//! the helpers' hang guard, never timed).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use switchboard_proto::common::v1::LinkState;
use switchboard_proto::im::v1::{LinkEvent, SendReply, SendRequest};
use switchboard_test_support::NatsServer;

/// The sender's pace.
#[derive(Clone, Copy)]
struct Load {
    /// One send every this long, each in its own request so several are in flight.
    period: Duration,
    /// Sends the peer gets before the stop.
    before_stop: usize,
}

/// 500 a second: more than im-bridge sends to prosody one after the other, so
/// requests wait in the account's queue when the stop comes.
const XMPP_LOAD: Load = Load {
    period: Duration::from_millis(2),
    before_stop: 500,
};
/// ngircd holds a client to about 3 lines a second (a penalty that cannot be lifted),
/// so 4 a second keeps a backlog in ngircd at the stop without making the test slow.
const IRC_LOAD: Load = Load {
    period: Duration::from_millis(250),
    before_stop: 10,
};

/// Sends `n` as text to `to` through `sb.cmd.im.<account>.send` until `stop`,
/// recording each request's outcome: `Some(reply)` when acknowledged.
fn spawn_sender(
    bus: switchboard_bus::Bus,
    account: &'static str,
    to: String,
    period: Duration,
    stop: tokio_util::sync::CancellationToken,
    outcomes: Arc<Mutex<HashMap<u64, Option<SendReply>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let subject = format!("sb.cmd.im.{account}.send");
        let mut ticker = tokio::time::interval(period);
        let mut in_flight = Vec::new();
        let mut n = 0u64;
        while !stop.is_cancelled() {
            ticker.tick().await;
            let request = SendRequest {
                to: to.clone(),
                text: format!("soak {n}"),
                ..SendRequest::default()
            };
            let (bus, subject, outcomes) = (bus.clone(), subject.clone(), outcomes.clone());
            in_flight.push(tokio::spawn(async move {
                let reply = bus
                    .request::<_, SendReply>(&subject, &request, Some(Duration::from_secs(5)))
                    .await
                    .ok();
                outcomes.lock().expect("outcomes").insert(n, reply);
            }));
            n += 1;
        }
        for request in in_flight {
            request.await.expect("request task");
        }
    })
}

async fn shutdown_under_load_loses_nothing_acknowledged(
    account: im_bridge::AccountConfig,
    mut peer: ImUser,
    peer_address: &str,
    nats: &NatsServer,
    load: Load,
) {
    let id: &'static str = if matches!(account.protocol, im_bridge::ProtocolConfig::Xmpp(_)) {
        "xmpp"
    } else {
        "irc"
    };
    let mut config = base_config(nats);
    config.accounts.push(account);
    let mut links = subscribe(nats, format!("sb.evt.im.{id}.link.>")).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up);

    let outcomes: Arc<Mutex<HashMap<u64, Option<SendReply>>>> = Arc::default();
    let stop_sending = tokio_util::sync::CancellationToken::new();
    let sender = spawn_sender(
        bus(nats).await,
        id,
        peer_address.to_owned(),
        load.period,
        stop_sending.clone(),
        outcomes.clone(),
    );

    // Read what arrives; stop im-bridge once the traffic is steady.
    let mut received: HashMap<u64, u32> = HashMap::new();
    while received.len() < load.before_stop {
        let (_, text) = peer.next_message().await;
        if let Some(n) = text.strip_prefix("soak ").and_then(|n| n.parse().ok()) {
            *received.entry(n).or_default() += 1;
        }
    }
    let before_stop = received.len();
    bridge.stop().await;
    // Sends after the stop find no one to answer them; then the sender stops.
    tokio::time::sleep(load.period * 10).await;
    stop_sending.cancel();
    sender.await.expect("sender");

    let down: LinkEvent = next_event(&mut links).await;
    assert_eq!(down.state(), LinkState::Down, "{down:?}");
    assert!(
        down.reason.contains("stopping"),
        "link.down names the shutdown: {down:?}"
    );

    // im-bridge's connection is closed, so the server has handed on everything it
    // sent: read until nothing more comes.
    while let Ok((_, text)) = tokio::time::timeout(Duration::from_secs(2), peer.next_message()).await {
        if let Some(n) = text.strip_prefix("soak ").and_then(|n| n.parse().ok()) {
            *received.entry(n).or_default() += 1;
        }
    }

    let outcomes = outcomes.lock().expect("outcomes").clone();
    let acknowledged: Vec<u64> = outcomes
        .iter()
        .filter(|(_, reply)| reply.is_some())
        .map(|(n, _)| *n)
        .collect();
    let refused = outcomes.len() - acknowledged.len();
    assert!(refused > 0, "the sender ran past the stop");
    for n in &acknowledged {
        assert!(
            !outcomes[n].as_ref().is_some_and(|reply| reply.queued),
            "send {n} was queued, not sent, while the link was up"
        );
        assert_eq!(
            received.get(n).copied().unwrap_or(0),
            1,
            "acknowledged send {n} must arrive exactly once ({} acknowledged, {refused} refused)",
            acknowledged.len()
        );
    }
    let duplicated: Vec<_> = received.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicated.is_empty(), "nothing arrives twice: {duplicated:?}");
    let unacknowledged_arrivals = received.keys().filter(|n| !acknowledged.contains(n)).count();
    eprintln!(
        "{id}: {} sends, {before_stop} received before the stop, {} acknowledged, {refused} refused or unanswered, \
         {unacknowledged_arrivals} of those arrived anyway",
        outcomes.len(),
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_shutdown_under_load_delivers_every_acknowledged_send_once() {
    switchboard_runtime::install_crypto_provider();
    let nats = NatsServer::start().expect("nats-server");
    let prosody = Prosody::start(&[("bot", "pw"), ("alice", "pw")]);
    let alice = ImUser::Xmpp(XmppPeer::connect(&prosody, "alice", "pw").await);
    shutdown_under_load_loses_nothing_acknowledged(
        xmpp_account("xmpp", &prosody, "bot", "pw", &[]),
        alice,
        "alice@localhost",
        &nats,
        XMPP_LOAD,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_shutdown_under_load_delivers_every_acknowledged_send_once() {
    switchboard_runtime::install_crypto_provider();
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let alice = ImUser::Irc(IrcPeer::connect(ngircd.port, "alice").await);
    shutdown_under_load_loses_nothing_acknowledged(
        irc_account("irc", ngircd.port, "sbbot", &[]),
        alice,
        "alice",
        &nats,
        IRC_LOAD,
    )
    .await;
}
