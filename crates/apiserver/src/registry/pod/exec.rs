//! `pods/exec` (`kubectl exec`, `kubectl cp`): kube-apiserver's checks of the request, then a
//! WebSocket upgrade speaking the `v5.channel.k8s.io` / `v4.channel.k8s.io` subprotocols to a
//! command that the node agent (a [`PodExec`] provider) starts in the Pod's container.
//!
//! Each binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the final
//! `metav1.Status` (success, or `NonZeroExitCode` with the exit code as its cause), 4 terminal
//! resizes (`{"Width":80,"Height":24}`); v5 adds `[255, channel]`, the client closing a channel
//! (stdin's end of file). When the client goes away first, the provider's process is dropped,
//! which kills the command. SPDY (kubectl before 1.30, or after a refused WebSocket upgrade) is
//! not served: such a request gets the same checks, then a 400 that says so.

use crate::api::{App, Target, form_pairs};
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The subprotocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// How long output is still forwarded after the command exited, for a process it left running
/// that holds the output open.
const DRAIN: Duration = Duration::from_secs(2);

/// How long a terminal's first size is waited for before the command starts without one.
const FIRST_RESIZE: Duration = Duration::from_secs(1);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What to run (the `pods/exec` query: `command`, `stdin`, `stdout`, `stderr`, `tty`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// argv.
    pub command: Vec<String>,
    /// Connect stdin.
    pub stdin: bool,
    /// Connect stdout.
    pub stdout: bool,
    /// Connect stderr (never with `tty`, as kubelet).
    pub stderr: bool,
    /// Run under a terminal.
    pub tty: bool,
    /// With `tty`: the terminal's size (columns, rows) from the client's first resize.
    pub size: Option<(u16, u16)>,
}

/// A command the provider started: the streams asked for, resizes, and the exit.
pub struct ExecStreams {
    /// The command's stdin; dropped when the client closes stdin.
    pub stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// The command's stdout (with a terminal, all its output).
    pub stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The command's stderr.
    pub stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Resizes the terminal to (columns, rows).
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
    /// Resolves to the exit code once the command exited; dropped before that, it must kill
    /// the command (the client went away).
    pub exit: BoxFuture<'static, Result<i32, String>>,
}

/// Runs commands in Pods' containers (registered by the node agent).
pub trait PodExec: Send + Sync {
    /// Whether a command can run in `container` of `pod` now; the error is the message of a
    /// 400 answer (kubelet's: `container not found ("main")`).
    fn check(&self, pod: &Value, container: &str) -> Result<(), String>;

    /// Start the command in `container` of `pod`.
    fn exec(
        &self,
        pod: &Value,
        container: &str,
        request: &ExecRequest,
    ) -> BoxFuture<'static, Result<ExecStreams, String>>;
}

impl ExecRequest {
    /// Read from the query (`command` repeats; booleans as kube-apiserver reads them). `tty`
    /// turns `stderr` off, as kubelet does.
    pub fn from_query(pairs: &[(String, String)]) -> Self {
        let flag = |k: &str| {
            crate::query::flag(pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()))
        };
        let tty = flag("tty");
        ExecRequest {
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr") && !tty,
            tty,
            size: None,
        }
    }
}

/// Serves `GET`/`POST .../pods/{name}/exec`.
pub async fn serve(app: Arc<App>, t: Target, req: Request) -> Response {
    match prepare(&app, &t, req).await {
        Ok(r) | Err(r) => r,
    }
}

