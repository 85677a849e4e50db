//! Flags of `agent-sandbox controller` (cluster mode).

use clap::Args;

/// Flags of the controller manager that runs against a cluster.
#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {}
