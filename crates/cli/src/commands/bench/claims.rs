//! The claim and exec scenarios: warm claim, time to first instruction, exec round trip,
//! sustained claims per second, and the burst.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_sandbox_api::v1beta1::SandboxWarmPool;
use agent_sandbox_sandboxd::pb::{
    ExecuteRequest, ProcessConfig, process_service_client::ProcessServiceClient,
};
use anyhow::Context as _;
use kube::Api;

use super::Row;
use super::fixture::{Fixture, NAME};
use crate::args::{BenchArgs, Scenario};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POOL_TIMEOUT: Duration = Duration::from_secs(600);

/// Claims `n` sandboxes one after another, each on an instance at rest: the pool full and the
/// previous claim's sandbox torn down (the `sustained` and `burst` scenarios measure claims
/// under load). Returns the claim → Ready latencies and how many were served cold (the pool had
/// no Ready member).
async fn sequential_claims(
    f: &Fixture,
    args: &BenchArgs,
    mut after_ready: impl AsyncFnMut(&str, &str) -> anyhow::Result<Duration>,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, usize)> {
    f.pool(args.pool_size, POOL_TIMEOUT).await?;
    let (mut claims, mut extra, mut cold) = (Vec::new(), Vec::new(), 0);
    for _ in 0..args.iterations {
        f.wait_pool_ready(args.pool_size, POOL_TIMEOUT).await?;
        let start = Instant::now();
        let name = f.create_claim().await?;
        let ready = f
            .tracker
            .wait(&format!("claim/{name}"), READY_TIMEOUT)
            .await?;
        claims.push(ready.at - start);
        if ready.sandbox == name {
            cold += 1;
        }
        extra.push(after_ready(&ready.sandbox, &ready.pod_ip).await? + (ready.at - start));
        f.delete_claim(name);
        f.wait_pod_gone(&ready.sandbox, READY_TIMEOUT).await?;
    }
    Ok((claims, extra, cold))
}

pub(super) async fn warm_claim(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let (claims, _, cold) = sequential_claims(f, args, async |_, _| Ok(Duration::ZERO)).await?;
    // Baseline: one API round trip (GET of the pool) over the same client.
    let pools: Api<SandboxWarmPool> = f.conn.api();
    let mut gets = Vec::new();
    for _ in 0..args.iterations {
        let t = Instant::now();
        pools.get(NAME).await?;
        gets.push(t.elapsed());
    }
    let mut rows = vec![
        Row::latencies(
            Scenario::WarmClaim,
            "claim create → Ready with pod IP",
            &claims,
        )
        .target("p50 ≤ 3, p99 ≤ 10")
        .note(format!("{cold} served cold")),
        Row::latencies(Scenario::WarmClaim, "baseline: API GET round trip", &gets),
    ];
    if let Some(syncs) = fsync_baseline(&f.data_dir, args.iterations * 10).await? {
        rows.push(
            Row::latencies(
                Scenario::WarmClaim,
                "baseline: 4 KiB write + fsync (data dir)",
                &syncs,
            )
            .note("what each commit adds unless --no-sync"),
        );
    }
    Ok(rows)
}

/// The cost of the fsync an API write waits for (unless `up --no-sync`): `n` writes of 4 KiB,
/// each followed by an fsync, in the instance's data directory. They overwrite blocks written
/// before, as SQLite's commits do once its WAL has been checkpointed (it then starts over from
/// the start of the file); a commit that grows the WAL costs a little more. `None` when that
/// directory is not on this machine (an instance found through `--kubeconfig`).
async fn fsync_baseline(data_dir: &Path, n: usize) -> anyhow::Result<Option<Vec<Duration>>> {
    if !data_dir.is_dir() {
        return Ok(None);
    }
    let path = data_dir.join(".agent-sandbox-bench-fsync");
    let file = path.clone();
    let timed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Duration>> {
        use std::os::unix::fs::FileExt;
        const BLOCKS: u64 = 64;
        let f = fs_err::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&file)?;
        let block = [0x5a_u8; 4096];
        for i in 0..BLOCKS {
            f.file().write_all_at(&block, i * 4096)?;
        }
        f.sync_all()?;
        let mut timed = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            f.file().write_all_at(&block, (i % BLOCKS) * 4096)?;
            f.sync_all()?;
            timed.push(t.elapsed());
        }
        Ok(timed)
    })
    .await?;
    let _ = fs_err::remove_file(&path);
    let timed = timed.with_context(|| {
        format!(
            "timing 4 KiB writes with fsync in {}; pass a --data-dir you can write to",
            data_dir.display()
        )
    })?;
    Ok(Some(timed))
}

