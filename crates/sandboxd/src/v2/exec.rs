//! `/v2` exec over plain HTTP: one request runs a command (argv or a shell string) with env,
//! cwd, stdin and a timeout, and streams stdout, stderr and the exit as NDJSON or SSE (chosen by
//! `Accept`), or answers one JSON document; plus the WebSocket PTY and the process list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use rustix::process::Signal;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::App;
use crate::error::ApiError;
use crate::grpc::resolve_cwd;
use crate::process::{self, Exit, KillOnDrop, SpawnError, SpawnSpec, StdinSink};

/// A command as argv or as a string run by `/bin/sh -c`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CommandSpec {
    /// Executed directly.
    Argv(Vec<String>),
    /// Run through `/bin/sh -c`.
    Shell(String),
}

/// Body of `POST /v2/exec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// What to run.
    pub command: Option<CommandSpec>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory under the root.
    pub cwd: Option<String>,
    /// Seconds before the process group is killed.
    pub timeout: Option<f64>,
    /// Text fed to stdin (then closed); stdin is /dev/null otherwise.
    pub stdin: Option<String>,
    /// Output limit per stream in bytes.
    pub max_output_bytes: Option<usize>,
}

/// How the answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// One JSON object per line.
    Ndjson,
    /// Server-sent events.
    Sse,
    /// One JSON document at the end.
    Json,
}

/// Picks the encoding from `Accept`.
pub fn wire(headers: &HeaderMap) -> Wire {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/event-stream") {
        Wire::Sse
    } else if accept.contains("application/json") && !accept.contains("ndjson") {
        Wire::Json
    } else {
        Wire::Ndjson
    }
}

/// Encodes one event for the wire.
pub fn encode(wire: Wire, event: &Value) -> Bytes {
    match wire {
        Wire::Sse => {
            let kind = event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("message");
            Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
        }
        _ => Bytes::from(format!("{event}\n")),
    }
}

