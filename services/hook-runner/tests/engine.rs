//! End to end against a real nats-server: events on SB_EVENTS run rules whose
//! actions publish, request and exec; results, retries, dead letters, the depth
//! limit, replicas sharing a consumer, throttling and debouncing (shared by
//! replicas) and hot reload.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hook_runner::{App, Config, Engine};
use serde_json::{Value, json};
use switchboard_bus::{Bus, CloudEvent, NatsConfig};
use switchboard_proto::hook::v1::{DeadLetter, RunResult};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

/// A failure guard only: every wait ends as soon as what it waits for happens.
const PATIENCE: Duration = Duration::from_secs(30);

struct Service {
    engine: Arc<Engine>,
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), hook_runner::Error>>,
}

impl Service {
    async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(PATIENCE, self.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "service stops cleanly: {ended:?}");
    }
}

async fn start(nats: &NatsServer, rules: &Path) -> Service {
    start_with(nats, rules, None).await
}

async fn start_with(nats: &NatsServer, rules: &Path, token: Option<&str>) -> Service {
    start_config(nats, rules, |config| {
        config.hooks.api_token = token.map(switchboard_bus::Secret::new);
    })
    .await
}

/// A replica whose config (rules polled every 100 ms) `tweak` may change.
async fn start_config(nats: &NatsServer, rules: &Path, tweak: impl FnOnce(&mut Config)) -> Service {
    let mut config = Config::default();
    config.nats.url = nats.url();
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.grpc.listen = "127.0.0.1:0".parse().expect("addr");
    config.rules.dir = rules.to_owned();
    config.rules.reload_interval = Duration::from_millis(100);
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let app = App::build(config, shutdown.clone()).await.expect("build");
    let engine = app.engine().clone();
    let grpc = app.grpc_addr();
    let http = app.http_addr();
    let task = tokio::spawn(app.run());
    Service {
        engine,
        http,
        grpc,
        shutdown,
        task,
    }
}

async fn client(nats: &NatsServer) -> Bus {
    let config = NatsConfig {
        url: nats.url(),
        ..NatsConfig::default()
    };
    Bus::connect(&config, "test").await.expect("connect")
}

