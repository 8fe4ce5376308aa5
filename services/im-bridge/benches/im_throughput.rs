//! im-bridge throughput and latency against local InspIRCd (flood limits lifted)
//! and prosody (c2s rate limit lifted), with a real nats-server:
//! `cargo bench -p im-bridge --bench im_throughput`. Prints a table.
//!
//! - bus -> IM messages/s: N sends over `sb.cmd.im.<account>.send`, 32 in flight,
//!   timed until a peer client has received all N.
//! - bus -> IM latency: one send at a time, from the request to the peer's receipt.
//! - IM -> bus messages/s: a peer sends N messages, timed until N events arrive.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::*;
use switchboard_proto::im::v1::{LinkEvent, SendReply, SendRequest};
use switchboard_test_support::NatsServer;
use tokio::sync::Semaphore;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::message::{Lang, Message as XmppMessage, MessageType};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, Stanza};

/// Messages per throughput run, for both protocols.
const N: usize = 2000;
/// Sends per latency run.
const LATENCY_N: usize = 200;
/// What the IRC rows are measured against.
const IRC: &str = "IRC (InspIRCd)";

struct Row {
    protocol: &'static str,
    what: &'static str,
    value: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn request(account: &str, to: &str, text: String) -> SendRequest {
    SendRequest {
        account: account.to_owned(),
        to: to.to_owned(),
        text,
        ..SendRequest::default()
    }
}

/// Sends `n` texts with 32 in flight, in a task; resolves to how many were accepted.
fn pipelined_sends(bus: &switchboard_bus::Bus, account: &str, to: &str, n: usize) -> tokio::task::JoinHandle<usize> {
    let bus = bus.clone();
    let account = account.to_owned();
    let to = to.to_owned();
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(32));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let bus = bus.clone();
            let subject = format!("sb.cmd.im.{account}.send");
            let req = request(&account, &to, format!("m{i}"));
            tasks.spawn(async move {
                let _permit = permit;
                let sent: Result<SendReply, _> = bus.request(&subject, &req, Some(Duration::from_secs(30))).await;
                if let Err(e) = &sent {
                    eprintln!("send failed: {e}");
                }
                sent.is_ok()
            });
        }
        tasks.join_all().await.into_iter().filter(|ok| *ok).count()
    })
}

fn report(rows: &mut Vec<Row>, row: Row) {
    eprintln!("| {} | {} | {} |", row.protocol, row.what, row.value);
    rows.push(row);
}

async fn irc(rows: &mut Vec<Row>) {
    let nats = NatsServer::start().expect("nats-server");
    let ircd = IrcServices::start_without_flood_limits();
    let mut config = base_config(&nats);
    let mut account = irc_account("irc", ircd.port, "sbbot", &[]);
    // im-bridge's own send throttle: far above what the run can reach.
    if let im_bridge::ProtocolConfig::Irc(irc) = &mut account.protocol {
        irc.rate_burst = 1_000_000;
        irc.rate_window = Duration::from_secs(1);
    }
    config.accounts.push(account);
    let mut links = subscribe(&nats, "sb.evt.im.irc.link.up".to_owned()).await;
    let mut events = subscribe(&nats, "sb.evt.im.irc.message".to_owned()).await;
    let bridge = Running::start(config).await;
    let _: LinkEvent = next_event(&mut links).await;
    let bus = bus(&nats).await;
    let mut alice = IrcPeer::connect(ircd.port, "alice").await;

    let start = Instant::now();
    let sender = pipelined_sends(&bus, "irc", "alice", N);
    for _ in 0..N {
        alice.next_privmsg().await;
    }
    let elapsed = start.elapsed();
    assert_eq!(sender.await.expect("sender"), N);
    report(
        rows,
        Row {
            protocol: IRC,
            what: "bus -> IM msgs/s",
            value: format!("{:.0} ({N} in {elapsed:.2?})", N as f64 / elapsed.as_secs_f64()),
        },
    );

    let mut latencies = Vec::with_capacity(LATENCY_N);
    for i in 0..LATENCY_N {
        let t0 = Instant::now();
        let _: SendReply = bus
            .request("sb.cmd.im.irc.send", &request("irc", "alice", format!("l{i}")), None)
            .await
            .expect("send");
        alice.next_privmsg().await;
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    report(
        rows,
        Row {
            protocol: IRC,
            what: "bus -> IM latency p50 / p99",
            value: format!(
                "{:.2?} / {:.2?}",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99)
            ),
        },
    );

    let start = Instant::now();
    for i in 0..N {
        alice.privmsg("sbbot", &format!("in{i}")).await;
    }
    for _ in 0..N {
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("event")
            .expect("open");
    }
    let elapsed = start.elapsed();
    report(
        rows,
        Row {
            protocol: IRC,
            what: "IM -> bus msgs/s",
            value: format!("{:.0} ({N} in {elapsed:.2?})", N as f64 / elapsed.as_secs_f64()),
        },
    );
    bridge.stop().await;
}

