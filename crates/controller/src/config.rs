//! Controller configuration with upstream's defaults (upstream-core §12.1).

use std::time::Duration;

/// Settings shared by the four controllers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Run the SandboxClaim, SandboxTemplate and SandboxWarmPool controllers as well.
    pub extensions: bool,
    /// Suffix of `status.serviceFQDN`.
    pub cluster_domain: String,
    /// Namespace to watch; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Concurrent Sandbox reconciles (`--sandbox-concurrent-workers`).
    pub sandbox_workers: u16,
    /// Concurrent SandboxClaim reconciles (`--sandbox-claim-concurrent-workers`).
    pub claim_workers: u16,
    /// Concurrent SandboxWarmPool reconciles (`--sandbox-warm-pool-concurrent-workers`).
    pub warm_pool_workers: u16,
    /// Concurrent SandboxTemplate reconciles (`--sandbox-template-concurrent-workers`).
    pub template_workers: u16,
    /// Most pool members created or deleted in one pass (`--sandbox-warm-pool-max-batch-size`).
    pub warm_pool_max_batch: usize,
    /// How long a pool member may stay unready before it is replaced.
    pub warm_pool_readiness_grace: Duration,
    /// How often a pool holding unschedulable members is rechecked.
    pub warm_pool_unschedulable_recheck: Duration,
    /// Stamp `cluster-autoscaler.kubernetes.io/safe-to-evict: "true"` on pool pod templates.
    pub enable_warm_pool_eviction: bool,
    /// Emit no claim events.
    pub disable_claim_events: bool,
    /// Keep the first-observed and trace annotations of claims in memory only.
    pub disable_claim_observability_annotations: bool,
    /// Spans are exported (`--enable-tracing`): reconciles persist their trace context in the
    /// `opentelemetry.io/trace-context` annotation of Sandboxes and claims that lack one.
    pub tracing: bool,
    /// Label domains allowed in `additionalPodMetadata` (lowercase).
    pub allowed_label_domains: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            extensions: true,
            cluster_domain: "cluster.local".into(),
            namespace: None,
            sandbox_workers: 100,
            claim_workers: 50,
            warm_pool_workers: 1,
            template_workers: 1,
            warm_pool_max_batch: 300,
            warm_pool_readiness_grace: Duration::from_secs(300),
            warm_pool_unschedulable_recheck: Duration::from_secs(60),
            enable_warm_pool_eviction: true,
            disable_claim_events: false,
            disable_claim_observability_annotations: false,
            tracing: false,
            allowed_label_domains: vec![DEFAULT_ALLOWED_LABEL_DOMAIN.into()],
        }
    }
}

/// The label domain allowed in `additionalPodMetadata` when none is configured.
pub const DEFAULT_ALLOWED_LABEL_DOMAIN: &str = "sandbox.users.io";

/// Parses the `allowed-label-domains` file: entries separated by commas or newlines, trimmed and
/// lowercased; the default when there are none.
pub fn parse_allowed_label_domains(text: &str) -> Vec<String> {
    let v: Vec<String> = text
        .split([',', '\n'])
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    if v.is_empty() {
        vec![DEFAULT_ALLOWED_LABEL_DOMAIN.into()]
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_upstream() {
        let c = Config::default();
        assert_eq!(
            (
                c.sandbox_workers,
                c.claim_workers,
                c.warm_pool_workers,
                c.template_workers
            ),
            (100, 50, 1, 1)
        );
        assert_eq!(c.warm_pool_max_batch, 300);
        assert_eq!(c.warm_pool_readiness_grace, Duration::from_secs(300));
        assert_eq!(c.cluster_domain, "cluster.local");
        assert_eq!(c.allowed_label_domains, ["sandbox.users.io"]);
    }

    #[test]
    fn allowed_domains_file() {
        assert_eq!(
            parse_allowed_label_domains(" A.io,\nb.io \n\n"),
            ["a.io", "b.io"]
        );
        assert_eq!(parse_allowed_label_domains("\n"), ["sandbox.users.io"]);
    }
}
