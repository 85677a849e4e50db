//! Shared conformance-test harness: an embedded API server in a temp directory, the controllers
//! over its in-process client, and a test kubelet that moves Pods to Running/Ready.
//!
//! With `AGENT_SANDBOX_TEST_KUBECONFIG` set to a kubeconfig, the same tests run against that
//! (external) API server instead: the controllers and the test kubelet are its clients, and each
//! test empties namespace `e2e` before it starts. Tests then take turns (one at a time in this
//! process); the server needs the CRDs installed and a garbage collector (kube-controller-manager)
//! running. See docs/cluster.md.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent_sandbox_apiserver::{ApiServer, Config as ServerConfig, RunningApiServer};
use agent_sandbox_controller::{Config, State};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinHandle;

pub const NS: &str = "e2e";

/// What the test kubelet does with a new Pod.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KubeletMode {
    /// Running and Ready with an IP.
    Ready,
    /// Never touched (stays Pending).
    Off,
}

pub struct Env {
    /// The embedded API server; `None` against an external one.
    pub server: Option<RunningApiServer>,
    pub client: Client,
    pub state: State,
    _dir: tempfile::TempDir,
    tasks: Vec<JoinHandle<()>>,
    _turn: Option<MutexGuard<'static, ()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    /// Stops the controllers (the test kubelet keeps running), as a crash of the controller
    /// process would.
    pub fn stop_controllers(&mut self) {
        self.tasks[0].abort();
    }

    /// Starts a fresh set of controllers (empty caches and memory) against the same server.
    pub fn restart_controllers(&mut self) {
        let (state, fut) = agent_sandbox_controller::start(self.client.clone(), Config::default());
        self.state = state;
        self.tasks[0] = tokio::spawn(fut);
    }
}

pub async fn start() -> Env {
    start_with(|_| {}, KubeletMode::Ready).await
}

pub async fn start_with(f: impl FnOnce(&mut Config), mode: KubeletMode) -> Env {
    // RUST_LOG=agent_sandbox_controller=info prints every reconcile span as it closes, with
    // its busy and idle (waiting on the API server) time.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client, turn) = match std::env::var_os(EXTERNAL) {
        Some(path) => {
            let turn = TURN.lock().await;
            let client = external_client(&path).await;
            empty_namespace(&client).await;
            (None, client, Some(turn))
        }
        None => {
            let mut cfg = ServerConfig::new(dir.path());
            cfg.tcp_addr = None;
            cfg.socket_path = None;
            cfg.node_name = "test-node".into();
            let server = ApiServer::start(cfg).await.expect("start api server");
            let client = server.client();
            let nss: Api<Namespace> = Api::all(client.clone());
            let n: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
            nss.create(&PostParams::default(), &n)
                .await
                .expect("create namespace");
            (Some(server), client, None)
        }
    };
    let mut config = Config::default();
    f(&mut config);
    let (state, fut) = agent_sandbox_controller::start(client.clone(), config);
    let mut tasks = vec![tokio::spawn(fut)];
    if mode == KubeletMode::Ready {
        tasks.push(tokio::spawn(kubelet(client.clone())));
    }
    Env {
        server,
        client,
        state,
        _dir: dir,
        tasks,
        _turn: turn,
    }
}

/// Names a kubeconfig of an external API server to run the tests against (see the module doc).
pub const EXTERNAL: &str = "AGENT_SANDBOX_TEST_KUBECONFIG";

/// Against an external server the tests share namespace `e2e`, so they take turns.
static TURN: Mutex<()> = Mutex::const_new(());

async fn external_client(path: &std::ffi::OsStr) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("use the kubeconfig");
    Client::try_from(config).expect("client of the external API server")
}

/// Creates namespace `e2e` if missing and removes what an earlier test left in it (finalizers
/// included), waiting until it is gone.
async fn empty_namespace(client: &Client) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    match nss.create(&PostParams::default(), &n).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {NS}: {e}"),
    }
    const EXT: &str = "extensions.agents.x-k8s.io";
    let kinds = [
        (EXT, "v1beta1", "SandboxClaim", "sandboxclaims"),
        (EXT, "v1beta1", "SandboxWarmPool", "sandboxwarmpools"),
        (EXT, "v1beta1", "SandboxTemplate", "sandboxtemplates"),
        ("agents.x-k8s.io", "v1beta1", "Sandbox", "sandboxes"),
        ("", "v1", "Pod", "pods"),
        ("", "v1", "Service", "services"),
        ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        (
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
        ),
    ];
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    for (group, version, kind, plural) in kinds {
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        eventually(
            &format!("{plural} of {NS} removed"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                let now = now.clone();
                async move {
                    let list = api.list(&Default::default()).await.expect("list");
                    if list.items.is_empty() {
                        return Some(());
                    }
                    for o in list.items {
                        let name = o.name_any();
                        if o.metadata
                            .finalizers
                            .as_ref()
                            .is_some_and(|f| !f.is_empty())
                        {
                            let clear = json!({"metadata": {"finalizers": null}});
                            let _ = api
                                .patch(&name, &PatchParams::default(), &Patch::Merge(clear))
                                .await;
                        }
                        let _ = api.delete(&name, &now).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    None
                }
            },
        )
        .await;
    }
}

static IP: AtomicU32 = AtomicU32::new(1);

fn pod_succeeds(p: &Pod) -> bool {
    p.spec.as_ref().is_some_and(|s| {
        s.containers
            .first()
            .and_then(|c| c.command.as_ref())
            .is_some_and(|cmd| cmd.join(" ").contains("exit 0"))
    })
}

/// A test kubelet: new Pods become Running and Ready with an IP (or Succeeded when their
/// command is `exit 0`); terminating Pods without finalizers are removed.
pub async fn kubelet(client: Client) {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut w = watcher(api.clone(), watcher::Config::default()).boxed();
    while let Some(ev) = w.next().await {
        let pods = match ev {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
            _ => continue,
        };
        for p in pods {
            let name = p.name_any();
            if p.metadata.deletion_timestamp.is_some() {
                if p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()) {
                    let api = api.clone();
                    tokio::spawn(async move {
                        let _ = api
                            .delete(
                                &name,
                                &DeleteParams {
                                    grace_period_seconds: Some(0),
                                    ..Default::default()
                                },
                            )
                            .await;
                    });
                }
                continue;
            }
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase == "Running" || phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let n = IP.fetch_add(1, Ordering::Relaxed);
            let ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = if pod_succeeds(&p) {
                json!({"status": {"phase": "Succeeded", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
                ]}})
            } else {
                json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now}
                ]}})
            };
            let api = api.clone();
            let client = client.clone();
            let unbound = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none_or(str::is_empty);
            tokio::spawn(async move {
                if unbound {
                    // An external API server has no scheduler: bind the Pod as one would (the
                    // embedded server binds Pods to its node at creation).
                    bind(&client, &name).await;
                }
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await;
            });
        }
    }
}

/// Binds Pod `name` to node `test-node` through the `binding` subresource.
async fn bind(client: &Client, name: &str) {
    let body = json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "test-node"},
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{NS}/pods/{name}/binding"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("binding"))
        .expect("binding request");
    let _ = client.request_text(req).await;
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts `f` stays `true` for `d`.
pub async fn consistently<F, Fut>(what: &str, d: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < d {
        assert!(f().await, "{what} stopped holding");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn api<K>(client: &Client) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), NS)
}

pub type Shared<T> = Arc<T>;
