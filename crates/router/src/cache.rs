//! The pod-IP cache: a watch of the Pods that back sandboxes (label
//! `agents.x-k8s.io/sandbox-name-hash`), indexed so that a request never costs an API call.
//!
//! Lookup order (upstream's): by UID (the pod's or its owning Sandbox's), then by
//! namespace/name (the pod's name, or its owning Sandbox's name). Only Ready pods with an IP are
//! routable, and warm-pool pods that no claim has adopted yet (they still carry
//! `agents.x-k8s.io/warm-pool-sandbox`) are left out of the name index, so a guessed name cannot
//! reach an unclaimed sandbox.
//!
//! A paused sandbox (this project's pause extension: its Pod carries the annotation
//! `agent-sandbox-rs.github.io/paused: "true"`, or the node still reports it frozen) is known
//! as paused, so that the router answers at once with an error that says to unpause it instead
//! of forwarding to processes that cannot answer.
//!
//! Each record also carries its Sandbox's name and idle policy (`agent_sandbox_api::idle`), so
//! that [`crate::idle`] finds the sandboxes it watches for inactivity without an API call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use agent_sandbox_api::constants::{extensions as ext, labels};
use agent_sandbox_api::idle::IdlePolicy;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    ip: IpAddr,
    names: Vec<(String, String)>,
    uids: Vec<String>,
    unclaimed_warm: bool,
    paused: bool,
    /// The Sandbox that owns the Pod (the Pod's own name when it has no Sandbox owner).
    sandbox: String,
    /// The idle policy of the Pod's annotations; `None` without one (or when it does not
    /// parse: admission refuses such values, so only a Pod made around it has one).
    idle: Option<IdlePolicy>,
}

/// A sandbox the router knows, as [`PodCache::sandbox_at`] and [`PodCache::idle_candidates`]
/// return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxAt {
    /// Its namespace.
    pub namespace: String,
    /// The Sandbox's name.
    pub name: String,
    /// Its Pod's address.
    pub ip: IpAddr,
    /// Asked to pause, or still frozen.
    pub paused: bool,
    /// Its idle policy, if any.
    pub idle: Option<IdlePolicy>,
}

#[derive(Default)]
struct Index {
    /// Routable pods by (namespace, pod name).
    pods: HashMap<(String, String), Record>,
    by_name: HashMap<(String, String), IpAddr>,
    by_uid: HashMap<String, IpAddr>,
    /// Which pod holds an address.
    by_ip: HashMap<IpAddr, (String, String)>,
}

impl Index {
    fn remove(&mut self, key: &(String, String)) {
        if let Some(old) = self.pods.remove(key) {
            if self.by_ip.get(&old.ip) == Some(key) {
                self.by_ip.remove(&old.ip);
            }
            for n in &old.names {
                self.by_name.remove(n);
            }
            for u in &old.uids {
                self.by_uid.remove(u);
            }
        }
    }

    fn upsert(&mut self, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = (ns.clone(), name.clone());
        self.remove(&key);
        let Some(record) = record_of(pod, &ns, &name) else {
            return;
        };
        if !record.unclaimed_warm {
            for n in &record.names {
                self.by_name.insert(n.clone(), record.ip);
            }
        }
        for u in &record.uids {
            self.by_uid.insert(u.clone(), record.ip);
        }
        self.by_ip.insert(record.ip, key.clone());
        self.pods.insert(key, record);
    }
}

/// The routing record of a pod, if it is routable (Ready, with an IP, not being deleted).
fn record_of(pod: &Pod, ns: &str, name: &str) -> Option<Record> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    if !ready {
        return None;
    }
    let mut names = vec![(ns.to_owned(), name.to_owned())];
    let mut uids: Vec<String> = pod.metadata.uid.iter().cloned().collect();
    let mut sandbox = name.to_owned();
    if let Some(owner) = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Sandbox")
    {
        if owner.name != name {
            names.push((ns.to_owned(), owner.name.clone()));
        }
        uids.push(owner.uid.clone());
        sandbox.clone_from(&owner.name);
    }
    let unclaimed_warm = pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(labels::WARM_POOL_SANDBOX));
    let paused = ext::asks_paused(pod.metadata.annotations.as_ref())
        || status
            .conditions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == ext::condition_types::POD_PAUSED && c.status == "True");
    let idle =
        IdlePolicy::from_annotations(pod.metadata.annotations.as_ref()).unwrap_or_else(|e| {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "idle policy ignored");
            None
        });
    Some(Record {
        ip,
        names,
        uids,
        unclaimed_warm,
        paused,
        sandbox,
        idle,
    })
}

