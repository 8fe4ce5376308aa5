use std::collections::BTreeSet;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const F01_CLIENT: &[u8] = include_bytes!("../../tests/fixtures/asterisk-22.6/01-login-ping-command.client.raw");
const F01_SERVER: &[u8] = include_bytes!("../../tests/fixtures/asterisk-22.6/01-login-ping-command.server.raw");
const F04_SERVER: &[u8] = include_bytes!("../../tests/fixtures/asterisk-22.6/04-calls-events-lists.server.raw");

/// A bare AMI client for tests: raw writes, frames from our parser.
struct Client {
    stream: TcpStream,
    parser: Parser,
}

impl Client {
    async fn connect(sim: &SimHandle) -> (Self, String) {
        let stream = TcpStream::connect(sim.addr()).await.expect("connect");
        let mut client = Self {
            stream,
            parser: Parser::default(),
        };
        let Some(Frame::Banner(banner)) = client.frame().await else {
            panic!("no banner");
        };
        (client, banner)
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.expect("write");
    }

    /// The next frame; `None` at EOF. A generous guard keeps a broken test from hanging.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.parser.next_frame() {
                return Some(f);
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut buf))
                .await
                .expect("the simulator answers")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.parser.feed(&buf[..n]);
        }
    }

    async fn message(&mut self) -> Message {
        match self.frame().await {
            Some(Frame::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until a message satisfies `pred`, returning everything read.
    async fn until(&mut self, pred: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut seen = Vec::new();
        loop {
            let m = self.message().await;
            let done = pred(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    async fn login(sim: &SimHandle, events: bool) -> Self {
        let (mut c, _) = Self::connect(sim).await;
        let ev = if events { "on" } else { "off" };
        c.send(&format!(
            "Action: Login\r\nActionID: l\r\nUsername: sb\r\nSecret: sbsecret\r\nEvents: {ev}\r\n\r\n"
        ))
        .await;
        assert_eq!(c.message().await.response(), Some("Success"));
        if events {
            assert_eq!(c.message().await.event(), Some("FullyBooted"));
        }
        c
    }
}

async fn start(config: SimConfig) -> SimHandle {
    SimHandle::start("127.0.0.1:0".parse().expect("addr"), config, CancellationToken::new())
        .await
        .expect("sim starts")
}

fn all_messages(bytes: &[u8]) -> Vec<Message> {
    let mut p = Parser::default();
    p.feed(bytes);
    let mut out = Vec::new();
    while let Some(f) = p.next_frame() {
        if let Frame::Message(m) = f {
            out.push(m);
        }
    }
    out
}

fn names(m: &Message) -> Vec<String> {
    m.headers().map(|(n, _)| n.to_owned()).collect()
}

#[tokio::test]
async fn replays_fixture_01_with_the_same_shape() {
    let sim = start(SimConfig::default()).await;
    let (mut c, banner) = Client::connect(&sim).await;
    assert_eq!(banner, "Asterisk Call Manager/11.0.0");
    c.send(std::str::from_utf8(F01_CLIENT).expect("ascii")).await;
    let want = all_messages(F01_SERVER);
    let mut got = Vec::new();
    while let Some(f) = c.frame().await {
        if let Frame::Message(m) = f {
            got.push(m);
        }
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(names(g), names(w), "shape of reply {:?}", w.action_id());
        assert_eq!(g.response(), w.response());
    }
    // Values that must match too: the Setvar/Getvar round trip with a space.
    assert_eq!(got[7].get("Value"), Some("hello world"));
    assert_eq!(
        got[4].command_output()[1..],
        ["0 active channels", "0 active calls", "0 calls processed"]
    );
}

#[tokio::test]
async fn md5_login_and_bad_login() {
    let sim = start(SimConfig::default()).await;
    let (mut c, _) = Client::connect(&sim).await;
    c.send("Action: Challenge\r\nActionID: c1\r\nAuthType: MD5\r\n\r\n")
        .await;
    let challenge = c.message().await.get("Challenge").expect("challenge").to_owned();
    let key = md5_key(&challenge, "sbsecret");
    c.send(&format!(
        "Action: Login\r\nActionID: c2\r\nAuthType: MD5\r\nUsername: sb\r\nKey: {key}\r\nEvents: off\r\n\r\n"
    ))
    .await;
    assert_eq!(c.message().await.get("Message"), Some("Authentication accepted"));

    let (mut bad, _) = Client::connect(&sim).await;
    bad.send("Action: Login\r\nActionID: b1\r\nUsername: sb\r\nSecret: wrong\r\n\r\n")
        .await;
    let m = bad.message().await;
    assert_eq!(
        (m.response(), m.get("Message")),
        (Some("Error"), Some("Authentication failed"))
    );
    bad.send("Action: Ping\r\nActionID: b2\r\n\r\n").await;
    assert!(
        bad.frame().await.is_none(),
        "the connection is closed after a failed login"
    );
}

#[test]
fn md5_key_matches_the_fixture() {
    // From 02-md5-challenge-and-bad-login: challenge 118165370, secret sbsecret.
    assert_eq!(md5_key("118165370", "sbsecret"), "3664dc3533a1944337df04573731a87a");
}

/// Every message the simulator sends for calls and lists has the header names of
/// a real Asterisk 22.6 message of the same kind.
#[tokio::test]
async fn originate_outcomes_and_lists_have_the_real_shapes() {
    let sim = start(SimConfig::default()).await;
    let mut c = Client::login(&sim, true).await;
    let real: BTreeSet<Vec<String>> = all_messages(F04_SERVER).iter().map(names).collect();
    let mut seen = Vec::new();

    c.send("Action: Originate\r\nActionID: o1\r\nChannel: Local/100@test\r\nApplication: Wait\r\nData: 2\r\nAsync: true\r\nCallerID: \"Alice\" <1001>\r\n\r\n").await;
    seen.extend(c.until(|m| m.event() == Some("OriginateResponse")).await);
    let answered = seen.last().cloned().expect("response");
    assert_eq!(
        (answered.get("Response"), answered.get("Reason")),
        (Some("Success"), Some("4"))
    );
    assert_eq!(answered.get("CallerIDName"), Some("Alice"));

    // Mid-call lists.
    c.send("Action: CoreShowChannels\r\nActionID: l1\r\n\r\n").await;
    let list = c.until(|m| m.event() == Some("CoreShowChannelsComplete")).await;
    let items: Vec<_> = list.iter().filter(|m| m.event() == Some("CoreShowChannel")).collect();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|m| m.action_id() == Some("l1")));
    seen.extend(list);
    c.send("Action: Status\r\nActionID: l2\r\n\r\n").await;
    seen.extend(c.until(|m| m.event() == Some("StatusComplete")).await);
    seen.extend(
        c.until(|m| m.event() == Some("Hangup") && m.get("Channel").is_some_and(|ch| ch.ends_with(";1")))
            .await,
    );

    c.send("Action: Originate\r\nActionID: o3\r\nChannel: Local/102@test\r\nApplication: Wait\r\nData: 1\r\nAsync: true\r\n\r\n").await;
    seen.extend(c.until(|m| m.event() == Some("OriginateResponse")).await);
    let busy = seen.last().cloned().expect("response");
    assert_eq!(
        (busy.get("Response"), busy.get("Reason"), busy.get("Uniqueid")),
        (Some("Failure"), Some("5"), Some("<unknown>"))
    );
    c.send("Action: Originate\r\nActionID: o4\r\nChannel: Local/999@nowhere\r\nApplication: Wait\r\nData: 1\r\nAsync: true\r\n\r\n").await;
    seen.extend(c.until(|m| m.event() == Some("OriginateResponse")).await);
    assert_eq!(seen.last().and_then(|m| m.get("Reason")), Some("0"));

    c.send(
        "Action: UserEvent\r\nActionID: u1\r\nUserEvent: SbHello\r\nHeader1: value one\r\nHeader2: value two\r\n\r\n",
    )
    .await;
    seen.extend(c.until(|m| m.event() == Some("UserEvent")).await);

    for m in &seen {
        assert!(real.contains(&names(m)), "no real message has this shape: {m:?}");
    }
    let kinds: BTreeSet<&str> = seen.iter().filter_map(Message::event).collect();
    for k in [
        "Newchannel",
        "Newstate",
        "DialBegin",
        "DialEnd",
        "Hangup",
        "OriginateResponse",
        "Status",
        "UserEvent",
    ] {
        assert!(kinds.contains(k), "{k} missing");
    }
}

#[tokio::test]
async fn old_command_style_is_follows_with_end_marker() {
    let sim = start(SimConfig {
        old_command_style: true,
        ..SimConfig::default()
    })
    .await;
    let mut c = Client::login(&sim, false).await;
    c.send("Action: Command\r\nActionID: x\r\nCommand: core show channels\r\n\r\n")
        .await;
    let m = c.message().await;
    assert_eq!(m.response(), Some("Follows"));
    assert_eq!(m.command_output().last().copied(), Some("0 calls processed"));
    assert!(m.command_output()[0].starts_with("Channel"));
}

#[tokio::test]
async fn controls_flood_malformed_and_drop() {
    let sim = start(SimConfig::default()).await;
    let mut c = Client::login(&sim, true).await;
    sim.control(Control::Flood { rate: 0, count: 2000 });
    let mut n = 0u64;
    while n < 2000 {
        let m = c.message().await;
        if m.event() == Some("Newexten") {
            n += 1;
            assert_eq!(m.get("SimSeq"), Some(n.to_string().as_str()), "in order, none lost");
        }
    }
    sim.control(Control::Malformed);
    let mut errors = 0;
    loop {
        match c.frame().await {
            Some(Frame::Error(_)) => errors += 1,
            Some(Frame::Message(m)) if m.event() == Some("SimAfterMalformed") => break,
            Some(_) => {}
            None => panic!("the connection must survive malformed bytes"),
        }
    }
    assert!(errors >= 2, "the broken bytes are reported ({errors})");
    sim.control(Control::Drop);
    assert!(c.frame().await.is_none());
}

#[test]
fn a_paced_flood_sends_what_its_rate_has_made_due() {
    let started = std::time::Instant::now()
        .checked_sub(Duration::from_millis(250))
        .expect("a quarter of a second ago");
    let flooding = |rate, sent| Flooding {
        rate,
        remaining: 1_000_000,
        started,
        sent,
    };
    // 10,000/s for 250 ms (and a little more while the test runs): 2,500 due.
    let due = flooding(10_000, 0).due();
    assert!((2_500..2_600).contains(&due), "{due}");
    assert!((500..600).contains(&flooding(10_000, 2_000).due()));
    assert_eq!(flooding(10_000, 1_000_000).due(), 0, "ahead of the rate: nothing");
    // 40/s: 10 due after 250 ms (11 if the machine paused this test for 25 ms). The
    // old pacing sent max(rate / 100, 1) per 10 ms: 100/s when asked for 40/s.
    assert!((10..=11).contains(&flooding(40, 0).due()));
    assert_eq!(flooding(0, 0).due(), 512, "unpaced: a batch at a time");
}
