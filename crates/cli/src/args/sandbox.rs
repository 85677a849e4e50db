//! Flags of the verbs that act on sandboxes: `claim`, `get`, `apply`, `delete`, `suspend`,
//! `resume`, `logs` (through the API server) and `exec`, `cp`, `ls` (through the router).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Where the API server and the router are. Without flags, the instance `agent-sandbox up`
/// recorded in `<data dir>/endpoints.json`.
#[derive(Clone, Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Kubeconfig of the API server (default: $KUBECONFIG, else the one `agent-sandbox up`
    /// wrote, else ~/.kube/config or the in-cluster service account).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// The data directory of `agent-sandbox up`, where endpoints.json is.
    #[arg(
        long,
        value_parser = crate::args::absolute_path,
        env = "AGENT_SANDBOX_DATA_DIR",
        default_value = "/var/lib/agent-sandbox"
    )]
    pub(crate) data_dir: PathBuf,
    /// Namespace of the objects.
    #[arg(short = 'n', long, default_value = "default")]
    pub(crate) namespace: String,
    /// URL of the sandbox router (default: the one `agent-sandbox up` runs).
    #[arg(long, env = "AGENT_SANDBOX_ROUTER", value_name = "URL")]
    pub(crate) router: Option<String>,
    /// Bearer token for the router (default: `up`'s token file).
    #[arg(long, env = "AGENT_SANDBOX_ROUTER_TOKEN", hide_env_values = true)]
    pub(crate) router_token: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ClaimArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// The warm pool to claim from.
    #[arg(long, short = 'p', value_name = "POOL")]
    pub(crate) pool: String,
    /// Name of the claim (default: generated from the pool's name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Environment variables for the sandbox's containers (the template must allow injection).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub(crate) env: Vec<String>,
    /// Labels on the claim.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// Delete the sandbox this many seconds from now (the claim's lifecycle.shutdownTime).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) shutdown_after: Option<u64>,
    /// How long to wait for the sandbox to be Ready, in seconds (0: do not wait).
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout: u64,
}

/// Kinds `get` and `delete` know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    /// SandboxClaims.
    #[value(alias = "claim", alias = "sandboxclaims", alias = "sandboxclaim")]
    Claims,
    /// Sandboxes.
    #[value(alias = "sandbox", alias = "sb")]
    Sandboxes,
    /// SandboxTemplates.
    #[value(
        alias = "template",
        alias = "sandboxtemplates",
        alias = "sandboxtemplate"
    )]
    Templates,
    /// SandboxWarmPools.
    #[value(alias = "pool", alias = "sandboxwarmpools", alias = "sandboxwarmpool")]
    Pools,
    /// All four.
    All,
}

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// A table.
    Table,
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// What to list.
    #[arg(value_enum, default_value_t = Kind::All)]
    pub(crate) kind: Kind,
    /// Show only this object.
    pub(crate) name: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Manifest files (YAML or JSON, several documents each); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Claims or sandboxes (a claim of that name first, else a sandbox).
    #[arg(required = true)]
    pub(crate) names: Vec<String>,
    /// Return without waiting for the sandboxes' Pods to be gone.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout: u64,
}

/// A sandbox named by its claim or by its own name.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// A claim or a sandbox.
    pub(crate) name: String,
    /// How long to wait for the change to take effect, in seconds (0: do not wait).
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout: u64,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// A claim or a sandbox.
    pub(crate) name: String,
    /// Only the last N lines.
    #[arg(long)]
    pub(crate) tail: Option<i64>,
    /// Keep printing new output until the container stops.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// The log of the container's previous instance (before its last restart).
    #[arg(long, short = 'p')]
    pub(crate) previous: bool,
    /// The container (default: the Pod's only or first one).
    #[arg(long, short = 'c')]
    pub(crate) container: Option<String>,
    /// The sandbox's gVisor runtime events (JSON lines; the sandbox must be monitored with
    /// `log`) instead of a container's output. Read from the node's data directory
    /// (`--data-dir`), so this runs on the machine of `agent-sandbox up`, as root.
    #[arg(long, conflicts_with_all = ["previous", "container"])]
    pub(crate) runtime_events: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// A claim or a sandbox.
    pub(crate) name: String,
    /// The program and its arguments (after `--`), run without a shell.
    #[arg(last = true, required_unless_present = "shell")]
    pub(crate) command: Vec<String>,
    /// A shell command line instead, run with /bin/sh -c.
    #[arg(long, short = 'c', value_name = "SCRIPT", conflicts_with = "command")]
    pub(crate) shell: Option<String>,
    /// Environment variables.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub(crate) env: Vec<String>,
    /// Working directory in the sandbox.
    #[arg(long, short = 'w')]
    pub(crate) workdir: Option<String>,
    /// Send this program's stdin to the command.
    #[arg(long, short = 'i')]
    pub(crate) stdin: bool,
    /// Kill the command after this many seconds.
    #[arg(long)]
    pub(crate) timeout: Option<f64>,
}

#[derive(Debug, Args)]
pub(crate) struct CpArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Source: a local path, `-` (stdin) or `SANDBOX:PATH`.
    pub(crate) source: String,
    /// Destination: a local path, `-` (stdout) or `SANDBOX:PATH`.
    pub(crate) destination: String,
}

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// A claim or a sandbox.
    pub(crate) name: String,
    /// Directory or file (default: the working directory, /workspace in the example image).
    #[arg(default_value = ".")]
    pub(crate) path: String,
}
