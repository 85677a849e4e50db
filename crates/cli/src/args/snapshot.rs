//! Arguments of `agent-sandbox snapshot`.

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
