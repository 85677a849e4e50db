//! `agent-sandbox controller`: the four controllers against a Kubernetes cluster.

use std::process::ExitCode;

use crate::args::ControllerArgs;

pub(crate) fn controller(_args: &ControllerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`agent-sandbox controller` is not yet available in this build; run `agent-sandbox up` for the embedded mode"
    )
}
