//! What the scenarios share: the connection, the benchmark template and warm pool, a watch that
//! timestamps the moment each claim (or Sandbox) turns Ready, and exec through the router.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sandbox_api::v1beta1::{
    Sandbox, SandboxClaim, SandboxClaimSpec, SandboxTemplate, SandboxWarmPool, SandboxWarmPoolRef,
};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::args::{BenchArgs, ConnectArgs};
use crate::commands::connect::Connection;
use crate::commands::sandboxes::is_ready;

/// Name of the benchmark's template and pool.
pub(crate) const NAME: &str = "agent-sandbox-bench";
/// Label on everything a run creates.
pub(crate) const RUN_LABEL: &str = "agent-sandbox-bench/run";

/// When an object was first seen Ready, with its sandbox name and pod IP.
#[derive(Clone, Debug)]
pub(crate) struct ReadyAt {
    pub(crate) at: Instant,
    pub(crate) sandbox: String,
    pub(crate) pod_ip: String,
}

/// Ready times of the claims and Sandboxes of this run, fed by watches.
#[derive(Default)]
pub(crate) struct ReadyTracker {
    seen: Mutex<HashMap<String, ReadyAt>>,
    notify: Notify,
}

impl ReadyTracker {
    fn record(&self, key: String, ready: ReadyAt) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.entry(key).or_insert(ready);
        drop(seen);
        self.notify.notify_waiters();
    }

    /// Waits until `key` (`claim/<name>` or `sandbox/<name>`) is Ready.
    pub(crate) async fn wait(&self, key: &str, timeout: Duration) -> anyhow::Result<ReadyAt> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
                return Ok(r.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("{key} is not Ready after {timeout:?}");
            }
        }
    }
}

/// Feeds `tracker` from a watch of `api` (objects labelled with this run), restarting the watch
/// when the server ends it.
async fn watch<K>(
    api: Api<K>,
    selector: String,
    tracker: Arc<ReadyTracker>,
    kind: &'static str,
    ready_at: fn(&K) -> Option<(String, String)>,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    let observe = |o: &K| {
        if let Some((sandbox, pod_ip)) = ready_at(o) {
            let ready = ReadyAt {
                at: Instant::now(),
                sandbox,
                pod_ip,
            };
            tracker.record(format!("{kind}/{}", o.name_any()), ready);
        }
    };
    loop {
        let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        list.items.iter().for_each(observe);
        let rv = list.metadata.resource_version.unwrap_or_default();
        let Ok(stream) = api
            .watch(&WatchParams::default().labels(&selector).timeout(290), &rv)
            .await
        else {
            continue;
        };
        let mut stream = stream.boxed();
        while let Ok(Some(event)) = stream.try_next().await {
            if let WatchEvent::Added(o) | WatchEvent::Modified(o) = event {
                observe(&o);
            }
        }
    }
}

fn claim_ready(c: &SandboxClaim) -> Option<(String, String)> {
    let s = c.status.as_ref()?;
    let ip = s.sandbox.pod_ips.first()?;
    is_ready(&s.conditions).then(|| (s.sandbox.name.clone(), ip.clone()))
}

fn sandbox_ready(s: &Sandbox) -> Option<(String, String)> {
    let st = s.status.as_ref()?;
    let ip = st.pod_ips.first()?;
    is_ready(&st.conditions).then(|| (s.name_any(), ip.clone()))
}

pub(crate) struct Fixture {
    pub(crate) conn: Connection,
    pub(crate) run_id: String,
    pub(crate) tracker: Arc<ReadyTracker>,
    pub(crate) http: reqwest::Client,
    pub(crate) router: String,
    pub(crate) token: Option<String>,
    pub(crate) data_dir: PathBuf,
    pub(crate) image: String,
    /// Members are Ready once their desktop answers (the desktop scenario).
    desktop: bool,
    watches: Vec<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    pub(crate) async fn open(connect: &ConnectArgs, args: &BenchArgs) -> anyhow::Result<Fixture> {
        let conn = Connection::open(connect).await?;
        let (router, token) = conn.router()?;
        let (router, token) = (router.to_owned(), token.map(str::to_owned));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let run_id = format!("{:x}{:x}", std::process::id(), nanos);
        let tracker = Arc::new(ReadyTracker::default());
        let selector = format!("{RUN_LABEL}={run_id}");
        let watches = vec![
            tokio::spawn(watch(
                conn.api::<SandboxClaim>(),
                selector.clone(),
                tracker.clone(),
                "claim",
                claim_ready,
            )),
            tokio::spawn(watch(
                conn.api::<Sandbox>(),
                selector,
                tracker.clone(),
                "sandbox",
                sandbox_ready,
            )),
        ];
        let fixture = Fixture {
            conn,
            run_id,
            tracker,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            router,
            token,
            data_dir: connect.data_dir.clone(),
            image: args.image.clone(),
            desktop: args.scenarios.contains(&crate::args::Scenario::Desktop),
            watches,
        };
        fixture.ensure_template().await?;
        Ok(fixture)
    }

