//! `switchboard up --demo`: the stack with something to look at.
//!
//! [`prepare`] writes a config dir under the data dir (a random JWT secret shared by
//! ws-push and chat-store, a random site API key, ami-bridge pointed at an `ami-sim`,
//! im-bridge holding the demo's XMPP accounts when prosody runs (`crate::demo_xmpp`),
//! hook-runner with the example rules plus a rule mirroring events to the ws-push
//! channel [`EVENTS_CHANNEL`]). Once the services are ready, [`start`] runs a call
//! generator and a generator of the other flows (F5, F6, and with IM F2 and F7) and
//! serves the demo page, which mints demo tokens server-side (loopback only), lets
//! the visitor write as alice, push to 101 and send a site notification, and proxies
//! chat-store's widget, admin console and API so that everything is one origin. See
//! docs/demo.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use serde_json::{Value, json};
use switchboard_bus::{Bus, NatsConfig};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The ws-push channel the demo rule mirrors interesting events to.
pub const EVENTS_CHANNEL: &str = "demo-events";

/// The users the token endpoint mints tokens for, and nobody else.
pub const DEMO_USERS: [&str; 4] = ["101", "alice", "bob", "admin"];

/// The PBX id of the simulator in subjects (`sb.evt.ami.pbx1...`).
const PBX: &str = "pbx1";

/// The site whose notifications the demo sends (`sb.evt.site.shop.notify` for F7,
/// pushes over ws-push's site API for F5).
const SITE: &str = "shop";

/// The operator on the page: screen pops for extension 101 (F1) and the site's
/// pushes (F5) reach this user.
const OPERATOR: &str = "101";

/// The demo user whom the IM flows involve: she asks the bot for calls (F2), owns
/// extension 101 in the F3 rule and gets the site's notifications (F7).
pub const IM_USER: &str = "alice@example.org";

/// The longest text the page may send as alice or as the site.
const MAX_DEMO_TEXT: usize = 500;

const EXAMPLE_RULES: [(&str, &str); 5] = [
    (
        "f1-screen-pop.yaml",
        include_str!("../../../examples/rules/f1-screen-pop.yaml"),
    ),
    (
        "f2-im-call-bot.yaml",
        include_str!("../../../examples/rules/f2-im-call-bot.yaml"),
    ),
    (
        "f3-missed-call.yaml",
        include_str!("../../../examples/rules/f3-missed-call.yaml"),
    ),
    (
        "f4-admin-ping.yaml",
        include_str!("../../../examples/rules/f4-admin-ping.yaml"),
    ),
    (
        "f7-site-to-im.yaml",
        include_str!("../../../examples/rules/f7-site-to-im.yaml"),
    ),
];
const MIRROR_RULE: &str = include_str!("../demo/demo-mirror.yaml");

const INDEX_HTML: &str = include_str!("../demo/index.html");
const DEMO_JS: &str = include_str!("../demo/demo.js");
const DEMO_CSS: &str = include_str!("../demo/demo.css");
const CHAT_HTML: &str = include_str!("../demo/chat.html");
const CHAT_JS: &str = include_str!("../demo/chat.js");

/// How long a demo token lives; the page fetches a new one before it expires.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// What [`prepare`] decided: where the generated configs are and what they share.
pub struct DemoSetup {
    /// The generated `<service>.toml` files.
    pub config_dir: PathBuf,
    jwt_secret: String,
    /// ws-push's site API key (F5).
    site_api_key: String,
    push_http: SocketAddr,
    chat_http: SocketAddr,
    listen: SocketAddr,
    /// im-bridge's FIFO, when the demo has IM.
    im_fifo: Option<PathBuf>,
}

impl DemoSetup {
    /// im-bridge's FIFO for scripts, when the demo has an XMPP server.
    pub fn im_fifo(&self) -> Option<&Path> {
        self.im_fifo.as_deref()
    }
}

/// The AMI simulator the demo's ami-bridge logs in to.
pub struct Simulator<'a> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The AMI user name.
    pub user: &'a str,
    /// Its secret.
    pub secret: &'a str,
}

