//! The sandbox engine: the library API the Pod loop drives (`create`, `start` or both at once
//! with `run`, `state`, `wait`, `pause`, `resume`, `stop`, `remove`, `recover`), the per-sandbox state persisted on
//! disk, handler selection, and cleanup.
//!
//! `create`, in order: validate and refuse privileged/hostPath → pick the handler → ensure the
//! image (pull policy) → sandbox directory and record → overlay rootfs (image layers + own
//! upper/work) → volumes (emptyDir in the sandbox directory, PVCs in a durable per-claim
//! directory) → network namespace + CNI ADD → `/etc/hosts` and `/etc/hostname` → `config.json`
//! → the shim runs the runtime's `create`. Any failure undoes the steps already done, in
//! reverse. `remove` undoes them all: kill → wait for the shim → runtime `delete` → unmount
//! rootfs → CNI DEL → remove netns → remove leftover cgroups → delete the directory.

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
use crate::host;
use crate::image::{Image, ImageStore, RegistryConfig};
use crate::runtime::{ContainerStatus, HandlerKind, HandlerStatus, OciRuntime, find_binary};
use crate::spec::{SandboxSpec, VolumeSource, VolumeSpec};
use crate::sys;

/// Called by the engine around a sandbox's network: `attached` after CNI ADD and before the
/// runtime creates the container (an error fails the create), `detached` after CNI DEL. The
/// node's NetworkPolicy enforcer ([`crate::firewall::PolicyEnforcer`]) is one.
pub trait NetworkHook: Send + Sync {
    /// The sandbox got its address; nothing runs in it yet.
    fn attached<'a>(
        &'a self,
        spec: &'a SandboxSpec,
        attachment: &'a Attachment,
    ) -> futures::future::BoxFuture<'a, Result<()>>;
    /// The sandbox's network is gone.
    fn detached<'a>(&'a self, id: &'a str) -> futures::future::BoxFuture<'a, ()>;
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Durable data: images, sandboxes (upper dirs, logs, records), PVC directories.
    pub root: PathBuf,
    /// Volatile runtime state: runtime `--root` directories, network namespaces.
    pub run_dir: PathBuf,
    /// Bridge network; `None` gives each sandbox a namespace with loopback only.
    pub network: Option<NetworkConfig>,
    /// Registry access.
    pub registry: RegistryConfig,
    /// Allow hostPath volumes.
    pub allow_host_path: bool,
    /// Handlers to probe and offer.
    pub handlers: Vec<HandlerKind>,
    /// Force the default handler instead of the fastest usable one.
    pub default_handler: Option<HandlerKind>,
    /// `RuntimeClass.handler` names mapped to handlers (the handler names themselves and
    /// `gvisor` always map).
    pub handler_aliases: BTreeMap<String, HandlerKind>,
    /// cgroup parent (relative to each hierarchy root).
    pub cgroup_parent: String,
    /// pids limit for sandboxes whose spec has none.
    pub default_pids_limit: i64,
}

impl EngineConfig {
    /// Defaults under the given directories.
    pub fn new(root: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            root: root.into(),
            run_dir: run_dir.into(),
            network: None,
            registry: RegistryConfig::default(),
            allow_host_path: false,
            handlers: HandlerKind::ALL.to_vec(),
            default_handler: None,
            handler_aliases: BTreeMap::new(),
            cgroup_parent: "agent-sandbox".into(),
            default_pids_limit: 4096,
        }
    }
}

/// Lifecycle phase of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Container created, process not started.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// The process exited (code in [`SandboxState::exit_code`]).
    Exited,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What `state` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxState {
    /// Sandbox id.
    pub id: String,
    /// Phase.
    pub phase: Phase,
    /// Exit code once exited (128+signal when killed by a signal); `None` if unknown.
    pub exit_code: Option<i32>,
    /// Host pid of the container init (runsc: the sandbox process).
    pub pid: Option<i32>,
    /// Pod IP when networked.
    pub pod_ip: Option<Ipv4Addr>,
    /// Handler running it.
    pub handler: HandlerKind,
}

