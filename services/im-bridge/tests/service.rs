//! Service-level behaviour: one active session per account across replicas,
//! gRPC auth and StreamMessages, SASL refusal reported as link down, `/readyz`
//! following the account links.

mod support;

use futures::StreamExt;
use support::*;
use switchboard_proto::common::v1::LinkState;
use switchboard_proto::im::v1::{LinkEvent, ListAccountsRequest, SendRequest, StreamMessagesRequest};
use switchboard_test_support::NatsServer;

fn send(to: &str, text: &str) -> SendRequest {
    SendRequest {
        account: "irc".to_owned(),
        to: to.to_owned(),
        text: text.to_owned(),
        ..SendRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_account_and_a_standby_takes_over() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    config.accounts.push(irc_account("irc", ngircd.port, "sbbot", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let first = Running::start(config.clone()).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!((up.state(), up.address.as_str()), (LinkState::Up, "sbbot"));

    let second = Running::start(config).await;
    // The second replica does not connect while the first holds the lease.
    assert_eq!(second.accounts.list()[0].state(), LinkState::Standby);
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    // A send through the standby's gRPC goes to the holder over the bus.
    let mut grpc = second.grpc_client().await;
    let reply = grpc
        .send(send("alice", "via the standby"))
        .await
        .expect("forwarded send")
        .into_inner();
    assert!(!reply.message_id.is_empty());
    let got = alice.next_privmsg().await;
    assert_eq!((got.from.as_str(), got.text.as_str()), ("sbbot", "via the standby"));

    // The holder stops: its link goes down, the standby takes the lease and connects.
    first.stop().await;
    let down: LinkEvent = next_event(&mut links).await;
    assert_eq!(down.state(), LinkState::Down);
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up);
    assert_eq!(second.accounts.list()[0].state(), LinkState::Up);
    second
        .accounts
        .send(send("alice", "from the new holder"))
        .await
        .expect("send");
    assert_eq!(alice.next_privmsg().await.text, "from the new holder");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_needs_the_token_and_streams_messages() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    config.session.lease = false;
    config.grpc_auth.token = Some(switchboard_bus::Secret::new("t0ken"));
    config.accounts.push(irc_account("irc", ngircd.port, "sbbot", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.up".to_owned()).await;
    let bridge = Running::start(config).await;
    let _: LinkEvent = next_event(&mut links).await;

    let mut anonymous = bridge.grpc_client().await;
    let status = anonymous
        .list_accounts(ListAccountsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", bridge.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let wrong = switchboard_proto::im::v1::im_service_client::ImServiceClient::with_interceptor(
        channel.clone(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Bearer nope".parse().expect("header"));
            Ok(r)
        },
    )
    .list_accounts(ListAccountsRequest {})
    .await
    .expect_err("wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);

    let mut client = switchboard_proto::im::v1::im_service_client::ImServiceClient::with_interceptor(
        channel,
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Bearer t0ken".parse().expect("header"));
            Ok(r)
        },
    );
    let accounts = client
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(accounts.accounts[0].state(), LinkState::Up);

    let unknown = client
        .stream_messages(StreamMessagesRequest {
            accounts: vec!["nope".to_owned()],
        })
        .await
        .expect_err("unknown account");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let mut stream = client
        .stream_messages(StreamMessagesRequest {
            accounts: vec!["irc".to_owned()],
        })
        .await
        .expect("stream")
        .into_inner();
    let mut alice = IrcPeer::connect(ngircd.port, "alice").await;
    alice.privmsg("sbbot", "streamed").await;
    let message = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("a message");
    assert_eq!((message.from.as_str(), message.text.as_str()), ("alice", "streamed"));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_refused_is_a_link_down_with_the_reason() {
    let nats = NatsServer::start().expect("nats-server");
    let ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    let mut account = irc_account("irc", ngircd.port, "sbbot", &[]);
    if let im_bridge::ProtocolConfig::Irc(irc) = &mut account.protocol {
        irc.sasl_user = Some("sbbot".to_owned());
        irc.sasl_password = Some(switchboard_bus::Secret::new("pw"));
    }
    config.accounts.push(account);
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.down".to_owned()).await;
    let bridge = Running::start(config).await;
    let down: LinkEvent = next_event(&mut links).await;
    // ngircd offers no SASL: the connection must fail, not register without it.
    assert!(down.reason.contains("SASL"), "{}", down.reason);
    assert_ne!(bridge.accounts.list()[0].state(), LinkState::Up);
    bridge.stop().await;
}

/// Polls `/readyz` of `bridge` until its status is `want`; returns the body.
async fn readyz_becomes(bridge: &Running, want: reqwest::StatusCode) -> serde_json::Value {
    let url = format!("http://{}/readyz", bridge.http);
    tokio::time::timeout(WAIT, async {
        loop {
            let response = reqwest::get(&url).await.expect("GET /readyz");
            if response.status() == want {
                return response.json().await.expect("JSON body");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/readyz did not become {want}"))
}

fn accounts_check(body: &serde_json::Value) -> &serde_json::Value {
    body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "accounts")
        .expect("an accounts check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_links_of_held_accounts_and_ignores_standby() {
    let nats = NatsServer::start().expect("nats-server");
    let mut ngircd = Ngircd::start();
    let mut config = base_config(&nats);
    config.accounts.push(irc_account("irc", ngircd.port, "sbbot", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.>".to_owned()).await;
    let holder = Running::start(config.clone()).await;
    let up: LinkEvent = next_event(&mut links).await;
    assert_eq!(up.state(), LinkState::Up);
    let body = readyz_becomes(&holder, reqwest::StatusCode::OK).await;
    assert_eq!(accounts_check(&body)["ok"], true);
    let standby = Running::start(config).await;
    assert_eq!(standby.accounts.list()[0].state(), LinkState::Standby);
    readyz_becomes(&standby, reqwest::StatusCode::OK).await;

    // The server goes away: the holder is not ready and says which account and why;
    // the standby, which holds nothing, stays ready.
    ngircd.stop();
    let down: LinkEvent = next_event(&mut links).await;
    assert_eq!(down.state(), LinkState::Down);
    let body = readyz_becomes(&holder, reqwest::StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["ready"], false);
    let check = accounts_check(&body);
    assert_eq!(check["ok"], false);
    let error = check["error"].as_str().expect("error text");
    // Down between attempts, or connecting again; with the last error either way.
    assert!(
        error.starts_with("accounts not up: irc: down (") || error.starts_with("accounts not up: irc: connecting ("),
        "{error}"
    );
    assert_eq!(
        reqwest::get(format!("http://{}/readyz", standby.http))
            .await
            .expect("GET /readyz")
            .status(),
        reqwest::StatusCode::OK
    );

    // Back up: ready again.
    ngircd.restart();
    readyz_becomes(&holder, reqwest::StatusCode::OK).await;
    standby.stop().await;
    holder.stop().await;
}
