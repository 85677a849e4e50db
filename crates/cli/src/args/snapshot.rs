//! Arguments of `agent-sandbox snapshot`, `fork` and `restore`.

use clap::{Args, Subcommand};

use super::ConnectArgs;

#[derive(Debug, Args)]
pub(crate) struct SnapshotArgs {
    #[command(subcommand)]
    pub(crate) command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Snapshot a sandbox (a SandboxSnapshot): its memory under runsc, its writable layer and
    /// its volumes' data.
    Create(SnapshotCreateArgs),
    /// List snapshots: name, sandbox, phase, kind, size, age.
    List(SnapshotListArgs),
    /// Delete snapshots and their files on the node.
    Delete(SnapshotDeleteArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotCreateArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// A claim or a sandbox.
    pub(crate) sandbox: String,
    /// Name of the snapshot (default: `<sandbox>-` and a generated suffix).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Wait until the snapshot is Ready (or Failed), printing its progress and the time taken.
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotListArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Only the snapshots of this sandbox.
    #[arg(long)]
    pub(crate) sandbox: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotDeleteArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Snapshots to delete.
    #[arg(required = true)]
    pub(crate) names: Vec<String>,
    /// Return without waiting for the node to delete the files.
    #[arg(long)]
    pub(crate) no_wait: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ForkArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// The claim or sandbox to fork: its spec is copied into each fork.
    pub(crate) sandbox: String,
    /// How many forks.
    #[arg(short = 'N', long, default_value_t = 1)]
    pub(crate) count: usize,
    /// Start from this snapshot (Ready, in the namespace) instead of taking one now.
    #[arg(long)]
    pub(crate) snapshot: Option<String>,
    /// Name the forks `<name>-1` … `<name>-N` (default: the snapshot's name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// How long to wait for the snapshot and for every fork to be Ready, in seconds (0: do
    /// not wait for the forks).
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// The claim or sandbox to roll back.
    pub(crate) sandbox: String,
    /// The snapshot to roll back to (Ready, in the namespace).
    pub(crate) snapshot: String,
    /// How long to wait for the sandbox to be Ready again, in seconds.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
}
