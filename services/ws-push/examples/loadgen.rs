//! Load generator for ws-push (or any server speaking its protocol subset):
//!
//! - `idle`: opens N connections that stay idle and reports the server's RSS per
//!   connection (`--pid` of the server, read from /proc).
//! - `broadcast`: N subscribers on one channel; a publisher sends R pushes per second
//!   to `sb.push.channel.bench` through NATS for S seconds; reports deliveries,
//!   losses, latency percentiles (publish -> receive) and deliveries per server
//!   CPU-second.
//!
//! `--peer-ws` speaks the node `ws` reference server's protocol instead (no connect
//! message; the server broadcasts what `POST /publish` receives), so both run
//! through the same receiver code.
//!
//! Example: `cargo run --release -p ws-push --example loadgen -- --url ws://127.0.0.1:8083/ws
//! --nats nats://127.0.0.1:4333 --secret s --pid 1234 broadcast --subscribers 10000 --rate 10`

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use switchboard_bus::{Bus, NatsConfig};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8083/ws")]
    url: String,
    /// NATS of the ws-push under test (publisher side).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// HS256 secret for the tokens.
    #[arg(long, default_value = "bench-secret")]
    secret: String,
    /// Server process id, for RSS and CPU time.
    #[arg(long)]
    pid: u32,
    /// Talk to the node `ws` reference server (publish by HTTP POST to this URL).
    #[arg(long)]
    peer_publish_url: Option<String>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Idle connections: RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds to stay idle before measuring.
        #[arg(long, default_value_t = 5)]
        settle: u64,
    },
    /// Broadcast to N subscribers of one channel at a fixed rate.
    Broadcast {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Pushes per second (deliveries per second = rate x subscribers).
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// Where the broadcast publisher sends.
enum Publisher {
    /// The node `ws` peer's `POST /publish`.
    Peer(String),
    /// `SB_PUSH` through NATS (ws-push).
    Nats(Bus),
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Waits (up to 30 s) until `pid` is idle: what it does for new connections (such as
/// presence writes) must not be counted as broadcast CPU.
async fn wait_idle(pid: u32) {
    for _ in 0..60 {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cpu_seconds(pid) - before < 0.02 {
            return;
        }
    }
}

fn token(secret: &str, user: &str) -> String {
    let claims = json!({"sub": user, "exp": now_nanos() / 1_000_000_000 + 3600, "channels": ["bench"]});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(args: &Args, user: &str, subscribe: bool) -> Option<Socket> {
    // Small client buffers: the generator holds as many sockets as the server.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(args.url.as_str(), Some(config), false)
        .await
        .ok()?;
    if args.peer_publish_url.is_some() {
        return Some(ws);
    }
    let hello = json!({"type": "connect", "token": token(&args.secret, user)}).to_string();
    ws.send(Message::Text(hello.into())).await.ok()?;
    let mut need = if subscribe { 2 } else { 1 };
    if subscribe {
        let sub = json!({"type": "subscribe", "channel": "bench"}).to_string();
        ws.send(Message::Text(sub.into())).await.ok()?;
    }
    while need > 0 {
        match ws.next().await? {
            Ok(Message::Text(text)) if text.contains("\"connected\"") || text.contains("\"subscribed\"") => need -= 1,
            Ok(Message::Text(text)) if text.contains("\"error\"") => {
                eprintln!("refused: {text}");
                return None;
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    Some(ws)
}

async fn open_many(args: &Arc<Args>, count: usize, subscribe: bool) -> Vec<Socket> {
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let permits = permits.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            open(&args, &format!("u{i}"), subscribe).await
        }));
    }
    let mut sockets = Vec::with_capacity(count);
    for task in tasks {
        if let Ok(Some(ws)) = task.await {
            sockets.push(ws);
        }
    }
    sockets
}

/// Finds `"ts":<digits>` in a frame without parsing all of it.
fn timestamp(text: &str) -> Option<u64> {
    let start = text.find("\"ts\":")? + 5;
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    match args.mode {
        Mode::Idle { connections, settle } => {
            let before = rss_kib(args.pid);
            let started = Instant::now();
            let sockets = open_many(&args, connections, false).await;
            let opened = started.elapsed();
            tokio::time::sleep(Duration::from_secs(settle)).await;
            let after = rss_kib(args.pid);
            let per = (after.saturating_sub(before) as f64 * 1024.0) / sockets.len().max(1) as f64;
            println!("| connections | opened in | server RSS before | after | per connection |");
            println!("|---|---|---|---|---|");
            println!(
                "| {} | {:.1} s | {} KiB | {} KiB | {:.0} B ({:.2} KiB) |",
                sockets.len(),
                opened.as_secs_f64(),
                before,
                after,
                per,
                per / 1024.0
            );
            drop(sockets);
        }
        Mode::Broadcast {
            subscribers,
            rate,
            seconds,
        } => {
            let sockets = open_many(&args, subscribers, true).await;
            let connected = sockets.len();
            let stop = CancellationToken::new();
            let received = Arc::new(AtomicU64::new(0));
            let mut readers = Vec::with_capacity(connected);
            for mut ws in sockets {
                let stop = stop.clone();
                let received = received.clone();
                readers.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            message = ws.next() => match message {
                                Some(Ok(Message::Text(text))) => {
                                    if let Some(ts) = timestamp(text.as_str()) {
                                        latencies.push(now_nanos().saturating_sub(ts) / 1000);
                                        received.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Some(Ok(_)) => {}
                                _ => break,
                            }
                        }
                    }
                    latencies
                }));
            }
            let publisher = match &args.peer_publish_url {
                Some(url) => Publisher::Peer(url.clone()),
                None => Publisher::Nats(
                    Bus::connect(
                        &NatsConfig {
                            url: args.nats.clone(),
                            ..Default::default()
                        },
                        "loadgen",
                    )
                    .await?,
                ),
            };
            let http = reqwest::Client::new();
            let total = (rate * seconds as f64).round() as u64;
            let interval = Duration::from_secs_f64(1.0 / rate);
            wait_idle(args.pid).await;
            let cpu_before = cpu_seconds(args.pid);
            let started = tokio::time::Instant::now();
            for seq in 0..total {
                tokio::time::sleep_until(started + interval.mul_f64(seq as f64)).await;
                let data = json!({"type": "b", "data": {"ts": now_nanos(), "seq": seq}});
                match &publisher {
                    Publisher::Peer(url) => {
                        let _ = http.post(url).body(data.to_string()).send().await;
                    }
                    Publisher::Nats(bus) => {
                        let subject = bus.subjects().push_channel("bench");
                        let event = bus.event(switchboard_bus::event_types::PUSH, &data)?;
                        // Fire and check later: the publisher never waits for acks in line.
                        let ack = bus.publish_async(subject.clone(), &event).await?;
                        tokio::spawn(ack.into_future());
                    }
                }
            }
            let expected = total * connected as u64;
            let drain_deadline = Instant::now() + Duration::from_secs(10);
            while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = cpu_seconds(args.pid) - cpu_before;
            stop.cancel();
            let mut latencies = Vec::with_capacity(expected as usize);
            for reader in readers {
                if let Ok(mut part) = reader.await {
                    latencies.append(&mut part);
                }
            }
            latencies.sort_unstable();
            let got = latencies.len() as u64;
            println!(
                "| subscribers | offered deliveries/s | delivered | lost | server CPU s | deliveries per CPU-s | p50 ms | p99 ms | max ms |"
            );
            println!("|---|---|---|---|---|---|---|---|---|");
            println!(
                "| {connected} | {:.0} | {got} | {} | {cpu:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
                rate * connected as f64,
                expected.saturating_sub(got),
                if cpu > 0.0 { got as f64 / cpu } else { f64::NAN },
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                percentile(&latencies, 1.0),
            );
            eprintln!("run took {elapsed:.1} s");
        }
    }
    Ok(())
}
