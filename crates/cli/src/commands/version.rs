//! `agent-sandbox version`.

use std::io::Write;
use std::process::ExitCode;

use agent_sandbox_api::constants::{
    CORE_GROUP, DEPRECATED_VERSION, EXTENSIONS_GROUP, STORAGE_VERSION,
};

pub(crate) fn version() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "agent-sandbox {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(
        out,
        "API: {CORE_GROUP}, {EXTENSIONS_GROUP} ({STORAGE_VERSION} storage, {DEPRECATED_VERSION} served)"
    )?;
    Ok(ExitCode::SUCCESS)
}
