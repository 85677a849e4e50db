//! Logging set-up for every subcommand: `--log-level` filter, `--log-format text|json` and
//! `--log-spans`, to stderr.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::args::{GlobalArgs, LogFormat};

/// kube's client logs each failed request at error level from its HTTP layer
/// (`kube_client::client::builder`: "failed with error client error (Connect)"). Every caller
/// here reports the failure itself, naming the object and what to do, so that line is only noise
/// in front of the real message; it stays off unless the filter names `kube_client`.
const QUIET_KUBE_CLIENT: &str = "kube_client::client::builder=off";

pub(crate) fn init(args: &GlobalArgs) -> anyhow::Result<()> {
    let directives = if args.log_level.contains("kube_client") {
        args.log_level.clone()
    } else {
        format!("{},{QUIET_KUBE_CLIENT}", args.log_level)
    };
    let filter = EnvFilter::try_new(&directives).with_context(|| {
        format!("invalid --log-level {:?}: use error, warn, info, debug, trace or a directive list like \"info,agent_sandbox_apiserver=debug\"", args.log_level)
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never in log files or container logs.
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(if args.log_spans {
            FmtSpan::CLOSE
        } else {
            FmtSpan::NONE
        });
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
