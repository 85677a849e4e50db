//! The executor of [`crate::snapshot_plan`]: watches `SandboxSnapshot`s, observes each one's
//! Sandbox and Pod, and takes, fails, or deletes snapshots as the plan says, writing their
//! status. Files live under `<node data dir>/snapshots/<namespace>/<name>-<uid>/`; the finalizer
//! `agent-sandbox-rs.github.io/snapshot-files` keeps the resource until they are deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use agent_sandbox_api::constants::annotations::POD_NAME;
use agent_sandbox_api::constants::extensions::annotations::{RESTORE_FROM, RESTORE_VOLUMES};
use agent_sandbox_api::constants::extensions::{finalizers, snapshot_reasons as reasons};
use agent_sandbox_api::extension::{SandboxSnapshot, SnapshotKind, SnapshotPhase};
use agent_sandbox_api::v1beta1::{OperatingMode, Sandbox};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::{InFlight, NodeAgent, lock};
use crate::engine::{SnapshotOutcome, partial_dir};
use crate::error::NodeError;
use crate::host::CopyBudget;
use crate::pod::now;
use crate::snapshot_plan::{PodView, SandboxView, SnapshotAction, SnapshotView, snapshot_action};

/// How often snapshots that are not finished are looked at again (a Pod that starts, a turn
/// that comes).
const SNAPSHOT_RESYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// The agent's memory of snapshots.
#[derive(Default)]
pub(super) struct Snapshots {
    /// The latest object per uid.
    store: std::sync::Mutex<BTreeMap<String, SandboxSnapshot>>,
    /// Snapshots with a sync running.
    busy: std::sync::Mutex<HashSet<String>>,
    /// Snapshots being taken, by uid.
    taking: std::sync::Mutex<HashMap<String, Taking>>,
    /// Snapshots this agent took (or tried to) since it started: a stale copy of one of them
    /// in the watch cache must not start it again, nor make it look interrupted.
    taken: std::sync::Mutex<HashSet<String>>,
}

struct Taking {
    /// `namespace/sandbox`.
    sandbox: String,
    name: String,
    budget: Arc<CopyBudget>,
}

fn sandbox_key(s: &SandboxSnapshot) -> String {
    format!(
        "{}/{}",
        s.namespace().unwrap_or_default(),
        s.spec.sandbox_ref.name
    )
}

impl NodeAgent {
    /// Where the files of `snap` live on this node.
    pub fn snapshot_dir(&self, snap: &SandboxSnapshot) -> PathBuf {
        self.engine
            .config()
            .root
            .join("snapshots")
            .join(snap.namespace().unwrap_or_default())
            .join(format!(
                "{}-{}",
                snap.name_any(),
                snap.uid().unwrap_or_default()
            ))
    }

    /// The files of the snapshot a Pod asks to start from
    /// (`agent-sandbox-rs.github.io/restore-from`): `None` without the annotation; an error
    /// naming the snapshot and what to do when it is missing, not Ready or on another node
    /// (the Pod waits, and the next sync looks again).
    pub(super) async fn restore_dir(&self, pod: &Pod) -> Result<Option<PathBuf>, NodeError> {
        let Some(name) = pod.annotations().get(RESTORE_FROM) else {
            return Ok(None);
        };
        let ns = pod.namespace().unwrap_or_default();
        let refuse = |message: String| NodeError::Reference {
            sandbox: format!("{ns}/{}", pod.name_any()),
            message,
        };
        let api: Api<SandboxSnapshot> = Api::namespaced(self.client.clone(), &ns);
        let snap = api
            .get_opt(name)
            .await
            .map_err(|e| refuse(format!("reading SandboxSnapshot {ns}/{name} to restore from: {e}")))?
            .ok_or_else(|| refuse(format!("SandboxSnapshot {ns}/{name} (annotation {RESTORE_FROM}) not found; create it, or remove the annotation to start afresh")))?;
        let status = snap.status.clone().unwrap_or_default();
        if snap.phase() != SnapshotPhase::Ready {
            return Err(refuse(format!(
                "SandboxSnapshot {ns}/{name} (annotation {RESTORE_FROM}) is {}, not Ready; the sandbox starts once it is",
                snap.phase().as_str()
            )));
        }
        if status.node != self.node_name {
            return Err(refuse(format!(
                "SandboxSnapshot {ns}/{name} is on node {}, not {}: a sandbox is restored on the node that holds the snapshot",
                status.node, self.node_name
            )));
        }
        Ok(Some(self.snapshot_dir(&snap)))
    }

