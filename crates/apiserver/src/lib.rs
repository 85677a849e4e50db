//! The embedded Kubernetes-style API server: SQLite storage, discovery, the Kubernetes verbs,
//! watch, admission from the CRD schemas, garbage collection and kubeconfig.
//!
//! This part serves the four agent-sandbox kinds and the core kinds the controllers need, and must
//! answer every call the controllers, kubectl and the SDKs make as kube-apiserver would.
//!
//! # Entry point
//!
//! ```no_run
//! # async fn demo() -> Result<(), agent_sandbox_apiserver::StartError> {
//! use agent_sandbox_apiserver::{ApiServer, Config};
//! let server = ApiServer::start(Config::new("/var/lib/agent-sandbox")).await?;
//! let client: kube::Client = server.client();          // in-process, no socket
//! println!("kubeconfig: {}", server.kubeconfig_path().display());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! [`ApiServer::start`] opens (or creates) `<data_dir>/apiserver.db`, generates on first start a
//! CA, a serving certificate and a bearer token under `<data_dir>/pki/`, listens on a unix socket
//! (plain HTTP, default `<data_dir>/apiserver.sock`) and on a loopback TCP port with HTTPS
//! (default `127.0.0.1:6443`; port 0 picks a free port), and writes a kubeconfig for the TCP
//! endpoint to `<data_dir>/kubeconfig` (mode 0600). Both listeners require the bearer token,
//! except `/healthz`, `/livez`, `/readyz` and `/version`. Pods created without `spec.nodeName`
//! are bound to [`Config::node_name`].
//!
//! # Modules
//!
//! - [`store`]: SQLite (WAL, fsync per commit only with [`Durability::PowerLoss`]) behind one
//!   writer thread with group commit, the committed in-memory view, the watch cache and the
//!   ownership indexes.
//! - [`api`]: URL routing and the verbs with kube-apiserver's metadata semantics, the same for
//!   every kind; [`registry`]: one [`registry::Strategy`] per kind for what the kind does
//!   differently (create and update preparation, validation, deletion, field selectors, printer
//!   columns, connect subresources), as kube-apiserver's registry; [`resources`]: the catalogue
//!   of served kinds; [`watch`]: watch streams; [`patch`]: merge, JSON and strategic merge
//!   patch; [`selectors`]: label and field selectors; [`table`]: `kubectl get` tables.
//! - [`admission`]: names, labels, core defaults and validation, and the [`CrdSupport`] seam;
//!   [`crds`]: the agent-sandbox CRDs through the `api` crate (schemas, CEL, v1alpha1 ⇄
//!   v1beta1).
//! - [`gc`]: ownerReference garbage collection, namespace finalization, the pod reaper;
//!   [`endpoints`]: the EndpointSlices of Services, as kube-controller-manager keeps them.
//! - [`protobuf`]: the protobuf bodies of `kubectl create configmap|secret`.
//! - The Pod's connect subresources in [`registry::pod`]: `log` to the [`PodLogs`] provider,
//!   `exec` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`) to [`PodExec`],
//!   `portforward` (SPDY over WebSocket, SPDY, the channel protocol; [`spdy`]) to
//!   [`PodPortForward`], each registered by the node agent.
//! - [`discovery`]: discovery, `/version` and OpenAPI; [`server`]: router, auth, listeners;
//!   [`access`]: CA, serving certificate, token and kubeconfig.
//!
//! # Differences from kube-apiserver
//!
//! - Paged lists (`limit`/`continue`) read the current state after the continue key rather than
//!   a snapshot at the first page's resourceVersion; every object is still returned once, and a
//!   watch from the list's resourceVersion replays anything that changed meanwhile.
//! - After a restart, watch history before the restart is compacted: each object is replayed
//!   once at its latest version (deletions from tombstones) instead of every intermediate
//!   version.
//! - Server-side apply is not supported (415 with a message saying so); aggregated discovery is
//!   not served (clients fall back to the legacy documents).
//!
//! Pods are deleted gracefully as with a kubelet: a delete sets `deletionTimestamp` and the node
//! agent finishes the deletion with `gracePeriodSeconds=0` once the containers are stopped; if
//! it does not, the server removes the pod when the grace period has passed.
#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod api;
pub mod crds;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod gc;
pub mod patch;
pub mod protobuf;
pub mod query;
pub mod registry;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod spdy;
pub mod store;
pub mod table;
pub mod watch;

