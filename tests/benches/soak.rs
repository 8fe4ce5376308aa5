//! Soak: every flow (F1..F7) at a steady rate for `SOAK_SECONDS` (default 600)
//! against the five services running as separate OS processes, with each process's
//! resident memory (`VmRSS` in `/proc/<pid>/status`) sampled every
//! `SOAK_SAMPLE_SECONDS` (default 30).
//!
//! One real nats-server and prosody; the AMI simulator in this process; ami-bridge,
//! im-bridge, ws-push, chat-store and hook-runner (the example rules of F1, F2, F3,
//! F4, F7) as processes with generated TOML configs. Every message carries a number,
//! so each receiver counts what arrived once, and what arrived twice:
//! - F1: Originates to extensions 200-209 (caller number = the message number); the
//!   operators' sockets count `call.ringing` pops;
//! - F2: alice asks the bot over XMPP to `call 3NNNNN`; she counts the answers;
//! - F3: Originates to 102, which is busy (a missed call); bob counts the XMPP alerts;
//! - F4: an admin's socket asks `admin-ping` for 127.0.x.y; it counts the results;
//! - F5: the site's HTTP publish to a user with one socket; the socket counts the
//!   notices, the answers count "online";
//! - F6: alice sends bob a message through chat-store's HTTP API, then bob marks it
//!   read; bob's socket counts the messages, alice's the read receipts;
//! - F7: NATS requests `sb.cmd.im.main.send` and site events `sb.evt.site.shop.notify`
//!   to mallory, who counts the XMPP messages.
//!
//! Prints Markdown tables: per flow sent / delivered / lost / duplicated, and per
//! process RSS at start, min, max, end and its growth from the 2-minute mark to the
//! end. Nothing here passes or fails on timing or memory: it reports what it saw.
//!
//! `cargo build -p ami-bridge -p im-bridge -p ws-push -p chat-store -p hook-runner`
//! then `cargo bench -p switchboard-flows --bench soak --profile dev` (the services
//! run from the build profile of this harness: `dev` runs the debug binaries just
//! built; plain `cargo bench` needs them built with `--release`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_bus::Bus;
use switchboard_flows::{
    ImServer, ImUser, JWT_SECRET, PATIENCE, PUSH_API_KEY, ServiceProcess, Socket, ami_bridge_toml, bus, example_rule,
    open_browser, originate_from, start_sim, wait_for_rule_consumers,
};
use switchboard_proto::ami::v1 as ami;
use switchboard_proto::im::v1::{SendReply, SendRequest};
use switchboard_test_support::{NatsServer, free_port, wait_for_port};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Offered rates, per second.
const F1_RATE: f64 = 20.0;
const F2_RATE: f64 = 2.0;
const F3_RATE: f64 = 2.0;
/// The example rule pings three times (2 s) with at most two runs at once.
const F4_RATE: f64 = 0.5;
const F5_RATE: f64 = 20.0;
const F6_RATE: f64 = 10.0;
const F7_RATE: f64 = 2.0;
/// The operators of F1 are the users (and extensions) 200..200 + OPERATORS.
const OPERATORS: u64 = 10;
/// F1 and F3 callers' numbers are this plus the message number.
const NUMBER_BASE: u64 = 1_000_000;
/// How long to wait after the last send for what is still on its way.
const DRAIN: Duration = Duration::from_secs(20);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One flow's counts: what was sent, what arrived (once per number), what arrived again.
struct Flow {
    /// The row's name in the table.
    name: &'static str,
    /// Offered messages per second.
    rate: f64,
    /// Messages sent (numbered from 0).
    sent: AtomicU64,
    /// Sends the first hop refused or did not answer (they count as sent, and as lost
    /// unless they arrive anyway).
    refused: AtomicU64,
    /// The numbers that arrived.
    seen: Mutex<HashSet<u64>>,
    /// Arrivals of a number already seen.
    duplicates: AtomicU64,
    /// A flow-specific count, named by `extra_name` (F5: answers saying "online").
    extra: AtomicU64,
    /// What `extra` counts; empty when nothing.
    extra_name: &'static str,
}

