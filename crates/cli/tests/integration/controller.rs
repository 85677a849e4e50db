//! `agent-sandbox controller` as a process: two replicas against the embedded API server's
//! kubeconfig elect one leader, only the leader reconciles, a released lease passes to the
//! standby, a stolen lease makes the leader exit non-zero; and start-up errors say what to do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, unreachable_kubeconfig};

use agent_sandbox_api::v1beta1::Sandbox;
use agent_sandbox_apiserver::{ApiServer, Config as ServerConfig, RunningApiServer};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_agent-sandbox");
const LEASE: &str = "a3317529.agent-sandbox.x-k8s.io";
const NS: &str = "default";

/// A controller process, killed on drop; its stderr goes to a file shown on failure.
struct Replica {
    child: Child,
    metrics: u16,
    health: u16,
    log: PathBuf,
}

impl Replica {
    fn start(kubeconfig: &Path, dir: &Path, name: &str) -> Self {
        let (metrics, health) = (free_port(), free_port());
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .arg("controller")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--leader-election-namespace",
                NS,
                "--metrics-bind-address",
                &format!("127.0.0.1:{metrics}"),
                "--health-probe-bind-address",
                &format!("127.0.0.1:{health}"),
                "--enable-webhook=false",
                "--leader-election-lease-duration=3s",
                "--leader-election-renew-deadline=2s",
                "--leader-election-retry-period=300ms",
                "--log-level=info",
            ])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs_err::File::create(&log).unwrap().into_parts().0)
            .spawn()
            .expect("start agent-sandbox controller");
        Self {
            child,
            metrics,
            health,
            log,
        }
    }

    fn logs(&self) -> String {
        fs_err::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self) -> Option<String> {
        http_get(self.metrics, "/metrics").await.map(|(_, b)| b)
    }

    /// `Some(true)` while this replica reports itself leader.
    async fn leading(&self) -> Option<bool> {
        let m = self.metrics().await?;
        let line = format!("leader_election_master_status{{name=\"{LEASE}\"}} ");
        let v = m.lines().find_map(|l| l.strip_prefix(line.as_str()))?;
        Some(v.trim() == "1")
    }

    async fn sandbox_reconciles(&self) -> u64 {
        let Some(m) = self.metrics().await else {
            return 0;
        };
        m.lines()
            .filter(|l| l.starts_with("controller_runtime_reconcile_total{controller=\"sandbox\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "the controller did not exit within {timeout:?}; its log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET; `None` while nothing listens.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

async fn server(dir: &Path) -> RunningApiServer {
    let mut cfg = ServerConfig::new(dir.join("apiserver"));
    cfg.tcp_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.socket_path = None;
    cfg.node_name = "test-node".into();
    ApiServer::start(cfg).await.expect("start the API server")
}

async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_sandbox(client: &kube::Client, name: &str) {
    let sb: Sandbox = serde_json::from_value(json!({
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"podTemplate": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}}
    }))
    .unwrap();
    Api::<Sandbox>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &sb)
        .await
        .expect("create Sandbox");
}

async fn pod_exists(client: &kube::Client, name: &str) -> Option<()> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|_| ())
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_that_alone_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let client = server.client();
    let kc = server.kubeconfig_path().to_path_buf();
    let a = Replica::start(&kc, dir.path(), "a");
    let b = Replica::start(&kc, dir.path(), "b");
    let logs = || format!("--- a ---\n{}\n--- b ---\n{}", a.logs(), b.logs());

    // Exactly one leads; the other reports 0 and is still ready (it waits as a standby).
    let t = Duration::from_secs(60);
    eventually("one replica to lead", t, logs, || async {
        match (a.leading().await, b.leading().await) {
            (Some(x), Some(y)) if x != y => Some(()),
            _ => None,
        }
    })
    .await;
    let a_leads = a.leading().await == Some(true);
    let (mut leader, standby) = if a_leads { (a, b) } else { (b, a) };
    let logs = || {
        format!(
            "--- leader ---\n{}\n--- standby ---\n{}",
            leader.logs(),
            standby.logs()
        )
    };
    assert!(holder(&client).await.is_some(), "the Lease names a holder");
    for r in [&leader, &standby] {
        assert_eq!(http_get(r.health, "/healthz").await.map(|x| x.0), Some(200));
    }
    eventually(
        "the leader and the standby to be ready",
        t,
        logs,
        || async {
            let l = http_get(leader.health, "/readyz").await?.0;
            let s = http_get(standby.health, "/readyz").await?.0;
            (l == 200 && s == 200).then_some(())
        },
    )
    .await;

    // A Sandbox is reconciled (its Pod created) by the leader only.
    create_sandbox(&client, "first").await;
    eventually("the Pod of Sandbox first", t, logs, || {
        pod_exists(&client, "first")
    })
    .await;
    eventually("the leader's sandbox reconciles", t, logs, || async {
        (leader.sandbox_reconciles().await > 0).then_some(())
    })
    .await;
    assert_eq!(standby.sandbox_reconciles().await, 0, "{}", logs());
    assert_eq!(standby.leading().await, Some(false));

    // SIGTERM: the leader releases the Lease and exits 0; the standby takes over and reconciles.
    leader.terminate();
    let status = leader.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "leader exit: {status:?}\n{}",
        leader.logs()
    );
    assert!(
        leader.logs().contains("released leadership"),
        "{}",
        leader.logs()
    );
    let standby_logs = || standby.logs();
    eventually("the standby to take over", t, standby_logs, || async {
        (standby.leading().await == Some(true)).then_some(())
    })
    .await;
    create_sandbox(&client, "second").await;
    eventually("the Pod of Sandbox second", t, standby_logs, || {
        pod_exists(&client, "second")
    })
    .await;
    let mut new_leader = standby;

    // Another holder takes the Lease: renewals fail, the leader stops and exits non-zero.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    Api::<Lease>::namespaced(client.clone(), NS)
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 60}})),
        )
        .await
        .unwrap();
    let status = new_leader.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "a leader that lost its lease must exit non-zero"
    );
    let log = new_leader.logs();
    assert!(
        log.contains("lost leadership of Lease default/a3317529.agent-sandbox.x-k8s.io"),
        "{log}"
    );
    server.shutdown().await;
}

