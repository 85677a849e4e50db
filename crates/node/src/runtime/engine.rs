//! The sandbox engine: the library API the Pod loop drives (`create`, `start` or both at once
//! with `run`, `state`, `wait`, `pause`, `resume`, `stop`, `remove`, `recover`), the
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
use crate::runtime::{HandlerKind, HandlerStatus, OciRuntime, find_binary};
use crate::spec::{DnsSpec, SandboxSpec, VolumeSource, VolumeSpec};
use crate::sys;
use crate::timeline::{StepTime, Timeline};

/// How long `pause` waits for the freezer to report every process stopped.
const PAUSE_SETTLE: Duration = Duration::from_secs(5);

/// Called by the engine around a sandbox's network: `attached` after CNI ADD, while the
/// runtime may be creating the container but before any container starts (an error removes
/// the sandbox), `detached` after CNI DEL. The node's NetworkPolicy enforcer
/// ([`crate::firewall::PolicyEnforcer`]) is one.
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

/// The size limit of the memory-backed filesystem of one `configMap`, `secret`, `downwardAPI`
/// or `projected` volume: room for a few objects at the API's 1 MiB limit, twice over while an
/// update is written beside the previous files.
const PROJECTED_VOLUME_BYTES: u64 = 16 << 20;

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
    /// The sandboxd kit mounted into containers whose Pod asks for sandboxd (see
    /// [`crate::sandboxd_kit::prepare`]); `None`: such Pods are refused.
    pub sandboxd_kit: Option<PathBuf>,
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
            sandboxd_kit: None,
        }
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
    /// The main container's image as resolved (`None` after [`SandboxEngine::prepare`]).
    pub image: Option<Image>,
}

/// What was found on disk by `recover`.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Sandboxes re-adopted as they were (running, paused, created or exited).
    pub adopted: Vec<String>,
    /// Half-made or orphaned sandboxes that were cleaned up.
    pub cleaned: Vec<String>,
}

/// What `container_state` reports for one container of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Container name.
    pub name: String,
    /// Phase.
    pub phase: Phase,
    /// Exit code once exited (128+signal when killed by a signal).
    pub exit_code: Option<i32>,
    /// Host pid of its init process.
    pub pid: Option<i32>,
}

/// A running container, as [`SandboxEngine::running_container`] finds it.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    /// Its runtime handler.
    pub runtime: OciRuntime,
    /// The runtime's id of the container.
    pub runtime_id: String,
    /// Its OCI bundle (with the `config.json` it was created from).
    pub bundle: PathBuf,
}

/// Output of a command run in a container with [`SandboxEngine::exec`].
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit code (128+signal when killed).
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

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

