//! The sandbox engine: the library API the Pod loop drives (`create`, `start` or both at once
//! with `run`, `state`, `wait`, `pause`, `resume`, `snapshot`, `stop`, `remove`, `recover`), the
//! per-sandbox state persisted on disk, handler selection, and cleanup.
//!
//! `create`, in order: validate and refuse privileged/hostPath → pick the handler → ensure the
//! image (pull policy) → sandbox directory and record → volumes (emptyDir in the sandbox
//! directory, PVCs in a durable per-claim directory) → in the background: network namespace,
//! CNI ADD, the network hook → `/etc/hostname` and `/etc/hosts` → per container: overlay rootfs
//! (image layers + own upper/work) → `config.json` → the shim runs the runtime's `create` once
//! the namespace exists → the start waits for the rest of the network (the pod IP goes into
//! `/etc/hosts` in place) and runs the runtime's `start`; with the network already there (or
//! none), create and start are one `run`. runsc attaches the network before its create. Any
//! failure undoes the steps already done, in reverse; a sandbox whose network failed is
//! removed. `remove` undoes them all: kill → wait for the shim → runtime `delete` → unmount
//! rootfs → CNI DEL → remove netns → remove leftover cgroups → delete the directory. Each step's
//! timing is kept ([`crate::timeline`]).
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the engine, its per-sandbox records and paths, handler selection |
//! | `types.rs` | what the engine's API takes and returns |
//! | `create.rs` | `create`, `run`, `prepare`: the Pod-level part of a sandbox |
//! | `container.rs` | a container's rootfs, bundle and runtime `create` |
//! | `network.rs` | the background network attachment and the [`NetworkHook`] |
//! | `control.rs` | `start`, `state`, `wait`, `exec`, `pause`, `resume`, `stop` |
//! | `snapshot.rs` | `snapshot`: memory (runsc), writable layers and volume data into a directory |
//! | `effects.rs` | the lifecycle's runtime effects on one container: state, stop, removal |
//! | `teardown.rs` | `remove` and `recover` |
//! | `steps.rs` | the host effects of those steps, as functions of a [`Host`] |
//! | `etc_files.rs` | `/etc/hosts` and `/etc/resolv.conf` of a sandbox |
//! | `handlers.rs` | the start-up probe of each runtime handler |

mod container;
mod control;
mod create;
mod effects;
mod etc_files;
mod handlers;
mod network;
mod query;
mod snapshot;
mod steps;
mod teardown;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleInputs};
use crate::cni::{Attachment, Cni, NetworkConfig};
use crate::error::{NodeError, Result};
use crate::host::{self, Host};
use crate::image::{Image, ImageStore, RegistryConfig};
pub use crate::lifecycle::Phase;
use crate::lifecycle::{self, Effect, Op};
use crate::runtime::{HandlerKind, HandlerStatus, OciRuntime};
use crate::spec::{DnsSpec, SandboxSpec, VolumeSource, VolumeSpec};
use crate::sys;
use crate::timeline::{StepTime, Timeline};

use container::spawn_create;
use etc_files::{hosts_file, resolv_conf};
use handlers::probe;
pub use network::NetworkHook;
use network::{NetOutcome, attach};
pub use snapshot::{SNAPSHOT_MANIFEST, SnapshotOutcome, partial_dir};
pub use types::*;

/// One container of a sandbox as created on disk and in the runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerRecord {
    name: String,
    runtime_id: String,
    dir: PathBuf,
    cgroup_path: String,
    image: Image,
    lowers: Vec<PathBuf>,
    shim_pid: Option<i32>,
    container_pid: Option<i32>,
    started: bool,
    paused: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: SandboxSpec,
    handler: HandlerKind,
    netns: PathBuf,
    attachment: Option<Attachment>,
    /// Containers that exist (created, running or exited), in creation order.
    #[serde(default)]
    containers: Vec<ContainerRecord>,
    /// The Pod-level part (network, `/etc` files, volumes) is complete.
    #[serde(default)]
    prepared: bool,
    // Single-container records written before containers existed; moved into `containers` by
    // `migrate` when read.
    #[serde(default, skip_serializing)]
    image: Option<Image>,
    #[serde(default, skip_serializing)]
    lowers: Vec<PathBuf>,
    #[serde(default, skip_serializing)]
    cgroup_path: Option<String>,
    #[serde(default, skip_serializing)]
    shim_pid: Option<i32>,
    #[serde(default, skip_serializing)]
    container_pid: Option<i32>,
    #[serde(default, skip_serializing)]
    started: bool,
    #[serde(default, skip_serializing)]
    paused: bool,
}

