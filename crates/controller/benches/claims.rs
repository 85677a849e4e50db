//! Warm claims over the in-process client: a warm pool is filled, then claims are made one at a
//! time (latency: claim→Ready p50/p99 with nothing else going on), then a burst of claims is
//! created at once (claims/s and claim→Ready p50/p99).
//!
//! `CLAIMS` (default 200) sets the burst size, `SERIAL` (default 50) the number of one-at-a-time
//! claims, and `POOL` (default = CLAIMS + SERIAL) the pool size.
#![allow(clippy::print_stdout, unreachable_pub)]

#[path = "../tests/integration/common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox_api::v1beta1::{SandboxClaim, SandboxTemplate, SandboxWarmPool};
use common::{NS, api};
use futures::StreamExt;
use kube::api::PostParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

// The allocator of the `agent-sandbox` binary, so that the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let claims_n = env_usize("CLAIMS", 200);
    let serial_n = env_usize("SERIAL", 50);
    let pool_n = env_usize("POOL", claims_n + serial_n);
    let env =
        common::start_with(|c| c.warm_pool_max_batch = 1000, common::KubeletMode::Ready).await;
    let tpl: SandboxTemplate = serde_json::from_value(json!({
        "metadata": {"name": "tpl", "namespace": NS},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "pause", "image": "pause"}]}}}
    }))
    .unwrap();
    api::<SandboxTemplate>(&env.client)
        .create(&PostParams::default(), &tpl)
        .await
        .unwrap();
    let pool: SandboxWarmPool = serde_json::from_value(json!({
        "metadata": {"name": "pool", "namespace": NS},
        "spec": {"replicas": pool_n, "sandboxTemplateRef": {"name": "tpl"}}
    }))
    .unwrap();
    let pools: Api<SandboxWarmPool> = api(&env.client);
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let fill = Instant::now();
    common::eventually("pool ready", Duration::from_secs(600), || async {
        let p = pools.get("pool").await.ok()?;
        (p.status?.ready_replicas as usize == pool_n).then_some(())
    })
    .await;
    println!("pool of {pool_n} ready in {:.2?}", fill.elapsed());

    let claims: Api<SandboxClaim> = api(&env.client);
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ready_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (r2, c2) = (ready_at.clone(), claims.clone());
    let watch = tokio::spawn(async move {
        let mut w = watcher(c2, watcher::Config::default()).boxed();
        while let Some(Ok(ev)) = w.next().await {
            if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = ev
                && c.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            {
                r2.lock().entry(c.name_any()).or_insert_with(Instant::now);
            }
        }
    });
    let new_claim = |name: &str| -> SandboxClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"warmPoolRef": {"name": "pool"}}
        }))
        .unwrap()
    };
    let mut serial = Vec::with_capacity(serial_n);
    for i in 0..serial_n {
        let name = format!("serial-{i}");
        let t = Instant::now();
        claims
            .create(&PostParams::default(), &new_claim(&name))
            .await
            .unwrap();
        let at = common::eventually("claim ready", Duration::from_secs(60), || async {
            ready_at.lock().get(&name).copied()
        })
        .await;
        serial.push(at.duration_since(t));
    }
    if !serial.is_empty() {
        serial.sort();
        println!(
            "{serial_n} warm claims one at a time: claim->Ready p50 {:.2?} p99 {:.2?} max {:.2?}",
            pct(&serial, 0.50),
            pct(&serial, 0.99),
            serial[serial.len() - 1]
        );
    }

    let start = Instant::now();
    let creates = (0..claims_n).map(|i| {
        let (claims, created) = (claims.clone(), created.clone());
        async move {
            let name = format!("bench-{i}");
            let c = new_claim(&name);
            let t = Instant::now();
            claims.create(&PostParams::default(), &c).await.unwrap();
            created.lock().insert(name, t);
        }
    });
    futures::future::join_all(creates).await;
    common::eventually("all claims ready", Duration::from_secs(600), || async {
        (ready_at.lock().len() >= claims_n + serial_n).then_some(())
    })
    .await;
    let total = start.elapsed();
    watch.abort();
    let created = created.lock();
    let ready = ready_at.lock();
    let mut lat: Vec<Duration> = created
        .iter()
        .map(|(n, t)| ready[n].duration_since(*t))
        .collect();
    lat.sort();
    println!(
        "{claims_n} warm claims on a pool of {pool_n}: {:.0} claims/s; claim->Ready p50 {:.2?} p99 {:.2?} max {:.2?}",
        claims_n as f64 / total.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
    if std::env::var_os("BENCH_METRICS").is_some() {
        for line in env.state.metrics_text().lines() {
            if line.starts_with("controller_runtime_reconcile_time_seconds_sum")
                || line.starts_with("controller_runtime_reconcile_time_seconds_count")
                || line.starts_with("controller_runtime_reconcile_total")
            {
                println!("{line}");
            }
        }
    }
}
