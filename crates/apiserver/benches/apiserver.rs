//! API server benchmark: creates/s, updates/s and watch fan-out latency (one write, 100
//! watchers), over the in-process client and over HTTPS.
//!
//! `cargo bench -p agent-sandbox-apiserver --bench apiserver` (env: `BENCH_OBJECTS`, default
//! 2000; `BENCH_CONCURRENCY`, default 32; `BENCH_WATCHERS`, default 100).
#![allow(clippy::print_stdout)]

use agent_sandbox_apiserver::{ApiServer, Config};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn lease(name: &str) -> Lease {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"holderIdentity": "bench"}}))
        .expect("lease")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn throughput(
    label: &str,
    client: Client,
    ns: &str,
    n: usize,
    conc: usize,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, ns);
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &lease(&format!("b-{i}")))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let c = t.elapsed();
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let p = json!({"spec": {"leaseDurationSeconds": 10}});
                api.patch(
                    &format!("b-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&p),
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let u = t.elapsed();
    println!(
        "{label:<12} creates/s {:>8.0}   updates/s {:>8.0}   ({n} objects, {conc} in flight)",
        n as f64 / c.as_secs_f64(),
        n as f64 / u.as_secs_f64()
    );
    Ok(())
}

async fn sandbox_creates(label: &str, client: Client, n: usize, conc: usize) -> anyhow::Result<()> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "agents.x-k8s.io",
        "v1beta1",
        "Sandbox",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let sb: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
                    "metadata": {"name": format!("sb-{i}")},
                    "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python:3.12"}]}}}
                }))?;
                api.create(&PostParams::default(), &sb).await?;
                Ok(())
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "{label:<12} Sandbox creates/s {:>8.0}   (schema admission and CEL, {n} objects)",
        n as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn admission_only(n: usize) {
    use agent_sandbox_apiserver::CrdSupport;
    let crds = agent_sandbox_apiserver::crds::AgentSandboxCrds::new();
    let crd = crds
        .crds()
        .into_iter()
        .find(|c| c["metadata"]["name"] == "sandboxes.agents.x-k8s.io")
        .expect("sandbox CRD");
    let obj = json!({
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "sb"},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "python:3.12"}]}}}
    });
    let t = Instant::now();
    for _ in 0..n {
        let mut o = obj.clone();
        let _ = crds.admit(&crd, "v1beta1", &mut o, None);
    }
    println!(
        "{:<12} Sandbox schema admission alone: {:?} per object",
        "",
        t.elapsed() / n.max(1) as u32
    );
}

async fn fanout(
    label: &str,
    client: Client,
    ns: &str,
    watchers: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, ns);
    let seed = api.create(&PostParams::default(), &lease("fan")).await?;
    let mut rv = seed.resource_version().unwrap_or_default();
    let mut all = vec![];
    for round in 0..rounds {
        let mut streams = vec![];
        for _ in 0..watchers {
            streams.push(
                api.watch(&WatchParams::default().timeout(30), &rv)
                    .await?
                    .boxed(),
            );
        }
        // Give the watch requests time to be registered on the server.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let p = json!({"spec": {"leaseDurationSeconds": round}});
        let t = Instant::now();
        let updated = api
            .patch("fan", &PatchParams::default(), &Patch::Merge(&p))
            .await?;
        let want = updated.resource_version().unwrap_or_default();
        let waits = streams.into_iter().map(|mut s| {
            let want = want.clone();
            async move {
                while let Some(ev) = s.try_next().await? {
                    if let WatchEvent::Modified(l) = ev
                        && l.resource_version().as_deref() == Some(want.as_str())
                    {
                        return Ok::<_, anyhow::Error>(t.elapsed());
                    }
                }
                anyhow::bail!("watch ended before the event")
            }
        });
        for d in futures::future::join_all(waits).await {
            all.push(d?);
        }
        rv = want;
    }
    all.sort();
    println!(
        "{label:<12} watch fan-out ({watchers} watchers, {rounds} writes): p50 {:?}  p99 {:?}  max {:?} (write to last delivery)",
        pct(&all, 0.5),
        pct(&all, 0.99),
        all.last().copied().unwrap_or_default()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n = env("BENCH_OBJECTS", 2000);
    let conc = env("BENCH_CONCURRENCY", 32);
    let watchers = env("BENCH_WATCHERS", 100);
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::new(dir.path());
    cfg.tcp_addr = Some(([127, 0, 0, 1], 0).into());
    cfg.socket_path = None;
    let server = ApiServer::start(cfg).await?;
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig_path())?;
    let https = Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?,
    )?;
    println!(
        "agent-sandbox apiserver benchmark (SQLite WAL, synchronous=FULL, data in {})",
        dir.path().display()
    );
    throughput("in-process", server.client(), "default", n, conc).await?;
    throughput("https", https.clone(), "kube-public", n, conc).await?;
    admission_only(200);
    sandbox_creates("in-process", server.client(), n, conc).await?;
    fanout("in-process", server.client(), "default", watchers, 5).await?;
    fanout("https", https, "kube-public", watchers, 5).await?;
    server.shutdown().await;
    Ok(())
}
