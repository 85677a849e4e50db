//! The state every reconciler shares: client, configuration, caches and indexes, event
//! recorders, metrics, the warm queue, pool expectations and per-object backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent_sandbox_api::v1beta1::{Sandbox, SandboxClaim, SandboxTemplate, SandboxWarmPool};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use parking_lot::Mutex;

use crate::cache::Index;
use crate::config::Config;
use crate::expectations::Expectations;
use crate::metrics::Metrics;
use crate::queue::WarmQueue;

/// Field manager of every create.
pub const FIELD_MANAGER: &str = "sandbox-controller";

/// The cache readers and indexes.
#[derive(Clone)]
pub struct Stores {
    /// Sandboxes.
    pub sandboxes: Store<Sandbox>,
    /// Pods.
    pub pods: Store<Pod>,
    /// Services.
    pub services: Store<Service>,
    /// Claims.
    pub claims: Store<SandboxClaim>,
    /// Warm pools.
    pub pools: Store<SandboxWarmPool>,
    /// Templates.
    pub templates: Store<SandboxTemplate>,
    /// NetworkPolicies.
    pub network_policies: Store<NetworkPolicy>,
}

/// The in-memory indexes.
#[derive(Debug, Default)]
pub struct Indexes {
    /// Pods by `sandbox-name-hash` label.
    pub pods_by_hash: Index,
    /// Sandboxes by `warm-pool-sandbox` label.
    pub sandboxes_by_pool: Index,
    /// Pools by `spec.sandboxTemplateRef.name`.
    pub pools_by_template: Index,
    /// Claims by `spec.warmPoolRef.name`.
    pub claims_by_pool: Index,
}

/// One event recorder per controller, as upstream names them.
#[derive(Clone)]
pub struct Recorders {
    /// `sandbox-controller`.
    pub sandbox: Recorder,
    /// `sandboxclaim-controller`; `None` with `disable_claim_events`.
    pub claim: Option<Recorder>,
    /// `sandboxwarmpool-controller`.
    pub pool: Recorder,
}

/// Per-object exponential backoff for failed reconciles (5 ms doubling to 1000 s, as
/// controller-runtime's default rate limiter).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before retrying `key` after one more failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut m = self.failures.lock();
        let n = m.entry(key.to_string()).or_default();
        let d = Duration::from_millis(5).saturating_mul(1u32 << (*n).min(24));
        *n += 1;
        d.min(Duration::from_secs(1000))
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &str) {
        self.failures.lock().remove(key);
    }
}

/// The shared controller context.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Configuration.
    pub config: Config,
    /// Cache readers.
    pub stores: Stores,
    /// Indexes over the caches.
    pub indexes: Arc<Indexes>,
    /// Event recorders.
    pub recorders: Recorders,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Warm sandboxes by pool, for claims to adopt.
    pub queue: Arc<WarmQueue>,
    /// Pool read-after-write expectations.
    pub expectations: Arc<Expectations>,
    /// Per-object failure backoff.
    pub backoff: Backoff,
    /// First time each claim (namespace/name/uid) was observed.
    pub claim_first_seen: Arc<Mutex<HashMap<String, Timestamp>>>,
    /// The sandbox this controller gave each claim (namespace/name/uid), adopted or created,
    /// until the claim is deleted: found again by a reconcile that runs before the claim's
    /// status or reference annotation (written after the status) shows in the cache.
    pub claim_sandboxes: Arc<Mutex<HashMap<String, String>>>,
    /// Pools currently reported as not progressing.
    pub pools_not_progressing: Mutex<HashMap<String, bool>>,
    /// Whether all caches have synced once.
    pub ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A recorder reporting as `controller`.
pub fn recorder(client: Client, controller: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: controller.into(),
            instance: None,
        },
    )
}

impl Context {
    /// Publishes an event about `obj` in the background (events are best effort and never on a
    /// reconcile's critical path); failures are logged only.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        recorder: &Recorder,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let (recorder, reference) = (recorder.clone(), obj.object_ref(&()));
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&ev, &reference).await {
                tracing::debug!(%error, reason = %ev.reason, "publishing event failed");
            }
        });
    }

    /// Whether all caches have synced once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.next("a"), Duration::from_millis(5));
        assert_eq!(b.next("a"), Duration::from_millis(10));
        assert_eq!(b.next("a"), Duration::from_millis(20));
        assert_eq!(b.next("b"), Duration::from_millis(5));
        b.reset("a");
        assert_eq!(b.next("a"), Duration::from_millis(5));
        for _ in 0..40 {
            b.next("c");
        }
        assert_eq!(b.next("c"), Duration::from_secs(1000));
    }
}
