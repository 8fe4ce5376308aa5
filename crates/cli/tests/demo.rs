//! `switchboard up --demo`: the binaries (built next to `switchboard` by
//! `cargo build --bins` or `cargo test --workspace`) on free ports in a temp data
//! dir. The demo page is served with a strict CSP and no inline script; the token
//! endpoint answers for the four demo users only; within 60 s the simulated calls
//! produce a screen pop for operator 101 and call events on the `demo-events`
//! channel, both through ws-push over a real WebSocket; the admin's ping (F4) answers
//! the admin; chat-store's API is reachable on the page's origin; the site's push over
//! ws-push's HTTP API reaches 101 and answers online (F5); over the demo's
//! prosody, the bot answers alice's "call 101" (F2), bob hears of a missed call (F3),
//! and alice gets the site's notification and a script's FIFO line (F7), both from
//! the IM generator and from the page's endpoints; the generated secrets stay out of
//! the logs; SIGINT stops everything.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use switchboard_test_support::free_port;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const SERVICES: [&str; 5] = ["ami-bridge", "im-bridge", "ws-push", "chat-store", "hook-runner"];
const PATIENCE: Duration = Duration::from_secs(60);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `switchboard up --demo` and everything it printed so far.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    /// The next line of `up`'s own output (stderr) that contains `needle`.
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "`{needle}` not printed in time; up printed:\n{}",
                    self.log.lock().expect("log").as_str()
                ),
            }
        }
    }
}

fn collect<R: Read + Send + 'static>(reader: R, log: Arc<Mutex<String>>, lines: Option<mpsc::Sender<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            {
                let mut log = log.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    });
}

fn start_up(work: &Path, demo_port: u16, nats_port: u16) -> Up {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_switchboard")).parent().expect("bin dir");
    for binary in SERVICES.iter().chain(&["ami-sim"]) {
        assert!(
            bin_dir.join(binary).is_file(),
            "{binary} is not built in {}; run `cargo build --bins` first",
            bin_dir.display()
        );
    }
    let config_dir = work.join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    for service in SERVICES {
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n[grpc]\nlisten = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        );
        std::fs::write(config_dir.join(format!("{service}.toml")), text).expect("write config");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "up",
            "--demo",
            "--demo-call-interval-secs",
            "1",
            "--ready-timeout-secs",
            "60",
        ])
        .args(["--nats-port", &nats_port.to_string()])
        .args(["--demo-listen", &format!("127.0.0.1:{demo_port}")])
        .arg("--data-dir")
        .arg(work.join("data"))
        .arg("--config-dir")
        .arg(&config_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard up --demo");
    let log = Arc::new(Mutex::new(String::new()));
    let (lines_tx, lines) = mpsc::channel();
    collect(child.stdout.take().expect("stdout"), log.clone(), None);
    collect(child.stderr.take().expect("stderr"), log.clone(), Some(lines_tx));
    Up { child, lines, log }
}

/// Asserts that `up` printed a line containing `needle` so far.
fn up_log_contains(up: &Up, needle: &str) {
    let log = up.log.lock().expect("log");
    assert!(log.contains(needle), "`{needle}` not printed; up printed:\n{log}");
}

/// Whether `html` has an attribute like ` onclick=` (inline script).
fn has_event_handler_attribute(html: &str) -> bool {
    html.match_indices(" on").any(|(at, _)| {
        let rest = &html[at + 3..];
        let name_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    })
}

/// `POST <base><path>` with a JSON `body`, as the page does.
async fn demo_post(http: &reqwest::Client, base: &str, path: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|error| panic!("POST {path}: {error}"))
}

async fn token(http: &reqwest::Client, base: &str, user: &str) -> reqwest::Response {
    demo_post(http, base, "/demo/token", &json!({ "user": user })).await
}

async fn open_socket(push_url: &str, origin: &str, token: &str) -> Socket {
    let mut request = push_url.into_client_request().expect("ws request");
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("origin header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket to ws-push");
    send(&mut socket, json!({ "type": "connect", "token": token })).await;
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    socket
}

async fn send(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .expect("send a frame");
}

