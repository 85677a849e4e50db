//! The command-line interface definition (clap derive structs only; behaviour lives in
//! `commands/`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod bench;
mod controller;
mod image;
mod sandbox;
mod snapshot;
pub(crate) use bench::{BenchArgs, DurabilityChoice, Scenario};
pub(crate) use controller::ControllerArgs;
pub(crate) use image::{ImageArgs, ImageCommand};
pub(crate) use sandbox::{
    ApplyArgs, ClaimArgs, ConnectArgs, CpArgs, DeleteArgs, ExecArgs, GetArgs, Kind, LogsArgs,
    LsArgs, Output, TargetArgs,
};
pub(crate) use snapshot::{
    ForkArgs, RestoreArgs, SnapshotArgs, SnapshotCommand, SnapshotCreateArgs, SnapshotDeleteArgs,
    SnapshotListArgs,
};

/// Isolated, stateful sandboxes for AI agents, managed with the agent-sandbox resource model.
#[derive(Debug, Parser)]
#[command(name = "agent-sandbox", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive list.
    #[arg(
        long,
        global = true,
        env = "AGENT_SANDBOX_LOG_LEVEL",
        default_value = "info"
    )]
    pub(crate) log_level: String,
    /// Log output format (logs go to stderr).
    #[arg(long, global = true, env = "AGENT_SANDBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Also log each span (a reconcile, a request) when it closes, with its busy and idle time.
    #[arg(long, global = true, env = "AGENT_SANDBOX_LOG_SPANS", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) log_spans: bool,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run everything on this machine: API server, controllers, node agent and router.
    Up(UpArgs),
    /// Run the controllers against a Kubernetes cluster.
    Controller(ControllerArgs),
    /// Run the sandbox router against a cluster (or any API server in the kubeconfig).
    Router(RouterArgs),
    /// Run the in-sandbox runtime (files, processes, code).
    Sandboxd(agent_sandbox_sandboxd::Config),
    /// Import and list the embedded node's images.
    Image(ImageArgs),
    /// Print the CustomResourceDefinitions, or write or check them in a directory.
    Crd(CrdArgs),
    /// Validate manifests offline, as the API server would admit them.
    Validate(FileArgs),
    /// Convert manifests between v1alpha1 and v1beta1.
    Convert(ConvertArgs),
    /// Create or update the objects of manifest files (templates, pools, sandboxes, ...).
    Apply(ApplyArgs),
    /// Claim a sandbox from a warm pool and wait until it is Ready.
    Claim(ClaimArgs),
    /// List or show claims, sandboxes, templates and pools.
    Get(GetArgs),
    /// Run a command in a sandbox; exits with its exit code.
    Exec(ExecArgs),
    /// Copy files or directories to or from a sandbox (`SANDBOX:PATH`).
    Cp(CpArgs),
    /// List a directory in a sandbox.
    Ls(LsArgs),
    /// Suspend a sandbox: its Pod is deleted, its volumes and Service kept.
    Suspend(TargetArgs),
    /// Resume a suspended sandbox and wait until it is Ready.
    Resume(TargetArgs),
    /// Pause a sandbox: freeze its processes (memory kept, CPU released) and wait until the
    /// Paused condition is True.
    Pause(TargetArgs),
    /// Unpause a paused sandbox: thaw its processes and wait until the Paused condition is
    /// False.
    Unpause(TargetArgs),
    /// Snapshot a sandbox, list snapshots, delete them.
    Snapshot(SnapshotArgs),
    /// New sandboxes started from a snapshot of a sandbox (taken now, or `--snapshot`), each
    /// with its own identity, address and copied volumes.
    Fork(ForkArgs),
    /// Roll a sandbox back to a snapshot: a new Pod with the snapshot's writable layers and
    /// volume data (processes start afresh).
    Restore(RestoreArgs),
    /// Delete claims (and their sandboxes) or sandboxes.
    Delete(DeleteArgs),
    /// Print a sandbox's container log.
    Logs(LogsArgs),
    /// Serve the Model Context Protocol: tools that create sandboxes and act in them, over
    /// stdio (default) or streamable HTTP.
    Mcp(McpArgs),
    /// Run the benchmark suite against a running instance.
    Bench(BenchArgs),
    /// Print version information.
    Version,
}