impl Record {
    fn migrate(&mut self, dir: &Path) {
        if let (Some(image), Some(cg)) = (self.image.take(), self.cgroup_path.take()) {
            self.containers.push(ContainerRecord {
                name: self.spec.main.name.clone(),
                runtime_id: self.spec.id.clone(),
                dir: dir.to_path_buf(),
                cgroup_path: cg,
                image,
                lowers: std::mem::take(&mut self.lowers),
                shim_pid: self.shim_pid.take(),
                container_pid: self.container_pid.take(),
                started: self.started,
                paused: self.paused,
            });
            self.prepared = true;
        }
    }

    fn container(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.name == name)
    }

    fn container_mut(&mut self, name: &str) -> Option<&mut ContainerRecord> {
        self.containers.iter_mut().find(|c| c.name == name)
    }
}

struct Entry {
    record: Mutex<Record>,
    op: tokio::sync::Mutex<()>,
    timeline: Timeline,
    /// The network attachment running in the background (see `join_network`).
    net: tokio::sync::Mutex<Option<tokio::task::JoinHandle<NetOutcome>>>,
    /// The network attachment failed: the sandbox must not run.
    net_failed: std::sync::atomic::AtomicBool,
    /// Whether the network namespace made in the background exists (`None` while it is being
    /// made); absent when it was made in the foreground.
    netns_ready: Mutex<Option<tokio::sync::watch::Receiver<Option<bool>>>>,
    /// The generation of the record last written to disk ([`crate::record_file`]).
    generation: std::sync::atomic::AtomicU64,
}

impl Entry {
    /// An entry whose record on disk has `generation` (0: none written yet).
    fn new(rec: Record, timeline: Timeline, generation: u64) -> Self {
        Entry {
            generation: std::sync::atomic::AtomicU64::new(generation),
            record: Mutex::new(rec),
            op: tokio::sync::Mutex::new(()),
            timeline,
            net: tokio::sync::Mutex::new(None),
            net_failed: std::sync::atomic::AtomicBool::new(false),
            netns_ready: Mutex::new(None),
        }
    }
}

/// The node's sandbox engine.
pub struct SandboxEngine {
    config: EngineConfig,
    runtimes: HashMap<HandlerKind, OciRuntime>,
    statuses: Vec<HandlerStatus>,
    default_handler: Option<HandlerKind>,
    images: ImageStore,
    cni: Option<Cni>,
    sandboxes: Mutex<HashMap<String, Arc<Entry>>>,
    network_hook: Mutex<Option<Arc<dyn NetworkHook>>>,
    /// Mounts, network namespaces and cgroups.
    host: Arc<dyn Host>,
    /// Why runsc cannot checkpoint on this node, once it said so (see `snapshot.rs`).
    no_checkpoint: Mutex<Option<String>>,
    /// gVisor runtime monitoring: the sandboxes' sink sockets and the counters.
    monitoring: crate::monitor::Monitoring,
}

/// Pod-level paths of a sandbox.
struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
    fn volume(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }
    /// The main container keeps the single-container layout at the sandbox directory; the
    /// others live under `c/<name>`.
    fn container(&self, spec: &SandboxSpec, name: &str) -> CPaths {
        if name == spec.main.name {
            CPaths {
                dir: self.dir.clone(),
            }
        } else {
            CPaths {
                dir: self.dir.join("c").join(name),
            }
        }
    }
}

/// Paths of one container.
struct CPaths {
    dir: PathBuf,
}

