//! ami-bridge end to end: the AMI simulator -> ami-bridge -> a real nats-server.

use std::time::Duration;

use ami_bridge::sim::{Control, SimConfig, SimHandle};
use ami_bridge::{AmiSettings, App, AuthMode, Config, PbxConfig};
use futures::StreamExt;
use switchboard_bus::{Bus, CloudEvent, CommandError, NatsConfig, Secret};
use switchboard_proto::ami::v1 as pb;
use switchboard_proto::common::v1::{ErrorCode, LinkState};
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

/// A guard against hangs only; no test passes or fails on timing.
const GUARD: Duration = Duration::from_secs(30);

struct Rig {
    _nats: NatsServer,
    sim: SimHandle,
    bus: Bus,
    events: async_nats::Subscriber,
    shutdown: CancellationToken,
    app: tokio::task::JoinHandle<Result<(), ami_bridge::Error>>,
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    sessions: std::sync::Arc<std::collections::BTreeMap<String, ami_bridge::session::SessionHandle>>,
}

async fn rig(auth: AuthMode, ami: AmiSettings) -> Rig {
    let nats = NatsServer::start().expect("nats-server");
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
    let bus = Bus::connect(&nats_config, "test").await.expect("bus");
    let events = bus.client().subscribe("sb.evt.ami.>").await.expect("subscribe");
    let config = Config {
        nats: nats_config,
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ami,
        pbx: vec![PbxConfig {
            id: "pbx1".into(),
            host: "127.0.0.1".into(),
            port: sim.addr().port(),
            username: "sb".into(),
            secret: Secret::new("sbsecret"),
            auth,
            ..PbxConfig::default()
        }],
        ..Config::default()
    };
    let app = App::build(config, shutdown.clone()).await.expect("app");
    let grpc = app.grpc_addr();
    let http = app.http_addr();
    let sessions = app.sessions();
    let app = tokio::spawn(app.run());
    Rig {
        _nats: nats,
        sim,
        bus,
        events,
        shutdown,
        app,
        grpc,
        http,
        sessions,
    }
}

impl Rig {
    /// The next event on `sb.evt.ami.>` whose subject satisfies `pred`.
    async fn next(&mut self, pred: impl Fn(&str) -> bool) -> (String, CloudEvent) {
        loop {
            let msg = tokio::time::timeout(GUARD, self.events.next())
                .await
                .expect("an event arrives")
                .expect("subscription open");
            if pred(msg.subject.as_str()) {
                let ce = CloudEvent::from_message(msg.headers.as_ref(), msg.payload).expect("a CloudEvent");
                return (msg.subject.to_string(), ce);
            }
        }
    }

