//! `pods/exec` against the real server: kube-apiserver's refusals, the WebSocket subprotocols
//! (v5 with its stdin close, v4, none) spoken byte for byte over the unix socket, the first
//! terminal size, a client that goes away, and the real kubectl over HTTPS. The provider runs
//! the commands as processes on this machine (the node's provider, which runs them in
//! sandboxes, is tested with kubectl in the node crate); no root needed.

use crate::common;

use agent_sandbox_apiserver::{ExecRequest, ExecStreams, PodExec};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// Runs the command as a process here; refuses container `stopped` as kubelet refuses a
/// container that does not run; records terminal sizes.
#[derive(Default)]
struct HostExec {
    sizes: Arc<Mutex<Vec<(u16, u16)>>>,
}

impl PodExec for HostExec {
    fn check(&self, _pod: &Value, container: &str) -> Result<(), String> {
        if container == "stopped" {
            return Err(format!("container not found ({container:?})"));
        }
        Ok(())
    }

    fn exec(
        &self,
        _pod: &Value,
        _container: &str,
        request: &ExecRequest,
    ) -> futures::future::BoxFuture<'static, Result<ExecStreams, String>> {
        let request = request.clone();
        let sizes = Arc::clone(&self.sizes);
        Box::pin(async move {
            if let Some(size) = request.size {
                sizes.lock().unwrap().push(size);
            }
            let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
            let mut child = tokio::process::Command::new(&request.command[0])
                .args(&request.command[1..])
                .stdin(pipe(request.stdin))
                .stdout(pipe(request.stdout))
                .stderr(pipe(request.stderr))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("{}: {e}", request.command[0]))?;
            Ok(ExecStreams {
                stdin: child
                    .stdin
                    .take()
                    .map(|w| Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
                stdout: child
                    .stdout
                    .take()
                    .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                stderr: child
                    .stderr
                    .take()
                    .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                resize: request.tty.then(|| {
                    Box::new(move |w, h| sizes.lock().unwrap().push((w, h)))
                        as Box<dyn Fn(u16, u16) + Send + Sync>
                }),
                exit: Box::pin(async move {
                    let st = child.wait().await.map_err(|e| e.to_string())?;
                    Ok(st.code().unwrap_or(137))
                }),
            })
        })
    }
}

async fn pods(ts: &common::TestServer) -> Api<Pod> {
    let api: Api<Pod> = Api::namespaced(ts.server.client(), "default");
    for (name, containers) in [
        (
            "p",
            json!([{"name": "c", "image": "busybox:1"}, {"name": "stopped", "image": "busybox:1"}]),
        ),
        ("one", json!([{"name": "c", "image": "busybox:1"}])),
    ] {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"containers": containers}}),
        )
        .unwrap();
        api.create(&PostParams::default(), &pod).await.unwrap();
    }
    api
}

/// The message of a plain (non-WebSocket) request's refusal.
async fn refusal(ts: &common::TestServer, query: &str) -> String {
    let req = axum::http::Request::get(format!("/api/v1/namespaces/default/pods/{query}"))
        .body(Vec::new())
        .unwrap();
    match ts.server.client().request_text(req).await {
        Ok(body) => panic!("{query} was accepted: {body}"),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 400, "{query}: {s:?}");
            s.message
        }
        Err(e) => panic!("{query}: {e}"),
    }
}

