//! Idle sandboxes: the traffic the router forwards per sandbox, the pause or suspension of a
//! sandbox idle past its policy (`agent_sandbox_api::idle`), and the resume of one on its next
//! request, which waits (within its timeout) and is then forwarded.
//!
//! One owner acts, [`Idle`]: every [`SWEEP`] it lists the sandboxes with a policy from the pod
//! cache, computes which are due from the [`Activity`] it recorded (no I/O), asks each due
//! sandbox's sandboxd about the activity the router cannot see (clients connected to the Pod
//! directly, a terminal), and only then writes through [`Lifecycle`]. A pause is written as the
//! annotations `paused` and `idle-paused` on the Sandbox, a suspension as `operatingMode:
//! Suspended` with `idle-suspended`; the markers are how a later request knows it may undo them
//! (a person's pause, without the marker, is never undone by traffic, nor escalated). A
//! deletion deletes the Sandbox, or its claim when a claim owns it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sandbox_api::constants::extensions::annotations::PAUSED;
use agent_sandbox_api::constants::extensions::asks_paused;
use agent_sandbox_api::idle::{IDLE_PAUSED, IDLE_SUSPENDED, IdleAction};
use agent_sandbox_api::v1beta1::{OperatingMode, Sandbox, SandboxClaim};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::cache::{PodCache, SandboxAt};
use crate::metrics::{IdleLabels, Metrics};

/// How often the sandboxes are looked at.
pub const SWEEP: Duration = Duration::from_secs(1);

/// After acting on a sandbox, how long before acting on it again (the cache shows the change a
/// moment after the write).
const SETTLE: Duration = Duration::from_secs(5);

/// The port of sandboxd's `/v2` API inside a sandbox.
const SANDBOXD_PORT: u16 = crate::target::DEFAULT_PORT;

/// A sandbox: (namespace, Sandbox name).
pub type Key = (String, String);

#[derive(Debug)]
struct Entry {
    last: Instant,
    open: u32,
}

/// The traffic the router forwarded, per sandbox: when the last request ended and how many are
/// open (a streamed response or an upgraded connection counts until it ends).
#[derive(Debug, Default)]
pub struct Activity {
    entries: Mutex<HashMap<Key, Entry>>,
}

/// One request in flight to a sandbox; dropping it ends the request.
#[derive(Debug)]
pub struct Busy {
    activity: Arc<Activity>,
    key: Key,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut entries = self.activity.lock();
        if let Some(e) = entries.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
            e.last = Instant::now();
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a request to `key` in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>, key: Key) -> Busy {
        let mut entries = self.lock();
        let e = entries.entry(key.clone()).or_insert(Entry {
            last: Instant::now(),
            open: 0,
        });
        e.open += 1;
        Busy {
            activity: Arc::clone(self),
            key,
        }
    }

    /// How long `key` has been idle at `now`: `None` while a request is in flight. A sandbox not
    /// seen before starts its idle time now (after a restart of the router, every sandbox gets
    /// its whole idle period again).
    pub fn idle_for(&self, key: &Key, now: Instant) -> Option<Duration> {
        let mut entries = self.lock();
        let e = entries
            .entry(key.clone())
            .or_insert(Entry { last: now, open: 0 });
        (e.open == 0).then(|| now.saturating_duration_since(e.last))
    }

    /// Records activity at `at` seen elsewhere (by sandboxd).
    pub fn saw(&self, key: &Key, at: Instant) {
        if let Some(e) = self.lock().get_mut(key)
            && at > e.last
        {
            e.last = at;
        }
    }

    /// Forgets the sandboxes `keep` does not keep (deleted, or suspended with nothing open).
    pub fn retain(&self, keep: impl Fn(&Key) -> bool) {
        self.lock().retain(|k, e| e.open > 0 || keep(k));
    }
}

/// A sandbox due for an idle action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The sandbox.
    pub sandbox: SandboxAt,
    /// What to do.
    pub action: IdleAction,
    /// How long it has been idle, as the router saw it.
    pub idle: Duration,
}

/// The sandboxes of `candidates` due for an action at `now` (no I/O).
pub fn plan(candidates: Vec<SandboxAt>, activity: &Activity, now: Instant) -> Vec<Due> {
    candidates
        .into_iter()
        .filter_map(|sandbox| {
            let policy = sandbox.idle?;
            let key = (sandbox.namespace.clone(), sandbox.name.clone());
            let idle = activity.idle_for(&key, now)?;
            let action = policy.due(idle, sandbox.paused)?;
            Some(Due {
                sandbox,
                action,
                idle,
            })
        })
        .collect()
}

