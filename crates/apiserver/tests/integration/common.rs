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

/// A WebSocket client over the server's unix socket.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

/// Opens a WebSocket to `path` (from `/api/...`) over the unix socket with the server's token,
/// offering `protocols` (none when empty): the negotiated subprotocol, or the refusal's status
/// code and body. The handshake is bounded in time.
pub async fn ws_connect(
    ts: &TestServer,
    path: &str,
    protocols: &str,
) -> Result<(Ws, Option<String>), (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tokio::net::UnixStream::connect(ts.server.socket_path().unwrap())
        .await
        .unwrap();
    let mut req = format!("ws://localhost{path}")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert(
        "Authorization",
        format!("Bearer {}", ts.server.token()).parse().unwrap(),
    );
    if !protocols.is_empty() {
        h.insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let handshake = tokio_tungstenite::client_async(req, stream);
    match tokio::time::timeout(std::time::Duration::from_secs(20), handshake)
        .await
        .expect("the WebSocket handshake ended in time")
    {
        Ok((ws, resp)) => {
            let p = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((ws, p))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{e}"),
    }
}

/// The entry of `name` (e.g. `pods/exec`) in the core group's discovery (`/api/v1`).
pub async fn core_resource(ts: &TestServer, name: &str) -> serde_json::Value {
    let d: serde_json::Value = ts
        .server
        .client()
        .request(
            axum::http::Request::get("/api/v1")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    d["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} in discovery"))
        .clone()
}