    /// Whether a restore replaces the data of volumes that hold some
    /// (`agent-sandbox-rs.github.io/restore-volumes`: `Replace`; absent or `IfEmpty`: no); an
    /// error naming the annotation and its values for anything else.
    pub(super) fn restore_replaces_volumes(pod: &Pod) -> Result<bool, NodeError> {
        match pod.annotations().get(RESTORE_VOLUMES).map(String::as_str) {
            None | Some("IfEmpty") => Ok(false),
            Some("Replace") => Ok(true),
            Some(other) => Err(NodeError::Reference {
                sandbox: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                message: format!(
                    "annotation {RESTORE_VOLUMES} is {other:?}; write IfEmpty (fill empty volumes only, the default) or Replace (replace their data: a rollback)"
                ),
            }),
        }
    }

    /// Watches SandboxSnapshots until the task is dropped, looking again at unfinished ones
    /// every second.
    pub(super) async fn watch_snapshots(self: Arc<Self>) {
        let api: Api<SandboxSnapshot> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut tick = tokio::time::interval(SNAPSHOT_RESYNC);
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    None => return,
                    Some(Ok(Event::Apply(s) | Event::InitApply(s))) => {
                        let id = s.uid().unwrap_or_default();
                        lock(&self.snapshots.store).insert(id.clone(), s);
                        self.trigger_snapshot(&id);
                    }
                    Some(Ok(Event::Delete(s))) => {
                        let id = s.uid().unwrap_or_default();
                        lock(&self.snapshots.store).remove(&id);
                        lock(&self.snapshots.taken).remove(&id);
                    }
                    Some(Ok(Event::Init | Event::InitDone)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "SandboxSnapshot watch failed; retrying"),
                },
                _ = tick.tick() => {
                    let open: Vec<String> = lock(&self.snapshots.store)
                        .iter()
                        .filter(|(_, s)| !s.phase().is_final() || s.metadata.deletion_timestamp.is_some())
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in open {
                        self.trigger_snapshot(&id);
                    }
                }
            }
        }
    }

    /// Look at snapshot `id` now, unless a look is already running.
    fn trigger_snapshot(self: &Arc<Self>, id: &str) {
        if self.is_stopped() || !lock(&self.snapshots.busy).insert(id.to_string()) {
            return;
        }
        let this = Arc::clone(self);
        let id = id.to_string();
        let guard = InFlight::new(&self.inflight);
        tokio::spawn(async move {
            let _guard = guard;
            let snap = lock(&this.snapshots.store).get(&id).cloned();
            if let Some(snap) = snap
                && let Err(e) = this.sync_snapshot(&snap).await
            {
                tracing::warn!(snapshot = %snap.name_any(), error = %e, "syncing SandboxSnapshot failed");
            }
            lock(&this.snapshots.busy).remove(&id);
        });
    }

    async fn sync_snapshot(self: &Arc<Self>, snap: &SandboxSnapshot) -> Result<(), kube::Error> {
        let id = snap.uid().unwrap_or_default();
        let key = sandbox_key(snap);
        let (taking_here, other) = {
            let taking = lock(&self.snapshots.taking);
            let other = taking
                .iter()
                .find(|(uid, t)| **uid != id && t.sandbox == key)
                .map(|(_, t)| t.name.clone());
            let taken = lock(&self.snapshots.taken).contains(&id);
            (taking.contains_key(&id) || taken, other)
        };
        let status = snap.status.clone().unwrap_or_default();
        let view = SnapshotView {
            phase: snap.phase(),
            deleting: snap.metadata.deletion_timestamp.is_some(),
            finalized: snap
                .finalizers()
                .iter()
                .any(|f| f == finalizers::SNAPSHOT_FILES),
            node: status.node.clone(),
            sandbox: snap.spec.sandbox_ref.name.clone(),
        };
        // Only what the plan needs: a finished or deleted snapshot needs no Sandbox.
        let sandbox = if view.deleting || view.phase.is_final() {
            SandboxView::Missing
        } else {
            self.observe_sandbox(snap).await?
        };
        let action = snapshot_action(
            &view,
            &sandbox,
            &self.node_name,
            taking_here,
            other.as_deref(),
        );
        let api: Api<SandboxSnapshot> =
            Api::namespaced(self.client.clone(), &snap.namespace().unwrap_or_default());
        match action {
            SnapshotAction::Nothing => Ok(()),
            SnapshotAction::Wait(message) => {
                let same = status.phase == Some(SnapshotPhase::Pending)
                    && ready_message(snap) == Some(message.as_str());
                if !same {
                    write_status_of(
                        &api,
                        snap,
                        json!({
                            "phase": "Pending",
                            "conditions": [ready(false, reasons::PENDING, &message)],
                        }),
                    )
                    .await?;
                }
                Ok(())
            }
            SnapshotAction::Fail(reason, message) => {
                let _ = fs_err::remove_dir_all(partial_dir(&self.snapshot_dir(snap)));
                write_status_of(
                    &api,
                    snap,
                    json!({
                        "phase": "Failed",
                        "conditions": [ready(false, reason, &message)],
                        "completedAt": now(),
                    }),
                )
                .await
            }
            SnapshotAction::Take => match sandbox {
                SandboxView::Running(PodView::Here { uid, .. }) => self.take(&api, snap, uid).await,
                _ => Ok(()),
            },
            SnapshotAction::Cleanup => self.clean_up(&api, snap).await,
        }
    }

    async fn observe_sandbox(&self, snap: &SandboxSnapshot) -> Result<SandboxView, kube::Error> {
        let ns = snap.namespace().unwrap_or_default();
        let sandboxes: Api<Sandbox> = Api::namespaced(self.client.clone(), &ns);
        let Some(sb) = sandboxes.get_opt(&snap.spec.sandbox_ref.name).await? else {
            return Ok(SandboxView::Missing);
        };
        if sb.metadata.deletion_timestamp.is_some() {
            return Ok(SandboxView::Deleting);
        }
        if sb.spec.operating_mode() == OperatingMode::Suspended {
            return Ok(SandboxView::Suspended);
        }
        let pod_name = sb
            .annotations()
            .get(POD_NAME)
            .cloned()
            .unwrap_or_else(|| sb.name_any());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let Some(pod) = pods.get_opt(&pod_name).await? else {
            return Ok(SandboxView::Running(PodView::Missing));
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if node.as_deref() != Some(self.node_name.as_str()) {
            return Ok(SandboxView::Running(PodView::Elsewhere));
        }
        Ok(SandboxView::Running(PodView::Here {
            uid: pod.uid().unwrap_or_default(),
            phase: pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into()),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }))
    }

    /// Add the finalizer, write InProgress, and take the snapshot in the background.
    async fn take(
        self: &Arc<Self>,
        api: &Api<SandboxSnapshot>,
        snap: &SandboxSnapshot,
        pod_uid: String,
    ) -> Result<(), kube::Error> {
        let id = snap.uid().unwrap_or_default();
        let mut fins = snap.finalizers().to_vec();
        if !fins.iter().any(|f| f == finalizers::SNAPSHOT_FILES) {
            fins.push(finalizers::SNAPSHOT_FILES.to_string());
            api.patch(
                &snap.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": fins, "resourceVersion": snap.resource_version()}})),
            )
            .await?;
        }
        let started = now();
        write_status(api, snap, json!({
            "phase": "InProgress",
            "conditions": [ready(false, reasons::IN_PROGRESS, &format!("node {} is taking the snapshot of Sandbox {:?}", self.node_name, snap.spec.sandbox_ref.name))],
            "node": self.node_name,
            "createdAt": started,
        }))
        .await?;
        lock(&self.snapshots.taken).insert(id.clone());
        let budget = Arc::new(CopyBudget::new(self.config.snapshot_size_limit));
        lock(&self.snapshots.taking).insert(
            id.clone(),
            Taking {
                sandbox: sandbox_key(snap),
                name: snap.name_any(),
                budget: Arc::clone(&budget),
            },
        );
        let this = Arc::clone(self);
        let api = api.clone();
        let snap = snap.clone();
        let guard = InFlight::new(&self.inflight);
        tokio::spawn(async move {
            let _guard = guard;
            let dir = this.snapshot_dir(&snap);
            let t = std::time::Instant::now();
            let taken = this.engine.snapshot(&pod_uid, &dir, budget).await;
            let elapsed = t.elapsed();
            let status = match &taken {
                Ok(out) => done(out, &started),
                Err(NodeError::SnapshotCancelled { .. }) => None,
                Err(e @ NodeError::SnapshotTooLarge { .. }) => {
                    Some(failed(reasons::TOO_LARGE, &e.to_string(), &started))
                }
                Err(e) => Some(failed(
                    reasons::FAILED,
                    &format!(
                        "taking the snapshot of Sandbox {:?} failed: {e}",
                        snap.spec.sandbox_ref.name
                    ),
                    &started,
                )),
            };
            tracing::info!(snapshot = %snap.name_any(), ok = taken.is_ok(), ?elapsed, "snapshot taken");
            if let Some(status) = status
                && let Err(e) = write_status(&api, &snap, status).await
            {
                tracing::warn!(snapshot = %snap.name_any(), error = %e, "writing the SandboxSnapshot status failed");
            }
            lock(&this.snapshots.taking).remove(&snap.uid().unwrap_or_default());
            // The next snapshot of the same Sandbox, if one waits, has its turn now.
            let key = sandbox_key(&snap);
            let waiting: Vec<String> = lock(&this.snapshots.store)
                .iter()
                .filter(|(_, s)| sandbox_key(s) == key && !s.phase().is_final())
                .map(|(id, _)| id.clone())
                .collect();
            for id in waiting {
                this.trigger_snapshot(&id);
            }
        });
        Ok(())
    }

    /// Cancel the snapshot if it is being taken, delete its files, remove the finalizer.
    async fn clean_up(
        &self,
        api: &Api<SandboxSnapshot>,
        snap: &SandboxSnapshot,
    ) -> Result<(), kube::Error> {
        let id = snap.uid().unwrap_or_default();
        if let Some(t) = lock(&self.snapshots.taking).get(&id) {
            t.budget.cancel();
        }
        // A checkpoint in runsc cannot be interrupted: wait for the take to end.
        while lock(&self.snapshots.taking).contains_key(&id) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let dir = self.snapshot_dir(snap);
        for d in [partial_dir(&dir), dir] {
            if let Err(e) = fs_err::remove_dir_all(&d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(snapshot = %snap.name_any(), error = %e, "deleting snapshot files failed; retrying");
                return Ok(());
            }
        }
        let fins: Vec<String> = snap
            .finalizers()
            .iter()
            .filter(|f| *f != finalizers::SNAPSHOT_FILES)
            .cloned()
            .collect();
        api.patch(
            &snap.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": fins, "resourceVersion": snap.resource_version()}})),
        )
        .await
        .map(drop)
        .or_else(not_found_is_done)
    }
}