impl Flow {
    fn new(name: &'static str, rate: f64, extra_name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            rate,
            sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            seen: Mutex::new(HashSet::new()),
            duplicates: AtomicU64::new(0),
            extra: AtomicU64::new(0),
            extra_name,
        })
    }

    fn arrived(&self, n: u64) {
        let fresh = self.seen.lock().map(|mut seen| seen.insert(n)).unwrap_or(true);
        if !fresh {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn delivered(&self) -> u64 {
        self.seen.lock().map_or(0, |seen| seen.len() as u64)
    }

    /// Sends `send(n)` at the flow's rate until `until`, each in its own task so a
    /// slow answer does not hold back the next send; a send returning false is refused.
    fn drive<F, Fut>(self: &Arc<Self>, until: Instant, send: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(u64) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let flow = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / flow.rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut in_flight = Vec::new();
            while Instant::now() < until {
                ticker.tick().await;
                let n = flow.sent.fetch_add(1, Ordering::Relaxed);
                let flow = flow.clone();
                let sending = send(n);
                in_flight.push(tokio::spawn(async move {
                    if !sending.await {
                        flow.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }));
                in_flight.retain(|task| !task.is_finished());
            }
            for task in in_flight {
                let _ = task.await;
            }
        })
    }
}

/// The resident set of process `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Reads push frames from `socket` and hands each one's `push` to `on_push`; ends
/// when the socket does.
fn read_pushes(socket: futures::stream::SplitStream<Socket>, on_push: impl Fn(&Value) + Send + 'static) {
    tokio::spawn(async move {
        let mut socket = socket;
        while let Some(Ok(frame)) = socket.next().await {
            let Message::Text(text) = frame else { continue };
            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if value["type"] == "push" {
                on_push(&value["push"]);
            }
        }
    });
}

/// A browser token valid well past the run (ws-push closes a socket at `exp`).
fn long_token(user: &str, seconds: u64, extra: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + seconds
        + 3600;
    let mut claims = json!({ "exp": exp });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    switchboard_flows::browser_token(user, claims)
}

/// Opens a socket for `user`; returns its two halves.
async fn socket_of(
    http: std::net::SocketAddr,
    user: &str,
    seconds: u64,
    extra: Value,
) -> (
    futures::stream::SplitSink<Socket, Message>,
    futures::stream::SplitStream<Socket>,
) {
    let (socket, _) = open_browser(http, &long_token(user, seconds, extra)).await;
    socket.split()
}

/// Runs the XMPP user `peer`: says each text from `say` to `to`, and hands each
/// message it gets to `on_message`. Aborted at the end of the run.
fn run_im_user(
    mut peer: ImUser,
    to: String,
    mut say: mpsc::UnboundedReceiver<String>,
    on_message: impl Fn(&str) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut saying = true;
        loop {
            tokio::select! {
                text = say.recv(), if saying => match text {
                    Some(text) => peer.say(&to, &text).await,
                    None => saying = false,
                },
                (_, text) = peer.next_message() => on_message(&text),
            }
        }
    })
}

/// The number after `prefix` at the start of `text`, up to the first non-digit.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = text.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Asks ami-bridge for an Originate; true when it says Success.
async fn call(observer: &Bus, exten: &str, n: u64) -> bool {
    let caller = format!("\"Soak\" <{}>", NUMBER_BASE + n);
    matches!(
        observer
            .request::<_, ami::ActionResponse>(
                "sb.cmd.ami.pbx1.action",
                &originate_from(exten, &caller),
                Some(Duration::from_secs(10)),
            )
            .await,
        Ok(reply) if reply.response == "Success"
    )
}

