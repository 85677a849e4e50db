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
//! On start, sandboxes left by a previous run are re-adopted by Pod UID (restart counts and
//! init progress come back from the Pod's status); those whose Pod no longer exists are removed.
//!
//! With a bridge network the agent also enforces NetworkPolicies: it watches NetworkPolicies and
//! Namespaces, keeps the [`PolicyEnforcer`] up to date with them and with the Pods' labels, and
//! installs it as the engine's network hook so that a sandbox's rules are in place before it
//! starts (see [`crate::firewall`]).

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

use crate::engine::SandboxEngine;
use crate::env::Process;
use crate::error::NodeError;
use crate::events::{EventSink, pod_ref};
use crate::firewall::{PodMeta, PolicyEnforcer};
use crate::pod::{CState, PodRt, Role, now};
use crate::probe::{self, ContainerChecks, ProbeSpec, Target};
use crate::refs::{DataKind, NodeFacts, Sources};
use crate::spec::{PullPolicy, SandboxSpec};

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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(20),
            max_parallel_starts: default_parallel_starts(),
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
}

/// The ConfigMaps and Secrets of every namespace, kept current by two watches that
/// [`NodeAgent::run`] starts (kubelet's watch strategy): the volume refresh of every sync reads
/// them here instead of through the API. An object the cache has not seen is read through the
/// API, so one created just before its Pod is never missed.
struct DataCache {
    config_maps: reflector::Store<ConfigMap>,
    secrets: reflector::Store<Secret>,
    /// The stores' writers, until `run` gives them to the watches.
    writers: Mutex<
        Option<(
            reflector::store::Writer<ConfigMap>,
            reflector::store::Writer<Secret>,
        )>,
    >,
}

impl DataCache {
    fn new() -> Self {
        let (config_maps, cm_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        DataCache {
            config_maps,
            secrets,
            writers: Mutex::new(Some((cm_writer, secret_writer))),
        }
    }

    /// The cached data of `kind` `ns/name`, if the cache holds it.
    fn get(&self, kind: DataKind, ns: &str, name: &str) -> Option<crate::refs::Data> {
        match kind {
            DataKind::ConfigMap => self
                .config_maps
                .get(&reflector::ObjectRef::new(name).within(ns))
                .map(|c| crate::refs::config_map_data(&c)),
            DataKind::Secret => self
                .secrets
                .get(&reflector::ObjectRef::new(name).within(ns))
                .map(|s| crate::refs::secret_data(&s)),
        }
    }
}

/// Feed a reflector store from a watch of every `K` until the task is dropped.
async fn keep_cached<K>(api: Api<K>, writer: reflector::store::Writer<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
        }
    }
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

/// The field path kubelet puts in a container event's object reference.
fn field_path(role: Role, name: &str) -> String {
    match role {
        Role::Regular => format!("spec.containers{{{name}}}"),
        _ => format!("spec.initContainers{{{name}}}"),
    }
}