/// A shared, watch-fed pod-IP cache.
#[derive(Clone, Default)]
pub struct PodCache {
    index: Arc<RwLock<Index>>,
    synced: Arc<tokio::sync::Notify>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
}

impl PodCache {
    /// An empty cache (fed by [`PodCache::run`] or, in tests, [`PodCache::apply`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the pod at `ip` serves the sandbox named `namespace/name` (or with `uid`):
    /// `None` when the cache knows no pod at that address (it may be newer than the cache).
    /// Used to refuse an `X-Sandbox-Pod-IP` that would route a request into another sandbox.
    /// A warm-pool pod no claim has adopted answers only to its uid, as in [`PodCache::resolve`];
    /// to its name it answers `None`, as an address not known yet.
    pub fn ip_serves(
        &self,
        ip: IpAddr,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Option<bool> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let record = index.pods.get(index.by_ip.get(&ip)?)?;
        if uid.is_some_and(|u| record.uids.iter().any(|r| r == u)) {
            return Some(true);
        }
        let named = record
            .names
            .iter()
            .any(|(ns, n)| ns == namespace && n == name);
        if named && record.unclaimed_warm {
            // Not routable by name yet: a claim that just adopted it has its Pod relabelled a
            // moment later, which the cache has not seen (the caller waits for it).
            return None;
        }
        Some(named)
    }

