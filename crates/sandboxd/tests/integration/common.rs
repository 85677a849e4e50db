//! Test harness: starts the real `sandboxd` binary on loopback ephemeral ports with a fresh
//! root directory, and stops it (and removes the root) when dropped.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agent_sandbox_sandboxd::pb::process_service_client::ProcessServiceClient;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running daemon.
pub struct Daemon {
    child: Child,
    /// `http://127.0.0.1:port` of the REST API.
    pub rest: String,
    /// `http://127.0.0.1:port` of the legacy API.
    pub legacy: String,
    /// `http://127.0.0.1:port` of the gRPC API.
    pub grpc: String,
    /// Base directory of this test (the root is `base/root`).
    pub base: PathBuf,
    /// The sandbox root.
    pub root: PathBuf,
}

impl Daemon {
    /// Starts a daemon with extra flags.
    pub fn start(extra: &[&str]) -> Daemon {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("sandboxd-it-{}-{n}", std::process::id()));
        let _ = fs_err::remove_dir_all(&base);
        let root = base.join("root");
        fs_err::create_dir_all(&root).unwrap();
        Self::start_with_root(base, root, extra)
    }

    /// Starts a daemon on a given root.
    pub fn start_with_root(base: PathBuf, root: PathBuf, extra: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
            .args([
                "--listen-host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--rest-port",
                "0",
                "--legacy-port",
                "0",
            ])
            .arg("--root-dir")
            .arg(&root)
            .args(extra)
            .env("RUST_LOG", "warn")
            // One worker, as in a sandbox limited to one CPU: a task that never yields shows.
            .env("TOKIO_WORKER_THREADS", "1")
            .env("SANDBOX_TEST_VISIBLE", "yes")
            .env("SANDBOX_API_TOKEN", "hidden")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sandboxd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read announce line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad announce {line:?}: {e}"));
        let addr = |k: &str| format!("http://{}", v[k].as_str().unwrap());
        Daemon {
            rest: addr("rest"),
            legacy: addr("legacy"),
            grpc: addr("grpc"),
            child,
            base,
            root,
        }
    }

    /// A gRPC client.
    pub async fn grpc_client(&self) -> ProcessServiceClient<tonic::transport::Channel> {
        ProcessServiceClient::connect(self.grpc.clone())
            .await
            .expect("connect gRPC")
    }

    /// URL on the REST port.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.rest)
    }

    /// URL on the legacy port.
    pub fn lurl(&self, path: &str) -> String {
        format!("{}{path}", self.legacy)
    }

    /// OS pid of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..300 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs_err::remove_dir_all(&self.base);
    }
}

/// An HTTP client.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GETs `url` and returns its JSON body.
pub async fn get_json(url: &str) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// Asserts a JSON error body with `code`.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "status");
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["code"], code, "code in {body}");
    body["message"].as_str().expect("message").to_string()
}

/// Percent-encodes every byte but unreserved ones (like Python's `quote(path, safe='')`).
pub fn quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
