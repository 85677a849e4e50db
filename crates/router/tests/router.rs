//! End-to-end tests of the router over real sockets on loopback: a real backend server, real
//! HTTP/1.1, h2c and WebSocket clients, and a pod cache fed by the embedded API server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox_router::cache::PodCache;
use agent_sandbox_router::proxy::{Body, full};
use agent_sandbox_router::server::{self, Config, Router};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const TOKEN: &str = "test-token";

/// A backend that echoes the request as JSON, streams on `/stream`, stalls on `/slow`, sends
/// trailers on `/trailers` and echoes WebSocket messages on `/ws`.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(backend_handle(req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn backend_handle(mut req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/ws" => {
            let key = req.headers()["sec-websocket-key"]
                .to_str()
                .unwrap()
                .to_owned();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let io = TokioIo::new(upgrade.await.unwrap());
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    io,
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(full(Bytes::new()))
                .unwrap()
        }
        "/stream" => {
            let chunks = futures::stream::unfold(0, |i| async move {
                if i == 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Some((
                    Ok::<_, hyper::Error>(Frame::data(Bytes::from(format!("chunk{i}\n")))),
                    i + 1,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(full("late"))
        }
        "/trailers" => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = futures::stream::iter(vec![
                Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"payload"))),
                Ok(Frame::trailers(trailers)),
            ]);
            Response::new(BodyExt::boxed(StreamBody::new(frames)))
        }
        _ => {
            let version = format!("{:?}", req.version());
            let method = req.method().to_string();
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let headers: serde_json::Map<String, Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                .collect();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let echo = json!({"version": version, "method": method, "path": path, "headers": headers, "body_len": body.len(), "body_prefix": String::from_utf8_lossy(&body[..body.len().min(32)])});
            Response::new(full(echo.to_string()))
        }
    }
}

struct Harness {
    addr: SocketAddr,
    router: Arc<Router>,
    cache: PodCache,
    http: reqwest_like::Client,
}

async fn start(config: Config) -> Harness {
    let cache = PodCache::new();
    let router = Arc::new(Router::new(config, cache.clone()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(Arc::clone(&router), listener));
    Harness {
        addr,
        router,
        cache,
        http: reqwest_like::Client::new(),
    }
}

fn test_config() -> Config {
    Config {
        auth_token: Some(TOKEN.into()),
        allow_loopback_pod_ip: true,
        retry_base: Duration::from_millis(10),
        ..Config::default()
    }
}

/// A minimal HTTP/1.1 and h2c client on hyper for the tests.
mod reqwest_like {
    use super::*;
    use hyper_util::client::legacy::Client as HyperClient;
    use hyper_util::client::legacy::connect::HttpConnector;

    pub(crate) struct Client {
        h1: HyperClient<HttpConnector, Body>,
        h2: HyperClient<HttpConnector, Body>,
    }

    impl Client {
        pub(crate) fn new() -> Self {
            Self {
                h1: HyperClient::builder(TokioExecutor::new()).build_http(),
                h2: HyperClient::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build_http(),
            }
        }

        pub(crate) async fn send(&self, req: Request<Body>) -> Response<Incoming> {
            let client = if req.version() == Version::HTTP_2 {
                &self.h2
            } else {
                &self.h1
            };
            client.request(req).await.unwrap()
        }
    }
}

fn request(h: &Harness, path: &str, headers: &[(&str, &str)]) -> http::request::Builder {
    let mut b = Request::builder()
        .uri(format!("http://{}{path}", h.addr))
        .header("authorization", format!("Bearer {TOKEN}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b
}

async fn json_of(resp: Response<Incoming>) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))),
    )
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let h = start(test_config()).await;
    let req = Request::get(format!("http://{}/healthz", h.addr))
        .body(full(""))
        .unwrap();
    let (status, body) = json_of(h.http.send(req).await).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
}

