//! Faults and scale-out under chat-store, each against real parts: its own PostgreSQL
//! cluster (crashed and restarted under the running service) and nats-server; a
//! graceful shutdown with sends in flight; two replicas sharing one user's rate limit.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chat_store::{App, Config, Store};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_bus::Secret;
use switchboard_test_support::{NatsServer, Postgres};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-secret";

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

struct Running {
    base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), chat_store::Error>>,
    _data: tempfile::TempDir,
}

async fn start(nats: &NatsServer, database_url: &str) -> Running {
    start_with(nats, database_url, |_| {}).await
}

/// [`start`] with `configure` applied last.
async fn start_with(nats: &NatsServer, database_url: &str, configure: impl FnOnce(&mut Config)) -> Running {
    let data = tempfile::tempdir().expect("data dir");
    let mut config = common::service_config(nats.url(), data.path());
    config.database.url = Secret::new(database_url);
    config.auth.jwt_secret = Secret::new(SECRET);
    config.chat.rate_per_minute = 100_000;
    config.chat.rate_burst = 100_000;
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let app = App::build(config, shutdown.clone()).await.expect("build");
    let base = format!("http://{}", app.http_addr());
    let task = tokio::spawn(app.run());
    Running {
        base,
        shutdown,
        task,
        _data: data,
    }
}

/// What a send got back: the status and the JSON body (or why there was none).
#[derive(Debug)]
enum Outcome {
    Answered(StatusCode, Value, Option<String>),
    NoAnswer(String),
}

async fn send(http: &reqwest::Client, base: &str, n: usize) -> Outcome {
    let sent = http
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(token("alice"))
        .json(&json!({ "to": "bob", "text": format!("m-{n}"), "clientId": format!("c-{n}") }))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = response.text().await.unwrap_or_default();
            Outcome::Answered(
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
                retry_after,
            )
        }
        Err(e) => Outcome::NoAnswer(e.to_string()),
    }
}

/// The texts of alice's dialog with bob, oldest first, as bob sees it.
async fn history(http: &reqwest::Client, base: &str) -> Result<Vec<String>, (StatusCode, Value)> {
    let response = http
        .get(format!("{base}/api/v1/dialogs/alice/messages?pageSize=200"))
        .bearer_auth(token("bob"))
        .send()
        .await
        .expect("history request");
    let status = response.status();
    let body: Value = response.json().await.expect("JSON");
    if status != StatusCode::OK {
        return Err((status, body));
    }
    let mut messages: Vec<(i64, String)> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").parse().expect("numeric id"),
                m["text"].as_str().expect("text").to_owned(),
            )
        })
        .collect();
    messages.sort();
    Ok(messages.into_iter().map(|(_, text)| text).collect())
}

async fn unread(http: &reqwest::Client, base: &str) -> u64 {
    let body: Value = http
        .get(format!("{base}/api/v1/unread"))
        .bearer_auth(token("bob"))
        .send()
        .await
        .expect("unread request")
        .json()
        .await
        .expect("JSON");
    body["unread"].as_u64().unwrap_or(0)
}