fn write_rules(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

async fn emit(bus: &Bus, subject: &str, ty: &str, data: Value) -> CloudEvent {
    let event = bus.event(ty, &data).expect("event");
    bus.publish(subject.to_owned(), &event).await.expect("publish");
    event
}

async fn next_json(sub: &mut async_nats::Subscriber) -> (String, Option<async_nats::HeaderMap>, Value) {
    let message = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open");
    let value = serde_json::from_slice(&message.payload).expect("json");
    (message.subject.to_string(), message.headers, value)
}

/// Waits until the engine has a consumer for every rule (events published before
/// are not for it: consumers start at new messages).
async fn until_consuming(bus: &Bus, names: &[&str]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stream = bus.jetstream().get_stream("SB_EVENTS").await.expect("stream");
        let mut all = true;
        for name in names {
            if stream.consumer_info(format!("hook-{name}")).await.is_err() {
                all = false;
            }
        }
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumers for {names:?} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_event_runs_request_then_publish_and_reports_the_result() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "f1.yaml",
        r#"
rules:
  - name: screen-pop
    on: sb.evt.ami.*.call.ringing
    types: [switchboard.ami.call.v1]
    when: 'data.extension != "" && tokens[3] == "pbx1"'
    context: { exten: "{{ data.extension }}" }
    actions:
      - name: lookup
        request:
          subject: sb.cmd.crm.lookup
          data: { number: "{{ data.caller.number }}" }
          timeout: 5s
      - name: pop
        publish:
          subject: "sb.push.user.{{ data.extension | token }}"
          data:
            caller: "{{ data.caller.number }}"
            name: "{{ steps.lookup.reply.name }}"
            depth: "{{ depth }}"
"#,
    );
    let bus = client(&nats).await;
    // A CRM answering lookups, to show a reply reaching the next action.
    let mut crm = bus.client().subscribe("sb.cmd.crm.lookup").await.expect("sub");
    let crm_client = bus.client().clone();
    tokio::spawn(async move {
        while let Some(request) = crm.next().await {
            let asked: Value = serde_json::from_slice(&request.payload).unwrap_or_default();
            let reply = json!({ "name": format!("Customer {}", asked["number"].as_str().unwrap_or("?")) });
            if let Some(reply_to) = request.reply {
                let _ = crm_client.publish(reply_to, reply.to_string().into()).await;
            }
        }
    });
    let mut pushes = bus.client().subscribe("sb.push.user.>").await.expect("sub");
    let mut results = bus.client().subscribe("sb.evt.hook.>").await.expect("sub");
    let service = start(&nats, dir.path()).await;
    until_consuming(&bus, &["screen-pop"]).await;

    // Not matching: other PBX, other type.
    emit(
        &bus,
        "sb.evt.ami.pbx2.call.ringing",
        "switchboard.ami.call.v1",
        json!({"extension": "101"}),
    )
    .await;
    emit(
        &bus,
        "sb.evt.ami.pbx1.call.ringing",
        "other.type",
        json!({"extension": "101"}),
    )
    .await;
    let event = emit(
        &bus,
        "sb.evt.ami.pbx1.call.ringing",
        "switchboard.ami.call.v1",
        json!({"extension": "10.1", "caller": {"number": "+48600"}}),
    )
    .await;

    let (subject, headers, push) = next_json(&mut pushes).await;
    assert_eq!(
        subject, "sb.push.user.10_2E1",
        "ids from data are escaped into one token"
    );
    assert_eq!(push, json!({"caller": "+48600", "name": "Customer +48600", "depth": 0}));
    let headers = headers.expect("headers");
    assert_eq!(headers.get("ce-sbdepth").map(|v| v.as_str()), Some("1"));
    assert_eq!(headers.get("ce-type").map(|v| v.as_str()), Some("switchboard.push.v1"));

    let (subject, _, result) = next_json(&mut results).await;
    assert_eq!(subject, "sb.evt.hook.screen-pop.succeeded");
    let result: RunResult = serde_json::from_value(result).expect("RunResult");
    assert!(result.success);
    assert_eq!(result.trigger_event_id, event.id);
    assert_eq!(result.attempt, 1);
    assert_eq!(result.actions.len(), 2);
    assert_eq!(result.actions[0].name, "lookup");
    assert!(result.actions[0].output.contains("Customer"));
    assert_eq!(
        result.context.map(|c| serde_json::to_value(c).unwrap_or_default()),
        Some(json!({"exten": "10.1"}))
    );
    let stats = service.engine.stats();
    assert_eq!(stats["screen-pop"].matched, 1, "the two other events did not match");
    assert_eq!(stats["screen-pop"].succeeded, 1);
    let metrics = reqwest::get(format!("http://{}/metrics", service.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"hook_runs_total{rule="screen-pop",outcome="succeeded"} 1"#),
        "{metrics}"
    );
    service.stop().await;
}

#[tokio::test]
async fn failures_are_redelivered_then_dead_lettered_with_the_event() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "fail.yaml",
        r#"
rules:
  - name: flaky
    on: sb.evt.test.flaky
    retry: { attempts: 3, backoff: 50ms, max_backoff: 200ms }
    actions:
      - exec: { program: /bin/false }
        on_failure:
          - publish: { subject: sb.evt.test.fallback, data: { failed: "{{ steps['exec#0'].exit_code }}" } }
"#,
    );
    let bus = client(&nats).await;
    let mut results = bus.client().subscribe("sb.evt.hook.flaky.*").await.expect("sub");
    let mut fallback = bus.client().subscribe("sb.evt.test.fallback").await.expect("sub");
    let service = start(&nats, dir.path()).await;
    until_consuming(&bus, &["flaky"]).await;
    let event = emit(&bus, "sb.evt.test.flaky", "t.v1", json!({"keep": "me"})).await;

    for attempt in 1..=3u32 {
        let (subject, _, result) = next_json(&mut results).await;
        assert_eq!(subject, "sb.evt.hook.flaky.failed");
        let result: RunResult = serde_json::from_value(result).expect("RunResult");
        assert_eq!(result.attempt, attempt);
        assert_eq!(result.actions[0].exit_code, 1);
        assert_eq!(result.actions[1].kind, "publish", "on_failure ran");
    }
    let (subject, _, dead) = next_json(&mut results).await;
    assert_eq!(subject, "sb.evt.hook.flaky.dead");
    let dead: DeadLetter = serde_json::from_value(dead).expect("DeadLetter");
    assert_eq!(dead.event_id, event.id);
    assert_eq!(dead.attempts, 3);
    assert_eq!(
        serde_json::to_value(dead.event_data).unwrap_or_default(),
        json!({"keep": "me"})
    );
    assert!(dead.last_error.contains("exit code 1"), "{}", dead.last_error);
    assert_eq!(dead.event_headers.get("ce-id"), Some(&event.id));
    // The fallback publish has a stable id: three runs, one stored event.
    let (_, _, data) = next_json(&mut fallback).await;
    assert_eq!(data, json!({"failed": 1}));
    let stored = bus.jetstream().get_stream("SB_EVENTS").await.expect("stream");
    let info = stored
        .get_last_raw_message_by_subject("sb.evt.test.fallback")
        .await
        .expect("stored");
    assert!(info.sequence > 0);
    let stats = service.engine.stats();
    assert_eq!((stats["flaky"].failed, stats["flaky"].dead), (3, 1));
    service.stop().await;
}

