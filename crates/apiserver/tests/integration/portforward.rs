//! `pods/portforward` against the real server: kube-apiserver's refusals, the real kubectl over
//! HTTPS (SPDY over WebSocket, its plain SPDY fallback, Services, a port nothing listens on),
//! the channel protocol spoken byte for byte over the unix socket, and clean-up after clients
//! that go away. The provider forwards a Pod's ports to TCP servers the test runs on loopback
//! (an echo server and a greeter); the node agent's provider, which reaches into sandboxes, is
//! not used here.

use crate::common;

use agent_sandbox_apiserver::{PodPortForward, Tunnel};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

/// The Pod's port served by the echo server.
const ECHO: u16 = 8080;
/// The Pod's port served by the greeter.
const GREET: u16 = 9090;
/// A port of the Pod nothing listens on.
const CLOSED: u16 = 7070;
/// What the greeter says first.
const BANNER: &[u8] = b"hello from the greeter\n";
/// How long any single step may take.
const WAIT: Duration = Duration::from_secs(30);
/// Connections a test server accepts at most.
const MAX_CONNECTIONS: usize = 5_000;

/// Forwards the Pod's ports to TCP servers on 127.0.0.1; refuses the Pod `pending` as kubelet
/// refuses a Pod that does not run.
struct HostPorts {
    ports: HashMap<u16, u16>,
}

impl PodPortForward for HostPorts {
    fn check(&self, pod: &Value) -> Result<(), String> {
        if pod["metadata"]["name"] == "pending" {
            return Err("pod pending is not running (phase Pending)".into());
        }
        Ok(())
    }

    fn connect(
        &self,
        _pod: &Value,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn Tunnel>, String>> {
        let local = self.ports.get(&port).copied();
        Box::pin(async move {
            let Some(local) = local else {
                return Err(format!(
                    "failed to connect to localhost:{port} inside the pod: dial tcp4 127.0.0.1:{port}: connect: connection refused"
                ));
            };
            let s = TcpStream::connect(("127.0.0.1", local))
                .await
                .map_err(|e| format!("dial tcp4 127.0.0.1:{local}: {e}"))?;
            Ok(Box::new(s) as Box<dyn Tunnel>)
        })
    }
}

/// A TCP server on 127.0.0.1 that echoes what it reads (after a banner, for the greeter) until
/// the client's end of input, then closes; it counts its connections.
struct Backend {
    port: u16,
    /// Connections open now.
    live: Arc<AtomicUsize>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decrements a count when dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    async fn start(banner: Option<&'static [u8]>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let live = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (l, a) = (Arc::clone(&live), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            for _ in 0..MAX_CONNECTIONS {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                a.fetch_add(1, Ordering::SeqCst);
                l.fetch_add(1, Ordering::SeqCst);
                let guard = Live(Arc::clone(&l));
                tokio::spawn(async move {
                    let _guard = guard;
                    let (mut r, mut w) = stream.into_split();
                    if let Some(b) = banner
                        && w.write_all(b).await.is_err()
                    {
                        return;
                    }
                    let _ =
                        timeout(Duration::from_secs(120), tokio::io::copy(&mut r, &mut w)).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Backend {
            port,
            live,
            accepted,
            task,
        }
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A server, its two backends, and the Pods `p` (running, labelled `app: pf`) and `pending`.
struct Fixture {
    ts: common::TestServer,
    echo: Backend,
    greeter: Backend,
    provider: Arc<HostPorts>,
    uid: String,
}

async fn fixture() -> Fixture {
    let ts = common::start().await;
    let echo = Backend::start(None).await;
    let greeter = Backend::start(Some(BANNER)).await;
    let provider = Arc::new(HostPorts {
        ports: HashMap::from([(ECHO, echo.port), (GREET, greeter.port)]),
    });
    let api: Api<Pod> = Api::namespaced(ts.server.client(), "default");
    let mut uid = String::new();
    for name in ["p", "pending"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "pf"}},
            "spec": {"containers": [{
                "name": "c",
                "image": "busybox:1",
                "ports": [
                    {"name": "http", "containerPort": ECHO},
                    {"name": "greet", "containerPort": GREET},
                ],
            }]},
        }))
        .unwrap();
        let pod = api.create(&PostParams::default(), &pod).await.unwrap();
        if name == "p" {
            uid = pod.metadata.uid.unwrap();
            // kubectl forwards to running Pods only.
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running"}})),
            )
            .await
            .unwrap();
        }
    }
    Fixture {
        ts,
        echo,
        greeter,
        provider,
        uid,
    }
}