async fn next_json(socket: &mut Socket) -> Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_demo_serves_the_page_tokens_and_live_calls() {
    let work = tempfile::tempdir().expect("temp dir");
    let demo_port = free_port();
    let mut up = start_up(work.path(), demo_port, free_port());
    up.wait_for("all 5 services ready", Duration::from_secs(90));
    let announced = up.wait_for("demo: open", Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{demo_port}");
    assert!(
        announced.contains(&format!("{base}/")),
        "the URL is printed: {announced}"
    );

    let http = reqwest::Client::new();

    // The page and its script, with a strict CSP; no inline script in the page.
    for path in ["/", "/demo.js", "/chat.html", "/chat.js"] {
        let page = http.get(format!("{base}{path}")).send().await.expect("page");
        assert_eq!(page.status(), 200, "{path}");
        let csp = page
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        for directive in [
            "default-src 'none'",
            "script-src 'self';",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: CSP lacks {directive}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        let body = page.text().await.expect("body");
        if path.ends_with(".html") || path == "/" {
            let scripts = body.matches("<script").count();
            assert!(scripts >= 2, "{path} loads its scripts");
            assert_eq!(
                body.matches("<script src=\"/").count(),
                scripts,
                "{path}: every script is a same-origin file"
            );
            assert!(!has_event_handler_attribute(&body), "{path}: an inline on...= handler");
        }
    }
    // chat-store's widget and admin console, and ws-push's client, on this origin.
    for path in ["/widget/switchboard-chat.js", "/admin/", "/client.js"] {
        let asset = http.get(format!("{base}{path}")).send().await.expect("proxied asset");
        assert_eq!(asset.status(), 200, "{path}");
    }
    assert_eq!(
        http.get(format!("{base}/nothing-here"))
            .send()
            .await
            .expect("404")
            .status(),
        404
    );

    // Tokens for the demo users only.
    let mut tokens = std::collections::HashMap::new();
    let mut push_url = String::new();
    for user in ["101", "alice", "bob", "admin"] {
        let answer = token(&http, &base, user).await;
        assert_eq!(answer.status(), 200, "{user}");
        let answer: Value = answer.json().await.expect("token JSON");
        assert_eq!(answer["user"], user);
        push_url = answer["pushUrl"].as_str().expect("pushUrl").to_owned();
        tokens.insert(user, answer["token"].as_str().expect("token").to_owned());
    }
    for stranger in ["mallory", "", "admin ", "101\n"] {
        assert_eq!(token(&http, &base, stranger).await.status(), 404, "{stranger:?}");
    }
    let not_json = http
        .post(format!("{base}/demo/token"))
        .body("user=admin")
        .send()
        .await
        .expect("form post");
    assert!(not_json.status().is_client_error(), "a form post is refused");
    let other_host = http
        .post(format!("{base}/demo/token"))
        .header("host", "evil.example")
        .json(&json!({ "user": "admin" }))
        .send()
        .await
        .expect("rebinding post");
    assert_eq!(other_host.status(), 403, "another Host (DNS rebinding) is refused");

    // chat-store accepts the demo tokens through the page's origin.
    let me: Value = http
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(&tokens["alice"])
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("me JSON");
    assert_eq!(me["user"], "alice", "{me}");
    assert_eq!(me["pushUrl"], push_url.as_str(), "{me}");

    // Operator 101 gets a screen pop and the call events on the demo channel.
    let mut operator = open_socket(&push_url, &base, &tokens["101"]).await;
    send(
        &mut operator,
        json!({ "type": "subscribe", "id": "1", "channel": "demo-events" }),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    let (mut pop, mut call_event) = (None, None);
    while pop.is_none() || call_event.is_none() {
        assert!(
            Instant::now() < deadline,
            "within 60 s: pop {pop:?}, call event {call_event:?}"
        );
        let frame = next_json(&mut operator).await;
        if frame["type"] != "push" {
            continue;
        }
        if frame["push"]["type"] == "call.ringing" && frame["source"] == "user" {
            pop = Some(frame);
        } else if frame["push"]["type"] == "demo.event"
            && frame["source"] == "channel:demo-events"
            && frame["push"]["data"]["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("sb.evt.ami.pbx1.call."))
        {
            call_event = Some(frame);
        }
    }
    let pop = pop.expect("pop");
    assert_eq!(pop["push"]["data"]["extension"], "101", "{pop}");
    assert!(
        pop["push"]["data"]["number"]
            .as_str()
            .is_some_and(|n| n.starts_with("555")),
        "the caller's number: {pop}"
    );
    let call_event = call_event.expect("call event");
    assert_eq!(
        call_event["push"]["data"]["type"], "switchboard.ami.call.v1",
        "{call_event}"
    );

    // F4 from the page: the admin's ping is answered to the admin.
    let mut admin = open_socket(&push_url, &base, &tokens["admin"]).await;
    send(
        &mut admin,
        json!({ "type": "publish", "id": "p", "topic": "admin-ping", "data": { "host": "127.0.0.1" } }),
    )
    .await;
    let result = loop {
        let frame = next_json(&mut admin).await;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "push" && frame["push"]["type"] == "admin.ping.result" {
            break frame;
        }
    };
    assert!(
        result["push"]["data"]["output"]
            .as_str()
            .is_some_and(|o| o.contains("127.0.0.1")),
        "ping's output: {result}"
    );
    // alice may not run it.
    let mut alice = open_socket(&push_url, &base, &tokens["alice"]).await;
    send(
        &mut alice,
        json!({ "type": "publish", "id": "x", "topic": "admin-ping", "data": { "host": "127.0.0.1" } }),
    )
    .await;
    let refused = next_json(&mut alice).await;
    assert_eq!(refused["type"], "error", "{refused}");

    // F5: the site's push through ws-push's HTTP API reaches 101, online; and the
    // flow generator's own pushes come too.
    let answer: Value = demo_post(&http, &base, "/demo/notify", &json!({ "text": "Paid, from the test" }))
        .await
        .json()
        .await
        .expect("notify answer");
    assert_eq!(answer["online"], true, "{answer}");
    assert!(answer["connections"].as_u64().is_some_and(|n| n >= 1), "{answer}");
    // F6: the flow generator's chat message from alice to bob, on the demo channel.
    let (mut ours, mut generated, mut chat) = (false, false, false);
    let deadline = Instant::now() + PATIENCE;
    while !(ours && generated && chat) {
        assert!(
            Instant::now() < deadline,
            "within 60 s: ours {ours}, generated {generated}, chat {chat}"
        );
        let frame = next_json(&mut operator).await;
        if frame["push"]["type"] == "notice" && frame["source"] == "user" {
            let text = frame["push"]["data"]["text"].as_str().unwrap_or_default();
            ours |= text == "Paid, from the test";
            generated |= text.starts_with("Payment #");
        }
        let event = &frame["push"]["data"];
        if event["subject"] == "sb.evt.chat.message.created" {
            let message = &event["data"]["message"];
            chat |= message["from"] == "alice"
                && message["to"] == "bob"
                && message["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Hello bob, this is chat message #"));
        }
    }

    // IM (F2, F3, F7) over the demo's prosody; the page's endpoints refuse bad input.
    up_log_contains(&up, "demo: prosody on 127.0.0.1:");
    let info: Value = http
        .get(format!("{base}/demo/info"))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("info JSON");
    assert_eq!(info["im"]["domain"], "example.org", "{info}");
    assert_eq!(info["im"]["bot"], "bot@example.org", "{info}");
    for (path, body, status) in [
        ("/demo/im", json!({ "text": "  " }), 400),
        ("/demo/im", json!({ "text": "x".repeat(501) }), 400),
        ("/demo/site", json!({ "nothing": 1 }), 400),
    ] {
        let answer = demo_post(&http, &base, path, &body).await;
        assert_eq!(answer.status(), status, "{path} {body}");
    }
    let rebinding = http
        .post(format!("{base}/demo/site"))
        .header("host", "evil.example")
        .json(&json!({ "text": "from elsewhere" }))
        .send()
        .await
        .expect("rebinding post");
    assert_eq!(rebinding.status(), 403);
    let sent: Value = demo_post(&http, &base, "/demo/im", &json!({ "text": "hello bot, from the test" }))
        .await
        .json()
        .await
        .expect("im reply");
    assert!(sent["messageId"].as_str().is_some_and(|id| !id.is_empty()), "{sent}");
    let posted = demo_post(
        &http,
        &base,
        "/demo/site",
        &json!({ "text": "Your invoice from the test is ready" }),
    )
    .await;
    assert_eq!(posted.status(), 200);
    let wanted: [(&str, &str, &str); 6] = [
        ("F2: the bot answers alice's call", "alice", "Calling 101: Success"),
        (
            "F3: bob hears of a missed call on 102",
            "bob",
            "Missed call on 102 from 555",
        ),
        ("F7: the generator's site notification", "alice", "[shop] Order #"),
        ("F7: the generator's FIFO line", "alice", "Backup finished at"),
        ("the page's message reaches the bot", "main", "hello bot, from the test"),
        (
            "F7: the page's site notification",
            "alice",
            "[shop] Your invoice from the test is ready",
        ),
    ];
    let mut seen = vec![None; wanted.len()];
    let deadline = Instant::now() + PATIENCE;
    while seen.iter().any(Option::is_none) {
        let missing: Vec<_> = wanted
            .iter()
            .zip(&seen)
            .filter(|(_, s)| s.is_none())
            .map(|(w, _)| w.0)
            .collect();
        assert!(Instant::now() < deadline, "within 60 s, not seen: {missing:?}");
        let frame = next_json(&mut operator).await;
        let event = &frame["push"]["data"];
        let Some(account) = event["subject"]
            .as_str()
            .and_then(|s| s.strip_prefix("sb.evt.im."))
            .and_then(|s| s.strip_suffix(".message"))
        else {
            continue;
        };
        let text = event["data"]["text"].as_str().unwrap_or_default();
        for (index, (_, to, start)) in wanted.iter().enumerate() {
            if account == *to && text.starts_with(start) {
                seen[index] = Some(event["data"]["from"].clone());
            }
        }
    }
    assert_eq!(seen[0], Some(json!("bot@example.org")), "the bot answered alice");
    assert_eq!(seen[4], Some(json!("alice@example.org")), "alice wrote to the bot");

    // The generated secrets are private and never logged.
    let config = work.path().join("data/demo/config/ws-push.toml");
    let text = std::fs::read_to_string(&config).expect("ws-push.toml");
    let table: toml::Table = text.parse().expect("toml");
    let secret = table["auth"]["jwt_secret"].as_str().expect("jwt secret").to_owned();
    let api_key = table["api"]["keys"][0].as_str().expect("api key").to_owned();
    assert!(secret.len() >= 32 && api_key.len() >= 32);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&config).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o077, 0, "ws-push.toml is readable by its owner only: {mode:o}");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(up.child.id()).expect("pid fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    up.wait_for("nats-server stopped", Duration::from_secs(60));
    let status = up.child.wait().expect("wait up");
    assert!(status.success(), "up exited with {status}");
    let log = up.log.lock().expect("log").clone();
    assert!(log.contains("demo: ami-sim stopped"), "{log}");
    assert!(log.contains("demo: prosody stopped"), "{log}");
    let im_bridge: toml::Table = std::fs::read_to_string(work.path().join("data/demo/config/im-bridge.toml"))
        .expect("im-bridge.toml")
        .parse()
        .expect("toml");
    let accounts = im_bridge["account"].as_array().expect("accounts");
    assert_eq!(accounts.len(), 3, "bot, alice, bob");
    for account in accounts {
        let password = account["password"].as_str().expect("password");
        assert!(password.len() >= 32);
        assert!(!log.contains(password), "an XMPP password is in the logs");
    }
    assert!(!log.contains(&secret), "the JWT secret is in the logs");
    assert!(!log.contains(&api_key), "the API key is in the logs");
    for token in tokens.values() {
        assert!(!log.contains(token.as_str()), "a demo token is in the logs");
    }
}