/// 32 random bytes in hex.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts `ami-sim` from `bin_dir` on a free loopback port with one account; returns
/// the child (killed on drop) and its address.
pub async fn start_ami_sim(bin_dir: &Path, user: &str, secret: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let binary = bin_dir.join("ami-sim");
    if !binary.is_file() {
        bail!(
            "{} not found; build it first: cargo build --bins (or pass --bin-dir)",
            binary.display()
        );
    }
    let mut child = Command::new(&binary)
        .args(["--listen", "127.0.0.1:0", "--user"])
        .arg(format!("{user}:{secret}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("ami-sim's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("ami-sim did not start within 10 s")??
        .context("ami-sim exited at start")?;
    let addr = line
        .strip_prefix("ami-sim listening on ")
        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        .with_context(|| format!("unexpected first line from ami-sim: {line}"))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

/// Merges `extra` into `base`: tables recursively, other values only where `base`
/// has none (what the user's own config says wins).
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (Some(_), _) => {}
            (None, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn listen_of(table: &toml::Table, default_port: u16) -> SocketAddr {
    let addr = table
        .get("http")
        .and_then(|http| http.get("listen"))
        .and_then(toml::Value::as_str)
        .and_then(|listen| listen.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Writes the demo configs under `data_dir/demo`: the user's `<service>.toml` from
/// `user_config_dir` (if any) with the demo's settings added where they say nothing.
/// `listen` is where the demo page will be served; with `xmpp`, im-bridge holds its
/// accounts and reads a FIFO in the demo dir.
pub fn prepare(
    data_dir: &Path,
    user_config_dir: Option<&Path>,
    sim: Simulator<'_>,
    xmpp: Option<&crate::demo_xmpp::DemoXmpp>,
    listen: SocketAddr,
    services: &[(&str, u16)],
) -> anyhow::Result<DemoSetup> {
    let demo_dir = data_dir.join("demo");
    let config_dir = demo_dir.join("config");
    let rules_dir = demo_dir.join("rules");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::create_dir_all(&rules_dir)?;
    for (name, text) in EXAMPLE_RULES {
        std::fs::write(rules_dir.join(name), text)?;
    }
    std::fs::write(rules_dir.join("demo-mirror.yaml"), MIRROR_RULE)?;

    let jwt_secret = random_secret();
    let api_key = random_secret();
    let im_fifo = xmpp.map(|_| demo_dir.join("im.fifo"));
    let origin = format!("http://{listen}");
    let mut tables = Vec::new();
    for (name, _) in services {
        let table = match user_config_dir.map(|dir| dir.join(format!("{name}.toml"))) {
            Some(path) if path.is_file() => std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .parse::<toml::Table>()
                .with_context(|| format!("parsing {}", path.display()))?,
            _ => toml::Table::new(),
        };
        tables.push((*name, table));
    }
    let port_of = |wanted: &str| services.iter().find(|(n, _)| *n == wanted).map_or(0, |(_, p)| *p);
    let push_http = tables.iter().find(|(n, _)| *n == "ws-push").map_or_else(
        || SocketAddr::from(([127, 0, 0, 1], port_of("ws-push"))),
        |(_, t)| listen_of(t, port_of("ws-push")),
    );
    let chat_http = tables.iter().find(|(n, _)| *n == "chat-store").map_or_else(
        || SocketAddr::from(([127, 0, 0, 1], port_of("chat-store"))),
        |(_, t)| listen_of(t, port_of("chat-store")),
    );

    for (name, mut table) in tables {
        let extra = match name {
            "ami-bridge" => toml::toml! {
                [[pbx]]
                id = PBX
                host = (sim.addr.ip().to_string())
                port = (i64::from(sim.addr.port()))
                username = (sim.user)
                secret = (sim.secret)
            },
            "im-bridge" => match (xmpp, &im_fifo) {
                (Some(xmpp), Some(fifo)) => {
                    let mut table = toml::toml! {
                        [script]
                        fifo = (fifo.display().to_string())
                    };
                    table.insert("account".to_owned(), xmpp.im_bridge_accounts());
                    table
                }
                _ => toml::Table::new(),
            },
            "ws-push" => toml::toml! {
                [auth]
                jwt_secret = (jwt_secret.clone())
                [api]
                keys = [(api_key.clone())]
                [ws]
                allowed_origins = [(origin.clone())]
            },
            "chat-store" => toml::toml! {
                [auth]
                jwt_secret = (jwt_secret.clone())
                [widget]
                push_url = (format!("ws://{push_http}/ws"))
            },
            "hook-runner" => toml::toml! {
                [rules]
                dir = (rules_dir.display().to_string())
            },
            _ => toml::Table::new(),
        };
        merge(&mut table, extra);
        write_private(&config_dir.join(format!("{name}.toml")), &toml::to_string(&table)?)?;
    }
    write_private(&demo_dir.join("site-api-key"), &format!("{api_key}\n"))?;
    Ok(DemoSetup {
        config_dir,
        jwt_secret,
        site_api_key: api_key,
        push_http,
        chat_http,
        listen,
        im_fifo,
    })
}

/// The callers the generator picks from: a number and a name.
const CALLERS: [(&str, &str); 6] = [
    ("5551234", "Alice Caller"),
    ("5552345", "Bob Builder"),
    ("5553456", "Carol Danvers"),
    ("5554567", "Dave Lister"),
    ("5555678", "Eve Online"),
    ("5556789", "Frank Poole"),
];

/// Originates a call every `interval` from a random caller to 101 (answered) or 102
/// (busy, so missed) on the simulator until `shutdown`.
async fn call_generator(bus: Bus, interval: Duration, shutdown: CancellationToken) {
    let subject = format!("sb.cmd.ami.{PBX}.action");
    loop {
        let (extension, (number, name), hold) = {
            let mut rng = rand::rng();
            let extension = *["101", "102"].choose(&mut rng).unwrap_or(&"101");
            let caller = *CALLERS.choose(&mut rng).unwrap_or(&CALLERS[0]);
            (extension, caller, rng.random_range(15..=40))
        };
        let request = json!({
            "action": "Originate",
            "headers": [
                { "name": "Channel", "value": format!("Local/{extension}@from-internal") },
                { "name": "Application", "value": "Wait" },
                { "name": "Data", "value": hold.to_string() },
                { "name": "CallerID", "value": format!("\"{name}\" <{number}>") },
            ],
        });
        tokio::select! {
            reply = bus.request::<_, Value>(&subject, &request, Some(Duration::from_secs(10))) => {
                if let Err(error) = reply {
                    crate::up::say(&format!("demo call {number} -> {extension} not placed: {error}"));
                }
            }
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The flows the demo drives besides calls, one every `interval`, in turn: the site
/// pushes a notice to operator [`OPERATOR`] over ws-push's HTTP API (F5), alice writes
/// to bob in the private chat through chat-store's API (F6) and, with IM, alice asks
/// the bot to call 101 (F2), the site notifies alice through the rule `site-to-im`
/// (F7) and a script writes a line to im-bridge's FIFO (F7). F3 needs nothing more:
/// the missed calls to 102 make it; F4 the page runs itself once it is connected.
async fn flow_generator(web: Web, interval: Duration, shutdown: CancellationToken) {
    let steps = if web.im_fifo.is_some() { 5 } else { 2 };
    let mut order = 1000_u32;
    for step in 0_u64.. {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        order += 1;
        let (flow, outcome) = match (step % steps, &web.im_fifo) {
            (1, _) => {
                let text = format!("Hello bob, this is chat message #{order} of the demo");
                ("alice's chat message", alice_chats(&web, &text).await)
            }
            (2, Some(_)) => (
                "alice's \"call 101\"",
                alice_writes(&web.bus, "call 101").await.map(drop),
            ),
            (3, Some(_)) => {
                let text = format!("Order #{order} has shipped");
                (
                    "the site's IM notification",
                    site_notifies(&web.bus, &text).await.map(drop),
                )
            }
            (4, Some(fifo)) => {
                let line = format!("/msg main {IM_USER} Backup finished at {} UTC", utc_clock());
                ("the script's FIFO line", write_fifo(fifo, &line).await)
            }
            _ => {
                let text = format!("Payment #{order} received, thank you");
                ("the site's push", site_pushes(&web, &text).await.map(drop))
            }
        };
        if let Err(error) = outcome {
            crate::up::say(&format!("demo: {flow} not sent: {error:#}"));
        }
    }
}

/// POSTs `body` as JSON to `url` with `bearer` and returns the JSON answer; an answer
/// that is not a success is an error naming `service`, its status and its body.
async fn post_json(web: &Web, service: &str, url: String, bearer: &str, body: &Value) -> anyhow::Result<Value> {
    let answer = web
        .http
        .post(url)
        .bearer_auth(bearer)
        .json(body)
        .send()
        .await
        .map_err(reqwest::Error::without_url)?;
    let status = answer.status();
    let text = answer.text().await.map_err(reqwest::Error::without_url)?;
    if !status.is_success() {
        bail!("{service} answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{service} answered something else than JSON"))
}

/// alice sends `text` to bob through chat-store's API, as her widget would (F6).
async fn alice_chats(web: &Web, text: &str) -> anyhow::Result<()> {
    let token = demo_token(web, "alice")?;
    let message = json!({ "to": "bob", "text": text });
    post_json(
        web,
        "chat-store",
        format!("{}/api/v1/messages", web.chat_base),
        &token,
        &message,
    )
    .await?;
    Ok(())
}

/// The site pushes a `notice` to [`OPERATOR`] through ws-push's HTTP API with the
/// site API key, as a PHP site would (F5); returns ws-push's answer (`offset`,
/// `epoch`, `online`, `connections`).
async fn site_pushes(web: &Web, text: &str) -> anyhow::Result<Value> {
    let request = json!({
        "target": { "user": OPERATOR },
        "push": { "type": "notice", "data": { "text": text, "site": SITE } },
    });
    let url = format!("{}/api/v1/publish", web.push_base);
    post_json(web, "ws-push", url, &web.site_api_key, &request).await
}

/// alice sends `text` to the bot over XMPP (through her im-bridge account).
async fn alice_writes(bus: &Bus, text: &str) -> anyhow::Result<Value> {
    let request = json!({ "to": crate::demo_xmpp::BOT, "text": text, "kind": "CHAT_KIND_DIRECT" });
    Ok(bus
        .request::<_, Value>("sb.cmd.im.alice.send", &request, Some(Duration::from_secs(10)))
        .await?)
}

/// The site [`SITE`] publishes a notification for alice; returns the event's id.
async fn site_notifies(bus: &Bus, text: &str) -> anyhow::Result<String> {
    let event = bus.event("com.example.shop.notify.v1", &json!({ "to": IM_USER, "text": text }))?;
    bus.publish(format!("sb.evt.site.{SITE}.notify"), &event).await?;
    Ok(event.id)
}

/// Writes one line to im-bridge's FIFO as a shell script would; fails at once when
/// nobody reads it (non-blocking open) instead of hanging.
async fn write_fifo(fifo: &Path, line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fifo = fifo.to_path_buf();
    let line = format!("{line}\n");
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo)
            .with_context(|| format!("opening {}", fifo.display()))?;
        pipe.write_all(line.as_bytes())?;
        Ok(())
    })
    .await?
}

fn utc_clock() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02}", now.hour(), now.minute(), now.second())
}

#[derive(Clone)]
struct Web {
    jwt_secret: String,
    push_url: String,
    csp: HeaderValue,
    host: String,
    chat_base: String,
    push_base: String,
    http: reqwest::Client,
    bus: Bus,
    site_api_key: String,
    im_fifo: Option<PathBuf>,
}

/// Runs the call and flow generators and the demo page until `shutdown`; returns the
/// page's URL.
pub async fn start(
    setup: &DemoSetup,
    nats_url: String,
    call_interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<String> {
    let config = NatsConfig {
        url: nats_url,
        ..Default::default()
    };
    let bus = Bus::connect(&config, "switchboard-demo")
        .await
        .context("the demo cannot connect to NATS")?;
    let listener = tokio::net::TcpListener::bind(setup.listen)
        .await
        .with_context(|| format!("the demo page cannot listen on {}", setup.listen))?;
    let addr = listener.local_addr()?;
    let push_origin = format!("ws://{}", setup.push_http);
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
         connect-src 'self' {push_origin}; frame-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'self'"
    );
    let web = Web {
        jwt_secret: setup.jwt_secret.clone(),
        push_url: format!("{push_origin}/ws"),
        csp: HeaderValue::from_str(&csp)?,
        host: addr.to_string(),
        chat_base: format!("http://{}", setup.chat_http),
        push_base: format!("http://{}", setup.push_http),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?,
        bus: bus.clone(),
        site_api_key: setup.site_api_key.clone(),
        im_fifo: setup.im_fifo.clone(),
    };
    let app = Router::new()
        .route(
            "/",
            get(|State(web): State<Web>| async move { page(&web, "text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/demo.js",
            get(|State(web): State<Web>| async move { page(&web, "text/javascript; charset=utf-8", DEMO_JS) }),
        )
        .route(
            "/demo.css",
            get(|State(web): State<Web>| async move { page(&web, "text/css; charset=utf-8", DEMO_CSS) }),
        )
        .route(
            "/chat.html",
            get(|State(web): State<Web>| async move { page(&web, "text/html; charset=utf-8", CHAT_HTML) }),
        )
        .route(
            "/chat.js",
            get(|State(web): State<Web>| async move { page(&web, "text/javascript; charset=utf-8", CHAT_JS) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/demo/token", post(token))
        .route("/demo/info", get(info))
        .route("/demo/im", post(im))
        .route("/demo/site", post(site))
        .route("/demo/notify", post(notify))
        .fallback(proxy)
        .with_state(web.clone());
    let serve_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(serve_shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            crate::up::say(&format!("the demo page stopped: {error}"));
        }
    });
    tokio::spawn(flow_generator(web.clone(), call_interval * 2, shutdown.clone()));
    tokio::spawn(call_generator(bus, call_interval, shutdown));
    Ok(format!("http://{addr}/"))
}

fn page(web: &Web, content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, web.csp.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// Why a `/demo/...` request is refused: the status and the message answered.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.0, &self.1)
    }
}

/// A caller the `/demo/...` endpoints answer: a loopback peer that named the demo's
/// own host (no DNS rebinding). The POSTs also take only JSON bodies, so a
/// cross-site form cannot call them.
struct DemoCaller;

impl FromRequestParts<Web> for DemoCaller {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Refused> {
        let loopback = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
        if !loopback {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "the demo answers loopback clients only".into(),
            ));
        }
        if parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()) != Some(web.host.as_str()) {
            return Err(Refused(StatusCode::FORBIDDEN, "unexpected Host".into()));
        }
        Ok(Self)
    }
}

/// A token for the demo user `user` (one of [`DEMO_USERS`]), for ws-push and
/// chat-store, living [`TOKEN_LIFETIME`].
fn demo_token(web: &Web, user: &str) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(TOKEN_LIFETIME)
        .as_secs();
    let mut claims = json!({ "sub": user, "exp": exp });
    let extra = match user {
        OPERATOR => json!({ "channels": [EVENTS_CHANNEL] }),
        "admin" => json!({ "admin": true, "channels": ["chat-admin", EVENTS_CHANNEL], "topics": ["admin-ping"] }),
        _ => json!({}),
    };
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(web.jwt_secret.as_bytes()),
    )
}

/// `POST /demo/token` `{"user": "alice"}`: a token for one of [`DEMO_USERS`].
async fn token(State(web): State<Web>, _caller: DemoCaller, body: axum::Json<Value>) -> Result<Response, Refused> {
    let Some(user) = body
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| DEMO_USERS.contains(u))
    else {
        return Err(Refused(StatusCode::NOT_FOUND, "not a demo user".into()));
    };
    let token =
        demo_token(&web, user).map_err(|error| Refused(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({ "user": user, "token": token, "pushUrl": web.push_url })),
    )
        .into_response())
}