impl Fixture {
    fn register(&self) {
        self.ts
            .server
            .set_pod_port_forward(Arc::clone(&self.provider) as Arc<dyn PodPortForward>);
    }

    /// Waits (bounded) until neither backend has a connection open.
    async fn wait_backends_idle(&self) {
        let deadline = Instant::now() + WAIT;
        while self.echo.live() + self.greeter.live() > 0 {
            assert!(
                Instant::now() < deadline,
                "connections to the Pod stayed open: echo {}, greeter {}",
                self.echo.live(),
                self.greeter.live()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `len` bytes that do not repeat with a short period.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Sends `data` to a local port and reads everything that comes back until the end.
async fn exchange(port: u16, data: &[u8]) -> Vec<u8> {
    let s = timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connected in time")
        .unwrap();
    let (mut r, mut w) = s.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut out = Vec::new();
    timeout(WAIT, r.read_to_end(&mut out))
        .await
        .expect("the forwarded connection ended in time")
        .unwrap();
    timeout(WAIT, writer)
        .await
        .expect("written in time")
        .unwrap();
    out
}

/// A round trip through the echo port, checked byte for byte.
async fn check_echo(port: u16, len: usize) {
    let data = pattern(len);
    let back = exchange(port, &data).await;
    assert_eq!(back.len(), data.len(), "echoed length");
    assert!(back == data, "the echo differs from what was sent");
}

/// The banner, then the echo, through the greeter port.
async fn check_greeter(port: u16, msg: &[u8]) {
    let back = exchange(port, msg).await;
    assert_eq!(back, [BANNER, msg].concat());
}

fn kubectl_bin() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// A running `kubectl port-forward`: its local ports in the order of its arguments, what it has
/// printed.
struct KubectlForward {
    child: tokio::process::Child,
    /// (local port, Pod port) per forwarded port.
    ports: Vec<(u16, u16)>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// Collects what `r` produces into `into` until its end.
fn collect(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
    lines: Option<mpsc::UnboundedSender<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = tokio::io::BufReader::new(&mut r);
        let mut line = String::new();
        // Bounded by the child's life: it ends when kubectl's pipe closes.
        for _ in 0..1_000_000 {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    into.lock().unwrap().push_str(&line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(line.trim_end().to_owned());
                    }
                }
            }
        }
    })
}

/// Starts `kubectl port-forward TARGET PORTS...` (with `env`) and waits for its `Forwarding
/// from 127.0.0.1:...` lines.
async fn kubectl_port_forward(
    kc: &Path,
    target: &str,
    ports: &[&str],
    flags: &[&str],
    env: &[(&str, &str)],
) -> KubectlForward {
    let mut child = tokio::process::Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kc)
        .args(["port-forward", "--address", "127.0.0.1"])
        .args(flags)
        .arg(target)
        .args(ports)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl must be installed (set KUBECTL to its path)");
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, mut lines) = mpsc::unbounded_channel();
    let readers = vec![
        collect(child.stdout.take().unwrap(), Arc::clone(&stdout), Some(tx)),
        collect(child.stderr.take().unwrap(), Arc::clone(&stderr), None),
    ];
    let mut forwarded = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while forwarded.len() < ports.len() {
        let line = tokio::time::timeout_at(deadline, lines.recv()).await;
        let Ok(Some(line)) = line else {
            let _ = child.start_kill();
            panic!(
                "kubectl port-forward {target} {ports:?} did not start: {}",
                stderr.lock().unwrap()
            );
        };
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            let (local, remote) = rest.split_once(" -> ").expect("Forwarding from A -> B");
            forwarded.push((local.parse().unwrap(), remote.parse().unwrap()));
        }
    }
    KubectlForward {
        child,
        ports: forwarded,
        stdout,
        stderr,
        readers,
    }
}

