//! The `sandboxd` binary: parses the flags and runs the daemon.

use std::io::Write;

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
    let code = runtime.block_on(async {
        let server = agent_sandbox_sandboxd::Server::bind(cli.config).await?;
        // One JSON line on stdout with the bound addresses, for supervisors and tests that
        // start sandboxd on ephemeral ports.
        let announce = serde_json::json!({
            "grpc": server.grpc_addr().map(|a| a.to_string()),
            "rest": server.rest_addr().map(|a| a.to_string()),
            "legacy": server.legacy_addr().map(|a| a.to_string()),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{announce}")?;
        out.flush()?;
        drop(out);
        tracing::info!(%announce, "sandboxd listening");
        let code = server
            .run(agent_sandbox_sandboxd::shutdown_signal())
            .await?;
        anyhow::Ok(code)
    })?;
    drop(runtime);
    if code != 0 {
        // The workload's exit code (entrypoint-wrapper mode) becomes ours.
        #[allow(clippy::exit)]
        std::process::exit(code);
    }
    Ok(())
}
