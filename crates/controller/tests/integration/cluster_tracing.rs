//! `--enable-tracing`: spans of the real reconcilers reach a local OTLP/gRPC collector with
//! resource `service.name=agent-sandbox-controller`, and a parent taken from the
//! `opentelemetry.io/trace-context` annotation carries its trace over.

use std::time::{Duration, Instant};

use agent_sandbox_api::v1beta1::Sandbox;
use agent_sandbox_apiserver::{ApiServer, Config as ServerConfig};
use agent_sandbox_controller::Config;
use agent_sandbox_controller::otel::{
    Tracing, TracingConfig, annotation_for, context_from_annotation,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
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
use tracing_opentelemetry::OpenTelemetrySpanExt;
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

    // A span whose parent comes from an object's trace-context annotation.
    let meta = ObjectMeta {
        annotations: Some(
            [(
                "opentelemetry.io/trace-context".to_owned(),
                json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
                    .to_string(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    };
    {
        let span = ::tracing::info_span!("ReconcileSandbox", sandbox.name = "annotated");
        span.set_parent(context_from_annotation(&meta)).unwrap();
        let _e = span.enter();
        // What would be written back onto a Sandbox the claim creates: the same trace.
        let written = annotation_for(&span.context()).unwrap();
        assert!(
            written.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{written}"
        );
    }

    // The real controllers over the embedded API server: a Sandbox reconcile is a span.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.tcp_addr = None;
    cfg.socket_path = None;
    cfg.node_name = "test-node".into();
    let server = ApiServer::start(cfg).await.unwrap();
    let client = server.client();
    let (_state, fut) = agent_sandbox_controller::start(client.clone(), Config::default());
    let controllers = tokio::spawn(fut);
    let sb: Sandbox = serde_json::from_value(json!({
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
        "metadata": {"name": "traced", "namespace": "default"},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    Api::<Sandbox>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &sb)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    while pods.get_opt("traced").await.unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "no Pod");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut spans = Vec::new();
    let start = Instant::now();
    loop {
        tracing.flush().await;
        drain(&mut rx, &mut spans);
        let annotated = spans.iter().find(|(_, s)| s.name == "ReconcileSandbox");
        let reconciled = spans
            .iter()
            .find(|(_, s)| attr(s, "sandbox.name").as_deref() == Some("traced"));
        if let (Some((svc_a, a)), Some((svc_r, _))) = (annotated, reconciled) {
            assert_eq!(svc_a, "agent-sandbox-controller");
            assert_eq!(svc_r, "agent-sandbox-controller");
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            assert_eq!(hex(&a.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(hex(&a.parent_span_id), "00f067aa0ba902b7");
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