/// A streaming response of encoded events.
pub fn stream_response(wire: Wire, rx: mpsc::Receiver<Value>) -> Response {
    let body = Body::from_stream(futures::StreamExt::map(
        crate::rest::receiver_stream(rx),
        move |v| Ok::<_, std::convert::Infallible>(encode(wire, &v)),
    ));
    let content_type = if wire == Wire::Sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Decodes UTF-8 across chunk boundaries: an incomplete trailing sequence waits for the next
/// chunk; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Adds bytes, returns the text complete so far.
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let cut = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
    /// Whatever is left.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

pub(crate) fn spawn_error(e: SpawnError) -> ApiError {
    match e {
        SpawnError::Empty => ApiError::invalid("command is required"),
        e @ SpawnError::NotFound { .. } => ApiError::not_found(e.to_string()),
        e @ SpawnError::Permission { .. } => ApiError::denied(e.to_string()),
        e @ SpawnError::Other { .. } => ApiError::internal(e.to_string()),
    }
}

fn exit_json(exit: Exit, timed_out: bool, truncated: bool, started: Instant) -> Value {
    json!({
        "type": "exit",
        "exit_code": exit.shell_code(),
        "signal": exit.signal(),
        "timed_out": timed_out,
        "truncated": truncated,
        "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// `POST /v2/exec`.
pub(crate) async fn exec(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    match exec_inner(app, wire(&headers), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn exec_inner(app: Arc<App>, wire: Wire, body: Bytes) -> Result<Response, ApiError> {
    let req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid exec request: {e}")))?;
    let argv = match req.command {
        Some(CommandSpec::Argv(a)) if !a.is_empty() => a,
        Some(CommandSpec::Shell(s)) if !s.trim().is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), s]
        }
        _ => {
            return Err(ApiError::invalid(
                "command is required (an argv array or a shell string)",
            ));
        }
    };
    let timeout = match req.timeout {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            return Err(ApiError::invalid(format!(
                "timeout {t} must be a positive number of seconds"
            )));
        }
        Some(t) => Duration::from_secs_f64(t),
        None => app.config.default_exec_timeout,
    };
    let cwd = resolve_cwd(&app, req.cwd.as_deref()).map_err(ApiError::from_confine)?;
    let limit = req.max_output_bytes.unwrap_or(app.config.max_output_bytes);
    let spec = SpawnSpec {
        argv: argv.clone(),
        env: req.env.into_iter().collect(),
        cwd,
        stdin: req.stdin.is_some(),
        ..SpawnSpec::default()
    };
    let mut child = app.sup.spawn(spec).map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (req.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let managed = app.sup.register(child.pid, argv, "exec", None, None);
    let registered = Registered {
        app: app.clone(),
        id: managed.id,
    };
    if wire == Wire::Json {
        // Run to the end right here: no task, no channel, one answer. A client that goes away
        // drops this future, and with it the process group (KillOnDrop) and the registration.
        let mut answer = Answer::default();
        run(child, &managed, timeout, limit, &mut answer).await;
        drop(registered);
        return Ok(Json(answer.finish()).into_response());
    }
    let (mut tx, rx) = mpsc::channel::<Value>(32);
    tokio::spawn(async move {
        let _registered = registered;
        run(child, &managed, timeout, limit, &mut tx).await;
    });
    Ok(stream_response(wire, rx))
}

/// Removes a process from the registry when dropped, however its run ends.
struct Registered {
    app: Arc<App>,
    id: i32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.app.sup.remove(self.id);
    }
}

/// Where the events of a run go: a streaming response, or the one JSON answer.
trait Events: Send {
    /// Delivers one event; false once nobody listens.
    fn send(&mut self, event: Value) -> impl Future<Output = bool> + Send;
    /// Resolves once nobody listens.
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

impl Events for mpsc::Sender<Value> {
    async fn send(&mut self, event: Value) -> bool {
        mpsc::Sender::send(self, event).await.is_ok()
    }
    async fn closed(&self) {
        mpsc::Sender::closed(self).await;
    }
}

/// The single JSON document of `Accept: application/json`, folded from the events.
#[derive(Debug, Default)]
struct Answer {
    pid: Value,
    exit: Option<Value>,
    stdout: String,
    stderr: String,
}

impl Answer {
    fn finish(self) -> Value {
        let mut result = json!({});
        if !self.pid.is_null() {
            result["pid"] = self.pid;
        }
        if let Some(exit) = self.exit {
            for k in [
                "exit_code",
                "signal",
                "timed_out",
                "truncated",
                "duration_ms",
            ] {
                result[k] = exit[k].clone();
            }
        }
        result["stdout"] = Value::String(self.stdout);
        result["stderr"] = Value::String(self.stderr);
        result
    }
}

impl Events for Answer {
    async fn send(&mut self, mut event: Value) -> bool {
        match event["type"].as_str() {
            Some("stdout") => self.stdout.push_str(event["data"].as_str().unwrap_or("")),
            Some("stderr") => self.stderr.push_str(event["data"].as_str().unwrap_or("")),
            Some("start") => self.pid = event["pid"].take(),
            Some("exit") => self.exit = Some(event),
            _ => {}
        }
        true
    }
    async fn closed(&self) {
        std::future::pending().await
    }
}

/// Bytes read from a pipe in one go (the chunk size of the events).
const OUTPUT_CHUNK: usize = 64 * 1024;

/// One output stream of a run: its pipe (until the end), what was counted against the limit,
/// and the UTF-8 decoder.
struct Output {
    pipe: Option<tokio::net::unix::pipe::Receiver>,
    buf: Vec<u8>,
    kind: &'static str,
    taken: usize,
    dec: Utf8Carry,
}

impl Output {
    fn new(pipe: Option<tokio::net::unix::pipe::Receiver>, kind: &'static str) -> Self {
        Output {
            pipe,
            buf: Vec::new(),
            kind,
            taken: 0,
            dec: Utf8Carry::default(),
        }
    }

    /// Reads the next chunk into `buf` (cancel-safe); 0 at the end.
    async fn read(&mut self) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(0);
        };
        self.buf.clear();
        // Capacity without zeroing: a quiet command costs no 64 KiB memset per stream.
        self.buf.reserve(OUTPUT_CHUNK);
        pipe.read_buf(&mut self.buf).await
    }

    /// Counts the chunk in `buf` against `limit` and decodes what fits; the event to send.
    fn event(&mut self, limit: usize, truncated: &mut bool) -> Option<Value> {
        let room = limit.saturating_sub(self.taken);
        if self.buf.len() > room {
            *truncated = true;
        }
        let take = self.buf.len().min(room);
        self.taken += take;
        if take == 0 {
            return None;
        }
        let text = self.dec.push(&self.buf[..take]);
        (!text.is_empty()).then(|| json!({"type": self.kind, "data": text}))
    }
}

/// Runs a started child to the end, sending `start`, `stdout`, `stderr` and `exit` events. The
/// pipes are read here, in the same task as the exit and the deadline are awaited.
async fn run(
    child: process::Child,
    managed: &process::Managed,
    timeout: Duration,
    limit: usize,
    events: &mut impl Events,
) {
    let started = Instant::now();
    let pid = child.pid;
    let mut guard = KillOnDrop::new(pid);
    let _ = events
        .send(json!({"type": "start", "pid": pid, "process_id": managed.id}))
        .await;
    let mut out = Output::new(child.stdout, "stdout");
    let mut err = Output::new(child.stderr, "stderr");
    let (mut truncated, mut timed_out) = (false, false);
    let mut exit_rx = child.exit;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut exit: Option<Exit> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    // Once the client is gone, `closed()` stays ready: it must be taken once, or the loop
    // would spin and starve the reads that report the exit.
    let mut client_gone = false;
    loop {
        let readers_done = out.pipe.is_none() && err.pipe.is_none();
        if exit.is_some() && (readers_done || client_gone) {
            break;
        }
        let drain = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let chunk = tokio::select! {
            r = out.read(), if out.pipe.is_some() => match r {
                Ok(n) if n > 0 => out.event(limit, &mut truncated),
                _ => {
                    out.pipe = None;
                    None
                }
            },
            r = err.read(), if err.pipe.is_some() => match r {
                Ok(n) if n > 0 => err.event(limit, &mut truncated),
                _ => {
                    err.pipe = None;
                    None
                }
            },
            e = &mut exit_rx, if exit.is_none() => {
                exit = Some(e.unwrap_or(Exit::Code(-1)));
                managed.done.store(true, Ordering::SeqCst);
                drain_until = Some(tokio::time::Instant::now() + crate::grpc::PIPE_DRAIN_GRACE);
                None
            }
            _ = &mut deadline, if exit.is_none() && !timed_out => {
                timed_out = true;
                let _ = process::signal_group(pid, Signal::KILL);
                None
            }
            _ = events.closed(), if !client_gone => {
                client_gone = true;
                let _ = process::signal_group(pid, Signal::KILL);
                None
            }
            _ = drain => break,
        };
        if let Some(event) = chunk
            && !events.send(event).await
        {
            let _ = process::signal_group(pid, Signal::KILL);
        }
    }
    guard.disarm();
    for o in [&mut out, &mut err] {
        let rest = o.dec.finish();
        if !rest.is_empty() {
            let _ = events.send(json!({"type": o.kind, "data": rest})).await;
        }
    }
    let exit = exit.unwrap_or(Exit::Code(-1));
    let _ = events
        .send(exit_json(exit, timed_out, truncated, started))
        .await;
}

/// Query of `GET /v2/pty`.
#[derive(Debug, Deserialize)]
pub struct PtyQuery {
    /// Shell string to run (default: the login shell).
    pub command: Option<String>,
    /// Columns.
    pub cols: Option<u16>,
    /// Rows.
    pub rows: Option<u16>,
    /// Working directory under the root.
    pub cwd: Option<String>,
}

/// `GET /v2/pty`: a terminal over WebSocket. Binary frames carry terminal bytes both ways; text
/// frames carry JSON control messages (`resize`, `signal`, `input`), and the server ends with
/// `{"type":"exit",...}`.
pub(crate) async fn pty(
    State(app): State<Arc<App>>,
    Query(q): Query<PtyQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let cwd = match resolve_cwd(&app, q.cwd.as_deref()) {
        Ok(c) => c,
        Err(e) => return ApiError::from_confine(e).into_response(),
    };
    let argv = match q.command {
        Some(c) if !c.trim().is_empty() => vec!["/bin/sh".to_string(), "-c".to_string(), c],
        _ => {
            let shell = if std::path::Path::new("/bin/bash").exists() {
                "/bin/bash"
            } else {
                "/bin/sh"
            };
            vec![shell.to_string(), "-i".to_string()]
        }
    };
    let spec = SpawnSpec {
        argv: argv.clone(),
        env: vec![("TERM".into(), "xterm-256color".into())],
        cwd,
        pty: Some((q.cols.unwrap_or(80), q.rows.unwrap_or(24))),
        ..SpawnSpec::default()
    };
    let child = match app.sup.spawn(spec) {
        Ok(c) => c,
        Err(e) => return spawn_error(e).into_response(),
    };
    // The terminal is activity for as long as it is open, not only while it was being opened.
    let open = app.activity.open();
    ws.on_upgrade(move |socket| async move {
        pty_session(app, child, argv, socket).await;
        drop(open);
    })
}

async fn pty_session(
    app: Arc<App>,
    child: process::Child,
    argv: Vec<String>,
    mut socket: WebSocket,
) {
    let Some(pty) = child.pty.clone() else { return };
    let managed = app.sup.register(
        child.pid,
        argv,
        "pty",
        Some(StdinSink::Pty(pty.clone())),
        Some(pty.clone()),
    );
    let mut guard = KillOnDrop::new(child.pid);
    let (otx, mut orx) = mpsc::channel::<Vec<u8>>(16);
    let reader = tokio::spawn(process::pump(pty.clone(), 16 * 1024, otx, |b| b));
    let mut exit_rx = child.exit;
    let mut reader_done = false;
    let exit = loop {
        tokio::select! {
            out = orx.recv(), if !reader_done => match out {
                Some(data) => {
                    let sent = socket.send(Message::Binary(data.into())).await;
                    if sent.is_err() {
                        let _ = process::signal_group(child.pid, Signal::KILL);
                    }
                }
                None => reader_done = true,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    let _ = pty.write_all(&data).await;
                }
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("resize") => {
                            let cols = v["cols"].as_u64().unwrap_or(80).min(u16::MAX as u64) as u16;
                            let rows = v["rows"].as_u64().unwrap_or(24).min(u16::MAX as u64) as u16;
                            let _ = pty.resize(cols, rows);
                        }
                        Some("signal") => {
                            if let Some(sig) = parse_signal(&v["signal"]) {
                                let _ = managed.signal(sig);
                            }
                        }
                        Some("input") => {
                            let _ = pty.write_all(v["data"].as_str().unwrap_or("").as_bytes()).await;
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = process::signal_group(child.pid, Signal::KILL);
                }
            },
            e = &mut exit_rx => break e.unwrap_or(Exit::Code(-1)),
        }
    };
    guard.disarm();
    managed.done.store(true, Ordering::SeqCst);
    while let Ok(Some(data)) = tokio::time::timeout(crate::grpc::PTY_QUIET, orx.recv()).await {
        let _ = socket.send(Message::Binary(data.into())).await;
    }
    reader.abort();
    let end = json!({"type": "exit", "exit_code": exit.shell_code(), "signal": exit.signal()});
    let _ = socket.send(Message::Text(end.to_string().into())).await;
    let _ = socket.send(Message::Close(None)).await;
    app.sup.remove(managed.id);
}

