//! Shared helpers for the cross-service tests in `tests/tests/`: start services
//! in-process against one real nats-server, and talk to ws-push as a browser would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_bus::{Bus, NatsConfig, Secret};
use switchboard_proto::ami::v1 as ami;
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
pub use switchboard_test_support::im::ImUser;
use switchboard_test_support::im::{IrcPeer, Ngircd, Prosody, XmppPeer};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A guard against hangs only; no flow passes or fails on timing.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The JWT secret ws-push verifies browser tokens with in the flows.
pub const JWT_SECRET: &str = "flow-secret";
/// The API key sites use for ws-push's HTTP API in the flows.
pub const PUSH_API_KEY: &str = "flow-site-key";

/// A browser's WebSocket connection.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The NATS settings of a service on `nats`.
pub fn nats_config(nats: &NatsServer) -> NatsConfig {
    NatsConfig {
        url: nats.url(),
        ..Default::default()
    }
}

/// A client of the bus, as a test's own observer.
pub async fn bus(nats: &NatsServer) -> Bus {
    Bus::connect(&nats_config(nats), "flow-test").await.expect("bus")
}

/// An example rule file from `examples/rules/`.
pub fn example_rule(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/rules")
        .join(file)
}

/// The simulated Asterisk `pbx1` and an ami-bridge holding its session.
pub struct Pbx {
    /// The AMI simulator (stops with the shutdown token).
    pub sim: ami_bridge::sim::SimHandle,
    /// ami-bridge's task; it ends after the shutdown token is cancelled.
    pub bridge: tokio::task::JoinHandle<Result<(), ami_bridge::Error>>,
}

/// Starts the AMI simulator (default accounts and behaviour) on a free loopback port,
/// until `shutdown`.
pub async fn start_sim(shutdown: &CancellationToken) -> ami_bridge::sim::SimHandle {
    ami_bridge::sim::SimHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        ami_bridge::sim::SimConfig::default(),
        shutdown.clone(),
    )
    .await
    .expect("AMI simulator")
}

