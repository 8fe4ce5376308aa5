//! The bus against a real nats-server with JetStream.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use switchboard_bus::{
    Bus, BusError, CloudEvent, CommandError, Lease, LeaseState, NatsConfig, error_body, event_types,
};
use switchboard_proto::common::v1::ErrorCode;
use switchboard_proto::push::v1::{PresenceReply, PresenceRequest, UserPresence};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

async fn bus(server: &NatsServer, service: &str) -> Bus {
    let config = NatsConfig {
        url: server.url(),
        ..Default::default()
    };
    let bus = Bus::connect(&config, service).await.unwrap();
    bus.provision_streams().await.unwrap();
    bus
}

#[tokio::test]
async fn events_reach_jetstream_with_cloudevents_headers_and_dedup() {
    let server = NatsServer::start().unwrap();
    let bus = bus(&server, "ami-bridge").await;
    let subject = bus.subjects().ami_raw("pbx 1", "Newchannel");
    let event = bus
        .event(event_types::AMI_RAW, &serde_json::json!({"event": "Newchannel"}))
        .unwrap()
        .with_subject("PJSIP/101");
    let first = bus.publish(subject.clone(), &event).await.unwrap();
    let again = bus.publish(subject.clone(), &event).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "same ce-id must be dropped by JetStream dedup");
    assert_eq!(first.stream, "SB_EVENTS");

    let stream = bus.jetstream().get_stream("SB_EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let message = messages.next().await.unwrap().unwrap();
    assert_eq!(message.subject.as_str(), "sb.evt.ami.pbx_201.raw.Newchannel");
    let headers = message.headers.as_ref().unwrap();
    assert_eq!(headers.get("ce-type").unwrap().as_str(), "switchboard.ami.raw.v1");
    assert_eq!(headers.get("ce-source").unwrap().as_str(), "/switchboard/ami-bridge");
    assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), event.id);
    let decoded = CloudEvent::from_message(message.headers.as_ref(), message.payload.clone()).unwrap();
    assert_eq!(decoded.id, event.id);
    assert_eq!(decoded.subject.as_deref(), Some("PJSIP/101"));
    assert_eq!(decoded.data_as::<serde_json::Value>().unwrap()["event"], "Newchannel");
    message.ack().await.unwrap();
    assert!(messages.next().await.is_none(), "the duplicate must not be stored");
}

