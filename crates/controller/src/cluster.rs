//! Cluster mode (`agent-sandbox controller`, upstream-core §12): the controllers behind leader
//! election, the metrics and health endpoints, and the conversion webhook with its certificate
//! bootstrap, wired together; plus the Go-style flag value parsers the binary uses.
//!
//! [`Cluster::bind`] does everything that can fail at start-up (listeners, certificates), so a
//! misconfiguration is reported before the process competes for leadership; [`Cluster::run`]
//! then serves until cancelled, or until leadership is lost (an error: the binary exits non-zero
//! and its Deployment restarts it as a standby).

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::FutureExt;
use kube::Client;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certs::{self, CertError, CertOptions};
use crate::config::{Config, parse_allowed_label_domains};
use crate::leader::{LeaderElectionConfig, LeaderElector, LeaderError, LeaderStatus, Outcome};
use crate::webhook::{self, TlsFiles, WebhookError, WebhookServer};
use crate::{State, start};

/// Where the optional `agent-sandbox-config` ConfigMap's allowed label domains are mounted.
pub const ALLOWED_LABEL_DOMAINS_FILE: &str = "/etc/sandbox-config/allowed-label-domains";

/// Upstream's `--webhook-service-name`.
pub const DEFAULT_WEBHOOK_SERVICE: &str = "agent-sandbox-webhook-service";
/// Upstream's `--webhook-namespace`.
pub const DEFAULT_WEBHOOK_NAMESPACE: &str = "agent-sandbox-system";

/// The conversion webhook's settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Address to serve HTTPS on (`:9443`).
    pub addr: SocketAddr,
    /// Directory of the serving pair (`--webhook-cert-dir`).
    pub cert_dir: PathBuf,
    /// Certificate file name when certificates are not managed (`--webhook-cert-name`).
    pub cert_name: String,
    /// Key file name when certificates are not managed (`--webhook-key-name`).
    pub key_name: String,
    /// Generate or load the shared Secret and patch the CRDs' caBundle
    /// (`--manage-webhook-certs`).
    pub manage_certs: bool,
    /// The webhook Service (`--webhook-service-name`).
    pub service_name: String,
    /// The webhook Service's namespace (`--webhook-namespace`).
    pub namespace: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], webhook::DEFAULT_PORT)),
            cert_dir: webhook::DEFAULT_CERT_DIR.into(),
            cert_name: webhook::CERT_NAME.into(),
            key_name: webhook::KEY_NAME.into(),
            manage_certs: true,
            service_name: DEFAULT_WEBHOOK_SERVICE.into(),
            namespace: DEFAULT_WEBHOOK_NAMESPACE.into(),
        }
    }
}

/// Everything cluster mode runs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The reconcilers' settings.
    pub controllers: Config,
    /// Leader election; `None` runs the controllers at once (`--leader-elect=false`).
    pub leader_election: Option<LeaderElectionConfig>,
    /// `/metrics` (plain HTTP); `None` disables it (`--metrics-bind-address=0`).
    pub metrics_addr: Option<SocketAddr>,
    /// `/healthz` and `/readyz`; `None` disables them.
    pub health_addr: Option<SocketAddr>,
    /// The conversion webhook; `None` disables it (`--enable-webhook=false`).
    pub webhook: Option<WebhookConfig>,
}

