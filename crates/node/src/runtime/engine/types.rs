//! What the sandbox engine's API takes and returns.

use super::*;

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
    /// The capabilities a container has before its own list (hardened: without `NET_RAW`).
    pub capability_defaults: crate::bundle::CapabilityDefaults,
    /// gVisor runtime monitoring: Falco's socket, the event logs' size.
    pub runtime_monitoring: crate::monitor::MonitoringConfig,
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
            capability_defaults: Default::default(),
            runtime_monitoring: Default::default(),
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