impl KubectlForward {
    fn local(&self, i: usize) -> u16 {
        self.ports[i].0
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) for kubectl to exit on its own; its exit code.
    async fn exited(&mut self, within: Duration) -> Option<i32> {
        let status = timeout(within, self.child.wait()).await.ok()?.unwrap();
        Some(status.code().unwrap_or(-1))
    }

    /// Kills kubectl; (stdout, stderr).
    async fn stop(mut self) -> (String, String) {
        let _ = self.child.start_kill();
        timeout(WAIT, self.child.wait())
            .await
            .expect("kubectl ended in time")
            .unwrap();
        for r in self.readers.drain(..) {
            let _ = timeout(WAIT, r)
                .await
                .expect("kubectl's output ended in time");
        }
        let out = self.stdout.lock().unwrap().clone();
        (out, self.stderr())
    }
}

/// kubectl's stderr less its informational log lines (`-v`): what it complained about.
fn complaints(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            let b = l.as_bytes();
            !(b.len() > 5 && b[0] == b'I' && b[1..5].iter().all(u8::is_ascii_digit))
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn assert_quiet(stderr: &str) {
    let c = complaints(stderr);
    assert!(c.is_empty(), "kubectl complained: {c:#?}");
}

/// Whether kubectl's `-v=6` log shows port-forward over WebSocket (the SPDY tunnel), else over
/// a plain SPDY upgrade (answered with 101).
fn over_websocket(stderr: &str) -> bool {
    let websocket = stderr.contains("tunneling_dialer.go")
        && stderr.contains("negotiated protocol: portforward.k8s.io");
    // kubectl 1.33 logs `verb="POST" ... status="101 Switching Protocols"`, earlier ones
    // `POST https://.../portforward 101 Switching Protocols`.
    let spdy = stderr.lines().any(|l| {
        (l.contains("verb=\"POST\"") || l.contains("] POST https://"))
            && l.contains("/pods/p/portforward")
            && l.contains("101 Switching Protocols")
    });
    assert!(websocket != spdy, "which transport? {stderr}");
    websocket
}

/// The message of a plain (non-WebSocket) request's refusal, with its code.
async fn refusal(f: &Fixture, path: &str) -> (u16, String) {
    let req = axum::http::Request::get(format!("/api/v1/namespaces/default/pods/{path}"))
        .body(Vec::new())
        .unwrap();
    match f.ts.server.client().request_text(req).await {
        Ok(body) => panic!("{path} was accepted: {body}"),
        Err(kube::Error::Api(s)) => (s.code, s.message),
        Err(e) => panic!("{path}: {e}"),
    }
}

use common::Ws;

/// A WebSocket port-forward over the unix socket with `protocols` offered; the negotiated
/// subprotocol, or the refusal's code and body.
async fn connect(
    f: &Fixture,
    query: &str,
    protocols: &str,
) -> Result<(Ws, Option<String>), (u16, String)> {
    let path = format!("/api/v1/namespaces/default/pods/p/portforward{query}");
    common::ws_connect(&f.ts, &path, protocols).await
}

/// The next channel message (binary protocol); `None` once the server closed.
async fn next_frame(ws: &mut Ws) -> Option<(u8, Vec<u8>)> {
    for _ in 0..1_000 {
        let m = timeout(WAIT, ws.next())
            .await
            .expect("a message in time")?
            .ok()?;
        match m {
            Message::Binary(b) => return Some((b[0], b[1..].to_vec())),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    panic!("only control messages");
}

/// Reads channel `ch` until `len` bytes came; panics on data on another data channel.
async fn read_channel(ws: &mut Ws, ch: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        if out.len() >= len {
            return out;
        }
        let (c, data) = next_frame(ws).await.expect("the session is up");
        assert_eq!(
            c,
            ch,
            "data on channel {c}: {:?}",
            String::from_utf8_lossy(&data)
        );
        out.extend_from_slice(&data);
    }
    panic!("{} of {len} bytes in 100 000 messages", out.len());
}

/// The next text message (base64 protocol).
async fn next_text(ws: &mut Ws) -> String {
    for _ in 0..1_000 {
        match timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            m => panic!("{m:?}"),
        }
    }
    panic!("only control messages");
}

fn frame(ch: u8, data: &[u8]) -> Message {
    Message::Binary([&[ch][..], data].concat().into())
}

/// The server's process's open file descriptors.
fn open_fds() -> usize {
    fs_err::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn the_request_is_checked_as_kube_apiserver_does() {
    let f = fixture().await;
    let pf = common::core_resource(&f.ts, "pods/portforward").await;
    assert_eq!(pf["kind"], "PodPortForwardOptions");
    assert_eq!(pf["verbs"], json!(["create", "get"]));
    assert_eq!(pf["namespaced"], true);

    // No provider yet.
    let (code, m) = refusal(&f, "p/portforward?ports=8080").await;
    assert_eq!(code, 400);
    assert!(m.contains("no node agent serves port-forward"), "{m}");
    // A Pod that does not exist: 404, provider or not.
    assert_eq!(refusal(&f, "none/portforward?ports=8080").await.0, 404);
    f.register();
    assert_eq!(refusal(&f, "none/portforward?ports=8080").await.0, 404);
    // The provider's refusal.
    assert_eq!(
        refusal(&f, "pending/portforward?ports=8080").await,
        (400, "pod pending is not running (phase Pending)".to_owned())
    );
    // Not an upgrade.
    assert_eq!(
        refusal(&f, "p/portforward?ports=8080").await,
        (400, "Upgrade request required".to_owned())
    );
    // The query is converted first, whatever the transport.
    assert_eq!(
        refusal(&f, "p/portforward?ports=70000").await,
        (
            400,
            r#"cannot convert to []int32: strconv.ParseUint: parsing "70000": value out of range"#
                .to_owned()
        )
    );

    // The channel protocol's refusals come before the upgrade.
    let status = |body: &str| -> (i64, String) {
        let s: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(s["kind"], "Status", "{body}");
        (
            s["code"].as_i64().unwrap(),
            s["message"].as_str().unwrap().to_owned(),
        )
    };
    for (query, want) in [
        (
            "?ports=70000",
            r#"cannot convert to []int32: strconv.ParseUint: parsing "70000": value out of range"#,
        ),
        ("", r#"query parameter "port" is required"#),
        ("?ports=0", r#"port "0" must be > 0"#),
        ("?ports=8080,0", r#"port "0" must be > 0"#),
    ] {
        for protocol in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""] {
            let (code, body) = connect(&f, query, protocol)
                .await
                .err()
                .unwrap_or_else(|| panic!("{query} with {protocol:?} was accepted"));
            assert_eq!(code, 400, "{query} {protocol:?}: {body}");
            assert_eq!(
                status(&body),
                (400, want.to_owned()),
                "{query} {protocol:?}"
            );
        }
    }
    // No subprotocol in common: refused, naming both sides.
    let (code, body) = connect(&f, "?ports=8080", "v5.channel.k8s.io")
        .await
        .err()
        .unwrap();
    assert_eq!(code, 400);
    let (_, m) = status(&body);
    assert!(
        m.contains("SPDY/3.1+portforward.k8s.io") && m.contains("v5.channel.k8s.io"),
        "{m}"
    );
    // Nothing was dialled.
    assert_eq!(f.echo.accepted() + f.greeter.accepted(), 0);
}

/// Both ports of one session, several connections in sequence and two at once.
async fn check_pod_ports(pf: &KubectlForward) {
    let (echo, greet) = (pf.local(0), pf.local(1));
    check_echo(echo, 1 << 20).await;
    check_greeter(greet, b"ping\n").await;
    for i in 0..5 {
        check_echo(echo, 1000 + i).await;
        check_greeter(greet, format!("hello {i}\n").as_bytes()).await;
    }
    let big = pattern(256 * 1024);
    let (a, ()) = tokio::join!(exchange(echo, &big), check_greeter(greet, b"at once\n"));
    assert!(a == big, "the concurrent echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_forwards_two_ports_of_a_pod_and_a_service() {
    let f = fixture().await;
    f.register();
    let kc = f.ts.server.kubeconfig_path().to_path_buf();

    // kubectl itself refuses a Pod whose phase is not Running.
    let out = timeout(
        WAIT,
        tokio::process::Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["port-forward", "pod/pending", "0:8080"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl ended in time")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "error: unable to forward port because pod is not running. Current status=Pending\n"
    );

    let pf = kubectl_port_forward(&kc, "pod/p", &["0:8080", "0:9090"], &["-v=6"], &[]).await;
    assert_eq!(pf.ports[0].1, ECHO);
    assert_eq!(pf.ports[1].1, GREET);
    check_pod_ports(&pf).await;
    let (out, err) = pf.stop().await;
    assert_quiet(&err);
    assert!(over_websocket(&err), "{err}");
    assert_eq!(out.matches("Handling connection for").count(), 14, "{out}");
    f.wait_backends_idle().await;
    assert_eq!(f.echo.accepted(), 7);
    assert_eq!(f.greeter.accepted(), 7);

    // A Service: kubectl picks a Pod by its selector and the target port from the Service.
    let services: Api<Service> = Api::namespaced(f.ts.server.client(), "default");
    for (name, target) in [("web", json!(8080)), ("greet", json!("greet"))] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "pf"}, "ports": [{"port": 80, "targetPort": target}]},
        }))
        .unwrap();
        services.create(&PostParams::default(), &svc).await.unwrap();
    }
    let pf = kubectl_port_forward(&kc, "svc/web", &["0:80"], &[], &[]).await;
    assert_eq!(
        pf.ports[0].1, ECHO,
        "port 80 of the Service is 8080 of the Pod"
    );
    check_echo(pf.local(0), 64 * 1024).await;
    let (_, err) = pf.stop().await;
    assert_quiet(&err);
    // A named target port is looked up in the Pod's containers.
    let pf = kubectl_port_forward(&kc, "svc/greet", &["0:80"], &[], &[]).await;
    assert_eq!(pf.ports[0].1, GREET, "targetPort greet is 9090 of the Pod");
    check_greeter(pf.local(0), b"named\n").await;
    let (_, err) = pf.stop().await;
    assert_quiet(&err);
    f.wait_backends_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_falls_back_to_spdy() {
    let f = fixture().await;
    f.register();
    let kc = f.ts.server.kubeconfig_path().to_path_buf();
    let pf = kubectl_port_forward(
        &kc,
        "pod/p",
        &["0:8080", "0:9090"],
        &["-v=6"],
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
    )
    .await;
    check_pod_ports(&pf).await;
    let (_, err) = pf.stop().await;
    assert_quiet(&err);
    assert!(!over_websocket(&err), "{err}");
    f.wait_backends_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_a_closed_port_and_ends() {
    let f = fixture().await;
    f.register();
    let kc = f.ts.server.kubeconfig_path().to_path_buf();
    for env in [&[][..], &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")][..]] {
        let mut pf = kubectl_port_forward(&kc, "pod/p", &["0:7070", "0:8080"], &[], env).await;
        let (closed, echo) = (pf.local(0), pf.local(1));
        check_echo(echo, 1000).await;
        // The connection to the closed port ends without data; the error comes on its error
        // stream, and kubectl (client-go) then closes the whole session on purpose.
        assert_eq!(exchange(closed, b"anyone?").await, b"");
        let code = pf.exited(WAIT).await;
        let (_, err) = pf.stop().await;
        assert_eq!(code, Some(1), "{err}");
        let want = format!(
            "an error occurred forwarding {closed} -> {CLOSED}: error forwarding port {CLOSED} to pod p_default, uid {}: failed to connect to localhost:{CLOSED} inside the pod: dial tcp4 127.0.0.1:{CLOSED}: connect: connection refused",
            f.uid
        );
        assert_eq!(
            complaints(&err).len(),
            2,
            "{env:?}: only the error and kubectl's end: {err}"
        );
        assert!(
            err.lines().next().unwrap().contains(&want),
            "{env:?}: {err}"
        );
        assert!(
            err.ends_with("error: lost connection to pod\n"),
            "{env:?}: {err}"
        );
        f.wait_backends_idle().await;
    }
    assert_eq!(f.echo.accepted(), 2);
}

#[tokio::test]
async fn the_channel_protocol_forwards_and_reports_a_closed_port() {
    let f = fixture().await;
    f.register();
    let (mut ws, proto) = connect(&f, "?ports=8080&ports=7070", "v4.channel.k8s.io")
        .await
        .unwrap();
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    // Each channel's first message is its port, little-endian.
    for (ch, port) in [(0, ECHO), (1, ECHO), (2, CLOSED), (3, CLOSED)] {
        assert_eq!(
            next_frame(&mut ws).await,
            Some((ch, port.to_le_bytes().to_vec()))
        );
    }
    ws.send(frame(0, b"hello")).await.unwrap();
    // The echo on channel 0 and the closed port's error on channel 3, in either order.
    let (mut echoed, mut error) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        if echoed.len() >= 5 && !error.is_empty() {
            break;
        }
        match next_frame(&mut ws).await.expect("the session is up") {
            (0, d) => echoed.extend(d),
            (3, d) => error.extend(d),
            (c, d) => panic!("channel {c}: {:?}", String::from_utf8_lossy(&d)),
        }
    }
    assert_eq!(echoed, b"hello");
    assert_eq!(
        String::from_utf8(error).unwrap(),
        format!(
            "error forwarding port {CLOSED} to pod p_default, uid {}: failed to connect to localhost:{CLOSED} inside the pod: dial tcp4 127.0.0.1:{CLOSED}: connect: connection refused",
            f.uid
        )
    );
    // Channel 0 keeps working; what is sent to the closed port or an error channel goes
    // nowhere.
    ws.send(frame(2, b"to nobody")).await.unwrap();
    ws.send(frame(1, b"not for the client")).await.unwrap();
    let data = pattern(300 * 1024);
    let (mut tx, mut rx) = ws.split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(10_000) {
            tx.send(frame(0, chunk)).await.unwrap();
        }
        tx
    });
    let mut back = Vec::new();
    for _ in 0..10_000 {
        if back.len() >= data.len() {
            break;
        }
        let m = timeout(WAIT, rx.next()).await.expect("echo in time");
        let Some(Ok(Message::Binary(b))) = m else {
            panic!("{m:?}")
        };
        assert_eq!(b[0], 0);
        back.extend_from_slice(&b[1..]);
    }
    assert!(back == data, "the echo on channel 0 differs");
    let mut ws = writer
        .await
        .unwrap()
        .reunite(rx)
        .expect("halves of one WebSocket");
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);
    f.wait_backends_idle().await;
    assert_eq!(f.echo.accepted(), 1);

    // Only a closed port: the session ends after its error, as kubelet's does.
    let (mut ws, _) = connect(&f, "?ports=7070", "v4.channel.k8s.io")
        .await
        .unwrap();
    let mut frames = Vec::new();
    for _ in 0..10 {
        let Some(fr) = next_frame(&mut ws).await else {
            break;
        };
        frames.push(fr);
    }
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[2].0, 1);
    assert!(
        frames[2]
            .1
            .starts_with(b"error forwarding port 7070 to pod p_default")
    );
}