/// What a request found when it asked to wake a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// It was paused for being idle; the pause is being undone.
    Unpausing,
    /// It was suspended for being idle; it is being resumed.
    Resuming,
    /// It was not stopped for being idle (or does not exist): nothing done.
    NotIdle,
}

/// Whether `sb` is paused by a person (paused without the router's marker): left alone by
/// every idle action.
fn paused_by_a_person(sb: &Sandbox) -> bool {
    let ann = sb.metadata.annotations.as_ref();
    asks_paused(ann) && !ann.is_some_and(|a| a.contains_key(IDLE_PAUSED))
}

/// The writes of idle actions, on Sandboxes.
#[derive(Clone)]
pub struct Lifecycle {
    client: Client,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

impl Lifecycle {
    /// Writes through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api(&self, namespace: &str) -> Api<Sandbox> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn merge(
        &self,
        namespace: &str,
        name: &str,
        patch: serde_json::Value,
    ) -> kube::Result<()> {
        self.api(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Pauses `namespace/name`, marked as the router's doing.
    pub async fn pause(&self, namespace: &str, name: &str) -> kube::Result<()> {
        let patch =
            json!({"metadata": {"annotations": {PAUSED: "true", IDLE_PAUSED: now_rfc3339()}}});
        self.merge(namespace, name, patch).await
    }

    /// Suspends `namespace/name` (removing the router's pause, so that it resumes running);
    /// `false` when it is paused by a person, which is left alone.
    pub async fn suspend(&self, namespace: &str, name: &str) -> kube::Result<bool> {
        let sb = self.api(namespace).get(name).await?;
        if paused_by_a_person(&sb) {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {
                "resourceVersion": sb.metadata.resource_version,
                "annotations": {PAUSED: null, IDLE_PAUSED: null, IDLE_SUSPENDED: now_rfc3339()},
            },
            "spec": {"operatingMode": "Suspended"},
        });
        self.merge(namespace, name, patch).await.map(|()| true)
    }

    /// Deletes `namespace/name`, or its claim when a claim owns it (the claim's deletion takes
    /// the sandbox with it); `false` when it is paused by a person, which is left alone.
    pub async fn delete(&self, namespace: &str, name: &str) -> kube::Result<bool> {
        let Some(sb) = self.api(namespace).get_opt(name).await? else {
            return Ok(true);
        };
        if paused_by_a_person(&sb) {
            return Ok(false);
        }
        let claim = sb
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "SandboxClaim");
        let params = DeleteParams::background();
        match claim {
            Some(c) => {
                let claims: Api<SandboxClaim> = Api::namespaced(self.client.clone(), namespace);
                claims.delete(&c.name, &params).await.map(drop)
            }
            None => self.api(namespace).delete(name, &params).await.map(drop),
        }
        .or_else(|e| match e {
            kube::Error::Api(s) if s.code == 404 => Ok(()),
            e => Err(e),
        })
        .map(|()| true)
    }

    /// Undoes the router's pause or suspension of `namespace/name`, if it made one.
    pub async fn wake(&self, namespace: &str, name: &str) -> kube::Result<Wake> {
        let Some(sb) = self.api(namespace).get_opt(name).await? else {
            return Ok(Wake::NotIdle);
        };
        let ann = sb.metadata.annotations.clone().unwrap_or_default();
        if ann.contains_key(IDLE_SUSPENDED) {
            if sb.spec.operating_mode() == OperatingMode::Suspended {
                let patch = json!({
                    "metadata": {"annotations": {IDLE_SUSPENDED: null}},
                    "spec": {"operatingMode": "Running"},
                });
                self.merge(namespace, name, patch).await?;
            }
            return Ok(Wake::Resuming);
        }
        if ann.contains_key(IDLE_PAUSED) {
            let patch = json!({"metadata": {"annotations": {PAUSED: null, IDLE_PAUSED: null}}});
            self.merge(namespace, name, patch).await?;
            return Ok(Wake::Unpausing);
        }
        Ok(Wake::NotIdle)
    }
}