#[tokio::test]
async fn the_request_is_checked_as_kube_apiserver_does() {
    let ts = common::start().await;
    pods(&ts).await;
    let exec = common::core_resource(&ts, "pods/exec").await;
    assert_eq!(exec["kind"], "PodExecOptions");
    assert_eq!(exec["verbs"], json!(["create", "get"]));

    let ok = "p/exec?container=c&command=true&stdout=true";
    assert!(
        refusal(&ts, ok)
            .await
            .contains("no node agent serves exec on this API server")
    );
    ts.server.set_pod_exec(Arc::new(HostExec::default()));
    for (query, want) in [
        (
            "p/exec?container=c&stdout=true",
            "you must specify at least one command for the container",
        ),
        (
            "p/exec?container=nope&command=true&stdout=true",
            "container nope is not valid for pod p",
        ),
        (
            "p/exec?command=true&stdout=true",
            "a container name must be specified for pod p, choose one of: [c stopped]",
        ),
        (
            "p/exec?container=c&command=true",
            "you must specify at least one of stdin, stdout, stderr",
        ),
        (
            "p/exec?container=stopped&command=true&stdout=true",
            "container not found (\"stopped\")",
        ),
    ] {
        assert_eq!(refusal(&ts, query).await, want);
    }
    // A valid request that is not a WebSocket upgrade (SPDY, kubectl before 1.30).
    let m = refusal(&ts, "one/exec?command=true&stdout=true").await;
    assert!(m.contains("served over WebSocket only"), "{m}");
    assert!(m.contains("SPDY is not supported"), "{m}");
    // A Pod that does not exist.
    let req = axum::http::Request::get("/api/v1/namespaces/default/pods/none/exec?command=true")
        .body(Vec::new())
        .unwrap();
    match ts.server.client().request_text(req).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("{other:?}"),
    }
}

use common::Ws;

/// A WebSocket exec over the unix socket; the negotiated subprotocol.
async fn connect(
    ts: &common::TestServer,
    query: &str,
    protocols: &str,
) -> Result<(Ws, Option<String>), (u16, String)> {
    common::ws_connect(
        ts,
        &format!("/api/v1/namespaces/default/pods/{query}"),
        protocols,
    )
    .await
}

/// Everything the server sends until it closes: (channel, data) pairs, bounded.
async fn read_all(ws: &mut Ws) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let read = async {
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                Message::Binary(b) => out.push((b[0], b[1..].to_vec())),
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the exec ended within 20 s");
    out
}

fn channel(msgs: &[(u8, Vec<u8>)], ch: u8) -> String {
    msgs.iter()
        .filter(|(c, _)| *c == ch)
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect()
}

