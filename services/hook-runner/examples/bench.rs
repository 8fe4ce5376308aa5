//! Benchmarks printed as a table (run with `--release`):
//!
//! 1. rule matching with 1,000 rules: the subject index, type filter and CEL `when`
//!    on one core;
//! 2. event -> publish action end to end through a real nats-server and the engine;
//! 3. `exec` action overhead (p50/p90) against a bare spawn of the same program.
//!
//! `cargo run --release -p hook-runner --example bench [matching|e2e|exec]...`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use bytes::Bytes;
use futures::StreamExt;
use hook_runner::render::RenderedExec;
use hook_runner::rules::load_files;
use hook_runner::template::DEFAULT_FUEL;
use hook_runner::trigger::Trigger;
use switchboard_bus::{Bus, CloudEvent, NatsConfig};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

fn row(name: &str, value: String, note: &str) {
    println!("| {name} | {value} | {note} |");
}

/// 1,000 rules: 400 on one PBX's ringing calls each, 300 on IM accounts, 200 with
/// wildcards and a CEL condition, 100 with a type filter.
fn thousand_rules() -> String {
    let mut text = String::from("rules:\n");
    for i in 0..1000 {
        let (on, extra) = match i % 10 {
            0..=3 => (format!("sb.evt.ami.pbx{i}.call.ringing"), String::new()),
            4..=6 => (format!("sb.evt.im.acc{i}.message"), String::new()),
            7 | 8 => (
                "sb.evt.ami.*.call.ended".to_owned(),
                format!("    when: 'has(data.extension) && data.extension == \"{i}\"'\n"),
            ),
            _ => (
                format!("sb.evt.push.inbound.*.topic{i}"),
                "    types: [switchboard.push.inbound.v1]\n".to_owned(),
            ),
        };
        text.push_str(&format!(
            "  - name: r{i}\n    on: {on}\n{extra}    actions:\n      - publish: {{ subject: sb.evt.bench.out }}\n"
        ));
    }
    text
}

fn bench_matching() {
    let files = vec![(PathBuf::from("bench.yaml"), thousand_rules())];
    let set = match load_files(&PathBuf::from("."), &files, DEFAULT_FUEL) {
        Ok(set) => set,
        Err(errors) => panic!("bench rules invalid: {errors:?}"),
    };
    let event = |subject: &str, ty: &str, data: &str| {
        let event = CloudEvent::new("/bench", ty, Bytes::from(data.to_owned()));
        Trigger::new(subject.to_owned(), event, 1)
    };
    // A mix: two literal hits, a type-filtered hit and a miss.
    let triggers = [
        event(
            "sb.evt.ami.pbx120.call.ringing",
            "switchboard.ami.call.v1",
            r#"{"extension":"101"}"#,
        ),
        event(
            "sb.evt.im.acc5.message",
            "switchboard.im.message.v1",
            r#"{"text":"hi"}"#,
        ),
        event(
            "sb.evt.push.inbound.u1.topic9",
            "switchboard.push.inbound.v1",
            r#"{"x":1}"#,
        ),
        event(
            "sb.evt.chat.message.created",
            "switchboard.chat.message.v1",
            r#"{"x":1}"#,
        ),
    ];
    let ended = event(
        "sb.evt.ami.pbx1.call.ended",
        "switchboard.ami.call.v1",
        r#"{"extension":"17"}"#,
    );
    let n = 400_000;
    let started = Instant::now();
    let mut matched = 0usize;
    for i in 0..n {
        matched += set.matching(&triggers[i % triggers.len()]).len();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    row(
        "rule matching, 1,000 rules (index + type + CEL), literal/type/miss mix",
        format!("{rate:.0} events/s"),
        &format!("one core, {n} events, {matched} matches"),
    );
    let n = 20_000;
    let started = Instant::now();
    let mut matched = 0usize;
    for _ in 0..n {
        matched += set.matching(&ended).len();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    row(
        "rule matching, worst case: 200 wildcard rules each with a CEL `when`",
        format!("{rate:.0} events/s"),
        &format!("one core; 200 CEL evaluations per event, {matched} matches"),
    );
}

async fn bench_e2e() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("bench.yaml"),
        "rules:\n  - name: relay\n    on: sb.evt.bench.in\n    concurrency: 512\n    actions:\n      - publish: { subject: 'sb.push.user.{{ data.user }}', data: { n: '{{ data.n }}' } }\n",
    )
    .expect("write");
    let mut config = hook_runner::Config::default();
    config.nats.url = nats.url();
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.grpc.listen = "127.0.0.1:0".parse().expect("addr");
    config.rules.dir = dir.path().to_owned();
    let shutdown = CancellationToken::new();
    let app = hook_runner::App::build(config, shutdown.clone()).await.expect("build");
    let task = tokio::spawn(app.run());
    let bus = Bus::connect(
        &NatsConfig {
            url: nats.url(),
            ..NatsConfig::default()
        },
        "bench",
    )
    .await
    .expect("connect");
    let stream = bus.jetstream().get_stream("SB_EVENTS").await.expect("stream");
    while stream.consumer_info("hook-relay").await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = bus.client().subscribe("sb.push.user.u1").await.expect("sub");
    let n = 20_000usize;
    let started = Instant::now();
    let producer = produce(&bus, "sb.evt.bench.in", n);
    let got = count(&mut out, n).await;
    let elapsed = started.elapsed();
    let _ = producer.await;
    row(
        "event -> publish action, end to end",
        format!("{:.0} events/s", got as f64 / elapsed.as_secs_f64()),
        &format!("{got}/{n} events through nats-server (JetStream in, JetStream push out, result event, ack)"),
    );
    shutdown.cancel();
    let _ = task.await;
    bench_ceilings(&bus, &stream, n).await;
}

