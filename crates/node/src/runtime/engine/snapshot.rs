//! `snapshot`: a point-in-time copy of a running (or paused) sandbox into a directory. Under
//! runsc the memory and process state of every running container (`runsc checkpoint
//! --leave-running`), then each container's writable layer and the sandbox's volumes' data
//! (runsc refuses to checkpoint a sandbox on the host network stack, which is how this node
//! runs runsc: then, and from then on, the filesystem only, as under runc, saying why);
//! under runc and crun the writable layers and the volumes' data, copied while every process is
//! frozen (a sandbox that was paused stays paused; one that ran is thawed afterwards, also when
//! the copy fails). The files are written beside the target directory and renamed into place
//! only once complete: a full disk, an error, the size limit or a cancel leaves nothing behind,
//! and the sandbox runs on. One engine operation at a time per sandbox, so two snapshots of
//! one sandbox are taken one after the other.
//!
//! Layout of a snapshot directory: `snapshot.json` (what it holds), `containers/<name>/upper/`
//! (the writable layer), `containers/<name>/memory/` (runsc's checkpoint image),
//! `volumes/<name>/` (emptyDir and PVC data; configMap, secret and downward API volumes are
//! not data and are left out).

use std::sync::Arc;

use super::*;
use crate::host::{CopyBudget, CopyError, Stop};

/// The name of the file that describes a snapshot, in its directory.
pub const SNAPSHOT_MANIFEST: &str = "snapshot.json";

/// What runsc says when it refuses to checkpoint a sandbox on the host's network stack.
const HOSTINET_REFUSAL: &str = "checkpoint not supported when using hostinet";

/// How long runsc may take to write one container's checkpoint image.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(300);

/// What [`SandboxEngine::snapshot`] took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotOutcome {
    /// The handler that ran the sandbox.
    pub handler: HandlerKind,
    /// Whether process memory is included (runsc).
    pub memory: bool,
    /// The containers whose layers (and memory) it holds.
    pub containers: Vec<String>,
    /// The volumes whose data it holds.
    pub volumes: Vec<String>,
    /// Bytes of the snapshot's files.
    pub size_bytes: u64,
    /// Under runsc, why the memory is not included (runsc refused to checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_memory: Option<String>,
}

