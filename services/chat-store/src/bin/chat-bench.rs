//! Benchmark harness: seeds a database with N messages (default 1,000,000), then
//! measures send throughput (batched and one by one, through the store with every
//! check) and history-page latency, and prints a table.
//!
//! `chat-bench --database sqlite:///tmp/bench.db?mode=rwc`
//! `chat-bench --database postgres://postgres@127.0.0.1:5432/bench`

use std::time::{Duration, Instant};

use chat_store::store::{Caller, Limits, NewMessage, Page, Store};
use clap::Parser;
use sea_orm::{ConnectionTrait, DbBackend};

/// Options.
#[derive(Debug, Parser)]
struct Args {
    /// Database URL (an empty database; it is seeded).
    #[arg(long)]
    database: String,
    /// Messages to seed before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Distinct users (even).
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Messages sent in the batched throughput run.
    #[arg(long, default_value_t = 20_000)]
    send: u64,
    /// Messages per transaction in the batched run.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent writers in the batched run, each sending whole batches (several
    /// chat-store replicas or request handlers; on SQLite they take turns).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Messages sent one by one (one transaction each).
    #[arg(long, default_value_t = 2_000)]
    single: u64,
    /// History pages read.
    #[arg(long, default_value_t = 2_000)]
    pages: u64,
}

/// A small deterministic generator (no dependency, reproducible runs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn seed_sql(backend: DbBackend, n: u64, users: u64) -> String {
    let columns = "client_id, sender, recipient, dialog, text, user_agent, created_at";
    match backend {
        DbBackend::Postgres => format!(
            "INSERT INTO messages ({columns}) SELECT 'seed-' || i, s, r, \
               CASE WHEN s < r THEN '[\"' || s || '\",\"' || r || '\"]' ELSE '[\"' || r || '\",\"' || s || '\"]' END, \
               'seeded message number ' || i, '', 1700000000000 + i \
             FROM (SELECT i, 'u' || (i % {users}) AS s, 'u' || ((i * 7 + 1) % {users}) AS r FROM generate_series(1, {n}) AS i) AS g"
        ),
        _ => format!(
            "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}), \
             g AS (SELECT i, 'u' || (i % {users}) AS s, 'u' || ((i * 7 + 1) % {users}) AS r FROM seq) \
             INSERT INTO messages ({columns}) SELECT 'seed-' || i, s, r, \
               CASE WHEN s < r THEN '[\"' || s || '\",\"' || r || '\"]' ELSE '[\"' || r || '\",\"' || s || '\"]' END, \
               'seeded message number ' || i, '', 1700000000000 + i FROM g"
        ),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let users = args.users.max(2) & !1;
    let store = Store::open(&args.database, 8, Limits::default(), &[]).await?;
    let db = store.connection();
    let backend = db.get_database_backend();

    let started = Instant::now();
    db.execute_unprepared(&seed_sql(backend, args.messages, users)).await?;
    if backend == DbBackend::Postgres {
        db.execute_unprepared("ANALYZE messages").await?;
    }
    let seed_time = started.elapsed();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let pick = |rng: &mut Rng| {
        let i = rng.next() % args.messages.max(1) + 1;
        (format!("u{}", i % users), format!("u{}", (i * 7 + 1) % users))
    };

    // Batched sends: each message checked (idempotency, blocks) inside one transaction
    // per batch; the batches are made before the clock starts and dealt to the writers.
    let mut batches: Vec<Vec<Vec<(Caller, NewMessage)>>> = (0..args.writers.max(1)).map(|_| Vec::new()).collect();
    let mut sent = 0u64;
    while sent < args.send {
        let n = (args.send - sent).min(args.batch as u64);
        let batch = (0..n)
            .map(|k| {
                let (from, to) = pick(&mut rng);
                (
                    Caller::user(from),
                    NewMessage {
                        to,
                        text: format!("benchmark message {}", sent + k),
                        client_id: format!("bench-{}", sent + k),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let writer = (sent / args.batch.max(1) as u64) as usize % batches.len();
        batches[writer].push(batch);
        sent += n;
    }
    let started = Instant::now();
    let writers: Vec<_> = batches
        .into_iter()
        .map(|own| {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in own {
                    store.send_many(batch).await?;
                }
                Ok::<(), chat_store::Error>(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    let batched = started.elapsed();

    // One by one: a transaction per message, as a browser's send.
    let started = Instant::now();
    for k in 0..args.single {
        let (from, to) = pick(&mut rng);
        store
            .send(
                &Caller::user(from),
                NewMessage {
                    to,
                    text: format!("single message {k}"),
                    client_id: format!("single-{k}"),
                    ..Default::default()
                },
            )
            .await?;
    }
    let single = started.elapsed();

    // History pages (50 newest of a dialog) and second pages by cursor.
    let mut latencies = Vec::with_capacity(args.pages as usize);
    for _ in 0..args.pages {
        let (me, peer) = pick(&mut rng);
        let caller = Caller::user(me);
        let t = Instant::now();
        let (_, info) = store.history(&caller, &peer, Page::first(50)).await?;
        latencies.push(t.elapsed());
        if let Ok(before) = info.next_cursor.parse::<i64>() {
            let t = Instant::now();
            store
                .history(
                    &caller,
                    &peer,
                    Page {
                        size: 50,
                        before: Some(before),
                    },
                )
                .await?;
            latencies.push(t.elapsed());
        }
    }
    latencies.sort();

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "| backend | stored | seed | batched send ({} per txn, {} writers) | single send | history p50 | history p99 | pages |",
        args.batch, args.writers
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {:?} | {} | {:.1} s | {:.0} msg/s | {:.0} msg/s | {:.2} ms | {:.2} ms | {} |",
        backend,
        args.messages + args.send + args.single,
        seed_time.as_secs_f64(),
        rate(args.send, batched),
        rate(args.single, single),
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.len(),
    );
    Ok(())
}
