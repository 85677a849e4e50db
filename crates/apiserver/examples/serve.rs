//! Runs the API server on a data directory until interrupted:
//! `cargo run -p agent-sandbox-apiserver --example serve -- <data-dir> [port]`.
#![allow(clippy::print_stdout)]

use agent_sandbox_apiserver::{ApiServer, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./apiserver-data".into());
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(6443);
    let mut cfg = Config::new(&dir);
    cfg.tcp_addr = Some(([127, 0, 0, 1], port).into());
    let server = ApiServer::start(cfg).await?;
    println!(
        "listening on https://{}",
        server.tcp_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    println!("export KUBECONFIG={}", server.kubeconfig_path().display());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