/// Publishes `n` events to `subject` with up to 1,024 acks outstanding (what a busy
/// producer does), on a task of its own.
fn produce(bus: &Bus, subject: &'static str, n: usize) -> tokio::task::JoinHandle<()> {
    let bus = bus.clone();
    tokio::spawn(async move {
        let mut acks = Vec::with_capacity(1024);
        for i in 0..n {
            let event = bus
                .event("bench.v1", &serde_json::json!({"user": "u1", "n": i}))
                .expect("event");
            acks.push(bus.publish_async(subject.to_owned(), &event).await.expect("publish"));
            if acks.len() == 1024 {
                for ack in acks.drain(..) {
                    ack.await.expect("ack");
                }
            }
        }
        for ack in acks {
            ack.await.expect("ack");
        }
    })
}

/// Counts messages on `sub` until `n` or a minute without one.
async fn count(sub: &mut async_nats::Subscriber, n: usize) -> usize {
    let mut got = 0usize;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(60), sub.next()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    got
}

/// The ceilings on this machine, measured on the same nats-server right after the
/// end-to-end line: a bare pipelined JetStream publish loop (what one stored message
/// costs), and a bare relay doing the engine's bus work for each event (pull, publish
/// the push and a result-sized event, ack after both acks) without rules, templates,
/// CEL, stats or tracing.
async fn bench_ceilings(bus: &Bus, stream: &async_nats::jetstream::stream::Stream, n: usize) {
    let started = Instant::now();
    produce(bus, "sb.evt.bench.bare", n).await.expect("producer");
    row(
        "ceiling: bare JetStream publish loop",
        format!("{:.0} msgs/s", n as f64 / started.elapsed().as_secs_f64()),
        &format!("{n} stored messages, 1,024 acks outstanding, one producer"),
    );
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bare-relay".to_owned()),
            filter_subject: "sb.evt.bench.relay".to_owned(),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 512,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = bus.client().subscribe("sb.push.user.bare").await.expect("sub");
    let started = Instant::now();
    let producer = produce(bus, "sb.evt.bench.relay", n);
    let relay = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut messages = consumer.messages().await.expect("messages");
            let result = Bytes::from(vec![b'x'; 400]);
            while let Some(Ok(message)) = messages.next().await {
                let js = bus.jetstream().clone();
                let result = result.clone();
                tokio::spawn(async move {
                    let push = js
                        .publish("sb.push.user.bare", message.payload.clone())
                        .await
                        .expect("push");
                    let report = js.publish("sb.evt.hook.bare.succeeded", result).await.expect("result");
                    if push.await.is_ok() && report.await.is_ok() {
                        let _ = message.ack().await;
                    }
                });
            }
        })
    };
    let got = count(&mut out, n).await;
    let elapsed = started.elapsed();
    let _ = producer.await;
    relay.abort();
    row(
        "ceiling: bare relay (pull, JetStream push + result, ack)",
        format!("{:.0} events/s", got as f64 / elapsed.as_secs_f64()),
        &format!("{got}/{n} events; the engine's bus work per event, nothing else"),
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}

async fn bench_exec() {
    let spec = RenderedExec {
        program: PathBuf::from("/bin/true"),
        args: vec!["x".to_owned()],
        env: Default::default(),
        cwd: None,
        stdin: None,
        timeout: Duration::from_secs(10),
        output_limit: 65536,
        success_codes: vec![0],
    };
    let n = 300;
    let mut ours = Vec::with_capacity(n);
    let mut bare = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = hook_runner::actions::exec::run("bench", &spec).await;
        ours.push(started.elapsed());
        assert!(r.success);
        let started = Instant::now();
        let status = tokio::process::Command::new("/bin/true").status().await.expect("spawn");
        bare.push(started.elapsed());
        assert!(status.success());
    }
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    row(
        "exec action /bin/true, p50 (p90)",
        format!(
            "{} ({})",
            ms(percentile(&mut ours, 0.5)),
            ms(percentile(&mut ours, 0.9))
        ),
        &format!("{n} runs: process group, pipes, capture, wait"),
    );
    row(
        "bare tokio spawn+wait of /bin/true, p50 (p90)",
        format!(
            "{} ({})",
            ms(percentile(&mut bare, 0.5)),
            ms(percentile(&mut bare, 0.9))
        ),
        "the floor the exec action adds to",
    );
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    println!("| benchmark | result | notes |\n|---|---|---|");
    if wants("matching") {
        bench_matching();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if wants("e2e") {
        runtime.block_on(bench_e2e());
    }
    if wants("exec") {
        runtime.block_on(bench_exec());
    }
}
