//! The snapshot scenario: SandboxSnapshot create → Ready of a runsc sandbox beside `runsc
//! checkpoint --leave-running` of the same sandbox, and of a sandbox with 100 MiB written into
//! its writable layer (under the default handler) beside `cp -a` of the same layer, with the
//! bytes each wrote.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_sandbox_api::extension::{SandboxSnapshot, SnapshotPhase};
use agent_sandbox_node::runtime::{HandlerKind, OciRuntime, find_binary};
use agent_sandbox_node::{host, host::tree_size};
use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

use super::Row;
use super::fixture::Fixture;
use super::nodes::{create_sandbox, delete_sandboxes};
use crate::args::{BenchArgs, Scenario};
use crate::commands::snapshot::new_snapshot;

/// Snapshots taken per measurement (each one copies the sandbox's data).
fn rounds(args: &BenchArgs) -> usize {
    args.iterations.clamp(1, 10)
}

/// Creates a snapshot of `sandbox`, waits until it is Ready, deletes it (and waits until its
/// files are gone). Returns the time to Ready and its size.
async fn snapshot_once(
    f: &Fixture,
    sandbox: &str,
    i: usize,
) -> anyhow::Result<(Duration, u64, String)> {
    let api: Api<SandboxSnapshot> = f.conn.api();
    let name = format!("{sandbox}-{i}");
    let t = Instant::now();
    api.create(&PostParams::default(), &new_snapshot(sandbox, Some(&name)))
        .await
        .with_context(|| format!("creating snapshot {name}"))?;
    let deadline = t + Duration::from_secs(300);
    let snap = loop {
        let s = api.get(&name).await?;
        match s.phase() {
            SnapshotPhase::Ready => break s,
            SnapshotPhase::Failed => anyhow::bail!(
                "snapshot {name} failed: {:?}",
                s.status.map(|st| st.conditions)
            ),
            _ if Instant::now() > deadline => anyhow::bail!("snapshot {name} not Ready in 300 s"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    let took = t.elapsed();
    let st = snap.status.unwrap_or_default();
    let size = st.size_bytes.unwrap_or(0) as u64;
    let kind = st.kind.map_or("-", |k| k.as_str()).to_owned();
    api.delete(&name, &DeleteParams::default()).await?;
    while api.get_opt(&name).await?.is_some() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((took, size, kind))
}

/// A sandbox of this run under `handler`, Ready; its Pod's uid.
async fn ready_sandbox(
    f: &Fixture,
    name: &str,
    handler: Option<&str>,
) -> anyhow::Result<(String, String)> {
    create_sandbox(f, name, handler).await?;
    let ready = f
        .tracker
        .wait(&format!("sandbox/{name}"), Duration::from_secs(90))
        .await?;
    let uid = f
        .conn
        .api::<Pod>()
        .get(name)
        .await?
        .uid()
        .unwrap_or_default();
    Ok((uid, ready.pod_ip))
}

fn ratio_note(ours: &[Duration], base: &[Duration]) -> String {
    let p50 = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2).copied()
    };
    match (p50(ours), p50(base)) {
        (Some(a), Some(b)) if !b.is_zero() => {
            format!("p50 {:.2}× the baseline", a.as_secs_f64() / b.as_secs_f64())
        }
        _ => String::new(),
    }
}

pub(super) async fn snapshot(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if find_binary("runsc").is_some() {
        let name = format!("bench-snap-runsc-{}", f.run_id);
        let result = memory(f, args, &name).await;
        delete_sandboxes(f, std::slice::from_ref(&name)).await?;
        rows.extend(result?);
    } else {
        rows.push(
            Row::latencies(Scenario::Snapshot, "runsc: snapshot → Ready", &[])
                .note("runsc is not installed"),
        );
    }
    let name = format!("bench-snap-fs-{}", f.run_id);
    let result = filesystem(f, args, &name).await;
    delete_sandboxes(f, std::slice::from_ref(&name)).await?;
    rows.extend(result?);
    Ok(rows)
}

async fn memory(f: &Fixture, args: &BenchArgs, name: &str) -> anyhow::Result<Vec<Row>> {
    let (uid, _) = ready_sandbox(f, name, Some("runsc")).await?;
    let n = rounds(args);
    let mut ours = Vec::with_capacity(n);
    let (mut size, mut kind) = (0, String::new());
    for i in 0..n {
        let (t, s, k) = snapshot_once(f, name, i).await?;
        ours.push(t);
        (size, kind) = (s, k);
    }
    // The same sandbox, checkpointed by runsc itself into a scratch directory.
    let binary = find_binary("runsc").context("runsc is not installed")?;
    let runtime = OciRuntime::new(
        HandlerKind::Runsc,
        binary,
        args.run_dir.join("runtime/runsc"),
    );
    let rid = format!("{uid}.sandbox.");
    let scratch = tempfile::Builder::new()
        .prefix("agent-sandbox-bench-")
        .tempdir()?;
    let mut base = Vec::with_capacity(n);
    let mut base_note = String::new();
    for i in 0..n {
        let image = scratch.path().join(i.to_string());
        fs_err::create_dir_all(&image)?;
        let t = Instant::now();
        if let Err(e) = runtime
            .checkpoint(&rid, &image, Duration::from_secs(300))
            .await
        {
            base_note = e.to_string();
            base.clear();
            break;
        }
        base.push(t.elapsed());
        base_note = format!("{} bytes", tree_size(&image));
        fs_err::remove_dir_all(&image)?;
    }
    Ok(vec![
        Row::latencies(
            Scenario::Snapshot,
            "runsc: SandboxSnapshot create → Ready",
            &ours,
        )
        .target("≤ 1.2× baseline")
        .note(format!(
            "{kind}, {size} bytes; {}",
            ratio_note(&ours, &base)
        )),
        Row::latencies(
            Scenario::Snapshot,
            "baseline: `runsc checkpoint --leave-running` of the same sandbox",
            &base,
        )
        .note(base_note),
    ])
}

/// `cp -a` of `layer` into a scratch directory, `n` times.
async fn cp_baseline(layer: &Path, n: usize) -> anyhow::Result<(Vec<Duration>, u64)> {
    let scratch = tempfile::Builder::new()
        .prefix("agent-sandbox-bench-")
        .tempdir()?;
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for i in 0..n {
        let to: PathBuf = scratch.path().join(i.to_string());
        let t = Instant::now();
        let mut cp = host::command(Path::new("/bin/cp"));
        cp.arg("-a").arg(layer).arg(&to);
        let out = host::run(cp, None, Duration::from_secs(300)).await?;
        anyhow::ensure!(
            out.code == 0,
            "cp -a {}: {}",
            layer.display(),
            out.message()
        );
        times.push(t.elapsed());
        bytes = tree_size(&to);
        fs_err::remove_dir_all(&to)?;
    }
    Ok((times, bytes))
}

async fn filesystem(f: &Fixture, args: &BenchArgs, name: &str) -> anyhow::Result<Vec<Row>> {
    let (uid, ip) = ready_sandbox(f, name, None).await?;
    f.exec(
        name,
        &ip,
        &["sh", "-c", "head -c 104857600 /dev/urandom > /tmp/blob"],
        false,
    )
    .await
    .context("writing 100 MiB into the sandbox")?;
    let n = rounds(args);
    let mut ours = Vec::with_capacity(n);
    let mut size = 0;
    for i in 0..n {
        let (t, s, _) = snapshot_once(f, name, i).await?;
        ours.push(t);
        size = s;
    }
    let layer = f.data_dir.join("node/sandboxes").join(&uid).join("upper");
    let (base, note) = match cp_baseline(&layer, n).await {
        Ok((t, b)) => (t, format!("{b} bytes")),
        Err(e) => (Vec::new(), format!("{e:#} (bench must run on the node)")),
    };
    Ok(vec![
        Row::latencies(
            Scenario::Snapshot,
            "filesystem: SandboxSnapshot create → Ready, 100 MiB in the layer",
            &ours,
        )
        .note(format!("{size} bytes; {}", ratio_note(&ours, &base))),
        Row::latencies(
            Scenario::Snapshot,
            "baseline: `cp -a` of the same layer",
            &base,
        )
        .note(note),
    ])
}