fn not_found_is_done(e: kube::Error) -> Result<(), kube::Error> {
    match e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        e => Err(e),
    }
}

fn ready(status: bool, reason: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": if status {"True"} else {"False"}, "reason": reason,
           "message": message, "lastTransitionTime": now()})
}

fn ready_message(snap: &SandboxSnapshot) -> Option<&str> {
    snap.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.as_str())
}

/// The status of a snapshot taken.
fn done(out: &SnapshotOutcome, started: &str) -> Option<Value> {
    let kind = if out.memory {
        SnapshotKind::MemoryFilesystem
    } else {
        SnapshotKind::Filesystem
    };
    Some(json!({
        "phase": "Ready",
        "conditions": [ready(true, reasons::READY, &ready_text(kind, out))],
        "kind": kind.as_str(),
        "handler": out.handler.name(),
        "sizeBytes": out.size_bytes,
        "createdAt": started,
        "completedAt": now(),
    }))
}

fn ready_text(kind: SnapshotKind, out: &SnapshotOutcome) -> String {
    let mut text = format!(
        "{} snapshot of {} container(s) and {} volume(s), {} bytes",
        kind.as_str(),
        out.containers.len(),
        out.volumes.len(),
        out.size_bytes
    );
    if let Some(why) = &out.without_memory {
        text.push_str("; memory not included: ");
        text.push_str(why);
    }
    text
}

fn failed(reason: &str, message: &str, started: &str) -> Value {
    json!({
        "phase": "Failed",
        "conditions": [ready(false, reason, message)],
        "createdAt": started,
        "completedAt": now(),
    })
}

async fn write_status(
    api: &Api<SandboxSnapshot>,
    snap: &SandboxSnapshot,
    status: Value,
) -> Result<(), kube::Error> {
    patch_status(api, snap, json!({"status": status})).await
}

/// [`write_status`] only if `snap` is still the latest version: a decision made on a stale
/// copy from the watch cache is dropped (the newer version brings its own decision).
async fn write_status_of(
    api: &Api<SandboxSnapshot>,
    snap: &SandboxSnapshot,
    status: Value,
) -> Result<(), kube::Error> {
    patch_status(
        api,
        snap,
        json!({"metadata": {"resourceVersion": snap.resource_version()}, "status": status}),
    )
    .await
}

async fn patch_status(
    api: &Api<SandboxSnapshot>,
    snap: &SandboxSnapshot,
    patch: Value,
) -> Result<(), kube::Error> {
    match api
        .patch_status(
            &snap.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