/// `GET /demo/info`: whether the demo has IM, and its addresses, for the page.
async fn info(State(web): State<Web>, _caller: DemoCaller) -> Result<Response, Refused> {
    let im = web.im_fifo.as_ref().map(|fifo| {
        json!({
            "domain": crate::demo_xmpp::DOMAIN,
            "bot": crate::demo_xmpp::BOT,
            "user": IM_USER,
            "site": SITE,
            "fifo": fifo.display().to_string(),
        })
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(json!({ "im": im }))).into_response())
}

/// The `text` of a `/demo/im`, `/demo/site` or `/demo/notify` body: not blank, at most
/// [`MAX_DEMO_TEXT`] bytes.
fn demo_text(body: &Value) -> Result<&str, Refused> {
    match body.get("text").and_then(Value::as_str) {
        Some(text) if !text.trim().is_empty() && text.len() <= MAX_DEMO_TEXT => Ok(text),
        _ => Err(Refused(
            StatusCode::BAD_REQUEST,
            format!("text: 1 to {MAX_DEMO_TEXT} bytes, not blank"),
        )),
    }
}

/// Refuses IM requests when the demo runs no XMPP server.
fn check_im(web: &Web) -> Result<(), Refused> {
    if web.im_fifo.is_none() {
        return Err(Refused(
            StatusCode::NOT_FOUND,
            "the demo has no IM: prosody is not installed".into(),
        ));
    }
    Ok(())
}