    /// The Pod template every benchmark sandbox runs: the example image, sandboxd on 8080.
    pub(crate) fn pod_template(&self, runtime_class: Option<&str>) -> Value {
        let mut spec = json!({
            "containers": [{
                "name": "sandbox",
                "image": self.image,
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080}],
            }],
        });
        if let Some(rc) = runtime_class {
            spec["runtimeClassName"] = json!(rc);
        }
        if self.desktop {
            spec["containers"][0]["readinessProbe"] = json!({
                "httpGet": {"path": "/v2/desktop/screen", "port": 8080},
                "periodSeconds": 1,
                "failureThreshold": 60,
            });
        }
        json!({"metadata": {"labels": {RUN_LABEL: self.run_id}}, "spec": spec})
    }

    async fn ensure_template(&self) -> anyhow::Result<()> {
        let api: Api<SandboxTemplate> = self.conn.api();
        let template: SandboxTemplate = serde_json::from_value(json!({
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1",
            "kind": "SandboxTemplate",
            "metadata": {"name": NAME},
            "spec": {
                "networkPolicyManagement": "Unmanaged",
                "podTemplate": self.pod_template(None),
            },
        }))?;
        let _ = api.delete(NAME, &DeleteParams::default()).await;
        for _ in 0..100 {
            match api.create(&PostParams::default(), &template).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context("creating the benchmark template"),
            }
        }
        anyhow::bail!("the previous benchmark template {NAME} is not going away")
    }

    /// Sets the pool to `replicas` and waits until that many members are Ready.
    pub(crate) async fn pool(&self, replicas: i32, timeout: Duration) -> anyhow::Result<()> {
        let api: Api<SandboxWarmPool> = self.conn.api();
        if api.get_opt(NAME).await?.is_none() {
            let pool: SandboxWarmPool = serde_json::from_value(json!({
                "apiVersion": "extensions.agents.x-k8s.io/v1beta1",
                "kind": "SandboxWarmPool",
                "metadata": {"name": NAME},
                "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": NAME}},
            }))?;
            api.create(&PostParams::default(), &pool)
                .await
                .context("creating the benchmark pool")?;
        } else {
            api.patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        }
        self.wait_pool_ready(replicas, timeout).await
    }

    pub(crate) async fn wait_pool_ready(
        &self,
        replicas: i32,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let api: Api<SandboxWarmPool> = self.conn.api();
        let deadline = Instant::now() + timeout;
        let mut next_pod_check = Instant::now() + Duration::from_secs(1);
        loop {
            let status = api.get(NAME).await?.status.unwrap_or_default();
            if status.ready_replicas >= replicas {
                return Ok(());
            }
            // A member that cannot start will not start later either: say so now.
            if Instant::now() >= next_pod_check {
                next_pod_check = Instant::now() + Duration::from_secs(1);
                self.fail_on_stuck_member().await?;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the benchmark pool has {} of {replicas} members Ready after {timeout:?}; is the image {} imported (`agent-sandbox image ls`)?",
                    status.ready_replicas,
                    self.image
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails when a Pod of the benchmark pool waits for a reason that does not go away by
    /// itself (its image cannot be pulled, its container cannot be created), naming the Pod,
    /// the reason and what to do.
    async fn fail_on_stuck_member(&self) -> anyhow::Result<()> {
        const STUCK: [&str; 5] = [
            "ErrImagePull",
            "ImagePullBackOff",
            "InvalidImageName",
            "CreateContainerConfigError",
            "CreateContainerError",
        ];
        let pods: Api<Pod> = self.conn.api();
        let prefix = format!("{NAME}-");
        for pod in pods.list(&ListParams::default()).await?.items {
            let name = pod.name_any();
            if !name.starts_with(&prefix) {
                continue;
            }
            let waiting = pod
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                .find(|w| w.reason.as_deref().is_some_and(|r| STUCK.contains(&r)));
            if let Some(w) = waiting {
                anyhow::bail!(
                    "pod {}/{name} of the benchmark pool cannot start: {}: {}; is the image {} imported (`agent-sandbox image ls`, `agent-sandbox image import`)?",
                    self.conn.namespace,
                    w.reason.as_deref().unwrap_or_default(),
                    w.message.as_deref().unwrap_or_default(),
                    self.image
                );
            }
        }
        Ok(())
    }

    /// Waits until the Pod `name` is gone: its sandbox's teardown on the node is finished.
    pub(crate) async fn wait_pod_gone(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let api: Api<Pod> = self.conn.api();
        let deadline = Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "pod {}/{name} is still there {timeout:?} after its claim was deleted; see `agent-sandbox logs` and the node's log",
                self.conn.namespace
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Creates a claim on the benchmark pool (not waiting); returns its name.
    pub(crate) async fn create_claim(&self) -> anyhow::Result<String> {
        let mut claim = SandboxClaim::new(
            "",
            SandboxClaimSpec {
                warm_pool_ref: SandboxWarmPoolRef { name: NAME.into() },
                ..Default::default()
            },
        );
        let meta = claim.meta_mut();
        meta.name = None;
        meta.generate_name = Some("bench-".into());
        meta.labels = Some([(RUN_LABEL.to_owned(), self.run_id.clone())].into());
        let api: Api<SandboxClaim> = self.conn.api();
        Ok(api.create(&PostParams::default(), &claim).await?.name_any())
    }

    /// Deletes a claim in the background (its sandbox goes with it).
    pub(crate) fn delete_claim(&self, name: String) {
        let api: Api<SandboxClaim> = self.conn.api();
        tokio::spawn(async move {
            let _ = api.delete(&name, &DeleteParams::background()).await;
        });
    }

    /// POST /v2/exec of `command` through the router to the sandbox at `pod_ip`; returns when
    /// the first stdout bytes arrive (`first_output`) or at the end.
    pub(crate) async fn exec(
        &self,
        sandbox: &str,
        pod_ip: &str,
        command: &[&str],
        first_output: bool,
    ) -> anyhow::Result<()> {
        let mut req = self
            .http
            .post(format!("{}/v2/exec", self.router))
            .header("X-Sandbox-ID", sandbox)
            .header("X-Sandbox-Namespace", &self.conn.namespace)
            .header("X-Sandbox-Port", "8080")
            .header("X-Sandbox-Pod-IP", pod_ip)
            .header(
                "Accept",
                if first_output {
                    "application/x-ndjson"
                } else {
                    "application/json"
                },
            )
            .json(&json!({"command": command}));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.context("exec through the router")?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("exec through the router: {status}: {}", body.trim());
        }
        if first_output {
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                if chunk?.windows(8).any(|w| w == b"\"stdout\"") {
                    return Ok(());
                }
            }
            anyhow::bail!("the command printed nothing");
        }
        resp.bytes().await?;
        Ok(())
    }

    /// Removes the pool, template, claims and Sandboxes of this run, and waits (bounded) for
    /// their Pods to go.
    pub(crate) async fn clean_up(&self) {
        for w in &self.watches {
            w.abort();
        }
        let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", self.run_id));
        let dp = DeleteParams::background();
        let _ = self.conn.api::<SandboxWarmPool>().delete(NAME, &dp).await;
        let _ = self.conn.api::<SandboxTemplate>().delete(NAME, &dp).await;
        let _ = self
            .conn
            .api::<SandboxClaim>()
            .delete_collection(&dp, &lp)
            .await;
        let _ = self.conn.api::<Sandbox>().delete_collection(&dp, &lp).await;
        let pods = self.conn.api::<k8s_openapi::api::core::v1::Pod>();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match pods.list(&lp).await {
                Ok(l) if l.items.is_empty() => return,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        eprintln!("some benchmark sandboxes are still terminating; they finish in the background");
    }
}