#[tokio::test]
async fn the_base64_channel_protocol_and_none() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let f = fixture().await;
    f.register();
    let (mut ws, proto) = connect(&f, "?ports=9090", "v4.base64.channel.k8s.io")
        .await
        .unwrap();
    assert_eq!(proto.as_deref(), Some("v4.base64.channel.k8s.io"));
    // 9090 is 0x2382: [0x82, 0x23] in base64 after the channel digit.
    assert_eq!(next_text(&mut ws).await, "0giM=");
    assert_eq!(next_text(&mut ws).await, "1giM=");
    let read_base64 = async |ws: &mut Ws, len: usize| -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..100 {
            if got.len() >= len {
                break;
            }
            let t = next_text(ws).await;
            assert!(t.starts_with('0'), "{t}");
            got.extend(b64.decode(&t[1..]).unwrap());
        }
        got
    };
    assert_eq!(read_base64(&mut ws, BANNER.len()).await, BANNER);
    let msg = b"base64 round trip";
    ws.send(Message::Text(format!("0{}", b64.encode(msg)).into()))
        .await
        .unwrap();
    assert_eq!(read_base64(&mut ws, msg.len()).await, msg);
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);

    // No subprotocol: the binary channel protocol, and none is named in the answer.
    let (mut ws, proto) = connect(&f, "?ports=8080", "").await.unwrap();
    assert_eq!(proto, None);
    assert_eq!(next_frame(&mut ws).await, Some((0, vec![0x90, 0x1f])));
    assert_eq!(next_frame(&mut ws).await, Some((1, vec![0x90, 0x1f])));
    ws.send(frame(0, b"plain")).await.unwrap();
    assert_eq!(read_channel(&mut ws, 0, 5).await, b"plain");
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);
    f.wait_backends_idle().await;
}