pub use admission::{CrdSupport, NoCrds};
pub use registry::pod::exec::{ExecRequest, ExecStreams, PodExec};
pub use registry::pod::log::PodLogs;
pub use registry::pod::portforward::{PodPortForward, Tunnel};
pub use store::Durability;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch as twatch;

/// Server configuration.
#[derive(Clone)]
pub struct Config {
    /// Data directory (database, credentials, kubeconfig).
    pub data_dir: PathBuf,
    /// Loopback HTTPS address; `None` disables TCP. Port 0 picks a free port.
    pub tcp_addr: Option<SocketAddr>,
    /// Unix socket path; `None` disables it. Defaults to `<data_dir>/apiserver.sock`.
    pub socket_path: Option<PathBuf>,
    /// The node name pods are bound to.
    pub node_name: String,
    /// Where to write the kubeconfig; defaults to `<data_dir>/kubeconfig`.
    pub kubeconfig_path: Option<PathBuf>,
    /// Most watch-cache events retained per resource (older resourceVersions get 410 Gone);
    /// events also leave after 2.5 minutes (see [`store`]).
    pub watch_window: usize,
    /// Request body limit (kube-apiserver: 3 MiB).
    pub max_body: usize,
    /// What an acknowledged write survives: a power loss by default (an fsync per group
    /// commit); [`Durability::ProcessCrash`] skips the fsync and survives a crash of the
    /// process only.
    pub durability: Durability,
    /// CRD admission and conversion.
    pub crds: Arc<dyn CrdSupport>,
    /// How long an Event lives after its last activity (kube-apiserver's `--event-ttl`).
    pub event_ttl: std::time::Duration,
}

impl Config {
    /// Defaults for a data directory: HTTPS on 127.0.0.1:6443, socket in the data directory,
    /// node name from the host name.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let node = fs_err::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_lowercase())
            .ok()
            .filter(|s| !s.is_empty() && admission::is_subdomain(s))
            .unwrap_or_else(|| "agent-sandbox-node".into());
        Config {
            socket_path: Some(data_dir.join("apiserver.sock")),
            kubeconfig_path: None,
            data_dir,
            tcp_addr: Some(SocketAddr::from(([127, 0, 0, 1], 6443))),
            node_name: node,
            watch_window: store::StoreConfig::default().watch_window,
            max_body: api::MAX_BODY,
            durability: Durability::default(),
            crds: default_crds(),
            event_ttl: gc::EVENT_TTL,
        }
    }
}

/// The CRD support used by default: the four agent-sandbox CRDs.
pub fn default_crds() -> Arc<dyn CrdSupport> {
    Arc::new(crds::AgentSandboxCrds::new())
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be prepared.
    #[error("preparing data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::OpenError),
    /// Credentials could not be prepared.
    #[error(transparent)]
    Access(#[from] access::AccessError),
    /// A listener could not be bound.
    #[error("listening on {what}: {source}; is another API server running? choose another address")]
    Listen {
        /// The address or socket path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Another server holds the data directory.
    #[error(
        "data directory {0} is in use by another API server (lock file apiserver.lock); stop it or choose another --data-dir"
    )]
    Locked(PathBuf),
    /// Bootstrap objects could not be written.
    #[error("writing bootstrap object {0}")]
    Bootstrap(String),
}

/// The API server.
pub struct ApiServer;

/// A running server: handles for the in-process client, the kubeconfig and shutdown.
pub struct RunningApiServer {
    app: Arc<api::App>,
    router: axum::Router,
    shutdown: twatch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tcp_addr: Option<SocketAddr>,
    socket_path: Option<PathBuf>,
    kubeconfig_path: PathBuf,
    token: String,
    ca_pem: String,
    _lock: fs_err::File,
}

