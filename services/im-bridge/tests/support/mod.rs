//! Real IM servers for tests: prosody (XMPP) and ngircd (IRC) on free loopback
//! ports, in temp dirs with generated configs, stopped on drop; a raw IRC peer;
//! and helpers to run im-bridge in-process against a real nats-server.

#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchboard_test_support::{NatsServer, find_program, free_port, wait_for_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

/// Generous bound for anything a test waits for; reaching it fails the test, it
/// never decides success.
pub const WAIT: Duration = Duration::from_secs(30);

fn spawn_logged(program: &Path, args: &[&str], dir: &Path, log: &str) -> std::io::Result<Child> {
    let out = std::fs::File::create(dir.join(log))?;
    let err = out.try_clone()?;
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// ngircd 26 on a free port.
pub struct Ngircd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
}

impl Ngircd {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sb-ngircd-")
            .tempdir()
            .expect("temp dir");
        let mut server = Self {
            dir,
            child: None,
            port: free_port(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let config = format!(
            "[Global]\nName = irc.test.local\nInfo = switchboard test\nListen = 127.0.0.1\nPorts = {port}\n\
             MotdPhrase = test\n\
             [Limits]\nMaxConnectionsIP = 0\nMaxNickLength = 30\nPingTimeout = 120\nPongTimeout = 60\n\
             [Options]\nDNS = no\nIdent = no\nPAM = no\n",
            port = self.port
        );
        let path = self.dir.path().join("ngircd.conf");
        std::fs::write(&path, config).expect("write ngircd.conf");
        let binary = find_program("ngircd").expect("ngircd not installed: apt-get install ngircd");
        let path = path.to_string_lossy().into_owned();
        for _ in 0..50 {
            let child =
                spawn_logged(&binary, &["-f", &path, "-n"], self.dir.path(), "ngircd.log").expect("start ngircd");
            self.child = Some(child);
            if wait_for_port(self.addr(), Duration::from_secs(5)) {
                return;
            }
            kill(&mut self.child);
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "ngircd did not start: {}",
            std::fs::read_to_string(self.dir.path().join("ngircd.log")).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Ngircd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// prosody on a free port with `localhost` and `conference.localhost` (MUC),
/// plaintext auth allowed (tests only).
pub struct Prosody {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
}

impl Prosody {
    pub fn start(users: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sb-prosody-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let d = dir.path().display();
        let config = format!(
            r#"daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
run_as_root = true
log = {{ info = "{d}/prosody.log" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "presence"; "message"; "iq"; "c2s" }}
modules_disabled = {{ "s2s"; "offline"; "smacks"; "posix" }}
limits = {{ c2s = {{ rate = "100mb/s" }} }}
VirtualHost "localhost"
Component "conference.localhost" "muc"
    muc_room_locking = false
    restrict_room_creation = false
"#
        );
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        let config_path = dir.path().join("prosody.cfg.lua");
        std::fs::write(&config_path, config).expect("write prosody config");
        let mut server = Self {
            dir,
            child: None,
            port,
            config: config_path,
        };
        for (user, password) in users {
            let status =
                Command::new(find_program("prosodyctl").expect("prosodyctl not installed: apt-get install prosody"))
                    .arg("--config")
                    .arg(&server.config)
                    .args(["register", user, "localhost", password])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run prosodyctl");
            assert!(status.success(), "prosodyctl register {user} failed");
        }
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = find_program("prosody").expect("prosody not installed: apt-get install prosody");
        let config = self.config.to_string_lossy().into_owned();
        for _ in 0..50 {
            let child = spawn_logged(&binary, &["--config", &config, "-F"], self.dir.path(), "prosody.out")
                .expect("start prosody");
            self.child = Some(child);
            if wait_for_port(self.addr(), Duration::from_secs(10)) {
                return;
            }
            kill(&mut self.child);
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "prosody did not start: {}{}",
            std::fs::read_to_string(self.dir.path().join("prosody.out")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One PRIVMSG as a peer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privmsg {
    pub from: String,
    pub target: String,
    pub text: String,
    /// The whole line as received, CR LF included.
    pub raw_len: usize,
}

/// A second IRC client speaking the raw protocol.
pub struct IrcPeer {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    pub nick: String,
}

impl IrcPeer {
    pub async fn connect(port: u16, nick: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to ngircd");
        let (read, writer) = stream.into_split();
        let mut peer = Self {
            reader: BufReader::new(read),
            writer,
            nick: nick.to_owned(),
        };
        peer.line(&format!("NICK {nick}")).await;
        peer.line(&format!("USER {nick} 0 * :peer")).await;
        peer.wait_for(|l| l.split(' ').nth(1) == Some("001")).await;
        peer
    }

    pub async fn line(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write to ngircd");
    }

    /// Reads lines (answering PINGs) until one matches; returns it.
    pub async fn wait_for(&mut self, mut matches: impl FnMut(&str) -> bool) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let mut line = String::new();
                let n = self.reader.read_line(&mut line).await.expect("read from ngircd");
                assert!(n > 0, "ngircd closed the peer's connection");
                if let Some(token) = line.strip_prefix("PING ") {
                    self.line(&format!("PONG {}", token.trim_end())).await;
                    continue;
                }
                if matches(line.trim_end_matches(['\r', '\n'])) {
                    return line;
                }
            }
        })
        .await
        .expect("IRC peer waited too long")
    }

    pub async fn join(&mut self, channel: &str) {
        self.line(&format!("JOIN {channel}")).await;
        let nick = self.nick.clone();
        let channel = channel.to_owned();
        self.wait_for(|l| l.starts_with(&format!(":{nick}!")) && l.contains(" JOIN ") && l.ends_with(&channel))
            .await;
    }

    pub async fn privmsg(&mut self, to: &str, text: &str) {
        self.line(&format!("PRIVMSG {to} :{text}")).await;
    }

    /// The next PRIVMSG to us or a channel we are in.
    pub async fn next_privmsg(&mut self) -> Privmsg {
        let raw = self.wait_for(|l| l.split(' ').nth(1) == Some("PRIVMSG")).await;
        let line = raw.trim_end_matches(['\r', '\n']);
        let rest = line.strip_prefix(':').unwrap_or(line);
        let (prefix, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let rest = rest.strip_prefix("PRIVMSG ").unwrap_or(rest);
        let (target, text) = rest.split_once(" :").unwrap_or((rest, ""));
        Privmsg {
            from: prefix.split('!').next().unwrap_or(prefix).to_owned(),
            target: target.to_owned(),
            text: text.to_owned(),
            raw_len: raw.len(),
        }
    }
}

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
