//! `agent-sandbox fork` and `agent-sandbox restore`: new sandboxes started from a snapshot of a
//! sandbox, and a sandbox rolled back to one of its snapshots.
//!
//! A fork is a new Sandbox with the source's spec whose Pod starts from the snapshot
//! (`agent-sandbox-rs.github.io/restore-from` on its pod template): its writable layers and
//! empty volumes are filled from the snapshot, and it gets its own name, Pod, address and PVCs.
//! A rollback gives the sandbox a new Pod the same way, with the snapshot replacing the data its
//! volumes hold (`agent-sandbox-rs.github.io/restore-volumes: Replace`): the Sandbox is annotated
//! (on its own metadata, which the Sandbox controller copies onto its new Pods: a claim keeps its
//! Sandbox's pod template as the template says) and suspended, resumed, and the annotations are
//! removed once it is Ready again (so a later resume starts as upstream's does). Processes start
//! afresh in both.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent_sandbox_api::constants::extensions::annotations::{RESTORE_FROM, RESTORE_VOLUMES};
use agent_sandbox_api::extension::SandboxSnapshot;
use agent_sandbox_api::v1beta1::{OperatingMode, Sandbox};
use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use super::connect::Connection;
use super::sandboxes::{is_ready, set_operating_mode};
use super::snapshot::{new_snapshot, wait_ready};
use crate::args::{ForkArgs, RestoreArgs};

/// On a fork: `<source sandbox>/<snapshot>` it was started from.
pub(crate) const FORKED_FROM: &str = "agent-sandbox-rs.github.io/forked-from";

const POLL: Duration = Duration::from_millis(20);