#[test]
fn missing_kubeconfig_says_what_to_do() {
    let out = Command::new(BIN)
        .args(["controller", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/kubeconfig") && err.contains("--kubeconfig"),
        "{err}"
    );
}

#[test]
fn unreachable_server_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (kc, port) = unreachable_kubeconfig(dir.path());
    let out = Command::new(BIN)
        .arg("controller")
        .arg("--kubeconfig")
        .arg(&kc)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the API server") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn flags_take_upstream_names_and_go_booleans() {
    let out = Command::new(BIN)
        .args(["controller", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--leader-elect",
        "--leader-election-namespace",
        "--metrics-bind-address",
        "--health-probe-bind-address",
        "--extensions",
        "--enable-tracing",
        "--sandbox-concurrent-workers",
        "--sandbox-claim-concurrent-workers",
        "--sandbox-warm-pool-concurrent-workers",
        "--sandbox-template-concurrent-workers",
        "--webhook-port",
        "--webhook-cert-dir",
        "--manage-webhook-certs",
        "--enable-webhook",
        "--kube-api-qps",
        "--cluster-domain",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    // `--flag=false` as in Go; a bad duration names the accepted units.
    let out = Command::new(BIN)
        .args([
            "controller",
            "--leader-elect=false",
            "--sandbox-warm-pool-readiness-grace-period=5x",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ns, us, ms, s, m, h"),
        "{err}"
    );
}

mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use tokio::sync::mpsc;

    struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let _ = self.0.send(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// A local OTLP/gRPC collector: its endpoint and what it receives.
    pub(crate) async fn collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>)
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(tx)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (format!("http://{addr}"), rx)
    }

    fn string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<&str> {
        match v.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// (service.name, span name, sandbox.name) of every span in `req`.
    pub(crate) fn spans(req: &ExportTraceServiceRequest) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string(&kv.value))
                .unwrap_or_default()
                .to_owned();
            for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let sandbox = s
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "sandbox.name")
                    .and_then(|kv| string(&kv.value))
                    .unwrap_or_default()
                    .to_owned();
                out.push((service.clone(), s.name.clone(), sandbox));
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_tracing_exports_reconcile_spans_over_otlp() {
    let (endpoint, mut rx) = otlp::collector().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let client = server.client();
    let log = dir.path().join("traced.log");
    let mut child = Command::new(BIN)
        .arg("controller")
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .args([
            "--enable-tracing",
            "--leader-elect=false",
            "--enable-webhook=false",
            "--metrics-bind-address=0",
            "--health-probe-bind-address=0",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs_err::File::create(&log).unwrap().into_parts().0)
        .spawn()
        .unwrap();
    let logs = || fs_err::read_to_string(&log).unwrap_or_default();
    create_sandbox(&client, "traced").await;
    let start = Instant::now();
    let mut seen = Vec::new();
    let found = loop {
        while let Ok(req) = rx.try_recv() {
            seen.extend(otlp::spans(&req));
        }
        if let Some(s) = seen.iter().find(|s| s.2 == "traced") {
            break s.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no span for Sandbox traced; received {seen:?}; log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(found.0, "agent-sandbox-controller");
    // Logs still go to stderr as usual.
    assert!(
        logs().contains("exporting traces over OTLP/gRPC"),
        "{}",
        logs()
    );
    let _ = child.kill();
    let _ = child.wait();
    server.shutdown().await;
}