/// The idle owner: records traffic, pauses and suspends idle sandboxes, wakes them on traffic.
pub struct Idle {
    cache: PodCache,
    activity: Arc<Activity>,
    lifecycle: Lifecycle,
    metrics: Arc<Metrics>,
    probe: HttpClient<HttpConnector, Empty<Bytes>>,
    acted: Mutex<HashMap<Key, Instant>>,
}

impl Idle {
    /// Watches the sandboxes of `cache`, writing through `client`, recording into `metrics`.
    pub fn new(cache: PodCache, client: Client, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        Self {
            cache,
            activity: Arc::default(),
            lifecycle: Lifecycle::new(client),
            metrics,
            probe: HttpClient::builder(TokioExecutor::new()).build(connector),
            acted: Mutex::default(),
        }
    }

    /// Marks a request to `key` in flight until the guard is dropped.
    pub fn begin(&self, key: Key) -> Busy {
        self.activity.begin(key)
    }

    /// Looks at the sandboxes every [`SWEEP`] until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        self.cache.synced().await;
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep().await;
        }
    }

    /// One look: plan, check with sandboxd, act.
    pub async fn sweep(&self) {
        let now = Instant::now();
        let candidates = self.cache.idle_candidates();
        self.activity.retain(|k| {
            candidates
                .iter()
                .any(|c| c.namespace == k.0 && c.name == k.1)
        });
        for due in plan(candidates, &self.activity, now) {
            let key = (due.sandbox.namespace.clone(), due.sandbox.name.clone());
            {
                let mut acted = self.acted.lock().unwrap_or_else(|e| e.into_inner());
                acted.retain(|_, at| at.elapsed() < SETTLE);
                if acted.contains_key(&key) {
                    continue;
                }
            }
            let mut action = due.action;
            if !due.sandbox.paused
                && let Some(seen) = self.sandboxd_idle(due.sandbox.ip).await
                && seen < due.idle
            {
                self.activity
                    .saw(&key, now.checked_sub(seen).unwrap_or(now));
                let Some(a) = due.sandbox.idle.and_then(|p| p.due(seen, false)) else {
                    continue;
                };
                action = a;
            }
            self.acted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), Instant::now());
            self.act(&key, action).await;
        }
    }

    async fn act(&self, (namespace, name): &Key, action: IdleAction) {
        let (label, result) = match action {
            IdleAction::Pause => (
                "pause",
                self.lifecycle.pause(namespace, name).await.map(|()| true),
            ),
            IdleAction::Suspend => ("suspend", self.lifecycle.suspend(namespace, name).await),
            IdleAction::Delete => ("delete", self.lifecycle.delete(namespace, name).await),
        };
        match result {
            Ok(true) => {
                tracing::info!(sandbox = %format!("{namespace}/{name}"), action = label, "idle sandbox stopped");
                self.metrics
                    .idle_actions
                    .get_or_create(&IdleLabels { action: label })
                    .inc();
            }
            Ok(false) => {
                tracing::debug!(sandbox = %format!("{namespace}/{name}"), action = label, "paused by a person; left alone")
            }
            Err(e) => {
                tracing::warn!(sandbox = %format!("{namespace}/{name}"), action = label, error = %e, "idle action failed; retried on a later sweep")
            }
        }
    }

    /// How long sandboxd at `ip` has been without API activity; `None` when it cannot say (no
    /// sandboxd in the image, or too slow to answer).
    async fn sandboxd_idle(&self, ip: IpAddr) -> Option<Duration> {
        let uri: http::Uri = format!("http://{}/v2/activity", SocketAddr::new(ip, SANDBOXD_PORT))
            .parse()
            .ok()?;
        let get = async {
            let resp = self.probe.get(uri).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            if v["open"].as_u64().unwrap_or(0) > 0 {
                return Some(Duration::ZERO);
            }
            Duration::try_from_secs_f64(v["idleSeconds"].as_f64()?).ok()
        };
        tokio::time::timeout(Duration::from_secs(2), get)
            .await
            .ok()
            .flatten()
    }

    /// Wakes `namespace/name` if the router paused or suspended it for being idle, and waits
    /// until `deadline` for it to serve again: its address then, `Ok(None)` when it was not
    /// stopped for being idle, an error when it did not come back in time.
    pub async fn wake(
        &self,
        namespace: &str,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<IpAddr>, WakeError> {
        let started = Instant::now();
        let _busy = self.begin((namespace.to_owned(), name.to_owned()));
        let how = self
            .lifecycle
            .wake(namespace, name)
            .await
            .map_err(|e| WakeError::Write(e.to_string()))?;
        let from = match how {
            Wake::NotIdle => return Ok(None),
            Wake::Unpausing => "paused",
            Wake::Resuming => "suspended",
        };
        loop {
            let change = self.cache.next_change(deadline);
            if let Some(ip) = self.cache.resolve(namespace, name, None)
                && !self.cache.is_paused(ip)
            {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                self.metrics
                    .resume_latency_ms
                    .get_or_create(&IdleLabels { action: from })
                    .observe(ms);
                tracing::info!(sandbox = %format!("{namespace}/{name}"), from, ms, "woken by a request");
                return Ok(Some(ip));
            }
            if !change.await {
                return Err(WakeError::Timeout);
            }
        }
    }
}

