//! Router metrics in the Prometheus text format, with upstream's names and no per-sandbox labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `sandbox_router_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub code: u16,
}

/// Labels of `sandbox_router_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `connect`, `timeout`, `unresolved`, `protocol` or `paused`.
    pub reason: &'static str,
}

/// Labels of the idle metrics: `action` is `pause` or `suspend` for
/// `agent_sandbox_idle_actions_total`, and what the sandbox was woken from (`paused` or
/// `suspended`) for `agent_sandbox_resume_latency_ms`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdleLabels {
    /// The action, or the state woken from.
    pub action: &'static str,
}

/// A histogram constructor for a [`Family`].
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn resume_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ])
}

/// The router's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by method and status code.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request to response headers.
    pub duration: Histogram,
    /// Requests in flight.
    pub inflight: Gauge,
    /// Failures reaching the sandbox.
    pub upstream_errors: Family<ErrorLabels, Counter>,
    /// Retried connection attempts.
    pub upstream_retries: Counter,
    /// Idle sandboxes paused or suspended.
    pub idle_actions: Family<IdleLabels, Counter>,
    /// Time from a request reaching an idle-stopped sandbox to the sandbox serving again, in
    /// milliseconds (the name proposed upstream for resume latency).
    pub resume_latency_ms: HistogramFamily<IdleLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let inflight = Gauge::default();
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        let upstream_retries = Counter::default();
        let idle_actions = Family::<IdleLabels, Counter>::default();
        let resume_latency_ms: HistogramFamily<IdleLabels> =
            Family::new_with_constructor(resume_histogram);
        registry.register(
            "sandbox_router_requests",
            "Requests handled by the router",
            requests.clone(),
        );
        registry.register(
            "sandbox_router_request_duration_seconds",
            "Time until the sandbox's response headers",
            duration.clone(),
        );
        registry.register(
            "sandbox_router_inflight_requests",
            "Requests in flight",
            inflight.clone(),
        );
        registry.register(
            "sandbox_router_upstream_errors",
            "Requests that could not reach the sandbox",
            upstream_errors.clone(),
        );
        registry.register(
            "sandbox_router_upstream_retries",
            "Connection attempts retried",
            upstream_retries.clone(),
        );
        registry.register(
            "agent_sandbox_idle_actions",
            "Idle sandboxes paused or suspended by the router",
            idle_actions.clone(),
        );
        registry.register(
            "agent_sandbox_resume_latency_ms",
            "Time from a request reaching an idle-stopped sandbox until it serves again, in milliseconds",
            resume_latency_ms.clone(),
        );
        Self {
            registry,
            idle_actions,
            resume_latency_ms,
            requests,
            duration,
            inflight,
            upstream_errors,
            upstream_retries,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