async fn prepare(app: &App, t: &Target, req: Request) -> Result<Response, Response> {
    let (mut parts, _body) = req.into_parts();
    let pairs = form_pairs(parts.uri.query().unwrap_or(""));
    let request = ExecRequest::from_query(&pairs);
    let pod = app.get(t).map_err(IntoResponse::into_response)?;
    let pod = pod.value().clone();
    let pod_name = t.name.clone().unwrap_or_default();
    let named = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    let bad = |m: String| ApiError::bad_request(m).into_response();
    let container =
        super::log::pod_container(&pod, &pod_name, named).map_err(IntoResponse::into_response)?;
    if request.command.is_empty() {
        return Err(bad(
            "you must specify at least one command for the container".into(),
        ));
    }
    if !request.stdin && !request.stdout && !request.stderr {
        return Err(bad(
            "you must specify at least one of stdin, stdout, stderr".into(),
        ));
    }
    super::log::require_host(&pod, &pod_name).map_err(IntoResponse::into_response)?;
    let provider = app.exec.read().ok().and_then(|g| g.clone());
    let Some(provider) = provider else {
        return Err(bad(format!(
            "cannot exec in container {container} of pod {pod_name}: no node agent serves exec on this API server; run it with its node (agent-sandbox up)"
        )));
    };
    provider.check(&pod, &container).map_err(bad)?;
    let websocket = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !websocket {
        return Err(bad(format!(
            "pods/exec is served over WebSocket only (subprotocols {}); this request is not a WebSocket upgrade (SPDY is not supported): use kubectl 1.30 or newer (kubectl 1.29: set KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true)",
            PROTOCOLS.join(", ")
        )));
    }
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| bad(format!("the WebSocket upgrade of pods/exec failed: {e}")))?;
    let upgrade = upgrade.protocols(PROTOCOLS);
    let v5 = match upgrade.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(p) => p == PROTOCOLS[0],
        None => {
            let asked: Vec<String> = parts
                .headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok().map(String::from))
                .collect();
            return Err(bad(format!(
                "pods/exec speaks the WebSocket subprotocols {}; the client asked for [{}]",
                PROTOCOLS.join(", "),
                asked.join(", ")
            )));
        }
    };
    tracing::debug!(target: "apiserver::exec", pod = %pod_name, %container, command = ?request.command, v5, "exec");
    Ok(upgrade
        .on_failed_upgrade(|e| tracing::debug!(target: "apiserver::exec", "upgrade failed: {e}"))
        .on_upgrade(move |socket| async move {
            session(socket, v5, provider, pod, container, request).await;
        }))
}

/// A resize message's size (`{"Width":80,"Height":24}`): (columns, rows).
fn terminal_size(json: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(json).ok()?;
    let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
    Some((dim("Width")?, dim("Height")?))
}