/// Start-up and run failures of cluster mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// An HTTP listener could not be bound.
    #[error("listening on {addr} for {what}: {source}; pass {flag} to choose another address")]
    Listen {
        /// What the listener is for.
        what: &'static str,
        /// The flag that sets the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The webhook certificates could not be prepared.
    #[error(transparent)]
    Certs(#[from] CertError),
    /// The webhook server could not start.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    /// Leader election failed or leadership was lost.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

/// Cluster mode, bound and ready to run.
pub struct Cluster {
    client: Client,
    config: ClusterConfig,
    metrics: Option<TcpListener>,
    health: Option<TcpListener>,
    webhook: Option<WebhookServer>,
    webhook_files: Option<TlsFiles>,
}

async fn listen(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, ClusterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ClusterError::Listen {
            what,
            flag,
            addr,
            source,
        })
}

impl Cluster {
    /// Binds the endpoints and prepares the webhook certificates (creating the shared Secret and
    /// patching the CRDs when they are managed).
    pub async fn bind(client: Client, config: ClusterConfig) -> Result<Self, ClusterError> {
        warn_about_workers(&config.controllers);
        let metrics = match config.metrics_addr {
            Some(a) => Some(listen(a, "metrics", "--metrics-bind-address").await?),
            None => None,
        };
        let health = match config.health_addr {
            Some(a) => Some(listen(a, "health probes", "--health-probe-bind-address").await?),
            None => None,
        };
        let (webhook, webhook_files) = match &config.webhook {
            Some(w) => {
                let files = if w.manage_certs {
                    let opts = CertOptions {
                        service_name: w.service_name.clone(),
                        namespace: w.namespace.clone(),
                        cluster_domain: config.controllers.cluster_domain.clone(),
                        cert_dir: w.cert_dir.clone(),
                    };
                    certs::bootstrap(client.clone(), &opts).await?.1
                } else {
                    TlsFiles::in_dir(&w.cert_dir, &w.cert_name, &w.key_name)
                };
                let server = WebhookServer::bind(w.addr, files.clone()).await?;
                (Some(server), Some(files))
            }
            None => (None, None),
        };
        Ok(Self {
            client,
            config,
            metrics,
            health,
            webhook,
            webhook_files,
        })
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound health probe address.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound webhook address.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref().and_then(|w| w.local_addr().ok())
    }

    /// Where the webhook's serving pair is read from.
    pub fn webhook_files(&self) -> Option<&TlsFiles> {
        self.webhook_files.as_ref()
    }

    /// Serves the endpoints and runs the controllers (while leading, with leader election)
    /// until `cancel` completes. With leader election, losing the lease stops the controllers
    /// and returns [`ClusterError::Leader`].
    pub async fn run(self, cancel: impl Future<Output = ()>) -> Result<(), ClusterError> {
        let (state, controllers) = start(self.client.clone(), self.config.controllers.clone());
        let elector = match self.config.leader_election.clone() {
            Some(le) => Some(LeaderElector::new(self.client.clone(), le)?),
            None => None,
        };
        let leader = elector.as_ref().map(LeaderElector::status);
        let endpoints = Endpoints {
            state,
            leader: leader.clone(),
        };
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        if let Some(l) = self.metrics {
            tracing::info!(address = %addr_of(&l), "serving metrics at /metrics");
            tasks.push(tokio::spawn(serve_http(l, endpoints.metrics_router())));
        }
        if let Some(l) = self.health {
            tracing::info!(address = %addr_of(&l), "serving health probes at /healthz and /readyz");
            tasks.push(tokio::spawn(serve_http(l, endpoints.health_router())));
        }
        if let Some(w) = self.webhook {
            tracing::info!(address = %w.local_addr().map(|a| a.to_string()).unwrap_or_default(), path = webhook::PATH, "serving the conversion webhook");
            tasks.push(tokio::spawn(w.serve(futures::future::pending())));
        }
        let result = match &elector {
            Some(e) => {
                tracing::info!(lease = %format!("{}/{}", e.config().namespace, e.config().name), identity = %e.config().identity, "waiting for leadership");
                match e.run(controllers, cancel).await {
                    Ok(Outcome::WorkFinished) => {
                        tracing::warn!("the controllers stopped on their own");
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(err) => Err(err.into()),
                }
            }
            None => {
                tracing::info!("leader election disabled; starting the controllers");
                tokio::select! {
                    () = controllers => tracing::warn!("the controllers stopped on their own"),
                    () = cancel => {}
                }
                Ok(())
            }
        };
        for t in tasks {
            t.abort();
        }
        result
    }
}

fn addr_of(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Logs upstream's start-up warning when the worker total is very large.
fn warn_about_workers(c: &Config) {
    let mut total = u32::from(c.sandbox_workers);
    if c.extensions {
        total += u32::from(c.claim_workers)
            + u32::from(c.warm_pool_workers)
            + u32::from(c.template_workers);
    }
    if total > 1000 {
        tracing::warn!(
            total,
            "more than 1000 concurrent workers in total; the API server may throttle this controller"
        );
    }
}

#[derive(Clone)]
struct Endpoints {
    state: State,
    leader: Option<LeaderStatus>,
}

/// The OpenMetrics content type of the exposition (`# EOF` terminated).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Endpoints {
    fn metrics_text(&self) -> String {
        let mut text = self.state.metrics_text();
        if let Some(l) = &self.leader {
            text = merge_exposition(&text, &l.render());
        }
        text
    }

    /// Ready when the caches have synced; a standby waiting for leadership is ready too (it
    /// serves the webhook, and its caches only start once it leads).
    fn ready(&self) -> bool {
        match &self.leader {
            Some(l) if !l.is_leader() => true,
            _ => self.state.is_ready(),
        }
    }

    fn metrics_router(&self) -> Router {
        let me = self.clone();
        Router::new().route(
            "/metrics",
            get(move || {
                let me = me.clone();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], me.metrics_text()) }
            }),
        )
    }

    fn health_router(&self) -> Router {
        let me = self.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = me.ready();
                    async move {
                        if ready {
                            (StatusCode::OK, "ok").into_response()
                        } else {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the controller caches have not synced yet",
                            )
                                .into_response()
                        }
                    }
                }),
            )
    }
}

