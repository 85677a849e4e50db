//! The node agent loop: what kubelet does for a cluster node, for this machine. It registers the
//! `Node`, watches the Pods bound to it and drives the [`SandboxEngine`] so that each Pod becomes
//! a running sandbox, and reports back through the Pod's status.
//!
//! Per Pod, on every change and on a periodic resync:
//! 1. a Pod being deleted: stop its sandbox within the grace period, remove it, then finish the
//!    deletion (`gracePeriodSeconds=0`), as kubelet does;
//! 2. a Pod without a sandbox: create and start one, then write phase `Running`, the pod IP,
//!    the conditions and the container status; a failure is written as a waiting container with
//!    a reason and message, and retried on the next resync;
//! 3. a Pod whose sandbox exited: `restartPolicy` Always (or OnFailure after a failure) starts
//!    a new one and counts the restart; otherwise the phase becomes `Succeeded` or `Failed` with
//!    the exit code.
//!
//! On start, sandboxes left by a previous run are re-adopted by Pod UID; those whose Pod no longer
//! exists are removed.
//!
//! With a bridge network the agent also enforces NetworkPolicies: it watches NetworkPolicies and
//! Namespaces, keeps the [`PolicyEnforcer`] up to date with them and with the Pods' labels, and
//! installs it as the engine's network hook so that a sandbox's rules are in place before it
//! starts (see [`crate::firewall`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::engine::{Phase, SandboxEngine};
use crate::error::NodeError;
use crate::firewall::{PodMeta, PolicyEnforcer};
use crate::spec::SandboxSpec;

/// How often every Pod is re-examined even without a change (exits, retries).
pub const RESYNC: Duration = Duration::from_secs(2);

