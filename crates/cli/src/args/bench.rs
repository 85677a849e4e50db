//! Flags of `agent-sandbox bench` (the benchmark suite against a running instance).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::ConnectArgs;

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Scenario {
    /// SandboxClaim create → Ready with a pod IP, from a warm pool.
    WarmClaim,
    /// Claim create → first output of `echo` through the router and sandboxd.
    FirstInstruction,
    /// Exec of `true` through router + sandboxd, direct to sandboxd, and fork+exec on the host.
    Exec,
    /// Sandbox create → Ready under each runtime handler, beside the runtime's own `run`.
    ColdStart,
    /// Claims per second for a while, the pool refilling behind them.
    Sustained,
    /// A burst of claims on a pool of the same size (upstream's scenario).
    Burst,
    /// Idle sandboxes: host memory per sandbox.
    Density,
    /// Pause → unpause round trips through the API, beside the cgroup freezer's own.
    Pause,
    /// The first request through the router to a sandbox paused for being idle, beside an
    /// unpause through the API and a request to it running.
    IdleWake,
    /// SandboxSnapshot → Ready under runsc beside `runsc checkpoint`, and of 100 MiB in a
    /// layer beside `cp -a`.
    Snapshot,
    /// Ten forks of one snapshot, create → all Ready, beside ten new sandboxes of the same spec.
    Fork,
    /// Desktop sandboxes (`--image` the desktop image): warm claim → first screenshot,
    /// screenshot latency and size, click → next screenshot.
    Desktop,
}

/// Which durability settings of `agent-sandbox up` to measure (`--durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DurabilityChoice {
    /// `up`'s default: an fsync per group commit, acknowledged writes survive a power loss.
    Sync,
    /// `up --no-sync`: acknowledged writes survive a crash of the process only.
    NoSync,
    /// Both, one instance after the other, the rows side by side.
    Both,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Scenarios to run (default: all but density and desktop).
    #[arg(value_enum)]
    pub(crate) scenarios: Vec<Scenario>,
    /// Iterations of the per-request scenarios (warm-claim, first-instruction, cold-start per
    /// handler); exec runs ten times as many.
    #[arg(long, default_value_t = 30)]
    pub(crate) iterations: usize,
    /// Size of the warm pool the claim scenarios use.
    #[arg(long, default_value_t = 10)]
    pub(crate) pool_size: i32,
    /// Seconds the sustained scenario runs.
    #[arg(long, default_value_t = 60)]
    pub(crate) duration: u64,
    /// Claims in the burst scenario (the pool is made as large).
    #[arg(long, default_value_t = 300)]
    pub(crate) burst: usize,
    /// Sandbox counts of the density scenario.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub(crate) density: Vec<usize>,
    /// Image of the benchmark template (it must serve sandboxd on 8080).
    #[arg(long, default_value = "localhost/agent-sandbox/python:latest")]
    pub(crate) image: String,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Measure instances the benchmark starts itself, one per durability setting in turn,
    /// instead of the running one: `agent-sandbox up` on a scratch directory under
    /// `<data dir>/bench/` with the image store of `--data-dir`, free loopback ports, bridge
    /// `asbxbench` and pod subnet 10.87.0.0/16.
    #[arg(long, value_enum)]
    pub(crate) durability: Option<DurabilityChoice>,
    /// The run directory of the instance (the snapshot scenario's `runsc checkpoint` baseline
    /// uses its runtime state).
    #[arg(
        long,
        value_parser = crate::args::absolute_path,
        env = "AGENT_SANDBOX_RUN_DIR",
        default_value = "/run/agent-sandbox"
    )]
    pub(crate) run_dir: PathBuf,
}
