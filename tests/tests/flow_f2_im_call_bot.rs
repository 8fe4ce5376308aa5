//! Flow F2, IM bot: a user on XMPP (prosody) or IRC (ngircd), a real client either
//! way, writes "call 101" to the bot; the example rule
//! `examples/rules/f2-im-call-bot.yaml` asks ami-bridge to Originate on the
//! (simulated) Asterisk, waits for the OriginateResponse, and answers the user with
//! the result over the same IM. A user not on the rule's list gets nothing.
//!
//! im-bridge (`sb.evt.im.main.message`) -> hook-runner -> `sb.cmd.ami.pbx1.action` ->
//! ami-bridge -> AMI -> back -> `sb.cmd.im.main.send` -> im-bridge -> the IM.

use std::time::Duration;

use switchboard_flows::{ImServer, start_hook_runner, start_im_bridge, start_pbx};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

async fn call_101_places_a_call_and_answers_with_the_result(im: ImServer) {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let _pbx = start_pbx(&nats, &shutdown).await;

    // im-bridge with the bot's account, and hook-runner with the F2 rule.
    start_im_bridge(&nats, &shutdown, im.bot_account("main"), None).await;
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(
        &nats,
        &shutdown,
        rules.path(),
        &[("f2-im-call-bot.yaml", "im-call-bot")],
    )
    .await;

    // A user the rule does not know asks first: nothing is called, nothing answers.
    let bot = im.address("sbbot");
    let mut mallory = im.user("mallory").await;
    mallory.say(&bot, "call 666").await;
    // Alice asks.
    let mut alice = im.user("alice").await;
    alice.say(&bot, "call 101").await;
    let (from, text) = alice.next_message().await;
    assert_eq!(from, bot);
    assert!(
        text.starts_with("Calling 101: Success"),
        "the call's result comes back: {text:?}"
    );

    let nothing = tokio::time::timeout(Duration::from_secs(2), mallory.next_message()).await;
    assert!(nothing.is_err(), "an unlisted sender gets no call and no answer");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_call_101_over_xmpp_places_a_call_and_answers_with_the_result() {
    call_101_places_a_call_and_answers_with_the_result(ImServer::xmpp()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_call_101_over_irc_places_a_call_and_answers_with_the_result() {
    call_101_places_a_call_and_answers_with_the_result(ImServer::irc()).await;
}
