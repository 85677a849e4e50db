//! The node agent loop: what kubelet does for a cluster node, for this machine. It registers the
//! `Node`, watches the Pods bound to it and drives the [`SandboxEngine`] so that each Pod becomes
//! a running sandbox, and reports back through the Pod's status and events.
//!
//! Per Pod, on every change, on every container exit, after each back-off and on a periodic
//! resync (one sync of a Pod at a time; a request during a sync runs another one after it):
//! 1. a Pod being deleted: stop its probes, run preStop hooks, stop its containers within the
//!    grace period (regular containers first, then sidecars), remove the sandbox, then finish
//!    the deletion (`gracePeriodSeconds=0`), as kubelet does;
//! 2. a Pod without a sandbox: make its Pod-level part (network with its NetworkPolicy rules,
//!    `/etc` files, volumes); a refused field or a failure is written as waiting containers
//!    with the reason and the field, and retried on the next resync;
//! 3. init containers, in order: each runs to completion before the next starts; a failure
//!    restarts it after a back-off (restartPolicy Always/OnFailure) or fails the Pod (Never);
//!    a native sidecar (`restartPolicy: Always`) counts as done once started (and its startup
//!    probe passed), and keeps running, restarted whenever it exits;
//! 4. once initialized, the regular containers: created and started (image pulled per policy,
//!    with `Pulling`/`Pulled` events and the progress in the waiting message), probed, and
//!    restarted per `restartPolicy` with a back-off when they exit; when none will run again,
//!    the phase becomes `Succeeded` or `Failed` and the sidecars are stopped;
//! 5. the status is written when it changed: phase, conditions (`Initialized`,
//!    `ContainersReady`, `Ready` following readiness probes and readiness gates, the ignored
//!    fields condition of [`crate::audit`]), `initContainerStatuses` and `containerStatuses`
//!    with states, last states and restart counts.
//!
//! Probes run on their own tasks per container ([`crate::probe`]): readiness changes rewrite
//! the status; a failed liveness or startup probe kills the container (preStop first), and its
//! exit restarts it per `restartPolicy`. `activeDeadlineSeconds` fails the Pod with
//! `DeadlineExceeded` once exceeded.
//!
//! A Pod annotated `agent-sandbox-rs.github.io/paused: "true"` has every container frozen once
//! it runs and is ready (the runtime's pause, the cgroup freezer; [`plan::freezable`]) and
//! thawed when the annotation goes; while
//! frozen no container is stepped, no probe runs and back-off clocks stand still, exec is
//! refused, and the condition `agent-sandbox-rs.github.io/Paused` says so (`pause.rs`). A
//! frozen Pod being deleted is thawed first, so its preStop hooks and signals work.
//!
//! The agent also watches `SandboxSnapshot`s (this project's own kind) and takes those whose
//! Sandbox's Pod it runs: the engine's `snapshot` into `<node data dir>/snapshots/`, the status
//! written as it goes, the files deleted with the resource (`snapshot.rs`).
//!
//! On start, sandboxes left by a previous run are re-adopted by Pod UID (restart counts and
//! init progress come back from the Pod's status); those whose Pod no longer exists are removed.
//!
//! With a bridge network the agent also enforces NetworkPolicies: it watches NetworkPolicies and
//! Namespaces, keeps the [`PolicyEnforcer`] up to date with them and with the Pods' labels, and
//! installs it as the engine's network hook so that a sandbox's rules are in place before it
//! starts (see [`crate::firewall`]).
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the agent, its settings, the Pod watch and the per-Pod sync triggers |
//! | `sync.rs` | one sync of a Pod: the executor of [`super::plan`]'s decisions |
//! | `container.rs` | one container's step in a sync: create, notice its exit, restart |
//! | `pull.rs` | images per pull policy, with events and progress |
//! | `config.rs` | configMap/secret/downwardAPI volumes and a container's environment |
//! | `probing.rs` | probe and exit-watch tasks, probe kills, stopping a Pod's containers |
//! | `status.rs` | writing the Pod's status |
//! | `snapshot.rs` | `SandboxSnapshot`s: the executor of [`super::snapshot_plan`] |
//! | `watch.rs` | the ConfigMap/Secret cache, NetworkPolicy and Namespace watches |

