//! One active session per PBX across replicas: two instances, the holder dies,
//! the standby takes over.

use std::time::{Duration, Instant};

use ami_bridge::sim::{SimConfig, SimHandle};
use ami_bridge::{AmiSettings, App, Config, PbxConfig};
use futures::StreamExt;
use switchboard_bus::{CloudEvent, NatsConfig, Secret};
use switchboard_proto::ami::v1 as pb;
use switchboard_proto::common::v1::LinkState;
use switchboard_runtime::{GrpcConfig, HttpConfig};
use switchboard_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(30);

fn config(nats: &str, sim_port: u16) -> Config {
    Config {
        nats: NatsConfig {
            url: nats.to_owned(),
            ..NatsConfig::default()
        },
        http: HttpConfig::on_port(0),
        grpc: GrpcConfig::on_port(0),
        ami: AmiSettings {
            lease: true,
            lease_ttl: Duration::from_secs(3),
            ..AmiSettings::default()
        },
        pbx: vec![PbxConfig {
            id: "pbx1".into(),
            port: sim_port,
            username: "sb".into(),
            secret: Secret::new("sbsecret"),
            ..PbxConfig::default()
        }],
        ..Config::default()
    }
}

async fn next_link(links: &mut async_nats::Subscriber) -> pb::LinkEvent {
    let msg = tokio::time::timeout(GUARD, links.next())
        .await
        .expect("a link event")
        .expect("open");
    let ce = CloudEvent::from_message(msg.headers.as_ref(), msg.payload).expect("ce");
    ce.data_as::<pb::LinkEvent>().expect("link")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_holder_dies() {
    let nats = NatsServer::start().expect("nats-server");
    let sim = SimHandle::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig::default(),
        CancellationToken::new(),
    )
    .await
    .expect("sim");
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let mut links = client.subscribe("sb.evt.ami.pbx1.link.*").await.expect("subscribe");

    // Replica A in its own runtime, so it can die without any cleanup.
    let (a_ready, a_ready_rx) = std::sync::mpsc::channel();
    let a_config = config(&nats.url(), sim.addr().port());
    let a_runtime = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let app = App::build(a_config, CancellationToken::new()).await.expect("app A");
            tokio::spawn(app.run());
        });
        let _ = a_ready.send(());
        rt
    });
    a_ready_rx.recv_timeout(GUARD).expect("A starts");
    let a_up = next_link(&mut links).await;
    assert_eq!(a_up.state, LinkState::Up as i32);

    // Replica B starts and stays on standby.
    let b_shutdown = CancellationToken::new();
    let b = App::build(config(&nats.url(), sim.addr().port()), b_shutdown.clone())
        .await
        .expect("app B");
    let b_sessions = b.sessions();
    let b_task = tokio::spawn(b.run());
    let b_status = || b_sessions.get("pbx1").expect("pbx1").status();
    for _ in 0..200 {
        if b_status().state == LinkState::Standby as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b_status().state,
        LinkState::Standby as i32,
        "B waits while A holds the lease"
    );
    // An action sent to the standby is refused at once, not left to time out.
    let refused = b_sessions
        .get("pbx1")
        .expect("pbx1")
        .action(pb::ActionRequest {
            action: "Ping".into(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(refused, Err(ami_bridge::session::ActionError::NotConnected(_))),
        "{refused:?}"
    );

    // Kill A: its runtime stops mid-flight; it never releases the lease.
    let killed_at = Instant::now();
    let rt = a_runtime.join().expect("A thread");
    rt.shutdown_background();

    // A's session drops without a word; B's link comes up.
    let b_up = loop {
        let link = next_link(&mut links).await;
        if link.state == LinkState::Up as i32 {
            break link;
        }
    };
    let takeover = killed_at.elapsed();
    println!("standby took over in {takeover:?}");
    assert_ne!(b_up.session_id, a_up.session_id);
    assert!(takeover <= Duration::from_secs(5), "takeover took {takeover:?}");
    assert_eq!(b_status().state, LinkState::Up as i32);

    b_shutdown.cancel();
    let _ = tokio::time::timeout(GUARD, b_task).await;
}