/// The services as processes, with what they need.
struct Stack {
    processes: Vec<(&'static str, ServiceProcess)>,
    push_http: std::net::SocketAddr,
    chat_http: std::net::SocketAddr,
}

async fn start_stack(nats: &NatsServer, im: &ImServer, sim: std::net::SocketAddr, dir: &Path) -> Stack {
    let observer = bus(nats).await;
    let mut links = observer
        .client()
        .subscribe("sb.evt.*.*.link.up")
        .await
        .expect("subscribe");
    let nats_env = ("SB_NATS__URL", nats.url());
    let mut processes = Vec::new();

    let ami_config = ami_bridge_toml(sim);
    processes.push((
        "ami-bridge",
        ServiceProcess::start("ami-bridge", &ami_config, std::slice::from_ref(&nats_env), dir),
    ));

    let im_config = im_bridge::Config {
        accounts: vec![im.bot_account("main")],
        ..im_bridge::Config::default()
    };
    let im_config = toml::to_string(&im_config).expect("im-bridge config as TOML");
    processes.push((
        "im-bridge",
        ServiceProcess::start("im-bridge", &im_config, std::slice::from_ref(&nats_env), dir),
    ));

    let push_port = free_port();
    let push_config = format!("[auth]\njwt_secret = \"{JWT_SECRET}\"\n[api]\nkeys = [\"{PUSH_API_KEY}\"]\n");
    processes.push((
        "ws-push",
        ServiceProcess::start(
            "ws-push",
            &push_config,
            &[nats_env.clone(), ("SB_HTTP__LISTEN", format!("127.0.0.1:{push_port}"))],
            dir,
        ),
    ));

    // Two users exchange F6_RATE messages a second: far above the per-user default
    // (120 a minute), which guards a real site against one user's flood.
    let chat_port = free_port();
    let chat_dir = dir.join("chat");
    std::fs::create_dir_all(&chat_dir).expect("chat dir");
    let chat_config = format!(
        "data_dir = \"{}\"\n[auth]\njwt_secret = \"{JWT_SECRET}\"\n[chat]\nrate_per_minute = 1000000\nrate_burst = 1000\n",
        chat_dir.display()
    );
    processes.push((
        "chat-store",
        ServiceProcess::start(
            "chat-store",
            &chat_config,
            &[nats_env.clone(), ("SB_HTTP__LISTEN", format!("127.0.0.1:{chat_port}"))],
            dir,
        ),
    ));

    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    for file in [
        "f1-screen-pop.yaml",
        "f2-im-call-bot.yaml",
        "f3-missed-call.yaml",
        "f4-admin-ping.yaml",
        "f7-site-to-im.yaml",
    ] {
        std::fs::copy(example_rule(file), rules.join(file)).expect("copy the example rule");
    }
    processes.push((
        "hook-runner",
        ServiceProcess::start(
            "hook-runner",
            &format!("[rules]\ndir = \"{}\"\n", rules.display()),
            std::slice::from_ref(&nats_env),
            dir,
        ),
    ));

    let push_http = std::net::SocketAddr::from(([127, 0, 0, 1], push_port));
    let chat_http = std::net::SocketAddr::from(([127, 0, 0, 1], chat_port));
    assert!(wait_for_port(push_http, PATIENCE), "ws-push listens");
    assert!(wait_for_port(chat_http, PATIENCE), "chat-store listens");
    wait_for_rule_consumers(
        nats,
        &[
            "screen-pop",
            "im-call-bot",
            "missed-call-im",
            "admin-ping",
            "site-to-im",
        ],
    )
    .await;
    let mut up = HashSet::new();
    while up.len() < 2 {
        let link = tokio::time::timeout(PATIENCE, links.next())
            .await
            .expect("the PBX and the IM account come up")
            .expect("subscription open");
        up.insert(link.subject.to_string());
    }
    Stack {
        processes,
        push_http,
        chat_http,
    }
}

/// A JSON call to chat-store as `user`: (status, body).
async fn chat_call(
    http: &reqwest::Client,
    chat: std::net::SocketAddr,
    token: &str,
    path: &str,
    body: Value,
) -> Option<(u16, Value)> {
    let response = http
        .post(format!("http://{chat}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = setting("SOAK_SECONDS", 600).max(1);
    let sample_every = Duration::from_secs(setting("SOAK_SAMPLE_SECONDS", 30).max(1));
    let work = tempfile::tempdir().expect("work dir");
    let nats = NatsServer::start().expect("nats-server");
    let im = ImServer::xmpp();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sim = start_sim(&shutdown).await;
    // The XMPP users, before the services take the cores to start.
    let alice = im.user("alice").await;
    let bob = im.user("bob").await;
    let mallory = im.user("mallory").await;
    let stack = start_stack(&nats, &im, sim.addr(), work.path()).await;
    let observer = bus(&nats).await;
    let http = reqwest::Client::new();

    let f1 = Flow::new("F1 screen pop (Originate -> operator's socket)", F1_RATE, "");
    let f2 = Flow::new("F2 IM bot (XMPP `call N` -> Originate -> answer)", F2_RATE, "");
    let f3 = Flow::new("F3 missed call (busy 102 -> bob's XMPP)", F3_RATE, "");
    let f4 = Flow::new("F4 admin ping (socket -> exec -> socket)", F4_RATE, "exit code 0");
    let f5 = Flow::new("F5 site push (HTTP -> user's socket)", F5_RATE, "answered online");
    let f6 = Flow::new("F6 chat message (HTTP -> bob's socket)", F6_RATE, "");
    let f6_read = Flow::new("F6 read receipt (HTTP read -> alice's socket)", F6_RATE, "");
    let f7_nats = Flow::new("F7 NATS request -> mallory's XMPP", F7_RATE, "");
    let f7_event = Flow::new("F7 site event -> rule -> mallory's XMPP", F7_RATE, "");
    let flows = [&f1, &f2, &f3, &f4, &f5, &f6, &f6_read, &f7_nats, &f7_event];

    // The receivers (a socket closes when its sink half is dropped with the stream's).
    let mut operator_sinks = Vec::new();
    for operator in 0..OPERATORS {
        let (sink, stream) = socket_of(stack.push_http, &(200 + operator).to_string(), seconds, json!({})).await;
        operator_sinks.push(sink);
        let flow = f1.clone();
        read_pushes(stream, move |push| {
            if push["type"] == "call.ringing"
                && let Some(n) = push["data"]["number"].as_str().and_then(|n| n.parse::<u64>().ok())
            {
                flow.arrived(n.saturating_sub(NUMBER_BASE));
            }
        });
    }
    let (mut admin_sink, admin_stream) = socket_of(
        stack.push_http,
        "admin1",
        seconds,
        json!({ "admin": true, "topics": ["admin-ping"] }),
    )
    .await;
    {
        let flow = f4.clone();
        read_pushes(admin_stream, move |push| {
            if push["type"] != "admin.ping.result" {
                return;
            }
            let host = push["data"]["host"].as_str().unwrap_or_default();
            let octets: Vec<u64> = host.split('.').filter_map(|o| o.parse().ok()).collect();
            if let [127, 0, high, low] = octets[..] {
                flow.arrived(high * 256 + low - 1);
                if push["data"]["exitCode"] == 0 || push["data"]["exitCode"] == "0" {
                    flow.extra.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let (site_sink, site_stream) = socket_of(stack.push_http, "reader", seconds, json!({})).await;
    {
        let flow = f5.clone();
        read_pushes(site_stream, move |push| {
            if push["type"] == "notice"
                && let Some(n) = push["data"]["text"].as_str().and_then(|n| n.parse().ok())
            {
                flow.arrived(n);
            }
        });
    }
    let message_numbers: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let (bob_sink, bob_stream) = socket_of(stack.push_http, "bob", seconds, json!({})).await;
    {
        let flow = f6.clone();
        read_pushes(bob_stream, move |push| {
            if push["type"] == "chat.message"
                && let Some(n) = push["data"]["text"].as_str().and_then(|t| number_after(t, "soak "))
            {
                flow.arrived(n);
            }
        });
    }
    // A read receipt lists every message it marked read (a read up to a later message
    // marks the earlier ones too, and a read of one already marked sends nothing), so
    // each message must be in exactly one receipt. A receipt may name a message whose
    // send this harness has not seen answered yet: those ids wait in `unresolved`.
    let unresolved: Arc<Mutex<Vec<String>>> = Arc::default();
    let (alice_sink, alice_stream) = socket_of(stack.push_http, "alice", seconds, json!({})).await;
    {
        let flow = f6_read.clone();
        let (numbers, unresolved) = (message_numbers.clone(), unresolved.clone());
        read_pushes(alice_stream, move |push| {
            if push["type"] != "chat.receipt" || push["data"]["kind"] != "read" {
                return;
            }
            for id in push["data"]["messageIds"].as_array().into_iter().flatten() {
                let Some(id) = id.as_str() else { continue };
                match numbers.lock().ok().and_then(|numbers| numbers.get(id).copied()) {
                    Some(n) => flow.arrived(n),
                    None => {
                        if let Ok(mut unresolved) = unresolved.lock() {
                            unresolved.push(id.to_owned());
                        }
                    }
                }
            }
        });
    }
    let bot = im.address("sbbot");
    let (alice_say, alice_says) = mpsc::unbounded_channel();
    let alice_im = {
        let flow = f2.clone();
        run_im_user(alice, bot.clone(), alice_says, move |text| {
            if let Some(n) = number_after(text, "Calling 3") {
                flow.arrived(n);
            }
        })
    };
    let bob_im = {
        let flow = f3.clone();
        let (_, nothing) = mpsc::unbounded_channel();
        run_im_user(bob, bot.clone(), nothing, move |text| {
            if let Some(n) = number_after(text, "Missed call on 102 from ") {
                flow.arrived(n.saturating_sub(NUMBER_BASE));
            }
        })
    };
    let mallory_im = {
        let (nats_flow, event_flow) = (f7_nats.clone(), f7_event.clone());
        let (_, nothing) = mpsc::unbounded_channel();
        run_im_user(mallory, bot.clone(), nothing, move |text| {
            if let Some(n) = number_after(text, "nats ") {
                nats_flow.arrived(n);
            } else if let Some(n) = number_after(text, "[shop] event ") {
                event_flow.arrived(n);
            }
        })
    };
    // The session asks for a channel snapshot after login, the services warm up.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Memory, sampled from the start of the traffic.
    let mut pids: Vec<(&str, u32)> = stack.processes.iter().map(|(name, p)| (*name, p.pid())).collect();
    pids.push(("nats-server", nats.pid().expect("nats-server runs")));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let load_at_start = load_average();
    let sampler = {
        let pids = pids.clone();
        tokio::spawn(async move {
            let mut samples: Vec<(Duration, Vec<u64>)> = Vec::new();
            let mut ticker = tokio::time::interval(sample_every);
            loop {
                ticker.tick().await;
                let at = started.elapsed();
                samples.push((at, pids.iter().map(|(_, pid)| rss_kib(*pid).unwrap_or(0)).collect()));
                if Instant::now() >= until {
                    return samples;
                }
            }
        })
    };

    // The traffic.
    let admin = {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let _ = admin_sink.send(Message::Text(frame.to_string().into())).await;
            }
        });
        tx
    };
    let alice_token = long_token("alice", seconds, json!({}));
    let bob_token = long_token("bob", seconds, json!({}));
    let drivers = vec![
        f1.drive(until, {
            let observer = observer.clone();
            move |n| {
                let observer = observer.clone();
                async move { call(&observer, &(200 + n % OPERATORS).to_string(), n).await }
            }
        }),
        f2.drive(until, move |n| {
            let sent = alice_say.send(format!("call 3{n:05}")).is_ok();
            async move { sent }
        }),
        f3.drive(until, {
            let observer = observer.clone();
            move |n| {
                let observer = observer.clone();
                async move { call(&observer, "102", n).await }
            }
        }),
        f4.drive(until, move |n| {
            let host = format!("127.0.{}.{}", (n + 1) / 256, (n + 1) % 256);
            let frame =
                json!({ "type": "publish", "id": n.to_string(), "topic": "admin-ping", "data": { "host": host } });
            let sent = admin.send(frame).is_ok();
            async move { sent }
        }),
        f5.drive(until, {
            let (http, push, answers) = (http.clone(), stack.push_http, f5.clone());
            move |n| {
                let http = http.clone();
                let flow = answers.clone();
                async move {
                    let answer = http
                        .post(format!("http://{push}/api/v1/publish"))
                        .bearer_auth(PUSH_API_KEY)
                        .json(&json!({
                            "target": { "user": "reader" },
                            "push": { "type": "notice", "data": { "text": n.to_string() } },
                        }))
                        .send()
                        .await;
                    let Ok(answer) = answer else { return false };
                    if answer.status() != 200 {
                        return false;
                    }
                    if answer.json::<Value>().await.is_ok_and(|a| a["online"] == true) {
                        flow.extra.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
            }
        }),
        f6.drive(until, {
            let (http, chat) = (http.clone(), stack.chat_http);
            let numbers = message_numbers.clone();
            let read = f6_read.clone();
            move |n| {
                let (http, numbers, read) = (http.clone(), numbers.clone(), read.clone());
                let (alice_token, bob_token) = (alice_token.clone(), bob_token.clone());
                async move {
                    let message = json!({ "to": "bob", "text": format!("soak {n}"), "clientId": format!("soak-{n}") });
                    let Some((201, sent)) = chat_call(&http, chat, &alice_token, "/api/v1/messages", message).await
                    else {
                        return false;
                    };
                    let Some(id) = sent["message"]["id"].as_str() else {
                        return false;
                    };
                    if let Ok(mut numbers) = numbers.lock() {
                        numbers.insert(id.to_owned(), n);
                    }
                    read.sent.fetch_add(1, Ordering::Relaxed);
                    let body = json!({ "upToMessageId": id });
                    if !matches!(
                        chat_call(&http, chat, &bob_token, "/api/v1/dialogs/alice/read", body).await,
                        Some((200, _))
                    ) {
                        read.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
            }
        }),
        f7_nats.drive(until, {
            let (observer, to) = (observer.clone(), im.address("mallory"));
            move |n| {
                let (observer, to) = (observer.clone(), to.clone());
                async move {
                    let request = SendRequest {
                        to,
                        text: format!("nats {n}"),
                        ..Default::default()
                    };
                    observer
                        .request::<_, SendReply>("sb.cmd.im.main.send", &request, Some(Duration::from_secs(10)))
                        .await
                        .is_ok()
                }
            }
        }),
        f7_event.drive(until, {
            let (observer, to) = (observer.clone(), im.address("mallory"));
            move |n| {
                let (observer, to) = (observer.clone(), to.clone());
                async move {
                    let Ok(event) = observer.event(
                        "com.example.shop.notify.v1",
                        &json!({ "to": to, "text": format!("event {n}") }),
                    ) else {
                        return false;
                    };
                    observer.publish("sb.evt.site.shop.notify".into(), &event).await.is_ok()
                }
            }
        }),
    ];
    for driver in drivers {
        let _ = driver.await;
    }
    let traffic_time = started.elapsed();
    let load_at_end = load_average();
    let samples = sampler.await.expect("sampler");

    // What is still on its way.
    let drain_until = Instant::now() + DRAIN;
    while Instant::now() < drain_until && flows.iter().any(|f| f.delivered() < f.sent.load(Ordering::Relaxed)) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for task in [alice_im, bob_im, mallory_im] {
        task.abort();
    }
    let late: Vec<String> = unresolved
        .lock()
        .map(|mut ids| ids.drain(..).collect())
        .unwrap_or_default();
    for id in late {
        if let Some(n) = message_numbers
            .lock()
            .ok()
            .and_then(|numbers| numbers.get(&id).copied())
        {
            f6_read.arrived(n);
        }
    }
    let mut streams = Vec::new();
    for name in ["SB_EVENTS", "SB_PUSH"] {
        if let Ok(mut stream) = observer.jetstream().get_stream(name).await
            && let Ok(info) = stream.info().await
        {
            streams.push((name, info.state.messages, info.state.bytes));
        }
    }
    drop((operator_sinks, site_sink, bob_sink, alice_sink));
    shutdown.cancel();

    println!(
        "Soak: {} s of traffic ({:.0} s measured), samples every {} s; load average {load_at_start} at the start, {load_at_end} at the end.",
        seconds,
        traffic_time.as_secs_f64(),
        sample_every.as_secs()
    );
    println!();
    println!("| flow | rate /s | sent | delivered | lost | duplicated | refused at the first hop | other |");
    println!("|---|---|---|---|---|---|---|---|");
    for flow in flows {
        let sent = flow.sent.load(Ordering::Relaxed);
        let delivered = flow.delivered();
        let other = if flow.extra_name.is_empty() {
            String::new()
        } else {
            format!("{} {}", flow.extra_name, flow.extra.load(Ordering::Relaxed))
        };
        println!(
            "| {} | {} | {sent} | {delivered} | {} | {} | {} | {other} |",
            flow.name,
            flow.rate,
            sent.saturating_sub(delivered),
            flow.duplicates.load(Ordering::Relaxed),
            flow.refused.load(Ordering::Relaxed),
        );
    }
    println!();
    let warm = Duration::from_secs(120);
    let mark = samples.iter().position(|(at, _)| *at >= warm).unwrap_or(0);
    println!(
        "| process | RSS start MiB | min | max | end | growth from {:.0} s to the end |",
        samples.get(mark).map_or(0.0, |(at, _)| at.as_secs_f64())
    );
    println!("|---|---|---|---|---|---|");
    for (i, (name, _)) in pids.iter().enumerate() {
        let series: Vec<u64> = samples.iter().map(|(_, row)| row[i]).collect();
        let (first, last) = (
            series.first().copied().unwrap_or(0),
            series.last().copied().unwrap_or(0),
        );
        let at_mark = series.get(mark).copied().unwrap_or(0);
        println!(
            "| {name} | {} | {} | {} | {} | {:+.1} MiB |",
            mib(first),
            mib(series.iter().copied().min().unwrap_or(0)),
            mib(series.iter().copied().max().unwrap_or(0)),
            mib(last),
            (last as f64 - at_mark as f64) / 1024.0
        );
    }
    println!();
    println!("| stream at the end | messages | MiB |");
    println!("|---|---|---|");
    for (name, messages, bytes) in streams {
        println!("| {name} | {messages} | {} |", mib(bytes / 1024));
    }
    println!();
    print!("| s |");
    for (name, _) in &pids {
        print!(" {name} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(pids.len()));
    for (at, row) in &samples {
        print!("| {:.0} |", at.as_secs_f64());
        for kib in row {
            print!(" {} |", mib(*kib));
        }
        println!();
    }
}