/// A wake that did not bring the sandbox back.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// The Sandbox could not be read or written.
    #[error("the router could not resume it: {0}")]
    Write(String),
    /// It did not serve again before the request's deadline.
    #[error("it did not resume within the request's timeout")]
    Timeout,
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_sandbox_api::idle::IdlePolicy;

    fn at(name: &str, paused: bool, idle: Option<IdlePolicy>) -> SandboxAt {
        SandboxAt {
            namespace: "ns".into(),
            name: name.into(),
            ip: "10.0.0.1".parse().unwrap(),
            paused,
            idle,
        }
    }

    #[test]
    fn traffic_holds_a_sandbox_awake_and_its_end_restarts_the_clock() {
        let a = Arc::new(Activity::default());
        let key: Key = ("ns".into(), "sb".into());
        let t0 = Instant::now();
        assert_eq!(
            a.idle_for(&key, t0),
            Some(Duration::ZERO),
            "first seen: idle from now"
        );
        let later = t0 + Duration::from_secs(30);
        assert_eq!(a.idle_for(&key, later), Some(Duration::from_secs(30)));
        let busy = a.begin(key.clone());
        assert_eq!(a.idle_for(&key, later), None, "a request in flight");
        let busy2 = a.begin(key.clone());
        drop(busy);
        assert_eq!(a.idle_for(&key, later), None, "one still in flight");
        drop(busy2);
        assert!(a.idle_for(&key, Instant::now()).unwrap() < Duration::from_secs(1));
        // Activity seen by sandboxd pushes the clock forward, never back.
        let key2: Key = ("ns".into(), "other".into());
        a.idle_for(&key2, t0);
        a.saw(&key2, t0 + Duration::from_secs(10));
        assert_eq!(a.idle_for(&key2, later), Some(Duration::from_secs(20)));
        a.saw(&key2, t0);
        assert_eq!(a.idle_for(&key2, later), Some(Duration::from_secs(20)));
        a.retain(|k| k.1 == "sb");
        assert_eq!(a.lock().len(), 1);
    }

    #[test]
    fn the_plan_pauses_then_suspends_and_skips_busy_or_policy_less_sandboxes() {
        let policy = IdlePolicy {
            pause_after: Some(Duration::from_secs(10)),
            suspend_after: Some(Duration::from_secs(60)),
            delete_after: None,
        };
        let a = Arc::new(Activity::default());
        let t0 = Instant::now();
        let cands = || {
            vec![
                at("running", false, Some(policy)),
                at("paused", true, Some(policy)),
                at("busy", false, Some(policy)),
                at("none", false, None),
            ]
        };
        assert!(
            plan(cands(), &a, t0).is_empty(),
            "everything starts idle now"
        );
        let _busy = a.begin(("ns".into(), "busy".into()));
        let due = plan(cands(), &a, t0 + Duration::from_secs(11));
        let got: Vec<_> = due
            .iter()
            .map(|d| (d.sandbox.name.as_str(), d.action))
            .collect();
        assert_eq!(got, vec![("running", IdleAction::Pause)]);
        let due = plan(cands(), &a, t0 + Duration::from_secs(61));
        let got: Vec<_> = due
            .iter()
            .map(|d| (d.sandbox.name.as_str(), d.action))
            .collect();
        assert_eq!(
            got,
            vec![
                ("running", IdleAction::Suspend),
                ("paused", IdleAction::Suspend)
            ]
        );
    }
}
