//! The `[[account]]` config: a realistic file loads, mistakes are refused with the key named.

use std::time::Duration;

use im_bridge::{Config, ProtocolConfig, WhileDown, XmppTls};

fn load(text: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("im-bridge.toml");
    std::fs::write(&path, text).expect("write config");
    switchboard_runtime::config::load::<Config>(Some(&path)).map_err(|e| e.to_string())
}

const GOOD: &str = r##"
[outbound]
while_down = "reject"
queue_expiry = "1m"

[session]
lease_ttl = "5s"

[script]
fifo = "/run/im-bridge/in.fifo"

[[account]]
id = "jabber"
protocol = "xmpp"
jid = "bot@example.org"
password = "secret-xmpp"
ca_file = "/etc/switchboard/private-ca.pem"
rooms = [{ jid = "ops@conference.example.org", nick = "bot" }]
allow_from = ["boss@example.org"]

[[account]]
id = "libera"
protocol = "irc"
server = "irc.libera.chat"
nick = "sbbot"
alt_nicks = ["sbbot_"]
sasl_user = "sbbot"
sasl_password = "secret-irc"
channels = ["#ops"]
rate_window = "10s"
ca_file = "/etc/switchboard/private-ca.pem"
"##;

#[test]
fn a_full_config_loads() {
    let config = load(GOOD).expect("config loads");
    assert_eq!(config.accounts.len(), 2);
    let ProtocolConfig::Xmpp(xmpp) = &config.accounts[0].protocol else {
        panic!("first account is XMPP")
    };
    assert_eq!(xmpp.tls, XmppTls::Starttls);
    assert_eq!(xmpp.resource, "switchboard");
    assert_eq!(xmpp.rooms[0].nick, "bot");
    assert_eq!(
        xmpp.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/switchboard/private-ca.pem"))
    );
    let ProtocolConfig::Irc(irc) = &config.accounts[1].protocol else {
        panic!("second account is IRC")
    };
    assert!(irc.tls);
    assert!(irc.ca_file.is_some());
    assert_eq!(irc.rate_window, Duration::from_secs(10));
    assert_eq!(config.outbound.while_down, WhileDown::Reject);
    assert_eq!(config.session.lease_ttl, Duration::from_secs(5));
    // Secrets never show in Debug output (logs).
    let printed = format!("{config:?}");
    assert!(
        !printed.contains("secret-xmpp") && !printed.contains("secret-irc"),
        "{printed}"
    );
}

#[test]
fn mistakes_name_the_key() {
    let cases = [
        (GOOD.replace("id = \"libera\"", "id = \"jabber\""), "used twice"),
        (
            GOOD.replace("jid = \"bot@example.org\"", "jid = \"example.org\""),
            "account[0].jid",
        ),
        (
            GOOD.replace("nick = \"sbbot\"", "nick = \"sb bot\""),
            "account[1]: nick",
        ),
        (
            GOOD.replace("channels = [\"#ops\"]", "channels = [\"ops\"]"),
            "account[1].channels",
        ),
        (
            GOOD.replace("sasl_password = \"secret-irc\"", ""),
            "sasl_user and sasl_password",
        ),
        (
            GOOD.replace("rooms = [", "tls = \"plaintext\"\nrooms = ["),
            "account[0].allow_plaintext",
        ),
        (
            GOOD.replace("rooms = [", "tls = \"plaintext\"\nallow_plaintext = true\nrooms = ["),
            "account[0].ca_file needs tls",
        ),
        (
            GOOD.replace("rate_window = \"10s\"", "rate_window = \"10s\"\ntls = false"),
            "account[1].ca_file needs tls = true",
        ),
        (GOOD.replace("protocol = \"irc\"", "protocol = \"icq\""), "icq"),
        (
            GOOD.replace("rate_window = \"10s\"", "rate_window = \"10s\"\nsurprise = 1"),
            "surprise",
        ),
    ];
    for (text, expected) in cases {
        let error = load(&text).expect_err(expected);
        assert!(error.contains(expected), "expected {expected:?} in: {error}");
    }
}
