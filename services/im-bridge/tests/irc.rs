//! IRC against a real ngircd and a second (raw) IRC client, with a real nats-server.

mod support;

use support::*;
use switchboard_bus::CommandError;
use switchboard_proto::common::v1::{ErrorCode, LinkState};
use switchboard_proto::im::v1::{ChatKind, LinkEvent, ListAccountsRequest, Message, Protocol, SendReply, SendRequest};
use switchboard_test_support::NatsServer;

fn send(account: &str, to: &str, text: &str) -> SendRequest {
    SendRequest {
        account: account.to_owned(),
        to: to.to_owned(),
        text: text.to_owned(),
        ..SendRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_messages_both_ways_direct_and_channel() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    config
        .accounts
        .push(irc_account("irc", ngircd.port, "sbbot", &["#ops"]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let mut messages = subscribe(&nats, "sb.evt.im.irc.message".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up);
    assert_eq!(up.address, "sbbot");

    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    alice.join("#ops").await;

    // Inbound direct and channel messages become events.
    alice.privmsg("sbbot", "hello bot").await;
    let direct: Message = next_event(&mut messages).await;
    assert_eq!(
        (
            direct.kind(),
            direct.protocol(),
            direct.from.as_str(),
            direct.to.as_str(),
            direct.text.as_str()
        ),
        (ChatKind::Direct, Protocol::Irc, "alice", "sbbot", "hello bot")
    );
    assert!(direct.from_full.starts_with("alice!"));
    assert!(!direct.message_id.is_empty());
    alice.privmsg("#ops", "hello channel").await;
    let group: Message = next_event(&mut messages).await;
    assert_eq!(
        (group.kind(), group.room.as_str(), group.text.as_str()),
        (ChatKind::Group, "#ops", "hello channel")
    );

    // Outbound over the bus command, direct.
    let bus = bus(&nats).await;
    let reply: SendReply = bus
        .request("sb.cmd.im.irc.send", &send("", "alice", "over the bus"), None)
        .await
        .expect("send over the bus");
    assert!(!reply.message_id.is_empty());
    assert!(!reply.queued);
    let got = alice.next_privmsg().await;
    assert_eq!(
        (got.from.as_str(), got.target.as_str(), got.text.as_str()),
        ("sbbot", "alice", "over the bus")
    );

    // Outbound over gRPC, to the channel.
    let mut grpc = bridge.grpc_client().await;
    let reply = grpc
        .send(send("irc", "#ops", "over gRPC"))
        .await
        .expect("gRPC send")
        .into_inner();
    assert_eq!(reply.parts, 1);
    let got = alice.next_privmsg().await;
    assert_eq!((got.target.as_str(), got.text.as_str()), ("#ops", "over gRPC"));

    // ListAccounts shows the state.
    let accounts = grpc
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 1);
    assert_eq!((accounts[0].id.as_str(), accounts[0].state()), ("irc", LinkState::Up));
    assert_eq!(accounts[0].rooms, vec!["#ops".to_owned()]);

    // Prometheus counters.
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.http))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    // Other tests in this binary share the process-wide recorder and the account
    // id, so the counts are at least ours.
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{account=\"irc\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
    };
    assert!(value("im_messages_received_total") >= 2.0);
    assert!(value("im_messages_sent_total") >= 2.0);
    assert!(value("im_link_up") <= 1.0);

    bridge.stop().await;
    let down: LinkEvent = next_event(&mut links).await;
    assert_eq!(down.state(), LinkState::Down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_long_non_ascii_and_cr_lf_text() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    config.accounts.push(irc_account("irc", ngircd.port, "sbbot", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.up".to_owned()).await;
    let bridge = Running::start(config).await;
    let _: LinkEvent = next_event(&mut links).await;
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;

    // 2 KB of Polish, Russian and emoji: split under the line limit, on character
    // boundaries, nothing lost.
    let text = "zażółć gęślą jaźń съешь же ещё 😀 ".repeat(40);
    let reply = bridge
        .accounts
        .send(send("irc", "alice", &text))
        .await
        .expect("long send");
    assert!(reply.parts > 3, "parts = {}", reply.parts);
    let mut received = Vec::new();
    for _ in 0..reply.parts {
        let line = alice.next_privmsg().await;
        assert!(line.raw_len <= 512, "a line of {} bytes reached the peer", line.raw_len);
        received.push(line.text);
    }
    let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    assert_eq!(squash(&received.concat()), squash(&text));

    // CR/LF cannot inject a command: each line is its own PRIVMSG.
    let reply = bridge
        .accounts
        .send(send("irc", "alice", "first\r\nQUIT :injected\nJOIN #evil"))
        .await
        .expect("CR/LF send");
    assert_eq!(reply.parts, 3);
    for expected in ["first", "QUIT :injected", "JOIN #evil"] {
        assert_eq!(alice.next_privmsg().await.text, expected);
    }
    // A retry with the same client_id is answered, not sent again.
    let mut once = send("irc", "alice", "exactly once");
    once.client_id = "retry-1".to_owned();
    let first = bridge.accounts.send(once.clone()).await.expect("first");
    let again = bridge.accounts.send(once).await.expect("retry");
    assert_eq!(first.message_id, again.message_id);
    assert_eq!(alice.next_privmsg().await.text, "exactly once");

    // Still connected and usable after it (and the retry was not delivered: the
    // next line the peer sees is this one).
    bridge
        .accounts
        .send(send("irc", "alice", "still here"))
        .await
        .expect("send after CR/LF");
    assert_eq!(alice.next_privmsg().await.text, "still here");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_send_errors_are_clear() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    config.outbound.max_text_bytes = 100;
    config.accounts.push(irc_account("irc", ngircd.port, "sbbot", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.up".to_owned()).await;
    let bridge = Running::start(config).await;
    let _: LinkEvent = next_event(&mut links).await;
    let bus = bus(&nats).await;
    let refused = |r: Result<SendReply, CommandError>| match r {
        Err(CommandError::Rejected { error, .. }) => (error.code(), error.message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (code, message) = refused(
        bus.request("sb.cmd.im.irc.send", &send("", "bad nick", "x"), None)
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("invalid recipient"), "{message}");
    let (code, message) = refused(
        bus.request("sb.cmd.im.irc.send", &send("", "alice", &"x".repeat(101)), None)
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("too long"), "{message}");
    let (code, _) = refused(
        bus.request("sb.cmd.im.irc.send", &send("", "alice", " \r\n "), None)
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidArgument);

    let mut grpc = bridge.grpc_client().await;
    let status = grpc
        .send(send("nope", "alice", "x"))
        .await
        .expect_err("unknown account");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("unknown account"));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_nick_fallback_when_taken() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let _squatter = IrcPeer::connect(ngircd.port, "sbbot").await;
    let mut config = base_config(&nats);
    config.accounts.push(irc_account("irc", ngircd.port, "sbbot", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.up".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.address, "sbbot_");
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    bridge
        .accounts
        .send(send("irc", "alice", "from the fallback nick"))
        .await
        .expect("send");
    let got = alice.next_privmsg().await;
    assert_eq!(got.from, "sbbot_");
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_allow_list_drops_other_senders() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    let mut account = irc_account("irc", ngircd.port, "sbbot", &[]);
    account.allow_from = vec!["Alice".to_owned()];
    config.accounts.push(account);
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.up".to_owned()).await;
    let mut messages = subscribe(&nats, "sb.evt.im.irc.message".to_owned()).await;
    let bridge = Running::start(config).await;
    let _: LinkEvent = next_event(&mut links).await;
    let mut mallory = IrcPeer::connect(ngircd.port, "mallory").await;
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    mallory.privmsg("sbbot", "call 666").await;
    // The server relays in order per connection; make sure mallory's line was
    // processed before alice speaks by round-tripping a PING.
    mallory.line("PING :sync").await;
    mallory.wait_for(|l| l.contains("PONG")).await;
    alice.privmsg("sbbot", "call 101").await;
    let first: Message = next_event(&mut messages).await;
    assert_eq!((first.from.as_str(), first.text.as_str()), ("alice", "call 101"));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_reconnects_after_server_restart_and_flushes_queue() {
    let nats = NatsServer::start().expect("nats-server");
    let mut ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    config
        .accounts
        .push(irc_account("irc", ngircd.port, "sbbot", &["#ops"]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up);

    ngircd.stop();
    let down: LinkEvent = next_event(&mut links).await;
    assert_eq!(down.state(), LinkState::Down);
    assert!(!down.reason.is_empty());
    // While down: queued, not lost.
    let reply = bridge
        .accounts
        .send(send("irc", "#ops", "sent while down"))
        .await
        .expect("queued");
    assert!(reply.queued);
    let listed = bridge.accounts.list();
    assert_ne!(listed[0].state(), LinkState::Up);
    assert_eq!(listed[0].queued, 1);

    ngircd.restart();
    // A peer in the channel before the bridge comes back sees the queued message.
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    alice.join("#ops").await;
    loop {
        let event: LinkEvent = next_event(&mut links).await;
        if event.state() == LinkState::Up {
            break;
        }
    }
    let got = alice.next_privmsg().await;
    assert_eq!((got.target.as_str(), got.text.as_str()), ("#ops", "sent while down"));
    // The channel was rejoined: a channel message reaches the bridge again.
    bridge
        .accounts
        .send(send("irc", "#ops", "back"))
        .await
        .expect("send after reconnect");
    assert_eq!(alice.next_privmsg().await.text, "back");
    assert_eq!(bridge.accounts.list()[0].state(), LinkState::Up);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_down_reject_and_queue_full() {
    let nats = NatsServer::start().expect("nats-server");
    // Nothing listens on this port: the account never comes up.
    let port = switchboard_test_support::free_port();
    let mut config = base_config(&nats);
    config.outbound.while_down = im_bridge::WhileDown::Reject;
    config.accounts.push(irc_account("irc", port, "sbbot", &[]));
    let bridge = Running::start(config.clone()).await;
    bridge.wait_active().await;
    let err = bridge
        .accounts
        .send(send("irc", "alice", "x"))
        .await
        .expect_err("refused while down");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(err.to_string().contains("not connected"), "{err}");
    bridge.stop().await;

    config.outbound.while_down = im_bridge::WhileDown::Queue;
    config.outbound.queue_max = 1;
    let bridge = Running::start(config).await;
    bridge.wait_active().await;
    let first = bridge.accounts.send(send("irc", "alice", "x")).await.expect("queued");
    assert!(first.queued);
    let err = bridge
        .accounts
        .send(send("irc", "alice", "y"))
        .await
        .expect_err("queue full");
    assert_eq!(err.code(), ErrorCode::ResourceExhausted);
    bridge.stop().await;
}