async fn bootstrap(app: &api::App) -> Result<(), StartError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if app.store.get("namespaces", "", ns).is_some() {
            continue;
        }
        let t = api::parse_target(app, "", "v1", &["namespaces"])
            .and_then(Result::ok)
            .ok_or_else(|| StartError::Bootstrap("namespaces resource".into()))?;
        let body = serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .unwrap_or_default();
        let mut r = api::Req {
            query: Default::default(),
            headers: Default::default(),
            warnings: vec![],
        };
        app.create(&t, &body, &mut r)
            .await
            .map_err(|e| StartError::Bootstrap(format!("namespace {ns}: {e}")))?;
    }
    // The read-only CRD view.
    let res = "customresourcedefinitions.apiextensions.k8s.io";
    for (_, crd) in app.crd_objects.iter() {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut obj = crd.clone();
        obj["apiVersion"] = json!("apiextensions.k8s.io/v1");
        obj["kind"] = json!("CustomResourceDefinition");
        let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let stored: Vec<Value> = obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|v| v["storage"] == true)
                    .map(|v| v["name"].clone())
                    .collect()
            })
            .unwrap_or_default();
        let existing = app.store.get(res, "", &name);
        let m = obj["metadata"]
            .as_object_mut()
            .ok_or_else(|| StartError::Bootstrap(format!("CRD {name}")))?;
        let (uid, ts) = match &existing {
            Some(e) => (
                e.obj["metadata"]["uid"].clone(),
                e.obj["metadata"]["creationTimestamp"].clone(),
            ),
            None => (json!(uuid::Uuid::new_v4().to_string()), json!(api::now())),
        };
        m.insert("uid".into(), uid);
        m.insert("creationTimestamp".into(), ts.clone());
        m.insert("generation".into(), json!(1));
        obj["status"] = json!({
            "acceptedNames": names, "storedVersions": stored,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ts},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ts}
            ]
        });
        let op = match existing {
            None => store::Op::Create {
                res: res.into(),
                obj,
            },
            Some(e) => {
                let mut cmp = obj.clone();
                cmp["metadata"]["resourceVersion"] = e.obj["metadata"]["resourceVersion"].clone();
                if cmp == *e.obj {
                    continue;
                }
                store::Op::Update {
                    res: res.into(),
                    obj,
                    expect_rv: Some(e.rv),
                }
            }
        };
        app.store
            .write(op)
            .await
            .map_err(|e| StartError::Bootstrap(format!("CRD {name}: {e}")))?;
    }
    Ok(())
}

