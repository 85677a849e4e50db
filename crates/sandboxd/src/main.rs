//! The `sandboxd` binary: parses the flags and runs the daemon.

use clap::Parser;

/// sandboxd: the in-sandbox runtime (files, processes, PTY, run_code).
#[derive(Debug, Parser)]
#[command(name = "sandboxd", version)]
struct Cli {
    #[command(flatten)]
    config: agent_sandbox_sandboxd::Config,
    /// Log filter (tracing env-filter syntax), also read from RUST_LOG.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(agent_sandbox_sandboxd::serve(cli.config))?;
    drop(runtime);
    if code != 0 {
        // The workload's exit code (entrypoint-wrapper mode) becomes ours.
        #[allow(clippy::exit)]
        std::process::exit(code);
    }
    Ok(())
}
