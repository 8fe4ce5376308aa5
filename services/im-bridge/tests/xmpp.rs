//! XMPP against a real prosody with a second account on the other side
//! (`XmppPeer`, a tokio-xmpp client), with a real nats-server.

mod support;

use support::*;
use switchboard_proto::common::v1::LinkState;
use switchboard_proto::im::v1::{ChatKind, LinkEvent, Message, Presence, Protocol, SendRequest};
use switchboard_test_support::NatsServer;
use tokio_xmpp::parsers::message::MessageType;

const ROOM: &str = "ops@conference.localhost";

fn send(to: &str, text: &str) -> SendRequest {
    SendRequest {
        account: "xmpp".to_owned(),
        to: to.to_owned(),
        text: text.to_owned(),
        ..SendRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_direct_and_room_messages_both_ways_and_presence() {
    switchboard_runtime::install_crypto_provider();
    let nats = NatsServer::start().expect("nats-server");
    let prosody = Prosody::start(&[("bot", "pw"), ("alice", "pw")]);
    let mut config = base_config(&nats);
    config
        .accounts
        .push(xmpp_account("xmpp", &prosody, "bot", "pw", &[(ROOM, "bot")]));
    let mut links = subscribe(&nats, "sb.evt.im.xmpp.link.>".to_owned()).await;
    let mut messages = subscribe(&nats, "sb.evt.im.xmpp.message".to_owned()).await;
    let mut presences = subscribe(&nats, "sb.evt.im.xmpp.presence".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up, "{}", prosody.log());
    assert!(up.address.starts_with("bot@localhost/"), "{}", up.address);

    let mut alice = XmppPeer::connect(&prosody, "alice", "pw").await;
    alice.join(ROOM, "alice").await;
    // alice entering the room is presence the bridge reports.
    let joined: Presence = tokio::time::timeout(WAIT, async {
        loop {
            let p: Presence = next_event(&mut presences).await;
            if p.room == ROOM && p.from == "alice" {
                return p;
            }
        }
    })
    .await
    .expect("room presence");
    assert!(joined.available);

    // Inbound direct, with XML-special and non-ASCII text.
    let tricky = "<b>&amp; \"quotes\" 'zażółć' съешь 😀</b>";
    alice.say("bot@localhost", tricky, MessageType::Chat).await;
    let direct: Message = next_event(&mut messages).await;
    assert_eq!(
        (
            direct.kind(),
            direct.protocol(),
            direct.from.as_str(),
            direct.text.as_str()
        ),
        (ChatKind::Direct, Protocol::Xmpp, "alice@localhost", tricky)
    );
    assert_eq!(direct.to, "bot@localhost");

    // Inbound room message.
    alice.say(ROOM, "hello room", MessageType::Groupchat).await;
    let group: Message = tokio::time::timeout(WAIT, async {
        loop {
            let m: Message = next_event(&mut messages).await;
            if m.kind() == ChatKind::Group {
                return m;
            }
        }
    })
    .await
    .expect("room message");
    assert_eq!(
        (group.room.as_str(), group.from.as_str(), group.text.as_str()),
        (ROOM, "alice", "hello room")
    );

    // Outbound direct over gRPC, with CR/LF and markup kept as text.
    let mut grpc = bridge.grpc_client().await;
    let text = "line one\r\nline <two> & three";
    grpc.send(send("alice@localhost", text)).await.expect("gRPC send");
    let (type_, from, body) = alice.next_message(MessageType::Chat).await;
    assert_eq!(type_, MessageType::Chat);
    assert!(from.starts_with("bot@localhost"), "{from}");
    assert_eq!(body.replace("\r\n", "\n"), text.replace("\r\n", "\n"));

    // Outbound to the room over the bus.
    let bus = bus(&nats).await;
    let reply: switchboard_proto::im::v1::SendReply = bus
        .request("sb.cmd.im.xmpp.send", &send(ROOM, "hello from the bus"), None)
        .await
        .expect("bus send");
    assert!(!reply.message_id.is_empty());
    let (type_, from, body) = alice.next_message(MessageType::Groupchat).await;
    assert_eq!(
        (type_, from.as_str(), body.as_str()),
        (
            MessageType::Groupchat,
            "ops@conference.localhost/bot",
            "hello from the bus"
        )
    );

    // A long text goes as one stanza.
    let long: String = "ąę".repeat(1000);
    grpc.send(send("alice@localhost", &long)).await.expect("long send");
    assert_eq!(alice.next_message(MessageType::Chat).await.2, long);

    // Invalid recipient.
    let status = grpc.send(send("not a jid@@", "x")).await.expect_err("invalid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_reconnects_after_server_restart_and_rejoins_room() {
    switchboard_runtime::install_crypto_provider();
    let nats = NatsServer::start().expect("nats-server");
    let mut prosody = Prosody::start(&[("bot", "pw"), ("alice", "pw")]);
    let mut config = base_config(&nats);
    config
        .accounts
        .push(xmpp_account("xmpp", &prosody, "bot", "pw", &[(ROOM, "bot")]));
    let mut links = subscribe(&nats, "sb.evt.im.xmpp.link.>".to_owned()).await;
    let mut messages = subscribe(&nats, "sb.evt.im.xmpp.message".to_owned()).await;
    let bridge = Running::start(config).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up);

    prosody.restart();
    let down: LinkEvent = next_event(&mut links).await;
    assert_eq!(down.state(), LinkState::Down);
    let up: LinkEvent = tokio::time::timeout(WAIT, async {
        loop {
            let e: LinkEvent = next_event(&mut links).await;
            if e.state() == LinkState::Up {
                return e;
            }
        }
    })
    .await
    .expect("link up again");
    assert_eq!(up.state(), LinkState::Up);

    // Rejoined: alice in the room hears the bridge and the bridge hears alice.
    let mut alice = XmppPeer::connect(&prosody, "alice", "pw").await;
    alice.join(ROOM, "alice").await;
    bridge
        .accounts
        .send(send(ROOM, "back in the room"))
        .await
        .expect("room send");
    let (_, _, body) = alice.next_message(MessageType::Groupchat).await;
    assert_eq!(body, "back in the room");
    alice.say(ROOM, "welcome back", MessageType::Groupchat).await;
    let m: Message = tokio::time::timeout(WAIT, async {
        loop {
            let m: Message = next_event(&mut messages).await;
            if m.kind() == ChatKind::Group {
                return m;
            }
        }
    })
    .await
    .expect("room message after reconnect");
    assert_eq!(m.text, "welcome back");
    bridge.stop().await;
}