async fn serve_http(listener: TcpListener, router: Router) {
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "an HTTP endpoint stopped");
    }
}

/// Joins two text expositions: `extra`'s families are placed before `base`'s `# EOF` line.
pub fn merge_exposition(base: &str, extra: &str) -> String {
    let strip = |s: &str| {
        s.strip_suffix("# EOF\n")
            .or_else(|| s.strip_suffix("# EOF"))
            .unwrap_or(s)
            .to_owned()
    };
    let had_eof = base.trim_end().ends_with("# EOF");
    let mut out = strip(base);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&strip(extra));
    if had_eof {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("# EOF\n");
    }
    out
}

/// Parses a Go-style bind address: `:8080` (all interfaces), `host:port`, `[::1]:8080`; `0`
/// disables the endpoint (`None`).
pub fn parse_bind_address(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s == "0" || s.is_empty() {
        return Ok(None);
    }
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in bind address {s:?}"))?;
        return Ok(Some(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Some(a));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("invalid bind address {s:?}: {e}; use :PORT, HOST:PORT or 0"))?
        .next()
        .map(Some)
        .ok_or_else(|| format!("bind address {s:?} resolves to no address"))
}

pub use agent_sandbox_api::duration::parse_go_duration;

/// Reads the allowed label domains file: a missing file gives the default; any other failure is
/// an error (upstream treats it as fatal).
pub fn read_allowed_label_domains(path: &Path) -> Result<Vec<String>, std::io::Error> {
    match fs_err::read_to_string(path) {
        Ok(text) => Ok(parse_allowed_label_domains(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(parse_allowed_label_domains("")),
        Err(e) => Err(e),
    }
}

/// A future that completes on SIGTERM or SIGINT (how Kubernetes and a terminal stop a process).
/// The handlers are installed when this is called (inside a Tokio runtime), not when the
/// future is first polled: as a container's PID 1, a signal without a handler is dropped.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    futures::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(term, "SIGTERM") => tracing::info!("SIGTERM received; shutting down"),
            () = wait(int, "SIGINT") => tracing::info!("interrupt received; shutting down"),
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(parse_bind_address("0").unwrap(), None);
        assert_eq!(
            parse_bind_address(":8080").unwrap(),
            Some(SocketAddr::from(([0, 0, 0, 0], 8080)))
        );
        assert_eq!(
            parse_bind_address("127.0.0.1:81").unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 81)))
        );
        assert!(parse_bind_address("[::1]:9").unwrap().unwrap().is_ipv6());
        assert!(parse_bind_address(":x").is_err());
        assert!(parse_bind_address("nonsense").is_err());
    }

    #[test]
    fn expositions_merge_before_eof() {
        let m = merge_exposition(
            "# TYPE a counter\na_total 1\n# EOF\n",
            "# TYPE b gauge\nb 1\n",
        );
        assert_eq!(
            m,
            "# TYPE a counter\na_total 1\n# TYPE b gauge\nb 1\n# EOF\n"
        );
        assert_eq!(merge_exposition("a 1\n", "b 1\n"), "a 1\nb 1\n");
    }

    #[test]
    fn allowed_domains_file_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_allowed_label_domains(&dir.path().join("absent")).unwrap(),
            ["sandbox.users.io"]
        );
        let p = dir.path().join("f");
        fs_err::write(&p, "a.io,b.io").unwrap();
        assert_eq!(read_allowed_label_domains(&p).unwrap(), ["a.io", "b.io"]);
        assert!(read_allowed_label_domains(dir.path()).is_err());
    }
}