mod config;
mod container;
mod monitoring;
mod pause;
mod probing;
mod pull;
mod snapshot;
mod status;
mod sync;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::plan::{
    self, Absent, AfterExit, ContainerAction, Deadline, Observed, PauseAction, PodAction,
    RestartPolicy, Step, field_path, image_id, waiting_reason,
};
use crate::engine::SandboxEngine;
use crate::env::Process;
use crate::error::NodeError;
use crate::events::{EventSink, pod_ref};
use crate::firewall::{PodMeta, PolicyEnforcer};
use crate::pod::{CState, PodRt, Role, now};
use crate::probe::{self, ContainerChecks, ProbeSpec, Target};
use crate::refs::{DataKind, NodeFacts, Sources};
use crate::spec::{PullPolicy, SandboxSpec};
use watch::{DataCache, keep_cached};

/// How often every Pod is re-examined even without a change (retries, missed wake-ups).
pub const RESYNC: Duration = Duration::from_secs(2);

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Back-off before the first restart of a crashed container; doubles per restart.
    pub backoff_base: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
    /// Sandboxes and containers being set up at once (network, bundle, runtime `create` and
    /// `start`); further starts wait their turn. Each start is a handful of short-lived
    /// helper processes (CNI plugins, the firewall, the OCI runtime): started all at once,
    /// hundreds of them share the cores with the API server and the controllers, and every
    /// one of them (and every claim being adopted meanwhile) finishes late.
    pub max_parallel_starts: usize,
    /// The most bytes one snapshot may take on disk (`--snapshot-size-limit`).
    pub snapshot_size_limit: u64,
    /// gVisor runtime monitoring for runsc Pods without the annotation
    /// (`up --runtime-monitoring`); `None`: only Pods that ask are monitored.
    pub runtime_monitoring: Option<crate::monitor::RuntimeMonitoring>,
}

/// The default of [`AgentConfig::snapshot_size_limit`]: 10 GiB.
pub const DEFAULT_SNAPSHOT_SIZE_LIMIT: u64 = 10 << 30;

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(20),
            max_parallel_starts: default_parallel_starts(),
            snapshot_size_limit: DEFAULT_SNAPSHOT_SIZE_LIMIT,
            runtime_monitoring: None,
        }
    }
}

/// Twice the CPUs this process may use: enough to keep them busy while some starts wait on
/// I/O, few enough that the control plane still gets its share.
fn default_parallel_starts() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

type Shared<T> = Arc<Mutex<T>>;

/// Drives the engine from the Pods bound to `node_name`.
pub struct NodeAgent {
    client: Client,
    engine: Arc<SandboxEngine>,
    node_name: String,
    config: AgentConfig,
    /// Pods with a sync running, and whether another was asked for meanwhile.
    busy: Mutex<HashMap<String, bool>>,
    /// The latest Pod object per uid.
    store: Mutex<BTreeMap<String, Pod>>,
    /// The agent's memory per Pod uid.
    pods: Mutex<HashMap<String, Shared<PodRt>>>,
    enforcer: Option<Arc<PolicyEnforcer>>,
    events: Option<EventSink>,
    stopped: std::sync::atomic::AtomicBool,
    /// Background operations running (syncs, removals, firewall updates).
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// Turns for sandbox and container starts (`AgentConfig::max_parallel_starts`).
    starts: StartTurns,
    /// The node's capacity, for the downward API.
    node_facts: NodeFacts,
    /// ConfigMaps and Secrets, kept current by watches (see [`DataCache`]).
    data_cache: DataCache,
    /// SandboxSnapshots: the latest objects and those being taken.
    snapshots: snapshot::Snapshots,
}

