//! `agent-sandbox up`: the embedded default on one machine. Starts, in order, the API server
//! (SQLite, HTTPS on loopback, unix socket), the controllers over an in-process client, the node
//! agent (sandboxes through OCI runtimes, CNI networking), and the router; prints where each is;
//! runs until interrupted.

use std::process::ExitCode;
use std::sync::Arc;

use agent_sandbox_apiserver::{ApiServer, Config as ApiConfig};
use agent_sandbox_node::agent::{AgentConfig, NodeAgent};
use agent_sandbox_node::cni::NetworkConfig;
use agent_sandbox_node::{EngineConfig, SandboxEngine};
use agent_sandbox_router::cache::PodCache;
use agent_sandbox_router::server::{self as router_server, Config as RouterConfig, Router};
use anyhow::Context;
use tokio::net::TcpListener;

use super::router_pod;
use crate::args::UpArgs;

pub(crate) fn up(args: &UpArgs) -> anyhow::Result<ExitCode> {
    // Absolute, so that the kubeconfig and endpoints.json name paths that work from anywhere.
    let mut args = args.clone();
    args.data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("resolving the data directory {}", args.data_dir.display()))?;
    super::runtime()?.block_on(run(&args))
}

/// The router's bearer token: generated on first start, kept 0600 in the data directory.
fn router_token(args: &UpArgs) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = args.data_dir.join("router-token");
    if let Ok(token) = fs_err::read_to_string(&path) {
        return Ok(token.trim().to_owned());
    }
    let token: String = {
        use rand::RngExt;
        let mut rng = rand::rng();
        (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect()
    };
    fs_err::write(&path, &token)?;
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(token)
}

async fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    if let Some(m) = args.runtime_monitoring.0.filter(|m| m.falco)
        && args.runtime_monitoring_falco_socket.is_none()
    {
        anyhow::bail!(
            "--runtime-monitoring {} forwards to Falco: give its socket with --runtime-monitoring-falco-socket PATH, or use `log`",
            m.as_value()
        );
    }
    fs_err::create_dir_all(&args.data_dir)
        .context("creating the data directory; pass --data-dir to choose another")?;
    let mut api = ApiConfig::new(args.data_dir.join("apiserver"));
    api.tcp_addr = Some(args.api_listen);
    api.kubeconfig_path = Some(args.data_dir.join("kubeconfig"));
    api.event_ttl = args.event_ttl;
    if args.sync_writes {
        eprintln!("note: --sync-writes is the default now and does nothing; drop it");
    }
    if args.no_sync {
        api.durability = agent_sandbox_apiserver::Durability::ProcessCrash;
    }
    let node_name = api.node_name.clone();
    let server = ApiServer::start(api)
        .await
        .context("starting the API server")?;
    let client = server.client();
    println!(
        "API server:  https://{}  (kubeconfig: {})",
        args.api_listen,
        server.kubeconfig_path().display()
    );

    let (controller_state, controllers) = agent_sandbox_controller::start(
        client.clone(),
        agent_sandbox_controller::Config::default(),
    );
    let controllers = tokio::spawn(controllers);
    println!("controllers: Sandbox, SandboxTemplate, SandboxWarmPool, SandboxClaim");

    let mut node_task = None;
    let mut node_engine = None;
    let mut node_engine_for_metrics: Option<Arc<SandboxEngine>> = None;
    if !args.no_node {
        let mut engine_config = EngineConfig::new(args.data_dir.join("node"), &args.run_dir);
        if let Some(path) = &args.registry_config {
            anyhow::ensure!(
                path.is_file(),
                "--registry-config {}: no such file; give a docker config.json with \"auths\"",
                path.display()
            );
        }
        // sandboxd for Pods that ask for it, whatever their image: this executable and its
        // libraries, mounted read-only.
        engine_config.sandboxd_kit = Some(
            agent_sandbox_node::sandboxd_kit::prepare(&args.data_dir.join("node/sandboxd-kit"))
                .context("preparing the sandboxd kit (this executable and its libraries)")?,
        );
        engine_config.registry.docker_config = args.registry_config.clone();
        if args.kubernetes_capabilities {
            engine_config.capability_defaults =
                agent_sandbox_node::bundle::CapabilityDefaults::Kubernetes;
        }
        engine_config.registry.insecure = args.insecure_registry.clone();
        engine_config.runtime_monitoring.falco_socket =
            args.runtime_monitoring_falco_socket.clone();
        engine_config.runtime_monitoring.log_max_bytes = args.runtime_monitoring_log_size;
        let defaults = NetworkConfig::default();
        engine_config.network = Some(NetworkConfig {
            // The CNI network name keys IP address leases: one per bridge.
            name: if args.bridge == defaults.bridge {
                defaults.name.clone()
            } else {
                format!("{}-{}", defaults.name, args.bridge)
            },
            bridge: args.bridge.clone(),
            subnet: args.pod_subnet.clone(),
            ..defaults
        });
        let engine = Arc::new(
            SandboxEngine::new(engine_config)
                .await
                .context("starting the node agent's sandbox engine")?,
        );
        for s in engine.handler_statuses() {
            println!("runtime:     {}", s.summary());
        }
        match engine.default_handler() {
            Some(h) => println!("default runtime handler: {}", h.name()),
            None => anyhow::bail!(
                "no OCI runtime works on this host; install runc or crun (apt-get install runc crun) and re-run"
            ),
        }
        server.set_pod_logs(Arc::new(EngineLogs(Arc::clone(&engine))));
        server.set_pod_exec(Arc::new(EngineExec(Arc::clone(&engine))));
        node_engine = Some(Arc::clone(&engine));
        node_engine_for_metrics = Some(Arc::clone(&engine));
        let mut agent_config = AgentConfig {
            snapshot_size_limit: args.snapshot_size_limit,
            runtime_monitoring: args.runtime_monitoring.0,
            ..AgentConfig::default()
        };
        if let Some(n) = args.max_parallel_starts {
            agent_config.max_parallel_starts = n.into();
        }
        let agent = NodeAgent::with_config(client.clone(), engine, node_name.clone(), agent_config);
        agent.register().await.context("registering the node")?;
        agent
            .recover()
            .await
            .context("re-adopting sandboxes from the previous run")?;
        node_task = Some(tokio::spawn(agent.run()));
        println!("node:        {node_name}");
    }

    let token = router_token(args)?;
    let cache = PodCache::new();
    tokio::spawn(cache.clone().run(client.clone()));
    if args.allow_unauthenticated_router {
        println!(
            "warning: the router serves requests without a token (--allow-unauthenticated-router): any local process can reach every sandbox"
        );
    }
    let mut router = Router::new(
        RouterConfig {
            auth_token: (!args.allow_unauthenticated_router).then_some(token),
            allow_unauthenticated: args.allow_unauthenticated_router,
            allow_any_pod_ip: args.router_allow_any_pod_ip,
            ..RouterConfig::default()
        },
        cache,
    )?;
    // Sandboxes with an idle policy are paused or suspended when idle, woken by traffic.
    tokio::spawn(router.enable_idle(client.clone()).run());
    let router = Arc::new(router);
    // The router as upstream deploys it, reachable through port-forward.
    server.set_pod_port_forward(Arc::new(router_pod::NodePortForward {
        engine: node_engine,
        router: Arc::clone(&router),
    }));
    router_pod::publish(&client, &node_name)
        .await
        .context("registering the router's Service and Pod")?;
    if !args.no_node {
        agent_sandbox_node::storage::ensure_default_class(&client)
            .await
            .context("registering the node's default StorageClass")?;
    }
    let listener = TcpListener::bind(args.router_listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} for the router; pass --router-listen to choose another address",
                args.router_listen
            )
        })?;
    let metrics = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} for metrics; pass --metrics-listen to choose another address",
                args.metrics_listen
            )
        })?;
    tokio::spawn(serve_metrics(
        metrics,
        router.metrics(),
        controller_state,
        node_engine_for_metrics,
    ));
    tokio::spawn(router_server::serve(router, listener));
    println!(
        "router:      http://{}  (token: {}; also svc/{} in namespaces {} through kubectl port-forward)",
        args.router_listen,
        args.data_dir.join("router-token").display(),
        router_pod::SERVICE,
        router_pod::NAMESPACES.join(" and "),
    );
    write_endpoints(args)?;
    println!(
        "ready; try: KUBECONFIG={} kubectl get sandboxes -A",
        args.data_dir.join("kubeconfig").display()
    );

    // SIGINT (a terminal) or SIGTERM (systemd, a container stop); during start-up either one
    // still ends the process at once, by its default action.
    agent_sandbox_controller::cluster::shutdown_signal().await;
    println!("shutting down (sandboxes keep running and are re-adopted on the next start)");
    controllers.abort();
    if let Some(t) = node_task {
        t.abort();
    }
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `/metrics` with the router's, the controllers' and the node's (runtime monitoring) metrics
/// in one OpenMetrics document, `/healthz`, and `/readyz` (the controllers' caches have
/// synced).
async fn serve_metrics(
    listener: TcpListener,
    router: Arc<agent_sandbox_router::metrics::Metrics>,
    controllers: agent_sandbox_controller::State,
    node: Option<Arc<SandboxEngine>>,
) {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let controllers = Arc::new(controllers);
    let ready = Arc::clone(&controllers);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (router, controllers) = (Arc::clone(&router), Arc::clone(&controllers));
                let node = node.clone();
                async move {
                    let mut text = router.render();
                    if let Some(stripped) = text.strip_suffix("# EOF\n") {
                        text.truncate(stripped.len());
                    }
                    if let Some(node) = &node {
                        text.push_str(&node.monitoring().metrics_text());
                    }
                    text.push_str(&controllers.metrics_text());
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = Arc::clone(&ready);
                async move {
                    if ready.is_ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "controllers' caches not synced yet",
                        )
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// `<data dir>/endpoints.json`: where this instance serves, so that the SDKs and the CLI find
/// the API server, the kubeconfig and the router without flags. Written when everything listens;
/// its presence does not mean the instance is still running.
fn write_endpoints(args: &UpArgs) -> anyhow::Result<()> {
    let endpoints = serde_json::json!({
        "apiServer": format!("https://{}", args.api_listen),
        "kubeconfig": args.data_dir.join("kubeconfig"),
        "router": format!("http://{}", args.router_listen),
        "routerTokenFile": args.data_dir.join("router-token"),
        "metrics": format!("http://{}/metrics", args.metrics_listen),
    });
    let path = args.data_dir.join("endpoints.json");
    let tmp = args.data_dir.join("endpoints.json.tmp");
    fs_err::write(&tmp, serde_json::to_vec_pretty(&endpoints)?)?;
    fs_err::rename(&tmp, &path)?;
    Ok(())
}

/// `kubectl logs`: the container logs the engine keeps for each sandbox (Pod UID), as
/// [`agent_sandbox_node::logs`] serves them (current or previous instance, tail, limit,
/// follow).
struct EngineLogs(Arc<SandboxEngine>);

impl agent_sandbox_apiserver::PodLogs for EngineLogs {
    fn logs(
        &self,
        pod: &serde_json::Value,
        container: &str,
        query: &std::collections::HashMap<String, String>,
    ) -> futures::future::BoxFuture<'static, Result<axum::body::Body, String>> {
        use agent_sandbox_node::logs;
        let opened = (|| {
            let opts = logs::LogOptions::from_query(query)?;
            let pod: k8s_openapi::api::core::v1::Pod =
                serde_json::from_value(pod.clone()).map_err(|e| e.to_string())?;
            logs::check_status(&pod, container, opts.previous)?;
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            logs::stream(Arc::clone(&self.0), &uid, container, &opts).map_err(|e| e.to_string())
        })();
        Box::pin(async move { opened.map(axum::body::Body::from_stream) })
    }
}

/// `kubectl exec` and `kubectl cp`: commands in the sandboxes' running containers, as
/// [`agent_sandbox_node::exec`] runs them (pipes or a terminal, resizes, the exit code; killed
/// when the client goes away).
struct EngineExec(Arc<SandboxEngine>);

impl agent_sandbox_apiserver::PodExec for EngineExec {
    fn check(&self, pod: &serde_json::Value, container: &str) -> Result<(), String> {
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(pod.clone()).map_err(|e| e.to_string())?;
        agent_sandbox_node::exec::check(&self.0, &pod, container)
    }

    fn exec(
        &self,
        pod: &serde_json::Value,
        container: &str,
        request: &agent_sandbox_apiserver::ExecRequest,
    ) -> futures::future::BoxFuture<'static, Result<agent_sandbox_apiserver::ExecStreams, String>>
    {
        use agent_sandbox_node::exec;
        let engine = Arc::clone(&self.0);
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let container = container.to_string();
        let opts = exec::ExecOptions {
            command: request.command.clone(),
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            tty: request.tty,
            size: request.size,
        };
        Box::pin(async move {
            let s = exec::start(&engine, &uid, &container, &opts)
                .await
                .map_err(|e| e.to_string())?;
            let mut process = s.process;
            Ok(agent_sandbox_apiserver::ExecStreams {
                stdin: s.stdin,
                stdout: s.stdout,
                stderr: s.stderr,
                resize: s.terminal.map(|t| {
                    Box::new(move |cols, rows| {
                        let _ = t.resize(cols, rows);
                    }) as Box<dyn Fn(u16, u16) + Send + Sync>
                }),
                exit: Box::pin(async move { process.wait().await.map_err(|e| e.to_string()) }),
            })
        })
    }
}