pub(super) async fn first_instruction(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let mut warm_exec = Vec::new();
    let (_, first, cold) = sequential_claims(f, args, async |sandbox, ip| {
        let t = Instant::now();
        f.exec(sandbox, ip, &["echo", "hello"], true).await?;
        let first = t.elapsed();
        // Baseline: the same exec on the same, now warm, sandbox.
        let t = Instant::now();
        f.exec(sandbox, ip, &["echo", "hello"], true).await?;
        warm_exec.push(t.elapsed());
        Ok(first)
    })
    .await?;
    Ok(vec![
        Row::latencies(
            Scenario::FirstInstruction,
            "claim create → first `echo` output",
            &first,
        )
        .target("p50 ≤ 15")
        .note(format!("{cold} served cold")),
        Row::latencies(
            Scenario::FirstInstruction,
            "baseline: `echo` on the claimed sandbox",
            &warm_exec,
        ),
    ])
}

pub(super) async fn exec(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    f.pool(1, POOL_TIMEOUT).await?;
    let name = f.create_claim().await?;
    let ready = f
        .tracker
        .wait(&format!("claim/{name}"), READY_TIMEOUT)
        .await?;
    // The paths take turns, so background work (the pool refilling behind the claim) weighs
    // on each of them alike.
    let n = args.iterations * 10;
    let direct_url = format!("http://{}:8080/v2/exec", ready.pod_ip);
    let grpc_url = format!("http://{}:9090", ready.pod_ip);
    let mut grpc = ProcessServiceClient::connect(grpc_url.clone())
        .await
        .with_context(|| format!("connect to sandboxd's gRPC port at {grpc_url}"))?;
    let execute_true = || ExecuteRequest {
        config: Some(ProcessConfig {
            command: vec!["true".into()],
            ..Default::default()
        }),
    };
    let (mut via_router, mut direct, mut direct_grpc, mut host) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for _ in 0..n {
        let t = Instant::now();
        f.exec(&ready.sandbox, &ready.pod_ip, &["true"], false)
            .await?;
        via_router.push(t.elapsed());

        let t = Instant::now();
        let resp = f
            .http
            .post(&direct_url)
            .header("Accept", "application/json")
            .json(&serde_json::json!({"command": ["true"]}))
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "direct exec: {}", resp.status());
        resp.bytes().await?;
        direct.push(t.elapsed());

        let t = Instant::now();
        let out = grpc
            .execute(execute_true())
            .await
            .context("gRPC Execute direct to sandboxd")?
            .into_inner();
        anyhow::ensure!(
            out.exit_code == 0,
            "gRPC Execute of `true`: exit {}",
            out.exit_code
        );
        direct_grpc.push(t.elapsed());

        let t = Instant::now();
        tokio::process::Command::new("/bin/true").status().await?;
        host.push(t.elapsed());
    }
    f.delete_claim(name);
    Ok(vec![
        Row::latencies(
            Scenario::Exec,
            "exec `true` via router + sandboxd",
            &via_router,
        )
        .target("p50 ≤ 3"),
        Row::latencies(Scenario::Exec, "exec `true` direct to sandboxd", &direct),
        Row::latencies(
            Scenario::Exec,
            "gRPC Execute `true` direct to sandboxd",
            &direct_grpc,
        )
        .target("p50 ≤ 1"),
        Row::latencies(
            Scenario::Exec,
            "baseline: fork+exec `true` on the host",
            &host,
        ),
    ])
}

