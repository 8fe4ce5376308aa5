//! Flow F3, missed call: a call to 102 ends unanswered (the simulated Asterisk
//! reports it busy); ami-bridge derives `sb.evt.ami.pbx1.call.ended` with
//! `missed`; the example rule `examples/rules/f3-missed-call.yaml` asks im-bridge to
//! tell 102's owner, `bob@example.org`, who gets an XMPP message on a real prosody.
//! The same caller trying again within the rule's throttle makes no second alert,
//! and an answered call makes none.

use std::time::Duration;

use switchboard_flows::{ImServer, PATIENCE, bus, originate, start_hook_runner, start_im_bridge, start_pbx};
use switchboard_proto::ami::v1 as ami;
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_an_unanswered_call_to_102_sends_its_owner_one_xmpp_message() {
    let nats = NatsServer::start().expect("nats-server");
    let im = ImServer::xmpp();
    let shutdown = CancellationToken::new();
    let observer = bus(&nats).await;

    let _pbx = start_pbx(&nats, &shutdown).await;
    start_im_bridge(&nats, &shutdown, im.bot_account("main"), None).await;
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(
        &nats,
        &shutdown,
        rules.path(),
        &[("f3-missed-call.yaml", "missed-call-im")],
    )
    .await;
    let mut alice = im.user("alice").await;
    let mut bob = im.user("bob").await;
    let mut ended = observer
        .client()
        .subscribe("sb.evt.ami.pbx1.call.ended")
        .await
        .expect("subscribe");

    // An answered call to 101 (alice's extension) ends: no alert for alice.
    let answered: ami::ActionResponse = observer
        .request(
            "sb.cmd.ami.pbx1.action",
            &originate("101"),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("the Originate to 101 is taken");
    assert_eq!(answered.response, "Success");
    tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut ended))
        .await
        .expect("the answered call ends");

    // A call to 102 that nobody answers: bob is told, once, however often the caller tries.
    for _ in 0..2 {
        let busy: ami::ActionResponse = observer
            .request(
                "sb.cmd.ami.pbx1.action",
                &originate("102"),
                Some(Duration::from_secs(10)),
            )
            .await
            .expect("the Originate to 102 is taken");
        assert_eq!(busy.response, "Success", "the action is accepted; the call then fails");
    }
    let (from, text) = bob.next_message().await;
    assert_eq!(from, im.address("sbbot"));
    assert_eq!(text, "Missed call on 102 from 5551234 (Alice Caller).");
    let second = tokio::time::timeout(Duration::from_secs(2), bob.next_message()).await;
    assert!(
        second.is_err(),
        "the throttle makes one alert of a caller's retries: {second:?}"
    );
    let for_alice = tokio::time::timeout(Duration::from_millis(500), alice.next_message()).await;
    assert!(for_alice.is_err(), "an answered call is not missed: {for_alice:?}");
    shutdown.cancel();
}