/// A semaphore for starts that also remembers the most starts that ever ran at once.
struct StartTurns {
    permits: tokio::sync::Semaphore,
    limit: usize,
    peak: std::sync::atomic::AtomicUsize,
}

impl StartTurns {
    fn new(n: usize) -> Self {
        let limit = n.max(1);
        StartTurns {
            permits: tokio::sync::Semaphore::new(limit),
            limit,
            peak: Default::default(),
        }
    }

    /// Waits for a turn, which lasts until the permit is dropped. The semaphore is never
    /// closed, so only a bug leaves the permit out (and then the start goes ahead unlimited
    /// rather than never).
    async fn take(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let permit = self.permits.acquire().await.ok();
        let running = self.limit - self.permits.available_permits();
        self.peak
            .fetch_max(running, std::sync::atomic::Ordering::SeqCst);
        permit
    }
}

/// Counts one background operation while alive.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(n: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(Arc::clone(n))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The annotation of a mirror Pod: the API's view of a static Pod that the node runs from its
/// own configuration (here, the embedded router), never from the API.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether `pod` is a mirror Pod, which the agent leaves alone as kubelet does.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

fn condition(type_: &str, status: bool, reason: Option<&str>, message: Option<&str>) -> Value {
    json!({"type": type_, "status": if status {"True"} else {"False"}, "lastTransitionTime": now(),
           "reason": reason, "message": message})
}

impl NodeAgent {
    /// An agent for `node_name` with default settings.
    pub fn new(
        client: Client,
        engine: Arc<SandboxEngine>,
        node_name: impl Into<String>,
    ) -> Arc<Self> {
        Self::with_config(client, engine, node_name, AgentConfig::default())
    }

