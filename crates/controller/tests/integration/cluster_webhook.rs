//! The conversion webhook over real HTTPS, trusted through the generated CA exactly as
//! kube-apiserver trusts it (the CRDs' caBundle and the Service DNS name); certificate reloads;
//! the caBundle patch against the embedded API server; and cluster mode's endpoints together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox_apiserver::{ApiServer, Config as ServerConfig, RunningApiServer};
use agent_sandbox_controller::Config;
use agent_sandbox_controller::certs::{self, WebhookCerts};
use agent_sandbox_controller::cluster::{Cluster, ClusterConfig, WebhookConfig};
use agent_sandbox_controller::leader::LeaderElectionConfig;
use agent_sandbox_controller::webhook::{ReloadingCert, TlsFiles, WebhookServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE: &str = "agent-sandbox-webhook-service";
const NAMESPACE: &str = "agent-sandbox-system";
/// The name kube-apiserver verifies when it calls a webhook Service.
const SERVICE_DNS: &str = "agent-sandbox-webhook-service.agent-sandbox-system.svc";

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn generate() -> WebhookCerts {
    certs::generate(SERVICE, NAMESPACE, "cluster.local").unwrap()
}

/// One HTTP/1.1 request over TLS trusting only `ca_pem`; returns (status, body).
async fn https(
    addr: SocketAddr,
    ca_pem: &str,
    server_name: &str,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    match tls.read_to_end(&mut buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    Ok((code, body))
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
}

fn review(api_version: &str, desired: &str, objects: Vec<Value>) -> String {
    json!({
        "apiVersion": api_version,
        "kind": "ConversionReview",
        "request": {"uid": "4b1d6d0e-0000-4000-8000-000000000001", "desiredAPIVersion": desired, "objects": objects}
    })
    .to_string()
}

fn suspended_v1alpha1_sandbox() -> Value {
    json!({
        "apiVersion": "agents.x-k8s.io/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"replicas": 0, "podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    })
}

async fn serve(files: TlsFiles) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let server = WebhookServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), files)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    (addr, tokio::spawn(server.serve(futures::future::pending())))
}

#[tokio::test]
async fn conversion_review_over_https_is_verified_with_the_generated_ca() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let c = generate();
    let files = c.write_to(dir.path()).unwrap();
    let (addr, task) = serve(files).await;

    // v1: a v1alpha1 Sandbox with replicas 0 becomes a Suspended v1beta1 Sandbox, state kept.
    let body = review(
        "apiextensions.k8s.io/v1",
        "agents.x-k8s.io/v1beta1",
        vec![suspended_v1alpha1_sandbox()],
    );
    let (code, out) = https(addr, &c.ca_pem, SERVICE_DNS, "POST", "/convert", &body)
        .await
        .unwrap();
    assert_eq!(code, 200, "{out}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(out["kind"], "ConversionReview");
    let resp = &out["response"];
    assert_eq!(resp["uid"], "4b1d6d0e-0000-4000-8000-000000000001");
    assert_eq!(resp["result"]["status"], "Success", "{resp}");
    let converted = &resp["convertedObjects"][0];
    assert_eq!(converted["apiVersion"], "agents.x-k8s.io/v1beta1");
    assert_eq!(converted["spec"]["operatingMode"], "Suspended");
    assert!(
        converted["metadata"]["annotations"]["api.agents.x-k8s.io/v1alpha1-sandbox-state"]
            .is_string()
    );

    // v1beta1 reviews are answered in kind; every SAN the certificate carries verifies.
    let body = review(
        "apiextensions.k8s.io/v1beta1",
        "agents.x-k8s.io/v1beta1",
        vec![suspended_v1alpha1_sandbox()],
    );
    for name in certs::dns_names(SERVICE, NAMESPACE, "cluster.local") {
        let (code, out) = https(addr, &c.ca_pem, &name, "POST", "/convert", &body)
            .await
            .unwrap();
        assert_eq!(code, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap()["apiVersion"],
            "apiextensions.k8s.io/v1beta1"
        );
    }

    // A conversion error is a Failure result naming the problem, not a transport error.
    let body = review(
        "apiextensions.k8s.io/v1",
        "agents.x-k8s.io/v1beta1",
        vec![
            json!({"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Gadget", "metadata": {"name": "g"}}),
        ],
    );
    let (code, out) = https(addr, &c.ca_pem, SERVICE_DNS, "POST", "/convert", &body)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["response"]["result"]["status"], "Failure");
    assert!(
        out["response"]["result"]["message"]
            .as_str()
            .unwrap()
            .contains("Gadget")
    );

    // Not a ConversionReview: 400 with a message.
    let (code, out) = https(addr, &c.ca_pem, SERVICE_DNS, "POST", "/convert", "{}")
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert!(out.contains("ConversionReview"), "{out}");

    // Verification is real: another CA, or a name not in the certificate, fails the handshake.
    let other = generate();
    assert!(
        https(addr, &other.ca_pem, SERVICE_DNS, "POST", "/convert", "{}")
            .await
            .is_err()
    );
    assert!(
        https(addr, &c.ca_pem, "example.com", "POST", "/convert", "{}")
            .await
            .is_err()
    );
    task.abort();
}

