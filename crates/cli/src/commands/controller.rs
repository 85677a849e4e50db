//! `agent-sandbox controller`: the four controllers against a Kubernetes cluster (cluster mode),
//! with leader election, the conversion webhook, metrics and health probes. Turns the flags into
//! an [`agent_sandbox_controller::cluster::ClusterConfig`], connects, and runs it until SIGTERM
//! (exit 0) or until leadership is lost (exit 1).

use std::process::ExitCode;
use std::time::Duration;

use agent_sandbox_controller::Config;
use agent_sandbox_controller::cluster::{
    Cluster, ClusterConfig, WebhookConfig, read_allowed_label_domains, shutdown_signal,
};
use agent_sandbox_controller::leader::{LeaderElectionConfig, default_identity, detect_namespace};
use agent_sandbox_controller::otel::{Tracing, TracingConfig};
use anyhow::Context;
use std::net::SocketAddr;

use crate::args::ControllerArgs;

pub(crate) fn controller(args: &ControllerArgs) -> anyhow::Result<ExitCode> {
    validate(args)?;
    warn_about_ignored_flags(args);
    if !args.enable_tracing {
        return super::runtime()?.block_on(run(args));
    }
    // The exporter lives on a runtime of its own; the controllers run on one whose every thread
    // (reconciles are spawned tasks) has the subscriber with the OpenTelemetry layer.
    let exporter_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .context("starting the trace exporter's runtime")?;
    let otel = exporter_rt
        .block_on(Tracing::init(&TracingConfig::default()))
        .context("--enable-tracing")?;
    let dispatch = tracing_dispatch(&otel)?;
    let thread_dispatch = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            // Lives as long as the thread.
            std::mem::forget(tracing::dispatcher::set_default(&thread_dispatch));
        })
        .build()
        .context("starting the async runtime")?;
    let result = {
        let _main = tracing::dispatcher::set_default(&dispatch);
        tracing::info!(
            service = agent_sandbox_controller::otel::SERVICE_NAME,
            "exporting traces over OTLP/gRPC"
        );
        rt.block_on(run(args))
    };
    drop(rt);
    exporter_rt.block_on(otel.shutdown());
    result
}

async fn run(args: &ControllerArgs) -> anyhow::Result<ExitCode> {
    // First, so a SIGTERM during the connection and the cache sync is not lost.
    let shutdown = shutdown_signal();
    let client = connect(args).await?;
    let config = cluster_config(args, &client)?;
    let cluster = Cluster::bind(client, config)
        .await
        .context("starting the controller")?;
    cluster.run(shutdown).await?;
    tracing::info!("controller stopped");
    Ok(ExitCode::SUCCESS)
}

/// The log output of `--log-level`/`--log-format` plus the OpenTelemetry layer (the
/// process-wide subscriber is set up before the verb runs, without it). Spans are exported at
/// info level whatever the log level.
fn tracing_dispatch(otel: &Tracing) -> anyhow::Result<tracing::Dispatch> {
    use clap::Parser;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let global = crate::args::Cli::parse().global;
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(&global.log_level)
            .with_context(|| format!("invalid --log-level {:?}", global.log_level))
    };
    let json = global.log_format == crate::args::LogFormat::Json;
    let text = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    let subscriber = tracing_subscriber::registry()
        .with(text.with_filter(filter()?))
        .with(json.with_filter(filter()?))
        .with(
            otel.layer()
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        );
    Ok(tracing::Dispatch::new(subscriber))
}

/// Upstream's flag checks.
fn validate(a: &ControllerArgs) -> anyhow::Result<()> {
    if a.kube_api_burst == 0 {
        anyhow::bail!("--kube-api-burst must be greater than 0");
    }
    if a.api_connections == 0 {
        anyhow::bail!("--api-connections must be at least 1");
    }
    if !a.sandbox_warm_pool_max_refill_rate.is_finite() || a.sandbox_warm_pool_max_refill_rate < 0.0
    {
        anyhow::bail!("--sandbox-warm-pool-max-refill-rate must be a finite number >= 0");
    }
    if !a.kube_api_qps.is_finite() {
        anyhow::bail!("--kube-api-qps must be a finite number (-1 for unlimited)");
    }
    if a.sandbox_warm_pool_readiness_grace_period.is_zero() {
        anyhow::bail!("--sandbox-warm-pool-readiness-grace-period must be greater than 0");
    }
    if a.sandbox_warm_pool_unschedulable_recheck_interval.is_zero() {
        anyhow::bail!("--sandbox-warm-pool-unschedulable-recheck-interval must be greater than 0");
    }
    if !a.manage_webhook_certs && (a.webhook_cert_name.is_empty() || a.webhook_key_name.is_empty())
    {
        anyhow::bail!(
            "--webhook-cert-name and --webhook-key-name must not be empty with --manage-webhook-certs=false"
        );
    }
    Ok(())
}