#[tokio::test]
async fn commands_answer_typed_and_errors_are_typed() {
    let server = NatsServer::start().unwrap();
    let bus = bus(&server, "ws-push").await;
    let shutdown = CancellationToken::new();
    let subject = bus.subjects().push_presence_query();
    let handle = bus
        .serve(
            subject.clone(),
            "ws-push".into(),
            shutdown.clone(),
            |command: switchboard_bus::Command<PresenceRequest>| async move {
                if command.body.users.iter().any(|u| u.is_empty()) {
                    return Err(error_body(ErrorCode::InvalidArgument, "empty user id"));
                }
                Ok(PresenceReply {
                    users: command
                        .body
                        .users
                        .into_iter()
                        .map(|user| UserPresence {
                            online: user == "alice",
                            connections: u32::from(user == "alice"),
                            user,
                            admin: false,
                        })
                        .collect(),
                })
            },
        )
        .await
        .unwrap();

    let reply: PresenceReply = bus
        .request(
            &subject,
            &PresenceRequest {
                users: vec!["alice".into(), "bob".into()],
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.users.len(), 2);
    assert!(reply.users[0].online);
    assert!(!reply.users[1].online);

    let refused = bus
        .request::<_, PresenceReply>(
            &subject,
            &PresenceRequest {
                users: vec![String::new()],
            },
            None,
        )
        .await
        .unwrap_err();
    match refused {
        CommandError::Rejected { error, .. } => {
            assert_eq!(error.code(), ErrorCode::InvalidArgument);
            assert_eq!(error.message, "empty user id");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    let malformed = bus
        .request::<_, PresenceReply>(&subject, &serde_json::json!({"users": 5}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&malformed, CommandError::Rejected { error, .. } if error.code() == ErrorCode::InvalidArgument),
        "{malformed:?}"
    );

    let nobody = bus
        .request::<_, PresenceReply>(
            "sb.cmd.nobody.here",
            &PresenceRequest::default(),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(nobody, CommandError::NoResponders { .. }), "{nobody:?}");

    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn provisioning_is_idempotent_and_refuses_incompatible_streams() {
    let server = NatsServer::start().unwrap();
    let first = bus(&server, "a").await;
    let second = bus(&server, "b").await;
    second.provision_streams().await.unwrap();
    let info = first
        .jetstream()
        .get_stream("SB_PUSH")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.subjects, vec!["sb.push.>".to_owned()]);
    assert_eq!(info.max_age, Duration::from_secs(300));

    // Someone else owns a stream called like ours with other subjects.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "OTHER_EVENTS".into(),
        subjects: vec!["other.something".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let config = NatsConfig {
        url: server.url(),
        prefix: "other".into(),
        ..Default::default()
    };
    let bus = Bus::connect(&config, "c").await.unwrap();
    let error = bus.provision_streams().await.unwrap_err();
    assert!(
        matches!(error, BusError::IncompatibleStream { ref field, .. } if field == "subjects"),
        "{error}"
    );
    assert!(error.to_string().contains("OTHER_EVENTS"), "{error}");
}

#[tokio::test]
async fn unreachable_nats_is_one_clear_error() {
    let port = switchboard_test_support::free_port();
    let config = NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let error = Bus::connect(&config, "x").await.unwrap_err();
    assert!(matches!(error, BusError::Connect { .. }));
    assert!(error.to_string().contains(&format!("127.0.0.1:{port}")), "{error}");
}

#[tokio::test]
async fn a_standby_takes_the_lease_when_the_holder_stops() {
    let server = NatsServer::start().unwrap();
    let bus = bus(&server, "ami-bridge").await;
    let ttl = Duration::from_secs(1);
    let bucket = bus.bucket("LEASES", ttl, 1).await.unwrap();
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = Lease::spawn(
        bucket.clone(),
        "ami.pbx1".into(),
        "replica-a".into(),
        ttl,
        stop_a.clone(),
    );
    let mut watch_a = a.watch();
    tokio::time::timeout(Duration::from_secs(5), watch_a.wait_for(|s| *s == LeaseState::Held))
        .await
        .unwrap()
        .unwrap();
    let b = Lease::spawn(
        bucket.clone(),
        "ami.pbx1".into(),
        "replica-b".into(),
        ttl,
        stop_b.clone(),
    );
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(a.state(), LeaseState::Held, "the holder keeps renewing");
    assert_eq!(b.state(), LeaseState::Standby, "only one holder at a time");

    let mut watch_b = b.watch();
    stop_a.cancel();
    a.stopped().await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), watch_b.wait_for(|s| *s == LeaseState::Held))
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    stop_b.cancel();
    b.stopped().await;
}

#[tokio::test]
async fn the_bus_reconnects_by_itself_and_acknowledged_events_survive_a_nats_restart() {
    let mut server = NatsServer::start().unwrap();
    let bus = bus(&server, "restart-test").await;
    let subject = bus.subjects().ami_raw("pbx1", "Newchannel");
    for n in 0..50u32 {
        let event = bus.event(event_types::AMI_RAW, &serde_json::json!({ "n": n })).unwrap();
        bus.publish(subject.clone(), &event).await.unwrap();
    }

    server.restart().unwrap();
    let back = std::time::Instant::now();
    // `publish` retries the same message (same `Nats-Msg-Id`) until the client has
    // reconnected by itself; JetStream stores it once.
    let event = bus
        .event(event_types::AMI_RAW, &serde_json::json!({ "n": 50 }))
        .unwrap();
    bus.publish(subject.clone(), &event)
        .await
        .expect("publish after the restart");
    eprintln!("acknowledged publish {:?} after nats-server was back", back.elapsed());

    let js = jetstream::new(bus.client().clone());
    let mut stream = js.get_stream("SB_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.state.messages, 51,
        "every acknowledged event is still stored after the restart"
    );
    let consumer = stream
        .create_consumer(consumer::pull::Config { ..Default::default() })
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(51).messages().await.unwrap();
    let mut seen = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let event = CloudEvent::from_message(message.headers.as_ref(), message.payload.clone()).unwrap();
        seen.push(event.data_as::<serde_json::Value>().unwrap()["n"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        (0..=50).collect::<Vec<u64>>(),
        "in order, none lost, none doubled"
    );
}
