//! Prometheus metrics with upstream's names, labels and buckets (upstream-core §11.1), plus
//! controller-runtime-style reconcile and work-queue metrics, rendered in the text exposition
//! format.

use std::sync::Arc;
use std::time::Duration;

use agent_sandbox_api::conditions::is_status_condition_true;
use agent_sandbox_api::constants::{
    CORE_GROUP, EXTENSIONS_GROUP, annotations, condition_types, labels, launch_type, reasons,
};
use agent_sandbox_api::v1beta1::Sandbox;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::meta::{annotation, controller_of, label, normalize_created_by, ref_is};

/// Buckets (ms) of the claim start-up histograms.
pub const CLAIM_STARTUP_BUCKETS_MS: [f64; 15] = [
    100.0, 250.0, 500.0, 750.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 120000.0, 240000.0,
];
/// Buckets (ms) of `agent_sandbox_creation_latency_ms`.
pub const CREATION_BUCKETS_MS: [f64; 14] = [
    50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 120000.0,
    240000.0, 300000.0, 600000.0,
];
/// client-go's work-queue latency buckets: 10 ns to 1000 s, ×10 apart.
const WORKQUEUE_BUCKETS_S: [f64; 12] = [
    1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0,
];
const RECONCILE_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Labels of the claim start-up histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartupLabels {
    /// `warm`, `cold` or `unknown`.
    pub launch_type: String,
    /// Template name, or `__unknown__`.
    pub sandbox_template: String,
}

/// Labels of `agent_sandbox_creation_latency_ms`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CreationLabels {
    /// Claim namespace.
    pub namespace: String,
    /// `warm`, `cold` or `unknown`.
    pub launch_type: String,
    /// Template name, or `__unknown__`.
    pub sandbox_template: String,
}

/// Labels of `agent_sandbox_claim_creation_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimCreationLabels {
    /// Claim namespace.
    pub namespace: String,
    /// Template name.
    pub sandbox_template: String,
    /// `warm` or `cold`.
    pub launch_type: String,
    /// Pool name, or `none`.
    pub warmpool_name: String,
    /// `ready` or `not_ready`.
    pub pod_condition: String,
    /// Normalised `created-by`.
    pub created_by: String,
}

/// Labels of the `agent_sandboxes` gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SandboxGaugeLabels {
    /// Namespace.
    pub namespace: String,
    /// `true` or `false`.
    pub ready_condition: String,
    /// `true` when Ready.reason is SandboxExpired.
    pub expired: String,
    /// `warm` or `cold`.
    pub launch_type: String,
    /// Template annotation, or `unknown`.
    pub sandbox_template: String,
    /// `SandboxClaim`, `SandboxWarmPool` or `None`.
    pub owned_by: String,
    /// Normalised `created-by`, or `unknown`.
    pub created_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

/// client-go's work-queue labels: both are the controller's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    name: String,
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    git_version: String,
    git_commit: String,
    build_date: String,
    go_version: String,
    compiler: String,
    platform: String,
}

fn startup_histogram() -> Histogram {
    Histogram::new(CLAIM_STARTUP_BUCKETS_MS)
}
fn creation_histogram() -> Histogram {
    Histogram::new(CREATION_BUCKETS_MS)
}
fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS_S)
}
fn workqueue_histogram() -> Histogram {
    Histogram::new(WORKQUEUE_BUCKETS_S)
}