    /// An agent for `node_name`.
    pub fn with_config(
        client: Client,
        engine: Arc<SandboxEngine>,
        node_name: impl Into<String>,
        config: AgentConfig,
    ) -> Arc<Self> {
        let node_name = node_name.into();
        let enforcer = engine.network().and_then(|cni| {
            match PolicyEnforcer::new(cni.config()) {
                Ok(e) => {
                    if let Err(reason) = e.available() {
                        tracing::warn!(%reason, "NetworkPolicies cannot be enforced on this host; pods that a policy selects will not start");
                    }
                    Some(e)
                }
                Err(e) => {
                    tracing::error!(error = %e, "NetworkPolicy enforcement is off");
                    None
                }
            }
        });
        if let Some(e) = &enforcer {
            engine.set_network_hook(Arc::clone(e) as Arc<dyn crate::engine::NetworkHook>);
        }
        let events = tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| EventSink::start(client.clone(), &node_name));
        let node_facts = NodeFacts::of_host(&engine.config().root);
        Arc::new(Self {
            client,
            engine,
            node_name,
            starts: StartTurns::new(config.max_parallel_starts),
            config,
            busy: Default::default(),
            store: Default::default(),
            pods: Default::default(),
            enforcer,
            events,
            stopped: Default::default(),
            inflight: Default::default(),
            node_facts,
            data_cache: DataCache::new(),
            snapshots: Default::default(),
        })
    }

    /// The NetworkPolicy enforcer (present when the node has a bridge network).
    pub fn enforcer(&self) -> Option<&Arc<PolicyEnforcer>> {
        self.enforcer.as_ref()
    }

    /// Re-apply the firewall in the background (policy, namespace or label changes).
    fn resync_firewall(&self) {
        if let Some(enf) = &self.enforcer
            && enf.available().is_ok()
            && !self.is_stopped()
        {
            let enf = Arc::clone(enf);
            let guard = InFlight::new(&self.inflight);
            tokio::spawn(async move {
                let _guard = guard;
                if let Err(e) = enf.sync().await {
                    tracing::error!(error = %e, "applying NetworkPolicies failed");
                }
            });
        }
    }

    fn event(&self, pod: &Pod, field: Option<String>, warning: bool, reason: &str, note: String) {
        if let Some(ev) = &self.events {
            ev.emit(pod_ref(pod, field), warning, reason, note);
        }
    }

    /// Creates the `Node` object if it is missing and marks it Ready.
    pub async fn register(&self) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        if nodes.get_opt(&self.node_name).await?.is_none() {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux"}}
            }))
            .expect("a static Node parses");
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        let handlers: Vec<String> = self
            .engine
            .handler_statuses()
            .iter()
            .filter(|s| s.usable)
            .map(|s| s.kind.name().to_owned())
            .collect();
        let status = json!({"status": {
            "conditions": [condition("Ready", true, Some("AgentReady"), Some("agent-sandbox node agent is ready"))],
            "nodeInfo": {"operatingSystem": "linux", "architecture": std::env::consts::ARCH, "containerRuntimeVersion": handlers.join(","),
                         "kubeletVersion": concat!("agent-sandbox-", env!("CARGO_PKG_VERSION")), "kernelVersion": "", "osImage": "", "bootID": "", "machineID": "", "systemUUID": "", "kubeProxyVersion": ""}
        }});
        nodes
            .patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
        Ok(())
    }

    /// Re-adopts sandboxes of existing Pods and removes the others.
    pub async fn recover(&self) -> Result<(), kube::Error> {
        if let Err(e) = self.engine.recover().await {
            tracing::warn!(error = %e, "recovering sandboxes failed");
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.node_name));
        let mut listed = pods.list(&lp).await?.items;
        listed.retain(|p| !is_mirror(p));
        let live: HashSet<String> = listed.iter().map(uid).collect();
        for id in self.engine.list() {
            if !live.contains(&id) {
                tracing::info!(sandbox = %id, "removing the sandbox of a deleted pod");
                if let Err(e) = self.engine.remove(&id).await {
                    tracing::warn!(sandbox = %id, error = %e, "removing an orphaned sandbox failed");
                }
            }
        }
        if let Some(enf) = &self.enforcer {
            for pod in &listed {
                enf.set_pod(&uid(pod), PodMeta::of(pod));
            }
            for (id, att) in self.engine.attachments() {
                enf.set_endpoint(&id, &att);
            }
            let nps: Api<NetworkPolicy> = Api::all(self.client.clone());
            enf.replace_policies(nps.list(&ListParams::default()).await?.items);
            let nss: Api<Namespace> = Api::all(self.client.clone());
            for ns in nss.list(&ListParams::default()).await?.items {
                enf.set_namespace(
                    &ns.metadata.name.clone().unwrap_or_default(),
                    ns.metadata.labels.clone().unwrap_or_default(),
                );
            }
            if enf.available().is_ok()
                && let Err(e) = enf.sync().await
            {
                tracing::error!(error = %e, "applying NetworkPolicies after a restart failed");
            }
        }
        Ok(())
    }

    /// Watches this node's Pods until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let resync = {
            let this = Arc::clone(&self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RESYNC).await;
                    let ids: Vec<String> = lock(&this.store).keys().cloned().collect();
                    for id in ids {
                        this.trigger(&id);
                    }
                }
            })
        };
        // Background tasks end with this one, also when it is aborted.
        let mut tasks = AbortOnDrop(vec![resync]);
        if let Some((config_maps, secrets)) = lock(&self.data_cache.writers).take() {
            tasks.0.push(tokio::spawn(keep_cached(
                Api::<ConfigMap>::all(self.client.clone()),
                config_maps,
            )));
            tasks.0.push(tokio::spawn(keep_cached(
                Api::<Secret>::all(self.client.clone()),
                secrets,
            )));
        }
        tasks.0.push(tokio::spawn(crate::storage::reclaim_deleted(
            self.client.clone(),
            Arc::clone(&self.engine),
        )));
        tasks
            .0
            .push(tokio::spawn(Arc::clone(&self).watch_snapshots()));
        if let Some(enf) = &self.enforcer {
            tasks.0.push(tokio::spawn(
                Arc::clone(&self).watch_policies(Arc::clone(enf)),
            ));
            tasks.0.push(tokio::spawn(
                Arc::clone(&self).watch_namespaces(Arc::clone(enf)),
            ));
        }
        let mut stream = watcher::watcher(pods, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(pod) | Event::InitApply(pod)) if is_mirror(&pod) => {}
                Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                    let id = uid(&pod);
                    lock(&self.store).insert(id.clone(), pod.clone());
                    if let Some(enf) = &self.enforcer
                        && enf.set_pod(&id, PodMeta::of(&pod))
                        && self.engine.contains(&id)
                    {
                        self.resync_firewall();
                    }
                    self.trigger(&id);
                }
                Ok(Event::Delete(pod)) if is_mirror(&pod) => {}
                Ok(Event::Delete(pod)) => {
                    let id = uid(&pod);
                    lock(&self.store).remove(&id);
                    let this = Arc::clone(&self);
                    let guard = InFlight::new(&self.inflight);
                    tokio::spawn(async move {
                        let _guard = guard;
                        this.forget(&id);
                        if this.engine.contains(&id) {
                            let _ = this.engine.remove(&id).await;
                        }
                        if let Some(enf) = &this.enforcer
                            && enf.remove_pod(&id)
                        {
                            this.resync_firewall();
                        }
                    });
                }
                Ok(Event::Init | Event::InitDone) => {}
                Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            }
        }
        drop(tasks);
    }

    /// Stop acting on Pods: no sandbox or container is started afterwards (syncs in flight
    /// finish). For shutdown and tests; abort the task running [`NodeAgent::run`] too.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for rt in lock(&self.pods).values() {
            for c in lock(rt).containers.values_mut() {
                c.stop_tasks();
            }
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// After [`NodeAgent::stop`]: wait (blocking, bounded by `timeout`) until no background
    /// operation runs. Returns whether it got there.
    pub fn wait_idle_blocking(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.inflight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Drop the memory of a Pod (its tasks end).
    fn forget(&self, id: &str) {
        if let Some(rt) = lock(&self.pods).remove(id) {
            for c in lock(&rt).containers.values_mut() {
                c.stop_tasks();
            }
        }
    }

    /// Sync the Pod `id` (its latest object) now, or right after the sync in progress.
    fn trigger(self: &Arc<Self>, id: &str) {
        if self.is_stopped() {
            return;
        }
        {
            let mut busy = lock(&self.busy);
            if let Some(again) = busy.get_mut(id) {
                *again = true;
                return;
            }
            busy.insert(id.to_string(), false);
        }
        let this = Arc::clone(self);
        let id = id.to_string();
        let guard = InFlight::new(&self.inflight);
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                let pod = lock(&this.store).get(&id).cloned();
                if let Some(pod) = pod
                    && !this.is_stopped()
                    && let Err(e) = this.sync(&pod).await
                {
                    tracing::warn!(pod = ?pod.metadata.name, error = %e, "syncing pod failed");
                }
                let mut busy = lock(&this.busy);
                match busy.get_mut(&id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        busy.remove(&id);
                        break;
                    }
                }
            }
        });
    }

    /// The most sandbox or container starts that ran at once since the agent began.
    pub fn peak_parallel_starts(&self) -> usize {
        self.starts.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Sync `id` after `delay`.
    fn trigger_after(self: &Arc<Self>, id: &str, delay: Duration) {
        let this = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.trigger(&id);
        });
    }

    fn pod_rt(&self, pod: &Pod) -> Shared<PodRt> {
        Arc::clone(
            lock(&self.pods)
                .entry(uid(pod))
                .or_insert_with(|| Arc::new(Mutex::new(PodRt::seed(pod)))),
        )
    }
}
