//! sandboxd, the in-sandbox runtime: the upstream files REST API and gRPC `process.v1` service,
//! the legacy python-runtime HTTP API, streaming exec, PTY and `run_code`; for computer use, the
//! managed services, the desktop API and the browser's DevTools front.

pub mod activity;
pub mod cdp;
pub mod config;
pub mod confine;
mod deadline;
pub mod error;
pub mod framebuffer;
pub mod fsops;
pub mod grpc;
mod http_server;
pub mod legacy;
pub mod process;
pub mod rest;
pub mod services;
mod sys;
pub mod v2;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;

/// Generated protobuf and tonic code for `process.v1`.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("process.v1");
    /// Encoded descriptor set of `process.v1`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("process_descriptor");
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad flags.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The sandbox root could not be created or opened.
    #[error("sandbox root {path}: {source}; create it or pass another --root-dir")]
    Root {
        /// The configured root.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}; pick another port or stop what uses it")]
    Bind {
        /// Which API.
        what: &'static str,
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Runtime set-up failed.
    #[error("{0}")]
    Setup(String),
}

/// State shared by every handler.
#[derive(Debug)]
pub struct App {
    pub(crate) config: Config,
    pub(crate) root: confine::Root,
    pub(crate) ready: AtomicBool,
    pub(crate) started: Instant,
    pub(crate) metadata_env: BTreeMap<String, String>,
    pub(crate) sup: Arc<process::Supervisor>,
    pub(crate) kernels: v2::code::Kernels,
    pub(crate) services: services::Services,
    pub(crate) activity: Arc<activity::Activity>,
}

/// A bound, not yet running daemon. Bind, read the addresses, then [`Server::run`].
#[derive(Debug)]
pub struct Server {
    app: Arc<App>,
    grpc: TcpListener,
    rest: TcpListener,
    legacy: Option<TcpListener>,
    cdp: Option<TcpListener>,
}

impl Server {
    /// Opens the root, binds the listeners and starts the child reaper.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        if config.grpc_port != 0 && config.grpc_port == config.rest_port {
            return Err(ServeError::Config(format!(
                "--grpc-port and --rest-port must differ (both {})",
                config.grpc_port
            )));
        }
        if !config.no_legacy
            && config.legacy_port != 0
            && (config.legacy_port == config.rest_port || config.legacy_port == config.grpc_port)
        {
            return Err(ServeError::Config(format!(
                "--legacy-port {} collides with another port; pick a free one or pass --no-legacy",
                config.legacy_port
            )));
        }
        let service_specs = services::ServiceSpec::collect(
            &config.services,
            std::env::var("SANDBOXD_SERVICES").ok().as_deref(),
        )
        .map_err(ServeError::Config)?;
        let root = match &config.work_dir {
            Some(work) => confine::Root::open_with_work_dir(&config.root_dir, work),
            None => confine::Root::open(&config.root_dir),
        }
        .map_err(|source| ServeError::Root {
            path: config.root_dir.display().to_string(),
            source,
        })?;
        let pid1 = rustix::process::getpid().is_init();
        if config.subreaper {
            rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                .map_err(|e| ServeError::Setup(format!("cannot become a child subreaper: {e}")))?;
        }
        let sup = process::Supervisor::new(pid1 || config.subreaper);
        sup.start_reaper()
            .map_err(|e| ServeError::Setup(format!("cannot install the SIGCHLD handler: {e}")))?;
        let bind = |what: &'static str, port: u16| {
            let addr = format!("{}:{}", host_for_bind(&config.listen_host), port);
            async move {
                TcpListener::bind(&addr)
                    .await
                    .map_err(|source| ServeError::Bind { what, addr, source })
            }
        };
        let grpc = bind("gRPC", config.grpc_port).await?;
        let rest = bind("REST", config.rest_port).await?;
        let legacy = if config.no_legacy {
            None
        } else {
            Some(bind("legacy API", config.legacy_port).await?)
        };
        let cdp = match config.cdp_port {
            Some(port) => Some(bind("the browser's DevTools front", port).await?),
            None => None,
        };
        let app = Arc::new(App {
            metadata_env: rest::metadata_env(&config.metadata_env_prefix),
            kernels: v2::code::Kernels::default(),
            services: services::Services::new(service_specs),
            activity: Arc::default(),
            config,
            root,
            ready: AtomicBool::new(true),
            started: Instant::now(),
            sup,
        });
        Ok(Server {
            app,
            grpc,
            rest,
            legacy,
            cdp,
        })
    }

    /// Address of the gRPC listener.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }
    /// Address of the REST listener.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        self.rest.local_addr().ok()
    }
    /// Address of the legacy listener.
    pub fn legacy_addr(&self) -> Option<SocketAddr> {
        self.legacy.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Address of the browser's DevTools front, when configured.
    pub fn cdp_addr(&self) -> Option<SocketAddr> {
        self.cdp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then shuts down in upstream's order: readiness off,
    /// SIGTERM to every process, 2 s grace, SIGKILL, HTTP drain, gRPC drain; all bounded by
    /// `--shutdown-timeout`.
    ///
    /// With a workload command configured, it is started first; when it ends, sandboxd shuts
    /// down and the returned code is the workload's (shell convention). Otherwise it is 0.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<i32, ServeError> {
        let Server {
            app,
            grpc,
            rest,
            legacy,
            cdp,
        } = self;
        let timeout = app.config.shutdown_timeout;
        let (stop_tx, stop_rx) = watch::channel(false);
        let idle = app.config.http_idle_timeout;
        let http = http_server::Protocol::Http { idle };
        let rest_task = tokio::spawn(http_server::serve(
            rest,
            rest_router(app.clone()),
            http,
            stop_rx.clone(),
            timeout,
        ));
        let legacy_task = legacy.map(|l| {
            tokio::spawn(http_server::serve(
                l,
                legacy_router(app.clone()),
                http,
                stop_rx.clone(),
                timeout,
            ))
        });
        let grpc_task = tokio::spawn(serve_grpc(app.clone(), grpc, stop_rx.clone(), timeout));
        let cdp_task = cdp.map(|l| {
            tokio::spawn(cdp::serve(
                l,
                app.config.cdp_upstream.clone(),
                stop_rx.clone(),
                timeout,
            ))
        });
        app.services.start(&app.sup, app.root.work_path());

        let workload = if app.config.command.is_empty() {
            None
        } else {
            let spec = process::SpawnSpec {
                argv: app.config.command.clone(),
                cwd: app.root.work_path(),
                inherit_stdio: true,
                ..process::SpawnSpec::default()
            };
            let child = app
                .sup
                .spawn(spec)
                .map_err(|e| ServeError::Setup(format!("workload: {e}")))?;
            let managed = app.sup.register(
                child.pid,
                app.config.command.clone(),
                "workload",
                None,
                None,
            );
            Some((child.exit, managed))
        };
        let mut code = 0;
        match workload {
            Some((exit, managed)) => {
                tokio::select! {
                    _ = shutdown => {}
                    e = exit => {
                        managed.done.store(true, Ordering::SeqCst);
                        code = e.map(|e| e.shell_code()).unwrap_or(1);
                        tracing::info!(code, "the workload exited");
                    }
                }
            }
            None => shutdown.await,
        }
        tracing::info!("shutting down");
        let deadline = tokio::time::Instant::now() + timeout;
        app.ready.store(false, Ordering::SeqCst);
        app.kernels.shutdown();
        app.services.stop();
        app.sup.signal_all(rustix::process::Signal::TERM);
        let grace = tokio::time::Instant::now() + Duration::from_secs(2);
        while app.sup.live_children() > 0 && tokio::time::Instant::now() < grace.min(deadline) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        app.sup.signal_all(rustix::process::Signal::KILL);
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout_at(deadline, async {
            let _ = rest_task.await;
            if let Some(t) = legacy_task {
                let _ = t.await;
            }
            if let Some(t) = cdp_task {
                let _ = t.await;
            }
            let _ = grpc_task.await;
        })
        .await;
        Ok(code)
    }
}

