//! `agent-sandbox mcp`: a Model Context Protocol server whose tools create sandboxes from warm
//! pools and act in them (see [`tools`]), over stdio (the default: an MCP client starts it as a
//! subprocess) or streamable HTTP on a loopback address (`--http-listen`).

mod lifecycle;
mod tools;

use std::process::ExitCode;

use anyhow::Context;
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};

use super::connect::Connection;
use crate::args::McpArgs;
use tools::SandboxTools;

/// The path the HTTP transport serves.
const HTTP_PATH: &str = "/mcp";

pub(crate) async fn mcp(args: &McpArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&args.connect).await?;
    // Fail now, not at the first tool call, when no router is known.
    conn.router()?;
    let tools = SandboxTools::new(conn);
    match args.http_listen {
        None => {
            let service = tools
                .serve(rmcp::transport::stdio())
                .await
                .context("starting the MCP session on stdin and stdout")?;
            service.waiting().await.context("serving MCP on stdio")?;
        }
        Some(addr) => {
            if !addr.ip().is_loopback() && !args.http_allow_remote {
                anyhow::bail!(
                    "--http-listen {addr} is not a loopback address: the MCP endpoint has no authentication of its own and its tools run commands in sandboxes; listen on 127.0.0.1, or pass --http-allow-remote behind a proxy that authenticates"
                );
            }
            let service: StreamableHttpService<SandboxTools, LocalSessionManager> =
                StreamableHttpService::new(
                    move || Ok(tools.clone()),
                    Default::default(),
                    StreamableHttpServerConfig::default(),
                );
            let app = axum::Router::new().nest_service(HTTP_PATH, service);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}; pass another --http-listen"))?;
            eprintln!("MCP over streamable HTTP on http://{addr}{HTTP_PATH}");
            axum::serve(listener, app)
                .with_graceful_shutdown(agent_sandbox_controller::cluster::shutdown_signal())
                .await
                .context("serving MCP over HTTP")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