#[tokio::test]
async fn refuses_to_start_without_auth_unless_asked() {
    assert!(Router::new(Config::default(), PodCache::new()).is_err());
    assert!(
        Router::new(
            Config {
                allow_unauthenticated: true,
                ..Config::default()
            },
            PodCache::new()
        )
        .is_ok()
    );
}

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    let h = start(test_config()).await;
    for auth in [None, Some("Bearer nope"), Some("Basic dGVzdA==")] {
        let mut b = Request::get(format!("http://{}/x", h.addr)).header("x-sandbox-id", "a");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let (status, body) = json_of(h.http.send(b.body(full("")).unwrap()).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, json!({"detail": "Missing or invalid router token."}));
    }
}

#[tokio::test]
async fn header_errors_are_400_with_upstream_details() {
    let h = start(test_config()).await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "X-Sandbox-ID header is required."),
        (&[("x-sandbox-id", "UPPER")], "Invalid sandbox ID format."),
        (
            &[("x-sandbox-id", "a"), ("x-sandbox-namespace", "a_b")],
            "Invalid namespace format.",
        ),
        (
            &[("x-sandbox-id", "a"), ("x-sandbox-port", "99999")],
            "Invalid port format.",
        ),
        (
            &[
                ("x-sandbox-id", "a"),
                ("x-sandbox-pod-ip", "169.254.169.254"),
            ],
            "Invalid target IP address.",
        ),
    ];
    for (headers, detail) in cases {
        let (status, body) = json_of(
            h.http
                .send(request(&h, "/", headers).body(full("")).unwrap())
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{headers:?}");
        assert_eq!(body, json!({"detail": detail}));
    }
    // With the default SSRF guard, loopback is refused too.
    let strict = start(Config {
        allow_loopback_pod_ip: false,
        ..test_config()
    })
    .await;
    let (status, _) = json_of(
        strict
            .http
            .send(
                request(
                    &strict,
                    "/",
                    &[("x-sandbox-id", "a"), ("x-sandbox-pod-ip", "127.0.0.1")],
                )
                .body(full(""))
                .unwrap(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn forwards_by_pod_ip_header_and_rewrites_headers() {
    let h = start(test_config()).await;
    h.cache
        .apply(&ready_pod("default", "sb", "127.0.0.1", "uid-sb"));
    let backend = backend().await;
    let port = backend.port().to_string();
    let req = request(
        &h,
        "/echo?q=1",
        &[
            ("x-sandbox-id", "sb"),
            ("x-sandbox-pod-ip", "127.0.0.1"),
            ("x-sandbox-port", &port),
            ("content-type", "text/plain"),
        ],
    )
    .method("POST")
    .body(full("hello"))
    .unwrap();
    let (status, echo) = json_of(h.http.send(req).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo?q=1");
    assert_eq!(echo["body_prefix"], "hello");
    assert_eq!(
        echo["headers"].get("authorization"),
        None,
        "the router token never reaches the sandbox"
    );
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-host"], h.addr.to_string());
    assert_eq!(echo["headers"]["x-sandbox-id"], "sb");
}

#[tokio::test]
async fn resolves_from_the_pod_cache_by_name_and_uid() {
    let h = start(test_config()).await;
    let backend = backend().await;
    h.cache
        .apply(&ready_pod("ns1", "sb1", "127.0.0.1", "sb-uid-1"));
    let port = backend.port().to_string();
    for headers in [
        vec![
            ("x-sandbox-id", "sb1"),
            ("x-sandbox-namespace", "ns1"),
            ("x-sandbox-port", port.as_str()),
        ],
        vec![
            ("x-sandbox-id", "other"),
            ("x-sandbox-namespace", "ns1"),
            ("x-sandbox-uid", "sb-uid-1"),
            ("x-sandbox-port", port.as_str()),
        ],
    ] {
        let (status, echo) = json_of(
            h.http
                .send(request(&h, "/p", &headers).body(full("")).unwrap())
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{headers:?}");
        assert_eq!(echo["path"], "/p");
    }
    let (status, body) = json_of(
        h.http
            .send(
                request(&h, "/p", &[("x-sandbox-id", "sb1")])
                    .body(full(""))
                    .unwrap(),
            )
            .await,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "wrong namespace must not resolve"
    );
    assert_eq!(
        body,
        json!({"detail": "Could not connect to the backend sandbox: sb1"})
    );
}

fn ready_pod(ns: &str, name: &str, ip: &str, sandbox_uid: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("pod-{name}"),
            "labels": {"agents.x-k8s.io/sandbox-name-hash": agent_sandbox_api::name_hash(name)},
            "ownerReferences": [{"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "name": name, "uid": sandbox_uid, "controller": true}]},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn closed_port_is_502_after_retries() {
    let h = start(test_config()).await;
    h.cache
        .apply(&ready_pod("default", "gone", "127.0.0.1", "uid-gone"));
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = closed.to_string();
    let started = Instant::now();
    let (status, body) = json_of(
        h.http
            .send(
                request(
                    &h,
                    "/",
                    &[
                        ("x-sandbox-id", "gone"),
                        ("x-sandbox-pod-ip", "127.0.0.1"),
                        ("x-sandbox-port", &port),
                    ],
                )
                .body(full(""))
                .unwrap(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        json!({"detail": "Could not connect to the backend sandbox: gone"})
    );
    // 3 retries at 10, 20, 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(70));
    let metrics = h.router.metrics().render();
    assert!(
        metrics.contains("sandbox_router_upstream_retries_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandbox_router_upstream_errors_total{reason=\"connect\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sandbox_router_requests_total{method=\"GET\",code=\"502\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn per_request_timeout_gives_504() {
    let h = start(test_config()).await;
    h.cache
        .apply(&ready_pod("default", "sb", "127.0.0.1", "uid-sb"));
    let backend = backend().await;
    let port = backend.port().to_string();
    let started = Instant::now();
    let (status, body) = json_of(
        h.http
            .send(
                request(
                    &h,
                    "/slow",
                    &[
                        ("x-sandbox-id", "sb"),
                        ("x-sandbox-pod-ip", "127.0.0.1"),
                        ("x-sandbox-port", &port),
                        ("x-sandbox-timeout", "0.3"),
                    ],
                )
                .body(full(""))
                .unwrap(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        body["detail"],
        "The backend sandbox did not respond in time: sb"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn responses_stream_without_buffering() {
    let h = start(test_config()).await;
    h.cache
        .apply(&ready_pod("default", "sb", "127.0.0.1", "uid-sb"));
    let backend = backend().await;
    let port = backend.port().to_string();
    let started = Instant::now();
    let resp = h
        .http
        .send(
            request(
                &h,
                "/stream",
                &[
                    ("x-sandbox-id", "sb"),
                    ("x-sandbox-pod-ip", "127.0.0.1"),
                    ("x-sandbox-port", &port),
                ],
            )
            .body(full(""))
            .unwrap(),
        )
        .await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert_eq!(first, Bytes::from_static(b"chunk0\n"));
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"chunk1\nchunk2\n"));
    assert!(
        first_at < Duration::from_millis(300),
        "first chunk after {first_at:?}: the router buffered"
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn large_bodies_stream_through() {
    let h = start(test_config()).await;
    h.cache
        .apply(&ready_pod("default", "sb", "127.0.0.1", "uid-sb"));
    let backend = backend().await;
    let port = backend.port().to_string();
    let payload = vec![b'x'; 8 * 1024 * 1024];
    let req = request(
        &h,
        "/upload",
        &[
            ("x-sandbox-id", "sb"),
            ("x-sandbox-pod-ip", "127.0.0.1"),
            ("x-sandbox-port", &port),
        ],
    )
    .method("PUT")
    .body(full(payload))
    .unwrap();
    let (status, echo) = json_of(h.http.send(req).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["body_len"], 8 * 1024 * 1024);
}

#[tokio::test]
async fn http2_cleartext_passes_through_with_trailers() {
    let h = start(test_config()).await;
    h.cache
        .apply(&ready_pod("default", "sb", "127.0.0.1", "uid-sb"));
    let backend = backend().await;
    let port = backend.port().to_string();
    let req = request(
        &h,
        "/echo",
        &[
            ("x-sandbox-id", "sb"),
            ("x-sandbox-pod-ip", "127.0.0.1"),
            ("x-sandbox-port", &port),
            ("te", "trailers"),
        ],
    )
    .version(Version::HTTP_2)
    .body(full(""))
    .unwrap();
    let (status, echo) = json_of(h.http.send(req).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        echo["version"], "HTTP/2.0",
        "the sandbox must see HTTP/2 (gRPC needs it)"
    );
    assert_eq!(echo["headers"]["te"], "trailers");

    let req = request(
        &h,
        "/trailers",
        &[
            ("x-sandbox-id", "sb"),
            ("x-sandbox-pod-ip", "127.0.0.1"),
            ("x-sandbox-port", &port),
        ],
    )
    .version(Version::HTTP_2)
    .body(full(""))
    .unwrap();
    let collected = h.http.send(req).await.into_body().collect().await.unwrap();
    assert_eq!(
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap()),
        Some("0")
    );
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
}

#[tokio::test]
async fn websocket_upgrades_are_spliced() {
    let h = start(test_config()).await;
    h.cache
        .apply(&ready_pod("default", "sb", "127.0.0.1", "uid-sb"));
    let backend = backend().await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", h.addr),
    )
    .unwrap();
    let headers = req.headers_mut();
    headers.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    headers.insert("x-sandbox-id", "sb".parse().unwrap());
    headers.insert("x-sandbox-pod-ip", "127.0.0.1".parse().unwrap());
    headers.insert(
        "x-sandbox-port",
        backend.port().to_string().parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "m{i}"
        )))
        .await
        .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("m{i}"));
    }
}

#[tokio::test]
async fn cache_follows_pods_in_the_embedded_api_server() {
    use kube::Api;
    use kube::api::{Patch, PatchParams, PostParams};
    let dir = tempfile::tempdir().unwrap();
    let mut config = agent_sandbox_apiserver::Config::new(dir.path());
    config.tcp_addr = None;
    config.socket_path = None;
    config.node_name = "node-a".into();
    let api_server = agent_sandbox_apiserver::ApiServer::start(config)
        .await
        .unwrap();
    let client = api_server.client();
    let h = start(test_config()).await;
    tokio::spawn(h.cache.clone().run(client.clone()));
    tokio::time::timeout(Duration::from_secs(10), h.cache.synced())
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut pod = ready_pod("default", "sb-live", "127.0.0.1", "uid-live");
    pod.metadata.owner_references = None;
    let status = pod.status.take();
    pod.spec = Some(
        serde_json::from_value(json!({"containers": [{"name": "main", "image": "busybox"}]}))
            .unwrap(),
    );
    pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(
        h.cache.resolve("default", "sb-live", None),
        None,
        "not ready yet"
    );
    pods.patch_status(
        "sb-live",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.cache.resolve("default", "sb-live", None).is_none() {
        assert!(
            Instant::now() < deadline,
            "the cache never saw the ready pod"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backend = backend().await;
    let port = backend.port().to_string();
    let (status, _) = json_of(
        h.http
            .send(
                request(
                    &h,
                    "/",
                    &[("x-sandbox-id", "sb-live"), ("x-sandbox-port", &port)],
                )
                .body(full(""))
                .unwrap(),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    pods.delete("sb-live", &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.cache.resolve("default", "sb-live", None).is_some() {
        assert!(Instant::now() < deadline, "the cache kept a deleted pod");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api_server.shutdown().await;
}

#[tokio::test]
async fn a_stale_pod_ip_header_follows_the_cache_and_another_sandboxs_address_is_refused() {
    let h = start(test_config()).await;
    let backend = backend().await;
    let port = backend.port().to_string();
    h.cache
        .apply(&ready_pod("default", "moved", "127.0.0.1", "uid-moved"));
    h.cache
        .apply(&ready_pod("default", "other", "127.0.0.3", "uid-other"));
    // The client still has the address the sandbox had before it moved: the cache wins (the
    // backend listens on 127.0.0.1 only, so an answer proves the cache's address was used).
    let req = request(
        &h,
        "/echo",
        &[
            ("x-sandbox-id", "moved"),
            ("x-sandbox-pod-ip", "127.0.0.2"),
            ("x-sandbox-port", &port),
        ],
    )
    .body(full(""))
    .unwrap();
    let (status, _) = json_of(h.http.send(req).await).await;
    assert_eq!(status, StatusCode::OK);
    // An address that belongs to another sandbox never gets the request.
    let req = request(
        &h,
        "/echo",
        &[
            ("x-sandbox-id", "moved"),
            ("x-sandbox-pod-ip", "127.0.0.3"),
            ("x-sandbox-port", &port),
        ],
    )
    .body(full(""))
    .unwrap();
    let (status, body) = json_of(h.http.send(req).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["detail"],
        "X-Sandbox-Pod-IP is the address of another sandbox, not moved."
    );
}

#[tokio::test]
async fn a_pod_ip_header_no_ready_pod_holds_gets_no_connection_unless_allowed() {
    let backend = backend().await;
    let port = backend.port().to_string();
    let req = |h: &Harness| {
        request(
            h,
            "/echo",
            &[
                ("x-sandbox-id", "nobody"),
                ("x-sandbox-pod-ip", "127.0.0.1"),
                ("x-sandbox-port", &port),
            ],
        )
        .body(full(""))
        .unwrap()
    };
    // By default the router connects only to a Ready Pod of the named sandbox: an address
    // nothing holds is answered as an unresolvable sandbox once the cache had its time.
    let h = start(test_config()).await;
    let started = Instant::now();
    let (status, body) = json_of(h.http.send(req(&h)).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body["detail"],
        "Could not connect to the backend sandbox: nobody"
    );
    let waited = started.elapsed();
    assert!(
        waited >= server::UNKNOWN_POD_IP_WAIT && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // An operator may allow any address.
    let h = start(Config {
        allow_any_pod_ip: true,
        ..test_config()
    })
    .await;
    let (status, _) = json_of(h.http.send(req(&h)).await).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_pod_ip_header_waits_for_the_cache_to_learn_a_new_pod() {
    let h = start(test_config()).await;
    let backend = backend().await;
    let port = backend.port().to_string();
    let req = request(
        &h,
        "/echo",
        &[
            ("x-sandbox-id", "fresh"),
            ("x-sandbox-pod-ip", "127.0.0.1"),
            ("x-sandbox-port", &port),
        ],
    )
    .body(full(""))
    .unwrap();
    // The client read the address from the API server a moment before the router's watch
    // delivered the Pod.
    let cache = h.cache.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cache.apply(&ready_pod("default", "fresh", "127.0.0.1", "uid-fresh"));
    });
    let started = Instant::now();
    let (status, _) = json_of(h.http.send(req).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < server::UNKNOWN_POD_IP_WAIT);

    // A warm-pool Pod a claim just adopted: the client has the claim's answer before the cache
    // has the Pod without its pool label.
    let mut warm = ready_pod("default", "adopted", "127.0.0.1", "uid-adopted");
    warm.metadata
        .labels
        .get_or_insert_default()
        .insert("agents.x-k8s.io/warm-pool-sandbox".into(), "h".into());
    h.cache.apply(&warm);
    let cache = h.cache.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cache.apply(&ready_pod("default", "adopted", "127.0.0.1", "uid-adopted"));
    });
    let req = request(
        &h,
        "/echo",
        &[
            ("x-sandbox-id", "adopted"),
            ("x-sandbox-pod-ip", "127.0.0.1"),
            ("x-sandbox-port", &port),
        ],
    )
    .body(full(""))
    .unwrap();
    let (status, _) = json_of(h.http.send(req).await).await;
    assert_eq!(status, StatusCode::OK);
}
