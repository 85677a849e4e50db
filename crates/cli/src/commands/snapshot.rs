//! `agent-sandbox snapshot create|list|delete`: SandboxSnapshots from the command line.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent_sandbox_api::extension::{
    SandboxRef, SandboxSnapshot, SandboxSnapshotSpec, SnapshotPhase,
};
use anyhow::Context;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use super::connect::Connection;
use super::sandboxes::{age, table};
use crate::args::{
    SnapshotArgs, SnapshotCommand, SnapshotCreateArgs, SnapshotDeleteArgs, SnapshotListArgs,
};

const POLL: Duration = Duration::from_millis(5);

pub(crate) async fn snapshot(args: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        SnapshotCommand::Create(a) => create(a).await,
        SnapshotCommand::List(a) => list(a).await,
        SnapshotCommand::Delete(a) => delete(a).await,
    }
}

/// The snapshot object `create` sends: `name`, or a name generated from the sandbox's.
pub(crate) fn new_snapshot(sandbox: &str, name: Option<&str>) -> SandboxSnapshot {
    let mut snap = SandboxSnapshot::new(
        name.unwrap_or_default(),
        SandboxSnapshotSpec {
            sandbox_ref: SandboxRef {
                name: sandbox.to_owned(),
            },
        },
    );
    if name.is_none() {
        snap.metadata = ObjectMeta {
            generate_name: Some(format!("{sandbox}-")),
            ..Default::default()
        };
    }
    snap
}

async fn create(args: &SnapshotCreateArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let sandbox = conn.resolve_sandbox(&args.sandbox).await?.name_any();
    let api: Api<SandboxSnapshot> = conn.api();
    let started = Instant::now();
    let created = api
        .create(
            &PostParams::default(),
            &new_snapshot(&sandbox, args.name.as_deref()),
        )
        .await
        .with_context(|| {
            format!(
                "creating a snapshot of sandbox {}/{sandbox}",
                conn.namespace
            )
        })?;
    let name = created.name_any();
    if !args.wait {
        println!("{name}");
        return Ok(ExitCode::SUCCESS);
    }
    let snap = wait_ready(&conn, &name, started, args.timeout).await?;
    let st = snap.status.unwrap_or_default();
    println!("{name}");
    eprintln!(
        "snapshot {}/{name}: Ready in {:.1?} ({}, {})",
        conn.namespace,
        started.elapsed(),
        st.kind.map(|k| k.as_str()).unwrap_or("-"),
        size(st.size_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// Waits until snapshot `name` is Ready (an error when it fails or `timeout_s` seconds after
/// `started` pass), printing each change of its phase on stderr.
pub(crate) async fn wait_ready(
    conn: &Connection,
    name: &str,
    started: Instant,
    timeout_s: u64,
) -> anyhow::Result<SandboxSnapshot> {
    let api: Api<SandboxSnapshot> = conn.api();
    let deadline = started + Duration::from_secs(timeout_s);
    let mut last = String::new();
    loop {
        let snap = api.get_opt(name).await?.with_context(|| {
            format!(
                "snapshot {}/{name} not found; list them with `agent-sandbox snapshot list`",
                conn.namespace
            )
        })?;
        let phase = snap.phase();
        let message = ready_message(&snap);
        let line = format!("{}: {}", phase.as_str(), message);
        if line != last {
            eprintln!(
                "snapshot {}/{name}: {line} ({:.1?})",
                conn.namespace,
                started.elapsed()
            );
            last = line;
        }
        match phase {
            SnapshotPhase::Ready => return Ok(snap),
            SnapshotPhase::Failed => {
                anyhow::bail!("snapshot {}/{name} failed: {message}", conn.namespace)
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "snapshot {}/{name} is not Ready after {timeout_s} s: {message}",
                conn.namespace,
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn list(args: &SnapshotListArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let api: Api<SandboxSnapshot> = conn.api();
    let mut items = api
        .list(&ListParams::default())
        .await
        .context("listing SandboxSnapshots")?
        .items;
    if let Some(sb) = &args.sandbox {
        items.retain(|s| &s.spec.sandbox_ref.name == sb);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            vec![
                s.name_any(),
                s.spec.sandbox_ref.name.clone(),
                s.phase().as_str().to_owned(),
                st.kind.map(|k| k.as_str().to_owned()).unwrap_or("-".into()),
                size(st.size_bytes),
                age(&s.metadata),
            ]
        })
        .collect();
    table(
        &mut std::io::stdout().lock(),
        &["NAME", "SANDBOX", "PHASE", "KIND", "SIZE", "AGE"],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn delete(args: &SnapshotDeleteArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    let api: Api<SandboxSnapshot> = conn.api();
    for name in &args.names {
        api.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting snapshot {}/{name}", conn.namespace))?;
    }
    if !args.no_wait {
        let deadline = Instant::now() + Duration::from_secs(120);
        for name in &args.names {
            while api.get_opt(name).await?.is_some() {
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "snapshot {}/{name} still exists after 120 s: the node that holds its files has not removed them (its finalizer agent-sandbox-rs.github.io/snapshot-files); is `agent-sandbox up` running?",
                        conn.namespace
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    for name in &args.names {
        println!("snapshot {}/{name} deleted", conn.namespace);
    }
    Ok(ExitCode::SUCCESS)
}

fn ready_message(snap: &SandboxSnapshot) -> String {
    snap.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_else(|| "waiting for the node to pick it up".into())
}

/// Bytes in binary units (`-` when unknown).
pub(crate) fn size(bytes: Option<i64>) -> String {
    let Some(b) = bytes else {
        return "-".into();
    };
    let b = b.max(0) as f64;
    match b {
        _ if b >= (1u64 << 30) as f64 => format!("{:.1}Gi", b / (1u64 << 30) as f64),
        _ if b >= (1u64 << 20) as f64 => format!("{:.1}Mi", b / (1u64 << 20) as f64),
        _ if b >= 1024.0 => format!("{:.1}Ki", b / 1024.0),
        _ => format!("{b}B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(size(None), "-");
        assert_eq!(size(Some(512)), "512B");
        assert_eq!(size(Some(100 << 20)), "100.0Mi");
        assert_eq!(size(Some(3 << 29)), "1.5Gi");
    }

    #[test]
    fn a_snapshot_without_a_name_gets_one_generated_from_the_sandbox() {
        let s = new_snapshot("sb", None);
        assert_eq!(s.metadata.generate_name.as_deref(), Some("sb-"));
        assert_eq!(s.metadata.name, None);
        assert_eq!(
            new_snapshot("sb", Some("one")).metadata.name.as_deref(),
            Some("one")
        );
    }
}
