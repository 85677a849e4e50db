//! The HTTP surface: the axum router (discovery, health, OpenAPI, resources), bearer-token
//! authentication, the unix-socket and loopback-HTTPS listeners, and the in-process client.

use crate::api::{self, App, form_pairs, json_response};
use crate::discovery;
use crate::error::ApiError;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use tokio::sync::watch;

fn text(code: StatusCode, body: &'static str) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found() -> Response {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
    .into_response()
}

/// Serves one request, logged at debug level under the `apiserver::request` target with its
/// latency to the response head (a watch's head comes at once; its events follow).
async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    if !tracing::enabled!(target: "apiserver::request", tracing::Level::DEBUG) {
        return route(app, req).await;
    }
    let started = std::time::Instant::now();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let response = route(app, req).await;
    tracing::debug!(
        target: "apiserver::request",
        %method,
        %uri,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

async fn route(app: Arc<App>, req: Request) -> Response {
    // kube-apiserver reads the decoded path (`configmaps/pro%20be` names "pro be").
    let path = crate::api::unescape(req.uri().path().trim_end_matches('/'), false);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if req.method() != Method::GET && segs.first().is_some_and(|s| *s != "api" && *s != "apis") {
        return ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )
        .into_response();
    }
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => match app.store.health() {
            Ok(()) => text(StatusCode::OK, "ok"),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "[-]etcd failed: storage commit failed\nhealthz check failed",
            ),
        },
        ["version"] => json_response(StatusCode::OK, &discovery::version(), &[]),
        ["api"] => json_response(StatusCode::OK, &discovery::api_versions(), &[]),
        ["apis"] => json_response(StatusCode::OK, &discovery::api_groups(&app), &[]),
        ["api", "v1"] => match discovery::resource_list(&app, "", "v1") {
            Some(d) => json_response(StatusCode::OK, &d, &[]),
            None => not_found(),
        },
        ["apis", g] => match discovery::api_group(&app, g) {
            Some(d) => json_response(StatusCode::OK, &d, &[]),
            None => not_found(),
        },
        ["apis", g, v] => match discovery::resource_list(&app, g, v) {
            Some(d) => json_response(StatusCode::OK, &d, &[]),
            None => not_found(),
        },
        ["openapi", "v3"] => json_response(StatusCode::OK, &discovery::openapi_v3_index(&app), &[]),
        ["openapi", "v3", "api", "v1"] => match discovery::openapi_v3_doc(&app, "", "v1") {
            Some(d) => json_response(StatusCode::OK, &d, &[]),
            None => not_found(),
        },
        ["openapi", "v3", "apis", g, v] => match discovery::openapi_v3_doc(&app, g, v) {
            Some(d) => json_response(StatusCode::OK, &d, &[]),
            None => not_found(),
        },
        ["openapi", "v2"] => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if accept.contains("protobuf") {
                // An empty protobuf message is a valid, empty OpenAPI v2 document. The reply
                // names the type as kube-apiserver does, without the `@` of the Accept form,
                // which Go's media-type parser rejects (kubectl then fails validation).
                let mut r = (StatusCode::OK, Vec::<u8>::new()).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    ),
                );
                r
            } else {
                json_response(StatusCode::OK, &discovery::openapi_v2(), &[])
            }
        }
        ["api", "v1", rest @ ..] => resource(app, "", "v1", rest, req).await,
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            resource(app, &g, &v, rest, req).await
        }
        _ => not_found(),
    }
}

async fn resource(
    app: Arc<App>,
    group: &str,
    version: &str,
    rest: &[&str],
    req: Request,
) -> Response {
    match api::parse_target(&app, group, version, rest) {
        None => not_found(),
        Some(Err(e)) => e.into_response(),
        Some(Ok(t)) => api::handle_resource(app, t, req).await,
    }
}

/// The router without authentication (what the in-process client uses).
pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(dispatch).with_state(app)
}

/// Paths readable without a token, as kube-apiserver's `system:public-info-viewer` allows.
fn public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
}

async fn auth(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    if public(req.uri().path()) {
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The router with bearer-token authentication (for the socket and TCP listeners).
pub fn authed_router(app: Arc<App>, token: String) -> Router {
    router(app).layer(middleware::from_fn_with_state(Arc::new(token), auth))
}

/// Serves connections from a unix listener until shutdown.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let svc = hyper_util::service::TowerToHyperService::new(router.clone());
                let mut sd = shutdown.clone();
                tokio::spawn(async move {
                    let b = auto::Builder::new(TokioExecutor::new());
                    let conn = b.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = sd.changed() => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves TLS connections from a TCP listener until shutdown.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let svc = hyper_util::service::TowerToHyperService::new(router.clone());
                let mut sd = shutdown.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let b = auto::Builder::new(TokioExecutor::new());
                    let conn = b.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = sd.changed() => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Query helper used by tests.
pub fn query_map(q: &str) -> std::collections::HashMap<String, String> {
    form_pairs(q).into_iter().collect()
}
