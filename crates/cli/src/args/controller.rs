//! Flags of `agent-sandbox controller` (cluster mode): upstream's flag names and defaults
//! (booleans take Go's `--flag` / `--flag=false` form), plus `--kubeconfig` and the
//! leader-election timings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agent_sandbox_controller::cluster::{parse_bind_address, parse_go_duration};
use clap::{ArgAction, Args};

/// A bind address; `None` when the endpoint is disabled (`0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BindAddress(pub(crate) Option<SocketAddr>);

fn bind_address(s: &str) -> Result<BindAddress, String> {
    parse_bind_address(s).map(BindAddress)
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s)
}

/// Flags of the controller manager that runs against a cluster (boxed: there are many).
#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {
    #[command(flatten)]
    pub(crate) flags: Box<ControllerFlags>,
}

impl std::ops::Deref for ControllerArgs {
    type Target = ControllerFlags;

    fn deref(&self) -> &ControllerFlags {
        &self.flags
    }
}

/// The flags themselves.
#[derive(Debug, Args)]
pub(crate) struct ControllerFlags {
    /// Kubeconfig to use; without it, $KUBECONFIG, ~/.kube/config, then the in-cluster service
    /// account.
    #[arg(long, value_name = "FILE")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Address of the metrics endpoint (/metrics, plain HTTP); 0 disables it.
    #[arg(long, default_value = ":8080", value_parser = bind_address, value_name = "ADDR")]
    pub(crate) metrics_bind_address: BindAddress,
    /// Address of the health probes (/healthz, /readyz); 0 disables them.
    #[arg(long, default_value = ":8081", value_parser = bind_address, value_name = "ADDR")]
    pub(crate) health_probe_bind_address: BindAddress,
    /// Elect a leader on a Lease so that only one replica runs the controllers.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) leader_elect: bool,
    /// Namespace of the leader election Lease; empty: the service account's namespace in a
    /// cluster, else the kubeconfig context's namespace.
    #[arg(long, default_value = "", value_name = "NAMESPACE")]
    pub(crate) leader_election_namespace: String,
    /// How long a leader's lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = duration, value_name = "DURATION")]
    pub(crate) leader_election_lease_duration: Duration,
    /// How long the leader retries a failed renewal before it stops.
    #[arg(long, default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub(crate) leader_election_renew_deadline: Duration,
    /// Pause between leader election attempts.
    #[arg(long, default_value = "2s", value_parser = duration, value_name = "DURATION")]
    pub(crate) leader_election_retry_period: Duration,
    /// Run the SandboxClaim, SandboxTemplate and SandboxWarmPool controllers too.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) extensions: bool,
    /// Cluster DNS domain (status.serviceFQDN suffix and webhook certificate name).
    #[arg(long, default_value = "cluster.local", value_name = "DOMAIN")]
    pub(crate) cluster_domain: String,
    /// Export traces over OTLP/gRPC (configured by the OTEL_EXPORTER_OTLP_* variables).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) enable_tracing: bool,
    /// Accepted for compatibility; this build serves no profiling endpoints.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) enable_pprof: bool,
    /// Accepted for compatibility; this build serves no profiling endpoints.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) enable_pprof_debug: bool,
    /// Accepted for compatibility (profiling).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub(crate) pprof_block_profile_rate: i64,
    /// Accepted for compatibility (profiling).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) pprof_mutex_profile_fraction: i64,
    /// Client queries per second to the API server; -1 (or 0) is unlimited.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true, value_name = "QPS")]
    pub(crate) kube_api_qps: f64,
    /// Client burst above the QPS; must be > 0.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) kube_api_burst: u32,
    /// Accepted for compatibility: HTTP/2 connections for API traffic (>= 1).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) api_connections: u32,
    /// Accepted for compatibility: a dedicated connection for watches.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) separate_watch_connection: bool,
    /// Concurrent Sandbox reconciles.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub(crate) sandbox_concurrent_workers: u16,
    /// Concurrent SandboxClaim reconciles.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub(crate) sandbox_claim_concurrent_workers: u16,
    /// Concurrent SandboxWarmPool reconciles.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub(crate) sandbox_warm_pool_concurrent_workers: u16,
    /// Concurrent SandboxTemplate reconciles.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) sandbox_template_concurrent_workers: u16,
    /// Most pool members created or deleted in one pass.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub(crate) sandbox_warm_pool_max_batch_size: u32,
    /// Hold before refilling a pool after an adoption (accepted; not applied by this build).
    #[arg(long, default_value = "0", value_parser = duration, value_name = "DURATION")]
    pub(crate) sandbox_warm_pool_replenish_delay: Duration,
    /// Pool refill rate limit per second, 0 unlimited (accepted; not applied by this build).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub(crate) sandbox_warm_pool_max_refill_rate: f64,
    /// How long a pool member may stay unready before it is replaced.
    #[arg(long, default_value = "5m", value_parser = duration, value_name = "DURATION")]
    pub(crate) sandbox_warm_pool_readiness_grace_period: Duration,
    /// How often a pool holding unschedulable members is rechecked.
    #[arg(long, default_value = "1m", value_parser = duration, value_name = "DURATION")]
    pub(crate) sandbox_warm_pool_unschedulable_recheck_interval: Duration,
    /// Stamp cluster-autoscaler safe-to-evict on warm pool pods.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) enable_warm_pool_eviction: bool,
    /// Scope the Pod and Service caches to the tracking label (accepted; this build's caches are
    /// not scoped).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) cache_label_selectors: bool,
    /// Emit no claim events.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) disable_claim_events: bool,
    /// Keep the first-observed and trace annotations of claims in memory only.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) disable_claim_observability_annotations: bool,
    /// Sandbox status write-behind window (accepted; this build writes at once).
    #[arg(long, default_value = "0", value_parser = duration, value_name = "DURATION")]
    pub(crate) sandbox_write_behind_window: Duration,
    /// Port of the conversion webhook (HTTPS).
    #[arg(long, default_value_t = 9443, value_name = "PORT")]
    pub(crate) webhook_port: u16,
    /// Directory of the webhook serving certificate and key.
    #[arg(
        long,
        default_value = "/tmp/k8s-webhook-server/serving-certs",
        value_name = "DIR"
    )]
    pub(crate) webhook_cert_dir: PathBuf,
    /// Certificate file name in the cert directory (with --manage-webhook-certs=false).
    #[arg(long, default_value = "tls.crt", value_name = "FILE")]
    pub(crate) webhook_cert_name: String,
    /// Key file name in the cert directory (with --manage-webhook-certs=false).
    #[arg(long, default_value = "tls.key", value_name = "FILE")]
    pub(crate) webhook_key_name: String,
    /// The webhook Service the CRDs call.
    #[arg(
        long,
        default_value = "agent-sandbox-webhook-service",
        value_name = "NAME"
    )]
    pub(crate) webhook_service_name: String,
    /// Namespace of the webhook Service and of the certificate Secret.
    #[arg(long, default_value = "agent-sandbox-system", value_name = "NAMESPACE")]
    pub(crate) webhook_namespace: String,
    /// Generate (or load) a self-signed CA in the Secret agent-sandbox-webhook-certs and patch
    /// the CRDs' caBundle.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) manage_webhook_certs: bool,
    /// Serve the conversion webhook (with false, the CRDs must use conversion strategy None).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) enable_webhook: bool,
    /// File of allowed label domains for additionalPodMetadata (read when --extensions is on;
    /// a missing file means the default).
    #[arg(
        long,
        default_value = agent_sandbox_controller::cluster::ALLOWED_LABEL_DOMAINS_FILE,
        value_name = "FILE",
        hide = true
    )]
    pub(crate) allowed_label_domains_file: PathBuf,
    /// Accepted for compatibility; use --log-level.
    #[arg(long, hide = true, value_name = "LEVEL")]
    pub(crate) zap_log_level: Option<String>,
    /// Accepted for compatibility; use --log-format.
    #[arg(long, hide = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) zap_devel: Option<bool>,
    /// Accepted for compatibility; use --log-format.
    #[arg(long, hide = true, value_name = "ENCODER")]
    pub(crate) zap_encoder: Option<String>,
    /// Accepted for compatibility.
    #[arg(long, hide = true, value_name = "LEVEL")]
    pub(crate) zap_stacktrace_level: Option<String>,
    /// Accepted for compatibility.
    #[arg(long, hide = true, value_name = "ENCODING")]
    pub(crate) zap_time_encoding: Option<String>,
}