/// Set, in a test binary started by [`in_own_process`], to the test that process runs.
const OWN_PROCESS: &str = "AGENT_SANDBOX_TEST_OWN_PROCESS";

/// Runs test `name` of this module again in a process of its own (its file descriptors are
/// counted, which tests running alongside in one process would disturb); true in that process.
async fn in_own_process(name: &str) -> bool {
    if std::env::var(OWN_PROCESS).as_deref() == Ok(name) {
        return true;
    }
    let test = format!("portforward::{name}");
    let out = timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(OWN_PROCESS, name)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the test ended within 10 minutes")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{test} failed:\n{text}");
    assert!(text.contains("1 passed"), "{test} did not run:\n{text}");
    false
}

/// One channel-protocol session to the echo port with a tiny round trip.
async fn tiny_session(f: &Fixture, i: usize) {
    let (mut ws, _) = connect(f, "?ports=8080", "v4.channel.k8s.io")
        .await
        .unwrap();
    assert_eq!(next_frame(&mut ws).await, Some((0, vec![0x90, 0x1f])));
    assert_eq!(next_frame(&mut ws).await, Some((1, vec![0x90, 0x1f])));
    let msg = format!("session {i}");
    ws.send(frame(0, msg.as_bytes())).await.unwrap();
    assert_eq!(read_channel(&mut ws, 0, msg.len()).await, msg.as_bytes());
    ws.send(Message::Close(None)).await.unwrap();
}

