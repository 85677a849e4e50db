//! The desktop scenario (run with `--image` naming the desktop image): warm claim → first
//! screenshot, screenshot latency and size (full and half scale), click → next screenshot, all
//! through the router, beside a desktop API round trip without image work.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use super::Row;
use super::fixture::Fixture;
use crate::args::{BenchArgs, Scenario};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POOL_TIMEOUT: Duration = Duration::from_secs(600);
/// Warm claims measured at most (each member runs an X server and a browser).
const MAX_CLAIMS: usize = 10;

/// The desktop API of one sandbox through the router.
struct Desktop<'a> {
    f: &'a Fixture,
    sandbox: String,
    pod_ip: String,
}

impl Desktop<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .f
            .http
            .request(method, format!("{}{path}", self.f.router))
            .header("X-Sandbox-ID", &self.sandbox)
            .header("X-Sandbox-Namespace", &self.f.conn.namespace)
            .header("X-Sandbox-Port", "8080")
            .header("X-Sandbox-Pod-IP", &self.pod_ip);
        if let Some(t) = &self.f.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// GET `path`; the body's size.
    async fn get(&self, path: &str) -> anyhow::Result<usize> {
        let resp = self.request(reqwest::Method::GET, path).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "GET {path} on sandbox {}: {status}: {}; is --image the desktop image?",
            self.sandbox,
            String::from_utf8_lossy(&body).trim()
        );
        Ok(body.len())
    }

    async fn click(&self, x: u32, y: u32) -> anyhow::Result<()> {
        let resp = self
            .request(reqwest::Method::POST, "/v2/desktop/mouse/click")
            .json(&json!({"x": x, "y": y}))
            .send()
            .await?;
        let status = resp.status();
        anyhow::ensure!(
            status.is_success(),
            "click on sandbox {}: {status}: {}",
            self.sandbox,
            resp.text().await.unwrap_or_default().trim()
        );
        Ok(())
    }
}

pub(super) async fn desktop(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let claims = args.iterations.clamp(1, MAX_CLAIMS);
    let replicas = args.pool_size.clamp(1, 2);
    f.pool(replicas, POOL_TIMEOUT).await?;
    let mut first = Vec::new();
    let mut last = None;
    for i in 0..claims {
        f.wait_pool_ready(replicas, POOL_TIMEOUT).await?;
        let start = Instant::now();
        let name = f.create_claim().await?;
        let ready = f
            .tracker
            .wait(&format!("claim/{name}"), READY_TIMEOUT)
            .await?;
        let d = Desktop {
            f,
            sandbox: ready.sandbox.clone(),
            pod_ip: ready.pod_ip.clone(),
        };
        d.get("/v2/desktop/screenshot")
            .await
            .context("the first screenshot")?;
        first.push(start.elapsed());
        if i + 1 == claims {
            last = Some((name, d));
        } else {
            f.delete_claim(name);
            f.wait_pod_gone(&ready.sandbox, READY_TIMEOUT).await?;
        }
    }
    let (name, d) = last.context("no claim was made")?;
    let n = args.iterations.max(10);
    let (mut full, mut half, mut clicks, mut api) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut full_bytes, mut half_bytes) = (0, 0);
    for i in 0..n {
        let t = Instant::now();
        full_bytes += d.get("/v2/desktop/screenshot").await?;
        full.push(t.elapsed());
        let t = Instant::now();
        half_bytes += d.get("/v2/desktop/screenshot?scale=0.5").await?;
        half.push(t.elapsed());
        let t = Instant::now();
        d.click(100 + (i as u32 % 50) * 4, 300).await?;
        d.get("/v2/desktop/screenshot").await?;
        clicks.push(t.elapsed());
        let t = Instant::now();
        d.get("/v2/desktop/screen").await?;
        api.push(t.elapsed());
    }
    f.delete_claim(name);
    let kib = |total: usize| format!("{:.0} KiB each", total as f64 / n as f64 / 1024.0);
    Ok(vec![
        Row::latencies(
            Scenario::Desktop,
            "warm claim create → first screenshot",
            &first,
        ),
        Row::latencies(Scenario::Desktop, "screenshot, full screen (PNG)", &full)
            .note(kib(full_bytes)),
        Row::latencies(Scenario::Desktop, "screenshot, scale 0.5", &half).note(kib(half_bytes)),
        Row::latencies(Scenario::Desktop, "click → next screenshot", &clicks),
        Row::latencies(
            Scenario::Desktop,
            "baseline: GET /v2/desktop/screen round trip",
            &api,
        ),
    ])
}