#[derive(Debug, Args)]
pub(crate) struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing.
    #[arg(long, value_name = "DIR", conflicts_with = "check")]
    pub(crate) output_dir: Option<PathBuf>,
    /// Fail if the files in this directory differ from what this build generates.
    #[arg(long, value_name = "DIR")]
    pub(crate) check: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct FileArgs {
    /// Manifest files (YAML or JSON, several documents each); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    #[command(flatten)]
    pub(crate) files: FileArgs,
    /// Version to convert to.
    #[arg(long, value_enum, default_value_t = ApiVersion::V1beta1)]
    pub(crate) to: ApiVersion,
}

/// Served API versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ApiVersion {
    /// The storage version.
    V1beta1,
    /// The deprecated version.
    V1alpha1,
}

impl ApiVersion {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::V1beta1 => "v1beta1",
            Self::V1alpha1 => "v1alpha1",
        }
    }
}

/// A directory argument made absolute against the current directory: runtimes, network
/// namespaces and the kubeconfig are handed these paths, and `--data-dir data` must mean the
/// same wherever they are used.
pub(crate) fn absolute_path(s: &str) -> Result<PathBuf, String> {
    std::path::absolute(s).map_err(|e| format!("{s}: {e}"))
}

#[derive(Clone, Debug, Args)]
pub(crate) struct UpArgs {
    /// Where state lives: the API server's database, credentials, images, sandboxes, volumes.
    #[arg(
        long,
        value_parser = crate::args::absolute_path,
        env = "AGENT_SANDBOX_DATA_DIR",
        default_value = "/var/lib/agent-sandbox"
    )]
    pub(crate) data_dir: PathBuf,
    /// Volatile runtime state (runtime roots, network namespaces).
    #[arg(
        long,
        value_parser = crate::args::absolute_path,
        env = "AGENT_SANDBOX_RUN_DIR",
        default_value = "/run/agent-sandbox"
    )]
    pub(crate) run_dir: PathBuf,
    /// Loopback address of the API server (HTTPS, bearer token).
    #[arg(
        long,
        env = "AGENT_SANDBOX_API_LISTEN",
        default_value = "127.0.0.1:6443"
    )]
    pub(crate) api_listen: std::net::SocketAddr,
    /// Address of the sandbox router.
    #[arg(
        long,
        env = "AGENT_SANDBOX_ROUTER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub(crate) router_listen: std::net::SocketAddr,
    /// Address of the metrics endpoint (router and controllers).
    #[arg(
        long,
        env = "AGENT_SANDBOX_METRICS_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub(crate) metrics_listen: std::net::SocketAddr,
    /// Do not fsync API writes: an acknowledged write then survives a crash or `kill -9` of
    /// this process but not a power loss or a kernel crash. By default every group commit is
    /// fsynced before its writes are answered (about 0.2 ms on an idle disk, more on a busy one).
    #[arg(long, env = "AGENT_SANDBOX_NO_SYNC", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) no_sync: bool,
    /// Deprecated and ignored: fsyncing API writes is the default (see `--no-sync`).
    #[arg(
        long,
        env = "AGENT_SANDBOX_SYNC_WRITES",
        value_parser = clap::builder::FalseyValueParser::new(),
        hide = true,
        conflicts_with = "no_sync"
    )]
    pub(crate) sync_writes: bool,
    /// Subnet for sandbox pod IPs (must not overlap the host's routes).
    #[arg(long, env = "AGENT_SANDBOX_POD_SUBNET", default_value = "10.88.0.0/16")]
    pub(crate) pod_subnet: String,
    /// Linux bridge of the sandbox network (at most 15 bytes); give each instance on a host
    /// its own bridge and subnet.
    #[arg(long, env = "AGENT_SANDBOX_BRIDGE", default_value = "asbx0")]
    pub(crate) bridge: String,
    /// How long an Event lives after its last activity, as kube-apiserver's `--event-ttl`
    /// (Go duration: 90s, 30m, 1h30m). Events are most of an instance's memory when it churns
    /// sandboxes: about 14 per sandbox's life.
    #[arg(long, env = "AGENT_SANDBOX_EVENT_TTL", default_value = "1h", value_parser = agent_sandbox_controller::cluster::parse_go_duration)]
    pub(crate) event_ttl: std::time::Duration,
    /// Registry credentials of the node: a docker `config.json` with `auths` (Pods add their
    /// own with imagePullSecrets, tried first).
    #[arg(long, env = "AGENT_SANDBOX_REGISTRY_CONFIG", value_name = "FILE")]
    pub(crate) registry_config: Option<PathBuf>,
    /// A registry (`host:port`) the node may reach over plain HTTP; loopback registries always
    /// may. Repeat for more.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) insecure_registry: Vec<String>,
    /// Run no node agent (API server, controllers and router only).
    #[arg(long)]
    pub(crate) no_node: bool,
    /// Serve the router without its bearer token, as upstream's ALLOW_UNAUTHENTICATED_ROUTER
    /// (local development only: any local process can then reach every sandbox). Off by
    /// default; connections through the API server's port-forward never need the token.
    #[arg(long, env = "ALLOW_UNAUTHENTICATED_ROUTER")]
    pub(crate) allow_unauthenticated_router: bool,
    /// Grant containers Kubernetes' default capabilities, CAP_NET_RAW included (by default the
    /// node leaves it out unless a Pod adds NET_RAW: raw sockets let a sandbox forge ARP and ICMP
    /// on the bridge it shares with other sandboxes).
    #[arg(long)]
    pub(crate) kubernetes_capabilities: bool,
    /// Let the router forward to an X-Sandbox-Pod-IP that is not the named sandbox's Ready Pod
    /// (off by default: the router connects only to the Pods of the sandboxes requests name).
    #[arg(long)]
    pub(crate) router_allow_any_pod_ip: bool,
    /// Sandboxes the node sets up at once; more wait their turn (default: twice the CPUs).
    /// Starting hundreds at once starves the API server and the controllers of CPU.
    #[arg(long, env = "AGENT_SANDBOX_MAX_PARALLEL_STARTS", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) max_parallel_starts: Option<u16>,
    /// The most disk one SandboxSnapshot may take on this node (bytes, or with a Ki, Mi, Gi
    /// or Ti suffix); a larger one fails with a message naming this flag and leaves nothing.
    #[arg(long, env = "AGENT_SANDBOX_SNAPSHOT_SIZE_LIMIT", default_value = "10Gi", value_parser = parse_bytes)]
    pub(crate) snapshot_size_limit: u64,
    /// gVisor runtime monitoring of every runsc sandbox whose Pod does not say otherwise
    /// (annotation agent-sandbox-rs.github.io/runtime-monitoring): `log`, `falco`,
    /// `log,falco`, or `off`. See docs/runtime-monitoring.md.
    #[arg(long, env = "AGENT_SANDBOX_RUNTIME_MONITORING", default_value = "off", value_name = "SINKS", value_parser = parse_runtime_monitoring)]
    pub(crate) runtime_monitoring: MonitoringSetting,
    /// Falco's gVisor socket (the `endpoint` of the file given to `falco --gvisor-config`):
    /// where the events of sandboxes monitored with `falco` are forwarded.
    #[arg(long, env = "AGENT_SANDBOX_RUNTIME_MONITORING_FALCO_SOCKET", value_name = "PATH", value_parser = crate::args::absolute_path)]
    pub(crate) runtime_monitoring_falco_socket: Option<PathBuf>,
    /// Size at which a sandbox's runtime event log is rotated (one older file is kept).
    #[arg(long, default_value = "32Mi", value_parser = parse_bytes)]
    pub(crate) runtime_monitoring_log_size: u64,
}