/// Parses a signal given as a name (`SIGTERM`, `TERM`) or a number.
pub fn parse_signal(v: &Value) -> Option<Signal> {
    let n = match v {
        Value::Number(n) => n.as_i64()? as i32,
        Value::String(s) => {
            let s = s.trim().to_ascii_uppercase();
            let s = s.strip_prefix("SIG").unwrap_or(&s);
            match s {
                "HUP" => 1,
                "INT" => 2,
                "QUIT" => 3,
                "KILL" => 9,
                "USR1" => 10,
                "USR2" => 12,
                "TERM" => 15,
                "CONT" => 18,
                "STOP" => 19,
                other => other.parse().ok()?,
            }
        }
        _ => return None,
    };
    Signal::from_named_raw(n)
}

/// `GET /v2/processes`.
pub(crate) async fn list_processes(State(app): State<Arc<App>>) -> Response {
    let list: Vec<Value> = app
        .sup
        .list()
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "pid": m.pid,
                "command": m.argv,
                "origin": m.origin,
                "pty": m.pty.is_some(),
                "running": !m.done.load(Ordering::SeqCst),
                "started_at": chrono::DateTime::<chrono::Utc>::from(m.started_at).to_rfc3339(),
            })
        })
        .collect();
    Json(json!({ "processes": list })).into_response()
}

/// `POST /v2/processes/{id}/signal` with `{"signal": "SIGTERM"}`.
pub(crate) async fn signal_process(
    State(app): State<Arc<App>>,
    Path(id): Path<i32>,
    body: Bytes,
) -> Response {
    let Some(m) = app.sup.get(id) else {
        return ApiError::not_found(format!(
            "process {id} not found; list them with GET /v2/processes"
        ))
        .into_response();
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(sig) = parse_signal(&v["signal"]) else {
        return ApiError::invalid(format!(
            "signal {} is not a known signal name or number",
            v["signal"]
        ))
        .into_response();
    };
    match m.signal(sig) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::internal(format!("signalling process {id}: {e}")).into_response(),
    }
}
