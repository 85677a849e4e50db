//! Logging set-up for every subcommand: `--log-level` filter, `--log-format text|json` and
//! `--log-spans`, to stderr.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::args::{GlobalArgs, LogFormat};

pub(crate) fn init(args: &GlobalArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level).with_context(|| {
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