fn host_for_bind(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Serves the gRPC port. tonic's own server is not used: it answers a passed `grpc-timeout`
/// with `CANCELLED` and ignores a malformed one, where Go's server, and so upstream's clients,
/// expect `DEADLINE_EXCEEDED` and `INTERNAL` ([`deadline`]).
async fn serve_grpc(
    app: Arc<App>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let svc = pb::process_service_server::ProcessServiceServer::new(grpc::ProcessSvc { app });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();
    let mut routes = tonic::service::Routes::new(svc);
    match (reflection_v1, reflection_v1alpha) {
        (Ok(r1), Ok(r1a)) => routes = routes.add_service(r1).add_service(r1a),
        _ => tracing::error!("gRPC reflection could not be built; serving without it"),
    }
    http_server::serve(
        listener,
        deadline::Deadline::new(routes.prepare()),
        http_server::Protocol::Grpc,
        stop,
        grace,
    )
    .await;
}

/// Routes of the REST port: upstream `/v1` plus the `/v2` extensions.
pub fn rest_router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/files/{*path}",
            get(rest::get_file)
                .put(rest::put_file)
                .delete(rest::delete_file),
        )
        .route(
            "/v1/files/",
            get(rest::get_file)
                .put(rest::put_file)
                .delete(rest::delete_file),
        )
        .route(
            "/v1/files",
            get(rest::get_file)
                .put(rest::put_file)
                .delete(rest::delete_file),
        )
        .route("/v1/health", get(rest::health))
        .route("/v1/metadata", get(rest::metadata));
    v1.merge(v2::router())
        .fallback(|| async {
            error::ApiError::not_found("no such endpoint; see the REST API under /v1 and /v2")
        })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            activity::track,
        ))
        .with_state(app)
}