impl SandboxEngine {
    /// Take a snapshot of sandbox `id` into `dir` (which is replaced if it exists), within
    /// `budget` (its limit, and its cancel flag, checked between files and chunks).
    pub async fn snapshot(
        &self,
        id: &str,
        dir: &Path,
        budget: Arc<CopyBudget>,
    ) -> Result<SnapshotOutcome> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let main = rec
            .container(&rec.spec.main.name)
            .ok_or_else(|| NodeError::NotFound(id.into()))?;
        let phase = self.state_of(&rec, main).await?.phase;
        if !matches!(phase, Phase::Running | Phase::Paused) {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "take a snapshot",
                state: format!(
                    "its main container is {phase:?}; only a running or paused sandbox can be snapshotted"
                ),
            });
        }
        let tmp = partial_dir(dir);
        if tmp.exists() {
            fs_err::remove_dir_all(&tmp)?;
        }
        fs_err::create_dir_all(&tmp)?;
        let t = Instant::now();
        let taken = self.snapshot_into(&entry, &rec, id, &tmp, &budget).await;
        let outcome = match taken {
            Ok(o) => o,
            Err(e) => {
                let _ = fs_err::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let manifest = serde_json::to_vec_pretty(&outcome).expect("the outcome serialises");
        let finish = || -> Result<()> {
            fs_err::write(tmp.join(SNAPSHOT_MANIFEST), &manifest)?;
            if dir.exists() {
                fs_err::remove_dir_all(dir)?;
            }
            fs_err::rename(&tmp, dir)?;
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = fs_err::remove_dir_all(&tmp);
            return Err(e);
        }
        entry.timeline.record("snapshot", t);
        Ok(outcome)
    }

    async fn snapshot_into(
        &self,
        entry: &Entry,
        rec: &Record,
        id: &str,
        tmp: &Path,
        budget: &Arc<CopyBudget>,
    ) -> Result<SnapshotOutcome> {
        let mut memory = rec.handler == HandlerKind::Runsc;
        let mut without_memory = None;
        if memory && let Some(why) = lock(&self.no_checkpoint).clone() {
            memory = false;
            without_memory = Some(why);
        }
        if memory {
            match self.checkpoint(rec, id, tmp, budget).await {
                Ok(()) => {}
                Err(NodeError::Runtime { message, .. }) if message.contains(HOSTINET_REFUSAL) => {
                    // runsc refuses to checkpoint a sandbox on the host's network stack, which
                    // is how this node runs runsc: take the filesystem, say why, and do not
                    // ask again.
                    let why = format!(
                        "runsc cannot checkpoint memory here: {message}; the sandbox runs on the host network stack (runsc --network=host)"
                    );
                    *lock(&self.no_checkpoint) = Some(why.clone());
                    let _ = fs_err::remove_dir_all(tmp.join("containers"));
                    memory = false;
                    without_memory = Some(why);
                }
                Err(e) => return Err(e),
            }
        }
        if memory {
            self.copy_data(rec, id, tmp, budget).await?;
        } else {
            let was_paused = rec.containers.iter().any(|c| c.paused);
            if !was_paused {
                self.pause_locked(entry, id).await?;
            }
            let copied = self.copy_data(rec, id, tmp, budget).await;
            if !was_paused && let Err(e) = self.resume_locked(entry, id).await {
                tracing::error!(sandbox = %id, error = %e, "thawing after a snapshot failed");
                return Err(e);
            }
            copied?;
        }
        Ok(SnapshotOutcome {
            handler: rec.handler,
            memory,
            containers: rec.containers.iter().map(|c| c.name.clone()).collect(),
            volumes: data_volumes(&rec.spec)
                .into_iter()
                .map(|v| v.name.clone())
                .collect(),
            size_bytes: budget.used(),
            without_memory,
        })
    }

    /// `runsc checkpoint --leave-running` of every running container into
    /// `tmp/containers/<name>/memory`, counted against `budget`.
    async fn checkpoint(
        &self,
        rec: &Record,
        id: &str,
        tmp: &Path,
        budget: &Arc<CopyBudget>,
    ) -> Result<()> {
        let rt = self.runtimes[&rec.handler].clone();
        for c in rec.containers.iter().filter(|c| c.started) {
            if !lifecycle::can(self.state_of(rec, c).await?.phase, Op::Pause) {
                continue;
            }
            let image = tmp.join("containers").join(&c.name).join("memory");
            fs_err::create_dir_all(&image)?;
            rt.checkpoint(&c.runtime_id, &image, CHECKPOINT_TIMEOUT)
                .await?;
            budget
                .take(crate::host::tree_size(&image))
                .map_err(|s| stopped(id, budget, s))?;
        }
        Ok(())
    }

    /// Copy every container's writable layer and the volumes' data into `tmp`.
    async fn copy_data(
        &self,
        rec: &Record,
        id: &str,
        tmp: &Path,
        budget: &Arc<CopyBudget>,
    ) -> Result<()> {
        let paths = self.paths(id);
        let mut jobs: Vec<(PathBuf, PathBuf)> = rec
            .containers
            .iter()
            .map(|c| {
                (
                    CPaths { dir: c.dir.clone() }.upper(),
                    tmp.join("containers").join(&c.name).join("upper"),
                )
            })
            .collect();
        for v in data_volumes(&rec.spec) {
            jobs.push((
                self.host_dir(&paths, &rec.spec, v),
                tmp.join("volumes").join(&v.name),
            ));
        }
        copy_all(Arc::clone(&self.host), jobs, Arc::clone(budget), id)
            .await?
            .map_err(|e| match e {
                CopyError::Stopped(s) => stopped(id, budget, s),
                CopyError::Io(e) => e,
            })
    }
}

