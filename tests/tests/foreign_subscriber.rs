//! A subscriber written in Python (nats-py) reads an event the Rust bus publishes:
//! the CloudEvents attributes arrive as plain headers and the payload is the proto3
//! canonical JSON of the message (camelCase names, enum names, 64-bit integers as
//! strings, RFC 3339 timestamps).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use switchboard_bus::{Bus, NatsConfig, event_types};
use switchboard_proto::ami::v1::{CallDirection, CallEvent, CallState};
use switchboard_test_support::NatsServer;

#[tokio::test]
async fn python_subscriber_sees_cloudevents_headers_and_canonical_json() {
    let nats = NatsServer::start().expect("nats-server");
    let bus = Bus::connect(
        &NatsConfig {
            url: nats.url(),
            ..Default::default()
        },
        "foreign-test",
    )
    .await
    .expect("connect");
    bus.provision_streams().await.expect("streams");
    let subject = bus.subjects().ami_call("pbx.one", "ringing");

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/subscribe_once.py");
    let mut python = Command::new("python3")
        .arg(&script)
        .arg(nats.url())
        .arg(&subject)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 (scripts/install-deps.sh installs nats-py)");
    let mut lines = BufReader::new(python.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("a line").expect("read");
    assert_eq!(
        ready, "ready",
        "the Python subscriber did not start (is nats-py installed?)"
    );

    let call = CallEvent {
        pbx: "pbx.one".into(),
        call_id: "1700000000.1".into(),
        state: CallState::Ringing as i32,
        direction: CallDirection::Inbound as i32,
        extension: "101".into(),
        duration_ms: 12_345,
        ..Default::default()
    };
    let event = bus.event(event_types::AMI_CALL, &call).expect("event");
    let id = event.id.clone();
    bus.publish(subject.clone(), &event).await.expect("publish");

    let line = tokio::task::spawn_blocking(move || lines.next().expect("a message line").expect("read"))
        .await
        .expect("join");
    let _ = python.wait();
    let seen: serde_json::Value = serde_json::from_str(&line).expect("python printed JSON");

    assert_eq!(seen["subject"], subject.as_str());
    assert_eq!(
        subject, "sb.evt.ami.pbx_2Eone.call.ringing",
        "ids are escaped in subjects"
    );
    let headers = &seen["headers"];
    assert_eq!(headers["ce-specversion"], "1.0");
    assert_eq!(headers["ce-id"], id.as_str());
    assert_eq!(headers["Nats-Msg-Id"], id.as_str(), "JetStream dedup id equals ce-id");
    assert_eq!(headers["ce-type"], event_types::AMI_CALL);
    assert_eq!(headers["ce-source"], "/switchboard/foreign-test");
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        headers["ce-time"].as_str().is_some_and(|t| t.contains('T')),
        "ce-time is RFC 3339: {headers}"
    );

    let data = &seen["data"];
    assert_eq!(data["callId"], "1700000000.1", "proto3 JSON uses lowerCamelCase names");
    assert_eq!(data["state"], "CALL_STATE_RINGING", "enums travel as their names");
    assert_eq!(data["direction"], "CALL_DIRECTION_INBOUND");
    assert_eq!(data["durationMs"], "12345", "64-bit integers travel as strings");
    assert_eq!(data["extension"], "101");
}