    /// The IP for a sandbox: by UID first, then by namespace/name.
    pub fn resolve(&self, namespace: &str, name: &str, uid: Option<&str>) -> Option<IpAddr> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        uid.and_then(|u| index.by_uid.get(u).copied()).or_else(|| {
            index
                .by_name
                .get(&(namespace.to_owned(), name.to_owned()))
                .copied()
        })
    }

    /// Whether the pod at `ip` is paused (asked to pause, or still frozen).
    pub fn is_paused(&self, ip: IpAddr) -> bool {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .by_ip
            .get(&ip)
            .and_then(|key| index.pods.get(key))
            .is_some_and(|r| r.paused)
    }

    /// The sandbox whose Pod is at `ip`.
    pub fn sandbox_at(&self, ip: IpAddr) -> Option<SandboxAt> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let key = index.by_ip.get(&ip)?;
        let r = index.pods.get(key)?;
        Some(SandboxAt {
            namespace: key.0.clone(),
            name: r.sandbox.clone(),
            ip,
            paused: r.paused,
            idle: r.idle,
        })
    }

    /// Every claimed (or standalone) sandbox with an idle policy; unclaimed warm-pool Pods wait
    /// in their pool and are never idle.
    pub fn idle_candidates(&self) -> Vec<SandboxAt> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .pods
            .iter()
            .filter(|(_, r)| r.idle.is_some() && !r.unclaimed_warm)
            .map(|((ns, _), r)| SandboxAt {
                namespace: ns.clone(),
                name: r.sandbox.clone(),
                ip: r.ip,
                paused: r.paused,
                idle: r.idle,
            })
            .collect()
    }

    /// Whether the first full list has been loaded.
    pub fn is_synced(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the first full list has been loaded.
    pub async fn synced(&self) {
        while !self.is_synced() {
            let notified = self.synced.notified();
            if self.is_synced() {
                return;
            }
            notified.await;
        }
    }

    /// A wait for the cache's next change, armed now: a change after this call and before the
    /// wait is not missed. Returns false when `deadline` comes first.
    pub fn next_change(
        &self,
        deadline: tokio::time::Instant,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let changed = Arc::clone(&self.changed);
        let mut armed = Box::pin(changed.notified_owned());
        armed.as_mut().enable();
        async move { tokio::time::timeout_at(deadline, armed).await.is_ok() }
    }

    /// Applies one pod (added or changed).
    pub fn apply(&self, pod: &Pod) {
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .upsert(pod);
        self.changed.notify_waiters();
    }

    /// Forgets one pod.
    pub fn delete(&self, pod: &Pod) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.changed.notify_waiters();
    }

    /// Watches sandbox Pods in every namespace and keeps the index current, relisting after
    /// errors with backoff. Runs until the task is dropped.
    pub async fn run(self, client: Client) {
        let pods: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().labels(labels::SANDBOX_NAME_HASH);
        let mut stream = watcher::watcher(pods, config).default_backoff().boxed();
        let mut relist: Option<Index> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => relist = Some(Index::default()),
                Ok(Event::InitApply(pod)) => {
                    if let Some(fresh) = relist.as_mut() {
                        fresh.upsert(&pod);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(fresh) = relist.take() {
                        *self.index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    }
                    self.ready.store(true, std::sync::atomic::Ordering::Release);
                    self.synced.notify_waiters();
                    self.changed.notify_waiters();
                }
                Ok(Event::Apply(pod)) => self.apply(&pod),
                Ok(Event::Delete(pod)) => self.delete(&pod),
                Err(err) => tracing::warn!(error = %err, "pod watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        name: &str,
        ip: &str,
        ready: bool,
        extra_labels: serde_json::Value,
        owner: Option<(&str, &str)>,
    ) -> Pod {
        let mut labels = json!({labels::SANDBOX_NAME_HASH: "h"});
        labels
            .as_object_mut()
            .unwrap()
            .extend(extra_labels.as_object().unwrap().clone());
        let owners = owner.map(|(n, u)| json!([{"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "name": n, "uid": u, "controller": true}]));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("pod-{name}"), "labels": labels, "ownerReferences": owners},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn resolves_by_uid_then_name() {
        let cache = PodCache::new();
        cache.apply(&pod(
            "sb",
            "10.0.0.1",
            true,
            json!({}),
            Some(("sb", "sb-uid")),
        ));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(cache.resolve("ns", "sb", None), Some(ip));
        assert_eq!(cache.resolve("other", "sb", None), None);
        assert_eq!(cache.resolve("ns", "zz", Some("sb-uid")), Some(ip));
        assert_eq!(cache.resolve("ns", "zz", Some("pod-sb")), Some(ip));
    }

    #[test]
    fn owner_sandbox_name_is_indexed_when_pod_name_differs() {
        let cache = PodCache::new();
        cache.apply(&pod(
            "sb-pod",
            "10.0.0.2",
            true,
            json!({}),
            Some(("sb", "u")),
        ));
        assert!(cache.resolve("ns", "sb", None).is_some());
        assert!(cache.resolve("ns", "sb-pod", None).is_some());
    }

    #[test]
    fn unready_and_deleted_pods_are_not_routable() {
        let cache = PodCache::new();
        let p = pod("sb", "10.0.0.3", true, json!({}), None);
        cache.apply(&p);
        assert!(cache.resolve("ns", "sb", None).is_some());
        cache.apply(&pod("sb", "10.0.0.3", false, json!({}), None));
        assert!(cache.resolve("ns", "sb", None).is_none());
        cache.apply(&p);
        cache.delete(&p);
        assert!(cache.resolve("ns", "sb", None).is_none());
    }

    #[test]
    fn sandboxes_with_an_idle_policy_are_candidates_unless_waiting_in_a_pool() {
        use agent_sandbox_api::idle::IDLE_TIMEOUT;
        let cache = PodCache::new();
        let mut p = pod("pod-a", "10.0.0.8", true, json!({}), Some(("sb-a", "ua")));
        cache.apply(&p);
        let ip: IpAddr = "10.0.0.8".parse().unwrap();
        let at = cache.sandbox_at(ip).unwrap();
        assert_eq!(
            (at.namespace.as_str(), at.name.as_str(), at.idle),
            ("ns", "sb-a", None)
        );
        assert!(cache.idle_candidates().is_empty());
        p.metadata.annotations = Some([(IDLE_TIMEOUT.to_string(), "30s".to_string())].into());
        cache.apply(&p);
        let c = cache.idle_candidates();
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].idle.unwrap().pause_after,
            Some(std::time::Duration::from_secs(30))
        );
        let warm = pod(
            "pod-w",
            "10.0.0.9",
            true,
            json!({labels::WARM_POOL_SANDBOX: "pool"}),
            None,
        );
        let mut warm = warm;
        warm.metadata.annotations = p.metadata.annotations.clone();
        cache.apply(&warm);
        assert_eq!(
            cache.idle_candidates().len(),
            1,
            "a warm-pool Pod is never idle"
        );
        // A value admission would refuse is ignored rather than acted on.
        p.metadata.annotations = Some([(IDLE_TIMEOUT.to_string(), "soon".to_string())].into());
        cache.apply(&p);
        assert!(cache.idle_candidates().is_empty());
    }

    #[test]
    fn paused_pods_are_known_as_paused_until_thawed() {
        let cache = PodCache::new();
        let mut p = pod("sb", "10.0.0.7", true, json!({}), Some(("sb", "u7")));
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        cache.apply(&p);
        assert!(!cache.is_paused(ip));
        p.metadata.annotations =
            Some([(ext::annotations::PAUSED.to_string(), "true".to_string())].into());
        cache.apply(&p);
        assert!(cache.is_paused(ip));
        // Unpause asked, the node has not thawed yet: still paused.
        p.metadata.annotations = None;
        let frozen = k8s_openapi::api::core::v1::PodCondition {
            type_: ext::condition_types::POD_PAUSED.into(),
            status: "True".into(),
            ..Default::default()
        };
        p.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .push(frozen);
        cache.apply(&p);
        assert!(cache.is_paused(ip));
        p.status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .pop();
        cache.apply(&p);
        assert!(!cache.is_paused(ip));
        cache.apply(&p);
        cache.delete(&p);
        assert!(!cache.is_paused(ip));
    }

    #[test]
    fn unclaimed_warm_pods_are_reachable_by_uid_only() {
        let cache = PodCache::new();
        cache.apply(&pod(
            "pool-abcde",
            "10.0.0.4",
            true,
            json!({labels::WARM_POOL_SANDBOX: "x"}),
            Some(("pool-abcde", "u4")),
        ));
        assert!(cache.resolve("ns", "pool-abcde", None).is_none());
        assert!(cache.resolve("ns", "pool-abcde", Some("u4")).is_some());
        // Nor does its address with a guessed name reach it.
        let ip: IpAddr = "10.0.0.4".parse().unwrap();
        assert_eq!(cache.ip_serves(ip, "ns", "pool-abcde", None), None);
        assert_eq!(
            cache.ip_serves(ip, "ns", "pool-abcde", Some("u4")),
            Some(true)
        );
        // Adoption removes the label: the name becomes routable.
        cache.apply(&pod(
            "pool-abcde",
            "10.0.0.4",
            true,
            json!({}),
            Some(("pool-abcde", "u4")),
        ));
        assert!(cache.resolve("ns", "pool-abcde", None).is_some());
    }

    #[test]
    fn a_pod_ip_header_is_checked_against_the_pod_that_holds_the_address() {
        let cache = PodCache::new();
        cache.apply(&pod("a", "10.0.0.5", true, json!({}), Some(("sb-a", "ua"))));
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(cache.ip_serves(ip, "ns", "sb-a", None), Some(true));
        assert_eq!(cache.ip_serves(ip, "ns", "x", Some("ua")), Some(true));
        assert_eq!(cache.ip_serves(ip, "ns", "sb-b", None), Some(false));
        assert_eq!(cache.ip_serves(ip, "other", "sb-a", None), Some(false));
        let unknown: IpAddr = "10.0.0.6".parse().unwrap();
        assert_eq!(cache.ip_serves(unknown, "ns", "sb-b", None), None);
        cache.delete(&pod("a", "10.0.0.5", true, json!({}), Some(("sb-a", "ua"))));
        assert_eq!(cache.ip_serves(ip, "ns", "sb-b", None), None);
    }
}