#[tokio::test]
async fn new_certificate_files_are_picked_up_and_broken_ones_ignored() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let first = generate();
    let files = first.write_to(dir.path()).unwrap();
    let cert = ReloadingCert::new(files.clone()).unwrap();
    assert!(!cert.reload_if_changed(), "nothing changed");
    std::thread::sleep(Duration::from_millis(20));
    generate().write_to(dir.path()).unwrap();
    assert!(cert.reload_if_changed(), "a new pair is loaded");
    std::thread::sleep(Duration::from_millis(20));
    fs_err::write(&files.key, "not a key").unwrap();
    assert!(!cert.reload_if_changed(), "a broken pair is not loaded");

    // The combined cert.pem fallback, and errors that name the file.
    let combined = tempfile::tempdir().unwrap();
    let pem = format!("{}{}", first.cert_pem, first.key_pem);
    fs_err::write(combined.path().join("cert.pem"), pem).unwrap();
    let f = TlsFiles::in_dir(combined.path(), "tls.crt", "tls.key");
    assert_eq!(f.cert, combined.path().join("cert.pem"));
    f.load().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let err = TlsFiles::in_dir(empty.path(), "tls.crt", "tls.key")
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls.crt") && err.contains("--manage-webhook-certs"),
        "{err}"
    );
}

async fn api_server(dir: &std::path::Path) -> RunningApiServer {
    let mut cfg = ServerConfig::new(dir);
    cfg.tcp_addr = None;
    cfg.socket_path = None;
    cfg.node_name = "test-node".into();
    ApiServer::start(cfg).await.unwrap()
}

#[tokio::test]
async fn ca_bundle_patch_of_the_four_crds_is_accepted_by_the_api_server() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let server = api_server(dir.path()).await;
    let c = generate();
    let mut patched = certs::patch_crds(server.client(), SERVICE, NAMESPACE, &c.ca_pem)
        .await
        .unwrap();
    patched.sort();
    assert_eq!(
        patched,
        [
            "sandboxclaims.extensions.agents.x-k8s.io",
            "sandboxes.agents.x-k8s.io",
            "sandboxtemplates.extensions.agents.x-k8s.io",
            "sandboxwarmpools.extensions.agents.x-k8s.io",
        ]
    );
    // (The embedded API server's CRDs are built in: it accepts the patch but keeps their spec,
    // since it converts in-process and calls no webhook. The patch body is checked in the unit
    // tests of `certs`.)
    server.shutdown().await;
}

#[tokio::test]
async fn cluster_mode_serves_metrics_health_and_the_webhook_while_leading() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let server = api_server(&dir.path().join("api")).await;
    let c = generate();
    let cert_dir = dir.path().join("certs");
    c.write_to(&cert_dir).unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut le = LeaderElectionConfig::new("default", "only");
    le.lease_duration = Duration::from_secs(2);
    le.renew_deadline = Duration::from_secs(1);
    le.retry_period = Duration::from_millis(200);
    let config = ClusterConfig {
        controllers: Config::default(),
        leader_election: Some(le),
        metrics_addr: Some(any),
        health_addr: Some(any),
        webhook: Some(WebhookConfig {
            addr: any,
            cert_dir: cert_dir.clone(),
            manage_certs: false,
            ..WebhookConfig::default()
        }),
    };
    let cluster = Cluster::bind(server.client(), config).await.unwrap();
    let (metrics, health, hook) = (
        cluster.metrics_addr().unwrap(),
        cluster.health_addr().unwrap(),
        cluster.webhook_addr().unwrap(),
    );
    assert_eq!(
        cluster.webhook_files().unwrap().cert,
        cert_dir.join("tls.crt")
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cluster.run(async {
        let _ = rx.await;
    }));

    let start = Instant::now();
    loop {
        let m = http_get(metrics, "/metrics")
            .await
            .map(|x| x.1)
            .unwrap_or_default();
        let ready = http_get(health, "/readyz").await.map(|x| x.0);
        if m.contains("leader_election_master_status{name=\"a3317529.agent-sandbox.x-k8s.io\"} 1")
            && ready == Some(200)
        {
            assert!(m.contains("agent_sandbox_build_info{"), "{m}");
            assert!(m.trim_end().ends_with("# EOF"), "{m}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not leading and ready: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(health, "/healthz").await.map(|x| x.0), Some(200));
    let body = review(
        "apiextensions.k8s.io/v1",
        "agents.x-k8s.io/v1alpha1",
        vec![json!({
            "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "s", "namespace": "default"},
            "spec": {"operatingMode": "Suspended", "podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
        })],
    );
    let (code, out) = https(hook, &c.ca_pem, SERVICE_DNS, "POST", "/convert", &body)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out["response"]["convertedObjects"][0]["spec"]["replicas"],
        0
    );

    // Cancel: run returns Ok and the lease is released.
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let lease = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        server.client(),
        "default",
    )
    .get("a3317529.agent-sandbox.x-k8s.io")
    .await
    .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None);
    server.shutdown().await;
}