/// Routes of the legacy port: upstream's python-runtime API plus the `/v2` extensions.
pub fn legacy_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(legacy::root_health))
        .route("/execute", post(legacy::execute))
        .route("/upload", post(legacy::upload))
        .route("/download/{*path}", get(legacy::download))
        .route("/list/{*path}", get(legacy::list))
        .route("/list/", get(legacy::list))
        .route("/exists/{*path}", get(legacy::exists))
        .route("/exists/", get(legacy::exists))
        .merge(v2::router())
        .fallback(legacy::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            activity::track,
        ))
        .with_state(app)
}

/// Runs sandboxd with `config` until SIGINT or SIGTERM (or until the workload command ends),
/// after printing the bound addresses as one JSON line on stdout.
/// Returns the exit code the process should end with.
pub async fn serve(config: Config) -> Result<i32, ServeError> {
    // The handlers go in first: as PID 1 of a container, a SIGTERM that arrives before them is
    // dropped by the kernel, and the container then lives out its whole grace period.
    let shutdown = shutdown_signal();
    let server = Server::bind(config).await?;
    // One JSON line on stdout with the bound addresses, for supervisors and tests that start
    // sandboxd on ephemeral ports.
    let announce = serde_json::json!({
        "grpc": server.grpc_addr().map(|a| a.to_string()),
        "rest": server.rest_addr().map(|a| a.to_string()),
        "legacy": server.legacy_addr().map(|a| a.to_string()),
        "cdp": server.cdp_addr().map(|a| a.to_string()),
    });
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{announce}").and_then(|()| out.flush());
    }
    tracing::info!(
        grpc = ?server.grpc_addr(),
        rest = ?server.rest_addr(),
        legacy = ?server.legacy_addr(),
        root = %server.app.root.real_path().display(),
        "sandboxd listening"
    );
    server.run(shutdown).await
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (inside a
/// Tokio runtime), not when the future is first polled, so no signal between the two is lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = streams else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