/// Starts echoing a large amount through a local port and returns once data is flowing both
/// ways; the task is still writing.
async fn start_transfer(port: u16) -> (tokio::net::tcp::OwnedReadHalf, JoinHandle<()>) {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = pattern(64 * 1024);
        for _ in 0..1024 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    // Each read brings at least a byte.
    for _ in 0..256 * 1024 {
        if got >= 256 * 1024 {
            break;
        }
        let n = timeout(WAIT, r.read(&mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        assert!(n > 0, "the forward ended early");
        got += n;
    }
    (r, writer)
}

/// Ends a transfer [`start_transfer`] began by going away mid-stream.
fn vanish((r, writer): (tokio::net::tcp::OwnedReadHalf, JoinHandle<()>)) {
    writer.abort();
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_go_away_and_many_sessions_leave_nothing_behind() {
    if !in_own_process("clients_that_go_away_and_many_sessions_leave_nothing_behind").await {
        return;
    }
    let f = fixture().await;
    f.register();
    let kc = f.ts.server.kubeconfig_path().to_path_buf();
    // What a first session and a first kubectl create once (such as the runtime's signal pipe).
    tiny_session(&f, 0).await;
    let pf = kubectl_port_forward(&kc, "pod/p", &["0:8080"], &[], &[]).await;
    check_echo(pf.local(0), 10).await;
    pf.stop().await;
    f.wait_backends_idle().await;
    let baseline = open_fds();
    let mut dialled = f.echo.accepted();

    // A channel-protocol client that goes away in the middle of a transfer it does not read.
    let (ws, _) = connect(&f, "?ports=8080", "v4.channel.k8s.io")
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    let writer = tokio::spawn(async move {
        let chunk = frame(0, &pattern(64 * 1024));
        for _ in 0..1024 {
            if tx.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let mut got = 0;
    for _ in 0..100_000 {
        if got >= 256 * 1024 {
            break;
        }
        let m = timeout(WAIT, rx.next()).await.expect("echo in time");
        if let Some(Ok(Message::Binary(b))) = m {
            got += b.len() - 1;
        }
    }
    assert!(got >= 256 * 1024, "only {got} bytes echoed");
    assert_eq!(f.echo.live(), 1);
    writer.abort();
    drop(rx);
    dialled += 1;
    f.wait_backends_idle().await;

    // 1 000 sessions, 50 at a time.
    let sessions = futures::stream::iter(0..1000)
        .map(|i| tiny_session(&f, i))
        .buffer_unordered(50)
        .collect::<Vec<()>>();
    timeout(Duration::from_secs(300), sessions)
        .await
        .expect("1000 sessions within 5 minutes");
    dialled += 1000;

    // kubectl, over WebSocket and over SPDY: many connections, a local client that goes away
    // mid-stream, then kubectl itself killed mid-stream.
    for env in [&[][..], &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")][..]] {
        let pf = kubectl_port_forward(&kc, "pod/p", &["0:8080"], &[], env).await;
        for i in 0..100 {
            check_echo(pf.local(0), 1 + i).await;
        }
        vanish(start_transfer(pf.local(0)).await);
        check_echo(pf.local(0), 1000).await;
        let transfer = start_transfer(pf.local(0)).await;
        let (_, err) = pf.stop().await;
        vanish(transfer);
        // kubectl reports only the local client that went away ("error copying from remote
        // stream to local connection: ... connection reset by peer" and the like).
        let c = complaints(&err);
        assert!(
            c.iter().all(|l| l.contains("Unhandled Error")
                && l.contains("local connection")
                && (l.contains("connection reset by peer") || l.contains("broken pipe"))),
            "{env:?}: {c:#?}"
        );
        dialled += 103;
        f.wait_backends_idle().await;
    }
    assert_eq!(f.echo.accepted(), dialled);

    // Every connection and session is gone: the server holds what it held before.
    let deadline = Instant::now() + WAIT;
    loop {
        let now = open_fds();
        if now <= baseline + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "file descriptors: {baseline} before, {now} after"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