/// Claims as fast as `workers` concurrent clients can for `duration`; each claim is deleted
/// once Ready so the pool refills behind them.
async fn claim_loop(
    f: &Fixture,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, usize, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let stop = stop.clone();
        tasks.push(async move {
            let (mut lat, mut cold) = (Vec::new(), 0usize);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let name = f.create_claim().await?;
                let ready = f
                    .tracker
                    .wait(&format!("claim/{name}"), READY_TIMEOUT)
                    .await?;
                lat.push(ready.at - t);
                if ready.sandbox == name {
                    cold += 1;
                }
                f.delete_claim(name);
                if started.elapsed() >= duration {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            anyhow::Ok((lat, cold))
        });
    }
    let results = futures::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    let (mut all, mut cold) = (Vec::new(), 0);
    for r in results {
        let (lat, c) = r?;
        all.extend(lat);
        cold += c;
    }
    Ok((all, cold, elapsed))
}

pub(super) async fn sustained(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    f.pool(args.pool_size, POOL_TIMEOUT).await?;
    let duration = Duration::from_secs(args.duration);
    let (lat, cold, elapsed) = claim_loop(f, 16, duration).await?;
    let rate = lat.len() as f64 / elapsed.as_secs_f64();
    // Baseline: the same clients creating and deleting plain objects (the API server's rate).
    let api: Api<k8s_openapi::api::coordination::v1::Lease> = f.conn.api();
    let base_started = Instant::now();
    let base_duration = Duration::from_secs(args.duration.min(10));
    let mut base_tasks = Vec::new();
    for w in 0..16 {
        let api = api.clone();
        base_tasks.push(async move {
            let mut n = 0usize;
            while base_started.elapsed() < base_duration {
                let name = format!("agent-sandbox-bench-{w}-{n}");
                let lease: k8s_openapi::api::coordination::v1::Lease =
                    serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
                api.create(&Default::default(), &lease).await?;
                api.delete(&name, &Default::default()).await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut base_n = 0;
    for r in futures::future::join_all(base_tasks).await {
        base_n += r?;
    }
    let base_rate = base_n as f64 / base_started.elapsed().as_secs_f64();
    Ok(vec![
        Row::rate(
            Scenario::Sustained,
            "claims per second (16 clients)",
            lat.len(),
            rate,
        )
        .target("≥ 1000/s")
        .note(format!(
            "{:.0} s, pool of {}, {cold} served cold",
            elapsed.as_secs_f64(),
            args.pool_size
        )),
        Row::latencies(
            Scenario::Sustained,
            "claim create → Ready under that load",
            &lat,
        ),
        Row::rate(
            Scenario::Sustained,
            "baseline: Lease create+delete per second",
            base_n,
            base_rate,
        ),
    ])
}

pub(super) async fn burst(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let size = i32::try_from(args.burst)?;
    let started = Instant::now();
    f.pool(size, POOL_TIMEOUT).await?;
    let fill = started.elapsed();
    let t0 = Instant::now();
    let names = futures::future::join_all((0..args.burst).map(|_| f.create_claim())).await;
    let mut lat = Vec::new();
    let mut cold = 0;
    for name in names {
        let name = name?;
        let ready = f
            .tracker
            .wait(&format!("claim/{name}"), POOL_TIMEOUT)
            .await?;
        lat.push(ready.at - t0);
        if ready.sandbox == name {
            cold += 1;
        }
    }
    let makespan = lat.iter().max().copied().unwrap_or_default();
    f.pool(0, POOL_TIMEOUT).await?;
    Ok(vec![
        Row::latencies(
            Scenario::Burst,
            &format!("{} claims at once → each Ready", args.burst),
            &lat,
        )
        .note(format!(
            "all Ready in {:.2} s; {cold} served cold",
            makespan.as_secs_f64()
        )),
        Row::rate(
            Scenario::Burst,
            &format!("baseline: pool of {} filled from empty", args.burst),
            args.burst,
            args.burst as f64 / fill.as_secs_f64(),
        )
        .note(format!("{:.1} s", fill.as_secs_f64())),
    ])
}