fn bad_gateway(error: anyhow::Error) -> Refused {
    Refused(StatusCode::BAD_GATEWAY, format!("{error:#}"))
}

/// `POST /demo/im` `{"text": "call 101"}`: alice writes it to the bot (F2 when it
/// asks for a call). Answers im-bridge's reply.
async fn im(State(web): State<Web>, _caller: DemoCaller, body: axum::Json<Value>) -> Result<Response, Refused> {
    check_im(&web)?;
    let reply = alice_writes(&web.bus, demo_text(&body)?).await.map_err(bad_gateway)?;
    Ok(axum::Json(reply).into_response())
}

/// `POST /demo/site` `{"text": "..."}`: the site [`SITE`] notifies alice (F7 through
/// the rule `site-to-im`). Answers the event's id.
async fn site(State(web): State<Web>, _caller: DemoCaller, body: axum::Json<Value>) -> Result<Response, Refused> {
    check_im(&web)?;
    let id = site_notifies(&web.bus, demo_text(&body)?).await.map_err(bad_gateway)?;
    Ok(axum::Json(json!({ "id": id })).into_response())
}

/// `POST /demo/notify` `{"text": "..."}`: the site pushes a notice to the operator
/// over ws-push's HTTP API (F5). Answers ws-push's answer: is the user online, on how
/// many connections.
async fn notify(State(web): State<Web>, _caller: DemoCaller, body: axum::Json<Value>) -> Result<Response, Refused> {
    let answer = site_pushes(&web, demo_text(&body)?).await.map_err(bad_gateway)?;
    Ok(axum::Json(answer).into_response())
}

