//! The router's listeners: the proxy port (HTTP/1.1 and h2c on one socket, `GET /healthz`,
//! bearer-token auth) and the metrics port, and the request handler that ties the header
//! contract, the cache and the proxy together.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::cache::PodCache;
use crate::idle::{Idle, WakeError};
use crate::metrics::{ErrorLabels, Metrics, RequestLabels};
use crate::proxy::{Body, ProxyError, Upstream, full};
use crate::target::Target;

/// Router settings. Defaults follow upstream's Go router.
#[derive(Clone, Debug)]
pub struct Config {
    /// Bearer token clients must send; `None` with `allow_unauthenticated` disables auth.
    pub auth_token: Option<String>,
    /// Serve without a token (local use only).
    pub allow_unauthenticated: bool,
    /// Accept loopback addresses in `X-Sandbox-Pod-IP`.
    pub allow_loopback_pod_ip: bool,
    /// Forward to an `X-Sandbox-Pod-IP` the pod cache does not know (after waiting
    /// [`UNKNOWN_POD_IP_WAIT`] for it to learn the address). Off by default: the router then
    /// connects only to the Ready Pod of the sandbox a request names, so a token holder cannot
    /// make it reach any other address.
    pub allow_any_pod_ip: bool,
    /// Time limit to the sandbox's response headers (default 180 s).
    pub proxy_timeout: Duration,
    /// Connection retries (default 3: 200, 400, 800 ms).
    pub upstream_max_retries: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Fall back to `<id>.<ns>.svc.<cluster_domain>` when the cache has no pod (clusters).
    pub dns_fallback: bool,
    /// Cluster DNS domain.
    pub cluster_domain: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            auth_token: None,
            allow_unauthenticated: false,
            allow_loopback_pod_ip: false,
            allow_any_pod_ip: false,
            proxy_timeout: Duration::from_secs(180),
            upstream_max_retries: 3,
            retry_base: Duration::from_millis(200),
            dns_fallback: false,
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// How long a request whose `X-Sandbox-Pod-IP` or sandbox the pod cache does not know waits for
/// the cache to learn it: a client can read a new sandbox's address (or its claim's Ready) from
/// the API server a moment before the router's watch delivers the same Pod.
pub const UNKNOWN_POD_IP_WAIT: Duration = Duration::from_secs(1);

/// The router refuses to start without a way to authenticate clients.
#[derive(Debug, thiserror::Error)]
#[error(
    "the router needs a bearer token (--auth-token or AGENT_SANDBOX_ROUTER_TOKEN); pass --allow-unauthenticated to serve without one (local use only)"
)]
pub struct NoAuthConfigured;

/// The request handler and its state.
pub struct Router {
    config: Config,
    cache: PodCache,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    idle: Option<Arc<Idle>>,
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

fn detail(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, json!({ "detail": message.into() }))
}