/// `--runtime-monitoring`: `None` is `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MonitoringSetting(
    pub(crate) Option<agent_sandbox_node::monitor::RuntimeMonitoring>,
);

fn parse_runtime_monitoring(s: &str) -> Result<MonitoringSetting, String> {
    agent_sandbox_node::monitor::RuntimeMonitoring::parse(s).map(MonitoringSetting)
}

/// A byte count: digits with an optional binary suffix (`Ki`, `Mi`, `Gi`, `Ti`).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40)]
        .iter()
        .find_map(|(suffix, shift)| s.strip_suffix(suffix).map(|d| (d, *shift)))
        .unwrap_or((s, 0));
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{s:?} is not a byte count such as 10737418240, 512Mi or 10Gi"))
}

#[derive(Debug, Args)]
pub(crate) struct RouterArgs {
    /// Address to serve the router on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub(crate) http_bind_address: std::net::SocketAddr,
    /// Address to serve metrics and health on.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub(crate) metrics_bind_address: std::net::SocketAddr,
    /// Bearer token clients must send.
    #[arg(long, env = "AGENT_SANDBOX_ROUTER_TOKEN", hide_env_values = true)]
    pub(crate) auth_token: Option<String>,
    /// Serve without a token (local use only).
    #[arg(long)]
    pub(crate) allow_unauthenticated: bool,
    /// Accept loopback addresses in X-Sandbox-Pod-IP.
    #[arg(long)]
    pub(crate) allow_loopback_pod_ip: bool,
    /// Forward to an X-Sandbox-Pod-IP that is not the named sandbox's Ready Pod as the router's
    /// pod cache knows it (by default such a request gets 502: a token holder cannot make the
    /// router connect to any other address).
    #[arg(long)]
    pub(crate) allow_any_pod_ip: bool,
    /// Time limit to a sandbox's response headers, in seconds.
    #[arg(long, default_value_t = 180)]
    pub(crate) proxy_timeout_seconds: u64,
    /// Connection retries to a sandbox.
    #[arg(long, default_value_t = 3)]
    pub(crate) upstream_max_retries: u32,
    /// Cluster DNS domain for the DNS fallback.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) cluster_domain: String,
    /// Do not fall back to `<id>.<namespace>.svc.<domain>` when the pod cache has no entry.
    #[arg(long)]
    pub(crate) no_dns_fallback: bool,
    /// Pause or suspend sandboxes idle past their policy (the annotations
    /// `agent-sandbox-rs.github.io/idle-timeout` and `idle-suspend-after`) and wake them on
    /// their next request. Needs `get` and `patch` on sandboxes. Each replica sees only its own
    /// traffic (and asks sandboxd about the rest before it acts): turn it on for one replica,
    /// or accept that a sandbox serving only non-API ports through another replica is paused.
    #[arg(long)]
    pub(crate) idle_sandboxes: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(super::parse_bytes("10Gi"), Ok(10 << 30));
        assert_eq!(super::parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(super::parse_bytes("4096"), Ok(4096));
        assert!(super::parse_bytes("10GB").unwrap_err().contains("10Gi"));
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn event_ttl_takes_a_go_duration() {
        use clap::Parser;
        let up = |ttl: &str| {
            super::Cli::try_parse_from(["agent-sandbox", "up", "--event-ttl", ttl]).map(|c| match c
                .command
            {
                super::Command::Up(a) => a.event_ttl,
                _ => unreachable!(),
            })
        };
        assert_eq!(up("90s").unwrap(), std::time::Duration::from_secs(90));
        assert_eq!(up("1h30m").unwrap(), std::time::Duration::from_secs(5400));
        let err = up("ten").unwrap_err().to_string();
        assert!(err.contains("--event-ttl"), "{err}");
    }

    #[test]
    fn state_directories_are_made_absolute() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "agent-sandbox",
            "up",
            "--data-dir",
            "data",
            "--run-dir",
            "run",
        ])
        .unwrap();
        let super::Command::Up(a) = cli.command else {
            unreachable!()
        };
        let cwd = std::env::current_dir().unwrap();
        assert_eq!((a.data_dir, a.run_dir), (cwd.join("data"), cwd.join("run")));
    }
}

/// `agent-sandbox mcp`.
#[derive(Debug, clap::Args)]
pub(crate) struct McpArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Serve streamable HTTP at this address (path /mcp) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub(crate) http_listen: Option<std::net::SocketAddr>,
    /// Allow --http-listen on a non-loopback address (the endpoint itself does not
    /// authenticate; put it behind a proxy that does).
    #[arg(long)]
    pub(crate) http_allow_remote: bool,
}