fn assert_unavailable(status: StatusCode, body: &Value, retry_after: Option<&str>) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "ERROR_CODE_UNAVAILABLE", "{body}");
    assert_eq!(body["reason"], "unavailable", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("database is unavailable"), "{body}");
    assert!(
        !message.contains("127.0.0.1") && !message.contains("postgres"),
        "no internals in the answer: {body}"
    );
    assert_eq!(retry_after, Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_and_restarted_gives_503_writes_nothing_partial_and_recovers() {
    let mut pg = tokio::task::block_in_place(Postgres::start).expect("postgres");
    tokio::task::block_in_place(|| pg.create_database("chat")).expect("create database");
    let nats = NatsServer::start().expect("nats-server");
    let app = start(&nats, &pg.url("chat")).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    // A sender that keeps going, one send at a time, through the outage.
    let (sender_http, sender_base) = (http.clone(), app.base.clone());
    let stop_sending = CancellationToken::new();
    let stop = stop_sending.clone();
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel::<(usize, bool)>();
    let sender = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        let mut n = 0;
        while !stop.is_cancelled() && n < 150 {
            let outcome = send(&sender_http, &sender_base, n).await;
            let created = matches!(outcome, Outcome::Answered(StatusCode::CREATED, _, _));
            outcomes.push(outcome);
            let _ = progress_tx.send((n, created));
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcomes
    });
    let mut created_before = 0;
    while created_before < 20 {
        let (_, created) = progress.recv().await.expect("sender running");
        created_before += usize::from(created);
    }

    // The database crashes under the running service.
    tokio::task::block_in_place(|| pg.stop());
    match send(&http, &app.base, 10_000).await {
        Outcome::Answered(status, body, retry_after) => assert_unavailable(status, &body, retry_after.as_deref()),
        Outcome::NoAnswer(e) => panic!("no answer while the database is down: {e}"),
    }
    let (status, body) = history(&http, &app.base).await.expect_err("reads fail too");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // Let the sender meet the outage too.
    loop {
        let (_, created) = progress.recv().await.expect("sender running");
        if !created {
            break;
        }
    }

    // It comes back; chat-store reconnects by itself, without a restart.
    tokio::task::block_in_place(|| pg.restart()).expect("postgres restarts");
    let back = Instant::now();
    loop {
        let (_, created) = progress.recv().await.expect("sender running");
        if created {
            break;
        }
    }
    let recovered_after = back.elapsed();
    let mut created_after = 0;
    while created_after < 20 {
        let (_, created) = progress.recv().await.expect("sender running");
        created_after += usize::from(created);
    }
    stop_sending.cancel();
    let outcomes = sender.await.expect("sender");

    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for (n, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Answered(StatusCode::CREATED, body, _) => {
                assert_eq!(body["message"]["text"], format!("m-{n}"));
                acked.push(format!("m-{n}"));
            }
            Outcome::Answered(status, body, retry_after) => {
                assert_unavailable(*status, body, retry_after.as_deref());
                refused.push(n);
            }
            Outcome::NoAnswer(e) => panic!("send {n} got no answer: {e}"),
        }
    }
    assert!(!refused.is_empty(), "the sender met the outage");

    // Nothing partial: every acknowledged message is there, in order, once; nothing
    // else is, except at most the one send whose commit raced the crash (its answer
    // was lost with the connection; the retry below tells which).
    let stored = history(&http, &app.base).await.expect("history after recovery");
    let acked_set: BTreeSet<&String> = acked.iter().collect();
    let stored_acked: Vec<&String> = stored.iter().filter(|t| acked_set.contains(t)).collect();
    assert_eq!(
        stored_acked,
        acked.iter().collect::<Vec<_>>(),
        "acknowledged, in order, once"
    );
    let extra: Vec<&String> = stored.iter().filter(|t| !acked_set.contains(t)).collect();
    assert!(
        extra.len() <= 1,
        "only a send in flight at the crash may be unacknowledged: {extra:?}"
    );
    assert_eq!(unread(&http, &app.base).await, stored.len() as u64, "the counts agree");

    // Retrying each refused send with its client id (what the widget does) stores
    // it exactly once.
    let mut duplicates = 0;
    for &n in &refused {
        match send(&http, &app.base, n).await {
            Outcome::Answered(StatusCode::CREATED, _, _) => {}
            Outcome::Answered(StatusCode::OK, body, _) => {
                assert_eq!(body["duplicate"], true, "{body}");
                assert_eq!(extra, vec![&format!("m-{n}")], "the duplicate is the raced one");
                duplicates += 1;
            }
            other => panic!("retry of {n}: {other:?}"),
        }
    }
    assert!(duplicates <= 1);
    let stored = history(&http, &app.base).await.expect("history after retries");
    let want: BTreeSet<String> = (0..outcomes.len()).map(|n| format!("m-{n}")).collect();
    assert_eq!(stored.len(), want.len(), "each message once");
    assert_eq!(stored.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(unread(&http, &app.base).await, want.len() as u64);
    println!(
        "sends: {} acknowledged, {} refused with 503 ({} of them had been committed); first success {:?} after PostgreSQL was back",
        acked.len(),
        refused.len(),
        duplicates,
        recovered_after
    );
    app.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), app.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_sends_in_flight_and_refuses_the_rest_clearly() {
    let pg = tokio::task::block_in_place(Postgres::start).expect("postgres");
    tokio::task::block_in_place(|| pg.create_database("chat")).expect("create database");
    let nats = NatsServer::start().expect("nats-server");
    let app = start(&nats, &pg.url("chat")).await;

    // 16 senders, one send at a time each, until the service is gone.
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut senders = Vec::new();
    for sender in 0..16 {
        let base = app.base.clone();
        let progress_tx = progress_tx.clone();
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client");
            let mut outcomes = HashMap::new();
            for i in 0..1000 {
                let n = sender * 1000 + i;
                let outcome = send(&http, &base, n).await;
                let done = matches!(outcome, Outcome::NoAnswer(_));
                outcomes.insert(n, outcome);
                let _ = progress_tx.send(());
                if done {
                    break;
                }
            }
            outcomes
        }));
    }
    for _ in 0..200 {
        progress.recv().await.expect("senders running");
    }
    app.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), app.task).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "chat-store stops cleanly: {ended:?}");

    let mut acked = BTreeSet::new();
    let mut failed = 0;
    for sender in senders {
        for (n, outcome) in sender.await.expect("sender") {
            match outcome {
                Outcome::Answered(StatusCode::CREATED, body, _) => {
                    assert_eq!(body["message"]["text"], format!("m-{n}"));
                    acked.insert(format!("m-{n}"));
                }
                Outcome::Answered(status, body, _) => panic!("send {n}: {status} {body}"),
                Outcome::NoAnswer(_) => failed += 1,
            }
        }
    }
    // Each sender's last send found the service gone (connection refused or closed
    // before a request was read: nothing was done).
    assert_eq!(failed, 16, "every sender ended on a refused connection");

    // What is stored is exactly what was acknowledged.
    let store = Store::open(&pg.url("chat"), 2, chat_store::store::Limits::default(), &[])
        .await
        .expect("reopen the store");
    let caller = chat_store::store::Caller::user("bob");
    let mut stored = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page = switchboard_proto::common::v1::PageRequest {
            page_size: 200,
            cursor: cursor.clone(),
        };
        let (messages, next) = store
            .history(
                &caller,
                "alice",
                chat_store::store::Page::from_request(Some(&page)).expect("page"),
            )
            .await
            .expect("history");
        for message in messages {
            assert!(stored.insert(message.text.clone()), "{} stored twice", message.text);
        }
        if next.next_cursor.is_empty() {
            break;
        }
        cursor = next.next_cursor;
    }
    assert_eq!(stored, acked, "stored == acknowledged");
    println!(
        "graceful shutdown: {} sends acknowledged and stored, {failed} refused",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_users_rate_limit() {
    let nats = NatsServer::start().expect("nats-server");
    let data = tempfile::tempdir().expect("database dir");
    let database = format!("sqlite://{}?mode=rwc", data.path().join("chat.db").display());
    // 6 a minute refills 0.1 a second: nothing refills within the test's waits.
    let limits = |config: &mut Config| {
        config.chat.rate_per_minute = 6;
        config.chat.rate_burst = 4;
    };
    let first = start_with(&nats, &database, limits).await;
    let second = start_with(&nats, &database, limits).await;
    let http = reqwest::Client::new();
    let observer = async_nats::connect(nats.url()).await.expect("nats client");
    let mut reports = observer.subscribe("sb.cmd.chat.rate.spent").await.expect("subscribe");

    for n in 0..4 {
        match send(&http, &first.base, n).await {
            Outcome::Answered(StatusCode::CREATED, _, _) => {}
            other => panic!("send {n} within the burst: {other:?}"),
        }
    }
    match send(&http, &first.base, 4).await {
        Outcome::Answered(StatusCode::TOO_MANY_REQUESTS, _, _) => {}
        other => panic!("the fifth send on the same replica: {other:?}"),
    }
    // The first replica's reports (one per interval) reach the second and this observer.
    let mut reported = 0;
    while reported < 4 {
        let report = tokio::time::timeout(Duration::from_secs(10), reports.next())
            .await
            .expect("rate reports within 10 s")
            .expect("subscription open");
        let report: Value = serde_json::from_slice(&report.payload).expect("JSON");
        reported += report["spent"]["alice"].as_u64().expect("alice's spending");
    }
    assert_eq!(reported, 4, "the refused send is not spending");
    tokio::time::sleep(Duration::from_millis(300)).await;
    match send(&http, &second.base, 5).await {
        Outcome::Answered(StatusCode::TOO_MANY_REQUESTS, body, _) => {
            assert_eq!(body["code"], "ERROR_CODE_RESOURCE_EXHAUSTED", "{body}");
        }
        other => panic!("alice's budget is spent on the other replica too: {other:?}"),
    }
    // Another user's budget is their own.
    let sent = http
        .post(format!("{}/api/v1/messages", second.base))
        .bearer_auth(token("bob"))
        .json(&json!({ "to": "alice", "text": "hi", "clientId": "b-1" }))
        .send()
        .await
        .expect("send");
    assert_eq!(sent.status(), StatusCode::CREATED);
    first.shutdown.cancel();
    second.shutdown.cancel();
}