/// `resolv.conf` for a DNS spec: the host's resolvers (loopback ones dropped: they cannot be
/// reached from a sandbox) unless ignored, then the Pod's, Kubernetes-style merged.
fn resolv_conf(dns: &DnsSpec) -> String {
    let mut nameservers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    if !dns.ignore_host {
        let host = fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for line in host.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => {
                    if let Some(ns) = f.next()
                        && ns
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|a| !a.is_loopback())
                    {
                        nameservers.push(ns.to_string());
                    }
                }
                Some("search" | "domain") => searches.extend(f.map(str::to_string)),
                Some("options") => options.extend(f.map(str::to_string)),
                _ => {}
            }
        }
    }
    for ns in &dns.nameservers {
        if !nameservers.contains(ns) {
            nameservers.push(ns.clone());
        }
    }
    nameservers.truncate(3);
    for s in &dns.searches {
        if !searches.contains(s) {
            searches.push(s.clone());
        }
    }
    searches.truncate(32);
    for o in &dns.options {
        let key = o.split(':').next().unwrap_or(o);
        options.retain(|x| x.split(':').next().unwrap_or(x) != key);
        options.push(o.clone());
    }
    let mut out = String::new();
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// `/etc/hosts` of a sandbox: localhost, its pod IP with its hostname once known, the Pod's
/// host aliases.
fn hosts_file(rec: &Record) -> String {
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
    if !rec.spec.host_aliases.is_empty() {
        hosts.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &rec.spec.host_aliases {
            hosts.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    hosts
}

/// What the background network attachment of a sandbox produced.
struct NetOutcome {
    /// The CNI result, when ADD succeeded (kept even if the hook failed, so that teardown
    /// releases it).
    attachment: Option<Attachment>,
    /// The first error: CNI ADD or the network hook.
    result: Result<()>,
}

/// The sandbox's network namespace (`ready` says when it exists), CNI ADD in it, then the
/// network hook (the firewall's rebuild starts).
async fn attach(
    host: Arc<dyn Host>,
    cni: Cni,
    hook: Option<Arc<dyn NetworkHook>>,
    spec: SandboxSpec,
    netns: PathBuf,
    tl: Timeline,
    ready: tokio::sync::watch::Sender<Option<bool>>,
) -> NetOutcome {
    let t = Instant::now();
    let ns = netns.clone();
    let made = tokio::task::spawn_blocking(move || host.create_netns(&ns))
        .await
        .unwrap_or_else(|e| {
            Err(NodeError::Config(format!(
                "creating the network namespace failed: {e}"
            )))
        });
    tl.record("netns", t);
    let _ = ready.send(Some(made.is_ok()));
    if let Err(e) = made {
        return NetOutcome {
            attachment: None,
            result: Err(e),
        };
    }
    let t = Instant::now();
    let att = match cni.add(&spec.id, &netns, &spec.host_ports).await {
        Ok(a) => a,
        Err(e) => {
            return NetOutcome {
                attachment: None,
                result: Err(e),
            };
        }
    };
    tl.record("cni add", t);
    let mut result = Ok(());
    if let Some(hook) = hook {
        let t = Instant::now();
        result = hook.attached(&spec, &att).await;
        tl.record("network hook", t);
    }
    NetOutcome {
        attachment: Some(att),
        result,
    }
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
            let status = probe(&rt, &config, host.as_ref()).await;
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
            host,
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

    /// The cgroup path of a sandbox's main container, relative to each hierarchy root.
    pub fn cgroup_path(&self, id: &str) -> String {
        if let Ok(e) = self.entry(id) {
            let rec = lock(&e.record);
            if let Some(c) = rec.container(&rec.spec.main.name) {
                return c.cgroup_path.clone();
            }
        }
        format!("/{}/{id}", self.config.cgroup_parent)
    }

    /// Runtime id and cgroup path of a container: `<id>.<name>.`. The closing dot keeps the
    /// ids of a node prefix-free (runsc resolves an id that is a prefix of several containers'
    /// as ambiguous): sandbox ids and container names have no dots, so no `<id>.<name>.` starts
    /// with another.
    fn container_ids(&self, spec: &SandboxSpec, name: &str) -> (String, String) {
        let rid = format!("{}.{name}.", spec.id);
        let cg = format!("/{}/{rid}", self.config.cgroup_parent);
        (rid, cg)
    }

    /// The runtime's id of a container (`containerID` in the Pod status).
    pub fn container_runtime_id(&self, id: &str, name: &str) -> Option<String> {
        let e = self.entry(id).ok()?;
        let rec = lock(&e.record);
        Some(rec.container(name)?.runtime_id.clone())
    }

    /// The image a container of a sandbox was made from.
    pub fn container_image(&self, id: &str, name: &str) -> Option<Image> {
        let e = self.entry(id).ok()?;
        let rec = lock(&e.record);
        Some(rec.container(name)?.image.clone())
    }

    /// A container whose process runs now, for [`crate::exec`]; `None` when it does not run
    /// (unknown, never started, exited or paused).
    pub fn running_container(&self, id: &str, name: &str) -> Option<RunningContainer> {
        let entry = self.entry(id).ok()?;
        let (handler, runtime_id, dir) = {
            let rec = lock(&entry.record);
            let c = rec.container(name)?;
            if !c.started || c.paused {
                return None;
            }
            (rec.handler, c.runtime_id.clone(), c.dir.clone())
        };
        if !matches!(self.container_exit(id, name), Ok(None)) {
            return None;
        }
        Some(RunningContainer {
            runtime: self.runtimes.get(&handler)?.clone(),
            runtime_id,
            bundle: CPaths { dir }.bundle(),
        })
    }

    /// Where a volume of a sandbox lives on the host.
    fn host_dir(&self, paths: &Paths, spec: &SandboxSpec, v: &VolumeSpec) -> PathBuf {
        match &v.source {
            VolumeSource::EmptyDir | VolumeSource::Projected => paths.volume(&v.name),
            VolumeSource::Pvc { claim } => self.pvc_dir(&spec.namespace, claim),
            VolumeSource::HostPath { path } => PathBuf::from(path),
        }
    }

    /// The host directory of a sandbox's `configMap`, `secret`, `downwardAPI` or `projected`
    /// volume, whose files the node agent writes ([`crate::projected::write`]).
    pub fn projected_dir(&self, id: &str, volume: &str) -> PathBuf {
        self.paths(id).volume(volume)
    }

    /// The netns path of a sandbox.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.config.run_dir.join("netns").join(id)
    }

    /// The main container's log (stdout and stderr).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.paths(id).dir.join("container.log")
    }

    /// The log of a container's previous instance (the current one's is rotated here when the
    /// container is created again).
    pub fn previous_log_path(&self, id: &str, name: &str) -> PathBuf {
        self.container_log_path(id, name)
            .with_file_name("container.log.previous")
    }

    /// A container's log: stdout and stderr of its current instance.
    pub fn container_log_path(&self, id: &str, name: &str) -> PathBuf {
        match self.entry(id) {
            Ok(e) => {
                let rec = lock(&e.record);
                self.paths(id).container(&rec.spec, name).log()
            }
            Err(_) => self
                .paths(id)
                .dir
                .join("c")
                .join(name)
                .join("container.log"),
        }
    }

    /// Where the sandbox's creation and start spent their time, step by step (see
    /// [`crate::timeline`]).
    pub fn timeline(&self, id: &str) -> Result<Vec<StepTime>> {
        Ok(self.entry(id)?.timeline.steps())
    }

    /// Add a step to a sandbox's timeline (the agent's own steps: firewall wait, first status
    /// write), from `begin` to now, unless a step of that name is there already.
    /// Returns whether it was recorded.
    pub fn record_step(&self, id: &str, name: &'static str, begin: Instant) -> bool {
        self.entry(id)
            .is_ok_and(|e| e.timeline.record_once(name, begin))
    }

    /// Ids of known sandboxes.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sandboxes).keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether a sandbox with this id is known.
    pub fn contains(&self, id: &str) -> bool {
        lock(&self.sandboxes).contains_key(id)
    }

    /// The spec a sandbox was created with.
    pub fn spec(&self, id: &str) -> Result<SandboxSpec> {
        Ok(lock(&self.entry(id)?.record).spec.clone())
    }

    /// Names of the containers that exist in a sandbox (created, running or exited).
    pub fn containers(&self, id: &str) -> Result<Vec<String>> {
        Ok(lock(&self.entry(id)?.record)
            .containers
            .iter()
            .map(|c| c.name.clone())
            .collect())
    }

    /// The pids of a sandbox's shims (one per container that has one), for measurements.
    pub fn shim_pids(&self, id: &str) -> Vec<i32> {
        self.entry(id)
            .map(|e| {
                lock(&e.record)
                    .containers
                    .iter()
                    .filter_map(|c| c.shim_pid)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pod IP of a sandbox, if networked.
    pub fn pod_ip(&self, id: &str) -> Result<Option<Ipv4Addr>> {
        Ok(lock(&self.entry(id)?.record)
            .attachment
            .as_ref()
            .map(|a| a.ip))
    }

    /// The pod IP of a sandbox once its network is attached (waits for an attachment in
    /// flight). If the attachment failed, the sandbox is removed and the error returned.
    pub async fn wait_pod_ip(&self, id: &str) -> Result<Option<Ipv4Addr>> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        if let Err(e) = self.join_network(&entry).await {
            self.drop_if_network_failed(&entry).await;
            return Err(e);
        }
        Ok(lock(&entry.record).attachment.as_ref().map(|a| a.ip))
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

    /// Create a sandbox for a Pod (see [`SandboxSpec::from_pod`] for the fields honoured).
    pub async fn create_pod(&self, pod: &k8s_openapi::api::core::v1::Pod) -> Result<SandboxHandle> {
        self.create(SandboxSpec::from_pod(pod)?).await
    }

    /// Create a sandbox with its regular containers (created, not started). Init containers
    /// are left to the caller ([`SandboxEngine::create_container`]).
    pub async fn create(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, Some(false)).await
    }

    /// Create and start a sandbox's regular containers with one runtime call each
    /// (`run --detach`): the fast path when nothing has to happen between create and start.
    pub async fn run(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, Some(true)).await
    }

    /// Make the Pod-level part of a sandbox only (directory, network namespace and CNI, the
    /// network hook, `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, volume directories);
    /// containers are added with [`SandboxEngine::create_container`]. With a pod network
    /// (runc, crun) the namespace, CNI ADD and the hook are still running when this returns
    /// (the handle has no pod IP yet): the first container's create overlaps them and its start
    /// waits for them; if they fail, that container fails and the sandbox is removed.
    pub async fn prepare(&self, spec: SandboxSpec) -> Result<SandboxHandle> {
        self.create_inner(spec, None).await
    }

    fn check_spec(&self, spec: &SandboxSpec) -> Result<()> {
        spec.validate()?;
        let who = spec.display_name();
        for c in spec.all_containers() {
            if c.security.privileged {
                return Err(NodeError::Unsupported {
                    sandbox: who,
                    field: c.field("securityContext.privileged"),
                    reason: "privileged sandboxes are refused on this node".into(),
                });
            }
            for v in &c.volumes {
                if let VolumeSource::HostPath { path } = &v.source {
                    if !self.config.allow_host_path {
                        return Err(NodeError::Unsupported {
                            sandbox: who,
                            field: format!("spec.volumes[{}].hostPath", v.name),
                            reason: format!(
                                "hostPath {path:?} is refused: this node does not allow host directories; use a persistentVolumeClaim or emptyDir"
                            ),
                        });
                    }
                    if !Path::new(path).is_absolute() {
                        return Err(NodeError::InvalidSpec {
                            sandbox: who,
                            field: format!("spec.volumes[{}].hostPath.path", v.name),
                            reason: "must be absolute".into(),
                        });
                    }
                }
            }
        }
        if !spec.host_ports.is_empty() && self.cni.is_none() {
            return Err(NodeError::Unsupported {
                sandbox: who,
                field: "spec.containers[].ports[].hostPort".into(),
                reason: "this node has no pod network to map host ports to".into(),
            });
        }
        Ok(())
    }

    /// `start`: `None` prepares only; `Some(s)` also creates the regular containers, starting
    /// them when `s`.
    async fn create_inner(&self, spec: SandboxSpec, start: Option<bool>) -> Result<SandboxHandle> {
        self.check_spec(&spec)?;
        let handler = self.resolve_handler(&spec)?;
        let paths = self.paths(&spec.id);
        {
            let map = lock(&self.sandboxes);
            if map.contains_key(&spec.id) || paths.dir.exists() {
                return Err(NodeError::AlreadyExists(spec.id.clone()));
            }
        }
        let timeline = Timeline::new();
        // Resolve the images first: a pull failure leaves nothing behind.
        let mut images = Vec::new();
        if start.is_some() {
            let t = Instant::now();
            for c in spec.regular() {
                images.push(self.images.ensure(&c.image, c.pull_policy).await?.image);
            }
            timeline.record("image", t);
        }
        let rec = Record {
            handler,
            netns: self.netns_path(&spec.id),
            attachment: None,
            containers: Vec::new(),
            prepared: false,
            image: None,
            lowers: Vec::new(),
            cgroup_path: None,
            shim_pid: None,
            container_pid: None,
            started: false,
            paused: false,
            spec,
        };
        // Reserve the id.
        let entry = Arc::new(Entry::new(rec.clone(), timeline, 0));
        {
            let mut map = lock(&self.sandboxes);
            if map.contains_key(&rec.spec.id) {
                return Err(NodeError::AlreadyExists(rec.spec.id.clone()));
            }
            map.insert(rec.spec.id.clone(), entry.clone());
        }
        let _op = entry.op.lock().await;
        let id = rec.spec.id.clone();
        let result = async {
            let mut rec = self.prepare_steps(&paths, rec).await?;
            if let Some(start) = start {
                let names: Vec<String> = rec.spec.regular().map(|c| c.name.clone()).collect();
                for (name, image) in names.iter().zip(images) {
                    rec = self
                        .create_container_steps(&entry, rec, name, image, start)
                        .await?;
                }
                // `create` returns with the network in place (the handle has the pod IP);
                // `prepare` leaves it to the first container start.
                self.join_network(&entry).await?;
                rec = lock(&entry.record).clone();
            }
            Ok::<Record, NodeError>(rec)
        }
        .await;
        match result {
            Ok(rec) => Ok(SandboxHandle {
                id: rec.spec.id.clone(),
                handler,
                pod_ip: rec.attachment.as_ref().map(|a| a.ip),
                image: rec.containers.first().map(|c| c.image.clone()),
            }),
            Err(e) => {
                let _ = self.join_network(&entry).await;
                let rec = lock(&entry.record).clone();
                if let Err(ce) = self.teardown(&paths, &rec).await {
                    tracing::warn!(target: "node::engine", sandbox = %id, error = %ce, "cleanup after failed create");
                }
                lock(&self.sandboxes).remove(&id);
                Err(e)
            }
        }
    }

    /// The Pod-level steps. On error the caller tears down what the entry's record says.
    async fn prepare_steps(&self, paths: &Paths, mut rec: Record) -> Result<Record> {
        let entry = self.entry(&rec.spec.id)?;
        let tl = entry.timeline.clone();
        let t = Instant::now();
        fs_err::create_dir_all(paths.etc())?;
        self.commit(&entry, &rec)?;
        tl.record("record", t);
        let t = Instant::now();

        let mut shared: Vec<(String, PathBuf)> = Vec::new();
        for c in rec.spec.all_containers() {
            for v in &c.volumes {
                let host_dir = self.host_dir(paths, &rec.spec, v);
                if !matches!(v.source, VolumeSource::HostPath { .. }) {
                    fs_err::create_dir_all(&host_dir)?;
                    // ConfigMap, Secret and downward API files live in memory only, as kubelet
                    // keeps secret and projected volumes (each container mounting the volume
                    // shares the one filesystem).
                    if v.source == VolumeSource::Projected && !self.host.is_mounted(&host_dir) {
                        self.host.mount_tmpfs(&host_dir, PROJECTED_VOLUME_BYTES)?;
                    }
                } else if !host_dir.exists() {
                    return Err(NodeError::InvalidSpec {
                        sandbox: rec.spec.display_name(),
                        field: format!("spec.volumes[{}].hostPath", v.name),
                        reason: format!("hostPath {} does not exist", host_dir.display()),
                    });
                }
                shared.push((v.name.clone(), host_dir));
            }
        }

        tl.record("volumes", t);
        if let Some(cni) = &self.cni {
            // The network namespace, CNI ADD and the network hook run in the background while
            // the containers' rootfs and bundles are made and the runtime creates them: the
            // runtime's create waits for the namespace (`wait_netns`), every container start
            // for the rest (`join_network`). runsc's sandbox takes the namespace as it is at
            // create, so it waits here.
            let (ready, netns_ready) = tokio::sync::watch::channel(None);
            *lock(&entry.netns_ready) = Some(netns_ready);
            let task = tokio::spawn(attach(
                Arc::clone(&self.host),
                cni.clone(),
                self.hook(),
                rec.spec.clone(),
                rec.netns.clone(),
                tl.clone(),
                ready,
            ));
            *entry.net.lock().await = Some(task);
            if rec.handler == HandlerKind::Runsc {
                self.join_network(&entry).await?;
                rec = lock(&entry.record).clone();
            }
        } else {
            let t = Instant::now();
            self.host.create_netns(&rec.netns)?;
            tl.record("netns", t);
        }
        let t = Instant::now();
        fs_err::write(paths.etc().join("hosts"), hosts_file(&rec))?;
        let hostname = rec
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| rec.spec.name.clone());
        fs_err::write(paths.etc().join("hostname"), format!("{hostname}\n"))?;
        if let Some(dns) = &rec.spec.dns {
            fs_err::write(paths.etc().join("resolv.conf"), resolv_conf(dns))?;
        }
        rec.prepared = true;
        self.commit(&entry, &rec)?;
        tl.record("etc files", t);
        Ok(rec)
    }

    /// Create (and with `start`, start) the container `name` of a prepared sandbox: ensure its
    /// image (pull policy), overlay rootfs, bundle, runtime create. A container of that name
    /// that exists must be removed first ([`SandboxEngine::remove_container`]).
    pub async fn create_container(&self, id: &str, name: &str, start: bool) -> Result<()> {
        let spec = self.spec(id)?;
        let c = spec.container(name).ok_or_else(|| NodeError::InvalidSpec {
            sandbox: spec.display_name(),
            field: "containers".into(),
            reason: format!("no container named {name:?}"),
        })?;
        let image = self.images.ensure(&c.image, c.pull_policy).await?.image;
        self.create_container_from(id, name, None, image, start)
            .await
    }

    /// [`SandboxEngine::create_container`] with the image already resolved (the caller pulled
    /// it, e.g. to report progress) and, when given, the container's resolved environment,
    /// command and args in place of the spec's (the node agent resolves them from the Pod at
    /// every create: [`crate::env`]); the record keeps what the container was made with.
    pub async fn create_container_from(
        &self,
        id: &str,
        name: &str,
        process: Option<crate::env::Process>,
        image: Image,
        start: bool,
    ) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let mut rec = lock(&entry.record).clone();
        if let Some(p) = process
            && let Some(c) = rec.spec.container_mut(name)
        {
            c.env = p.env;
            c.command = p.command;
            c.args = p.args;
        }
        if rec.container(name).is_some() {
            return Err(NodeError::AlreadyExists(format!("{id}/{name}")));
        }
        if !rec.prepared {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "create a container",
                state: "not prepared".into(),
            });
        }
        match self
            .create_container_steps(&entry, rec, name, image, start)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let rec = lock(&entry.record).clone();
                if let Some(c) = rec.container(name).cloned() {
                    if let Err(ce) = self.teardown_container(rec.handler, &c, false).await {
                        tracing::warn!(target: "node::engine", sandbox = %id, container = %name, error = %ce, "cleanup after failed container create");
                    }
                    let mut rec = rec;
                    rec.containers.retain(|x| x.name != name);
                    self.commit(&entry, &rec)?;
                }
                self.drop_if_network_failed(&entry).await;
                Err(e)
            }
        }
    }

    /// The container steps; the record (with the container in it) is committed as it goes, so
    /// on error the caller can tear down what it says.
    async fn create_container_steps(
        &self,
        entry: &Entry,
        mut rec: Record,
        name: &str,
        image: Image,
        start: bool,
    ) -> Result<Record> {
        let tl = &entry.timeline;
        let t = Instant::now();
        let paths = self.paths(&rec.spec.id);
        let cp = paths.container(&rec.spec, name);
        let (runtime_id, cgroup_path) = self.container_ids(&rec.spec, name);
        let lowers = self.images.lower_dirs(&image);
        rec.containers.push(ContainerRecord {
            name: name.to_string(),
            runtime_id: runtime_id.clone(),
            dir: cp.dir.clone(),
            cgroup_path: cgroup_path.clone(),
            image: image.clone(),
            lowers,
            shim_pid: None,
            container_pid: None,
            started: false,
            paused: false,
        });
        for d in [cp.rootfs(), cp.upper(), cp.work()] {
            fs_err::create_dir_all(d)?;
        }
        for f in [cp.exit(), cp.exit_tmp(), cp.pid()] {
            let _ = fs_err::remove_file(f);
        }
        // A container made again (a restart) starts a new log; the last one stays as the
        // previous instance's (`kubectl logs --previous`).
        match fs_err::rename(cp.log(), cp.previous_log()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.commit(entry, &rec)?;
        let c = rec
            .spec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{}/{name}", rec.spec.id)))?;
        let cr = rec
            .container(name)
            .cloned()
            .unwrap_or_else(|| unreachable!());
        self.host
            .mount_overlay(&cr.lowers, &cp.upper(), &cp.work(), &cp.rootfs())?;
        tl.record("rootfs", t);
        let t = Instant::now();

        let mut volumes: Vec<(VolumeSpec, PathBuf)> = Vec::new();
        for v in &c.volumes {
            let host_dir = self.host_dir(&paths, &rec.spec, v);
            volumes.push((v.clone(), host_dir));
        }
        let termination_log = cp.termination_log();
        if c.termination_message_path.is_some() {
            use std::os::unix::fs::PermissionsExt;
            fs_err::write(&termination_log, b"")?;
            fs_err::set_permissions(&termination_log, std::fs::Permissions::from_mode(0o666))?;
        }
        let resolv = paths.etc().join("resolv.conf");
        let oci = bundle::build(&BundleInputs {
            spec: &rec.spec,
            container: &c,
            image: &cr.image,
            rootfs: &cp.rootfs(),
            handler: rec.handler,
            netns: &rec.netns,
            cgroup_path: &cr.cgroup_path,
            volumes: &volumes,
            hosts_file: &paths.etc().join("hosts"),
            hostname_file: &paths.etc().join("hostname"),
            resolv_file: rec.spec.dns.is_some().then_some(resolv.as_path()),
            termination_log: c
                .termination_message_path
                .is_some()
                .then_some(termination_log.as_path()),
            default_pids_limit: self.config.default_pids_limit,
            sandboxd_kit: self.config.sandboxd_kit.as_deref(),
        })?;
        bundle::write(&oci, &cp.bundle())?;
        tl.record("bundle", t);

        let t = Instant::now();
        let rt = self.runtimes[&rec.handler].clone();
        // While the network is still being attached, create now and start once it is there;
        // otherwise create and start in one runtime call.
        let split = start && entry.net.lock().await.is_some();
        let one_call = start && !split;
        self.wait_netns(entry).await?;
        let started = spawn_create(&rt, &runtime_id, &cp, one_call).await?;
        tl.record(
            if one_call {
                "runtime run"
            } else {
                "runtime create"
            },
            t,
        );
        let t = Instant::now();
        if let Some(x) = rec.container_mut(name) {
            x.shim_pid = Some(started.shim_pid);
        }
        if started.create_exit != 0 {
            self.commit(entry, &rec)?;
            let log = fs_err::read_to_string(cp.log()).unwrap_or_default();
            return Err(NodeError::Runtime {
                handler: rec.handler.to_string(),
                op: if one_call { "run" } else { "create" }.into(),
                id: runtime_id,
                status: started.create_exit,
                message: crate::runtime::clean_message(&log),
            });
        }
        let pid = fs_err::read_to_string(cp.pid())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(x) = rec.container_mut(name) {
            x.container_pid = pid;
            x.started = one_call;
        }
        self.commit(entry, &rec)?;
        tl.record("records", t);
        if split {
            self.join_network(entry).await?;
            rec = lock(&entry.record).clone();
            let t = Instant::now();
            rt.start(&runtime_id).await?;
            tl.record("runtime start", t);
            if let Some(x) = rec.container_mut(name) {
                x.started = true;
            }
            self.commit(entry, &rec)?;
        }
        Ok(rec)
    }

    /// Wait until the sandbox's network namespace exists (the runtime joins it at create). If it
    /// could not be made, the attachment's error.
    async fn wait_netns(&self, entry: &Entry) -> Result<()> {
        let rx = lock(&entry.netns_ready).clone();
        let Some(mut rx) = rx else {
            return Ok(());
        };
        let made = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| *v == Some(true))
            .unwrap_or(false);
        if made {
            return Ok(());
        }
        self.join_network(entry).await?;
        entry
            .net_failed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Err(NodeError::Config(format!(
            "sandbox {}: its network namespace was not made",
            lock(&entry.record).spec.id
        )))
    }

    /// Wait for the sandbox's background network attachment, if one is in flight, and record
    /// what it made (the attachment in the record, the pod IP in `/etc/hosts`: the file is
    /// rewritten in place, so containers created meanwhile see it through their bind mount).
    /// An error means the sandbox has no network and must not run: the caller removes it.
    async fn join_network(&self, entry: &Entry) -> Result<()> {
        let mut slot = entry.net.lock().await;
        let Some(task) = slot.as_mut() else {
            return Ok(());
        };
        let out = task.await.unwrap_or_else(|e| NetOutcome {
            attachment: None,
            result: Err(NodeError::Config(format!(
                "the network attachment task failed: {e}"
            ))),
        });
        *slot = None;
        if out.result.is_err() {
            entry
                .net_failed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if let Some(att) = out.attachment {
            let mut rec = lock(&entry.record).clone();
            rec.attachment = Some(att);
            self.commit(entry, &rec)?;
            fs_err::write(
                self.paths(&rec.spec.id).etc().join("hosts"),
                hosts_file(&rec),
            )?;
        }
        out.result
    }

    /// After a failed container create or start: when the sandbox's network failed, remove
    /// the whole sandbox (it cannot run; a new one is made on the next try).
    async fn drop_if_network_failed(&self, entry: &Entry) {
        if !entry.net_failed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let rec = lock(&entry.record).clone();
        let id = rec.spec.id.clone();
        if let Err(e) = self.teardown(&self.paths(&id), &rec).await {
            tracing::warn!(target: "node::engine", sandbox = %id, error = %e, "removing a sandbox whose network failed");
        }
        lock(&self.sandboxes).remove(&id);
    }

    fn main_name(&self, id: &str) -> Result<String> {
        Ok(lock(&self.entry(id)?.record).spec.main.name.clone())
    }

    /// Start the sandbox's created regular containers.
    pub async fn start(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let regular: Vec<String> = rec.spec.regular().map(|c| c.name.clone()).collect();
        let todo: Vec<&ContainerRecord> = rec
            .containers
            .iter()
            .filter(|c| regular.contains(&c.name) && !c.started)
            .collect();
        if todo.is_empty() {
            return Err(NodeError::InvalidState {
                sandbox: id.into(),
                op: "start",
                state: "already started".into(),
            });
        }
        let names: Vec<String> = todo.iter().map(|c| c.name.clone()).collect();
        drop(todo);
        for n in names {
            self.start_locked(&entry, &n).await?;
        }
        Ok(())
    }

    /// Start one created container.
    pub async fn start_container(&self, id: &str, name: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        self.start_locked(&entry, name).await
    }

    async fn start_locked(&self, entry: &Entry, name: &str) -> Result<()> {
        let rec = lock(&entry.record).clone();
        let id = rec.spec.id.clone();
        let c = rec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        let phase = if c.started {
            Phase::Running
        } else {
            Phase::Created
        };
        lifecycle::transition(phase, Op::Start)
            .map_err(|e| lifecycle::refused(format!("{id}/{name}"), e))?;
        if let Err(e) = self.join_network(entry).await {
            self.drop_if_network_failed(entry).await;
            return Err(e);
        }
        let mut rec = lock(&entry.record).clone();
        let t = Instant::now();
        self.runtimes[&rec.handler].start(&c.runtime_id).await?;
        entry.timeline.record("runtime start", t);
        if let Some(x) = rec.container_mut(name) {
            x.started = true;
        }
        self.commit(entry, &rec)
    }

    /// State of the main container (the sandbox's state for single-container use).
    pub async fn state(&self, id: &str) -> Result<SandboxState> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record).clone();
        let main =
            rec.container(&rec.spec.main.name)
                .cloned()
                .ok_or_else(|| NodeError::InvalidState {
                    sandbox: id.into(),
                    op: "read the state",
                    state: "the main container does not exist".into(),
                })?;
        let cs = self.state_of(&rec, &main).await?;
        Ok(SandboxState {
            id: id.into(),
            phase: cs.phase,
            exit_code: cs.exit_code,
            pid: cs.pid,
            pod_ip: rec.attachment.as_ref().map(|a| a.ip),
            handler: rec.handler,
        })
    }

    /// State of one container.
    pub async fn container_state(&self, id: &str, name: &str) -> Result<ContainerState> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record).clone();
        let c = rec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        self.state_of(&rec, &c).await
    }

    /// A cheap look at a container without running the runtime: `Some(code)` once its process
    /// exited (code `None` if unknown), `None` while it runs or was never started.
    pub fn container_exit(&self, id: &str, name: &str) -> Result<Option<Option<i32>>> {
        let entry = self.entry(id)?;
        let rec = lock(&entry.record);
        let c = rec
            .container(name)
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        let cp = CPaths { dir: c.dir.clone() };
        if let Some(code) = read_exit(&cp.exit()) {
            return Ok(Some(Some(code)));
        }
        if !c.started || pid_alive(c.container_pid) {
            return Ok(None);
        }
        // The process is gone; the shim writes the code right after reaping it.
        if pid_alive(c.shim_pid) {
            return Ok(None);
        }
        Ok(Some(read_exit(&cp.exit())))
    }

    /// The termination message a container wrote (at most 4096 bytes), if any.
    pub fn termination_message(&self, id: &str, name: &str) -> Option<String> {
        let entry = self.entry(id).ok()?;
        let dir = lock(&entry.record).container(name)?.dir.clone();
        let data = fs_err::read(CPaths { dir }.termination_log()).ok()?;
        let data = &data[..data.len().min(4096)];
        let s = String::from_utf8_lossy(data).trim_end().to_string();
        (!s.is_empty()).then_some(s)
    }

    async fn state_of(&self, rec: &Record, c: &ContainerRecord) -> Result<ContainerState> {
        let cp = CPaths { dir: c.dir.clone() };
        let mut st = ContainerState {
            name: c.name.clone(),
            phase: Phase::Created,
            exit_code: None,
            pid: c.container_pid,
        };
        if let Some(code) = read_exit(&cp.exit()) {
            st.phase = Phase::Exited;
            st.exit_code = Some(code);
            return Ok(st);
        }
        let rt = &self.runtimes[&rec.handler];
        st.phase = match rt.state(&c.runtime_id).await? {
            None => Phase::Exited,
            Some(s) => s.status.into(),
        };
        if st.phase == Phase::Exited {
            // The shim writes the code right after reaping; give it a moment.
            for _ in 0..200 {
                if let Some(code) = read_exit(&cp.exit()) {
                    st.exit_code = Some(code);
                    break;
                }
                if !pid_alive(c.shim_pid) {
                    st.exit_code = read_exit(&cp.exit());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(st)
    }

    /// Wait until the main container's process exits; returns its exit code (`None` if
    /// unknown).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<i32>> {
        let main = self.main_name(id)?;
        self.wait_container(id, &main, timeout).await
    }

    /// Wait until a container's process exits; returns its exit code (`None` if unknown).
    pub async fn wait_container(
        &self,
        id: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let c = lock(&entry.record)
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        let cp = CPaths { dir: c.dir.clone() };
        let deadline = Instant::now() + timeout;
        if let Some(pid) = c.container_pid
            && !pid_exited(pid, timeout).await?
        {
            return Err(NodeError::Timeout {
                sandbox: format!("{id}/{name}"),
                what: "the process to exit",
                secs: timeout.as_secs_f64(),
            });
        }
        loop {
            if let Some(code) = read_exit(&cp.exit()) {
                return Ok(Some(code));
            }
            if !pid_alive(c.shim_pid) {
                return Ok(read_exit(&cp.exit()));
            }
            if Instant::now() > deadline {
                return Err(NodeError::Timeout {
                    sandbox: format!("{id}/{name}"),
                    what: "the exit code",
                    secs: timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Run `argv` in a running container through the runtime's `exec` (the container's user,
    /// environment and working directory), bounded by `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let entry = self.entry(id)?;
        let (handler, rid) = {
            let rec = lock(&entry.record);
            let c = rec
                .container(name)
                .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
            (rec.handler, c.runtime_id.clone())
        };
        let out = self.runtimes[&handler].exec(&rid, argv, timeout).await?;
        Ok(ExecOutput {
            code: out.code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Freeze all processes of the sandbox (every running container).
    pub async fn pause(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let mut rec = lock(&entry.record).clone();
        let main = rec
            .container(&rec.spec.main.name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(id.into()))?;
        let st = self.state_of(&rec, &main).await?;
        lifecycle::transition(st.phase, Op::Pause).map_err(|e| lifecycle::refused(id, e))?;
        let rt = self.runtimes[&rec.handler].clone();
        let all = rec.containers.clone();
        let mut paused = Vec::new();
        for c in &all {
            if lifecycle::can(self.state_of(&rec, c).await?.phase, Op::Pause) {
                // runc gives up freezing a cgroup whose tasks keep changing ("unable to
                // freeze", seen under load) and thaws it again; a later attempt holds.
                let mut attempt = 0;
                while let Err(e) = rt.pause(&c.runtime_id).await {
                    attempt += 1;
                    if attempt > 3 || !matches!(e, NodeError::Runtime { .. }) {
                        return Err(e);
                    }
                    tracing::debug!(sandbox = %id, container = %c.name, attempt, error = %e, "pause failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                paused.push(c);
                if let Some(x) = rec.container_mut(&c.name) {
                    x.paused = true;
                }
            }
        }
        self.commit(&entry, &rec)?;
        // The runtime returns once the freeze is requested; a v1 freezer passes through
        // FREEZING until every task stopped. Pausing means frozen, so wait for it.
        let deadline = Instant::now() + PAUSE_SETTLE;
        for c in paused {
            while self.state_of(&rec, c).await?.phase == Phase::Running {
                if Instant::now() >= deadline {
                    return Err(NodeError::Timeout {
                        sandbox: id.into(),
                        what: "the cgroup freezer to stop every process",
                        secs: PAUSE_SETTLE.as_secs_f64(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// Thaw a paused sandbox.
    pub async fn resume(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let mut rec = lock(&entry.record).clone();
        let main = rec
            .container(&rec.spec.main.name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(id.into()))?;
        let st = self.state_of(&rec, &main).await?;
        lifecycle::transition(st.phase, Op::Resume).map_err(|e| lifecycle::refused(id, e))?;
        let rt = self.runtimes[&rec.handler].clone();
        let all = rec.containers.clone();
        for c in &all {
            if lifecycle::can(self.state_of(&rec, c).await?.phase, Op::Resume) {
                rt.resume(&c.runtime_id).await?;
                if let Some(x) = rec.container_mut(&c.name) {
                    x.paused = false;
                }
            }
        }
        self.commit(&entry, &rec)
    }

    /// Stop every container: SIGTERM, then SIGKILL after `grace` (regular containers first,
    /// then sidecars and init containers in reverse order, as kubelet does). Returns the main
    /// container's exit code.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let regular: Vec<String> = rec.spec.regular().map(|c| c.name.clone()).collect();
        let mut order: Vec<&ContainerRecord> = rec
            .containers
            .iter()
            .filter(|c| regular.contains(&c.name))
            .collect();
        order.extend(
            rec.containers
                .iter()
                .rev()
                .filter(|c| !regular.contains(&c.name)),
        );
        let deadline = Instant::now() + grace;
        let mut main_code = None;
        for c in order {
            let left = deadline.saturating_duration_since(Instant::now());
            let code = self.stop_rec(&rec, c, left).await?;
            if c.name == rec.spec.main.name {
                main_code = code;
            }
        }
        Ok(main_code)
    }

    /// Stop one container: SIGTERM, then SIGKILL after `grace`. Returns its exit code.
    pub async fn stop_container(
        &self,
        id: &str,
        name: &str,
        grace: Duration,
    ) -> Result<Option<i32>> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let rec = lock(&entry.record).clone();
        let c = rec
            .container(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("{id}/{name}")))?;
        self.stop_rec(&rec, &c, grace).await
    }

    async fn stop_rec(
        &self,
        rec: &Record,
        c: &ContainerRecord,
        grace: Duration,
    ) -> Result<Option<i32>> {
        let rid = &c.runtime_id;
        let rt = &self.runtimes[&rec.handler];
        let st = self.state_of(rec, c).await?;
        let plan = lifecycle::transition(
            st.phase,
            Op::Stop {
                graceful: !grace.is_zero(),
            },
        )
        .map_err(|e| lifecycle::refused(rid.as_str(), e))?;
        if plan.effects.is_empty() {
            return Ok(st.exit_code);
        }
        for effect in plan.effects {
            match effect {
                Effect::Thaw => rt.resume(rid).await?,
                Effect::Delete => rt.delete(rid).await?,
                Effect::Terminate => {
                    rt.kill(rid, "TERM").await?;
                    if let Some(pid) = c.container_pid
                        && pid_exited(pid, grace).await?
                    {
                        return self.wait_exit(c, Duration::from_secs(10)).await;
                    }
                }
                Effect::Kill => rt.kill(rid, "KILL").await?,
                Effect::Start | Effect::Freeze => {}
            }
        }
        self.wait_exit(c, Duration::from_secs(10)).await
    }

    async fn wait_exit(&self, c: &ContainerRecord, timeout: Duration) -> Result<Option<i32>> {
        let cp = CPaths { dir: c.dir.clone() };
        if let Some(pid) = c.container_pid
            && !pid_exited(pid, timeout).await?
        {
            return Err(NodeError::Timeout {
                sandbox: c.runtime_id.clone(),
                what: "the process to exit after SIGKILL",
                secs: timeout.as_secs_f64(),
            });
        }
        for _ in 0..500 {
            if let Some(code) = read_exit(&cp.exit()) {
                return Ok(Some(code));
            }
            if !pid_alive(c.shim_pid) {
                return Ok(read_exit(&cp.exit()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(None)
    }

    /// Remove one container (killing it if needed): runtime delete, rootfs unmount, its
    /// writable layer and bundle; its log stays (a new container of the same name keeps it as
    /// the previous instance's).
    pub async fn remove_container(&self, id: &str, name: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        let mut rec = lock(&entry.record).clone();
        let Some(c) = rec.container(name).cloned() else {
            return Ok(());
        };
        self.teardown_container(rec.handler, &c, false).await?;
        rec.containers.retain(|x| x.name != name);
        self.commit(&entry, &rec)
    }

    /// Remove the sandbox: kill it if needed and delete its containers, mounts, network,
    /// cgroups and directory. PVC directories stay.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let entry = self.entry(id)?;
        let _op = entry.op.lock().await;
        // A network attachment still in flight finishes first, so that DEL releases it.
        let _ = self.join_network(&entry).await;
        let rec = lock(&entry.record).clone();
        let paths = self.paths(id);
        self.teardown(&paths, &rec).await?;
        lock(&self.sandboxes).remove(id);
        Ok(())
    }

    /// Undo one container: kill, wait, runtime delete, wait for the shim, unmount, remove its
    /// cgroup and files (with `all`, its log too).
    async fn teardown_container(
        &self,
        handler: HandlerKind,
        c: &ContainerRecord,
        all: bool,
    ) -> Result<()> {
        self.teardown_container_with(handler, c).await?;
        let cp = CPaths { dir: c.dir.clone() };
        // One read of the mount table: its cost grows with the host's mounts.
        if !self.host.mounts_under(&cp.bundle()).is_empty() {
            return Err(NodeError::Config(format!(
                "container {}: mounts still present under {}",
                c.runtime_id,
                cp.bundle().display()
            )));
        }
        for d in [cp.bundle(), cp.upper(), cp.work()] {
            match fs_err::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        for f in [cp.pid(), cp.exit(), cp.exit_tmp(), cp.termination_log()] {
            let _ = fs_err::remove_file(f);
        }
        if all {
            let _ = fs_err::remove_file(cp.log());
            let _ = fs_err::remove_file(cp.previous_log());
        }
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
        for c in rec.containers.iter().rev() {
            note(self.teardown_container_with(rec.handler, c).await);
        }
        if let Some(cni) = &self.cni
            && (rec.attachment.is_some() || rec.netns.exists())
        {
            note(
                cni.del(
                    id,
                    &rec.netns,
                    rec.attachment.as_ref().map(|a| &a.result),
                    &rec.spec.host_ports,
                )
                .await,
            );
            if let Some(hook) = self.hook() {
                hook.detached(id).await;
            }
        }
        note(self.host.remove_netns(&rec.netns));
        // The memory-backed volumes (see `prepare_steps`).
        for m in self
            .host
            .mounts_under(&paths.dir.join("volumes"))
            .iter()
            .rev()
        {
            note(self.host.unmount(m));
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if paths.dir.exists() {
            let leftover = self.host.mounts_under(&paths.dir);
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

    /// [`SandboxEngine::teardown_container`] for a sandbox that may no longer be in the map.
    async fn teardown_container_with(
        &self,
        handler: HandlerKind,
        c: &ContainerRecord,
    ) -> Result<()> {
        let rid = &c.runtime_id;
        let mut first_err: Option<NodeError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::warn!(target: "node::engine", container = %rid, error = %e, "teardown step failed");
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        };
        if let Some(rt) = self.runtimes.get(&handler)
            && let Some(st) = rt.state(rid).await.ok().flatten()
            && let Ok(plan) = lifecycle::transition(st.status.into(), Op::Remove)
        {
            for effect in plan.effects {
                match effect {
                    Effect::Thaw => note(rt.resume(rid).await),
                    Effect::Kill => {
                        note(rt.kill(rid, "KILL").await);
                        if let Some(pid) = c.container_pid {
                            note(pid_exited(pid, Duration::from_secs(10)).await.map(drop));
                        }
                    }
                    Effect::Delete => note(rt.delete(rid).await),
                    Effect::Start | Effect::Freeze | Effect::Terminate => {}
                }
            }
        }
        if let Some(shim) = c.shim_pid {
            note(pid_exited(shim, Duration::from_secs(10)).await.map(drop));
        }
        let cp = CPaths { dir: c.dir.clone() };
        note(self.host.unmount(&cp.rootfs()));
        note(self.host.remove_cgroup(&c.cgroup_path));
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Find sandboxes left by a previous engine (after a crash or restart): re-adopt those
    /// whose network namespace is there and whose every container the runtime still knows
    /// with its rootfs mounted; clean up the rest.
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
            let Some((generation, mut rec)) = crate::record_file::read::<Record>(&paths.dir) else {
                // No record: a create that never got far. Remove what can be removed.
                for m in self.host.mounts_under(&paths.dir).iter().rev() {
                    self.host.unmount(m)?;
                }
                self.host.remove_netns(&self.netns_path(&id))?;
                if self.host.mounts_under(&paths.dir).is_empty() {
                    fs_err::remove_dir_all(&paths.dir)?;
                }
                report.cleaned.push(id);
                continue;
            };
            rec.migrate(&paths.dir);
            // With a pod network, a sandbox whose attachment never completed is not intact.
            let mut intact = rec.prepared
                && rec.netns.exists()
                && (self.cni.is_none() || rec.attachment.is_some());
            if let Some(rt) = self.runtimes.get(&rec.handler) {
                for c in &rec.containers {
                    let known = rt.state(&c.runtime_id).await.ok().flatten().is_some();
                    let cp = CPaths { dir: c.dir.clone() };
                    intact &=
                        known && self.host.is_mounted(&cp.rootfs()) && c.container_pid.is_some();
                }
            } else {
                intact = false;
            }
            if intact {
                match self.save_record(&rec, generation + 1) {
                    Ok(()) => crate::record_file::remove_legacy(&paths.dir),
                    Err(e) => {
                        tracing::warn!(target: "node::engine", sandbox = %id, error = %e, "rewriting a migrated record failed");
                    }
                }
                lock(&self.sandboxes).insert(
                    id.clone(),
                    Arc::new(Entry::new(rec, Timeline::new(), generation + 1)),
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
    paths: &CPaths,
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
        hide_cgroup2: rt.hides_cgroup2(),
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
async fn probe(rt: &OciRuntime, config: &EngineConfig, host: &dyn Host) -> HandlerStatus {
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
        host.create_netns(&netns)?;
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
        let paths = CPaths { dir: dir.clone() };
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
    let _ = host.remove_netns(&netns);
    let _ = host.remove_cgroup(&format!("/{}/{id}", config.cgroup_parent));
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
