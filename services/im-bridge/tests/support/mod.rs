//! Helpers to run im-bridge in-process against a real nats-server, next to the real
//! IM servers of `switchboard_test_support::im`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use switchboard_test_support::NatsServer;
pub use switchboard_test_support::im::*;
/// A running im-bridge with its shutdown token.
pub struct Running {
    pub shutdown: CancellationToken,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub accounts: im_bridge::Accounts,
    task: Option<tokio::task::JoinHandle<Result<(), im_bridge::Error>>>,
}

impl Running {
    pub async fn start(config: im_bridge::Config) -> Self {
        let shutdown = CancellationToken::new();
        let app = im_bridge::App::build(config, shutdown.clone())
            .await
            .expect("im-bridge builds");
        let grpc = app.grpc_addr();
        let http = app.http_addr();
        let accounts = app.accounts().clone();
        let task = tokio::spawn(app.run());
        Self {
            shutdown,
            grpc,
            http,
            accounts,
            task: Some(task),
        }
    }

    /// Waits until this process holds the lease of every account (it is no
    /// longer on standby), so sends are handled here.
    pub async fn wait_active(&self) {
        tokio::time::timeout(WAIT, async {
            while self
                .accounts
                .list()
                .iter()
                .any(|a| a.state() == switchboard_proto::common::v1::LinkState::Standby)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("accounts leave standby in time");
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(WAIT, task).await.expect("im-bridge stops in time");
            result.expect("task joins").expect("im-bridge ran without error");
        }
    }

    pub async fn grpc_client(
        &self,
    ) -> switchboard_proto::im::v1::im_service_client::ImServiceClient<tonic::transport::Channel> {
        switchboard_proto::im::v1::im_service_client::ImServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("gRPC connects")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A config on free ports against `nats`, with fast reconnects for tests.
pub fn base_config(nats: &NatsServer) -> im_bridge::Config {
    let mut config = im_bridge::Config::default();
    config.nats.url = nats.url();
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.session.reconnect_min = Duration::from_millis(200);
    config.session.reconnect_max = Duration::from_secs(1);
    config.session.lease_ttl = Duration::from_secs(2);
    config.session.connect_timeout = Duration::from_secs(15);
    config
}

/// An IRC account `id` on `ngircd` as `nick` in `channels`, flood limit lifted.
pub fn irc_account(id: &str, port: u16, nick: &str, channels: &[&str]) -> im_bridge::AccountConfig {
    im_bridge::AccountConfig {
        id: id.to_owned(),
        allow_from: Vec::new(),
        protocol: im_bridge::ProtocolConfig::Irc(im_bridge::IrcConfig {
            server: "127.0.0.1".to_owned(),
            port: Some(port),
            tls: false,
            ca_file: None,
            nick: nick.to_owned(),
            alt_nicks: vec![format!("{nick}_")],
            username: None,
            realname: None,
            server_password: None,
            sasl_user: None,
            sasl_password: None,
            nickserv_password: None,
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            rate_burst: 1000,
            rate_window: Duration::from_secs(1),
        }),
    }
}

/// An XMPP account `id` on `prosody` (plaintext, allowed for tests).
pub fn xmpp_account(
    id: &str,
    prosody: &Prosody,
    user: &str,
    password: &str,
    rooms: &[(&str, &str)],
) -> im_bridge::AccountConfig {
    im_bridge::AccountConfig {
        id: id.to_owned(),
        allow_from: Vec::new(),
        protocol: im_bridge::ProtocolConfig::Xmpp(im_bridge::XmppConfig {
            jid: format!("{user}@localhost"),
            password: switchboard_bus::Secret::new(password),
            host: Some("127.0.0.1".to_owned()),
            port: Some(prosody.port),
            tls: im_bridge::XmppTls::Plaintext,
            allow_plaintext: true,
            ca_file: None,
            resource: "switchboard".to_owned(),
            rooms: rooms
                .iter()
                .map(|(jid, nick)| im_bridge::RoomConfig {
                    jid: (*jid).to_owned(),
                    nick: (*nick).to_owned(),
                    password: None,
                })
                .collect(),
        }),
    }
}

/// Subscribes (core NATS) to `subject` before the test triggers anything.
pub async fn subscribe(nats: &NatsServer, subject: String) -> async_nats::Subscriber {
    let client = async_nats::connect(nats.url()).await.expect("NATS connects");
    client.subscribe(subject).await.expect("subscribe")
}

/// The next event on `sub`, decoded.
pub async fn next_event<T: serde::de::DeserializeOwned>(sub: &mut async_nats::Subscriber) -> T {
    use futures::StreamExt;
    let message = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("event arrives in time")
        .expect("subscription open");
    serde_json::from_slice(&message.payload).expect("event payload decodes")
}

/// A bus client for requests.
pub async fn bus(nats: &NatsServer) -> switchboard_bus::Bus {
    let config = switchboard_bus::NatsConfig {
        url: nats.url(),
        ..Default::default()
    };
    switchboard_bus::Bus::connect(&config, "test")
        .await
        .expect("bus connects")
}