#[tokio::test]
async fn a_result_jetstream_did_not_store_runs_the_event_again() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    // The rule's context makes its result event larger than SB_EVENTS will take
    // while the limit below is set; the event itself stays small.
    let pad = "x".repeat(2048);
    write_rules(
        dir.path(),
        "p.yaml",
        &format!(
            "rules:\n  - name: padded\n    on: sb.evt.test.pad\n    context: {{ pad: {pad} }}\n    retry: {{ attempts: 10, backoff: 50ms, max_backoff: 100ms }}\n    actions:\n      - publish: {{ subject: sb.push.user.pad, data: {{ n: '{{{{ data.n }}}}' }} }}\n"
        ),
    );
    let bus = client(&nats).await;
    let service = start_config(&nats, dir.path(), |config| {
        config.nats.publish_timeout = Duration::from_millis(300);
    })
    .await;
    until_consuming(&bus, &["padded"]).await;
    let js = bus.jetstream();
    let mut events = js.get_stream("SB_EVENTS").await.expect("stream");
    let mut limited = events.info().await.expect("info").config.clone();
    let unlimited = limited.max_message_size;
    limited.max_message_size = 1024;
    js.update_stream(&limited).await.expect("limit");
    emit(&bus, "sb.evt.test.pad", "t.v1", json!({"n": 1})).await;

    // The action ran and succeeded, its result was refused: the event comes back.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while service.engine.rule_stats("padded").succeeded < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the event never ran again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    limited.max_message_size = unlimited;
    js.update_stream(&limited).await.expect("unlimit");
    let stored = loop {
        match events
            .get_last_raw_message_by_subject("sb.evt.hook.padded.succeeded")
            .await
        {
            Ok(message) => break message,
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "no result was ever stored");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let result: RunResult = serde_json::from_slice(&stored.payload).expect("RunResult");
    assert!(result.success);
    assert!(result.attempt >= 2, "stored on a later delivery, not the refused first");
    // Acked once stored: nothing is left pending.
    let mut consumer = events
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("hook-padded")
        .await
        .expect("consumer");
    while consumer.info().await.expect("info").num_ack_pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the event was never acked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.stop().await;
}

#[tokio::test]
async fn results_that_trigger_rules_stop_at_the_depth_limit() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    // Every result triggers the rule again: a loop only the depth limit ends.
    write_rules(
        dir.path(),
        "loop.yaml",
        r#"
rules:
  - name: echo
    on: [sb.evt.test.start, sb.evt.hook.echo.succeeded]
    actions:
      - publish: { subject: sb.evt.test.noise, data: { depth: "{{ depth }}" } }
"#,
    );
    let bus = client(&nats).await;
    let mut results = bus.client().subscribe("sb.evt.hook.echo.succeeded").await.expect("sub");
    let service = start(&nats, dir.path()).await;
    until_consuming(&bus, &["echo"]).await;
    emit(&bus, "sb.evt.test.start", "t.v1", json!({})).await;
    let mut depths = Vec::new();
    for _ in 0..5 {
        let (_, _, result) = next_json(&mut results).await;
        let result: RunResult = serde_json::from_value(result).expect("RunResult");
        depths.push(result.depth);
    }
    assert_eq!(depths, vec![0, 1, 2, 3, 4], "max_depth 5 allows depths 0-4");
    // The sixth delivery (depth 5) is skipped and counted; no sixth result.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while service.engine.rule_stats("echo").throttled < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the depth-5 event was never skipped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(service.engine.rule_stats("echo").succeeded, 5);
    service.stop().await;
}