async fn next_body(client: &mut Client) {
    loop {
        match tokio::time::timeout(WAIT, client.next()).await.expect("in time") {
            Some(Event::Stanza(Stanza::Message(m))) if !m.bodies.is_empty() => return,
            Some(_) => {}
            None => panic!("peer stream ended"),
        }
    }
}

async fn xmpp(rows: &mut Vec<Row>) {
    let nats = NatsServer::start().expect("nats-server");
    let prosody = Prosody::start(&[("bot", "pw"), ("alice", "pw")]);
    let mut config = base_config(&nats);
    config.accounts.push(xmpp_account("xmpp", &prosody, "bot", "pw", &[]));
    let mut links = subscribe(&nats, "sb.evt.im.xmpp.link.up".to_owned()).await;
    let mut events = subscribe(&nats, "sb.evt.im.xmpp.message".to_owned()).await;
    let bridge = Running::start(config).await;
    let _: LinkEvent = next_event(&mut links).await;
    let bus = bus(&nats).await;
    let jid: BareJid = "alice@localhost".parse().expect("jid");
    let mut alice = Client::new_plaintext(
        jid,
        "pw",
        DnsConfig::no_srv("127.0.0.1", prosody.port),
        Timeouts::tight(),
    );
    while let Some(event) = alice.next().await {
        if event.is_online() {
            break;
        }
    }
    // Messages to a bare JID reach only resources that sent available presence.
    alice
        .send_stanza(tokio_xmpp::parsers::presence::Presence::available().into())
        .await
        .expect("presence");

    let start = Instant::now();
    let sender = pipelined_sends(&bus, "xmpp", "alice@localhost", N);
    for _ in 0..N {
        next_body(&mut alice).await;
    }
    let elapsed = start.elapsed();
    assert_eq!(sender.await.expect("sender"), N);
    report(
        rows,
        Row {
            protocol: "XMPP (prosody)",
            what: "bus -> IM msgs/s",
            value: format!("{:.0} ({N} in {elapsed:.2?})", N as f64 / elapsed.as_secs_f64()),
        },
    );

    let mut latencies = Vec::with_capacity(LATENCY_N);
    for i in 0..LATENCY_N {
        let t0 = Instant::now();
        let _: SendReply = bus
            .request(
                "sb.cmd.im.xmpp.send",
                &request("xmpp", "alice@localhost", format!("l{i}")),
                None,
            )
            .await
            .expect("send");
        next_body(&mut alice).await;
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    report(
        rows,
        Row {
            protocol: "XMPP (prosody)",
            what: "bus -> IM latency p50 / p99",
            value: format!(
                "{:.2?} / {:.2?}",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99)
            ),
        },
    );

    let to: Jid = "bot@localhost".parse().expect("jid");
    let start = Instant::now();
    for i in 0..N {
        let m =
            XmppMessage::new_with_type(MessageType::Chat, Some(to.clone())).with_body(Lang::new(), format!("in{i}"));
        alice.send_stanza(m.into()).await.expect("peer send");
    }
    for _ in 0..N {
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("event")
            .expect("open");
    }
    let elapsed = start.elapsed();
    report(
        rows,
        Row {
            protocol: "XMPP (prosody)",
            what: "IM -> bus msgs/s",
            value: format!("{:.0} ({N} in {elapsed:.2?})", N as f64 / elapsed.as_secs_f64()),
        },
    );
    bridge.stop().await;
}

fn main() {
    switchboard_runtime::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        irc(&mut rows).await;
        xmpp(&mut rows).await;
        rows
    });
    println!("| protocol | measure | value |");
    println!("|---|---|---|");
    for row in rows {
        println!("| {} | {} | {} |", row.protocol, row.what, row.value);
    }
}
