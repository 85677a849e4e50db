//! `--enable-tracing`: spans of the real reconcilers reach a local OTLP/gRPC collector with
//! resource `service.name=agent-sandbox-controller`; a reconcile's parent is taken from the
//! `opentelemetry.io/trace-context` annotation, and an object without one gets its first
//! reconcile's context persisted there.

use std::time::{Duration, Instant};

use agent_sandbox_api::v1beta1::{Sandbox, SandboxClaim, SandboxTemplate, SandboxWarmPool};
use agent_sandbox_apiserver::{ApiServer, Config as ServerConfig};
use agent_sandbox_controller::Config;
use agent_sandbox_controller::otel::{Tracing, TracingConfig, context_from_annotation};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A local OTLP/gRPC collector; returns its endpoint and what it receives.
async fn collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), rx)
}

/// Every span received so far, with its resource's service.name.
fn drain(
    rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    into: &mut Vec<(String, Span)>,
) {
    while let Ok(req) = rx.try_recv() {
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    into.push((service.clone(), s));
                }
            }
        }
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

#[tokio::test]
async fn reconcile_spans_reach_a_local_otlp_collector() {
    let (endpoint, mut rx) = collector().await;
    let tracing = Tracing::init(&TracingConfig {
        endpoint: Some(endpoint),
    })
    .await
    .expect("tracing set up");
    let subscriber = tracing_subscriber::registry().with(tracing.layer());
    // The test's runtime is single-threaded: every task below runs under this subscriber.
    let _guard = ::tracing::subscriber::set_default(subscriber);

    // The real controllers over the embedded API server, with tracing on.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.tcp_addr = None;
    cfg.socket_path = None;
    cfg.node_name = "test-node".into();
    let server = ApiServer::start(cfg).await.unwrap();
    let client = server.client();
    let config = Config {
        tracing: true,
        ..Config::default()
    };
    let (_state, fut) = agent_sandbox_controller::start(client.clone(), config);
    let controllers = tokio::spawn(fut);
    let sandboxes = Api::<Sandbox>::namespaced(client.clone(), "default");
    let sandbox = |name: &str, annotations: serde_json::Value| -> Sandbox {
        serde_json::from_value(json!({
            "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap()
    };
    // One Sandbox carries a trace (as a claim's Sandbox does), one starts its own.
    let parent = json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"});
    for s in [
        sandbox(
            "annotated",
            json!({"opentelemetry.io/trace-context": parent.to_string()}),
        ),
        sandbox("traced", json!({})),
    ] {
        sandboxes.create(&PostParams::default(), &s).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    while pods.get_opt("traced").await.unwrap().is_none()
        || pods.get_opt("annotated").await.unwrap().is_none()
    {
        assert!(start.elapsed() < Duration::from_secs(20), "no Pods");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The Sandbox without a trace gets its first reconcile's context persisted.
    let traced = sandboxes.get("traced").await.unwrap();
    let written = traced
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("opentelemetry.io/trace-context"))
        .cloned()
        .expect("the trace context is persisted on the Sandbox");
    let traceparent: serde_json::Value = serde_json::from_str(&written).unwrap();
    let traceparent = traceparent["traceparent"].as_str().unwrap().to_owned();
    let written_trace = traceparent.split('-').nth(1).unwrap().to_owned();
    assert!(
        context_from_annotation(&traced.metadata)
            .span()
            .span_context()
            .is_valid(),
        "{written}"
    );

    // A claim persists its trace beside the first-observed time, and the Sandbox it creates
    // carries the same trace.
    let ext = |kind: &str, name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": kind,
               "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    };
    let tpl: SandboxTemplate = serde_json::from_value(ext(
        "SandboxTemplate",
        "tpl",
        json!({"podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}),
    ))
    .unwrap();
    let pool: SandboxWarmPool = serde_json::from_value(ext(
        "SandboxWarmPool",
        "pool",
        json!({"replicas": 0, "sandboxTemplateRef": {"name": "tpl"}}),
    ))
    .unwrap();
    let claim: SandboxClaim = serde_json::from_value(ext(
        "SandboxClaim",
        "claimed",
        json!({"warmPoolRef": {"name": "pool"}}),
    ))
    .unwrap();
    let pp = PostParams::default();
    Api::<SandboxTemplate>::namespaced(client.clone(), "default")
        .create(&pp, &tpl)
        .await
        .unwrap();
    Api::<SandboxWarmPool>::namespaced(client.clone(), "default")
        .create(&pp, &pool)
        .await
        .unwrap();
    let claims = Api::<SandboxClaim>::namespaced(client.clone(), "default");
    claims.create(&pp, &claim).await.unwrap();
    let trace_of = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.annotations
            .as_ref()?
            .get("opentelemetry.io/trace-context")
            .cloned()
    };
    let start = Instant::now();
    let (claim_trace, sandbox_trace) = loop {
        let c = claims.get("claimed").await.unwrap();
        let s = sandboxes.get_opt("claimed").await.unwrap();
        if let (Some(ct), Some(st)) = (
            trace_of(&c.metadata),
            s.as_ref().and_then(|s| trace_of(&s.metadata)),
        ) {
            assert!(
                c.metadata
                    .annotations
                    .as_ref()
                    .unwrap()
                    .contains_key("agents.x-k8s.io/controller-first-observed-at")
            );
            break (ct, st);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "claim {:?}, sandbox {:?}",
            c.metadata.annotations,
            s.map(|s| s.metadata.annotations)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(claim_trace, sandbox_trace);

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut spans = Vec::new();
    let start = Instant::now();
    loop {
        tracing.flush().await;
        drain(&mut rx, &mut spans);
        let reconcile_of = |name: &str| {
            spans
                .iter()
                .find(|(_, s)| {
                    s.name == "ReconcileSandbox" && attr(s, "sandbox.name").as_deref() == Some(name)
                })
                .cloned()
        };
        let claim_span = spans
            .iter()
            .find(|(_, s)| {
                s.name == "ReconcileSandboxClaim"
                    && attr(s, "claim.name").as_deref() == Some("claimed")
            })
            .cloned();
        if let (Some((svc_a, a)), Some((svc_t, t)), Some((_, c))) = (
            reconcile_of("annotated"),
            reconcile_of("traced"),
            claim_span,
        ) {
            assert!(claim_trace.contains(&hex(&c.trace_id)), "{claim_trace}");
            assert_eq!(svc_a, "agent-sandbox-controller");
            assert_eq!(svc_t, "agent-sandbox-controller");
            // The annotation is the parent of the reconcile span.
            assert_eq!(hex(&a.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(hex(&a.parent_span_id), "00f067aa0ba902b7");
            // The persisted annotation names the trace of the first reconcile.
            assert_eq!(hex(&t.trace_id), written_trace);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "spans received: {:?}",
            spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    controllers.abort();
    tracing.shutdown().await;
    server.shutdown().await;
}
