//! ami-bridge over TLS: the simulator with a certificate from a per-test CA
//! (made with `openssl`), the bridge trusting that CA through `ca_file`.

use std::time::Duration;

use ami_bridge::sim::{SimConfig, SimHandle, SimTls};
use ami_bridge::{AmiSettings, App, Config, PbxConfig};
use futures::StreamExt;
use switchboard_bus::{Bus, CloudEvent, NatsConfig, Secret};
use switchboard_proto::ami::v1 as pb;
use switchboard_proto::common::v1::LinkState;
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use switchboard_test_support::im::TestCa;
use tokio_util::sync::CancellationToken;

/// A guard against hangs only; no test passes or fails on timing.
const GUARD: Duration = Duration::from_secs(30);

async fn sim(tls: Option<SimTls>, shutdown: &CancellationToken) -> SimHandle {
    let config = SimConfig {
        tls,
        ..SimConfig::default()
    };
    SimHandle::start("127.0.0.1:0".parse().expect("addr"), config, shutdown.clone())
        .await
        .expect("sim")
}

fn config(nats: &NatsServer, port: u16, ca_file: &std::path::Path) -> Config {
    Config {
        nats: NatsConfig {
            url: nats.url(),
            ..NatsConfig::default()
        },
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        // The refusal test starts one app after another for the same PBX.
        ami: AmiSettings {
            lease: false,
            ..AmiSettings::default()
        },
        pbx: vec![PbxConfig {
            id: "pbx1".into(),
            host: "127.0.0.1".into(),
            port,
            username: "sb".into(),
            secret: Secret::new("sbsecret"),
            tls: true,
            ca_file: Some(ca_file.to_owned()),
            tls_server_name: Some("pbx.test".into()),
            ..PbxConfig::default()
        }],
        ..Config::default()
    }
}

async fn next(events: &mut async_nats::Subscriber, subject: &str) -> CloudEvent {
    loop {
        let msg = tokio::time::timeout(GUARD, events.next())
            .await
            .expect("an event arrives")
            .expect("subscription open");
        if msg.subject.as_str() == subject {
            return CloudEvent::from_message(msg.headers.as_ref(), msg.payload).expect("a CloudEvent");
        }
    }
}

#[tokio::test]
async fn a_pbx_over_tls_with_a_private_ca_logs_in_publishes_and_takes_actions() {
    let ca = TestCa::new("Switchboard test PBX CA");
    let cert = ca.issue("pbx", &["pbx.test"]);
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let sim = sim(
        Some(SimTls {
            cert: cert.cert,
            key: cert.key,
        }),
        &shutdown,
    )
    .await;
    let bus = Bus::connect(
        &NatsConfig {
            url: nats.url(),
            ..NatsConfig::default()
        },
        "test",
    )
    .await
    .expect("bus");
    let mut events = bus.client().subscribe("sb.evt.ami.>").await.expect("subscribe");
    let app = App::build(config(&nats, sim.addr().port(), &ca.cert_file()), shutdown.clone())
        .await
        .expect("app");
    let task = tokio::spawn(app.run());

    let up: pb::LinkEvent = next(&mut events, "sb.evt.ami.pbx1.link.up")
        .await
        .data_as()
        .expect("LinkEvent");
    assert_eq!(up.state, LinkState::Up as i32);
    assert_eq!(up.ami_version, "11.0.0");

    // An action over the bus goes through the TLS session; its event is published.
    let request = pb::ActionRequest {
        action: "UserEvent".into(),
        headers: vec![
            pb::Header {
                name: "UserEvent".into(),
                value: "OverTls".into(),
            },
            pb::Header {
                name: "Marker".into(),
                value: "42".into(),
            },
        ],
        ..Default::default()
    };
    let reply: pb::ActionResponse = bus
        .request("sb.cmd.ami.pbx1.action", &request, Some(Duration::from_secs(20)))
        .await
        .expect("action reply");
    assert_eq!(reply.response, "Success");
    let raw: pb::RawEvent = next(&mut events, "sb.evt.ami.pbx1.raw.UserEvent")
        .await
        .data_as()
        .expect("RawEvent");
    assert_eq!(raw.session_id, up.session_id);
    let marker = raw
        .headers
        .iter()
        .find(|h| h.name == "Marker")
        .map(|h| h.value.as_str());
    assert_eq!(marker, Some("42"));

    shutdown.cancel();
    let _ = tokio::time::timeout(GUARD, task).await;
}

/// Waits until the session to `pbx1` reports a failure and returns it.
async fn first_failure(handle: &ami_bridge::session::SessionHandle) -> pb::PbxStatus {
    for _ in 0..500 {
        let status = handle.status();
        if !status.last_error.is_empty() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no failure reported: {:?}", handle.status());
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_without_plaintext_fallback() {
    let trusted = TestCa::new("Trusted CA");
    let other = TestCa::new("Other CA");
    let cert = other.issue("pbx", &["pbx.test"]);
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let tls_sim = sim(
        Some(SimTls {
            cert: cert.cert,
            key: cert.key,
        }),
        &shutdown,
    )
    .await;
    // A plaintext manager port: a TLS session must not fall back to it either.
    let plain_sim = sim(None, &shutdown).await;
    for (port, expected) in [
        (tls_sim.addr().port(), "UnknownIssuer"),
        (plain_sim.addr().port(), "TLS handshake"),
    ] {
        let app = App::build(config(&nats, port, &trusted.cert_file()), shutdown.child_token())
            .await
            .expect("app");
        let sessions = app.sessions();
        let task = tokio::spawn(app.run());
        let handle = sessions.get("pbx1").expect("session").clone();
        let status = first_failure(&handle).await;
        assert!(status.last_error.contains(expected), "{}", status.last_error);
        assert!(
            status.last_error.starts_with("TLS handshake with"),
            "{}",
            status.last_error
        );
        // It keeps retrying over TLS and never comes up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_ne!(handle.status().state, LinkState::Up as i32);
        assert!(handle.status().last_error.starts_with("TLS handshake with"));
        task.abort();
        let _ = task.await;
    }
    shutdown.cancel();
}
