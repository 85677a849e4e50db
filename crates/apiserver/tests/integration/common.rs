//! Shared test helpers: a real server on loopback with a real SQLite file in a temp dir.
#![allow(dead_code, unreachable_pub)]

use agent_sandbox_apiserver::{ApiServer, Config, RunningApiServer};
use std::net::SocketAddr;

pub struct TestServer {
    pub server: RunningApiServer,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(dir);
    cfg.tcp_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.node_name = "test-node".into();
    cfg
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    f(&mut cfg);
    let server = ApiServer::start(cfg).await.expect("start server");
    TestServer { server, dir }
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

impl TestServer {
    /// A kube client over HTTPS built from the written kubeconfig.
    pub async fn https_client(&self) -> kube::Client {
        https_client_from(self.server.kubeconfig_path()).await
    }
}

pub async fn https_client_from(path: &std::path::Path) -> kube::Client {
    // Several TLS crypto backends are linked into workspace builds; choose one, as the server does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("client")
}
