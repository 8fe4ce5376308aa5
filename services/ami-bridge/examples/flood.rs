//! End-to-end flood: ami-sim -> ami-bridge -> JetStream (a real nats-server) ->
//! a subscriber, sequence checked. Prints a table.
//!
//! `cargo run --release -p ami-bridge --example flood -- [events] [latency_rate]`

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ami_bridge::sim::{Control, SimConfig, SimHandle};
use ami_bridge::{AmiSettings, App, Config, PbxConfig};
use futures::StreamExt;
use switchboard_bus::{NatsConfig, Secret};
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

/// `"SimSeq","value":"123"` and `"SimTs","value":"..."` from the RawEvent JSON
/// headers list, without a full JSON decode (the subscriber must keep up).
fn header_u(payload: &[u8], name: &str) -> Option<u128> {
    let key = format!("\"name\":\"{name}\",\"value\":\"");
    let at = memchr::memmem::find(payload, key.as_bytes())? + key.len();
    let rest = payload.get(at..)?;
    let end = memchr::memchr(b'"', rest)?;
    std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

struct Run {
    received: u64,
    gaps: u64,
    out_of_order: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
}

async fn run(sub: &mut async_nats::Subscriber, sim: &SimHandle, count: u64, rate: u64, first_seq: u64) -> Run {
    sim.control(Control::Flood { rate, count });
    let mut expected = first_seq;
    let mut run = Run {
        received: 0,
        gaps: 0,
        out_of_order: 0,
        seconds: 0.0,
        latencies_us: Vec::with_capacity(count as usize),
    };
    let mut start = None;
    while run.received < count {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await else {
            break;
        };
        start.get_or_insert_with(Instant::now);
        let Some(seq) = header_u(&msg.payload, "SimSeq") else {
            continue;
        };
        let seq = seq as u64;
        if seq > expected {
            run.gaps += seq - expected;
        } else if seq < expected {
            run.out_of_order += 1;
        }
        expected = seq + 1;
        run.received += 1;
        if let Some(ts) = header_u(&msg.payload, "SimTs") {
            run.latencies_us.push((now_ns().saturating_sub(ts) / 1000) as u64);
        }
    }
    run.seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    run.latencies_us.sort_unstable();
    run
}

/// Waits (up to 5 s) until `SB_EVENTS` holds `count` messages; returns how many it holds.
async fn stored_at_least(js: &async_nats::jetstream::Context, count: u64) -> u64 {
    let mut stored = 0;
    for _ in 0..50 {
        let mut stream = js.get_stream("SB_EVENTS").await.expect("stream");
        stored = stream.info().await.expect("info").state.messages;
        if stored >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stored
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    // Anything that is not a number (`--help` included) gets the usage, not a flood.
    let mut number = |default: u64| match args.next() {
        None => default,
        Some(arg) => arg.parse().unwrap_or_else(|_| {
            eprintln!("usage: flood [events, default 200000] [latency_rate events/s, default 10000]");
            std::process::exit(2)
        }),
    };
    let events = number(200_000);
    let latency_rate = number(10_000);
    let nats = NatsServer::start().expect("nats-server 2.10+ on PATH");
    let shutdown = CancellationToken::new();
    let sim = SimHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig::default(),
        shutdown.clone(),
    )
    .await
    .expect("sim");
    let nats_config = NatsConfig {
        url: nats.url(),
        ..NatsConfig::default()
    };
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(nats.url())
        .await
        .expect("nats");
    let mut sub = client
        .subscribe("sb.evt.ami.pbx1.raw.Newexten")
        .await
        .expect("subscribe");
    let mut links = client.subscribe("sb.evt.ami.pbx1.link.up").await.expect("subscribe");
    let config = Config {
        nats: nats_config,
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ami: AmiSettings {
            lease: false,
            ..AmiSettings::default()
        },
        pbx: vec![PbxConfig {
            id: "pbx1".into(),
            port: sim.addr().port(),
            username: "sb".into(),
            secret: Secret::new("sbsecret"),
            ..PbxConfig::default()
        }],
        ..Config::default()
    };
    let app = App::build(config, shutdown.clone()).await.expect("app");
    let task = tokio::spawn(app.run());
    let _ = tokio::time::timeout(Duration::from_secs(10), links.next()).await;

    let js = async_nats::jetstream::new(client.clone());
    let flat = run(&mut sub, &sim, events, 0, 1).await;
    // The paced run measures latency at a steady rate, so it starts once the flood
    // before it is stored and acknowledged (its backlog measured the flood, not the rate).
    stored_at_least(&js, events).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paced_count = latency_rate * 5;
    let paced = run(&mut sub, &sim, paced_count, latency_rate, events + 1).await;
    let stored = stored_at_least(&js, events + paced_count).await;
    println!("| run | events | received | lost | out of order | seconds | events/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, count, r) in [("max rate", events, &flat), ("paced", paced_count, &paced)] {
        println!(
            "| {name} | {count} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
            r.received,
            r.gaps + (count - r.received.min(count)),
            r.out_of_order,
            r.seconds,
            r.received as f64 / r.seconds.max(1e-9),
            pct(&r.latencies_us, 0.5) as f64 / 1000.0,
            pct(&r.latencies_us, 0.99) as f64 / 1000.0,
            r.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
    println!(
        "JetStream SB_EVENTS holds {stored} messages (link events included); expected >= {}",
        events + paced_count
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