/// Flags that upstream's Go binary honours and this build accepts without effect.
fn warn_about_ignored_flags(a: &ControllerArgs) {
    let mut ignored = Vec::new();
    if a.enable_pprof || a.enable_pprof_debug {
        ignored.push("--enable-pprof/--enable-pprof-debug (no profiling endpoints in this build)");
    }
    if a.api_connections != 1 || a.separate_watch_connection {
        ignored.push("--api-connections/--separate-watch-connection (Go client tuning)");
    }
    if a.cache_label_selectors {
        ignored.push("--cache-label-selectors");
    }
    if !a.sandbox_warm_pool_replenish_delay.is_zero() {
        ignored.push("--sandbox-warm-pool-replenish-delay");
    }
    if a.sandbox_warm_pool_max_refill_rate != 0.0 {
        ignored.push("--sandbox-warm-pool-max-refill-rate");
    }
    if !a.sandbox_write_behind_window.is_zero() {
        ignored.push("--sandbox-write-behind-window");
    }
    if a.zap_log_level.is_some()
        || a.zap_devel.is_some()
        || a.zap_encoder.is_some()
        || a.zap_stacktrace_level.is_some()
        || a.zap_time_encoding.is_some()
    {
        ignored.push("--zap-* (use --log-level and --log-format)");
    }
    for flag in ignored {
        tracing::warn!(
            flag,
            "flag accepted for compatibility; it has no effect in this build"
        );
    }
}

/// Builds the client from `--kubeconfig`, `$KUBECONFIG`/`~/.kube/config` or the in-cluster
/// service account, and checks that the API server answers.
async fn connect(a: &ControllerArgs) -> anyhow::Result<kube::Client> {
    let config = match &a.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).with_context(|| {
                format!(
                    "reading the kubeconfig {}; pass an existing file to --kubeconfig",
                    path.display()
                )
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "finding API server credentials: no usable kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster; pass --kubeconfig or set KUBECONFIG",
        )?,
    };
    let url = config.cluster_url.to_string();
    let client = build_client(config, a.kube_api_qps, a.kube_api_burst)
        .with_context(|| format!("building the API client for {url}"))?;
    match tokio::time::timeout(Duration::from_secs(30), client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(server = %url, version = %v.git_version, "connected to the API server");
            Ok(client)
        }
        Ok(Err(e)) => Err(anyhow::anyhow!(e)).with_context(|| {
            format!("cannot reach the API server at {url}; check that the cluster is running and that the kubeconfig (or in-cluster credentials) names the right server")
        }),
        Err(_) => anyhow::bail!(
            "the API server at {url} did not answer within 30s; check that the cluster is running and reachable from here"
        ),
    }
}

/// The client; with `--kube-api-qps` > 0, requests are limited to `burst` per `burst/qps`
/// seconds (the average rate is the QPS, bursts at most `burst`).
fn build_client(config: kube::Config, qps: f64, burst: u32) -> anyhow::Result<kube::Client> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    if qps > 0.0 {
        let per = Duration::from_secs_f64(f64::from(burst) / qps);
        let layer = tower::limit::RateLimitLayer::new(u64::from(burst), per);
        return Ok(builder.with_layer(&layer).build());
    }
    Ok(builder.build())
}

fn cluster_config(a: &ControllerArgs, client: &kube::Client) -> anyhow::Result<ClusterConfig> {
    let allowed_label_domains = if a.extensions {
        read_allowed_label_domains(&a.allowed_label_domains_file).with_context(|| {
            format!(
                "reading the allowed label domains from {}",
                a.allowed_label_domains_file.display()
            )
        })?
    } else {
        Config::default().allowed_label_domains
    };
    let controllers = Config {
        extensions: a.extensions,
        cluster_domain: a.cluster_domain.clone(),
        namespace: None,
        sandbox_workers: a.sandbox_concurrent_workers,
        claim_workers: a.sandbox_claim_concurrent_workers,
        warm_pool_workers: a.sandbox_warm_pool_concurrent_workers,
        template_workers: a.sandbox_template_concurrent_workers,
        warm_pool_max_batch: usize::try_from(a.sandbox_warm_pool_max_batch_size)
            .unwrap_or(usize::MAX),
        warm_pool_readiness_grace: a.sandbox_warm_pool_readiness_grace_period,
        warm_pool_unschedulable_recheck: a.sandbox_warm_pool_unschedulable_recheck_interval,
        enable_warm_pool_eviction: a.enable_warm_pool_eviction,
        disable_claim_events: a.disable_claim_events,
        disable_claim_observability_annotations: a.disable_claim_observability_annotations,
        tracing: a.enable_tracing,
        allowed_label_domains,
    };
    let leader_election = if a.leader_elect {
        let namespace = if a.leader_election_namespace.is_empty() {
            detect_namespace(client.default_namespace())
        } else {
            a.leader_election_namespace.clone()
        };
        let mut le = LeaderElectionConfig::new(namespace, default_identity());
        le.lease_duration = a.leader_election_lease_duration;
        le.renew_deadline = a.leader_election_renew_deadline;
        le.retry_period = a.leader_election_retry_period;
        le.validate()?;
        Some(le)
    } else {
        None
    };
    let webhook = a.enable_webhook.then(|| WebhookConfig {
        addr: SocketAddr::from(([0, 0, 0, 0], a.webhook_port)),
        cert_dir: a.webhook_cert_dir.clone(),
        cert_name: a.webhook_cert_name.clone(),
        key_name: a.webhook_key_name.clone(),
        manage_certs: a.manage_webhook_certs,
        service_name: a.webhook_service_name.clone(),
        namespace: a.webhook_namespace.clone(),
    });
    Ok(ClusterConfig {
        controllers,
        leader_election,
        metrics_addr: a.metrics_bind_address.0,
        health_addr: a.health_probe_bind_address.0,
        webhook,
    })
}
