//! The browser's DevTools front: a proxy on `--cdp-port` to the browser's own DevTools
//! endpoint (`--cdp-upstream`, on loopback) that makes it usable from outside the sandbox.
//!
//! Chromium refuses a `Host` that is not an IP or `localhost`, refuses WebSocket `Origin`s it
//! was not told about, and writes its own address into the `webSocketDebuggerUrl`s of
//! `/json/*`. The front sends its upstream's address as `Host`, drops `Origin` (the sandbox
//! boundary, not the browser, decides who gets in), and writes the address the client used
//! (`X-Forwarded-Host` from the router, else `Host`) into those URLs, so that Playwright's
//! `connect_over_cdp` and plain WebSocket clients work through the router. While the browser
//! starts (or restarts), connections wait for it up to [`CONNECT_WAIT`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::ApiError;

/// How long a request waits for the browser's endpoint to accept connections.
pub const CONNECT_WAIT: Duration = Duration::from_secs(20);
/// Largest `/json/*` answer rewritten (they are a few KiB per tab).
const MAX_JSON: usize = 8 * 1024 * 1024;

#[derive(Debug)]
struct Front {
    upstream: String,
}

/// Serves the front on `listener` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    upstream: String,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let router = Router::new()
        .fallback(forward)
        .with_state(Arc::new(Front { upstream }));
    crate::http_server::serve(
        listener,
        router,
        crate::http_server::Protocol::Http {
            idle: Duration::from_secs(3600),
        },
        stop,
        grace,
    )
    .await;
}

async fn connect(upstream: &str) -> Result<TcpStream, ApiError> {
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    loop {
        match TcpStream::connect(upstream).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    format!(
                        "the browser's DevTools endpoint {upstream} does not answer ({e}) after \
                         {CONNECT_WAIT:?}; check the browser service on GET /v2/services (REST port)"
                    ),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn forward(State(front): State<Arc<Front>>, mut req: Request) -> Response {
    match forward_inner(&front, &mut req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn forward_inner(front: &Front, req: &mut Request) -> Result<Response, ApiError> {
    let public_host = req
        .headers()
        .get("x-forwarded-host")
        .or_else(|| req.headers().get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let stream = connect(&front.upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| bad_gateway(&front.upstream, &e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "DevTools connection ended");
        }
    });
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in req.headers() {
        let skip = [header::HOST, header::ORIGIN, header::CONTENT_LENGTH];
        if !skip.contains(name) && !name.as_str().starts_with("x-forwarded-") {
            out = out.header(name, value);
        }
    }
    let body = std::mem::take(req.body_mut());
    let out = out
        .header(header::HOST, &front.upstream)
        .body(if upgrade { Body::empty() } else { body })
        .map_err(|e| ApiError::invalid(format!("cannot forward the request: {e}")))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| bad_gateway(&front.upstream, &e))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let client_side = hyper::upgrade::on(&mut *req);
        let browser_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::join!(client_side, browser_side) {
                (Ok(client), Ok(browser)) => {
                    // Either side may go away at any time (a client that disconnects mid-session
                    // ends only its own session in the browser).
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(browser),
                    )
                    .await;
                }
                (c, b) => {
                    tracing::debug!(client = ?c.err(), browser = ?b.err(), "DevTools upgrade failed")
                }
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let is_json = req.uri().path().starts_with("/json");
    let (mut parts, body) = resp.into_parts();
    let body = Body::new(body);
    let Some(public_host) = public_host.filter(|_| is_json) else {
        return Ok(Response::from_parts(parts, body));
    };
    let bytes = axum::body::to_bytes(body, MAX_JSON)
        .await
        .map_err(|e| bad_gateway(&front.upstream, &e))?;
    let text = rewrite_hosts(
        &String::from_utf8_lossy(&bytes),
        &front.upstream,
        &public_host,
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Ok(len) = HeaderValue::from_str(&text.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, len);
    }
    Ok(Response::from_parts(parts, Body::from(text)))
}

/// Replaces the browser's own address in DevTools URLs by the one the client used.
fn rewrite_hosts(text: &str, upstream: &str, public_host: &str) -> String {
    let port = upstream.rsplit_once(':').map_or("", |(_, p)| p);
    let mut out = text.replace(upstream, public_host);
    if !port.is_empty() {
        out = out.replace(&format!("localhost:{port}"), public_host);
    }
    out
}

fn bad_gateway(upstream: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        format!(
            "the browser's DevTools endpoint {upstream} failed: {e}; retry, or check GET /v2/services"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devtools_urls_name_the_public_host() {
        let text = r#"{"webSocketDebuggerUrl": "ws://127.0.0.1:9223/devtools/browser/x",
            "devtoolsFrontendUrl": "/devtools/inspector.html?ws=localhost:9223/devtools/page/y"}"#;
        let out = rewrite_hosts(text, "127.0.0.1:9223", "router.example:8080");
        assert!(out.contains("ws://router.example:8080/devtools/browser/x"));
        assert!(out.contains("ws=router.example:8080/devtools/page/y"));
    }
}