/// Constant-time comparison so that the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl Router {
    /// A router resolving through `cache`.
    pub fn new(config: Config, cache: PodCache) -> Result<Self, NoAuthConfigured> {
        if config.auth_token.is_none() && !config.allow_unauthenticated {
            return Err(NoAuthConfigured);
        }
        let upstream = Upstream::new(config.upstream_max_retries, config.retry_base);
        Ok(Self {
            config,
            cache,
            upstream,
            metrics: Arc::new(Metrics::default()),
            idle: None,
        })
    }

    /// Turns on idle sandboxes (see [`crate::idle`]): sandboxes with an idle policy are paused
    /// or suspended through `client`, and woken by their next request. Returns the owner, whose
    /// [`Idle::run`] the caller spawns.
    pub fn enable_idle(&mut self, client: kube::Client) -> Arc<Idle> {
        let idle = Arc::new(Idle::new(self.cache.clone(), client, self.metrics()));
        self.idle = Some(Arc::clone(&idle));
        idle
    }

    /// The address of the sandbox `t` names once the pod cache knows it, waiting up to
    /// [`UNKNOWN_POD_IP_WAIT`]: a sandbox claimed a moment ago (its Pod relabelled as no longer
    /// a pool member) can reach the cache a moment after the client learnt of the claim.
    async fn await_cached(&self, t: &Target) -> Option<IpAddr> {
        let deadline = tokio::time::Instant::now() + UNKNOWN_POD_IP_WAIT;
        loop {
            let change = self.cache.next_change(deadline);
            if let Some(ip) = self.cache.resolve(&t.namespace, &t.id, t.uid.as_deref()) {
                return Some(ip);
            }
            if !change.await {
                return None;
            }
        }
    }

    /// Wakes `namespace/name` when the router stopped it for being idle: its address once it
    /// serves, `Ok(None)` when it was not stopped for being idle, a response saying why when it
    /// does not come back in time.
    async fn wake(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<IpAddr>, Response<Body>> {
        let Some(idle) = &self.idle else {
            return Ok(None);
        };
        let deadline = tokio::time::Instant::now() + timeout;
        idle.wake(namespace, name, deadline).await.map_err(|e| {
            let status = match e {
                WakeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                WakeError::Write(_) => StatusCode::BAD_GATEWAY,
            };
            detail(
                status,
                format!(
                    "Sandbox {name} was stopped for being idle and {e}; retry, or raise X-Sandbox-Timeout."
                ),
            )
        })
    }

    /// The metrics this router records.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Handles one request from `peer`; `authenticated` when the connection was authenticated
    /// before it reached the router (a tunnel through the API server's port-forward), so it
    /// needs no bearer token.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        authenticated: bool,
    ) -> Response<Body> {
        if req.method() == Method::GET && req.uri().path() == "/healthz" {
            return json_response(StatusCode::OK, json!({"status": "ok"}));
        }
        let started = Instant::now();
        self.metrics.inflight.inc();
        let method = req.method().to_string();
        let resp = self.route(req, peer, authenticated).await;
        self.metrics.inflight.dec();
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                method,
                code: resp.status().as_u16(),
            })
            .inc();
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        authenticated: bool,
    ) -> Response<Body> {
        if let Some(expected) = self.config.auth_token.as_ref().filter(|_| !authenticated) {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if !token_matches(given.as_bytes(), expected.as_bytes()) {
                return detail(StatusCode::UNAUTHORIZED, "Missing or invalid router token.");
            }
        }
        let target = match Target::from_headers(
            req.headers(),
            self.config.allow_loopback_pod_ip,
            self.config.proxy_timeout,
        ) {
            Ok(t) => t,
            Err(e) => return detail(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let timeout = target.timeout.unwrap_or(self.config.proxy_timeout);
        let mut ip = match self.resolve(&target).await {
            Ok(Some(ip)) => ip,
            Err(ForeignPodIp) => {
                return detail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "X-Sandbox-Pod-IP is the address of another sandbox, not {}.",
                        target.id
                    ),
                );
            }
            Ok(None) => match self.wake(&target.namespace, &target.id, timeout).await {
                Ok(Some(ip)) => ip,
                Ok(None) if let Some(ip) = self.await_cached(&target).await => ip,
                Ok(None) => {
                    self.metrics
                        .upstream_errors
                        .get_or_create(&ErrorLabels {
                            reason: "unresolved",
                        })
                        .inc();
                    return detail(
                        StatusCode::BAD_GATEWAY,
                        format!("Could not connect to the backend sandbox: {}", target.id),
                    );
                }
                Err(resp) => return resp,
            },
        };
        let mut at = self.cache.sandbox_at(ip);
        if self.cache.is_paused(ip) {
            let woken = match &at {
                Some(a) if a.idle.is_some() => self.wake(&a.namespace, &a.name, timeout).await,
                _ => Ok(None),
            };
            match woken {
                Ok(Some(now)) => {
                    ip = now;
                    at = self.cache.sandbox_at(ip);
                }
                Ok(None) => {
                    self.metrics
                        .upstream_errors
                        .get_or_create(&ErrorLabels { reason: "paused" })
                        .inc();
                    return detail(
                        StatusCode::CONFLICT,
                        format!(
                            "Sandbox {} is paused: its processes are frozen and cannot answer. Unpause it (agent-sandbox unpause {}, or remove the annotation {}) and retry.",
                            target.id,
                            target.id,
                            agent_sandbox_api::constants::extensions::annotations::PAUSED
                        ),
                    );
                }
                Err(resp) => return resp,
            }
        }
        let busy = self
            .idle
            .as_ref()
            .zip(at)
            .map(|(idle, a)| idle.begin((a.namespace, a.name)));
        let addr = SocketAddr::new(ip, target.port);
        let retries = &self.metrics.upstream_retries;
        match self
            .upstream
            .forward(
                req,
                addr,
                peer,
                timeout,
                || {
                    retries.inc();
                },
                busy,
            )
            .await
        {
            Ok(resp) => resp,
            Err(err) => {
                self.metrics
                    .upstream_errors
                    .get_or_create(&ErrorLabels {
                        reason: err.reason(),
                    })
                    .inc();
                tracing::debug!(sandbox = %target.id, namespace = %target.namespace, error = %err, "proxy failed");
                match err {
                    ProxyError::Timeout { .. } => detail(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("The backend sandbox did not respond in time: {}", target.id),
                    ),
                    _ => detail(
                        StatusCode::BAD_GATEWAY,
                        format!("Could not connect to the backend sandbox: {}", target.id),
                    ),
                }
            }
        }
    }

    /// The address of the sandbox `t` names: `X-Sandbox-Pod-IP` when the cache knows it as that
    /// sandbox's (refused when it is another sandbox's), else the pod cache, else DNS; `None`
    /// when nothing resolves. An `X-Sandbox-Pod-IP` the cache does not know, for a sandbox it
    /// does not know either, resolves to nothing once the cache had [`UNKNOWN_POD_IP_WAIT`] to
    /// learn it (the sandbox is gone, not Ready, or not a sandbox at all), unless
    /// `allow_any_pod_ip`.
    async fn resolve(&self, t: &Target) -> Result<Option<IpAddr>, ForeignPodIp> {
        let cached = || self.cache.resolve(&t.namespace, &t.id, t.uid.as_deref());
        if let Some(ip) = t.pod_ip {
            let deadline = tokio::time::Instant::now() + UNKNOWN_POD_IP_WAIT;
            loop {
                let change = self.cache.next_change(deadline);
                match self
                    .cache
                    .ip_serves(ip, &t.namespace, &t.id, t.uid.as_deref())
                {
                    Some(true) => return Ok(Some(ip)),
                    Some(false) => return Err(ForeignPodIp),
                    None => {}
                }
                // An address the cache does not know, for a sandbox it knows elsewhere, is
                // stale (the Pod moved, e.g. after a resume): the watch-fed cache lags by
                // milliseconds, a client's copy of the address by as long as the client lives.
                if let Some(known) = cached() {
                    return Ok(Some(known));
                }
                if self.config.allow_any_pod_ip {
                    return Ok(Some(ip));
                }
                if !change.await {
                    tracing::debug!(sandbox = %t.id, namespace = %t.namespace, %ip,
                        "X-Sandbox-Pod-IP is no Ready Pod of the sandbox; --allow-any-pod-ip forwards to such addresses");
                    return Ok(None);
                }
            }
        }
        if let Some(ip) = cached() {
            return Ok(Some(ip));
        }
        if !self.config.dns_fallback {
            return Ok(None);
        }
        let host = format!(
            "{}.{}.svc.{}:{}",
            t.id, t.namespace, self.config.cluster_domain, t.port
        );
        Ok(tokio::net::lookup_host(host)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|a| a.ip()))
    }
}

/// `X-Sandbox-Pod-IP` names the address of another sandbox's Pod.
struct ForeignPodIp;

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(router: Arc<Router>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(Arc::clone(&router), stream, peer, false));
    }
}

/// Serves one client connection (HTTP/1.1 with upgrades, or h2c) until it ends. `authenticated`:
/// the connection was authenticated before it reached the router (the API server's
/// port-forward to the router's Pod), so its requests need no bearer token.
pub async fn serve_connection<IO>(
    router: Arc<Router>,
    io: IO,
    peer: SocketAddr,
    authenticated: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(move |req| {
        let router = Arc::clone(&router);
        async move { Ok::<_, std::convert::Infallible>(router.handle(req, peer, authenticated).await) }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves `GET /metrics` (and `/healthz`) on `listener` until the task is dropped.
pub async fn serve_metrics(metrics: Arc<Metrics>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => Response::builder()
                            .header(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(full(metrics.render()))
                            .expect("static response parts are valid"),
                        "/healthz" | "/readyz" => {
                            json_response(StatusCode::OK, json!({"status": "ok"}))
                        }
                        _ => detail(StatusCode::NOT_FOUND, "Not found."),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