#[tokio::test]
async fn replicas_share_the_consumer_so_each_event_runs_once() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "once.yaml",
        "rules:\n  - name: once\n    on: sb.evt.test.n\n    concurrency: 4\n    actions:\n      - publish: { subject: sb.evt.test.done, data: { n: '{{ data.n }}' } }\n",
    );
    let bus = client(&nats).await;
    let mut results = bus.client().subscribe("sb.evt.hook.once.succeeded").await.expect("sub");
    let a = start(&nats, dir.path()).await;
    let b = start(&nats, dir.path()).await;
    until_consuming(&bus, &["once"]).await;
    let mut sent = std::collections::BTreeSet::new();
    for n in 0..40 {
        sent.insert(emit(&bus, "sb.evt.test.n", "t.v1", json!({"n": n})).await.id);
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < sent.len() {
        let (_, _, result) = next_json(&mut results).await;
        let result: RunResult = serde_json::from_value(result).expect("RunResult");
        assert!(seen.insert(result.trigger_event_id), "an event ran twice");
    }
    assert_eq!(seen, sent);
    let total = a.engine.rule_stats("once").succeeded + b.engine.rule_stats("once").succeeded;
    assert_eq!(total, 40);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn throttle_skips_repeats_of_a_key_within_the_window() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "t.yaml",
        "rules:\n  - name: alert\n    on: sb.evt.test.alert\n    concurrency: 1\n    throttle: { key: '{{ data.who }}', per: 1h }\n    actions:\n      - publish: { subject: sb.evt.test.alerted, data: { who: '{{ data.who }}' } }\n",
    );
    let bus = client(&nats).await;
    let mut alerted = bus.client().subscribe("sb.evt.test.alerted").await.expect("sub");
    let service = start(&nats, dir.path()).await;
    until_consuming(&bus, &["alert"]).await;
    for who in ["a", "a", "b", "a", "b", "c"] {
        emit(&bus, "sb.evt.test.alert", "t.v1", json!({"who": who})).await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let (_, _, data) = next_json(&mut alerted).await;
        got.push(data["who"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(got, vec!["a", "b", "c"]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while service.engine.rule_stats("alert").throttled < 3 {
        assert!(tokio::time::Instant::now() < deadline, "throttled events not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.stop().await;
}

/// Sums a counter of `rule` over replicas.
fn total(services: &[&Service], rule: &str, counter: impl Fn(&hook_runner::engine::RuleStats) -> u64) -> u64 {
    services.iter().map(|s| counter(&s.engine.rule_stats(rule))).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_is_shared_by_replicas_so_a_key_fires_once_across_them() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "t.yaml",
        "rules:\n  - name: alert\n    on: sb.evt.test.alert\n    concurrency: 2\n    throttle: { key: '{{ data.who }}', per: 1h }\n    actions:\n      - publish: { subject: sb.evt.test.alerted, data: { who: '{{ data.who }}' } }\n",
    );
    let bus = client(&nats).await;
    let a = start(&nats, dir.path()).await;
    let b = start(&nats, dir.path()).await;
    let both = [&a, &b];
    until_consuming(&bus, &["alert"]).await;
    // The same key, one event at a time, until each replica has handled some.
    let mut sent = 0u64;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sent < 10 || a.engine.rule_stats("alert").matched == 0 || b.engine.rule_stats("alert").matched == 0 {
        assert!(sent < 200, "one replica never got an event");
        emit(&bus, "sb.evt.test.alert", "t.v1", json!({"who": "a"})).await;
        sent += 1;
        while total(&both, "alert", |s| s.succeeded + s.throttled) < sent {
            assert!(tokio::time::Instant::now() < deadline, "events not handled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        total(&both, "alert", |s| s.succeeded),
        1,
        "the key fired once across both replicas"
    );
    assert_eq!(total(&both, "alert", |s| s.throttled), sent - 1);
    // Another key is not held back by the first.
    emit(&bus, "sb.evt.test.alert", "t.v1", json!({"who": "b"})).await;
    while total(&both, "alert", |s| s.succeeded + s.throttled) < sent + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other key's event not handled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(total(&both, "alert", |s| s.succeeded), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_shared_throttle_window_ends_when_its_entry_expires() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "t.yaml",
        "rules:\n  - name: ping\n    on: sb.evt.test.ping\n    concurrency: 1\n    throttle: { key: '{{ data.who }}', per: 1s }\n    actions:\n      - publish: { subject: sb.evt.test.pinged, data: { who: '{{ data.who }}' } }\n",
    );
    let bus = client(&nats).await;
    let service = start(&nats, dir.path()).await;
    let one = [&service];
    until_consuming(&bus, &["ping"]).await;
    let mut entries = bus
        .jetstream()
        .get_stream("KV_SB_HOOK_THROTTLE_1000")
        .await
        .expect("the rule's throttle bucket exists once it consumes");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for sent in 1..=2 {
        emit(&bus, "sb.evt.test.ping", "t.v1", json!({"who": "x"})).await;
        while total(&one, "ping", |s| s.succeeded + s.throttled) < sent {
            assert!(tokio::time::Instant::now() < deadline, "event not handled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        total(&one, "ping", |s| s.succeeded),
        1,
        "the repeat within the window was skipped"
    );
    // Once the entry has aged out of the bucket, the key may fire again.
    while entries.info().await.expect("bucket info").state.messages > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emit(&bus, "sb.evt.test.ping", "t.v1", json!({"who": "x"})).await;
    while total(&one, "ping", |s| s.succeeded + s.throttled) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "event not handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        total(&one, "ping", |s| s.succeeded),
        2,
        "the key fired again after the window"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounce_is_shared_by_replicas_so_only_the_last_of_a_burst_runs() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    // The whole burst is sent well within the wait.
    write_rules(
        dir.path(),
        "d.yaml",
        "rules:\n  - name: typing\n    on: sb.evt.test.typing\n    concurrency: 100\n    debounce: { key: '{{ data.who }}', wait: 3s }\n    actions:\n      - publish: { subject: sb.evt.test.settled, data: { n: '{{ data.n }}' } }\n",
    );
    let bus = client(&nats).await;
    let mut settled = bus.client().subscribe("sb.evt.test.settled").await.expect("sub");
    let a = start(&nats, dir.path()).await;
    let b = start(&nats, dir.path()).await;
    let both = [&a, &b];
    until_consuming(&bus, &["typing"]).await;
    // Each event is sent once the one before has written its entry (the bucket's
    // stream holds one message per write), so the burst's order is the writes' order.
    let mut writes = bus
        .jetstream()
        .get_stream("KV_SB_HOOK_DEBOUNCE_3000")
        .await
        .expect("the rule's debounce bucket exists once it consumes");
    let mut sent = 0u64;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sent < 6 || a.engine.rule_stats("typing").matched == 0 || b.engine.rule_stats("typing").matched == 0 {
        assert!(sent < 60, "one replica never got an event");
        sent += 1;
        emit(&bus, "sb.evt.test.typing", "t.v1", json!({"who": "a", "n": sent})).await;
        while writes.info().await.expect("bucket info").state.last_sequence < sent {
            assert!(tokio::time::Instant::now() < deadline, "events not delivered");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while total(&both, "typing", |s| s.succeeded + s.throttled) < sent {
        assert!(tokio::time::Instant::now() < deadline, "burst never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        total(&both, "typing", |s| s.succeeded),
        1,
        "one run across both replicas"
    );
    let (_, _, data) = next_json(&mut settled).await;
    assert_eq!(data, json!({"n": sent}), "the last event of the burst ran");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn rules_reload_on_change_and_an_invalid_file_keeps_the_old_rules() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "a.yaml",
        "rules:\n  - name: first\n    on: sb.evt.test.r\n    actions:\n      - publish: { subject: sb.evt.test.r1 }\n",
    );
    let bus = client(&nats).await;
    let service = start(&nats, dir.path()).await;
    until_consuming(&bus, &["first"]).await;
    write_rules(
        dir.path(),
        "b.yaml",
        "rules:\n  - name: second\n    on: sb.evt.test.r\n    actions:\n      - publish: { subject: sb.evt.test.r2 }\n",
    );
    until_consuming(&bus, &["first", "second"]).await;
    assert_eq!(service.engine.rules().rules.len(), 2);

    write_rules(
        dir.path(),
        "b.yaml",
        "rules:\n  - name: second\n    on: sb.evt.test.r\n    when: 'data.x ==== 1'\n    actions:\n      - publish: { subject: sb.evt.test.r2 }\n",
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while service.engine.last_reload_error().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the invalid file was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = service.engine.last_reload_error();
    assert!(error.contains("b.yaml:4: rules[0].when"), "{error}");
    assert_eq!(service.engine.rules().rules.len(), 2, "old rules kept");

    std::fs::remove_file(dir.path().join("b.yaml")).expect("rm");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while service.engine.rules().rules.len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the removal was never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(service.engine.last_reload_error().is_empty());
    // The removed rule's consumer is deleted.
    let stream = bus.jetstream().get_stream("SB_EVENTS").await.expect("stream");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stream.consumer_info("hook-second").await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer of the removed rule remains"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.stop().await;
}

#[tokio::test]
async fn debounce_runs_only_the_last_event_of_a_burst() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "d.yaml",
        "rules:\n  - name: typing\n    on: sb.evt.test.typing\n    concurrency: 10\n    debounce: { key: '{{ data.who }}', wait: 300ms }\n    actions:\n      - publish: { subject: sb.evt.test.settled, data: { n: '{{ data.n }}' } }\n",
    );
    let bus = client(&nats).await;
    let mut settled = bus.client().subscribe("sb.evt.test.settled").await.expect("sub");
    let service = start(&nats, dir.path()).await;
    until_consuming(&bus, &["typing"]).await;
    for n in 1..=5 {
        emit(&bus, "sb.evt.test.typing", "t.v1", json!({"who": "a", "n": n})).await;
    }
    // Wait until all five were handled: four superseded, one ran.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = service.engine.rule_stats("typing");
        if s.throttled + s.succeeded == 5 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "burst never settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = service.engine.rule_stats("typing");
    assert_eq!(stats.succeeded, 1, "{stats:?}");
    let (_, _, data) = next_json(&mut settled).await;
    assert_eq!(data, json!({"n": 5}), "the last event of the burst ran");
    service.stop().await;
}

#[tokio::test]
async fn a_run_longer_than_the_rule_timeout_fails() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "slow.yaml",
        "rules:\n  - name: slow\n    on: sb.evt.test.slow\n    timeout: 200ms\n    retry: { attempts: 1 }\n    actions:\n      - exec: { program: /bin/sleep, args: ['30'] }\n",
    );
    let bus = client(&nats).await;
    let mut results = bus.client().subscribe("sb.evt.hook.slow.*").await.expect("sub");
    let service = start(&nats, dir.path()).await;
    until_consuming(&bus, &["slow"]).await;
    emit(&bus, "sb.evt.test.slow", "t.v1", json!({})).await;
    let (subject, _, result) = next_json(&mut results).await;
    assert_eq!(subject, "sb.evt.hook.slow.failed");
    let result: RunResult = serde_json::from_value(result).expect("RunResult");
    assert!(result.actions.iter().any(|a| a.error.contains("timeout")), "{result:?}");
    let (subject, _, _) = next_json(&mut results).await;
    assert_eq!(subject, "sb.evt.hook.slow.dead", "one attempt, then the dead letter");
    service.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_rules() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "a.yaml",
        "rules:\n  - name: one\n    on: sb.evt.test.h\n    actions:\n      - publish: { subject: sb.evt.test.h1 }\n",
    );
    let bus = client(&nats).await;
    // Polling is too slow to matter here: only the signal reloads.
    let service = start_config(&nats, dir.path(), |config| {
        config.rules.reload_interval = Duration::from_secs(3600);
    })
    .await;
    until_consuming(&bus, &["one"]).await;
    write_rules(
        dir.path(),
        "b.yaml",
        "rules:\n  - name: two\n    on: sb.evt.test.h\n    actions:\n      - publish: { subject: sb.evt.test.h2 }\n",
    );
    assert_eq!(service.engine.rules().rules.len(), 1);
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGHUP).expect("signal");
    until_consuming(&bus, &["one", "two"]).await;
    assert_eq!(service.engine.rules().rules.len(), 2);
    service.stop().await;
}

mod grpc {
    use super::*;
    use switchboard_proto::hook::v1::hook_service_client::HookServiceClient;
    use switchboard_proto::hook::v1::{GetRunsRequest, ListRulesRequest, ReloadRequest, TriggerRequest};
    use tonic::transport::Channel;

    async fn connect(addr: std::net::SocketAddr) -> HookServiceClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        HookServiceClient::new(channel)
    }

    fn with_token<T>(body: T, token: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
        request
    }

    const RULES: &str = r#"
rules:
  - name: admin-ping
    on: sb.evt.push.inbound.*.ping
    when: 'data.host.matches("^[a-z0-9.-]+$")'
    actions:
      - name: run
        exec: { program: /bin/echo, args: ["pinging", "{{ data.host }}"] }
"#;

    #[tokio::test]
    async fn list_trigger_runs_and_reload() {
        let nats = NatsServer::start().expect("nats");
        let dir = tempfile::tempdir().expect("dir");
        write_rules(dir.path(), "admin.yaml", RULES);
        let service = start_with(&nats, dir.path(), Some("s3cret")).await;
        let mut client = connect(service.grpc).await;

        let refused = client.list_rules(ListRulesRequest {}).await.expect_err("no token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = client
            .list_rules(with_token(ListRulesRequest {}, "wrong"))
            .await
            .expect_err("bad token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);

        let data = |host: &str| serde_json::from_value(json!({ "host": host })).expect("Value");
        let dry = client
            .trigger(with_token(
                TriggerRequest {
                    rule: "admin-ping".into(),
                    subject: "sb.evt.push.inbound.admin.ping".into(),
                    data: Some(data("192.168.1.1")),
                    r#type: String::new(),
                    dry_run: true,
                },
                "s3cret",
            ))
            .await
            .expect("dry run")
            .into_inner();
        assert!(dry.matched && dry.result.is_none());
        let rendered = serde_json::to_value(dry.rendered).expect("json");
        assert_eq!(
            rendered["actions"][0]["rendered"]["args"],
            json!(["pinging", "192.168.1.1"])
        );

        let refused = client
            .trigger(with_token(
                TriggerRequest {
                    rule: "admin-ping".into(),
                    subject: "sb.evt.push.inbound.admin.ping".into(),
                    data: Some(data("x; rm -rf /")),
                    r#type: String::new(),
                    dry_run: false,
                },
                "s3cret",
            ))
            .await
            .expect("trigger")
            .into_inner();
        assert!(!refused.matched, "the when condition refuses the host");

        let ran = client
            .trigger(with_token(
                TriggerRequest {
                    rule: "admin-ping".into(),
                    subject: "sb.evt.push.inbound.admin.ping".into(),
                    data: Some(data("example.org")),
                    r#type: String::new(),
                    dry_run: false,
                },
                "s3cret",
            ))
            .await
            .expect("trigger")
            .into_inner();
        let result = ran.result.expect("result");
        assert!(result.success);
        assert_eq!(result.actions[0].output, "pinging example.org\n");

        let rules = client
            .list_rules(with_token(ListRulesRequest {}, "s3cret"))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(rules.rules.len(), 1);
        assert_eq!(rules.rules[0].name, "admin-ping");
        assert_eq!((rules.rules[0].matched, rules.rules[0].succeeded), (1, 1));
        assert!(rules.rules[0].file.ends_with("admin.yaml"));

        let runs = client
            .get_runs(with_token(
                GetRunsRequest {
                    rule: "admin-ping".into(),
                    limit: 5,
                },
                "s3cret",
            ))
            .await
            .expect("runs")
            .into_inner();
        assert_eq!(runs.runs.len(), 1);
        assert_eq!(runs.runs[0].run_id, result.run_id);
        let missing = client
            .get_runs(with_token(
                GetRunsRequest {
                    rule: "nope".into(),
                    limit: 5,
                },
                "s3cret",
            ))
            .await
            .expect_err("no such rule");
        assert_eq!(missing.code(), tonic::Code::NotFound);

        write_rules(
            dir.path(),
            "broken.yaml",
            "rules:\n  - name: x\n    on: sb.evt.a\n    actions: []\n",
        );
        let reload = client
            .reload(with_token(ReloadRequest {}, "s3cret"))
            .await
            .expect("reload")
            .into_inner();
        assert!(!reload.ok);
        assert_eq!(reload.rules, 1, "old rules kept");
        assert!(
            reload.error.contains("broken.yaml:4: rules[0].actions"),
            "{}",
            reload.error
        );
        std::fs::remove_file(dir.path().join("broken.yaml")).expect("rm");
        let reload = client
            .reload(with_token(ReloadRequest {}, "s3cret"))
            .await
            .expect("reload")
            .into_inner();
        assert!(reload.ok && reload.rules == 1, "{reload:?}");
        service.stop().await;
    }
}

#[tokio::test]
async fn a_rule_outside_the_events_stream_is_reported_not_run() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    write_rules(
        dir.path(),
        "x.yaml",
        "rules:\n  - name: cmds\n    on: sb.cmd.ami.*.action\n    actions:\n      - publish: { subject: sb.evt.test.x }\n",
    );
    let service = start(&nats, dir.path()).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while service.engine.last_reload_error().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = service.engine.last_reload_error();
    assert!(error.contains("sb.cmd.ami.*.action is outside sb.evt.>"), "{error}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_finishes_runs_in_flight_and_the_other_replica_takes_the_rest() {
    const EVENTS: u64 = 60;
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    // The ack wait is the run timeout plus 30 s: 10 minutes here, so an event left
    // unacknowledged by the stopped replica would not come back within this test.
    write_rules(
        dir.path(),
        "work.yaml",
        "rules:\n  - name: work\n    on: sb.evt.test.work\n    concurrency: 4\n    timeout: 10m\n    actions:\n      - request: { subject: sb.cmd.test.work, data: { n: '{{ data.n }}' }, timeout: 30s }\n",
    );
    let bus = client(&nats).await;
    // The action's target: records each call, takes 200 ms, answers.
    let calls = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut requests = bus.client().subscribe("sb.cmd.test.work").await.expect("sub");
    let responder = {
        let calls = calls.clone();
        let client = bus.client().clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let calls = calls.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let body: Value = serde_json::from_slice(&request.payload).expect("json");
                    let n = body["n"]
                        .as_u64()
                        .or_else(|| body["n"].as_str().and_then(|s| s.parse().ok()))
                        .expect("n");
                    calls.lock().expect("calls").push(n);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(reply) = request.reply {
                        client.publish(reply, "{}".into()).await.expect("reply");
                    }
                });
            }
        })
    };
    let mut results = bus.client().subscribe("sb.evt.hook.work.succeeded").await.expect("sub");
    let a = start(&nats, dir.path()).await;
    let b = start(&nats, dir.path()).await;
    until_consuming(&bus, &["work"]).await;
    for n in 0..EVENTS {
        emit(&bus, "sb.evt.test.work", "t.v1", json!({"n": n})).await;
    }

    // Stop replica A while it has runs in flight.
    let a_engine = a.engine.clone();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = a_engine.rule_stats("work");
        if stats.succeeded >= 3 && stats.matched > stats.succeeded + stats.failed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica A never had runs in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_stop = a_engine.rule_stats("work");
    a.stop().await;
    let a_done = a_engine.rule_stats("work");
    assert_eq!(a_done.failed, 0);
    assert_eq!(
        a_done.succeeded, a_done.matched,
        "every run A had started finished before it stopped"
    );
    assert!(a_done.succeeded > at_stop.succeeded, "A's runs in flight finished");

    // Every event ran exactly once: A's before it stopped, B's, and whatever A had
    // been delivered but not started, handed back to B.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < EVENTS as usize {
        let (_, _, result) = next_json(&mut results).await;
        let result: RunResult = serde_json::from_value(result).expect("RunResult");
        assert!(seen.insert(result.trigger_event_id), "an event ran twice");
    }
    let mut ran = calls.lock().expect("calls").clone();
    ran.sort_unstable();
    assert_eq!(ran, (0..EVENTS).collect::<Vec<_>>(), "each action called once");
    let b_done = b.engine.rule_stats("work");
    assert_eq!(a_done.succeeded + b_done.succeeded, EVENTS);
    println!(
        "A ran {} (in flight at stop: {}), B ran {}",
        a_done.succeeded,
        at_stop.matched - at_stop.succeeded - at_stop.failed,
        b_done.succeeded
    );
    b.stop().await;
    responder.abort();
}