impl CPaths {
    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }
    fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
    /// The log of the instance before the current one (rotated at create).
    fn previous_log(&self) -> PathBuf {
        self.dir.join("container.log.previous")
    }
    fn pid(&self) -> PathBuf {
        self.dir.join("container.pid")
    }
    fn exit(&self) -> PathBuf {
        self.dir.join("exit")
    }
    fn exit_tmp(&self) -> PathBuf {
        self.dir.join("exit.tmp")
    }
    fn termination_log(&self) -> PathBuf {
        self.dir.join("termination-log")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn pid_exited(pid: i32, timeout: Duration) -> Result<bool> {
    let Some(fd) = sys::pidfd_open(pid)? else {
        return Ok(true);
    };
    Ok(sys::wait_pidfd(fd, timeout).await?)
}

fn read_exit(path: &Path) -> Option<i32> {
    fs_err::read_to_string(path).ok()?.trim().parse().ok()
}

fn pid_alive(pid: Option<i32>) -> bool {
    pid.is_some_and(|p| sys::pidfd_open(p).ok().flatten().is_some())
}

impl SandboxEngine {
    /// Open the engine: create directories, probe the handlers, open the image store and the
    /// network. Does not touch existing sandboxes: call [`SandboxEngine::recover`] for that.
    pub async fn new(config: EngineConfig) -> Result<Self> {
        Self::with_host(config, Arc::new(host::SystemHost)).await
    }

    /// [`SandboxEngine::new`] with the host effects of sandboxes going through `host`.
    pub async fn with_host(config: EngineConfig, host: Arc<dyn Host>) -> Result<Self> {
        for d in [
            config.root.join("sandboxes"),
            config.root.join("volumes"),
            config.run_dir.join("netns"),
            config.run_dir.join("probe"),
        ] {
            fs_err::create_dir_all(d)?;
        }
        // Sandboxes' files (their Secret volumes among them) and PVC data: root only. Inside a
        // sandbox the mounts do not need the host path to be traversable.
        for d in ["sandboxes", "volumes"] {
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(config.root.join(d), std::fs::Permissions::from_mode(0o700))?;
        }
        let images = ImageStore::open(config.root.join("images"), config.registry.clone())?;
        let cni = match &config.network {
            Some(n) => Some(Cni::with_host(
                n.clone(),
                &config.root.join("network"),
                Arc::clone(&host),
            )?),
            None => None,
        };
        let mut runtimes = HashMap::new();
        let mut statuses = Vec::new();
        for &kind in &config.handlers {
            let Some(bin) = host.find_program(kind.name()) else {
                statuses.push(HandlerStatus {
                    kind,
                    binary: None,
                    version: None,
                    usable: false,
                    probe_time: None,
                    error: Some(format!("{} is not installed", kind.name())),
                });
                continue;
            };
            let rt = OciRuntime::with_host(
                kind,
                bin.clone(),
                config.run_dir.join("runtime").join(kind.name()),
                Arc::clone(&host),
            );
            fs_err::create_dir_all(rt.root())?;
            let status = probe(&rt, &config, &host).await;
            if status.usable {
                runtimes.insert(kind, rt);
            }
            statuses.push(status);
        }
        let default_handler = match config.default_handler {
            Some(k) if runtimes.contains_key(&k) => Some(k),
            Some(k) => {
                return Err(NodeError::Config(format!(
                    "default handler {k} is not usable on this host: {}",
                    statuses
                        .iter()
                        .find(|s| s.kind == k)
                        .map(|s| s.summary())
                        .unwrap_or_default()
                )));
            }
            None => statuses
                .iter()
                .filter(|s| s.usable)
                .min_by_key(|s| {
                    // gVisor is an isolation choice, never the default unless alone.
                    (
                        s.kind == HandlerKind::Runsc,
                        s.probe_time.unwrap_or(Duration::MAX),
                    )
                })
                .map(|s| s.kind),
        };
        for s in &statuses {
            tracing::info!(target: "node::engine", "{}", s.summary());
        }
        Ok(SandboxEngine {
            monitoring: crate::monitor::Monitoring::new(config.runtime_monitoring.clone()),
            config,
            runtimes,
            statuses,
            default_handler,
            images,
            cni,
            sandboxes: Mutex::new(HashMap::new()),
            network_hook: Mutex::new(None),
            host,
            no_checkpoint: Mutex::new(None),
        })
    }

    /// The probe result of every configured handler.
    pub fn handler_statuses(&self) -> &[HandlerStatus] {
        &self.statuses
    }

    /// The default handler (fastest usable), if any handler works.
    pub fn default_handler(&self) -> Option<HandlerKind> {
        self.default_handler
    }

    /// Whether a handler is usable.
    pub fn has_handler(&self, kind: HandlerKind) -> bool {
        self.runtimes.contains_key(&kind)
    }

    /// The runtime wrapper of a usable handler (for benchmarks and diagnostics).
    pub fn runtime(&self, kind: HandlerKind) -> Option<&OciRuntime> {
        self.runtimes.get(&kind)
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The network driver, if configured.
    pub fn network(&self) -> Option<&Cni> {
        self.cni.as_ref()
    }

    /// Install the hook called around each sandbox's network (see [`NetworkHook`]).
    pub fn set_network_hook(&self, hook: Arc<dyn NetworkHook>) {
        *lock(&self.network_hook) = Some(hook);
    }

    fn hook(&self) -> Option<Arc<dyn NetworkHook>> {
        lock(&self.network_hook).clone()
    }

    /// The network attachment (pod IP, CNI result) of every known sandbox that has one.
    pub fn attachments(&self) -> Vec<(String, Attachment)> {
        let map = lock(&self.sandboxes);
        let mut v: Vec<(String, Attachment)> = map
            .iter()
            .filter_map(|(id, e)| Some((id.clone(), lock(&e.record).attachment.clone()?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The engine configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// gVisor runtime monitoring (its counters for the metrics endpoint).
    pub fn monitoring(&self) -> &crate::monitor::Monitoring {
        &self.monitoring
    }

    /// The handler a spec would run under (its `handler`, or the node's default).
    pub fn handler_of(&self, spec: &SandboxSpec) -> Result<HandlerKind> {
        self.resolve_handler(spec)
    }

    fn resolve_handler(&self, spec: &SandboxSpec) -> Result<HandlerKind> {
        let who = spec.display_name();
        let Some(name) = spec.handler.as_deref() else {
            return self
                .default_handler
                .ok_or_else(|| NodeError::HandlerUnavailable {
                    sandbox: who,
                    handler: "default".into(),
                    reason: self
                        .statuses
                        .iter()
                        .map(|s| s.summary())
                        .collect::<Vec<_>>()
                        .join("; "),
                });
        };
        let kind = self
            .config
            .handler_aliases
            .get(name)
            .copied()
            .or_else(|| HandlerKind::from_name(name))
            .ok_or_else(|| {
                let mut known: Vec<String> = HandlerKind::ALL
                    .iter()
                    .map(|k| k.name().to_string())
                    .collect();
                known.push("gvisor".into());
                known.extend(self.config.handler_aliases.keys().cloned());
                NodeError::UnknownHandler {
                    sandbox: who.clone(),
                    handler: name.into(),
                    known: known.join(", "),
                }
            })?;
        if !self.runtimes.contains_key(&kind) {
            return Err(NodeError::HandlerUnavailable {
                sandbox: who,
                handler: kind.to_string(),
                reason: self
                    .statuses
                    .iter()
                    .find(|s| s.kind == kind)
                    .map(|s| s.summary())
                    .unwrap_or_else(|| "not enabled in the node configuration".into()),
            });
        }
        Ok(kind)
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>> {
        lock(&self.sandboxes)
            .get(id)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(id.to_string()))
    }

    fn save_record(&self, rec: &Record, generation: u64) -> Result<()> {
        let dir = self.paths(&rec.spec.id).dir;
        crate::record_file::write(&dir, generation, rec).map_err(|e| {
            NodeError::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "writing the record of sandbox {} in {}: {e}",
                    rec.spec.id,
                    dir.display()
                ),
            ))
        })
    }

    /// Save `rec` and make it the entry's record.
    fn commit(&self, entry: &Entry, rec: &Record) -> Result<()> {
        *lock(&entry.record) = rec.clone();
        let generation = entry
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.save_record(rec, generation)
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