/// Copy each `(from, to)` tree on a blocking thread, making `to`'s parent first. The outer
/// error is the thread's, the inner one the copy's.
async fn copy_all(
    host: Arc<dyn Host>,
    jobs: Vec<(PathBuf, PathBuf)>,
    budget: Arc<CopyBudget>,
    sandbox: &str,
) -> Result<std::result::Result<(), CopyError>> {
    tokio::task::spawn_blocking(move || {
        for (from, to) in jobs {
            if let Some(parent) = to.parent() {
                fs_err::create_dir_all(parent).map_err(|e| CopyError::Io(e.into()))?;
            }
            host.copy_tree(&from, &to, &budget)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| {
        NodeError::Io(std::io::Error::other(format!(
            "copying the files of sandbox {sandbox} panicked: {e}"
        )))
    })
}

impl SandboxEngine {
    /// Fill a new sandbox's writable layers and data volumes from the snapshot at `snapshot`,
    /// before any of its containers exists. A PVC that already holds data is left as it is,
    /// unless the spec asks for its data to be replaced (a rollback).
    pub(super) async fn restore_files(
        &self,
        paths: &Paths,
        spec: &SandboxSpec,
        snapshot: &Path,
    ) -> Result<()> {
        if !snapshot.join(SNAPSHOT_MANIFEST).is_file() {
            return Err(NodeError::InvalidSpec {
                sandbox: spec.display_name(),
                field: format!(
                    "metadata.annotations[{}]",
                    agent_sandbox_api::constants::extensions::annotations::RESTORE_FROM
                ),
                reason: format!(
                    "the snapshot's files are not at {} on this node; take the snapshot again",
                    snapshot.display()
                ),
            });
        }
        let mut jobs = Vec::new();
        for c in spec.all_containers() {
            let from = snapshot.join("containers").join(&c.name).join("upper");
            let to = paths.container(spec, &c.name).upper();
            if from.is_dir() {
                if to.exists() {
                    fs_err::remove_dir_all(&to)?;
                }
                jobs.push((from, to));
            }
        }
        for v in data_volumes(spec) {
            let from = snapshot.join("volumes").join(&v.name);
            let to = self.host_dir(paths, spec, v);
            let holds_data = fs_err::read_dir(&to).is_ok_and(|mut d| d.next().is_some());
            if from.is_dir() && holds_data && spec.restore_replaces_volumes {
                // The directory itself stays (it may be a mount); its entries go.
                for e in fs_err::read_dir(&to)? {
                    let p = e?.path();
                    if p.is_dir() && !p.is_symlink() {
                        fs_err::remove_dir_all(&p)?;
                    } else {
                        fs_err::remove_file(&p)?;
                    }
                }
            }
            if from.is_dir() && (!holds_data || spec.restore_replaces_volumes) {
                // The volume's directory exists (it may be a mount): its entries are copied.
                for e in fs_err::read_dir(&from)? {
                    let e = e?;
                    jobs.push((e.path(), to.join(e.file_name())));
                }
            }
        }
        let t = Instant::now();
        let budget = Arc::new(CopyBudget::new(u64::MAX));
        copy_all(Arc::clone(&self.host), jobs, budget, &spec.display_name())
            .await?
            .map_err(|e| match e {
                CopyError::Io(e) => e,
                CopyError::Stopped(_) => {
                    NodeError::Io(std::io::Error::other("the restore copy was stopped"))
                }
            })?;
        if let Ok(entry) = self.entry(&spec.id) {
            entry.timeline.record("restore", t);
        }
        Ok(())
    }
}

/// The volumes whose data a snapshot keeps (emptyDir and PVC), each once.
fn data_volumes(spec: &SandboxSpec) -> Vec<&VolumeSpec> {
    let mut seen = Vec::<&VolumeSpec>::new();
    for v in spec.all_containers().flat_map(|c| c.volumes.iter()) {
        if matches!(v.source, VolumeSource::EmptyDir | VolumeSource::Pvc { .. })
            && !seen.iter().any(|s| s.name == v.name)
        {
            seen.push(v);
        }
    }
    seen
}

fn stopped(id: &str, budget: &CopyBudget, s: Stop) -> NodeError {
    match s {
        Stop::TooLarge => NodeError::SnapshotTooLarge {
            sandbox: id.into(),
            limit: budget.limit(),
        },
        Stop::Cancelled => NodeError::SnapshotCancelled { sandbox: id.into() },
    }
}

/// Where a snapshot is written before it is complete: beside its directory, so that the
/// final rename stays on one file system.
pub fn partial_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dir.with_file_name(name)
}
