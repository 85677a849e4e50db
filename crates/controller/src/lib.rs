//! The four reconcilers (Sandbox, SandboxTemplate, SandboxWarmPool, SandboxClaim) written once
//! against `kube::Client`, with their indexes, expectations, metrics, events and tracing.
//!
//! The reconcilers never ask whether they run embedded or against a cluster: [`start`] takes a
//! client and a [`Config`] and returns a [`State`] handle plus the future that runs everything.
//!
//! - [`sandbox`], [`template`], [`warmpool`], [`claim`]: the reconcilers; each has a `logic`
//!   module (or section) of pure decisions with its decision-table tests.
//! - [`cache`]: one watch per kind, reflector stores, indexes, change hooks.
//! - [`runner`]: the work queue each reconciler runs on.
//! - [`queue`] and [`expectations`]: the warm queue and the pool read-after-write guard.
//! - [`metrics`]: upstream's metrics, in the Prometheus text format.
//! - [`cluster`]: cluster mode (`agent-sandbox controller`): [`leader`] election on a Lease, the
//!   conversion [`webhook`] with its [`certs`] bootstrap, metrics and health endpoints, and
//!   [`otel`] tracing.
#![forbid(unsafe_code)]

pub mod cache;
pub mod certs;
pub mod claim;
pub mod cluster;
pub mod config;
pub mod context;
pub mod error;
pub mod expectations;
pub mod leader;
pub mod meta;
pub mod metrics;
pub mod otel;
pub mod queue;
pub mod runner;
pub mod sandbox;
pub mod template;
pub mod warmpool;
pub mod webhook;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_sandbox_api::conditions::find_status_condition;
use agent_sandbox_api::constants::{CORE_GROUP, EXTENSIONS_GROUP, condition_types, labels};
use agent_sandbox_api::v1beta1::{Sandbox, SandboxClaim, SandboxTemplate, SandboxWarmPool};
use futures::FutureExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};

use cache::{Cached, Change, Informer};
pub use config::Config;
use context::{Backoff, Context, Indexes, Recorders, Stores, recorder};
pub use error::{Error, Result};
use meta::{controller_of, ref_is};
use metrics::{Metrics, ReconcileResult};
use runner::Action;

/// A cloneable handle on the running controllers for the admin endpoints.
#[derive(Clone)]
pub struct State {
    ctx: Arc<Context>,
}

impl State {
    /// The Prometheus text exposition of the controller metrics.
    pub fn metrics_text(&self) -> String {
        self.ctx.metrics.render(&self.ctx.stores.sandboxes.state())
    }

    /// Whether every cache has synced once (readiness).
    pub fn is_ready(&self) -> bool {
        self.ctx.is_ready()
    }

    /// The shared context (for embedding and tests).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }
}

/// Starts all controllers; the returned future runs them until dropped.
pub fn run(client: Client, config: Config) -> impl Future<Output = ()> + Send + 'static {
    start(client, config).1
}

fn send<K: Resource<DynamicType = ()>>(
    tx: &UnboundedSender<ObjectRef<K>>,
    namespace: &str,
    name: &str,
) {
    let _ = tx.unbounded_send(ObjectRef::new(name).within(namespace));
}

fn owner_name<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    group: &str,
    kind: &str,
) -> Option<&'a str> {
    controller_of(meta)
        .filter(|r| ref_is(r, group, kind))
        .map(|r| r.name.as_str())
}

fn claim_relevant_change(old: &Sandbox, new: &Sandbox) -> bool {
    let cond = |s: &Sandbox, t: &str| {
        s.status
            .as_ref()
            .and_then(|st| find_status_condition(&st.conditions, t))
            .cloned()
    };
    let ips = |s: &Sandbox| {
        s.status
            .as_ref()
            .map(|st| st.pod_ips.clone())
            .unwrap_or_default()
    };
    old.metadata.deletion_timestamp.is_some() != new.metadata.deletion_timestamp.is_some()
        || ips(old) != ips(new)
        || cond(old, condition_types::READY) != cond(new, condition_types::READY)
        || cond(old, condition_types::FINISHED) != cond(new, condition_types::FINISHED)
}

