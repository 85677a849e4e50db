//! Forwarding one request to a sandbox: HTTP/1.1, HTTP/2 cleartext (gRPC) and WebSocket
//! upgrades, streamed both ways.
//!
//! Steps for a plain request:
//! 1. headers: `Host`, `Authorization` and hop-by-hop headers are removed (`TE: trailers` is kept
//!    for gRPC), `X-Forwarded-For/-Host/-Proto` are set;
//! 2. a small body (known length ≤ [`REPLAYABLE_BODY`]) is read so that the request can be
//!    replayed; a larger or unknown-length body is streamed and never retried;
//! 3. the request goes out over HTTP/2 prior knowledge if it came in over HTTP/2, else HTTP/1.1,
//!    on pooled connections;
//! 4. connection failures (nothing sent yet) are retried with exponential backoff; the time to
//!    the response headers is bounded by the request's timeout.
//!
//! A WebSocket upgrade takes its own connection: the upgrade request is sent, and on
//! `101 Switching Protocols` both upgraded connections are spliced together.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The body type the router sends and returns.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Bodies up to this many bytes (with a known length) are buffered so that a failed connection
/// can be retried.
pub const REPLAYABLE_BODY: u64 = 64 * 1024;

/// Why a request did not reach the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection could be made (after retries).
    #[error("connecting to {addr}: {message}")]
    Connect {
        /// The sandbox address.
        addr: SocketAddr,
        /// The cause.
        message: String,
    },
    /// The sandbox did not answer in time.
    #[error("no response from {addr} within {timeout:?}")]
    Timeout {
        /// The sandbox address.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The connection failed after the request was sent, or the reply was not HTTP.
    #[error("talking to {addr}: {message}")]
    Protocol {
        /// The sandbox address.
        addr: SocketAddr,
        /// The cause.
        message: String,
    },
    /// The client's request body failed while being read.
    #[error("reading the request body: {0}")]
    ClientBody(hyper::Error),
}

impl ProxyError {
    /// The metrics `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Protocol { .. } | Self::ClientBody(_) => "protocol",
        }
    }
}

/// Pooled clients to sandboxes and the retry policy.
pub struct Upstream {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
    /// Retries after a failed connection attempt.
    pub max_retries: u32,
    /// The first retry waits this long; each next one twice as long.
    pub retry_base: Duration,
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    c
}

impl Upstream {
    /// Clients with `max_retries` connection retries starting at `retry_base`.
    pub fn new(max_retries: u32, retry_base: Duration) -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector());
        Self {
            http1,
            http2,
            max_retries,
            retry_base,
        }
    }

    /// Forwards `req` to `addr`; `peer` is the client's address (for `X-Forwarded-For`).
    /// `hold` is kept until the exchange ends: the end of the response body, or of the
    /// upgraded connection.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        addr: SocketAddr,
        peer: SocketAddr,
        timeout: Duration,
        on_retry: impl Fn(),
        hold: impl Send + Sync + 'static,
    ) -> Result<Response<Body>, ProxyError> {
        if is_upgrade(&req) {
            return tokio::time::timeout(
                timeout,
                self.forward_upgrade(req, addr, peer, &on_retry, hold),
            )
            .await
            .map_err(|_| ProxyError::Timeout { addr, timeout })?;
        }
        let (mut parts, body) = req.into_parts();
        let via_h2 = parts.version == Version::HTTP_2;
        prepare_headers(&mut parts.headers, peer, false);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{addr}{path}")
            .parse()
            .expect("an address and a path form a URI");
        parts.version = if via_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let client = if via_h2 { &self.http2 } else { &self.http1 };

        // A replayable body is read now; anything else streams through once.
        let replayable = body.is_end_stream()
            || body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= REPLAYABLE_BODY);
        let send = async {
            if !replayable {
                let req = Request::from_parts(parts, body.boxed());
                return client.request(req).await.map_err(|e| classify(e, addr));
            }
            let bytes = body
                .collect()
                .await
                .map_err(ProxyError::ClientBody)?
                .to_bytes();
            let mut attempt = 0;
            loop {
                let req = Request::from_parts(parts.clone(), full(bytes.clone()));
                match client.request(req).await {
                    Err(e) if e.is_connect() && attempt < self.max_retries => {
                        on_retry();
                        tokio::time::sleep(self.retry_base * 2u32.pow(attempt)).await;
                        attempt += 1;
                    }
                    other => return other.map_err(|e| classify(e, addr)),
                }
            }
        };
        let resp = tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| ProxyError::Timeout { addr, timeout })??;
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let body = body.map_frame(move |frame| {
            let _held = &hold;
            frame
        });
        Ok(Response::from_parts(parts, body.boxed()))
    }

    async fn forward_upgrade(
        &self,
        mut req: Request<Incoming>,
        addr: SocketAddr,
        peer: SocketAddr,
        on_retry: &impl Fn(),
        hold: impl Send + Sync + 'static,
    ) -> Result<Response<Body>, ProxyError> {
        let client_side = hyper::upgrade::on(&mut req);
        let mut attempt = 0;
        let stream = loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => break s,
                Err(e) if attempt < self.max_retries => {
                    tracing::debug!(%addr, error = %e, "retrying upgrade connection");
                    on_retry();
                    tokio::time::sleep(self.retry_base * 2u32.pow(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(ProxyError::Connect {
                        addr,
                        message: e.to_string(),
                    });
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Protocol {
                addr,
                message: e.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upgrade connection ended");
            }
        });
        let (mut parts, _) = req.into_parts();
        prepare_headers(&mut parts.headers, peer, true);
        parts.headers.remove(header::ORIGIN);
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&addr.to_string()).expect("an address is a valid header"),
        );
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .expect("a path is a URI");
        parts.version = Version::HTTP_11;
        let mut resp = sender
            .send_request(Request::from_parts(parts, full(Bytes::new())))
            .await
            .map_err(|e| ProxyError::Protocol {
                addr,
                message: e.to_string(),
            })?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let sandbox_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _held = hold;
                match tokio::join!(client_side, sandbox_side) {
                    (Ok(client), Ok(sandbox)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(client),
                            &mut TokioIo::new(sandbox),
                        )
                        .await;
                    }
                    (c, s) => {
                        tracing::debug!(client = ?c.err(), sandbox = ?s.err(), "upgrade failed")
                    }
                }
            });
        }
        Ok(resp.map(BodyExt::boxed))
    }
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn classify(e: hyper_util::client::legacy::Error, addr: SocketAddr) -> ProxyError {
    let message = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
    if e.is_connect() {
        ProxyError::Connect { addr, message }
    } else {
        ProxyError::Protocol { addr, message }
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().get(header::UPGRADE).is_some()
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
}

fn header_has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers (and those named in `Connection`); an upgrade keeps `Connection`
/// and `Upgrade`; `TE: trailers` (gRPC) survives.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty() && t != "upgrade")
        .collect();
    for name in named {
        h.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        if upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        h.remove(name);
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        h.remove(header::TE);
    }
}

fn prepare_headers(h: &mut HeaderMap, peer: SocketAddr, upgrade: bool) {
    let host = h.remove(header::HOST);
    h.remove(header::AUTHORIZATION);
    strip_hop_by_hop(h, upgrade);
    let forwarded_for = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        h.insert("x-forwarded-for", v);
    }
    if let Some(host) = host {
        h.insert("x-forwarded-host", host);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}
