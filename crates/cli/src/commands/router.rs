//! `agent-sandbox router` (the standalone router for clusters, using the kubeconfig or the
//! in-cluster service account) and `agent-sandbox sandboxd` (the in-sandbox runtime).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_sandbox_router::cache::PodCache;
use agent_sandbox_router::server::{self, Config, Router};
use anyhow::Context;
use tokio::net::TcpListener;

use crate::args::RouterArgs;

pub(crate) fn router(args: &RouterArgs) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the API server; set KUBECONFIG or run in a cluster")?;
        let config = Config {
            auth_token: args.auth_token.clone(),
            allow_unauthenticated: args.allow_unauthenticated,
            allow_loopback_pod_ip: args.allow_loopback_pod_ip,
            allow_any_pod_ip: args.allow_any_pod_ip,
            proxy_timeout: Duration::from_secs(args.proxy_timeout_seconds),
            upstream_max_retries: args.upstream_max_retries,
            dns_fallback: !args.no_dns_fallback,
            cluster_domain: args.cluster_domain.clone(),
            ..Config::default()
        };
        // First, so a SIGTERM (Kubernetes stopping the Pod) during start-up is not lost.
        let shutdown = agent_sandbox_controller::cluster::shutdown_signal();
        let cache = PodCache::new();
        let mut router = Router::new(config, cache.clone())?;
        if args.idle_sandboxes {
            tokio::spawn(router.enable_idle(client.clone()).run());
        }
        let router = Arc::new(router);
        tokio::spawn(cache.run(client));
        let listener = TcpListener::bind(args.http_bind_address)
            .await
            .with_context(|| {
                format!(
                    "listening on {}; pass --http-bind-address to choose another",
                    args.http_bind_address
                )
            })?;
        let metrics = TcpListener::bind(args.metrics_bind_address)
            .await
            .with_context(|| {
                format!(
                    "listening on {}; pass --metrics-bind-address to choose another",
                    args.metrics_bind_address
                )
            })?;
        tokio::spawn(server::serve_metrics(router.metrics(), metrics));
        tracing::info!(address = %args.http_bind_address, "router listening");
        tokio::select! {
            () = server::serve(router, listener) => {}
            () = shutdown => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn sandboxd(config: agent_sandbox_sandboxd::Config) -> anyhow::Result<ExitCode> {
    let code = super::runtime()?.block_on(agent_sandbox_sandboxd::serve(config))?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