/// The fork `name` of `source`, started from `snapshot`: the source's spec (running), its own
/// labels (not the system ones a warm pool or claim put there), the restore annotation.
pub(crate) fn fork_of(source: &Sandbox, snapshot: &str, name: &str) -> Sandbox {
    let system = |k: &String| k.starts_with("agents.x-k8s.io/") || k.contains(".agents.x-k8s.io/");
    let labels: BTreeMap<String, String> = source
        .labels()
        .iter()
        .filter(|(k, _)| !system(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut spec = source.spec.clone();
    spec.operating_mode = None;
    let ann = &mut spec.pod_template.metadata.annotations;
    ann.insert(RESTORE_FROM.into(), snapshot.into());
    ann.remove(RESTORE_VOLUMES);
    Sandbox {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: Some(BTreeMap::from([(
                FORKED_FROM.to_owned(),
                format!("{}/{snapshot}", source.name_any()),
            )])),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// The snapshot to fork from: `given` (checked Ready), or a new one of `sandbox`, waited for.
async fn snapshot_of(
    conn: &Connection,
    sandbox: &str,
    given: Option<&str>,
    started: Instant,
    timeout_s: u64,
) -> anyhow::Result<String> {
    let name = match given {
        Some(n) => n.to_owned(),
        None => {
            let api: Api<SandboxSnapshot> = conn.api();
            api.create(&PostParams::default(), &new_snapshot(sandbox, None))
                .await
                .with_context(|| {
                    format!(
                        "creating a snapshot of sandbox {}/{sandbox}",
                        conn.namespace
                    )
                })?
                .name_any()
        }
    };
    wait_ready(conn, &name, started, timeout_s).await?;
    Ok(name)
}

/// Waits until every sandbox of `names` is Ready; returns their Pod addresses in order.
async fn wait_all_ready(
    conn: &Connection,
    names: &[String],
    started: Instant,
    timeout_s: u64,
) -> anyhow::Result<Vec<String>> {
    let sandboxes: Api<Sandbox> = conn.api();
    let pods: Api<Pod> = conn.api();
    let deadline = started + Duration::from_secs(timeout_s);
    let mut ready = vec![false; names.len()];
    loop {
        for (i, n) in names.iter().enumerate() {
            if !ready[i] {
                ready[i] = sandboxes
                    .get(n)
                    .await?
                    .status
                    .is_some_and(|s| is_ready(&s.conditions));
            }
        }
        if ready.iter().all(|r| *r) {
            break;
        }
        if Instant::now() >= deadline {
            let waiting: Vec<&str> = names
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(n, _)| n.as_str())
                .collect();
            anyhow::bail!(
                "not Ready after {timeout_s} s: {} (see `agent-sandbox get sandboxes`)",
                waiting.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let mut ips = Vec::new();
    for n in names {
        let ip = pods
            .get_opt(n)
            .await?
            .and_then(|p| p.status?.pod_ip)
            .unwrap_or_else(|| "-".into());
        ips.push(ip);
    }
    Ok(ips)
}

/// What [`fork_sandboxes`] made.
pub(crate) struct Forked {
    /// The snapshot the forks start from.
    pub(crate) snapshot: String,
    /// Each fork's name and Pod address (`-` when not waited for).
    pub(crate) forks: Vec<(String, String)>,
    /// From the forks' creation until all were Ready.
    pub(crate) ready_in: Duration,
}

/// Forks `source` `count` times from `snapshot` (or a snapshot taken now), naming the forks
/// `<name or snapshot>-1` …; waits until all are Ready unless `timeout_s` is 0.
pub(crate) async fn fork_sandboxes(
    conn: &Connection,
    source: &Sandbox,
    snapshot: Option<&str>,
    count: usize,
    name: Option<&str>,
    timeout_s: u64,
) -> anyhow::Result<Forked> {
    anyhow::ensure!(count >= 1, "the count of forks must be at least 1");
    let started = Instant::now();
    // Not waiting for the forks still waits for their snapshot (a fork of a snapshot that
    // fails would wait for ever).
    let snapshot_wait = if timeout_s == 0 { 600 } else { timeout_s };
    let snapshot = snapshot_of(conn, &source.name_any(), snapshot, started, snapshot_wait).await?;
    let prefix = name.map_or_else(|| snapshot.clone(), str::to_owned);
    let names: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i}")).collect();
    let sandboxes: Api<Sandbox> = conn.api();
    let forked_at = Instant::now();
    for n in &names {
        sandboxes
            .create(&PostParams::default(), &fork_of(source, &snapshot, n))
            .await
            .with_context(|| {
                format!(
                    "creating fork {}/{n} of snapshot {snapshot}; if it exists already, pass another name for the forks",
                    conn.namespace
                )
            })?;
    }
    let ips = if timeout_s == 0 {
        vec!["-".to_owned(); names.len()]
    } else {
        wait_all_ready(conn, &names, started, timeout_s).await?
    };
    Ok(Forked {
        snapshot,
        forks: names.into_iter().zip(ips).collect(),
        ready_in: forked_at.elapsed(),
    })
}

pub(crate) async fn fork(args: &ForkArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let source = conn.resolve_sandbox(&args.sandbox).await?;
    let started = Instant::now();
    let forked = fork_sandboxes(
        &conn,
        &source,
        args.snapshot.as_deref(),
        args.count,
        args.name.as_deref(),
        args.timeout,
    )
    .await
    .map_err(|e| {
        if format!("{e:#}").contains("another name") {
            e.context("pass --name to name the forks otherwise")
        } else {
            e
        }
    })?;
    for (n, ip) in &forked.forks {
        if args.timeout == 0 {
            println!("{n}");
        } else {
            println!("{n}\t{ip}");
        }
    }
    if args.timeout > 0 {
        eprintln!(
            "{} fork(s) of {}/{} from snapshot {}: all Ready {:.1?} after their creation ({:.1?} in all)",
            forked.forks.len(),
            conn.namespace,
            source.name_any(),
            forked.snapshot,
            forked.ready_in,
            started.elapsed()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Rolls sandbox `name` back to `snapshot`; the time it took.
pub(crate) async fn roll_back(
    conn: &Connection,
    name: &str,
    snapshot: &str,
    timeout_s: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wait_ready(conn, snapshot, started, timeout_s).await?;
    let sandboxes: Api<Sandbox> = conn.api();
    let annotate = |snapshot: Option<&str>| {
        serde_json::json!({"metadata": {"annotations": {
            RESTORE_FROM: snapshot,
            RESTORE_VOLUMES: snapshot.map(|_| "Replace"),
        }}})
    };
    let pp = PatchParams::default();
    sandboxes
        .patch(name, &pp, &Patch::Merge(&annotate(Some(snapshot))))
        .await
        .with_context(|| format!("rolling sandbox {}/{name} back", conn.namespace))?;
    // A new Pod, made with the annotations.
    let left = |s: Instant| timeout_s.saturating_sub(s.elapsed().as_secs()).max(1);
    set_operating_mode(conn, name, OperatingMode::Suspended, left(started))
        .await
        .with_context(|| {
            format!(
                "its annotations {RESTORE_FROM} and {RESTORE_VOLUMES} are set: resume it (agent-sandbox resume {name}) to finish the rollback"
            )
        })?;
    set_operating_mode(conn, name, OperatingMode::Running, left(started)).await?;
    // Once: a later resume starts as upstream's does, not from the snapshot again.
    sandboxes
        .patch(name, &pp, &Patch::Merge(&annotate(None)))
        .await?;
    Ok(started.elapsed())
}

pub(crate) async fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let name = conn.resolve_sandbox(&args.sandbox).await?.name_any();
    eprintln!(
        "sandbox {}/{name}: rolling back to snapshot {} (its Pod is replaced)",
        conn.namespace, args.snapshot
    );
    let took = roll_back(&conn, &name, &args.snapshot, args.timeout).await?;
    eprintln!(
        "sandbox {}/{name}: rolled back to snapshot {} in {took:.1?}",
        conn.namespace, args.snapshot
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_copies_the_spec_and_its_own_labels_and_starts_from_the_snapshot() {
        let source: Sandbox = serde_json::from_value(serde_json::json!({
            "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "src", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": {"team": "rl", "agents.x-k8s.io/warm-pool-sandbox": "pool",
                           "extensions.agents.x-k8s.io/x": "y"},
                "annotations": {"agent-sandbox-rs.github.io/paused": "true"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "c", "uid": "c"}]},
            "spec": {"operatingMode": "Suspended",
                "podTemplate": {"metadata": {"annotations": {
                    "keep": "1", "agent-sandbox-rs.github.io/restore-volumes": "Replace"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]},
            "status": {"podIPs": ["10.0.0.1"]}
        }))
        .unwrap();
        let f = fork_of(&source, "snap", "snap-1");
        assert_eq!(f.name_any(), "snap-1");
        assert_eq!(f.metadata.namespace, None);
        assert_eq!(f.metadata.uid, None);
        assert_eq!(f.metadata.resource_version, None);
        assert_eq!(f.metadata.owner_references, None);
        assert_eq!(f.labels().len(), 1);
        assert_eq!(f.labels()["team"], "rl");
        assert_eq!(f.annotations()[FORKED_FROM], "src/snap");
        assert!(
            !f.annotations()
                .contains_key("agent-sandbox-rs.github.io/paused")
        );
        assert_eq!(f.spec.operating_mode, None);
        let ann = &f.spec.pod_template.metadata.annotations;
        assert_eq!(ann[RESTORE_FROM], "snap");
        assert_eq!(ann["keep"], "1");
        assert!(!ann.contains_key(RESTORE_VOLUMES));
        assert_eq!(f.spec.volume_claim_templates.len(), 1);
        assert!(f.status.is_none());
    }
}