/// One controller's `workqueue_*` metrics, as its work queue reports them (see
/// [`crate::runner`]). The default is a set registered nowhere, for tests.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    /// `workqueue_depth`.
    pub depth: Gauge,
    /// `workqueue_adds_total`.
    pub adds: Counter,
    /// `workqueue_queue_duration_seconds`.
    pub queue_duration: Histogram,
    /// `workqueue_work_duration_seconds`.
    pub work_duration: Histogram,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        Self {
            depth: Gauge::default(),
            adds: Counter::default(),
            queue_duration: workqueue_histogram(),
            work_duration: workqueue_histogram(),
        }
    }
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    /// `agent_sandbox_claim_startup_latency_ms`.
    pub claim_startup: Family<StartupLabels, Histogram, fn() -> Histogram>,
    /// `agent_sandbox_claim_controller_startup_latency_ms`.
    pub claim_controller_startup: Family<StartupLabels, Histogram, fn() -> Histogram>,
    /// `agent_sandbox_client_claim_startup_latency_ms`.
    pub client_claim_startup: Family<StartupLabels, Histogram, fn() -> Histogram>,
    /// `agent_sandbox_creation_latency_ms`.
    pub creation_latency: Family<CreationLabels, Histogram, fn() -> Histogram>,
    /// `agent_sandbox_claim_creation_total`.
    pub claim_creation: Family<ClaimCreationLabels, Counter>,
    sandboxes: Family<SandboxGaugeLabels, Gauge>,
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_time: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    workqueue_depth: Family<QueueLabels, Gauge>,
    workqueue_adds: Family<QueueLabels, Counter>,
    workqueue_queue_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    workqueue_work_duration: Family<QueueLabels, Histogram, fn() -> Histogram>,
    workqueue_retries: Family<QueueLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let claim_startup = Family::new_with_constructor(startup_histogram as fn() -> Histogram);
        let claim_controller_startup =
            Family::new_with_constructor(startup_histogram as fn() -> Histogram);
        let client_claim_startup =
            Family::new_with_constructor(startup_histogram as fn() -> Histogram);
        let creation_latency =
            Family::new_with_constructor(creation_histogram as fn() -> Histogram);
        let claim_creation = Family::default();
        let sandboxes = Family::default();
        let reconcile_total = Family::default();
        let reconcile_errors = Family::default();
        let reconcile_time = Family::new_with_constructor(reconcile_histogram as fn() -> Histogram);
        let workqueue_depth = Family::default();
        let workqueue_adds = Family::default();
        let workqueue_queue_duration =
            Family::new_with_constructor(workqueue_histogram as fn() -> Histogram);
        let workqueue_work_duration =
            Family::new_with_constructor(workqueue_histogram as fn() -> Histogram);
        let workqueue_retries = Family::default();
        registry.register(
            "agent_sandbox_claim_startup_latency_ms",
            "Claim start-up latency from the webhook first-observed annotation to first Ready",
            claim_startup.clone(),
        );
        registry.register(
            "agent_sandbox_claim_controller_startup_latency_ms",
            "Claim start-up latency from the controller's first observation to first Ready",
            claim_controller_startup.clone(),
        );
        registry.register(
            "agent_sandbox_client_claim_startup_latency_ms",
            "Claim start-up latency from the client request to first Ready",
            client_claim_startup.clone(),
        );
        registry.register(
            "agent_sandbox_creation_latency_ms",
            "Sandbox creation to Ready latency of claimed sandboxes",
            creation_latency.clone(),
        );
        registry.register(
            "agent_sandbox_claim_creation",
            "Sandboxes adopted (warm) or created (cold) for claims",
            claim_creation.clone(),
        );
        registry.register("agent_sandboxes", "Sandboxes by state", sandboxes.clone());
        registry.register(
            "controller_runtime_reconcile",
            "Reconciliations per controller and result",
            reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Reconciliation duration per controller",
            reconcile_time.clone(),
        );
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            workqueue_depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            workqueue_adds.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            workqueue_queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            workqueue_work_duration.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            workqueue_retries.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                git_version: env!("CARGO_PKG_VERSION").into(),
                git_commit: option_env!("AGENT_SANDBOX_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .into(),
                build_date: option_env!("AGENT_SANDBOX_BUILD_DATE")
                    .unwrap_or("unknown")
                    .into(),
                go_version: "none".into(),
                compiler: "rustc".into(),
                platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
            })
            .set(1);
        registry.register("agent_sandbox_build_info", "Build information", build);
        Self {
            registry,
            claim_startup,
            claim_controller_startup,
            client_claim_startup,
            creation_latency,
            claim_creation,
            sandboxes,
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            workqueue_depth,
            workqueue_adds,
            workqueue_queue_duration,
            workqueue_work_duration,
            workqueue_retries,
        }
    }

    fn queue_labels(controller: &str) -> QueueLabels {
        QueueLabels {
            name: controller.into(),
            controller: controller.into(),
        }
    }

    /// The `workqueue_*` metrics of `controller`'s work queue.
    pub fn work_queue(&self, controller: &str) -> QueueMetrics {
        let l = Self::queue_labels(controller);
        QueueMetrics {
            depth: self.workqueue_depth.get_or_create(&l).clone(),
            adds: self.workqueue_adds.get_or_create(&l).clone(),
            queue_duration: self.workqueue_queue_duration.get_or_create(&l).clone(),
            work_duration: self.workqueue_work_duration.get_or_create(&l).clone(),
        }
    }

    /// Records one reconcile of `controller` that took `elapsed`.
    pub fn reconciled(&self, controller: &str, elapsed: Duration, result: ReconcileResult) {
        let c = ControllerLabels {
            controller: controller.into(),
        };
        self.reconcile_time
            .get_or_create(&c)
            .observe(elapsed.as_secs_f64());
        let result = match result {
            ReconcileResult::Success => "success",
            ReconcileResult::Requeue => "requeue_after",
            ReconcileResult::Error => {
                self.reconcile_errors.get_or_create(&c).inc();
                // As controller-runtime, a failed reconcile goes back rate-limited: a retry.
                self.workqueue_retries
                    .get_or_create(&Self::queue_labels(controller))
                    .inc();
                "error"
            }
        };
        self.reconcile_total
            .get_or_create(&ResultLabels {
                controller: controller.into(),
                result: result.into(),
            })
            .inc();
    }

    /// The text exposition, with the `agent_sandboxes` gauge computed from `sandboxes`.
    pub fn render(&self, sandboxes: &[Arc<Sandbox>]) -> String {
        self.sandboxes.clear();
        for sb in sandboxes {
            self.sandboxes
                .get_or_create(&sandbox_gauge_labels(sb))
                .inc();
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The outcome of one reconcile, for the controller-runtime-style counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Finished without a requeue.
    Success,
    /// Finished with a requeue.
    Requeue,
    /// Failed.
    Error,
}

/// The `agent_sandboxes` labels of one Sandbox.
pub fn sandbox_gauge_labels(sb: &Sandbox) -> SandboxGaugeLabels {
    let conds = sb
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let expired = conds
        .iter()
        .any(|c| c.type_ == condition_types::READY && c.reason == reasons::SANDBOX_EXPIRED);
    let owned_by = match controller_of(&sb.metadata) {
        Some(r) if ref_is(r, EXTENSIONS_GROUP, "SandboxClaim") => "SandboxClaim",
        Some(r) if ref_is(r, EXTENSIONS_GROUP, "SandboxWarmPool") => "SandboxWarmPool",
        _ => "None",
    };
    let _ = CORE_GROUP;
    SandboxGaugeLabels {
        namespace: sb.metadata.namespace.clone().unwrap_or_default(),
        ready_condition: is_status_condition_true(conds, condition_types::READY).to_string(),
        expired: expired.to_string(),
        launch_type: if label(&sb.metadata, labels::LAUNCH_TYPE) == Some(launch_type::WARM) {
            launch_type::WARM
        } else {
            launch_type::COLD
        }
        .into(),
        sandbox_template: annotation(&sb.metadata, annotations::SANDBOX_TEMPLATE_REF)
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .into(),
        owned_by: owned_by.into(),
        created_by: normalize_created_by(label(&sb.metadata, labels::CREATED_BY).unwrap_or(""))
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sandbox_api::v1beta1::SandboxSpec;

    #[test]
    fn names_labels_and_buckets_render() {
        let m = Metrics::new();
        let l = StartupLabels {
            launch_type: "warm".into(),
            sandbox_template: "t".into(),
        };
        m.claim_controller_startup.get_or_create(&l).observe(120.0);
        m.creation_latency
            .get_or_create(&CreationLabels {
                namespace: "ns".into(),
                launch_type: "cold".into(),
                sandbox_template: "t".into(),
            })
            .observe(40.0);
        m.claim_creation
            .get_or_create(&ClaimCreationLabels {
                namespace: "ns".into(),
                sandbox_template: "t".into(),
                launch_type: "warm".into(),
                warmpool_name: "p".into(),
                pod_condition: "ready".into(),
                created_by: "unknown".into(),
            })
            .inc();
        m.reconciled(
            "sandbox",
            Duration::from_millis(2),
            ReconcileResult::Success,
        );
        let mut sb = Sandbox::new("a", SandboxSpec::default());
        sb.metadata.namespace = Some("ns".into());
        let text = m.render(&[Arc::new(sb)]);
        assert!(text.contains(
            "agent_sandbox_claim_controller_startup_latency_ms_bucket{le=\"250.0\",launch_type=\"warm\",sandbox_template=\"t\"} 1"
        ), "{text}");
        assert!(text.contains("agent_sandbox_creation_latency_ms_bucket{le=\"50.0\",namespace=\"ns\",launch_type=\"cold\",sandbox_template=\"t\"} 1"), "{text}");
        assert!(text.contains("agent_sandbox_claim_creation_total{namespace=\"ns\",sandbox_template=\"t\",launch_type=\"warm\",warmpool_name=\"p\",pod_condition=\"ready\",created_by=\"unknown\"} 1"), "{text}");
        assert!(text.contains("agent_sandboxes{namespace=\"ns\",ready_condition=\"false\",expired=\"false\",launch_type=\"cold\",sandbox_template=\"unknown\",owned_by=\"None\",created_by=\"unknown\"} 1"), "{text}");
        assert!(text.contains("agent_sandbox_build_info{"), "{text}");
        assert!(
            text.contains(
                "controller_runtime_reconcile_total{controller=\"sandbox\",result=\"success\"} 1"
            ),
            "{text}"
        );
        // The buckets are exactly upstream's.
        assert_eq!(
            text.matches("agent_sandbox_claim_controller_startup_latency_ms_bucket")
                .count(),
            16
        );
        assert_eq!(
            text.matches("agent_sandbox_creation_latency_ms_bucket")
                .count(),
            15
        );
    }
}