/// Returned by `create`.
#[derive(Debug, Clone)]
pub struct SandboxHandle {
    /// Sandbox id.
    pub id: String,
    /// Handler running it.
    pub handler: HandlerKind,
    /// Pod IP when networked.
    pub pod_ip: Option<Ipv4Addr>,
    /// The image as resolved.
    pub image: Image,
}

/// What was found on disk by `recover`.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Sandboxes re-adopted as they were (running, paused, created or exited).
    pub adopted: Vec<String>,
    /// Half-made or orphaned sandboxes that were cleaned up.
    pub cleaned: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: SandboxSpec,
    handler: HandlerKind,
    image: Image,
    lowers: Vec<PathBuf>,
    netns: PathBuf,
    attachment: Option<Attachment>,
    cgroup_path: String,
    shim_pid: Option<i32>,
    container_pid: Option<i32>,
    started: bool,
    paused: bool,
}

struct Entry {
    record: Mutex<Record>,
    op: tokio::sync::Mutex<()>,
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
}

struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn record(&self) -> PathBuf {
        self.dir.join("record.json")
    }
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
    fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
    fn volume(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }
    fn log(&self) -> PathBuf {
        self.dir.join("container.log")
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

impl SandboxEngine {
    /// Open the engine: create directories, probe the handlers, open the image store and the
    /// network. Does not touch existing sandboxes: call [`SandboxEngine::recover`] for that.
    pub async fn new(config: EngineConfig) -> Result<Self> {
        for d in [
            config.root.join("sandboxes"),
            config.root.join("volumes"),
            config.run_dir.join("netns"),
            config.run_dir.join("probe"),
        ] {
            fs_err::create_dir_all(d)?;
        }
        let images = ImageStore::open(config.root.join("images"), config.registry.clone())?;
        let cni = match &config.network {
            Some(n) => Some(Cni::new(n.clone(), &config.root.join("network"))?),
            None => None,
        };
        let mut runtimes = HashMap::new();
        let mut statuses = Vec::new();
        for &kind in &config.handlers {
            let Some(bin) = find_binary(kind.name()) else {
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
            let rt = OciRuntime::new(
                kind,
                bin.clone(),
                config.run_dir.join("runtime").join(kind.name()),
            );
            fs_err::create_dir_all(rt.root())?;
            let status = probe(&rt, &config).await;
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
            config,
            runtimes,
            statuses,
            default_handler,
            images,
            cni,
            sandboxes: Mutex::new(HashMap::new()),
            network_hook: Mutex::new(None),
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

    fn paths(&self, id: &str) -> Paths {
        Paths {
            dir: self.config.root.join("sandboxes").join(id),
        }
    }

    /// The host directory backing a PVC (durable; outlives sandboxes).
    pub fn pvc_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.config.root.join("volumes").join(namespace).join(claim)
    }

    /// The cgroup path of a sandbox, relative to each hierarchy root.
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.config.cgroup_parent)
    }

    /// The netns path of a sandbox.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.config.run_dir.join("netns").join(id)
    }

    /// The container log (stdout and stderr).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.paths(id).log()
    }

    /// Ids of known sandboxes.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        v.sort();
        v
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

    fn save_record(&self, rec: &Record) -> Result<()> {
        let p = self.paths(&rec.spec.id);
        let path = p.record();
        let tmp = p.dir.join("record.json.tmp");
        fs_err::write(
            &tmp,
            serde_json::to_vec_pretty(rec).map_err(|e| NodeError::json(&path, e))?,
        )?;
        fs_err::rename(&tmp, &path)?;
        Ok(())
    }

    /// Create a sandbox for a Pod (see [`SandboxSpec::from_pod`] for the fields honoured).
    pub async fn create_pod(&self, pod: &k8s_openapi::api::core::v1::Pod) -> Result<SandboxHandle> {
        self.create(SandboxSpec::from_pod(pod)?).await
    }

    /// Create a sandbox (container created, process not started).
    pub async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, false).await
    }

    /// Create and start a sandbox with one runtime call (`run --detach`): the fast path when
    /// nothing has to happen between create and start.
    pub async fn run(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, true).await
    }

    async fn create_inner(&self, spec: SandboxSpec, start: bool) -> Result<SandboxHandle> {
        spec.validate()?;
        let who = spec.display_name();
        if spec.security.privileged {
            return Err(NodeError::Unsupported {
                sandbox: who,
                field: "spec.containers[0].securityContext.privileged".into(),
                reason: "privileged sandboxes are refused on this node".into(),
            });
        }
        for (i, v) in spec.volumes.iter().enumerate() {
            if let VolumeSource::HostPath { path } = &v.source {
                if !self.config.allow_host_path {
                    return Err(NodeError::Unsupported {
                        sandbox: who,
                        field: format!("spec.volumes[{i}].hostPath"),
                        reason: format!(
                            "hostPath {path:?} is refused: this node does not allow host directories; use a persistentVolumeClaim or emptyDir"
                        ),
                    });
                }
                if !Path::new(path).is_absolute() {
                    return Err(NodeError::InvalidSpec {
                        sandbox: who,
                        field: format!("spec.volumes[{i}].hostPath.path"),
                        reason: "must be absolute".into(),
                    });
                }
            }
        }
        let handler = self.resolve_handler(&spec)?;
        let paths = self.paths(&spec.id);
        {
            let map = lock(&self.sandboxes);
            if map.contains_key(&spec.id) || paths.dir.exists() {
                return Err(NodeError::AlreadyExists(spec.id.clone()));
            }
        }
        let image = self
            .images
            .ensure(&spec.image, spec.pull_policy)
            .await?
            .image;
        let lowers = self.images.lower_dirs(&image);
        let rec = Record {
            handler,
            lowers,
            netns: self.netns_path(&spec.id),
            attachment: None,
            cgroup_path: self.cgroup_path(&spec.id),
            shim_pid: None,
            container_pid: None,
            started: false,
            paused: false,
            image: image.clone(),
            spec,
        };
        // Reserve the id.
        let entry = Arc::new(Entry {
            record: Mutex::new(rec.clone()),
            op: tokio::sync::Mutex::new(()),
        });
        {
            let mut map = lock(&self.sandboxes);
            if map.contains_key(&rec.spec.id) {
                return Err(NodeError::AlreadyExists(rec.spec.id.clone()));
            }
            map.insert(rec.spec.id.clone(), entry.clone());
        }
        let _op = entry.op.lock().await;
        match self.create_steps(&paths, rec, start).await {
            Ok(rec) => {
                let handle = SandboxHandle {
                    id: rec.spec.id.clone(),
                    handler,
                    pod_ip: rec.attachment.as_ref().map(|a| a.ip),
                    image,
                };
                *lock(&entry.record) = rec;
                Ok(handle)
            }
            Err((e, rec)) => {
                if let Err(ce) = self.teardown(&paths, &rec).await {
                    tracing::warn!(target: "node::engine", sandbox = %rec.spec.id, error = %ce, "cleanup after failed create");
                }
                lock(&self.sandboxes).remove(&rec.spec.id);
                Err(e)
            }
        }
    }

    async fn create_steps(
        &self,
        paths: &Paths,
        mut rec: Record,
        start: bool,
    ) -> std::result::Result<Record, (NodeError, Record)> {
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((NodeError::from(e), rec)),
                }
            };
        }
        for d in [paths.rootfs(), paths.upper(), paths.work(), paths.etc()] {
            tri!(fs_err::create_dir_all(d));
        }
        tri!(self.save_record(&rec));
        tri!(host::mount_overlay(
            &rec.lowers,
            &paths.upper(),
            &paths.work(),
            &paths.rootfs()
        ));

        let mut volumes: Vec<(VolumeSpec, PathBuf)> = Vec::new();
        for v in &rec.spec.volumes {
            let host_dir = match &v.source {
                VolumeSource::EmptyDir => paths.volume(&v.name),
                VolumeSource::Pvc { claim } => self.pvc_dir(&rec.spec.namespace, claim),
                VolumeSource::HostPath { path } => PathBuf::from(path),
            };
            if !matches!(v.source, VolumeSource::HostPath { .. }) {
                tri!(fs_err::create_dir_all(&host_dir));
            } else if !host_dir.exists() {
                return Err((
                    NodeError::InvalidSpec {
                        sandbox: rec.spec.display_name(),
                        field: format!("volume {}", v.name),
                        reason: format!("hostPath {} does not exist", host_dir.display()),
                    },
                    rec,
                ));
            }
            volumes.push((v.clone(), host_dir));
        }

        tri!(host::create_netns(&rec.netns));
        if let Some(cni) = &self.cni {
            let att = tri!(cni.add(&rec.spec.id, &rec.netns).await);
            rec.attachment = Some(att.clone());
            tri!(self.save_record(&rec));
            if let Some(hook) = self.hook() {
                tri!(hook.attached(&rec.spec, &att).await);
            }
        }

        let hostname = rec
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| rec.spec.name.clone());
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some(a) = &rec.attachment {
            hosts.push_str(&format!("{}\t{hostname}\n", a.ip));
        }
        let hosts_file = paths.etc().join("hosts");
        let hostname_file = paths.etc().join("hostname");
        tri!(fs_err::write(&hosts_file, hosts));
        tri!(fs_err::write(&hostname_file, format!("{hostname}\n")));

        let rootfs = paths.rootfs();
        let oci = tri!(bundle::build(&BundleInputs {
            spec: &rec.spec,
            image: &rec.image,
            rootfs: &rootfs,
            handler: rec.handler,
            netns: &rec.netns,
            cgroup_path: &rec.cgroup_path,
            volumes: &volumes,
            hosts_file: &hosts_file,
            hostname_file: &hostname_file,
            default_pids_limit: self.config.default_pids_limit,
        }));
        tri!(bundle::write(&oci, &paths.bundle()));

        let rt = self.runtimes[&rec.handler].clone();
        let started = tri!(spawn_create(&rt, &rec.spec.id, paths, start).await);
        rec.shim_pid = Some(started.shim_pid);
        if started.create_exit != 0 {
            let log = fs_err::read_to_string(paths.log()).unwrap_or_default();
            return Err((
                NodeError::Runtime {
                    handler: rec.handler.to_string(),
                    op: if start { "run" } else { "create" }.into(),
                    id: rec.spec.id.clone(),
                    status: started.create_exit,
                    message: crate::runtime::clean_message(&log),
                },
                rec,
            ));
        }
        let pid = fs_err::read_to_string(paths.pid())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        rec.container_pid = pid;
        rec.started = start;
        tri!(self.save_record(&rec));
        Ok(rec)
    }

    /// Start the sandbox's process.
    pub async fn start(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        if rec.started {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "start",
                state: "already started".into(),
            });
        }
        self.runtimes[&rec.handler].start(id).await?;
        let mut r = lock(&entry.record);
        r.started = true;
        let snapshot = r.clone();
        drop(r);
        self.save_record(&snapshot)
    }

    /// Current state.
    pub async fn state(&self, id: &str) -> Result<SandboxState> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record).clone();
        self.state_of(&rec).await
    }

    async fn state_of(&self, rec: &Record) -> Result<SandboxState> {
        let id = &rec.spec.id;
        let paths = self.paths(id);
        let mut st = SandboxState {
            id: id.clone(),
            phase: Phase::Created,
            exit_code: None,
            pid: rec.container_pid,
            pod_ip: rec.attachment.as_ref().map(|a| a.ip),
            handler: rec.handler,
        };
        if let Some(code) = read_exit(&paths.exit()) {
            st.phase = Phase::Exited;
            st.exit_code = Some(code);
            return Ok(st);
        }
        let rt = &self.runtimes[&rec.handler];
        st.phase = match rt.state(id).await? {
            None => Phase::Exited,
            Some(s) => match s.status {
                ContainerStatus::Creating | ContainerStatus::Created => Phase::Created,
                ContainerStatus::Running => Phase::Running,
                ContainerStatus::Paused => Phase::Paused,
                ContainerStatus::Stopped => Phase::Exited,
            },
        };
        if st.phase == Phase::Exited {
            // The shim writes the code right after reaping; give it a moment.
            for _ in 0..200 {
                if let Some(code) = read_exit(&paths.exit()) {
                    st.exit_code = Some(code);
                    break;
                }
                if rec
                    .shim_pid
                    .is_none_or(|p| sys::pidfd_open(p).ok().flatten().is_none())
                {
                    st.exit_code = read_exit(&paths.exit());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(st)
    }

    /// Wait until the sandbox's process exits; returns its exit code (`None` if unknown).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record).clone();
        let paths = self.paths(id);
        let deadline = Instant::now() + timeout;
        if let Some(pid) = rec.container_pid
            && !pid_exited(pid, timeout).await?
        {
            return Err(NodeError::Timeout {
                sandbox: id.into(),
                what: "the process to exit",
                secs: timeout.as_secs_f64(),
            });
        }
        loop {
            if let Some(c) = read_exit(&paths.exit()) {
                return Ok(Some(c));
            }
            let shim_gone = rec
                .shim_pid
                .is_none_or(|p| sys::pidfd_open(p).ok().flatten().is_none());
            if shim_gone {
                return Ok(read_exit(&paths.exit()));
            }
            if Instant::now() > deadline {
                return Err(NodeError::Timeout {
                    sandbox: id.into(),
                    what: "the exit code",
                    secs: timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Freeze all processes of the sandbox.
    pub async fn pause(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let st = self.state_of(&rec).await?;
        if st.phase != Phase::Running {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "pause",
                state: st.phase.to_string(),
            });
        }
        self.runtimes[&rec.handler].pause(id).await?;
        let snap = {
            let mut r = lock(&entry.record);
            r.paused = true;
            r.clone()
        };
        self.save_record(&snap)
    }

    /// Thaw a paused sandbox.
    pub async fn resume(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let st = self.state_of(&rec).await?;
        if st.phase != Phase::Paused {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "resume",
                state: st.phase.to_string(),
            });
        }
        self.runtimes[&rec.handler].resume(id).await?;
        let snap = {
            let mut r = lock(&entry.record);
            r.paused = false;
            r.clone()
        };
        self.save_record(&snap)
    }

    /// Stop the process: SIGTERM, then SIGKILL after `grace`. Returns the exit code.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        self.stop_rec(&rec, grace).await
    }

    async fn stop_rec(&self, rec: &Record, grace: Duration) -> Result<Option<i32>> {
        let id = &rec.spec.id;
        let rt = &self.runtimes[&rec.handler];
        let st = self.state_of(rec).await?;
        match st.phase {
            Phase::Exited => return Ok(st.exit_code),
            Phase::Paused => rt.resume(id).await?,
            Phase::Created => {
                // Never started: nothing to terminate gracefully, and runsc cannot signal a
                // created container. Deleting it ends its init.
                rt.delete(id).await?;
                return self.wait_exit(rec, Duration::from_secs(10)).await;
            }
            Phase::Running => {}
        }
        if !grace.is_zero() {
            rt.kill(id, "TERM").await?;
            if let Some(pid) = rec.container_pid
                && pid_exited(pid, grace).await?
            {
                return self.wait_exit(rec, Duration::from_secs(10)).await;
            }
        }
        rt.kill(id, "KILL").await?;
        self.wait_exit(rec, Duration::from_secs(10)).await
    }

    async fn wait_exit(&self, rec: &Record, timeout: Duration) -> Result<Option<i32>> {
        let paths = self.paths(&rec.spec.id);
        if let Some(pid) = rec.container_pid
            && !pid_exited(pid, timeout).await?
        {
            return Err(NodeError::Timeout {
                sandbox: rec.spec.id.clone(),
                what: "the process to exit after SIGKILL",
                secs: timeout.as_secs_f64(),
            });
        }
        for _ in 0..500 {
            if let Some(c) = read_exit(&paths.exit()) {
                return Ok(Some(c));
            }
            if rec
                .shim_pid
                .is_none_or(|p| sys::pidfd_open(p).ok().flatten().is_none())
            {
                return Ok(read_exit(&paths.exit()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(None)
    }

    /// Remove the sandbox: kill it if needed and delete its container, mounts, network,
    /// cgroups and directory. PVC directories stay.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let paths = self.paths(id);
        self.teardown(&paths, &rec).await?;
        lock(&self.sandboxes).remove(id);
        Ok(())
    }

    async fn teardown(&self, paths: &Paths, rec: &Record) -> Result<()> {
        let id = &rec.spec.id;
        let mut first_err: Option<NodeError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(target: "node::engine", sandbox = %id, error = %e, "teardown step failed");
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        };
        if let Some(rt) = self.runtimes.get(&rec.handler)
            && rt.state(id).await.ok().flatten().is_some()
        {
            let st = self.state_of(rec).await.ok();
            if st.as_ref().is_some_and(|s| s.phase == Phase::Paused) {
                note(rt.resume(id).await);
            }
            if st
                .as_ref()
                .is_some_and(|s| matches!(s.phase, Phase::Running | Phase::Paused))
            {
                note(rt.kill(id, "KILL").await);
                if let Some(pid) = rec.container_pid {
                    note(pid_exited(pid, Duration::from_secs(10)).await.map(drop));
                }
            }
            note(rt.delete(id).await);
        }
        if let Some(shim) = rec.shim_pid {
            note(pid_exited(shim, Duration::from_secs(10)).await.map(drop));
        }
        note(host::unmount(&paths.rootfs()));
        if let Some(cni) = &self.cni
            && (rec.attachment.is_some() || rec.netns.exists())
        {
            note(
                cni.del(id, &rec.netns, rec.attachment.as_ref().map(|a| &a.result))
                    .await,
            );
            if let Some(hook) = self.hook() {
                hook.detached(id).await;
            }
        }
        note(host::remove_netns(&rec.netns));
        note(host::remove_cgroup(&rec.cgroup_path));
        if let Some(e) = first_err {
            return Err(e);
        }
        if paths.dir.exists() {
            let leftover = host::mounts_under(&paths.dir);
            if !leftover.is_empty() {
                return Err(NodeError::Config(format!(
                    "sandbox {id}: mounts still present under {}: {leftover:?}",
                    paths.dir.display()
                )));
            }
            fs_err::remove_dir_all(&paths.dir)?;
        }
        Ok(())
    }

    /// Find sandboxes left by a previous engine (after a crash or restart): re-adopt those the
    /// runtime still knows with their rootfs mounted, clean up the rest.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let dir = self.config.root.join("sandboxes");
        let mut ids: Vec<String> = fs_err::read_dir(&dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        for id in ids {
            if lock(&self.sandboxes).contains_key(&id) {
                continue;
            }
            let paths = self.paths(&id);
            let rec: Option<Record> = fs_err::read(paths.record())
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
            let Some(rec) = rec else {
                // No record: a create that never got far. Remove what can be removed.
                host::unmount(&paths.rootfs())?;
                host::remove_netns(&self.netns_path(&id))?;
                if host::mounts_under(&paths.dir).is_empty() {
                    fs_err::remove_dir_all(&paths.dir)?;
                }
                report.cleaned.push(id);
                continue;
            };
            let known = match self.runtimes.get(&rec.handler) {
                Some(rt) => rt.state(&id).await.ok().flatten().is_some(),
                None => false,
            };
            let intact = known
                && host::is_mounted(&paths.rootfs())
                && rec.netns.exists()
                && rec.container_pid.is_some();
            if intact {
                lock(&self.sandboxes).insert(
                    id.clone(),
                    Arc::new(Entry {
                        record: Mutex::new(rec),
                        op: tokio::sync::Mutex::new(()),
                    }),
                );
                report.adopted.push(id);
            } else {
                self.teardown(&paths, &rec).await?;
                report.cleaned.push(id);
            }
        }
        Ok(report)
    }
}

async fn spawn_create(
    rt: &OciRuntime,
    id: &str,
    paths: &Paths,
    start: bool,
) -> Result<sys::ShimStarted> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cs = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
    let log: OwnedFd = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log())?
        .into_parts()
        .0
        .into();
    let devnull: OwnedFd = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into_parts()
        .0
        .into();
    let plan = sys::ShimPlan {
        argv: rt.create_argv(id, &paths.bundle(), &paths.pid(), start),
        envp: vec![
            CString::new("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .unwrap_or_default(),
        ],
        log,
        devnull,
        pid_file: cs(&paths.pid()),
        exit_tmp: cs(&paths.exit_tmp()),
        exit_file: cs(&paths.exit()),
        hide_cgroup2: rt.hides_cgroup2().then(sys::Cgroup2Hide::new),
    };
    tokio::task::spawn_blocking(move || sys::spawn_shim(plan))
        .await
        .map_err(|e| NodeError::Config(format!("shim task failed: {e}")))?
        .map_err(|e| {
            NodeError::Io(std::io::Error::new(
                e.kind(),
                format!("starting the shim for sandbox {id}: {e}"),
            ))
        })
}

/// Probe one handler: create and delete a container from a minimal bundle in its own network
/// namespace, timing it.
async fn probe(rt: &OciRuntime, config: &EngineConfig) -> HandlerStatus {
    let version = rt.version().await.ok();
    let id = format!("probe-{}-{}", rt.kind().name(), std::process::id());
    let dir = config.run_dir.join("probe").join(&id);
    let netns = config.run_dir.join("probe").join(format!("{id}.netns"));
    let res: Result<Duration> = async {
        let _ = fs_err::remove_dir_all(&dir);
        for d in ["dev", "proc", "sys", "tmp"] {
            fs_err::create_dir_all(dir.join("bundle/rootfs").join(d))?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join("bundle/rootfs/probe");
            fs_err::write(&p, b"")?;
            fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
        host::create_netns(&netns)?;
        let mut namespaces = vec![
            serde_json::json!({"type": "pid"}),
            serde_json::json!({"type": "ipc"}),
            serde_json::json!({"type": "uts"}),
            serde_json::json!({"type": "mount"}),
            serde_json::json!({"type": "network", "path": netns}),
        ];
        if rt.kind() != HandlerKind::Runsc {
            namespaces.push(serde_json::json!({"type": "cgroup"}));
        }
        let doc = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/probe"],
                        "env": ["PATH=/"], "cwd": "/", "noNewPrivileges": true},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "probe",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": namespaces,
                      "cgroupsPath": format!("/{}/{id}", config.cgroup_parent),
                      "resources": {"pids": {"limit": 512}}}
        });
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(doc).map_err(|e| NodeError::json("probe spec", e))?;
        bundle::write(&spec, &dir.join("bundle"))?;
        let paths = Paths { dir: dir.clone() };
        let t = Instant::now();
        let started = spawn_create(rt, &id, &paths, false).await?;
        if started.create_exit != 0 {
            let log = fs_err::read_to_string(paths.log()).unwrap_or_default();
            return Err(NodeError::Runtime {
                handler: rt.kind().to_string(),
                op: "create".into(),
                id: id.clone(),
                status: started.create_exit,
                message: crate::runtime::clean_message(&log),
            });
        }
        rt.delete(&id).await?;
        let took = t.elapsed();
        pid_exited(started.shim_pid, Duration::from_secs(10)).await?;
        Ok(took)
    }
    .await;
    let _ = rt.delete(&id).await;
    let _ = host::remove_netns(&netns);
    let _ = host::remove_cgroup(&format!("/{}/{id}", config.cgroup_parent));
    let _ = fs_err::remove_dir_all(&dir);
    match res {
        Ok(t) => HandlerStatus {
            kind: rt.kind(),
            binary: Some(rt.binary().to_path_buf()),
            version,
            usable: true,
            probe_time: Some(t),
            error: None,
        },
        Err(e) => HandlerStatus {
            kind: rt.kind(),
            binary: Some(rt.binary().to_path_buf()),
            version,
            usable: false,
            probe_time: None,
            error: Some(e.to_string()),
        },
    }
}
