//! The fork scenario: ten Sandboxes forked from one snapshot of a sandbox with 10 MiB in its
//! writable layer, from their creation until all are Ready, beside ten new Sandboxes of the same
//! spec (no snapshot) made the same way in the same run.

use std::time::{Duration, Instant};

use agent_sandbox_api::constants::extensions::annotations::RESTORE_FROM;
use agent_sandbox_api::extension::{SandboxSnapshot, SnapshotPhase};
use agent_sandbox_api::v1beta1::Sandbox;
use anyhow::Context;
use kube::Api;
use kube::api::PostParams;

use super::Row;
use super::fixture::Fixture;
use super::nodes::{create_sandbox, delete_sandboxes};
use crate::args::{BenchArgs, Scenario};
use crate::commands::fork::fork_of;
use crate::commands::snapshot::new_snapshot;

/// Sandboxes per round.
const FORKS: usize = 10;

/// Creates `sandboxes` and waits until every one is Ready; the time from the first creation.
async fn all_ready(f: &Fixture, sandboxes: Vec<Sandbox>) -> anyhow::Result<Duration> {
    let api: Api<Sandbox> = f.conn.api();
    let t = Instant::now();
    let mut names = Vec::new();
    for sb in &sandboxes {
        let created = api
            .create(&PostParams::default(), sb)
            .await
            .context("creating a sandbox of the fork scenario")?;
        names.push(created.metadata.name.unwrap_or_default());
    }
    for n in &names {
        f.tracker
            .wait(&format!("sandbox/{n}"), Duration::from_secs(120))
            .await?;
    }
    let took = t.elapsed();
    delete_sandboxes(f, &names).await?;
    Ok(took)
}

pub(super) async fn fork(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let source = format!("bench-fork-{}", f.run_id);
    create_sandbox(f, &source, None).await?;
    let result = measure(f, args, &source).await;
    delete_sandboxes(f, std::slice::from_ref(&source)).await?;
    result
}

async fn measure(f: &Fixture, args: &BenchArgs, source: &str) -> anyhow::Result<Vec<Row>> {
    let ready = f
        .tracker
        .wait(&format!("sandbox/{source}"), Duration::from_secs(90))
        .await?;
    f.exec(
        source,
        &ready.pod_ip,
        &["sh", "-c", "head -c 10485760 /dev/urandom > /opt/state"],
        false,
    )
    .await
    .context("writing 10 MiB into the source sandbox")?;
    let snapshots: Api<SandboxSnapshot> = f.conn.api();
    let snap = format!("{source}-s");
    snapshots
        .create(&PostParams::default(), &new_snapshot(source, Some(&snap)))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match snapshots.get(&snap).await?.phase() {
            SnapshotPhase::Ready => break,
            SnapshotPhase::Failed => anyhow::bail!("snapshot {snap} failed"),
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "snapshot {snap} not Ready in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let src: Sandbox = f.conn.api::<Sandbox>().get(source).await?;
    let (mut forks, mut fresh) = (Vec::new(), Vec::new());
    for round in 0..args.iterations.clamp(1, 3) {
        let names = |kind: &str| -> Vec<String> {
            (1..=FORKS)
                .map(|i| format!("{source}-{kind}{round}-{i}"))
                .collect()
        };
        let forked = names("f").iter().map(|n| fork_of(&src, &snap, n)).collect();
        forks.push(all_ready(f, forked).await?);
        let plain = names("n")
            .iter()
            .map(|n| {
                let mut sb = fork_of(&src, &snap, n);
                sb.spec
                    .pod_template
                    .metadata
                    .annotations
                    .remove(RESTORE_FROM);
                sb
            })
            .collect();
        fresh.push(all_ready(f, plain).await?);
    }
    let _ = snapshots.delete(&snap, &Default::default()).await;
    Ok(vec![
        Row::latencies(
            Scenario::Fork,
            "10 forks of one snapshot (10 MiB layer): create → all Ready",
            &forks,
        ),
        Row::latencies(
            Scenario::Fork,
            "baseline: 10 new sandboxes of the same spec: create → all Ready",
            &fresh,
        ),
    ])
}