    async fn action(&self, action: &str, headers: &[(&str, &str)]) -> Result<pb::ActionResponse, CommandError> {
        let request = pb::ActionRequest {
            action: action.into(),
            headers: headers
                .iter()
                .map(|(n, v)| pb::Header {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..Default::default()
        };
        self.bus
            .request("sb.cmd.ami.pbx1.action", &request, Some(Duration::from_secs(20)))
            .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(GUARD, self.app).await;
    }
}

#[tokio::test]
async fn link_snapshot_raw_events_actions_and_calls() {
    let mut rig = rig(AuthMode::Md5, AmiSettings::default()).await;
    let (_, up) = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;
    let up: pb::LinkEvent = up.data_as().expect("LinkEvent");
    assert_eq!(
        (up.ami_version.as_str(), up.asterisk_version.as_str()),
        ("11.0.0", "22")
    );
    assert_eq!(up.state, LinkState::Up as i32);
    let (_, snap) = rig.next(|s| s == "sb.evt.ami.pbx1.snapshot").await;
    let snap: pb::ChannelSnapshot = snap.data_as().expect("snapshot");
    assert_eq!(snap.session_id, up.session_id);
    assert!(snap.channels.is_empty());

    // Originate over the bus: the reply waits for OriginateResponse.
    let reply = rig
        .action(
            "Originate",
            &[
                ("Channel", "Local/100@test"),
                ("Application", "Wait"),
                ("Data", "1"),
                ("CallerID", "\"Alice\" <1001>"),
            ],
        )
        .await
        .expect("originate reply");
    assert_eq!(reply.response, "Success");
    assert_eq!(reply.events.len(), 1);
    assert_eq!(reply.events[0].event, "OriginateResponse");

    // Raw events in order with the session facts; then the derived call.
    let mut last_seq = 0;
    let mut raw_names = Vec::new();
    let mut call_states = Vec::new();
    while call_states.last().map(String::as_str) != Some("ended") {
        let (subject, ce) = rig.next(|s| s.contains(".raw.") || s.contains(".call.")).await;
        if subject.contains(".raw.") {
            let raw: pb::RawEvent = ce.data_as().expect("RawEvent");
            assert!(raw.sequence > last_seq, "in order");
            last_seq = raw.sequence;
            assert_eq!(raw.session_id, up.session_id);
            assert_eq!(subject, format!("sb.evt.ami.pbx1.raw.{}", raw.event));
            raw_names.push(raw.event);
        } else {
            let call: pb::CallEvent = ce.data_as().expect("CallEvent");
            assert_eq!(call.caller.as_ref().map(|p| p.number.as_str()), Some("1001"));
            call_states.push(subject.rsplit('.').next().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(call_states, ["started", "ringing", "answered", "ended"]);
    for name in ["Newchannel", "DialBegin", "OriginateResponse", "Hangup"] {
        assert!(raw_names.iter().any(|n| n == name), "{name} published");
    }

    // An event list comes back as one reply.
    let list = rig.action("Status", &[]).await.expect("status");
    assert_eq!(list.events.last().map(|e| e.event.as_str()), Some("StatusComplete"));

    // CR/LF is refused, Command is denied by default, an unknown action is AMI's error.
    let injected = rig.action("Getvar", &[("Variable", "X\r\nAction: Logoff")]).await;
    let Err(CommandError::Rejected { error, .. }) = injected else {
        panic!("CR/LF must be refused: {injected:?}");
    };
    assert_eq!(error.code, ErrorCode::PermissionDenied as i32);
    let denied = rig.action("Command", &[("Command", "core show version")]).await;
    assert!(matches!(denied, Err(CommandError::Rejected { .. })), "{denied:?}");
    let unknown = rig.action("NoSuchAction", &[]).await.expect("AMI answers");
    assert_eq!(unknown.response, "Error");
    rig.stop().await;
}

#[tokio::test]
async fn dead_session_is_detected_and_reconnects_with_resync() {
    let ami = AmiSettings {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..AmiSettings::default()
    };
    let mut rig = rig(AuthMode::Plain, ami).await;
    let (_, up) = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;
    let first: pb::LinkEvent = up.data_as().expect("link");

    rig.sim.control(Control::Stall(Duration::from_secs(3)));
    let (_, down) = rig.next(|s| s.starts_with("sb.evt.ami.pbx1.link.")).await;
    let down: pb::LinkEvent = down.data_as().expect("link");
    assert_eq!(down.state, LinkState::Down as i32);
    assert!(down.reason.starts_with("ping timeout"), "{}", down.reason);

    let (_, up) = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;
    let second: pb::LinkEvent = up.data_as().expect("link");
    assert_ne!(second.session_id, first.session_id);
    assert!(second.attempt >= 1);
    let (_, snap) = rig.next(|s| s == "sb.evt.ami.pbx1.snapshot").await;
    let snap: pb::ChannelSnapshot = snap.data_as().expect("snapshot");
    assert_eq!(snap.session_id, second.session_id);

    rig.sim.control(Control::Drop);
    let (_, down) = rig.next(|s| s.starts_with("sb.evt.ami.pbx1.link.")).await;
    let down: pb::LinkEvent = down.data_as().expect("link");
    assert_eq!(down.reason, "eof");
    let _ = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;

    // Malformed bytes: an error event, and the session goes on.
    rig.sim.control(Control::Malformed);
    let (_, err) = rig.next(|s| s == "sb.evt.ami.pbx1.error").await;
    let err: pb::ProtocolError = err.data_as().expect("error");
    assert_eq!(err.kind, "malformed_header");
    let _ = rig.next(|s| s == "sb.evt.ami.pbx1.raw.SimAfterMalformed").await;
    rig.stop().await;
}

#[tokio::test]
async fn flood_reaches_jetstream_complete_and_in_order() {
    let mut rig = rig(AuthMode::Plain, AmiSettings::default()).await;
    let _ = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;
    const N: u64 = 20_000;
    rig.sim.control(Control::Flood { rate: 0, count: N });
    // Read back from JetStream (what "nothing lost" is about): a core subscription may
    // itself be cut off as a slow consumer when the machine is busy.
    let stream = rig.bus.jetstream().get_stream("SB_EVENTS").await.expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "sb.evt.ami.pbx1.raw.Newexten".into(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut expected = 1u64;
    while expected <= N {
        let message = tokio::time::timeout(GUARD, messages.next())
            .await
            .expect("a stored event arrives")
            .expect("consumer open")
            .expect("no consumer error");
        let ce = CloudEvent::from_message(message.headers.as_ref(), message.payload.clone()).expect("a CloudEvent");
        let raw: pb::RawEvent = ce.data_as().expect("raw");
        let seq = raw
            .fields
            .as_ref()
            .and_then(|f| f.fields.get("SimSeq"))
            .and_then(|v| match &v.kind {
                Some(switchboard_proto::wkt::value::Kind::StringValue(s)) => s.parse::<u64>().ok(),
                _ => None,
            });
        assert_eq!(seq, Some(expected), "nothing lost, in order");
        expected += 1;
    }
    // And the stream holds every one of them.
    let mut stream = stream;
    let mut stored = 0;
    for _ in 0..100 {
        let info = stream.info().await.expect("info");
        stored = info.state.messages;
        if stored >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored >= N, "stored {stored}");
    // The publisher flushes its count when it goes idle after the last ack.
    let mut metrics = String::new();
    let mut published = 0u64;
    for _ in 0..100 {
        metrics = reqwest::get(format!("http://{}/metrics", rig.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        published = metrics
            .lines()
            .find(|l| l.starts_with("ami_raw_events_published_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if published >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published >= N, "metrics: {published}");
    // The registry is process-wide and other tests here reuse the id `pbx1` while
    // dropping their links: only that the gauge is exported is this test's to check.
    assert!(metrics.contains("ami_link_up{pbx=\"pbx1\"}"), "{metrics}");
    rig.stop().await;
}

#[tokio::test]
async fn bad_login_is_reported_and_retried() {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let sim = SimHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig::default(),
        shutdown.clone(),
    )
    .await
    .expect("sim");
    let config = Config {
        nats: NatsConfig {
            url: nats.url(),
            ..NatsConfig::default()
        },
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        pbx: vec![PbxConfig {
            id: "p".into(),
            port: sim.addr().port(),
            username: "sb".into(),
            secret: Secret::new("wrong"),
            ..PbxConfig::default()
        }],
        ..Config::default()
    };
    let app = App::build(config, shutdown.clone()).await.expect("app");
    let sessions = app.sessions();
    let http = app.http_addr();
    let task = tokio::spawn(app.run());
    let handle = sessions.get("p").expect("session").clone();
    let mut status = handle.status();
    for _ in 0..300 {
        status = handle.status();
        if !status.last_error.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status.last_error, "login failed: Authentication failed");
    assert_ne!(status.state, LinkState::Up as i32);
    // Not ready while a PBX is not connected, and /readyz says which and why.
    let ready = reqwest::get(format!("http://{http}/readyz")).await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let body = ready.text().await.expect("body");
    assert!(body.contains("PBX p not connected"), "{body}");
    // The secret never shows in the config's Debug output (what logs would print).
    assert!(
        !format!(
            "{:?}",
            PbxConfig {
                secret: Secret::new("wrong"),
                ..PbxConfig::default()
            }
        )
        .contains("wrong")
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(GUARD, task).await;
}

fn authed<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    let value = format!("Bearer {token}").parse().expect("metadata");
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test]
async fn grpc_checks_the_caller_and_serves_actions_and_events() {
    use pb::ami_service_client::AmiServiceClient;
    let ami = AmiSettings {
        api_token: Some(Secret::new("t0ken")),
        ..AmiSettings::default()
    };
    let mut rig = rig(AuthMode::Plain, ami).await;
    let _ = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;
    let mut client = AmiServiceClient::connect(format!("http://{}", rig.grpc))
        .await
        .expect("grpc");

    let anonymous = client.list_pbx(pb::ListPbxRequest {}).await;
    assert_eq!(anonymous.expect_err("no token").code(), tonic::Code::Unauthenticated);
    let wrong = client.list_pbx(authed(pb::ListPbxRequest {}, "nope")).await;
    assert_eq!(wrong.expect_err("bad token").code(), tonic::Code::Unauthenticated);

    let list = client
        .list_pbx(authed(pb::ListPbxRequest {}, "t0ken"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.pbx.len(), 1);
    assert_eq!(list.pbx[0].state, LinkState::Up as i32);
    assert_eq!(list.pbx[0].asterisk_version, "22");

    let filter = pb::EventsRequest {
        pbx: vec!["pbx1".into()],
        events: vec!["newchannel".into()],
        calls: true,
    };
    let mut stream = client
        .events(authed(filter, "t0ken"))
        .await
        .expect("events")
        .into_inner();

    let originate = pb::OriginateRequest {
        pbx: "pbx1".into(),
        channel: "Local/102@test".into(),
        application: "Wait".into(),
        data: "1".into(),
        ..Default::default()
    };
    let busy = client
        .originate(authed(originate, "t0ken"))
        .await
        .expect("originate")
        .into_inner();
    assert!(!busy.success);
    assert_eq!((busy.reason_code, busy.reason.as_str()), (5, "Busy"));

    let mut raw = Vec::new();
    let mut ended = None;
    while ended.is_none() {
        let item = tokio::time::timeout(GUARD, stream.message())
            .await
            .expect("item")
            .expect("ok")
            .expect("open");
        match item.item {
            Some(pb::events_item::Item::Raw(r)) => raw.push(r.event),
            Some(pb::events_item::Item::Call(c)) if c.state == pb::CallState::Ended as i32 => ended = Some(c),
            _ => {}
        }
    }
    assert!(raw.iter().all(|e| e == "Newchannel") && raw.len() == 2, "{raw:?}");
    let ended = ended.expect("ended");
    assert!(ended.missed);
    assert_eq!(ended.hangup_cause, 17);

    let set = pb::SetvarRequest {
        pbx: "pbx1".into(),
        variable: "SB".into(),
        value: "hello world".into(),
        ..Default::default()
    };
    client.setvar(authed(set, "t0ken")).await.expect("setvar");
    let get = pb::GetvarRequest {
        pbx: "pbx1".into(),
        variable: "SB".into(),
        ..Default::default()
    };
    let got = client.getvar(authed(get, "t0ken")).await.expect("getvar").into_inner();
    assert_eq!(got.value, "hello world");

    let command = pb::CommandRequest {
        pbx: "pbx1".into(),
        command: "core show version".into(),
    };
    let denied = client.command(authed(command, "t0ken")).await;
    assert_eq!(denied.expect_err("denied").code(), tonic::Code::PermissionDenied);
    let missing = client
        .core_show_channels(authed(pb::CoreShowChannelsRequest { pbx: "nope".into() }, "t0ken"))
        .await;
    assert_eq!(missing.expect_err("unknown pbx").code(), tonic::Code::NotFound);
    rig.stop().await;
}

#[tokio::test]
async fn typed_helpers_and_retry_on_reconnect() {
    use ami_bridge::helpers::header;
    let ami = AmiSettings {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..AmiSettings::default()
    };
    let mut rig = rig(AuthMode::Plain, ami).await;
    let _ = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;
    let pbx = rig.sessions.get("pbx1").expect("pbx1").clone();

    let pong = pbx.ping().await.expect("ping");
    assert_eq!(header(&pong, "Ping"), Some("Pong"));
    pbx.setvar("", "SB_X", "a b").await.expect("setvar");
    assert_eq!(
        header(&pbx.getvar("", "SB_X").await.expect("getvar"), "Value"),
        Some("a b")
    );
    let state = pbx.extension_state("100", "test").await.expect("state");
    assert_eq!(header(&state, "StatusText"), Some("Unknown"));
    let status = pbx.channel_status("").await.expect("status");
    assert_eq!(status.events.last().map(|e| e.event.as_str()), Some("StatusComplete"));
    pbx.user_event("SbHello", &[("Header1", "one")])
        .await
        .expect("user event");
    let (_, ev) = rig.next(|s| s == "sb.evt.ami.pbx1.raw.UserEvent").await;
    let ev: pb::RawEvent = ev.data_as().expect("raw");
    assert!(ev.headers.iter().any(|h| h.name == "Header1" && h.value == "one"));
    let answered = pbx
        .originate("Local/100@test", "test", "100", "1", "Bob <1002>")
        .await
        .expect("originate");
    assert_eq!(answered.events[0].event, "OriginateResponse");
    let refused = pbx.command("core show version").await;
    assert!(matches!(refused, Err(ami_bridge::session::ActionError::Refused(_))));
    let injected = pbx.hangup("PJSIP/1\nAction: Logoff").await;
    assert!(matches!(injected, Err(ami_bridge::session::ActionError::Refused(_))));

    // An action in flight when the session dies is sent again on the next one.
    rig.sim.control(Control::Stall(Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let retried = pbx
        .action(pb::ActionRequest {
            action: "Ping".into(),
            timeout_ms: 20_000,
            retry_on_reconnect: true,
            ..Default::default()
        })
        .await
        .expect("retried on the next session");
    assert_eq!(retried.response, "Success");
    let (_, down) = rig.next(|s| s == "sb.evt.ami.pbx1.link.down").await;
    let down: pb::LinkEvent = down.data_as().expect("link");
    assert!(down.reason.starts_with("ping timeout"));
    // ActionIDs are `<session-id>-<n>`: the answer came from the next session.
    assert!(
        !retried.action_id.starts_with(&down.session_id),
        "{}",
        retried.action_id
    );
    assert!(
        retried.action_id.starts_with(&pbx.status().session_id),
        "{}",
        retried.action_id
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_mid_flood_publishes_every_event_read_then_link_down() {
    let mut rig = rig(AuthMode::Plain, AmiSettings::default()).await;
    let _ = rig.next(|s| s == "sb.evt.ami.pbx1.link.up").await;
    // Far more than will be read before the shutdown.
    rig.sim.control(Control::Flood {
        rate: 5_000,
        count: 10_000_000,
    });
    let mut stream = rig.bus.jetstream().get_stream("SB_EVENTS").await.expect("stream");
    let deadline = tokio::time::Instant::now() + GUARD;
    while stream.info().await.expect("info").state.messages < 2_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never reached JetStream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.shutdown.cancel();
    let ended = tokio::time::timeout(GUARD, rig.app).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "ami-bridge stops cleanly: {ended:?}");

    // Everything stored for pbx1, in stream order.
    let last = stream.info().await.expect("info").state.last_sequence;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "sb.evt.ami.pbx1.>".into(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut flood = 0u64;
    let (last_subject, last_event) = loop {
        let message = tokio::time::timeout(GUARD, messages.next())
            .await
            .expect("a stored event arrives")
            .expect("consumer open")
            .expect("no consumer error");
        let sequence = message.info().expect("JetStream message").stream_sequence;
        let ce = CloudEvent::from_message(message.headers.as_ref(), message.payload.clone()).expect("a CloudEvent");
        if message.subject.as_str() == "sb.evt.ami.pbx1.raw.Newexten" {
            let raw: pb::RawEvent = ce.data_as().expect("raw");
            let seq = raw
                .fields
                .as_ref()
                .and_then(|f| f.fields.get("SimSeq"))
                .and_then(|v| match &v.kind {
                    Some(switchboard_proto::wkt::value::Kind::StringValue(s)) => s.parse::<u64>().ok(),
                    _ => None,
                });
            assert_eq!(seq, Some(flood + 1), "no gap, no repeat, in order");
            flood += 1;
        }
        if sequence >= last {
            break (message.subject.to_string(), ce);
        }
    };
    // The link went down because of the shutdown, after every event read before it:
    // the session hands its events to the publisher in wire order, and the publisher
    // settles every ack before the service ends.
    assert_eq!(last_subject, "sb.evt.ami.pbx1.link.down");
    let link: pb::LinkEvent = last_event.data_as().expect("link");
    assert_eq!(link.reason, "shutdown");
    assert!(
        (2_000..10_000_000).contains(&flood),
        "the shutdown was mid-flood ({flood})"
    );
    println!("{flood} flood events read and stored before the shutdown's link.down");
}
