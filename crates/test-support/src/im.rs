//! Real IM servers for tests: prosody (XMPP) and ngircd (IRC) on free loopback ports,
//! in temp dirs with generated configs, stopped on drop; and the users on the other
//! side: a raw IRC peer and an XMPP peer (a tokio-xmpp client).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{find_program, free_port, wait_for_port};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

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
    /// The client port on 127.0.0.1.
    pub port: u16,
    /// The TLS client port on 127.0.0.1, when started with [`Ngircd::start_tls`].
    pub tls_port: Option<u16>,
    tls: Option<ServerCert>,
}

impl Ngircd {
    /// Starts ngircd on a free port with a generated config (flood limits as low as ngircd allows).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like [`Ngircd::start`], plus a TLS port ([`Ngircd::tls_port`]) serving `cert`.
    pub fn start_tls(cert: &ServerCert) -> Self {
        Self::start_with(Some(cert.clone()))
    }

    fn start_with(tls: Option<ServerCert>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sb-ngircd-")
            .tempdir()
            .expect("temp dir");
        let mut server = Self {
            dir,
            child: None,
            port: free_port(),
            tls_port: tls.as_ref().map(|_| free_port()),
            tls,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut config = format!(
            "[Global]\nName = irc.test.local\nInfo = switchboard test\nListen = 127.0.0.1\nPorts = {port}\n\
             MotdPhrase = test\n\
             [Limits]\nMaxConnectionsIP = 0\nMaxNickLength = 30\nPingTimeout = 120\nPongTimeout = 60\n\
             [Options]\nDNS = no\nIdent = no\nPAM = no\n",
            port = self.port
        );
        if let (Some(cert), Some(port)) = (&self.tls, self.tls_port) {
            config.push_str(&format!(
                "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {port}\n",
                cert.cert.display(),
                cert.key.display()
            ));
        }
        let path = self.dir.path().join("ngircd.conf");
        std::fs::write(&path, config).expect("write ngircd.conf");
        let binary = find_program("ngircd").expect("ngircd not installed: apt-get install ngircd");
        let path = path.to_string_lossy().into_owned();
        for _ in 0..50 {
            let child =
                spawn_logged(&binary, &["-f", &path, "-n"], self.dir.path(), "ngircd.log").expect("start ngircd");
            self.child = Some(child);
            let tls_up = || {
                self.tls_port
                    .is_none_or(|p| wait_for_port(SocketAddr::from(([127, 0, 0, 1], p)), Duration::from_secs(5)))
            };
            if wait_for_port(self.addr(), Duration::from_secs(5)) && tls_up() {
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

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it (for restart tests).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port.
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

/// InspIRCd 3 with Atheme services linked to it (NickServ and SaslServ, for SASL
/// PLAIN and NickServ IDENTIFY), on free loopback ports. Accounts are registered
/// through NickServ with [`IrcServices::register`].
pub struct IrcServices {
    dir: tempfile::TempDir,
    ircd: Option<Child>,
    services: Option<Child>,
    /// The client port on 127.0.0.1.
    pub port: u16,
}

impl IrcServices {
    /// Starts inspircd, then atheme, and waits until atheme has linked and synced.
    /// Clients may send 100 commands/s, with a burst of 1000, before inspircd
    /// disconnects them for excess flood.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Like [`IrcServices::start`], with inspircd's flood limits lifted for every
    /// client (no fake lag, a command rate and penalty threshold far above any
    /// benchmark, 1 MiB receive queue), for throughput measurements.
    pub fn start_without_flood_limits() -> Self {
        Self::start_with(true)
    }

    fn start_with(unlimited: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sb-inspircd-")
            .tempdir()
            .expect("temp dir");
        let (port, link) = (free_port(), free_port());
        let d = dir.path().display();
        // threshold is in penalty points (one per ordinary command, scaled by 1000
        // inside inspircd, so it must stay below u32::MAX / 1000); commandrate is in
        // millicommands per second.
        let flood = if unlimited {
            r#"recvq="1M" threshold="4000000" commandrate="4000000000""#
        } else {
            r#"recvq="8K" threshold="1000" commandrate="100000""#
        };
        let ircd_config = format!(
            r#"<server name="irc.test.local" description="switchboard test" network="TestNet">
<admin name="test" nick="test" email="admin@test.local">
<bind address="127.0.0.1" port="{port}" type="clients">
<bind address="127.0.0.1" port="{link}" type="servers">
<connect name="main" allow="*" timeout="60" pingfreq="120" hardsendq="1M" softsendq="1M" {flood} fakelag="no" localmax="1000" globalmax="1000" useident="no" resolvehostnames="no" limit="5000">
<power diepass="test" restartpass="test">
<module name="spanningtree">
<module name="services_account">
<module name="sasl">
<module name="cap">
<module name="alias">
<alias text="NICKSERV" replace="PRIVMSG $requirement :$2-" requires="NickServ" uline="yes">
<link name="services.test.local" ipaddr="127.0.0.1" port="{link}" allowmask="127.0.0.0/8" sendpass="linkpw" recvpass="linkpw" timeout="60">
<uline server="services.test.local" silent="yes">
<sasl target="services.test.local">
<pid file="{d}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{d}/inspircd.log">
<files motd="{d}/motd.txt">
<dns timeout="1">
"#
        );
        std::fs::write(dir.path().join("inspircd.conf"), ircd_config).expect("write inspircd.conf");
        std::fs::write(dir.path().join("motd.txt"), "test\n").expect("write motd");
        let services_config = format!(
            r##"loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/crypto/pbkdf2v2";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/identify";
loadmodule "modules/nickserv/register";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";
serverinfo {{
    name = "services.test.local"; desc = "switchboard test services"; numeric = "00A";
    recontime = 1; netname = "TestNet"; hidehostsuffix = "users.test";
    adminname = "test"; adminemail = "admin@test.local"; registeremail = "noreply@test.local";
    auth = none; casemapping = rfc1459; maxlogins = 5; maxusers = 5; mdlimit = 30;
    emaillimit = 100; emailtime = 300;
}};
uplink "irc.test.local" {{ host = "127.0.0.1"; password = "linkpw"; port = {link}; }};
nickserv {{ nick = "NickServ"; user = "NickServ"; host = "services.test.local"; real = "Nickname Services"; maxnicks = 5; expire = 30; }};
saslserv {{ nick = "SaslServ"; user = "SaslServ"; host = "services.test.local"; real = "SASL"; }};
general {{
    helpchan = "#help"; flood_msgs = 100; flood_time = 10; ratelimit_uses = 100; ratelimit_period = 1;
    kline_time = 7; commit_interval = 5; default_clone_allowed = 5; default_clone_warn = 4;
    uplink_sendq_limit = 1048576; language = "en";
}};
logfile "{d}/atheme-events.log" {{ error; info; admin; network; register; }};
"##
        );
        std::fs::write(dir.path().join("atheme.conf"), services_config).expect("write atheme.conf");
        let mut server = Self {
            dir,
            ircd: None,
            services: None,
            port,
        };
        let dir = server.dir.path().to_path_buf();
        let ircd = find_program("inspircd").expect("inspircd not installed: apt-get install inspircd");
        let ircd_config = dir.join("inspircd.conf").to_string_lossy().into_owned();
        server.ircd = Some(
            spawn_logged(
                &ircd,
                &[&format!("--config={ircd_config}"), "--nofork", "--runasroot"],
                &dir,
                "inspircd.out",
            )
            .expect("start inspircd"),
        );
        assert!(
            wait_for_port(SocketAddr::from(([127, 0, 0, 1], link)), WAIT),
            "inspircd did not start: {}",
            std::fs::read_to_string(dir.join("inspircd.out")).unwrap_or_default()
        );
        let atheme = find_program("atheme-services").expect("atheme not installed: apt-get install atheme-services");
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (config, log, pid, data) = (path("atheme.conf"), path("atheme.log"), path("atheme.pid"), path(""));
        server.services = Some(
            spawn_logged(
                &atheme,
                &["-n", "-c", &config, "-D", &data, "-l", &log, "-p", &pid],
                &dir,
                "atheme.out",
            )
            .expect("start atheme"),
        );
        let deadline = std::time::Instant::now() + WAIT;
        while !std::fs::read_to_string(dir.join("atheme.log"))
            .unwrap_or_default()
            .contains("finished synching with uplink")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "atheme did not link: {}{}",
                std::fs::read_to_string(dir.join("atheme.out")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("atheme.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Registers the NickServ account `nick` with `password` (connecting as `nick`).
    pub async fn register(&self, nick: &str, password: &str) {
        let mut peer = IrcPeer::connect(self.port, nick).await;
        peer.line(&format!("NICKSERV REGISTER {password} {nick}@test.local"))
            .await;
        peer.wait_for(|l| l.contains("NOTICE") && l.contains(" is now registered to "))
            .await;
        peer.line("QUIT").await;
        peer.wait_for(|l| l.starts_with("ERROR")).await;
    }

    /// What atheme logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("atheme.log")).unwrap_or_default()
    }
}

impl Drop for IrcServices {
    fn drop(&mut self) {
        kill(&mut self.services);
        kill(&mut self.ircd);
    }
}

/// prosody on a free port with one virtual host (`localhost` unless chosen) and its
/// MUC component `conference.<host>`, plaintext auth allowed (tests only).
pub struct Prosody {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The client-to-server port on 127.0.0.1.
    pub port: u16,
    /// The virtual host: users are `<name>@<domain>`, rooms `<room>@conference.<domain>`.
    pub domain: String,
    /// The direct TLS (XEP-0368) port on 127.0.0.1, when started with [`Prosody::start_tls`].
    pub direct_tls_port: Option<u16>,
    config: PathBuf,
}

impl Prosody {
    /// Starts prosody for `localhost` with a MUC component `conference.localhost` and
    /// registers `users` (name, password).
    pub fn start(users: &[(&str, &str)]) -> Self {
        Self::start_on("localhost", users)
    }

    /// Starts prosody for the virtual host `domain` (for example `example.org`, which
    /// the example rules address) with a MUC component `conference.<domain>` and
    /// registers `users` (name, password) there. Clients connect to 127.0.0.1:`port`
    /// whatever the domain.
    pub fn start_on(domain: &str, users: &[(&str, &str)]) -> Self {
        Self::start_with(domain, users, None)
    }

    /// Starts prosody for `domain` with TLS from `cert`: STARTTLS required on
    /// [`Prosody::port`] (`c2s_require_encryption`) and direct TLS on
    /// [`Prosody::direct_tls_port`].
    pub fn start_tls(domain: &str, users: &[(&str, &str)], cert: &ServerCert) -> Self {
        Self::start_with(domain, users, Some(cert))
    }

    fn start_with(domain: &str, users: &[(&str, &str)], tls: Option<&ServerCert>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sb-prosody-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let direct_tls_port = tls.map(|_| free_port());
        let d = dir.path().display();
        let (direct_ports, require_encryption, tls_module, ssl) = match (tls, direct_tls_port) {
            (Some(cert), Some(direct)) => (
                direct.to_string(),
                true,
                "; \"tls\"",
                format!(
                    "ssl = {{ certificate = \"{}\"; key = \"{}\" }}",
                    cert.cert.display(),
                    cert.key.display()
                ),
            ),
            _ => (String::new(), false, "", String::new()),
        };
        let config = format!(
            r#"daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ {direct_ports} }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = {require_encryption}
{ssl}
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
run_as_root = true
log = {{ info = "{d}/prosody.log" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "presence"; "message"; "iq"; "c2s"{tls_module} }}
modules_disabled = {{ "s2s"; "offline"; "smacks"; "posix" }}
limits = {{ c2s = {{ rate = "100mb/s" }} }}
VirtualHost "{domain}"
Component "conference.{domain}" "muc"
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
            domain: domain.to_owned(),
            direct_tls_port,
            config: config_path,
        };
        for (user, password) in users {
            let status =
                Command::new(find_program("prosodyctl").expect("prosodyctl not installed: apt-get install prosody"))
                    .arg("--config")
                    .arg(&server.config)
                    .args(["register", user, domain, password])
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

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it (for restart tests).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port with the same accounts.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// What it logged so far.
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
    /// The sender's nick.
    pub from: String,
    /// A nick (direct message) or a channel.
    pub target: String,
    /// The message text.
    pub text: String,
    /// The whole line as received, CR LF included.
    pub raw_len: usize,
}

/// A second IRC client speaking the raw protocol.
pub struct IrcPeer {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// This peer's nick.
    pub nick: String,
}

impl IrcPeer {
    /// Connects to ngircd on `port` and registers as `nick`.
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

    /// Sends one raw line (CR LF added).
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

    /// Joins `channel` and waits until the server confirms.
    pub async fn join(&mut self, channel: &str) {
        self.line(&format!("JOIN {channel}")).await;
        let nick = self.nick.clone();
        let channel = channel.to_owned();
        self.wait_for(|l| l.starts_with(&format!(":{nick}!")) && l.contains(" JOIN ") && l.ends_with(&channel))
            .await;
    }

    /// Sends a PRIVMSG to a nick or channel.
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

/// A second XMPP user: a plain tokio-xmpp client logged in to a [`Prosody`].
pub struct XmppPeer {
    client: tokio_xmpp::Client,
    /// The bare JID, `<user>@<domain>`.
    pub jid: String,
    /// The nick used in the rooms this peer joined (its own room echoes are skipped).
    nick: Option<String>,
}

impl XmppPeer {
    /// Logs in as `user` with `password`, waits until online and sends presence.
    /// Tries again on a new connection when an attempt is not done in a third of
    /// [`WAIT`]: under load a tokio-xmpp client has been seen to stop handing on
    /// stanzas right after login (prosody logged sending them; sending presence again
    /// did not help), while a new connection works.
    pub async fn connect(prosody: &Prosody, user: &str, password: &str) -> Self {
        for _ in 0..2 {
            if let Ok(peer) = tokio::time::timeout(WAIT / 3, Self::attempt(prosody, user, password)).await {
                return peer;
            }
        }
        tokio::time::timeout(WAIT / 3, Self::attempt(prosody, user, password))
            .await
            .expect("the XMPP peer is online, its presence reflected, in time (three connections)")
    }

    async fn attempt(prosody: &Prosody, user: &str, password: &str) -> Self {
        let jid = format!("{user}@{}", prosody.domain);
        let mut client = tokio_xmpp::Client::new_plaintext(
            jid.parse::<tokio_xmpp::jid::BareJid>().expect("a valid JID"),
            password.to_owned(),
            tokio_xmpp::connect::DnsConfig::no_srv("127.0.0.1", prosody.port),
            tokio_xmpp::xmlstream::Timeouts::tight(),
        );
        loop {
            match client.next().await {
                Some(event) if event.is_online() => break,
                Some(_) => {}
                None => panic!("the XMPP peer's stream ended before it was online"),
            }
        }
        client
            .send_stanza(tokio_xmpp::parsers::presence::Presence::available().into())
            .await
            .expect("the XMPP peer sends presence");
        // send_stanza only queues: until the server has our presence, a chat message to
        // the bare JID has no available resource to go to. The server reflects initial
        // presence to the sender (RFC 6121 4.2.2), which proves it took effect.
        loop {
            match client.next().await {
                Some(tokio_xmpp::Event::Stanza(tokio_xmpp::Stanza::Presence(p)))
                    if p.from.as_ref().is_some_and(|f| f.to_bare().to_string() == jid) =>
                {
                    return Self {
                        client,
                        jid,
                        nick: None,
                    };
                }
                Some(_) => {}
                None => panic!("the XMPP peer's stream ended before its presence came back"),
            }
        }
    }

    /// Joins the MUC `room` (a bare room JID) as `nick` and waits for its own presence there.
    pub async fn join(&mut self, room: &str, nick: &str) {
        use tokio_xmpp::parsers::{muc::Muc, presence::Presence};
        let own = format!("{room}/{nick}");
        let to = own.parse::<tokio_xmpp::jid::Jid>().expect("an occupant JID");
        let presence = Presence::available().with_to(to).with_payload(Muc::new());
        self.client.send_stanza(presence.into()).await.expect("join the room");
        self.nick = Some(nick.to_owned());
        self.wait(|s| {
            matches!(s, tokio_xmpp::Stanza::Presence(p) if p.from.as_ref().map(|f| f.to_string()) == Some(own.clone()))
        })
        .await;
    }

    /// Sends a message with body `text` to `to` (a JID or a room).
    pub async fn say(&mut self, to: &str, text: &str, type_: tokio_xmpp::parsers::message::MessageType) {
        use tokio_xmpp::parsers::message::{Lang, Message};
        let message = Message::new_with_type(type_, Some(to.parse::<tokio_xmpp::jid::Jid>().expect("a valid JID")))
            .with_body(Lang::new(), text.to_owned());
        self.client
            .send_stanza(message.into())
            .await
            .expect("the XMPP peer sends");
    }

    /// Reads stanzas until one matches; returns it.
    pub async fn wait(&mut self, mut matches: impl FnMut(&tokio_xmpp::Stanza) -> bool) -> tokio_xmpp::Stanza {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.client.next().await {
                    Some(tokio_xmpp::Event::Stanza(stanza)) if matches(&stanza) => return stanza,
                    Some(tokio_xmpp::Event::Disconnected(e)) => {
                        eprintln!(
                            "the XMPP peer {} was disconnected ({e}); tokio-xmpp reconnects",
                            self.jid
                        );
                    }
                    Some(tokio_xmpp::Event::Online { resumed: false, .. }) => {
                        // tokio-xmpp reconnected by itself: the new session has no presence,
                        // so chats to the bare JID would not reach it.
                        eprintln!("the XMPP peer {} is online again: sending presence", self.jid);
                        self.client
                            .send_stanza(tokio_xmpp::parsers::presence::Presence::available().into())
                            .await
                            .expect("the XMPP peer sends presence");
                    }
                    Some(_) => {}
                    None => panic!("the XMPP peer's stream ended"),
                }
            }
        })
        .await
        .expect("the XMPP peer waited too long")
    }

    /// The next message of `type_` with a body that is not this peer's own room echo:
    /// (type, from, body).
    pub async fn next_message(
        &mut self,
        type_: tokio_xmpp::parsers::message::MessageType,
    ) -> (tokio_xmpp::parsers::message::MessageType, String, String) {
        let nick = self.nick.clone();
        let stanza = self
            .wait(|s| {
                matches!(s, tokio_xmpp::Stanza::Message(m) if !m.bodies.is_empty() && m.type_ == type_
                    && m.from.as_ref().is_some_and(|f| f.resource().is_none_or(|r| Some(r.as_str()) != nick.as_deref())))
            })
            .await;
        let tokio_xmpp::Stanza::Message(m) = stanza else {
            unreachable!("wait returned a message")
        };
        let body = m.bodies.values().next().cloned().unwrap_or_default();
        (m.type_, m.from.map(|f| f.to_string()).unwrap_or_default(), body)
    }
}

/// A user of an IM server, IRC or XMPP, on the other side from a bot: lets one test
/// body run against either protocol.
pub enum ImUser {
    /// A raw IRC client.
    Irc(IrcPeer),
    /// A tokio-xmpp client.
    Xmpp(XmppPeer),
}

impl ImUser {
    /// Sends a direct message with `text` to `to` (a nick, or a JID).
    pub async fn say(&mut self, to: &str, text: &str) {
        match self {
            Self::Irc(peer) => peer.privmsg(to, text).await,
            Self::Xmpp(peer) => {
                peer.say(to, text, tokio_xmpp::parsers::message::MessageType::Chat)
                    .await
            }
        }
    }

    /// The next direct message to this user: (sender's bare address, text).
    pub async fn next_message(&mut self) -> (String, String) {
        match self {
            Self::Irc(peer) => {
                let message = peer.next_privmsg().await;
                (message.from, message.text)
            }
            Self::Xmpp(peer) => {
                let (_, from, text) = peer.next_message(tokio_xmpp::parsers::message::MessageType::Chat).await;
                let bare = from.split('/').next().unwrap_or_default().to_owned();
                (bare, text)
            }
        }
    }
}

/// A private certificate authority made with `openssl` in a temp dir; issues
/// server certificates for TLS tests.
pub struct TestCa {
    dir: tempfile::TempDir,
}

/// A server certificate and its key (PEM files).
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (unencrypted).
    pub key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let output = Command::new(find_program("openssl").expect("openssl not installed: apt-get install openssl"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestCa {
    /// A new CA named `name` (its subject CN), valid for two days.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("sb-ca-").tempdir().expect("temp dir");
        let config = format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {name}\n\
             [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n"
        );
        std::fs::write(dir.path().join("ca.cnf"), config).expect("write ca.cnf");
        openssl(
            &[
                "req",
                "-x509",
                "-config",
                "ca.cnf",
                "-extensions",
                "ca",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
            ],
            dir.path(),
        );
        Self { dir }
    }

    /// The CA certificate (PEM): what a client configures as `ca_file`.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a server certificate for `names` (DNS names, or IP addresses),
    /// valid for two days, into this CA's directory under `file` (`<file>.pem`,
    /// `<file>.key`).
    pub fn issue(&self, file: &str, names: &[&str]) -> ServerCert {
        let san: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        let config = format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n\
             [leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = {san}\nsubjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n",
            cn = names.first().copied().unwrap_or("localhost"),
            san = san.join(",")
        );
        let dir = self.dir.path();
        let cnf = format!("{file}.cnf");
        let (key, csr, pem) = (format!("{file}.key"), format!("{file}.csr"), format!("{file}.pem"));
        std::fs::write(dir.join(&cnf), config).expect("write leaf config");
        openssl(
            &[
                "req", "-new", "-config", &cnf, "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr,
            ],
            dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &cnf,
                "-extensions",
                "leaf",
            ],
            dir,
        );
        ServerCert {
            cert: dir.join(pem),
            key: dir.join(key),
        }
    }
}
