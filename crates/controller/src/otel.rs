//! OpenTelemetry tracing for `--enable-tracing` (upstream-core §11.3): an OTLP/gRPC exporter
//! configured by the standard `OTEL_EXPORTER_OTLP_*` variables, a batch span processor, resource
//! `service.name=agent-sandbox-controller`, W3C TraceContext as the only propagator, a
//! `tracing` layer that turns the reconcilers' spans into OpenTelemetry spans, and the
//! `opentelemetry.io/trace-context` annotation carrier (a JSON map) read and written on objects.

use std::collections::HashMap;
use std::time::Duration;

use agent_sandbox_api::constants::annotations;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetryLayer;

/// `service.name` of the exported spans.
pub const SERVICE_NAME: &str = "agent-sandbox-controller";
/// Name of the tracer.
pub const TRACER_NAME: &str = "agent-sandbox-controller";
/// Upstream fails start-up when the exporter is not set up within this time.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures setting up tracing.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The OTLP exporter could not be built.
    #[error(
        "setting up the OTLP/gRPC trace exporter: {0}; check OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), e.g. http://otel-collector:4317"
    )]
    Exporter(String),
    /// Setting up took longer than [`INIT_TIMEOUT`].
    #[error("setting up tracing took longer than {0:?}; check the OTLP endpoint")]
    Timeout(Duration),
}

/// Where spans go; `endpoint: None` leaves it to the `OTEL_EXPORTER_OTLP_*` variables (default
/// `http://localhost:4317`).
#[derive(Clone, Debug, Default)]
pub struct TracingConfig {
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: Option<String>,
}

/// The tracer provider; spans are exported in batches until [`Tracing::shutdown`].
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter (inside the current tokio runtime) and the provider, and installs the
    /// W3C TraceContext propagator globally.
    pub async fn init(config: &TracingConfig) -> Result<Self, TracingError> {
        let build = async {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = &config.endpoint {
                builder = builder.with_endpoint(e.clone());
            }
            builder
                .build()
                .map_err(|e| TracingError::Exporter(e.to_string()))
        };
        let exporter = tokio::time::timeout(INIT_TIMEOUT, build)
            .await
            .map_err(|_| TracingError::Timeout(INIT_TIMEOUT))??;
        let provider = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
            .with_batch_exporter(exporter)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Self { provider })
    }

    /// The tracer named [`TRACER_NAME`].
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer(TRACER_NAME)
    }

    /// A `tracing` layer exporting every span through this provider.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer())
    }

    /// Exports what is buffered and stops. Blocking work runs off the async threads, so this is
    /// safe on any runtime.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let r = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "flushing the trace exporter failed");
        }
    }

    /// Exports what is buffered now.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let r = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "flushing the trace exporter failed");
        }
    }
}

/// The parent context stored in an object's `opentelemetry.io/trace-context` annotation (a JSON
/// map of W3C headers such as `traceparent`); an empty context when absent or unreadable.
pub fn context_from_annotation(meta: &ObjectMeta) -> Context {
    let Some(text) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::TRACE_CONTEXT))
    else {
        return Context::new();
    };
    let carrier: HashMap<String, String> = serde_json::from_str(text).unwrap_or_default();
    TraceContextPropagator::new().extract(&carrier)
}

/// The annotation value carrying `cx` (`{"traceparent": "00-…"}`); `None` when `cx` has no
/// valid span.
pub fn annotation_for(cx: &Context) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    if carrier.is_empty() {
        return None;
    }
    // An empty `tracestate` is left out, as Go's propagator does.
    let ordered: std::collections::BTreeMap<_, _> =
        carrier.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    serde_json::to_string(&ordered).ok()
}

/// Starts a reconcile span as a child of the trace in `meta`'s `opentelemetry.io/trace-context`
/// annotation (upstream-core §11.3). Returns the annotation value to persist when `persist` is set
/// (tracing is enabled) and the object has none yet: the new span's own context. Without the
/// OpenTelemetry layer the span has no context and nothing is returned.
pub fn link_span(span: &tracing::Span, meta: &ObjectMeta, persist: bool) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let present = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::TRACE_CONTEXT))
        .is_some_and(|v| !v.is_empty());
    if present {
        // Fails only without the layer, or for a filtered span: then there is nothing to link.
        let _ = span.set_parent(context_from_annotation(meta));
        return None;
    }
    if !persist {
        return None;
    }
    annotation_for(&span.context())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};

    #[test]
    fn annotation_round_trips_a_span_context() {
        let sc = SpanContext::new(
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc.clone());
        let text = annotation_for(&cx).unwrap();
        assert_eq!(
            text,
            r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#
        );
        let meta = ObjectMeta {
            annotations: Some([(annotations::TRACE_CONTEXT.to_owned(), text)].into()),
            ..ObjectMeta::default()
        };
        let back = context_from_annotation(&meta);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
        assert!(annotation_for(&Context::new()).is_none());
        assert!(
            !context_from_annotation(&ObjectMeta::default())
                .span()
                .span_context()
                .is_valid()
        );
    }
}