/// Starts the AMI simulator and ami-bridge with the PBX `pbx1` on it, and waits
/// until the session is up (`sb.evt.ami.pbx1.link.up`).
pub async fn start_pbx(nats: &NatsServer, shutdown: &CancellationToken) -> Pbx {
    let sim = start_sim(shutdown).await;
    let observer = bus(nats).await;
    let mut link_up = observer
        .client()
        .subscribe("sb.evt.ami.pbx1.link.up")
        .await
        .expect("subscribe");
    let config = ami_bridge::Config {
        nats: nats_config(nats),
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
    let app = ami_bridge::App::build(config, shutdown.clone())
        .await
        .expect("ami-bridge");
    let bridge = tokio::spawn(app.run());
    tokio::time::timeout(PATIENCE, link_up.next())
        .await
        .expect("the PBX link comes up");
    Pbx { sim, bridge }
}

/// An Originate from `"Alice Caller" <5551234>` to `Local/<exten>@from-internal`
/// (the simulator answers 101 and holds the call 100 ms, reports 102 busy).
pub fn originate(exten: &str) -> ami::ActionRequest {
    originate_from(exten, "\"Alice Caller\" <5551234>")
}

/// An Originate to `Local/<exten>@from-internal` with the caller id `caller_id`
/// (`"Name" <number>`), for traffic that tells its calls apart by the caller's number.
pub fn originate_from(exten: &str, caller_id: &str) -> ami::ActionRequest {
    let channel = format!("Local/{exten}@from-internal");
    ami::ActionRequest {
        action: "Originate".into(),
        headers: [
            ("Channel", channel.as_str()),
            ("Application", "Wait"),
            ("Data", "1"),
            ("CallerID", caller_id),
        ]
        .iter()
        .map(|(name, value)| ami::Header {
            name: (*name).into(),
            value: (*value).into(),
        })
        .collect(),
        ..Default::default()
    }
}

/// Starts ws-push with [`JWT_SECRET`] and [`PUSH_API_KEY`]; returns its HTTP address.
pub async fn start_ws_push(nats: &NatsServer, shutdown: &CancellationToken) -> SocketAddr {
    let mut config = ws_push::Config {
        nats: nats_config(nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..ws_push::Config::default()
    };
    config.auth.jwt_secret = Some(Secret::new(JWT_SECRET));
    config.api.keys = vec![Secret::new(PUSH_API_KEY)];
    let app = ws_push::App::build(config, shutdown.clone()).await.expect("ws-push");
    let http = app.http_addr();
    tokio::spawn(app.run());
    http
}

/// Starts hook-runner with copies of the example rule files in `rules_dir`, and
/// waits until the durable consumer of each named rule exists (consumers start at
/// new events). `rules` pairs a file of `examples/rules/` with its rule's name.
pub async fn start_hook_runner(
    nats: &NatsServer,
    shutdown: &CancellationToken,
    rules_dir: &Path,
    rules: &[(&str, &str)],
) {
    for (file, _) in rules {
        std::fs::copy(example_rule(file), rules_dir.join(file)).expect("copy the example rule");
    }
    let mut config = hook_runner::Config {
        nats: nats_config(nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..hook_runner::Config::default()
    };
    config.rules.dir = rules_dir.to_path_buf();
    let app = hook_runner::App::build(config, shutdown.clone())
        .await
        .expect("hook-runner");
    tokio::spawn(app.run());

    let names: Vec<&str> = rules.iter().map(|(_, name)| *name).collect();
    wait_for_rule_consumers(nats, &names).await;
}

/// Waits until hook-runner's durable consumer of each named rule exists on
/// `SB_EVENTS` (consumers start at new events: publish only after this).
pub async fn wait_for_rule_consumers(nats: &NatsServer, rules: &[&str]) {
    let observer = bus(nats).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for name in rules {
        loop {
            if let Ok(stream) = observer.jetstream().get_stream("SB_EVENTS").await
                && stream.consumer_info(format!("hook-{name}")).await.is_ok()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hook-runner never consumed for {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A browser token for `user` signed with [`JWT_SECRET`], with extra claims merged in
/// (`admin`, `topics`, `channels`).
pub fn browser_token(user: &str, extra: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let mut claims = json!({ "sub": user, "exp": exp });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

/// Opens `/ws` on ws-push at `http` and signs in with `token`; returns the socket and
/// the `connected` frame.
pub async fn open_browser(http: SocketAddr, token: &str) -> (Socket, Value) {
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
        .await
        .expect("websocket");
    send_json(&mut socket, json!({ "type": "connect", "token": token })).await;
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    (socket, connected)
}

/// Sends one JSON frame.
pub async fn send_json(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .expect("send a frame");
}

/// The next JSON text frame (pings and pongs skipped).
pub async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// The next push frame whose `push.type` is `ty`, skipping others.
pub async fn next_push(socket: &mut Socket, ty: &str) -> Value {
    loop {
        let frame = next_json(socket).await;
        if frame["type"] == "push" && frame["push"]["type"] == ty {
            return frame;
        }
    }
}

/// The XMPP domain of the flows: the example rules address `<user>@example.org`.
pub const XMPP_DOMAIN: &str = "example.org";
/// The password of every XMPP account in the flows.
const XMPP_PASSWORD: &str = "pw";

/// The IM server of a flow, real either way: ngircd (IRC) or prosody (XMPP, on
/// [`XMPP_DOMAIN`] with the accounts `sbbot`, `alice`, `bob` and `mallory`).
pub enum ImServer {
    /// ngircd.
    Irc(Ngircd),
    /// prosody.
    Xmpp(Prosody),
}

impl ImServer {
    /// Starts ngircd.
    pub fn irc() -> Self {
        Self::Irc(Ngircd::start())
    }

    /// Starts prosody for [`XMPP_DOMAIN`] with the flows' accounts.
    pub fn xmpp() -> Self {
        let users = ["sbbot", "alice", "bob", "mallory"].map(|user| (user, XMPP_PASSWORD));
        Self::Xmpp(Prosody::start_on(XMPP_DOMAIN, &users))
    }

    /// How im-bridge and the rules address `user` here: a nick, or a bare JID.
    pub fn address(&self, user: &str) -> String {
        match self {
            Self::Irc(_) => user.to_owned(),
            Self::Xmpp(_) => format!("{user}@{XMPP_DOMAIN}"),
        }
    }

    /// im-bridge's account `id`, logged in as the bot `sbbot`.
    pub fn bot_account(&self, id: &str) -> im_bridge::AccountConfig {
        let protocol = match self {
            Self::Irc(ngircd) => im_bridge::ProtocolConfig::Irc(im_bridge::IrcConfig {
                server: "127.0.0.1".to_owned(),
                port: Some(ngircd.port),
                tls: false,
                nick: "sbbot".to_owned(),
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
                ca_file: None,
            }),
            Self::Xmpp(prosody) => im_bridge::ProtocolConfig::Xmpp(im_bridge::XmppConfig {
                jid: self.address("sbbot"),
                password: Secret::new(XMPP_PASSWORD),
                host: Some("127.0.0.1".to_owned()),
                port: Some(prosody.port),
                tls: im_bridge::XmppTls::Plaintext,
                allow_plaintext: true,
                resource: "switchboard".to_owned(),
                rooms: Vec::new(),
                ca_file: None,
            }),
        };
        im_bridge::AccountConfig {
            id: id.to_owned(),
            allow_from: Vec::new(),
            protocol,
        }
    }

    /// Connects `user` as a client of this server.
    pub async fn user(&self, user: &str) -> ImUser {
        match self {
            Self::Irc(ngircd) => ImUser::Irc(IrcPeer::connect(ngircd.port, user).await),
            Self::Xmpp(prosody) => ImUser::Xmpp(XmppPeer::connect(prosody, user, XMPP_PASSWORD).await),
        }
    }
}

/// Starts im-bridge with `account` (and a FIFO when given) and waits until the
/// account's link is up.
pub async fn start_im_bridge(
    nats: &NatsServer,
    shutdown: &CancellationToken,
    account: im_bridge::AccountConfig,
    fifo: Option<PathBuf>,
) {
    let mut config = im_bridge::Config {
        nats: nats_config(nats),
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ..im_bridge::Config::default()
    };
    config.script.fifo = fifo;
    let subject = format!("sb.evt.im.{}.link.up", account.id);
    config.accounts.push(account);
    let observer = bus(nats).await;
    let mut link_up = observer.client().subscribe(subject).await.expect("subscribe");
    let app = im_bridge::App::build(config, shutdown.clone())
        .await
        .expect("im-bridge");
    tokio::spawn(app.run());
    tokio::time::timeout(PATIENCE, link_up.next())
        .await
        .expect("the IM account comes up");
}

/// ami-bridge's TOML config with the PBX `pbx1` on the AMI simulator at `sim`, for
/// ami-bridge as a process (NATS from `SB_NATS__URL`).
pub fn ami_bridge_toml(sim: SocketAddr) -> String {
    format!(
        "[[pbx]]\nid = \"pbx1\"\nhost = \"{}\"\nport = {}\nusername = \"sb\"\nsecret = \"sbsecret\"\n",
        sim.ip(),
        sim.port()
    )
}

/// A service binary running as its own OS process with a generated config file;
/// killed on drop.
pub struct ServiceProcess(std::process::Child);

impl ServiceProcess {
    /// Starts the workspace binary `name` with `config` (TOML) written to
    /// `dir/<name>.toml`, the environment `env` on top, and its output in
    /// `dir/<name>.log`. Both ports are free ones unless `env` sets `SB_HTTP__LISTEN`
    /// or `SB_GRPC__LISTEN`.
    pub fn start(name: &str, config: &str, env: &[(&str, String)], dir: &Path) -> Self {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config).expect("write the config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let mut command = std::process::Command::new(switchboard_test_support::binary::workspace_binary(name));
        command
            .arg("--config")
            .arg(&file)
            .current_dir(dir)
            .env("SB_HTTP__LISTEN", "127.0.0.1:0")
            .env("SB_GRPC__LISTEN", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        Self(command.spawn().unwrap_or_else(|e| panic!("start {name}: {e}")))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