/// Whether a change of a pool member can change what its pool's reconcile decides: the member's
/// spec, labels, owners or deletion (staleness, adoption, replacement), or its readiness (the
/// status counts and the readiness grace). Its other status writes (pod IPs, service name, the
/// Pod's progress) cannot, and a pool of hundreds would otherwise be walked for each of them.
fn pool_relevant_change(old: &Sandbox, new: &Sandbox) -> bool {
    meta::spec_or_metadata_changed(&old.metadata, &new.metadata)
        || warmpool::logic::is_ready(old) != warmpool::logic::is_ready(new)
}

/// Runs one reconcile with its metrics, and turns its result into when to come back: what it
/// asked for, or the object's next backoff step after an error.
async fn timed(
    ctx: Arc<Context>,
    controller: &'static str,
    key: String,
    fut: impl Future<Output = Result<Action>>,
) -> Option<Duration> {
    let t = Instant::now();
    let r = fut.await;
    let (result, requeue) = match &r {
        Ok(a) if *a == Action::await_change() => (ReconcileResult::Success, None),
        Ok(a) => (ReconcileResult::Requeue, a.requeue_after()),
        Err(e) => {
            tracing::warn!(controller, key, error = %e, kind = e.metric_label(), "reconcile failed");
            (ReconcileResult::Error, Some(ctx.backoff.next(&key)))
        }
    };
    if r.is_ok() {
        ctx.backoff.reset(&key);
    }
    ctx.metrics.reconciled(controller, t.elapsed(), result);
    requeue
}

fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

fn controller_future<K, F, Fut>(
    store: kube::runtime::reflector::Store<K>,
    rx: futures::channel::mpsc::UnboundedReceiver<ObjectRef<K>>,
    workers: u16,
    ctx: Arc<Context>,
    name: &'static str,
    reconcile: F,
) -> BoxFuture<'static, ()>
where
    K: Cached + ResourceExt,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    let metrics = ctx.metrics.work_queue(name);
    runner::run(
        store,
        rx,
        usize::from(workers),
        metrics,
        move |obj: Arc<K>| {
            let key = key_of(obj.as_ref());
            timed(ctx.clone(), name, key, reconcile(obj, ctx.clone()))
        },
    )
    .boxed()
}

