//! One trace across services: flow F1 with ami-bridge, hook-runner and ws-push
//! running as separate processes (each its own OpenTelemetry `service.name`), all
//! exporting to an OTLP/gRPC receiver in this test through
//! `OTEL_EXPORTER_OTLP_ENDPOINT`. The call event's span in ami-bridge, the rule's run
//! in hook-runner and the delivery in ws-push must land in one trace, linked parent
//! to child: the trace context rides in the NATS headers (`traceparent`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value;
use serde_json::json;
use switchboard_flows::{
    JWT_SECRET, PATIENCE, ServiceProcess, ami_bridge_toml, browser_token, bus, example_rule, next_push, open_browser,
    originate, start_sim, wait_for_rule_consumers,
};
use switchboard_proto::ami::v1 as ami;
use switchboard_test_support::{NatsServer, free_port, wait_for_port};
use tokio_util::sync::CancellationToken;

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct SeenSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// An OTLP trace receiver keeping every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                seen.push(SeenSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        self.spans.lock().expect("spans").extend(seen);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The environment of a service exporting its spans to the receiver at `otlp`.
fn otlp_env(otlp: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        // Export each batch within 100 ms rather than the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_makes_one_trace_across_ami_bridge_hook_runner_and_ws_push() {
    let nats = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let work = tempfile::tempdir().expect("temp dir");

    // The OTLP receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The PBX, in this process; the three services as processes.
    let sim = start_sim(&shutdown).await;
    let ami_config = ami_bridge_toml(sim.addr());
    let mut env = otlp_env(otlp);
    env.push(("SB_NATS__URL", nats.url()));
    let _ami_bridge = ServiceProcess::start("ami-bridge", &ami_config, &env, work.path());
    let rules = work.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    std::fs::copy(example_rule("f1-screen-pop.yaml"), rules.join("f1-screen-pop.yaml")).expect("copy the rule");
    let rules_config = format!("[rules]\ndir = \"{}\"\n", rules.display());
    let _hook_runner = ServiceProcess::start("hook-runner", &rules_config, &env, work.path());
    let push_port = free_port();
    env.push(("SB_AUTH__JWT_SECRET", JWT_SECRET.to_owned()));
    env.push(("SB_HTTP__LISTEN", format!("127.0.0.1:{push_port}")));
    let _ws_push = ServiceProcess::start("ws-push", "", &env, work.path());
    let push_http = SocketAddr::from(([127, 0, 0, 1], push_port));
    assert!(wait_for_port(push_http, PATIENCE), "ws-push listens");

    wait_for_rule_consumers(&nats, &["screen-pop"]).await;
    let observer = bus(&nats).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (mut socket, _) = open_browser(push_http, &browser_token("101", json!({}))).await;

    // A call rings 101 (retried until ami-bridge holds its PBX session).
    loop {
        match observer
            .request::<_, ami::ActionResponse>(
                "sb.cmd.ami.pbx1.action",
                &originate("101"),
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(reply) => {
                assert_eq!(reply.response, "Success");
                break;
            }
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "ami-bridge never took the Originate: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let pop = next_push(&mut socket, "call.ringing").await;
    assert_eq!(pop["push"]["data"]["number"], "5551234", "{pop}");

    // One trace holds a span of each service, each a child of the one before.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let chain = loop {
        let spans = receiver.spans.lock().expect("spans").clone();
        let by_id: HashMap<&[u8], &SeenSpan> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
        let found = spans
            .iter()
            .filter(|s| s.service == "ws-push" && s.name == "ws_push.deliver")
            .find_map(|deliver| {
                let rule = by_id.get(deliver.parent_span_id.as_slice())?;
                let call = by_id.get(rule.parent_span_id.as_slice())?;
                Some([(*call).clone(), (*rule).clone(), deliver.clone()])
            });
        if let Some(chain) = found {
            break chain;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no trace links ws-push's delivery to hook-runner and ami-bridge; spans seen: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let [call, rule, deliver] = chain;
    assert_eq!((call.service.as_str(), call.name.as_str()), ("ami-bridge", "ami.call"));
    assert_eq!(
        (rule.service.as_str(), rule.name.as_str()),
        ("hook-runner", "hook.rule")
    );
    assert_eq!(call.trace_id, rule.trace_id);
    assert_eq!(rule.trace_id, deliver.trace_id);
    assert_eq!(call.trace_id.len(), 16, "a W3C trace id");
    shutdown.cancel();
}