/// One binary message: the channel byte, then the data.
fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// The error channel's `metav1.Status` for an exit code, as kubelet writes it.
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The error channel's `metav1.Status` when the command could not run.
pub fn internal_status(message: &str) -> Value {
    let message = format!("error executing command in container: {message}");
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

async fn pump(channel: u8, mut r: Box<dyn AsyncRead + Send + Unpin>, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn feed(mut w: Box<dyn AsyncWrite + Send + Unpin>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
            // The command closed its stdin: drop what else comes.
            while rx.recv().await.is_some() {}
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Runs one exec over an upgraded connection until the command exits (then the status goes on
/// the error channel) or the client goes away (then the command is dropped, which kills it).
async fn session(
    socket: WebSocket,
    v5: bool,
    provider: Arc<dyn PodExec>,
    pod: Value,
    container: String,
    mut request: ExecRequest,
) {
    let (mut sink, incoming) = socket.split();
    // kubelet's first message: an empty one on the lowest channel the client reads, which
    // tells it the streams are set up.
    let first = if request.stdout {
        STDOUT
    } else if request.stderr {
        STDERR
    } else {
        ERROR
    };
    if sink.send(frame(first, &[])).await.is_err() {
        return;
    }
    // With a terminal, kubectl sends its size first: the command starts with that size (a
    // command that asks at once, like `stty size`, would see 0x0 otherwise). What comes
    // before it is kept and handled once the command runs.
    let mut early = Vec::new();
    let mut incoming = incoming;
    if request.tty {
        let wait = tokio::time::sleep(FIRST_RESIZE);
        tokio::pin!(wait);
        while request.size.is_none() {
            tokio::select! {
                m = incoming.next() => match m {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(m)) => {
                        if let Message::Binary(b) = &m
                            && b.first() == Some(&RESIZE)
                        {
                            request.size = Some(terminal_size(&b[1..]).unwrap_or((0, 0)));
                        }
                        early.push(Ok(m));
                    }
                },
                _ = &mut wait => break,
            }
        }
    }
    let mut incoming = futures::stream::iter(early).chain(incoming);
    let started = provider.exec(&pod, &container, &request).await;
    let request = &request;
    let streams = match started {
        Ok(s) => s,
        Err(e) => {
            finish(&mut sink, &mut incoming, &internal_status(&e)).await;
            return;
        }
    };
    let ExecStreams {
        stdin,
        stdout,
        stderr,
        resize,
        mut exit,
    } = streams;
    let mut tasks = tokio::task::JoinSet::new();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(8);
    for (channel, r) in [(STDOUT, stdout), (STDERR, stderr)] {
        if let Some(r) = r {
            tasks.spawn(pump(channel, r, out_tx.clone()));
        }
    }
    drop(out_tx);
    let mut stdin_tx = stdin.map(|w| {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        tasks.spawn(feed(w, rx));
        tx
    });
    // Input that waits for room in the stdin queue; the client is not read meanwhile, so a
    // command that does not read its input slows the client down instead of filling memory,
    // while its output keeps flowing.
    let mut pending: Option<Bytes> = None;
    let mut code: Option<Result<i32, String>> = None;
    let mut output_open = true;
    let drain = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain);
    while code.is_none() || output_open {
        let waiting_stdin = pending.as_ref().and(stdin_tx.clone());
        tokio::select! {
            m = out_rx.recv(), if output_open => match m {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
                None => output_open = false,
            },
            r = &mut exit, if code.is_none() => {
                code = Some(r);
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            _ = &mut drain, if code.is_some() && output_open => output_open = false,
            permit = async move { waiting_stdin?.reserve_owned().await.ok() }, if pending.is_some() => {
                match (permit, pending.take()) {
                    (Some(p), Some(data)) => {
                        p.send(data);
                    }
                    _ => stdin_tx = None,
                }
            }
            m = incoming.next(), if pending.is_none() => match m {
                // The client went away or closed the connection: dropping `exit` kills the
                // command.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Binary(b))) => match b.first() {
                    Some(&STDIN) if b.len() > 1 => {
                        if let Some(tx) = &stdin_tx {
                            match tx.try_send(b.slice(1..)) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(data)) => pending = Some(data),
                                Err(mpsc::error::TrySendError::Closed(_)) => stdin_tx = None,
                            }
                        }
                    }
                    Some(&RESIZE) => {
                        if let (Some(f), Some((w, h))) = (&resize, terminal_size(&b[1..])) {
                            f(w, h);
                        }
                    }
                    Some(&CLOSE) if v5 && b.get(1) == Some(&STDIN) => stdin_tx = None,
                    _ => {}
                },
                Some(Ok(_)) => {}
            },
        }
    }
    let status = match code {
        Some(Ok(c)) => exit_status(&request.command, c),
        Some(Err(e)) => internal_status(&e),
        None => return,
    };
    finish(&mut sink, &mut incoming, &status).await;
    drop(tasks);
}

/// The status on the error channel, then a normal close, which the client answers after
/// reading the status (waited for a second, so the connection does not drop before).
async fn finish<S, R>(sink: &mut S, incoming: &mut R, status: &Value)
where
    S: futures::Sink<Message> + Unpin,
    R: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    if sink
        .send(frame(ERROR, status.to_string().as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_pairs(q)
    }

    #[test]
    fn the_query_gives_the_command_in_order_and_the_streams() {
        let r = ExecRequest::from_query(&pairs(
            "command=sh&command=-c&command=echo+a%26b&container=main&stdin=true&stdout=true&stderr=true&tty=false",
        ));
        assert_eq!(r.command, ["sh", "-c", "echo a&b"]);
        assert!(r.stdin && r.stdout && r.stderr && !r.tty);
        // A terminal has one output, as kubelet has it.
        let r = ExecRequest::from_query(&pairs("command=sh&stdout=1&stderr=1&tty=1"));
        assert!(r.tty && r.stdout && !r.stderr && !r.stdin);
    }

    #[test]
    fn exit_codes_become_kubelets_statuses() {
        let cmd = ["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(
            exit_status(&cmd, 0).to_string(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(
            exit_status(&cmd, 3).to_string(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
    }
}