/// Builds the context, the informers and the four controllers. Returns the admin handle and the
/// future that runs everything (nothing runs until it is polled).
pub fn start(client: Client, config: Config) -> (State, impl Future<Output = ()> + Send + 'static) {
    let sandboxes = Informer::<Sandbox>::default();
    let pods = Informer::<Pod>::default();
    let services = Informer::<Service>::default();
    let claims = Informer::<SandboxClaim>::default();
    let pools = Informer::<SandboxWarmPool>::default();
    let templates = Informer::<SandboxTemplate>::default();
    let netpols = Informer::<NetworkPolicy>::default();
    let stores = Stores {
        sandboxes: sandboxes.store.clone(),
        pods: pods.store.clone(),
        services: services.store.clone(),
        claims: claims.store.clone(),
        pools: pools.store.clone(),
        templates: templates.store.clone(),
        network_policies: netpols.store.clone(),
    };
    let indexes = Arc::new(Indexes::default());
    let ready = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorders: Recorders {
            sandbox: recorder(client.clone(), "sandbox-controller"),
            claim: (!config.disable_claim_events)
                .then(|| recorder(client.clone(), "sandboxclaim-controller")),
            pool: recorder(client.clone(), "sandboxwarmpool-controller"),
        },
        config,
        stores: stores.clone(),
        indexes: indexes.clone(),
        metrics: Arc::new(Metrics::new()),
        queue: Arc::default(),
        expectations: Arc::default(),
        backoff: Backoff::default(),
        claim_first_seen: Arc::default(),
        claim_sandboxes: Arc::default(),
        pools_not_progressing: Default::default(),
        ready: ready.clone(),
    });
    let ext = ctx.config.extensions;
    let ns = ctx.config.namespace.clone();

    let (sb_tx, sb_rx) = unbounded::<ObjectRef<Sandbox>>();
    let (claim_tx, claim_rx) = unbounded::<ObjectRef<SandboxClaim>>();
    let (pool_tx, pool_rx) = unbounded::<ObjectRef<SandboxWarmPool>>();
    let (tpl_tx, tpl_rx) = unbounded::<ObjectRef<SandboxTemplate>>();

    let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();

    // Sandboxes.
    {
        let (idx, queue, exp, sb_tx, claim_tx, pool_tx) = (
            indexes.clone(),
            ctx.queue.clone(),
            ctx.expectations.clone(),
            sb_tx.clone(),
            claim_tx.clone(),
            pool_tx.clone(),
        );
        tasks.push(
            sandboxes
                .run(client.clone(), ns.clone(), move |change| {
                    let (old, new) = match &change {
                        Change::Applied { old, new } => (old.as_deref(), Some(new.as_ref())),
                        Change::Deleted(o) => (Some(o.as_ref()), None),
                    };
                    let obj = new.or(old).expect("a change has an object");
                    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
                    idx.sandboxes_by_pool.set(
                        &ns,
                        &name,
                        new.and_then(|n| meta::label(&n.metadata, labels::WARM_POOL_SANDBOX)),
                    );
                    send(&sb_tx, &ns, &name);
                    claim::queue_on_change(&queue, old, new);
                    // Like EnqueueRequestForOwner, both the old and the new controller hear of an
                    // update (an adoption moves a Sandbox from its pool to a claim).
                    let versions = [old, new];
                    let relevant = match (old, new) {
                        (Some(o), Some(n)) => claim_relevant_change(o, n),
                        _ => true,
                    };
                    let claims: BTreeSet<&str> = versions
                        .iter()
                        .flatten()
                        .filter_map(|v| owner_name(&v.metadata, EXTENSIONS_GROUP, "SandboxClaim"))
                        .collect();
                    let owner_changed = claims.len() > 1
                        || old.map(|o| owner_name(&o.metadata, EXTENSIONS_GROUP, "SandboxClaim"))
                            != new
                                .map(|n| owner_name(&n.metadata, EXTENSIONS_GROUP, "SandboxClaim"));
                    if relevant || owner_changed {
                        for c in claims {
                            send(&claim_tx, &ns, c);
                        }
                    }
                    let pools: BTreeSet<&str> = versions
                        .iter()
                        .flatten()
                        .filter_map(|v| {
                            owner_name(&v.metadata, EXTENSIONS_GROUP, "SandboxWarmPool")
                        })
                        .collect();
                    for p in pools {
                        let key = queue::pool_key(&ns, p);
                        match (old, new) {
                            (None, Some(_)) => exp.creation_observed(&key),
                            (_, None) => {
                                exp.deletion_observed(&key, obj.uid().as_deref().unwrap_or(""))
                            }
                            _ => {}
                        }
                        if old.zip(new).is_none_or(|(o, n)| pool_relevant_change(o, n)) {
                            send(&pool_tx, &ns, p);
                        }
                    }
                })
                .boxed(),
        );
    }
    // Pods and Services: trigger their Sandbox.
    {
        let (idx, pod_sb_tx) = (indexes.clone(), sb_tx.clone());
        tasks.push(
            pods.run(client.clone(), ns.clone(), move |change| {
                let (obj, alive) = match &change {
                    Change::Applied { new, .. } => (new.clone(), true),
                    Change::Deleted(o) => (o.clone(), false),
                };
                let (pns, pname) = (obj.namespace().unwrap_or_default(), obj.name_any());
                let hash = meta::label(&obj.metadata, labels::SANDBOX_NAME_HASH);
                idx.pods_by_hash.set(&pns, &pname, hash.filter(|_| alive));
                if hash.is_some()
                    && let Some(s) = owner_name(&obj.metadata, CORE_GROUP, "Sandbox")
                {
                    send(&pod_sb_tx, &pns, s);
                }
            })
            .boxed(),
        );
        let sb_tx = sb_tx.clone();
        tasks.push(
            services
                .run(client.clone(), ns.clone(), move |change| {
                    let obj = match &change {
                        Change::Applied { new, .. } => new.clone(),
                        Change::Deleted(o) => o.clone(),
                    };
                    if meta::label(&obj.metadata, labels::SANDBOX_NAME_HASH).is_some()
                        && let Some(s) = owner_name(&obj.metadata, CORE_GROUP, "Sandbox")
                    {
                        send(&sb_tx, &obj.namespace().unwrap_or_default(), s);
                    }
                })
                .boxed(),
        );
    }
    if ext {
        // Claims.
        let (idx, claim_tx2, first_seen, sandboxes_of_claims) = (
            indexes.clone(),
            claim_tx.clone(),
            ctx.claim_first_seen.clone(),
            ctx.claim_sandboxes.clone(),
        );
        tasks.push(
            claims
                .run(client.clone(), ns.clone(), move |change| {
                    let (obj, alive) = match &change {
                        Change::Applied { new, .. } => (new.clone(), true),
                        Change::Deleted(o) => (o.clone(), false),
                    };
                    let (cns, cname) = (obj.namespace().unwrap_or_default(), obj.name_any());
                    idx.claims_by_pool.set(
                        &cns,
                        &cname,
                        alive.then_some(obj.spec.warm_pool_ref.name.as_str()),
                    );
                    let key = claim::first_seen_key(&obj);
                    if alive {
                        first_seen.lock().entry(key).or_insert_with(Timestamp::now);
                    } else {
                        first_seen.lock().remove(&key);
                        sandboxes_of_claims.lock().remove(&key);
                    }
                    send(&claim_tx2, &cns, &cname);
                })
                .boxed(),
        );
        // Pools.
        let (idx, queue, claims_store, claim_tx2, pool_tx2) = (
            indexes.clone(),
            ctx.queue.clone(),
            stores.claims.clone(),
            claim_tx.clone(),
            pool_tx.clone(),
        );
        tasks.push(
            pools
                .run(client.clone(), ns.clone(), move |change| {
                    let (old, new) = match &change {
                        Change::Applied { old, new } => (old.clone(), Some(new.clone())),
                        Change::Deleted(o) => (Some(o.clone()), None),
                    };
                    let obj = new.clone().or(old.clone()).expect("a change has an object");
                    let (pns, pname) = (obj.namespace().unwrap_or_default(), obj.name_any());
                    idx.pools_by_template.set(
                        &pns,
                        &pname,
                        new.as_ref().map(|n| n.spec.template_ref.name.as_str()),
                    );
                    // The pool's own status writes change nothing its reconcile reads.
                    if old.as_ref().zip(new.as_ref()).is_none_or(|(o, n)| {
                        meta::spec_or_metadata_changed(&o.metadata, &n.metadata)
                    }) {
                        send(&pool_tx2, &pns, &pname);
                    }
                    if new.is_none() {
                        queue.remove_queue(&queue::pool_key(&pns, &pname));
                    }
                    let generation_changed = match (&old, &new) {
                        (Some(o), Some(n)) => o.metadata.generation != n.metadata.generation,
                        _ => true,
                    };
                    if generation_changed {
                        for c in idx.claims_by_pool.get(&pns, &pname) {
                            if let Some(claim) = cache::get(&claims_store, &pns, &c)
                                && claim.metadata.deletion_timestamp.is_none()
                                && claim
                                    .status
                                    .as_ref()
                                    .is_none_or(|s| s.sandbox.name.is_empty())
                            {
                                send(&claim_tx2, &pns, &c);
                            }
                        }
                    }
                })
                .boxed(),
        );
        // Templates.
        let (idx, claims_store, claim_tx2, pool_tx2, tpl_tx2) = (
            indexes.clone(),
            stores.claims.clone(),
            claim_tx.clone(),
            pool_tx.clone(),
            tpl_tx.clone(),
        );
        tasks.push(
            templates
                .run(client.clone(), ns.clone(), move |change| {
                    let (obj, created) = match &change {
                        Change::Applied { old, new } => (new.clone(), old.is_none()),
                        Change::Deleted(o) => (o.clone(), false),
                    };
                    let (tns, tname) = (obj.namespace().unwrap_or_default(), obj.name_any());
                    send(&tpl_tx2, &tns, &tname);
                    for p in idx.pools_by_template.get(&tns, &tname) {
                        send(&pool_tx2, &tns, &p);
                        if created {
                            for c in idx.claims_by_pool.get(&tns, &p) {
                                if cache::get(&claims_store, &tns, &c)
                                    .is_some_and(|cl| cl.metadata.deletion_timestamp.is_none())
                                {
                                    send(&claim_tx2, &tns, &c);
                                }
                            }
                        }
                    }
                })
                .boxed(),
        );
        let tpl_tx2 = tpl_tx.clone();
        tasks.push(
            netpols
                .run(client.clone(), ns.clone(), move |change| {
                    let obj = match &change {
                        Change::Applied { new, .. } => new.clone(),
                        Change::Deleted(o) => o.clone(),
                    };
                    if let Some(t) = owner_name(&obj.metadata, EXTENSIONS_GROUP, "SandboxTemplate")
                    {
                        send(&tpl_tx2, &obj.namespace().unwrap_or_default(), t);
                    }
                })
                .boxed(),
        );
    }

    // Readiness once every cache has synced.
    {
        let s = stores.clone();
        let ready = ready.clone();
        tasks.push(
            async move {
                let _ = s.sandboxes.wait_until_ready().await;
                let _ = s.pods.wait_until_ready().await;
                let _ = s.services.wait_until_ready().await;
                if ext {
                    let _ = s.claims.wait_until_ready().await;
                    let _ = s.pools.wait_until_ready().await;
                    let _ = s.templates.wait_until_ready().await;
                    let _ = s.network_policies.wait_until_ready().await;
                }
                ready.store(true, Ordering::Relaxed);
                futures::future::pending::<()>().await;
            }
            .boxed(),
        );
    }

    let cfg = &ctx.config;
    tasks.push(controller_future(
        stores.sandboxes.clone(),
        sb_rx,
        cfg.sandbox_workers,
        ctx.clone(),
        sandbox::CONTROLLER,
        sandbox::reconcile,
    ));
    if ext {
        tasks.push(controller_future(
            stores.claims.clone(),
            claim_rx,
            cfg.claim_workers,
            ctx.clone(),
            claim::CONTROLLER,
            claim::reconcile,
        ));
        tasks.push(controller_future(
            stores.pools.clone(),
            pool_rx,
            cfg.warm_pool_workers,
            ctx.clone(),
            warmpool::CONTROLLER,
            warmpool::reconcile,
        ));
        tasks.push(controller_future(
            stores.templates.clone(),
            tpl_rx,
            cfg.template_workers,
            ctx.clone(),
            template::CONTROLLER,
            template::reconcile,
        ));
    }
    drop((sb_tx, claim_tx, pool_tx, tpl_tx));
    let state = State { ctx };
    (state, futures::future::join_all(tasks).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sandbox_api::v1beta1::SandboxStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn member(ready: bool) -> Sandbox {
        let mut sb: Sandbox = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pool-abcde", "namespace": "ns", "generation": 1,
                         "labels": {"agents.x-k8s.io/launch-type": "warm"}},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        sb.status = Some(SandboxStatus {
            conditions: vec![Condition {
                type_: condition_types::READY.into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: "R".into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: Some(1),
            }],
            ..Default::default()
        });
        sb
    }

    #[test]
    fn a_pool_hears_of_the_member_changes_it_decides_on() {
        let old = member(false);
        // Status writes that leave readiness alone: not relevant.
        let mut new = old.clone();
        let st = new.status.as_mut().unwrap();
        st.pod_ips = vec!["10.0.0.2".into()];
        st.service_fqdn = "pool-abcde.ns.svc.cluster.local".into();
        new.metadata.resource_version = Some("42".into());
        assert!(!pool_relevant_change(&old, &new));
        // Readiness, spec (generation), labels, owners and deletion: relevant.
        assert!(pool_relevant_change(&old, &member(true)));
        let mut new = old.clone();
        new.metadata.generation = Some(2);
        assert!(pool_relevant_change(&old, &new));
        let mut new = old.clone();
        new.labels_mut().remove("agents.x-k8s.io/launch-type");
        assert!(pool_relevant_change(&old, &new));
        let mut new = old.clone();
        new.metadata.owner_references = Some(vec![Default::default()]);
        assert!(pool_relevant_change(&old, &new));
        let mut new = old.clone();
        new.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(pool_relevant_change(&old, &new));
    }
}