/// The request headers passed on to the proxied services.
const FORWARDED_REQUEST: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    header::IF_NONE_MATCH,
];

/// The largest request body passed on (chat-store's attachment limit is 5 MiB).
const MAX_PROXIED_BODY: usize = 8 * 1024 * 1024;

/// chat-store's widget, admin console and API, and ws-push's client, under the
/// demo's origin.
async fn proxy(State(web): State<Web>, request: Request) -> Response {
    let path = request.uri().path();
    let base =
        if path.starts_with("/widget/") || path == "/admin" || path.starts_with("/admin/") || path.starts_with("/api/")
        {
            &web.chat_base
        } else if path == "/client.js" {
            &web.push_base
        } else {
            return refuse(StatusCode::NOT_FOUND, "not found");
        };
    let target = format!("{base}{}", request.uri().path_and_query().map_or(path, |p| p.as_str()));
    let method = request.method().clone();
    let mut forwarded = reqwest::header::HeaderMap::new();
    for name in FORWARDED_REQUEST {
        for value in request.headers().get_all(&name) {
            forwarded.append(name.clone(), value.clone());
        }
    }
    for name in ["x-chat-user", "x-chat-key"] {
        if let Some(value) = request.headers().get(name) {
            forwarded.insert(HeaderName::from_static(name), value.clone());
        }
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_PROXIED_BODY).await {
        Ok(body) => body,
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let answer = match web
        .http
        .request(method, &target)
        .headers(forwarded)
        .body(body)
        .send()
        .await
    {
        Ok(answer) => answer,
        Err(error) => return refuse(StatusCode::BAD_GATEWAY, &error.without_url().to_string()),
    };
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != header::CONNECTION && name != header::TRANSFER_ENCODING && name != header::CONTENT_LENGTH {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => return refuse(StatusCode::BAD_GATEWAY, &error.without_url().to_string()),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
