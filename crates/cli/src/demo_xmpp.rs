//! The demo's XMPP server: a prosody (Debian's package) for [`DOMAIN`], the domain the
//! example rules address, with three accounts: [`BOT`] (im-bridge's account `main`, the
//! one the rules send through) and the demo users alice and bob, whom im-bridge also
//! holds so that what they receive reaches the bus and the demo page. Plaintext on a
//! loopback port only: a demo, not a deployment (docs/demo.md).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// The XMPP domain: the example rules write to `alice@example.org` and `bob@example.org`.
pub const DOMAIN: &str = "example.org";

/// The bot's JID: im-bridge's account `main`, which the example rules send through.
pub const BOT: &str = "bot@example.org";

/// The im-bridge account ids and XMPP user names, in that order.
pub const ACCOUNTS: [(&str, &str); 3] = [("main", "bot"), ("alice", "alice"), ("bob", "bob")];

/// A running prosody with the demo accounts; killed on drop.
pub struct DemoXmpp {
    child: Child,
    /// Where clients connect (127.0.0.1, plaintext).
    pub addr: SocketAddr,
    /// (im-bridge account id, JID, password) for each of [`ACCOUNTS`].
    pub accounts: Vec<(String, String, String)>,
}

impl DemoXmpp {
    /// Starts prosody in `demo_dir/prosody` (emptied first) and registers the demo
    /// accounts with fresh random passwords. `Ok(None)` when prosody is not installed.
    pub async fn start(demo_dir: &Path) -> anyhow::Result<Option<Self>> {
        let (Some(prosody), Some(prosodyctl)) = (
            crate::up::find_on_path("prosody"),
            crate::up::find_on_path("prosodyctl"),
        ) else {
            return Ok(None);
        };
        let dir = &demo_dir.join("prosody");
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir.join("data")).with_context(|| format!("creating {}", dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("prosody.cfg.lua");
        std::fs::write(&config, prosody_config(dir, port))?;

        let mut accounts = Vec::new();
        for (account, user) in ACCOUNTS {
            let password = crate::demo::random_secret();
            let status = Command::new(&prosodyctl)
                .arg("--config")
                .arg(&config)
                .args(["register", user, DOMAIN, &password])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .with_context(|| format!("running {}", prosodyctl.display()))?;
            if !status.success() {
                bail!("prosodyctl register {user} {DOMAIN} failed ({status})");
            }
            accounts.push((account.to_owned(), format!("{user}@{DOMAIN}"), password));
        }

        let out = std::fs::File::create(dir.join("prosody.out"))?;
        let child = Command::new(&prosody)
            .arg("--config")
            .arg(&config)
            .arg("-F")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", prosody.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !crate::up::wait_for_tcp(addr, Duration::from_secs(10)).await {
            bail!(
                "prosody did not listen on {addr} within 10 s; see {}",
                dir.join("prosody.out").display()
            );
        }
        Ok(Some(Self { child, addr, accounts }))
    }

    /// The `[[account]]` tables for im-bridge.
    pub fn im_bridge_accounts(&self) -> toml::Value {
        let accounts = self
            .accounts
            .iter()
            .map(|(id, jid, password)| {
                toml::Value::Table(toml::toml! {
                    id = (id.clone())
                    protocol = "xmpp"
                    jid = (jid.clone())
                    password = (password.clone())
                    host = (self.addr.ip().to_string())
                    port = (i64::from(self.addr.port()))
                    tls = "plaintext"
                    allow_plaintext = true
                })
            })
            .collect();
        toml::Value::Array(accounts)
    }

    /// Stops prosody.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A prosody config for [`DOMAIN`] on `127.0.0.1:port`, everything under `dir`; no
/// server-to-server, no HTTP, plaintext logins allowed (loopback only).
fn prosody_config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"-- Written by `switchboard up --demo`; rewritten at every start.
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"
run_as_root = true
log = {{ info = "{d}/prosody.log" }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "presence"; "message"; "iq"; "c2s" }}
modules_disabled = {{ "s2s"; "offline"; "posix" }}
VirtualHost "{DOMAIN}"
"#
    )
}