impl ApiServer {
    /// Starts the server (see the crate docs).
    pub async fn start(cfg: Config) -> Result<RunningApiServer, StartError> {
        // When several crypto backends are linked into one binary (feature unification across
        // the workspace), rustls cannot pick one by itself: choose ring, as this crate does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dd = |source| StartError::DataDir {
            path: cfg.data_dir.clone(),
            source,
        };
        fs_err::create_dir_all(&cfg.data_dir).map_err(dd)?;
        // The database holds Secrets and the directory the server's private keys: root only.
        {
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(dd)?;
        }
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.data_dir.join("apiserver.lock"))
            .map_err(dd)?;
        if lock.file().try_lock().is_err() {
            return Err(StartError::Locked(cfg.data_dir.clone()));
        }
        let pki = cfg.data_dir.join("pki");
        fs_err::create_dir_all(&pki).map_err(dd)?;
        let (store, changes) = store::Store::open(
            &cfg.data_dir.join("apiserver.db"),
            store::StoreConfig {
                watch_window: cfg.watch_window,
                tombstones: cfg.watch_window.max(1000),
                watch_window_time: store::StoreConfig::default().watch_window_time,
                durability: cfg.durability,
            },
        )?;
        let app = Arc::new(api::App::new(
            store,
            cfg.crds.clone(),
            cfg.node_name.clone(),
            cfg.max_body,
        ));
        bootstrap(&app).await?;
        let creds = access::load_or_create(&pki)?;
        let (shutdown, sd_rx) = twatch::channel(false);
        // Every change goes to the garbage collector; those of Services and Pods also to the
        // EndpointSlice controller.
        let (to_gc, gc_rx) = tokio::sync::mpsc::unbounded_channel();
        let (to_endpoints, endpoints_rx) = tokio::sync::mpsc::unbounded_channel();
        let fan_out = async move {
            let mut changes = changes;
            while let Some(c) = changes.recv().await {
                if matches!(c.res.as_str(), "pods" | "services") {
                    let _ = to_endpoints.send(c.clone());
                }
                if c.concerns_gc() && to_gc.send(c).is_err() {
                    return;
                }
            }
        };
        let mut tasks = vec![
            tokio::spawn(fan_out),
            tokio::spawn(gc::run(app.clone(), gc_rx, sd_rx.clone(), cfg.event_ttl)),
            tokio::spawn(endpoints::run(app.clone(), endpoints_rx, sd_rx.clone())),
        ];
        let authed = server::authed_router(app.clone(), creds.token.clone());
        let mut tcp_addr = None;
        if let Some(addr) = cfg.tcp_addr {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen {
                    what: addr.to_string(),
                    source,
                })?;
            tcp_addr = Some(l.local_addr().map_err(|source| StartError::Listen {
                what: addr.to_string(),
                source,
            })?);
            let acc = access::acceptor(&creds)?;
            tasks.push(tokio::spawn(server::serve_tls(
                l,
                acc,
                authed.clone(),
                sd_rx.clone(),
            )));
        }
        if let Some(p) = &cfg.socket_path {
            if p.exists() {
                let _ = fs_err::remove_file(p);
            }
            let l = tokio::net::UnixListener::bind(p).map_err(|source| StartError::Listen {
                what: p.display().to_string(),
                source,
            })?;
            let _ = fs_err::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600));
            tasks.push(tokio::spawn(server::serve_unix(
                l,
                authed.clone(),
                sd_rx.clone(),
            )));
        }
        let kubeconfig_path = cfg
            .kubeconfig_path
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("kubeconfig"));
        if let Some(addr) = tcp_addr {
            let kc = access::kubeconfig(
                &format!("https://{addr}"),
                &creds.ca_pem,
                &creds.token,
                "default",
            );
            access::write_kubeconfig(&kubeconfig_path, &kc)?;
        }
        Ok(RunningApiServer {
            router: server::router(app.clone()),
            app,
            shutdown,
            tasks,
            tcp_addr,
            socket_path: cfg.socket_path.clone(),
            kubeconfig_path,
            token: creds.token,
            ca_pem: creds.ca_pem,
            _lock: lock,
        })
    }
}

impl RunningApiServer {
    /// A `kube::Client` over the router, in process (no socket, no token), default namespace
    /// `default`.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router.clone(), "default")
    }

    /// The unauthenticated router (for embedding).
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// The HTTPS address, if TCP is enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The unix socket path, if enabled.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }

    /// Where the kubeconfig was written.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for the HTTPS endpoint (the same text as the written file).
    pub fn kubeconfig(&self) -> Option<String> {
        self.tcp_addr.map(|a| {
            access::kubeconfig(
                &format!("https://{a}"),
                &self.ca_pem,
                &self.token,
                "default",
            )
        })
    }

    /// Registers the provider of `pods/log` (the node agent).
    pub fn set_pod_logs(&self, provider: Arc<dyn PodLogs>) {
        if let Ok(mut g) = self.app.logs.write() {
            *g = Some(provider);
        }
    }

    /// Registers the provider of `pods/exec` (the node agent).
    pub fn set_pod_exec(&self, provider: Arc<dyn PodExec>) {
        if let Ok(mut g) = self.app.exec.write() {
            *g = Some(provider);
        }
    }

    /// Registers the provider of `pods/portforward` (the node agent).
    pub fn set_pod_port_forward(&self, provider: Arc<dyn PodPortForward>) {
        if let Ok(mut g) = self.app.port_forward.write() {
            *g = Some(provider);
        }
    }

    /// The shared server state (for diagnostics and tests).
    pub fn app(&self) -> Arc<api::App> {
        self.app.clone()
    }

    /// The store (for diagnostics and tests).
    pub fn store(&self) -> &store::Store {
        &self.app.store
    }

    /// Stops the listeners and background tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        if let Some(p) = &self.socket_path {
            let _ = fs_err::remove_file(p);
        }
    }
}
