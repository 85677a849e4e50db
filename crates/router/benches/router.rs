//! Router throughput and latency: requests/s and p50/p99 at 1, 10, 50 and 200 concurrent
//! connections through the router to a trivial backend, beside the same load sent to the backend
//! directly in the same run (the baseline). Run with `cargo bench -p agent-sandbox-router`.
//! `ROUTER_BENCH_SECONDS` sets the duration of each measurement (default 3).
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox_router::cache::PodCache;
use agent_sandbox_router::proxy::full;
use agent_sandbox_router::server::{self, Config, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(full("ok")))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct Run {
    requests: usize,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies
            .get(i)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

async fn load(
    target: SocketAddr,
    headers: Vec<(&'static str, String)>,
    concurrency: usize,
    duration: Duration,
) -> Run {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(target).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let mut b = Request::get("/").header("host", "bench");
                for (k, v) in &headers {
                    b = b.header(*k, v.as_str());
                }
                let t = Instant::now();
                let resp = sender
                    .send_request(b.body(Empty::<Bytes>::new()).unwrap())
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
                resp.into_body().collect().await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Run {
        requests: latencies.len(),
        seconds: started.elapsed().as_secs_f64(),
        latencies,
    }
}

fn main() {
    let seconds: u64 = std::env::var("ROUTER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = backend().await;
        let config = Config { auth_token: Some("bench".into()), allow_loopback_pod_ip: true, ..Config::default() };
        let router = Arc::new(Router::new(config, PodCache::new()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router_addr = listener.local_addr().unwrap();
        tokio::spawn(server::serve(router, listener));
        let routed = vec![
            ("authorization", "Bearer bench".to_owned()),
            ("x-sandbox-id", "bench".to_owned()),
            ("x-sandbox-pod-ip", "127.0.0.1".to_owned()),
            ("x-sandbox-port", backend.port().to_string()),
        ];
        let mut rows = Vec::new();
        println!("{:<12} {:>6} {:>12} {:>9} {:>9}", "path", "conns", "req/s", "p50 ms", "p99 ms");
        for concurrency in [1, 10, 50, 200] {
            let d = Duration::from_secs(seconds);
            let mut direct = load(backend, Vec::new(), concurrency, d).await;
            let mut via = load(router_addr, routed.clone(), concurrency, d).await;
            for (name, run) in [("direct", &mut direct), ("router", &mut via)] {
                let (p50, p99) = (run.pct(0.5), run.pct(0.99));
                println!("{:<12} {:>6} {:>12.0} {:>9.3} {:>9.3}", name, concurrency, run.rps(), p50, p99);
                rows.push(serde_json::json!({"path": name, "concurrency": concurrency, "requests_per_second": run.rps(), "p50_ms": p50, "p99_ms": p99}));
            }
        }
        println!("{}", serde_json::json!({"benchmark": "router", "seconds_per_run": seconds, "results": rows}));
    });
}