/// Drives the engine from the Pods bound to `node_name`.
pub struct NodeAgent {
    client: Client,
    engine: Arc<SandboxEngine>,
    node_name: String,
    busy: tokio::sync::Mutex<HashSet<String>>,
    enforcer: Option<Arc<PolicyEnforcer>>,
    stopped: std::sync::atomic::AtomicBool,
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn now() -> String {
    Timestamp::now().to_string()
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn container_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn condition(type_: &str, status: bool, reason: Option<&str>, message: Option<&str>) -> Value {
    json!({"type": type_, "status": if status {"True"} else {"False"}, "lastTransitionTime": now(),
           "reason": reason, "message": message})
}

impl NodeAgent {
    /// An agent for `node_name`.
    pub fn new(
        client: Client,
        engine: Arc<SandboxEngine>,
        node_name: impl Into<String>,
    ) -> Arc<Self> {
        let enforcer = engine.network().and_then(|cni| {
            match PolicyEnforcer::new(cni.config()) {
                Ok(e) => {
                    if let Err(reason) = e.available() {
                        tracing::warn!(%reason, "NetworkPolicies cannot be enforced on this host; pods that a policy selects will not start");
                    }
                    Some(Arc::new(e))
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
        Arc::new(Self {
            client,
            engine,
            node_name: node_name.into(),
            busy: Default::default(),
            enforcer,
            stopped: Default::default(),
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
        {
            let enf = Arc::clone(enf);
            tokio::spawn(async move {
                if let Err(e) = enf.sync().await {
                    tracing::error!(error = %e, "applying NetworkPolicies failed");
                }
            });
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
        let listed = pods.list(&lp).await?.items;
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
        let store: Arc<std::sync::Mutex<BTreeMap<String, Pod>>> = Default::default();
        let resync = {
            let (this, store) = (Arc::clone(&self), Arc::clone(&store));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RESYNC).await;
                    let pods: Vec<Pod> = store
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    for pod in pods {
                        Arc::clone(&this).spawn_sync(pod);
                    }
                }
            })
        };
        // Background tasks end with this one, also when it is aborted.
        let mut tasks = AbortOnDrop(vec![resync]);
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
                Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                    store
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(uid(&pod), pod.clone());
                    if let Some(enf) = &self.enforcer
                        && enf.set_pod(&uid(&pod), PodMeta::of(&pod))
                        && self.engine.list().contains(&uid(&pod))
                    {
                        self.resync_firewall();
                    }
                    Arc::clone(&self).spawn_sync(pod);
                }
                Ok(Event::Delete(pod)) => {
                    store
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&uid(&pod));
                    let this = Arc::clone(&self);
                    tokio::spawn(async move {
                        if this.engine.list().contains(&uid(&pod)) {
                            let _ = this.engine.remove(&uid(&pod)).await;
                        }
                        if let Some(enf) = &this.enforcer
                            && enf.remove_pod(&uid(&pod))
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

    /// Stop acting on Pods: no sandbox is started or restarted afterwards (syncs in flight
    /// finish). For shutdown and tests; abort the task running [`NodeAgent::run`] too.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs [`NodeAgent::sync`] for `pod` unless a sync of the same Pod is already running.
    fn spawn_sync(self: Arc<Self>, pod: Pod) {
        if self.is_stopped() {
            return;
        }
        tokio::spawn(async move {
            let id = uid(&pod);
            if !self.busy.lock().await.insert(id.clone()) {
                return;
            }
            if let Err(e) = self.sync(&pod).await {
                tracing::warn!(pod = ?pod.metadata.name, error = %e, "syncing pod failed");
            }
            self.busy.lock().await.remove(&id);
        });
    }

    async fn sync(&self, pod: &Pod) -> Result<(), kube::Error> {
        let id = uid(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let known = self.engine.list().contains(&id);

        if pod.metadata.deletion_timestamp.is_some() {
            if known {
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
                if let Err(e) = self
                    .engine
                    .stop(&id, Duration::from_secs(grace as u64))
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "stop before removal failed");
                }
                if let Err(e) = self.engine.remove(&id).await {
                    tracing::warn!(pod = %name, error = %e, "removing sandbox failed; will retry");
                    return Ok(());
                }
            }
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            return match pods.delete(&name, &dp).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            };
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Ok(());
        }
        let restarts = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map_or(0, |c| c.restart_count);

        if !known {
            return self.start(pod, &pods, restarts).await;
        }
        let state = match self.engine.state(&id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pod = %name, error = %e, "reading sandbox state failed");
                return Ok(());
            }
        };
        if state.phase != Phase::Exited {
            // Running (or paused): make sure the status says so (it may predate a restart of
            // the agent).
            if phase != "Running" {
                return self
                    .report_running(pod, &pods, restarts, state.pod_ip.map(|ip| ip.to_string()))
                    .await;
            }
            return Ok(());
        }
        let code = state.exit_code.unwrap_or(-1);
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
        if restart {
            if let Err(e) = self.engine.remove(&id).await {
                tracing::warn!(pod = %name, error = %e, "removing exited sandbox failed");
                return Ok(());
            }
            // Back off a little on repeated crashes, as kubelet's CrashLoopBackOff does.
            tokio::time::sleep(Duration::from_millis((200 * (1 << restarts.min(6))) as u64)).await;
            return self.start(pod, &pods, restarts + 1).await;
        }
        let (pod_phase, reason) = if code == 0 {
            ("Succeeded", "Completed")
        } else {
            ("Failed", "Error")
        };
        let status = json!({"status": {
            "phase": pod_phase,
            "conditions": [condition("Ready", false, Some("PodCompleted"), None), condition("ContainersReady", false, Some("PodCompleted"), None)],
            "containerStatuses": [{"name": container_name(pod), "ready": false, "restartCount": restarts, "image": image_of(pod), "imageID": "",
                "state": {"terminated": {"exitCode": code, "reason": reason, "finishedAt": now()}}}]
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
        Ok(())
    }

    async fn start(&self, pod: &Pod, pods: &Api<Pod>, restarts: i32) -> Result<(), kube::Error> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if self.is_stopped() {
            return Ok(());
        }
        if let Some(enf) = &self.enforcer {
            // The engine's network hook needs the labels before the sandbox gets its address.
            enf.set_pod(&uid(pod), PodMeta::of(pod));
        }
        let result = match SandboxSpec::from_pod(pod) {
            Ok(spec) if !spec.init_containers.is_empty() => Err(NodeError::Unsupported {
                sandbox: spec.display_name(),
                field: "spec.initContainers".into(),
                reason: "init containers are not run by this node agent yet".into(),
            }),
            Ok(spec) => self.engine.run(spec).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(handle) => {
                self.report_running(pod, pods, restarts, handle.pod_ip.map(|ip| ip.to_string()))
                    .await
            }
            Err(err) => {
                tracing::warn!(pod = %name, error = %err, "starting the sandbox failed");
                let message = err.to_string();
                let reason = waiting_reason(&err);
                let status = json!({"status": {
                    "phase": "Pending",
                    "conditions": [condition("PodScheduled", true, None, None), condition("Ready", false, Some("ContainersNotReady"), Some(&message)), condition("ContainersReady", false, Some("ContainersNotReady"), Some(&message))],
                    "containerStatuses": [{"name": container_name(pod), "ready": false, "restartCount": restarts, "image": image_of(pod), "imageID": "",
                        "state": {"waiting": {"reason": reason, "message": message}}}]
                }});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                Ok(())
            }
        }
    }

    async fn report_running(
        &self,
        pod: &Pod,
        pods: &Api<Pod>,
        restarts: i32,
        ip: Option<String>,
    ) -> Result<(), kube::Error> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let started = now();
        let ips: Vec<Value> = ip.iter().map(|ip| json!({"ip": ip})).collect();
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": ips,
            "startTime": started,
            "conditions": [condition("PodScheduled", true, None, None), condition("Initialized", true, None, None),
                           condition("ContainersReady", true, None, None), condition("Ready", true, None, None)],
            "containerStatuses": [{"name": container_name(pod), "ready": true, "started": true, "restartCount": restarts,
                "image": image_of(pod), "imageID": "", "containerID": format!("agent-sandbox://{}", uid(pod)),
                "state": {"running": {"startedAt": started}}}]
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
        Ok(())
    }
}

fn image_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The container `waiting.reason` kubelet would report for a failure to start.
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
        | NodeError::HandlerUnavailable { .. } => "CreateContainerConfigError",
        _ => "CreateContainerError",
    }
}