/// Outcome of one step of a container in a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Running (a sidecar: started).
    Running,
    /// Not there yet (creating, pulling, backing off, a sidecar's startup probe pending, an
    /// init container still running).
    Waiting,
    /// An init container completed.
    Done,
    /// Exited and will not run again.
    Finished,
    /// The Pod failed (an init container failed under restartPolicy Never).
    PodFailed,
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

    /// Keeps the enforcer's NetworkPolicies current.
    async fn watch_policies(self: Arc<Self>, enf: Arc<PolicyEnforcer>) {
        let api: Api<NetworkPolicy> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut relist: Vec<NetworkPolicy> = Vec::new();
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(Event::Init) => {
                    relist.clear();
                    false
                }
                Ok(Event::InitApply(np)) => {
                    relist.push(np);
                    false
                }
                Ok(Event::InitDone) => {
                    enf.replace_policies(std::mem::take(&mut relist));
                    true
                }
                Ok(Event::Apply(np)) => enf.set_policy(np),
                Ok(Event::Delete(np)) => enf.remove_policy(
                    np.metadata.namespace.as_deref().unwrap_or("default"),
                    np.metadata.name.as_deref().unwrap_or_default(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "NetworkPolicy watch failed; retrying");
                    false
                }
            };
            if changed {
                self.resync_firewall();
            }
        }
    }

    /// Keeps the enforcer's namespace labels current (for namespaceSelector peers).
    async fn watch_namespaces(self: Arc<Self>, enf: Arc<PolicyEnforcer>) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            let changed = match event {
                Ok(Event::Apply(ns) | Event::InitApply(ns)) => enf.set_namespace(
                    ns.metadata.name.as_deref().unwrap_or_default(),
                    ns.metadata.labels.clone().unwrap_or_default(),
                ),
                Ok(Event::Delete(ns)) => {
                    enf.remove_namespace(ns.metadata.name.as_deref().unwrap_or_default())
                }
                Ok(Event::Init | Event::InitDone) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "Namespace watch failed; retrying");
                    false
                }
            };
            if changed {
                self.resync_firewall();
            }
        }
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

    async fn sync(self: &Arc<Self>, pod: &Pod) -> Result<(), kube::Error> {
        let id = uid(pod);
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);

        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(pod, &api).await;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            if let Some(rt) = lock(&self.pods).get(&id) {
                for c in lock(rt).containers.values_mut() {
                    c.stop_tasks();
                }
            }
            return Ok(());
        }
        let rt = self.pod_rt(pod);
        if lock(&rt).terminal() {
            // Finished on this node, though the Pod read here may not say so yet: nothing is
            // started again (a stopped sidecar would otherwise be restarted per its policy).
            return self.write_status(pod, &api, &rt).await;
        }

        // The spec, with every refused field named.
        let checks = match self.checks_of(pod) {
            Ok(c) => c,
            Err(e) => return self.report_failure(pod, &api, &rt, e).await,
        };
        if !self.engine.contains(&id) {
            if let Some(enf) = &self.enforcer {
                // The engine's network hook needs the labels before the sandbox gets its address.
                enf.set_pod(&id, PodMeta::of(pod));
            }
            self.bind_claims(pod);
            let mut spec = checks.0.clone();
            match self.runtime_class_handler(&spec).await {
                Ok(h) => spec.handler = h,
                Err(e) => return self.report_failure(pod, &api, &rt, e).await,
            }
            let prepared = {
                let _turn = self.starts.take().await;
                self.engine.prepare(spec).await
            };
            if let Err(e) = prepared {
                return self.report_failure(pod, &api, &rt, e).await;
            }
            let mut r = lock(&rt);
            r.start_time.get_or_insert_with(now);
            r.started = Some(Instant::now());
            r.last_error = None;
        }
        {
            let mut r = lock(&rt);
            r.ignored =
                crate::audit::ignored_fields(pod.spec.as_ref().unwrap_or(&Default::default()));
            r.pod_ip = self
                .engine
                .pod_ip(&id)
                .ok()
                .flatten()
                .map(|ip| ip.to_string());
            r.started.get_or_insert_with(Instant::now);
            r.start_time.get_or_insert_with(now);
        }
        let spec = self.engine.spec(&id).unwrap_or(checks.0.clone());

        // configMap, secret, downwardAPI and projected volumes: written before the first
        // container starts, kept current on every sync.
        if let Err(message) = self.refresh_volumes(pod, &spec).await {
            self.event(pod, None, true, "FailedMount", message);
            let first_time =
                !lock(&rt).volumes_ready && self.engine.containers(&id).is_ok_and(|c| c.is_empty());
            if first_time {
                for c in lock(&rt).containers.values_mut() {
                    c.state = CState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: None,
                    };
                }
                return self.write_status(pod, &api, &rt).await;
            }
        }
        lock(&rt).volumes_ready = true;

        // activeDeadlineSeconds.
        let deadline = pod
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64));
        let elapsed = lock(&rt).started.map(|t| t.elapsed()).unwrap_or_default();
        if let Some(d) = deadline {
            if elapsed >= d {
                self.event(
                    pod,
                    None,
                    true,
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline".into(),
                );
                self.stop_all(pod, &rt, spec.termination_grace).await;
                {
                    let mut r = lock(&rt);
                    r.phase = "Failed".into();
                    r.reason = Some("DeadlineExceeded".into());
                    r.message = Some(
                        "Pod was active on the node longer than the specified deadline".into(),
                    );
                    for c in r.containers.values_mut() {
                        c.ready = false;
                    }
                }
                return self.write_status(pod, &api, &rt).await;
            }
            self.trigger_after(&id, d - elapsed);
        }

        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());

        // Init containers, in order; sidecars keep being maintained afterwards.
        let initialized = lock(&rt).initialized;
        let mut pod_failed = false;
        for c in &spec.init_containers {
            let done = lock(&rt).containers.get(&c.name).is_some_and(|x| x.done);
            if done {
                continue;
            }
            let step = self
                .step(pod, &spec, &rt, &c.name, &checks.1, &policy)
                .await;
            match step {
                Step::Done | Step::Running => continue,
                Step::PodFailed => {
                    pod_failed = true;
                    break;
                }
                Step::Waiting | Step::Finished => {
                    if !initialized {
                        break;
                    }
                }
            }
        }
        if pod_failed {
            self.stop_all(pod, &rt, spec.termination_grace).await;
            {
                let mut r = lock(&rt);
                r.phase = "Failed".into();
                for c in r.containers.values_mut() {
                    c.ready = false;
                }
            }
            return self.write_status(pod, &api, &rt).await;
        }
        let now_initialized = {
            let r = lock(&rt);
            spec.init_containers.iter().all(|c| {
                r.containers
                    .get(&c.name)
                    .is_some_and(|x| x.done || (x.role == Role::Sidecar && x.started))
            })
        };
        if now_initialized {
            lock(&rt).initialized = true;
        }

        if lock(&rt).initialized {
            let mut finished = 0;
            let mut failed = 0;
            let regular: Vec<String> = spec.regular().map(|c| c.name.clone()).collect();
            for n in &regular {
                if self.step(pod, &spec, &rt, n, &checks.1, &policy).await == Step::Finished {
                    finished += 1;
                    if lock(&rt)
                        .containers
                        .get(n)
                        .is_some_and(|c| !matches!(c.state, CState::Terminated { code: 0, .. }))
                    {
                        failed += 1;
                    }
                }
            }
            let mut r = lock(&rt);
            if finished == regular.len() {
                r.phase = if failed == 0 { "Succeeded" } else { "Failed" }.into();
            } else if regular.iter().any(|n| {
                r.containers
                    .get(n)
                    .is_some_and(|c| c.container_id.is_some() || c.restarts > 0)
            }) {
                r.phase = "Running".into();
            }
        }
        if lock(&rt).terminal() {
            // Kubelet stops the sidecars once the regular containers are done.
            self.stop_all(pod, &rt, spec.termination_grace).await;
        }
        // The pod IP is known once a container started (the network is attached meanwhile).
        if let Some(ip) = self.engine.pod_ip(&id).ok().flatten() {
            lock(&rt).pod_ip = Some(ip.to_string());
        }
        // The sandbox's network works once its firewall rules are in (see crate::firewall).
        if let Some(enf) = &self.enforcer
            && enf.available().is_ok()
        {
            let t = Instant::now();
            let res = enf.wait_applied(&id).await;
            self.engine.record_step(&id, "firewall wait", t);
            lock(&rt).network_error = res.err().map(|e| e.to_string());
        }
        let running = lock(&rt).phase == "Running";
        let t = Instant::now();
        let res = self.write_status(pod, &api, &rt).await;
        if running && res.is_ok() && self.engine.record_step(&id, "status write", t) {
            tracing::debug!(target: "node::agent", pod = ?pod.metadata.name,
                steps = %crate::timeline::summary(&self.engine.timeline(&id).unwrap_or_default()),
                "sandbox running");
        }
        res
    }

    /// The handler of the Pod's `runtimeClassName`: the `RuntimeClass` object's `handler`, as
    /// in Kubernetes; without such an object, a name the engine knows as a handler (`runc`,
    /// `crun`, `runsc`, `gvisor`, configured aliases) is used as is.
    async fn runtime_class_handler(&self, spec: &SandboxSpec) -> Result<Option<String>, NodeError> {
        let Some(name) = spec.handler.clone() else {
            return Ok(None);
        };
        let api: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(self.client.clone());
        match api.get_opt(&name).await {
            Ok(Some(rc)) => Ok(Some(rc.handler)),
            Ok(None)
                if crate::runtime::HandlerKind::from_name(&name).is_some()
                    || self.engine.config().handler_aliases.contains_key(&name) =>
            {
                Ok(Some(name))
            }
            Ok(None) => Err(NodeError::InvalidSpec {
                sandbox: spec.display_name(),
                field: "spec.runtimeClassName".into(),
                reason: format!(
                    "RuntimeClass {name:?} not found; create it or use a handler name (runc, crun, runsc, gvisor)"
                ),
            }),
            Err(e) => {
                tracing::debug!(runtime_class = %name, error = %e, "reading the RuntimeClass failed; using the name as the handler");
                Ok(Some(name))
            }
        }
    }

    /// Binds the claims `pod` uses to the volumes this node provisions for them, off the
    /// start's critical path.
    fn bind_claims(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let claims: Vec<(String, std::path::PathBuf)> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| {
                (
                    c.claim_name.clone(),
                    self.engine.pvc_dir(&ns, &c.claim_name),
                )
            })
            .collect();
        if claims.is_empty() {
            return;
        }
        let (client, node) = (self.client.clone(), self.node_name.clone());
        tokio::spawn(async move {
            for (claim, dir) in claims {
                if let Err(e) = crate::storage::bind(&client, &node, &ns, &claim, &dir).await {
                    tracing::warn!(claim = %format!("{ns}/{claim}"), error = %e, "binding the claim to its volume failed");
                }
            }
        });
    }

    /// The sandbox spec and every container's probes and hooks, or the first refusal.
    fn checks_of(
        &self,
        pod: &Pod,
    ) -> Result<(SandboxSpec, BTreeMap<String, ContainerChecks>), NodeError> {
        let spec = SandboxSpec::from_pod(pod)?;
        let who = format!("{}/{}", spec.namespace, spec.name);
        let mut checks = BTreeMap::new();
        let ps = pod.spec.as_ref().cloned().unwrap_or_default();
        let all = ps
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
            .chain(
                ps.containers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("spec.containers[{i}]"), c)),
            );
        for (field, c) in all {
            let k =
                ContainerChecks::of(c, &field).map_err(|(f, reason)| NodeError::Unsupported {
                    sandbox: who.clone(),
                    field: f,
                    reason,
                })?;
            let plain_init = field.starts_with("spec.initContainers")
                && c.restart_policy.as_deref() != Some("Always");
            if plain_init && (k.has_probes() || k.post_start.is_some() || k.pre_stop.is_some()) {
                return Err(NodeError::InvalidSpec {
                    sandbox: who.clone(),
                    field: format!("{field}.lifecycle/probes"),
                    reason: "init containers that run to completion cannot have probes or lifecycle hooks".into(),
                });
            }
            checks.insert(c.name.clone(), k);
        }
        Ok((spec, checks))
    }

    /// One container's turn in a sync: create it, notice its exit, restart it.
    async fn step(
        self: &Arc<Self>,
        pod: &Pod,
        spec: &SandboxSpec,
        rt: &Shared<PodRt>,
        name: &str,
        checks: &BTreeMap<String, ContainerChecks>,
        policy: &str,
    ) -> Step {
        let id = spec.id.clone();
        let Some(cspec) = spec.container(name).cloned() else {
            return Step::Waiting;
        };
        let role = lock(rt)
            .containers
            .get(name)
            .map(|c| c.role)
            .unwrap_or(Role::Regular);
        let fp = Some(field_path(role, name));
        let exists = self
            .engine
            .containers(&id)
            .map(|v| v.iter().any(|n| n == name))
            .unwrap_or(false);
        if exists {
            match self.engine.container_exit(&id, name) {
                Ok(None) => {
                    // Running. After an agent restart, its probes and exit watch are not.
                    let need_tasks = lock(rt)
                        .containers
                        .get(name)
                        .is_some_and(|c| c.tasks.is_empty());
                    if need_tasks {
                        let k = checks.get(name).cloned().unwrap_or_default();
                        {
                            let mut r = lock(rt);
                            if let Some(c) = r.containers.get_mut(name) {
                                c.container_id = self.engine.container_runtime_id(&id, name);
                                if let Some(image) = self.engine.container_image(&id, name) {
                                    c.image_id = image_id(&image);
                                }
                                if !matches!(c.state, CState::Running { .. }) {
                                    c.state = CState::Running { started_at: now() };
                                }
                                c.running_since.get_or_insert_with(Instant::now);
                                // As at create: without a startup (readiness) probe the
                                // container counts as started (ready); with one, its probe
                                // decides again, as after a kubelet restart.
                                c.started = c.started || k.startup.is_none();
                                c.ready = c.started && k.readiness.is_none();
                            }
                        }
                        self.start_tasks(pod, spec, rt, name, k);
                    }
                    let r = lock(rt);
                    let c = &r.containers[name];
                    return match role {
                        Role::Init => Step::Waiting,
                        Role::Sidecar if !c.started => Step::Waiting,
                        _ => Step::Running,
                    };
                }
                Ok(Some(code)) => {
                    let code = code.unwrap_or(-1);
                    let message = self.engine.termination_message(&id, name);
                    {
                        let mut r = lock(rt);
                        if let Some(c) = r.containers.get_mut(name) {
                            c.stop_tasks();
                            let started_at = match &c.state {
                                CState::Running { started_at } => Some(started_at.clone()),
                                _ => None,
                            };
                            c.state = CState::Terminated {
                                code,
                                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                                message,
                                started_at,
                                finished_at: now(),
                            };
                            c.ready = false;
                            c.started = false;
                            c.running_since = None;
                        }
                    }
                    let restart = match role {
                        Role::Sidecar => true,
                        Role::Init => code != 0 && policy != "Never",
                        Role::Regular => policy == "Always" || (policy == "OnFailure" && code != 0),
                    };
                    if role == Role::Init && code == 0 {
                        if let Some(c) = lock(rt).containers.get_mut(name) {
                            c.done = true;
                        }
                        let _ = self.engine.remove_container(&id, name).await;
                        return Step::Done;
                    }
                    if !restart {
                        return if role == Role::Init {
                            Step::PodFailed
                        } else {
                            Step::Finished
                        };
                    }
                    if let Err(e) = self.engine.remove_container(&id, name).await {
                        tracing::warn!(pod = %spec.name, container = %name, error = %e, "removing an exited container failed");
                        return Step::Waiting;
                    }
                    let delay = {
                        let mut r = lock(rt);
                        let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                        c.restarts += 1;
                        let n = (c.restarts - 1).clamp(0, 16) as u32;
                        let delay = self
                            .config
                            .backoff_base
                            .saturating_mul(1 << n)
                            .min(self.config.backoff_max);
                        c.backoff_until = Some(Instant::now() + delay);
                        c.last_state = Some(c.state.clone());
                        c.container_id = None;
                        delay
                    };
                    self.trigger_after(&id, delay);
                    return self.backing_off(pod, rt, name, role, delay);
                }
                Err(_) => return Step::Waiting,
            }
        }

        // Not created (or removed after exiting).
        {
            let r = lock(rt);
            let c = &r.containers[name];
            if role == Role::Regular
                && matches!(c.state, CState::Terminated { .. })
                && c.backoff_until.is_none()
            {
                return Step::Finished;
            }
            if let Some(until) = c.backoff_until
                && until > Instant::now()
            {
                let left = until - Instant::now();
                let waiting = match &c.state {
                    CState::Waiting { reason, .. } => Some(reason.clone()),
                    _ => None,
                };
                drop(r);
                return match waiting.as_deref() {
                    Some("ErrImagePull" | "ImagePullBackOff") => {
                        self.image_back_off(pod, rt, name, role, &cspec.image)
                    }
                    // A create error: keep reporting it until the retry.
                    Some(w) if w != "CrashLoopBackOff" => Step::Waiting,
                    _ => self.backing_off(pod, rt, name, role, left),
                };
            }
        }
        if self.is_stopped() {
            return Step::Waiting;
        }

        // The image, with events and progress.
        let image = match self
            .pull(pod, rt, name, role, &cspec.image, cspec.pull_policy)
            .await
        {
            Some(i) => i,
            None => return Step::Waiting,
        };
        let created = match self.process_of(pod, &id, name, fp.clone()).await {
            Ok(process) => {
                let _turn = self.starts.take().await;
                self.engine
                    .create_container_from(&id, name, Some(process), image.clone(), true)
                    .await
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(()) => {
                self.event(
                    pod,
                    fp.clone(),
                    false,
                    "Created",
                    format!("Created container: {name}"),
                );
                self.event(
                    pod,
                    fp.clone(),
                    false,
                    "Started",
                    format!("Started container {name}"),
                );
                let k = checks.get(name).cloned().unwrap_or_default();
                {
                    let mut r = lock(rt);
                    let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                    c.state = CState::Running { started_at: now() };
                    c.container_id = self.engine.container_runtime_id(&id, name);
                    c.image_id = image_id(&image);
                    c.started = k.startup.is_none();
                    c.ready = c.started && k.readiness.is_none();
                    c.backoff_until = None;
                    c.running_since = Some(Instant::now());
                }
                if let Some(hook) = &k.post_start {
                    let target = self.target(spec, name);
                    let r = probe::run(
                        &target,
                        hook,
                        spec.termination_grace.max(Duration::from_secs(30)),
                    )
                    .await;
                    if let Err(msg) = r {
                        self.event(
                            pod,
                            fp.clone(),
                            true,
                            "FailedPostStartHook",
                            format!("PostStartHook failed: {msg}"),
                        );
                        let _ = self
                            .engine
                            .stop_container(&id, name, spec.termination_grace)
                            .await;
                        self.trigger(&id);
                        return Step::Waiting;
                    }
                }
                self.start_tasks(pod, spec, rt, name, k);
                let r = lock(rt);
                match role {
                    Role::Init => Step::Waiting,
                    Role::Sidecar if !r.containers[name].started => Step::Waiting,
                    _ => Step::Running,
                }
            }
            Err(e) => {
                let reason = waiting_reason(&e);
                self.event(pod, fp, true, "Failed", format!("Error: {e}"));
                let delay = {
                    let mut r = lock(rt);
                    let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                    c.state = CState::Waiting {
                        reason: reason.into(),
                        message: Some(e.to_string()),
                    };
                    let delay = self
                        .config
                        .backoff_base
                        .saturating_mul(8)
                        .min(self.config.backoff_max);
                    c.backoff_until = Some(Instant::now() + delay);
                    delay
                };
                self.trigger_after(&id, delay);
                Step::Waiting
            }
        }
    }

    /// Write the files of the sandbox's `configMap`, `secret`, `downwardAPI` and `projected`
    /// volumes from their current sources (nothing is written when they are unchanged). Every
    /// volume that can be written is; the error is kubelet's `FailedMount` message of the
    /// first that cannot.
    async fn refresh_volumes(&self, pod: &Pod, spec: &SandboxSpec) -> Result<(), String> {
        let mounted: HashSet<&str> = spec
            .all_containers()
            .flat_map(|c| c.volumes.iter())
            .filter(|v| v.source == crate::spec::VolumeSource::Projected)
            .map(|v| v.name.as_str())
            .collect();
        if mounted.is_empty() {
            return Ok(());
        }
        let volumes: Vec<k8s_openapi::api::core::v1::Volume> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter(|v| mounted.contains(v.name.as_str()))
            .cloned()
            .collect();
        // Every sync: from the watch cache.
        let sources = self
            .fetch(pod, crate::refs::volume_refs(&volumes), true)
            .await?;
        let mut first_error = None;
        for v in &volumes {
            let written =
                crate::projected::files(pod, v, &sources, &self.node_facts).and_then(|files| {
                    crate::projected::write(&self.engine.projected_dir(&spec.id, &v.name), &files)
                        .map_err(|e| e.to_string())
                });
            if let Err(m) = written {
                first_error.get_or_insert(format!(
                    "MountVolume.SetUp failed for volume {:?} : {m}",
                    v.name
                ));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Container `name`'s environment and command line, resolved from the Pod and the
    /// ConfigMaps and Secrets it names (read now, so a restart sees their current values).
    /// `fp` is the container's field path, for events.
    async fn process_of(
        &self,
        pod: &Pod,
        id: &str,
        name: &str,
        fp: Option<String>,
    ) -> Result<Process, NodeError> {
        let ps = pod.spec.clone().unwrap_or_default();
        let Some(c) = ps
            .containers
            .iter()
            .chain(ps.init_containers.iter().flatten())
            .find(|c| c.name == name)
        else {
            return Ok(Process::default());
        };
        let refused = |message| NodeError::Reference {
            sandbox: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            message,
        };
        let sources = self
            // At each container create: the API's current objects.
            .fetch(pod, crate::refs::container_refs(c), false)
            .await
            .map_err(refused)?;
        // A variable with the pod IP waits for the network (it is attached meanwhile).
        let ip = if crate::refs::needs_pod_ip(c) {
            self.engine.wait_pod_ip(id).await?
        } else {
            self.engine.pod_ip(id)?
        };
        let ips: Vec<String> = ip.iter().map(|ip| ip.to_string()).collect();
        let process =
            crate::env::resolve(pod, c, &sources, &ips, &self.node_facts).map_err(refused)?;
        for (source, keys) in &process.skipped {
            self.event(
                pod,
                fp.clone(),
                true,
                "InvalidEnvironmentVariableNames",
                format!(
                    "Keys [{}] from the EnvFrom {source} were skipped since they are considered invalid environment variable names.",
                    keys.join(", ")
                ),
            );
        }
        Ok(process)
    }

    /// The ConfigMaps and Secrets named in `refs`, in the Pod's namespace (absent ones recorded
    /// as absent); with `cached`, those the [`DataCache`] holds are taken from it, the others
    /// read through the API. The error says which read failed.
    async fn fetch(
        &self,
        pod: &Pod,
        refs: std::collections::BTreeSet<(DataKind, String)>,
        cached: bool,
    ) -> Result<Sources, String> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut sources = Sources::new(ns);
        for (kind, name) in refs {
            if cached && let Some(data) = self.data_cache.get(kind, ns, &name) {
                sources.insert(kind, name, Some(data));
                continue;
            }
            let data = match kind {
                DataKind::ConfigMap => Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .map(|o| o.as_ref().map(crate::refs::config_map_data)),
                DataKind::Secret => Api::<Secret>::namespaced(self.client.clone(), ns)
                    .get_opt(&name)
                    .await
                    .map(|o| o.as_ref().map(crate::refs::secret_data)),
            }
            .map_err(|e| format!("reading {} {ns}/{name}: {e}", kind.word()))?;
            sources.insert(kind, name, data);
        }
        Ok(sources)
    }

    fn image_back_off(
        &self,
        pod: &Pod,
        rt: &Shared<PodRt>,
        name: &str,
        role: Role,
        image: &str,
    ) -> Step {
        let first = {
            let mut r = lock(rt);
            let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
            let first =
                !matches!(&c.state, CState::Waiting { reason, .. } if reason == "ImagePullBackOff");
            c.state = CState::Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(format!("Back-off pulling image \"{image}\"")),
            };
            first
        };
        if first {
            self.event(
                pod,
                Some(field_path(role, name)),
                false,
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            );
        }
        Step::Waiting
    }

    fn backing_off(
        &self,
        pod: &Pod,
        rt: &Shared<PodRt>,
        name: &str,
        role: Role,
        left: Duration,
    ) -> Step {
        let mut r = lock(rt);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
        let msg = format!(
            "back-off {:.1}s restarting failed container={name} pod={pod_name}",
            left.as_secs_f64()
        );
        let first =
            !matches!(&c.state, CState::Waiting { reason, .. } if reason == "CrashLoopBackOff");
        c.state = CState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(msg),
        };
        drop(r);
        if first {
            self.event(
                pod,
                Some(field_path(role, name)),
                true,
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod_name}"),
            );
        }
        Step::Waiting
    }

    /// Resolve the image per pull policy, with `Pulling`/`Pulled`/`Failed` events and the pull
    /// progress in the container's waiting message. `None` when it is not available (the state
    /// says why; a retry is scheduled).
    async fn pull(
        self: &Arc<Self>,
        pod: &Pod,
        rt: &Shared<PodRt>,
        name: &str,
        role: Role,
        image: &str,
        policy: PullPolicy,
    ) -> Option<crate::image::Image> {
        let fp = Some(field_path(role, name));
        let id = uid(pod);
        let present = self.engine.images().get(image).ok().flatten();
        let fail = |reason: &str, msg: String, this: &Arc<Self>| {
            let delay = {
                let mut r = lock(rt);
                let c = r.containers.get_mut(name).unwrap_or_else(|| unreachable!());
                c.state = CState::Waiting {
                    reason: reason.into(),
                    message: Some(msg),
                };
                let delay = this
                    .config
                    .backoff_base
                    .saturating_mul(8)
                    .min(this.config.backoff_max);
                c.backoff_until = Some(Instant::now() + delay);
                delay
            };
            this.trigger_after(&id, delay);
        };
        match (policy, present) {
            (PullPolicy::Never, None) => {
                let msg =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.event(pod, fp, true, "ErrImageNeverPull", msg.clone());
                fail("ErrImageNeverPull", msg, self);
                None
            }
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(img)) => {
                self.event(
                    pod,
                    fp,
                    false,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                Some(img)
            }
            _ => {
                self.event(
                    pod,
                    fp.clone(),
                    false,
                    "Pulling",
                    format!("Pulling image \"{image}\""),
                );
                let t = Instant::now();
                let progress = {
                    let this = Arc::clone(self);
                    let (rt, name, image, pod) = (
                        Arc::clone(rt),
                        name.to_string(),
                        image.to_string(),
                        pod.clone(),
                    );
                    tokio::spawn(async move {
                        // Bounded by the pull: aborted when it ends.
                        loop {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let Some(p) = this.engine.images().pull_progress(&image) else {
                                continue;
                            };
                            {
                                let mut r = lock(&rt);
                                if let Some(c) = r.containers.get_mut(&name) {
                                    c.state = CState::Waiting {
                                        reason: "ContainerCreating".into(),
                                        message: Some(format!(
                                            "Pulling image \"{image}\": {} of {} blobs, {:.1} of {:.1} MB",
                                            p.blobs_done,
                                            p.blobs_total,
                                            p.bytes_done as f64 / 1e6,
                                            p.bytes_total as f64 / 1e6
                                        )),
                                    };
                                }
                            }
                            let ns = pod
                                .metadata
                                .namespace
                                .clone()
                                .unwrap_or_else(|| "default".into());
                            let api: Api<Pod> = Api::namespaced(this.client.clone(), &ns);
                            let _ = this.write_status(&pod, &api, &rt).await;
                        }
                    })
                };
                let secrets = self.pull_secrets(pod, fp.clone()).await;
                let res = self
                    .engine
                    .images()
                    .ensure_with(image, policy, &secrets)
                    .await;
                progress.abort();
                match res {
                    Ok(report) => {
                        let size: u64 = report
                            .image
                            .layers
                            .iter()
                            .map(|l| l.size.max(0) as u64)
                            .sum();
                        self.event(
                            pod,
                            fp,
                            false,
                            "Pulled",
                            format!(
                                "Successfully pulled image \"{image}\" in {:.3}s. Image size: {size} bytes.",
                                t.elapsed().as_secs_f64()
                            ),
                        );
                        Some(report.image)
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        self.event(
                            pod,
                            fp.clone(),
                            true,
                            "Failed",
                            format!("Failed to pull image \"{image}\": {msg}"),
                        );
                        self.event(pod, fp, true, "Failed", "Error: ErrImagePull".into());
                        fail(waiting_reason(&e), msg, self);
                        None
                    }
                }
            }
        }
    }

    /// The registry credentials of the Pod's `imagePullSecrets` (Secrets of type
    /// `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg`), in order. Like kubelet,
    /// a Secret that cannot be read or used is reported and the pull goes on without it.
    async fn pull_secrets(&self, pod: &Pod, fp: Option<String>) -> crate::image::PullSecrets {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        let mut out = crate::image::PullSecrets::default();
        let mut unusable = Vec::new();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        for name in names {
            let secret = api.get_opt(&name).await.ok().flatten();
            match secret.as_ref().and_then(crate::refs::docker_auths) {
                Some(auths) => out.0.push((format!("secret {ns}/{name}"), auths)),
                None => unusable.push(name),
            }
        }
        if !unusable.is_empty() {
            self.event(
                pod,
                fp,
                true,
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    unusable.join(", ")
                ),
            );
        }
        out
    }

    fn target(&self, spec: &SandboxSpec, name: &str) -> Target<'_> {
        Target {
            engine: &self.engine,
            id: spec.id.clone(),
            container: name.to_string(),
            pod_ip: self.engine.pod_ip(&spec.id).ok().flatten(),
            netns: self.engine.netns_path(&spec.id),
        }
    }

    /// Start the exit watch and the probes of a running container.
    fn start_tasks(
        self: &Arc<Self>,
        pod: &Pod,
        spec: &SandboxSpec,
        rt: &Shared<PodRt>,
        name: &str,
        checks: ContainerChecks,
    ) {
        let id = spec.id.clone();
        let mut handles = Vec::new();
        {
            let (this, id, name) = (Arc::clone(self), id.clone(), name.to_string());
            handles.push(
                tokio::spawn(async move {
                    // Until the process exits (checked hourly so a lost wake-up cannot hide it).
                    while let Err(NodeError::Timeout { .. }) = this
                        .engine
                        .wait_container(&id, &name, Duration::from_secs(3600))
                        .await
                    {}
                    this.trigger(&id);
                })
                .abort_handle(),
            );
        }
        if checks.has_probes() {
            let this = Arc::clone(self);
            let (pod, rt, name, grace) = (
                pod.clone(),
                Arc::clone(rt),
                name.to_string(),
                spec.termination_grace,
            );
            handles.push(
                tokio::spawn(async move {
                    this.probe_loop(pod, id, rt, name, checks, grace).await;
                })
                .abort_handle(),
            );
        }
        if let Some(c) = lock(rt).containers.get_mut(name) {
            c.stop_tasks();
            c.tasks = handles;
        }
    }

    /// The probes of one running container: startup first, then liveness and readiness.
    async fn probe_loop(
        self: Arc<Self>,
        pod: Pod,
        id: String,
        rt: Shared<PodRt>,
        name: String,
        checks: ContainerChecks,
        grace: Duration,
    ) {
        let since = lock(&rt)
            .containers
            .get(&name)
            .and_then(|c| c.running_since)
            .unwrap_or_else(Instant::now);
        let role = lock(&rt)
            .containers
            .get(&name)
            .map(|c| c.role)
            .unwrap_or(Role::Regular);
        let fp = Some(field_path(role, &name));
        let target = Target {
            engine: &self.engine,
            id: id.clone(),
            container: name.clone(),
            pod_ip: self.engine.pod_ip(&id).ok().flatten(),
            netns: self.engine.netns_path(&id),
        };
        if let Some(sp) = &checks.startup {
            sleep_until(since + sp.initial_delay).await;
            let mut fails = 0;
            loop {
                match probe::run(&target, &sp.action, sp.timeout).await {
                    Ok(()) => break,
                    Err(msg) => {
                        fails += 1;
                        self.event(
                            &pod,
                            fp.clone(),
                            true,
                            "Unhealthy",
                            format!("Startup probe failed: {msg}"),
                        );
                        if fails >= sp.failure_threshold {
                            self.event(
                                &pod,
                                fp.clone(),
                                false,
                                "Killing",
                                format!("Container {name} failed startup probe, will be restarted"),
                            );
                            self.kill(&target, &checks, sp, grace).await;
                            return;
                        }
                    }
                }
                tokio::time::sleep(sp.period).await;
            }
        }
        {
            let mut r = lock(&rt);
            if let Some(c) = r.containers.get_mut(&name) {
                c.started = true;
                if checks.readiness.is_none() {
                    c.ready = true;
                }
            }
        }
        self.trigger(&id);
        let liveness = async {
            let Some(lp) = &checks.liveness else {
                return std::future::pending::<()>().await;
            };
            sleep_until(since + lp.initial_delay).await;
            let mut fails = 0;
            loop {
                match probe::run(&target, &lp.action, lp.timeout).await {
                    Ok(()) => fails = 0,
                    Err(msg) => {
                        fails += 1;
                        self.event(
                            &pod,
                            fp.clone(),
                            true,
                            "Unhealthy",
                            format!("Liveness probe failed: {msg}"),
                        );
                        if fails >= lp.failure_threshold {
                            self.event(
                                &pod,
                                fp.clone(),
                                false,
                                "Killing",
                                format!(
                                    "Container {name} failed liveness probe, will be restarted"
                                ),
                            );
                            self.kill(&target, &checks, lp, grace).await;
                            return;
                        }
                    }
                }
                tokio::time::sleep(lp.period).await;
            }
        };
        let readiness = async {
            let Some(rp) = &checks.readiness else {
                return std::future::pending::<()>().await;
            };
            sleep_until(since + rp.initial_delay).await;
            let (mut ok, mut bad) = (0u32, 0u32);
            loop {
                let res = probe::run(&target, &rp.action, rp.timeout).await;
                let was = lock(&rt).containers.get(&name).is_some_and(|c| c.ready);
                let now_ready = match res {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if ok >= rp.success_threshold {
                            true
                        } else {
                            was
                        }
                    }
                    Err(msg) => {
                        bad += 1;
                        ok = 0;
                        self.event(
                            &pod,
                            fp.clone(),
                            true,
                            "Unhealthy",
                            format!("Readiness probe failed: {msg}"),
                        );
                        if bad >= rp.failure_threshold {
                            false
                        } else {
                            was
                        }
                    }
                };
                if now_ready != was {
                    if let Some(c) = lock(&rt).containers.get_mut(&name) {
                        c.ready = now_ready;
                    }
                    self.trigger(&id);
                }
                tokio::time::sleep(rp.period).await;
            }
        };
        tokio::select! {
            _ = liveness => {}
            _ = readiness => {}
        }
    }

    /// Kill a container that failed a probe: preStop hook, then stop within the grace period
    /// (the probe's own, else the Pod's). Its exit restarts it per restartPolicy.
    async fn kill(
        &self,
        target: &Target<'_>,
        checks: &ContainerChecks,
        p: &ProbeSpec,
        grace: Duration,
    ) {
        let grace = p.termination_grace.unwrap_or(grace);
        let t = Instant::now();
        if let Some(hook) = &checks.pre_stop {
            let _ = tokio::time::timeout(grace, probe::run(target, hook, grace)).await;
        }
        let left = grace.saturating_sub(t.elapsed());
        if let Err(e) = self
            .engine
            .stop_container(&target.id, &target.container, left)
            .await
        {
            tracing::warn!(sandbox = %target.id, container = %target.container, error = %e, "stopping a container that failed its probe failed");
        }
    }

    /// Stop every container of a Pod that still runs (preStop hooks first), within `grace`.
    async fn stop_all(&self, pod: &Pod, rt: &Shared<PodRt>, grace: Duration) {
        let id = uid(pod);
        let Ok(spec) = self.engine.spec(&id) else {
            return;
        };
        let running: Vec<(String, Role)> = {
            let mut r = lock(rt);
            let mut v = Vec::new();
            for c in r.containers.values_mut() {
                c.stop_tasks();
                if matches!(c.state, CState::Running { .. }) {
                    v.push((c.name.clone(), c.role));
                }
            }
            v
        };
        if running.is_empty() {
            return;
        }
        let checks = self.checks_of(pod).map(|c| c.1).unwrap_or_default();
        let t = Instant::now();
        let hooks = running.iter().filter_map(|(n, role)| {
            let hook = checks.get(n)?.pre_stop.clone()?;
            let target = self.target(&spec, n);
            let fp = Some(field_path(*role, n));
            Some(async move {
                if let Ok(Err(msg)) =
                    tokio::time::timeout(grace, probe::run(&target, &hook, grace)).await
                {
                    self.event(
                        pod,
                        fp,
                        true,
                        "FailedPreStopHook",
                        format!("PreStopHook failed: {msg}"),
                    );
                }
            })
        });
        futures::future::join_all(hooks).await;
        for (n, role) in &running {
            self.event(
                pod,
                Some(field_path(*role, n)),
                false,
                "Killing",
                format!("Stopping container {n}"),
            );
        }
        let left = grace.saturating_sub(t.elapsed());
        // Regular containers first, then sidecars, as the engine's stop does.
        if let Err(e) = self.engine.stop(&id, left).await {
            tracing::warn!(sandbox = %id, error = %e, "stopping the pod's containers failed");
        }
        let mut r = lock(rt);
        for (n, _) in &running {
            if let Some(c) = r.containers.get_mut(n) {
                let code = self
                    .engine
                    .container_exit(&id, n)
                    .ok()
                    .flatten()
                    .flatten()
                    .unwrap_or(137);
                let started_at = match &c.state {
                    CState::Running { started_at } => Some(started_at.clone()),
                    _ => None,
                };
                c.state = CState::Terminated {
                    code,
                    reason: if code == 0 { "Completed" } else { "Error" }.into(),
                    message: None,
                    started_at,
                    finished_at: now(),
                };
                c.ready = false;
                c.started = false;
            }
        }
    }

    /// A Pod being deleted: stop and remove its sandbox, then finish the deletion.
    async fn terminate(self: &Arc<Self>, pod: &Pod, api: &Api<Pod>) -> Result<(), kube::Error> {
        let id = uid(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        if self.engine.contains(&id) {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .clamp(0, 300);
            let rt = self.pod_rt(pod);
            // The containers may be running even if the memory is fresh (agent restart).
            {
                let mut r = lock(&rt);
                for n in self.engine.containers(&id).unwrap_or_default() {
                    if self.engine.container_exit(&id, &n).ok().flatten().is_none()
                        && let Some(c) = r.containers.get_mut(&n)
                        && !matches!(c.state, CState::Running { .. })
                    {
                        c.state = CState::Running { started_at: now() };
                    }
                }
            }
            self.stop_all(pod, &rt, Duration::from_secs(grace as u64))
                .await;
            if let Err(e) = self.engine.remove(&id).await {
                tracing::warn!(pod = %name, error = %e, "removing sandbox failed; will retry");
                return Ok(());
            }
        }
        self.forget(&id);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The Pod cannot be (or has not yet been) given a sandbox: waiting containers with the
    /// reason, retried on the next resync.
    async fn report_failure(
        self: &Arc<Self>,
        pod: &Pod,
        api: &Api<Pod>,
        rt: &Shared<PodRt>,
        err: NodeError,
    ) -> Result<(), kube::Error> {
        let message = err.to_string();
        let reason = waiting_reason(&err);
        let first = {
            let mut r = lock(rt);
            let first = r.last_error.as_deref() != Some(message.as_str());
            r.last_error = Some(message.clone());
            for c in r.containers.values_mut() {
                c.state = CState::Waiting {
                    reason: reason.into(),
                    message: Some(message.clone()),
                };
                c.ready = false;
            }
            first
        };
        if first {
            tracing::warn!(pod = ?pod.metadata.name, error = %message, "starting the sandbox failed");
            self.event(pod, None, true, "Failed", format!("Error: {message}"));
        }
        self.write_status(pod, api, rt).await
    }

    /// Write the status if it changed since the last write.
    async fn write_status(
        &self,
        pod: &Pod,
        api: &Api<Pod>,
        rt: &Shared<PodRt>,
    ) -> Result<(), kube::Error> {
        let latest = lock(&self.store)
            .get(&uid(pod))
            .cloned()
            .unwrap_or_else(|| pod.clone());
        let gates: Vec<(String, bool)> = latest
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .into_iter()
            .flatten()
            .map(|g| {
                let ok = latest
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == g.condition_type && c.status == "True");
                (g.condition_type.clone(), ok)
            })
            .collect();
        let status = {
            let mut r = lock(rt);
            r.update_conditions(&gates);
            let mut st = r.status();
            // Conditions owned by others (readiness gates) stay.
            let ours: HashSet<String> = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["type"].as_str().map(str::to_string))
                .collect();
            for c in latest
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
            {
                if !ours.contains(&c.type_)
                    && let Some(a) = st["conditions"].as_array_mut()
                {
                    a.push(serde_json::to_value(c).unwrap_or_default());
                }
            }
            if r.last_written.as_ref() == Some(&st) {
                return Ok(());
            }
            r.last_written = Some(st.clone());
            st
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                // Write again next time.
                lock(rt).last_written = None;
                Err(e)
            }
        }
    }
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

/// The container `waiting.reason` kubelet would report for a failure to start.
/// A container status's `imageID`: the reference without a digest, `@`, the manifest digest.
fn image_id(image: &crate::image::Image) -> String {
    format!(
        "{}@{}",
        image
            .reference
            .split('@')
            .next()
            .unwrap_or(&image.reference),
        image.manifest_digest
    )
}

fn waiting_reason(err: &NodeError) -> &'static str {
    match err {
        NodeError::ImageNotPresent { .. } => "ErrImageNeverPull",
        NodeError::InvalidReference { .. } => "InvalidImageName",
        NodeError::Pull { .. } | NodeError::DigestMismatch { .. } | NodeError::BadImage { .. } => {
            "ErrImagePull"
        }
        NodeError::CommandNotFound { .. } => "RunContainerError",
        NodeError::Unsupported { .. }
        | NodeError::InvalidSpec { .. }
        | NodeError::UnknownHandler { .. }
        | NodeError::HandlerUnavailable { .. }
        | NodeError::Reference { .. } => "CreateContainerConfigError",
        _ => "CreateContainerError",
    }
}
