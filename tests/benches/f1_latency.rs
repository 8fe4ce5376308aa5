//! F1 end-to-end latency: AMI bytes in -> browser frame out.
//!
//! One real nats-server; the AMI simulator, ami-bridge, hook-runner (the example rule
//! `f1-screen-pop.yaml`) and ws-push in this process; `OPERATORS` WebSocket clients
//! signed in as extensions 100, 101, .... Calls are injected into the simulator's
//! socket at `RATE` calls/s for `SECONDS` (Newchannel, DialBegin, Hangup: three
//! events per call); each call's send instant is taken as its bytes are handed to
//! the simulator's writer, and its receive instant when the operator's socket yields
//! the `call.ringing` push frame. Same process, same clock.
//!
//! `cargo bench -p switchboard-flows --bench f1_latency` (environment: `F1_RATE`,
//! `F1_SECONDS`, `F1_OPERATORS`). Prints a Markdown table; scripts/bench.sh puts it
//! in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use switchboard_flows::{browser_token, open_browser, start_hook_runner, start_pbx, start_ws_push};
use switchboard_test_support::NatsServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The three AMI events of call `n` to extension `ext`.
fn call_events(n: u64, ext: u64) -> String {
    let id = format!("1700000000.{n}");
    let chan = format!("PJSIP/trunk-{n:08x}");
    format!(
        "Event: Newchannel\r\nPrivilege: call,all\r\nChannel: {chan}\r\nChannelState: 4\r\nChannelStateDesc: Ring\r\n\
CallerIDNum: {n}\r\nCallerIDName: Bench caller\r\nConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\n\
Language: en\r\nAccountCode: \r\nContext: from-external\r\nExten: {ext}\r\nPriority: 1\r\nUniqueid: {id}\r\nLinkedid: {id}\r\n\r\n\
Event: DialBegin\r\nPrivilege: call,all\r\nChannel: {chan}\r\nUniqueid: {id}\r\nLinkedid: {id}\r\n\
DestChannel: PJSIP/{ext}-{n:08x}\r\nDestCallerIDNum: {ext}\r\nDestExten: {ext}\r\nDestUniqueid: 1700000001.{n}\r\n\
DestLinkedid: {id}\r\nDialString: {ext}\r\n\r\n\
Event: Hangup\r\nPrivilege: call,all\r\nChannel: {chan}\r\nUniqueid: {id}\r\nLinkedid: {id}\r\nCause: 16\r\n\
Cause-txt: Normal Clearing\r\n\r\n"
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rate = setting("F1_RATE", 1000).max(1);
    let seconds = setting("F1_SECONDS", 20).max(1);
    let operators = setting("F1_OPERATORS", 50).max(1);
    let total = rate * seconds;

    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let pbx = start_pbx(&nats, &shutdown).await;
    let rules = tempfile::tempdir().expect("rules dir");
    start_hook_runner(&nats, &shutdown, rules.path(), &[("f1-screen-pop.yaml", "screen-pop")]).await;
    let push_http = start_ws_push(&nats, &shutdown).await;
    // The session asks for a channel snapshot after login; let that settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The operators' sockets: each yields (call number, receive instant).
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    for operator in 0..operators {
        let (mut socket, _) = open_browser(push_http, &browser_token(&(100 + operator).to_string(), json!({}))).await;
        let seen = seen_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                let at = Instant::now();
                let Message::Text(text) = frame else { continue };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if value["push"]["type"] == "call.ringing"
                    && let Some(n) = value["push"]["data"]["number"].as_str().and_then(|n| n.parse().ok())
                {
                    let _ = seen.send((n, at));
                }
            }
        });
    }
    drop(seen_tx);

    // Inject at the rate, a tick per millisecond.
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; usize::try_from(total).expect("fits")]));
    let generator = {
        let sent = sent.clone();
        let sim = pbx.sim.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_millis(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut next = 0u64;
            while next < total {
                ticker.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
                while next < due {
                    let bytes = Bytes::from(call_events(next, 100 + next % operators));
                    let at = Instant::now();
                    sim.inject(bytes);
                    if let Ok(mut sent) = sent.lock() {
                        sent[usize::try_from(next).expect("fits")] = Some(at);
                    }
                    next += 1;
                }
            }
            start.elapsed()
        })
    };

    let mut latencies = Vec::with_capacity(usize::try_from(total).expect("fits"));
    let mut duplicates = 0u64;
    let mut got = vec![false; usize::try_from(total).expect("fits")];
    let send_time = generator.await.expect("generator");
    let drain_deadline = Instant::now() + Duration::from_secs(15);
    while (latencies.len() as u64) < total {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        let Ok(Some((n, at))) = tokio::time::timeout(left, seen_rx.recv()).await else {
            break;
        };
        let Ok(index) = usize::try_from(n) else { continue };
        if index >= got.len() {
            continue;
        }
        if got[index] {
            duplicates += 1;
            continue;
        }
        got[index] = true;
        if let Some(sent_at) = sent.lock().ok().and_then(|s| s[index]) {
            latencies.push(at.saturating_duration_since(sent_at));
        }
    }
    shutdown.cancel();
    latencies.sort_unstable();
    let received = latencies.len() as u64;
    println!("| F1 screen pop, AMI bytes in -> WebSocket frame out | measured |");
    println!("|---|---|");
    println!("| offered | {rate} calls/s for {seconds} s ({total} calls, 3 AMI events each), {operators} operators |");
    println!(
        "| achieved send rate | {:.0} calls/s |",
        total as f64 / send_time.as_secs_f64()
    );
    println!(
        "| pops received | {received} of {total} ({} lost, {duplicates} duplicates) |",
        total - received
    );
    println!("| latency p50 | {} |", ms(percentile(&latencies, 50.0)));
    println!("| latency p90 | {} |", ms(percentile(&latencies, 90.0)));
    println!(
        "| latency p99 | {} (target ≤ 20 ms) |",
        ms(percentile(&latencies, 99.0))
    );
    println!(
        "| latency max | {} |",
        ms(latencies.last().copied().unwrap_or_default())
    );
}