#[tokio::test]
async fn websocket_v5_v4_and_no_common_subprotocol() {
    let ts = common::start().await;
    pods(&ts).await;
    ts.server.set_pod_exec(Arc::new(HostExec::default()));
    let both = "v5.channel.k8s.io, v4.channel.k8s.io";

    // v5 is preferred; its close message ends stdin.
    let (mut ws, proto) = connect(
        &ts,
        "one/exec?command=cat&stdin=true&stdout=true&stderr=true",
        both,
    )
    .await
    .unwrap();
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    ws.send(Message::Binary(b"\x00hello ".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"\x00world".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let msgs = read_all(&mut ws).await;
    // kubelet's first message: empty, on stdout.
    assert_eq!(msgs[0], (1, vec![]));
    assert_eq!(channel(&msgs, 1), "hello world");
    assert_eq!(channel(&msgs, 3), r#"{"metadata":{},"status":"Success"}"#);

    // v4: streams apart, the exit code in kubelet's status.
    let (mut ws, proto) = connect(
        &ts,
        "one/exec?command=sh&command=-c&command=echo+out%3B+echo+err+%3E%262%3B+exit+3&stdout=true&stderr=true",
        "v4.channel.k8s.io",
    )
    .await
    .unwrap();
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    let msgs = read_all(&mut ws).await;
    assert_eq!(channel(&msgs, 1), "out\n");
    assert_eq!(channel(&msgs, 2), "err\n");
    assert_eq!(
        channel(&msgs, 3),
        r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c echo out; echo err >&2; exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
    );

    // A command the provider cannot start: kubelet's InternalError on the error channel.
    let (mut ws, _) = connect(&ts, "one/exec?command=/no/such/program&stdout=true", both)
        .await
        .unwrap();
    let status: Value = serde_json::from_str(&channel(&read_all(&mut ws).await, 3)).unwrap();
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(status["code"], 500);
    assert!(
        status["message"].as_str().unwrap().starts_with(
            "Internal error occurred: error executing command in container: /no/such/program"
        ),
        "{status}"
    );

    // No subprotocol in common: refused before the upgrade, naming both sides.
    let (code, body) = connect(
        &ts,
        "one/exec?command=true&stdout=true",
        "base64.channel.k8s.io",
    )
    .await
    .err()
    .unwrap();
    assert_eq!(code, 400);
    assert!(
        body.contains("v5.channel.k8s.io, v4.channel.k8s.io")
            && body.contains("base64.channel.k8s.io"),
        "{body}"
    );
}

#[tokio::test]
async fn a_terminal_starts_with_the_first_size_and_follows_resizes() {
    let ts = common::start().await;
    pods(&ts).await;
    let exec = HostExec::default();
    let sizes = Arc::clone(&exec.sizes);
    ts.server.set_pod_exec(Arc::new(exec));
    let (mut ws, _) = connect(
        &ts,
        "one/exec?command=cat&stdin=true&stdout=true&stderr=true&tty=true",
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    // Input before the size waits for the command; the size is what it starts with.
    ws.send(Message::Binary(b"\x00early\n".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(
        b"\x04{\"Width\":100,\"Height\":30}".to_vec().into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(
        b"\x04{\"Width\":132,\"Height\":43}".to_vec().into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let msgs = read_all(&mut ws).await;
    assert_eq!(channel(&msgs, 1), "early\n");
    assert_eq!(channel(&msgs, 2), "", "a terminal has no stderr");
    // The first size twice: as the start size and as the first resize.
    assert_eq!(
        *sizes.lock().unwrap(),
        vec![(100, 30), (100, 30), (132, 43)]
    );
}

fn alive(pid: u32) -> bool {
    fs_err::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(String::from))
        })
        .is_some_and(|state| state != "Z")
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_command() {
    let ts = common::start().await;
    pods(&ts).await;
    ts.server.set_pod_exec(Arc::new(HostExec::default()));
    let (mut ws, _) = connect(
        &ts,
        "one/exec?command=sh&command=-c&command=echo+%24%24%3B+exec+sleep+600&stdout=true",
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    let mut pid = String::new();
    while !pid.ends_with('\n') {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = m
            && b[0] == 1
        {
            pid.push_str(&String::from_utf8_lossy(&b[1..]));
        }
    }
    let pid: u32 = pid.trim().parse().unwrap();
    assert!(alive(pid));
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the command ({pid}) outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kubectl_bin() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

async fn kubectl(kc: &Path, args: &[&str], input: Option<&[u8]>) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl must be installed (set KUBECTL to its path)");
    if let (Some(mut w), Some(data)) = (child.stdin.take(), input) {
        w.write_all(data).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl ended within 60 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_speaks_websocket() {
    let ts = common::start().await;
    pods(&ts).await;
    let kc = ts.server.kubeconfig_path().to_path_buf();
    // Without a node agent: the refusal reaches kubectl (through its SPDY fallback).
    let (code, _, err) = kubectl(&kc, &["exec", "one", "--", "true"], None).await;
    assert!(
        code != 0 && err.contains("no node agent serves exec"),
        "{err}"
    );
    ts.server.set_pod_exec(Arc::new(HostExec::default()));
    let (code, out, err) = kubectl(
        &kc,
        &[
            "exec",
            "one",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (3, "out\n"), "{err}");
    assert!(
        err.starts_with("err\n") && err.contains("command terminated with exit code 3"),
        "{err}"
    );
    let (code, out, err) = kubectl(&kc, &["exec", "-i", "one", "--", "cat"], Some(b"hi\n")).await;
    assert_eq!((code, out.as_str()), (0, "hi\n"), "{err}");
    let (code, _, err) = kubectl(&kc, &["exec", "p", "-c", "stopped", "--", "true"], None).await;
    assert!(
        code != 0 && err.contains("container not found (\"stopped\")"),
        "{err}"
    );
}
