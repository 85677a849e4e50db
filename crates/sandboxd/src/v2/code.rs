//! run_code: persistent interpreter contexts for python, javascript (node) and bash. Each
//! context is a long-lived driver child (scripts embedded below) that reads requests on stdin
//! and answers with JSON lines on an extra pipe, while the cell's own output flows through the
//! child's stdout and stderr. Variables survive between calls, like a notebook kernel.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use rustix::process::Signal;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::App;
use crate::error::ApiError;
use crate::process::{self, Exit, SpawnSpec};
use crate::v2::exec::{Utf8Carry, Wire, spawn_error, stream_response, wire};

const PYTHON_DRIVER: &str = include_str!("../kernels/python.py");
const NODE_DRIVER: &str = include_str!("../kernels/node.js");
const BASH_DRIVER: &str = include_str!("../kernels/bash.sh");

/// After an interrupt, how long a cell gets to stop before its kernel is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// A supported language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// CPython.
    Python,
    /// Node.js.
    JavaScript,
    /// GNU bash.
    Bash,
}

impl Lang {
    /// Parses a language name.
    pub fn parse(name: &str) -> Option<Lang> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Some(Lang::Python),
            "javascript" | "js" | "node" | "nodejs" => Some(Lang::JavaScript),
            "bash" | "sh" | "shell" => Some(Lang::Bash),
            _ => None,
        }
    }
    /// Canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::JavaScript => "javascript",
            Lang::Bash => "bash",
        }
    }
}

struct KernelProc {
    pid: i32,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    proto: Lines<BufReader<pipe::Receiver>>,
    exit: oneshot::Receiver<Exit>,
    managed_id: i32,
}

/// One persistent context.
pub struct Context {
    id: String,
    lang: Lang,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    created_at: SystemTime,
    executions: AtomicU64,
    pid: AtomicI32,
    kernel: tokio::sync::Mutex<Option<KernelProc>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("lang", &self.lang)
            .finish()
    }
}

impl Context {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "language": self.lang.name(),
            "cwd": self.cwd.display().to_string(),
            "created_at": chrono::DateTime::<chrono::Utc>::from(self.created_at).to_rfc3339(),
            "execution_count": self.executions.load(Ordering::SeqCst),
            "pid": match self.pid.load(Ordering::SeqCst) { 0 => Value::Null, p => json!(p) },
        })
    }
}

/// The set of live contexts.
#[derive(Debug, Default)]
pub struct Kernels {
    map: Mutex<HashMap<String, Arc<Context>>>,
    next: AtomicU64,
}

impl Kernels {
    /// Kills every context's kernel.
    pub fn shutdown(&self) {
        for ctx in self.map.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let pid = ctx.pid.load(Ordering::SeqCst);
            if pid > 0 {
                let _ = process::signal_group(pid, Signal::KILL);
            }
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Context>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}

fn interpreter(app: &App, lang: Lang) -> Vec<String> {
    match lang {
        Lang::Python => {
            let py = app.config.python.clone().unwrap_or_else(|| {
                if std::path::Path::new("/usr/bin/python3").exists() {
                    PathBuf::from("/usr/bin/python3")
                } else {
                    PathBuf::from("python3")
                }
            });
            vec![
                py.display().to_string(),
                "-u".into(),
                "-c".into(),
                PYTHON_DRIVER.into(),
            ]
        }
        Lang::JavaScript => vec![
            app.config.node.display().to_string(),
            "-e".into(),
            NODE_DRIVER.into(),
        ],
        Lang::Bash => vec![
            "bash".into(),
            "--noprofile".into(),
            "--norc".into(),
            "-c".into(),
            BASH_DRIVER.into(),
            "sandboxd-bash".into(),
        ],
    }
}

fn start_kernel(app: &App, ctx: &Context) -> Result<KernelProc, ApiError> {
    let (proto_r, proto_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| ApiError::internal(format!("creating the kernel pipe: {e}")))?;
    let proto_w: Arc<OwnedFd> = Arc::new(proto_w);
    let fd_number = {
        use std::os::fd::AsRawFd;
        proto_w.as_fd().as_raw_fd()
    };
    let mut env = ctx.env.clone();
    env.push(("SANDBOXD_PROTO_FD".into(), fd_number.to_string()));
    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    let argv = interpreter(app, ctx.lang);
    let spec = SpawnSpec {
        argv: argv.clone(),
        env,
        cwd: ctx.cwd.clone(),
        stdin: true,
        inherit: Some(proto_w),
        ..SpawnSpec::default()
    };
    let mut child = app.sup.spawn(spec).map_err(|e| {
        let mut err = spawn_error(e);
        err.message = format!("starting the {} kernel: {}", ctx.lang.name(), err.message);
        err
    })?;
    let proto = pipe::Receiver::from_owned_fd(proto_r)
        .map_err(|e| ApiError::internal(format!("kernel pipe: {e}")))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ApiError::internal("kernel started without its pipes"));
    };
    let label = vec![
        argv[0].clone(),
        format!("<{} kernel {}>", ctx.lang.name(), ctx.id),
    ];
    let managed = app.sup.register(child.pid, label, "kernel", None, None);
    ctx.pid.store(child.pid, Ordering::SeqCst);
    Ok(KernelProc {
        pid: child.pid,
        stdin,
        stdout,
        stderr,
        proto: BufReader::new(proto).lines(),
        exit: child.exit,
        managed_id: managed.id,
    })
}

fn stop_kernel(app: &App, ctx: &Context, kernel: Option<KernelProc>) {
    if let Some(k) = kernel {
        let _ = process::signal_group(k.pid, Signal::KILL);
        app.sup.remove(k.managed_id);
    }
    ctx.pid.store(0, Ordering::SeqCst);
}

/// Reads whatever is buffered in a non-blocking pipe right now.
fn drain_now(pipe: &pipe::Receiver) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = rustix::io::read(pipe.as_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 64 << 20 {
            break;
        }
    }
    out
}

/// Body of `POST /v2/code/contexts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContext {
    /// Language (default python).
    pub language: Option<String>,
    /// Context id (default: generated).
    pub id: Option<String>,
    /// Working directory under the root.
    pub cwd: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn create(app: &App, req: NewContext) -> Result<Arc<Context>, ApiError> {
    let name = req.language.as_deref().unwrap_or("python");
    let lang = Lang::parse(name).ok_or_else(|| {
        ApiError::invalid(format!(
            "language {name:?} is not supported; use python, javascript or bash"
        ))
    })?;
    let cwd = crate::grpc::resolve_cwd(app, req.cwd.as_deref()).map_err(ApiError::from_confine)?;
    let id = match req.id {
        Some(id) if id.is_empty() || id.len() > 128 || id.contains('/') => {
            return Err(ApiError::invalid(format!(
                "context id {id:?} must be 1-128 characters without '/'"
            )));
        }
        Some(id) => id,
        None => format!(
            "ctx-{}",
            app.kernels.next.fetch_add(1, Ordering::SeqCst) + 1
        ),
    };
    let ctx = Arc::new(Context {
        id: id.clone(),
        lang,
        cwd,
        env: req.env.into_iter().collect(),
        created_at: SystemTime::now(),
        executions: AtomicU64::new(0),
        pid: AtomicI32::new(0),
        kernel: tokio::sync::Mutex::new(None),
    });
    let mut map = app.kernels.map.lock().unwrap_or_else(|e| e.into_inner());
    if map.contains_key(&id) {
        return Err(ApiError::conflict(format!(
            "context {id:?} already exists; delete it first or pick another id"
        )));
    }
    map.insert(id, ctx.clone());
    Ok(ctx)
}

/// `POST /v2/code/contexts`.
pub(crate) async fn create_context(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req: NewContext = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body })
    {
        Ok(r) => r,
        Err(e) => {
            return ApiError::invalid(format!("invalid context request: {e}")).into_response();
        }
    };
    let ctx = match create(&app, req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // Start the kernel now so the first run does not pay for it.
    let mut kernel = ctx.kernel.lock().await;
    match start_kernel(&app, &ctx) {
        Ok(k) => *kernel = Some(k),
        Err(e) => {
            drop(kernel);
            app.kernels
                .map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ctx.id);
            return e.into_response();
        }
    }
    drop(kernel);
    (StatusCode::CREATED, Json(ctx.json())).into_response()
}

/// `GET /v2/code/contexts`.
pub(crate) async fn list_contexts(State(app): State<Arc<App>>) -> Response {
    let mut all: Vec<Arc<Context>> = app
        .kernels
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Json(json!({ "contexts": all.iter().map(|c| c.json()).collect::<Vec<_>>() })).into_response()
}

fn missing(id: &str) -> Response {
    ApiError::not_found(format!(
        "code context {id:?} not found; create it with POST /v2/code/contexts"
    ))
    .into_response()
}

/// `DELETE /v2/code/contexts/{id}`.
pub(crate) async fn delete_context(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Response {
    let Some(ctx) = app
        .kernels
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id)
    else {
        return missing(&id);
    };
    let pid = ctx.pid.load(Ordering::SeqCst);
    if pid > 0 {
        let _ = process::signal_group(pid, Signal::KILL);
    }
    let kernel = ctx.kernel.lock().await.take();
    stop_kernel(&app, &ctx, kernel);
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /v2/code/contexts/{id}/interrupt`: SIGINT to the running cell.
pub(crate) async fn interrupt_context(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Response {
    let Some(ctx) = app.kernels.get(&id) else {
        return missing(&id);
    };
    let pid = ctx.pid.load(Ordering::SeqCst);
    if pid > 0 {
        let _ = process::signal_group(pid, Signal::INT);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /v2/code/contexts/{id}/restart`: a fresh kernel, state dropped.
pub(crate) async fn restart_context(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Response {
    let Some(ctx) = app.kernels.get(&id) else {
        return missing(&id);
    };
    let pid = ctx.pid.load(Ordering::SeqCst);
    if pid > 0 {
        let _ = process::signal_group(pid, Signal::KILL);
    }
    let mut kernel = ctx.kernel.lock().await;
    stop_kernel(&app, &ctx, kernel.take());
    match start_kernel(&app, &ctx) {
        Ok(k) => *kernel = Some(k),
        Err(e) => return e.into_response(),
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Body of `POST /v2/code/run`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Source of the cell.
    pub code: Option<String>,
    /// Language; selects the default context of that language when `context` is absent.
    pub language: Option<String>,
    /// Context id.
    pub context: Option<String>,
    /// Seconds before the cell is interrupted.
    pub timeout: Option<f64>,
    /// Output limit per stream in bytes.
    pub max_output_bytes: Option<usize>,
}

/// `POST /v2/code/run`: streams `stdout`, `stderr`, `result`, `error` and a final `end` event.
pub(crate) async fn run_code(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match run_inner(app, wire(&headers), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run_inner(app: Arc<App>, wire: Wire, body: Bytes) -> Result<Response, ApiError> {
    let req: RunRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid run_code request: {e}")))?;
    let code = req
        .code
        .ok_or_else(|| ApiError::invalid("code is required"))?;
    let lang = match &req.language {
        Some(l) => Some(Lang::parse(l).ok_or_else(|| {
            ApiError::invalid(format!(
                "language {l:?} is not supported; use python, javascript or bash"
            ))
        })?),
        None => None,
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
    let ctx = match &req.context {
        Some(id) => {
            let ctx = app.kernels.get(id).ok_or_else(|| {
                ApiError::not_found(format!(
                    "code context {id:?} not found; create it with POST /v2/code/contexts"
                ))
            })?;
            if let Some(l) = lang
                && l != ctx.lang
            {
                return Err(ApiError::invalid(format!(
                    "context {id:?} runs {}, not {}",
                    ctx.lang.name(),
                    l.name()
                )));
            }
            ctx
        }
        None => {
            let lang = lang.unwrap_or(Lang::Python);
            let id = format!("default-{}", lang.name());
            match app.kernels.get(&id) {
                Some(c) => c,
                None => match create(
                    &app,
                    NewContext {
                        language: Some(lang.name().into()),
                        id: Some(id.clone()),
                        cwd: None,
                        env: BTreeMap::new(),
                    },
                ) {
                    Ok(c) => c,
                    Err(_) => app
                        .kernels
                        .get(&id)
                        .ok_or_else(|| ApiError::internal("default context vanished"))?,
                },
            }
        }
    };
    let limit = req.max_output_bytes.unwrap_or(app.config.max_output_bytes);
    let (tx, mut rx) = mpsc::channel::<Value>(32);
    tokio::spawn(execute(app.clone(), ctx, code, timeout, limit, tx));
    if wire != Wire::Json {
        return Ok(stream_response(wire, rx));
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut results = Vec::new();
    let mut error = Value::Null;
    let mut end = Value::Null;
    while let Some(ev) = rx.recv().await {
        match ev["type"].as_str() {
            Some("stdout") => stdout.push_str(ev["data"].as_str().unwrap_or("")),
            Some("stderr") => stderr.push_str(ev["data"].as_str().unwrap_or("")),
            Some("result") => results.push(ev),
            Some("error") => error = ev,
            Some("end") => end = ev,
            _ => {}
        }
    }
    Ok(Json(json!({
        "stdout": stdout, "stderr": stderr, "results": results, "error": error,
        "status": end["status"], "execution_count": end["execution_count"],
        "truncated": end["truncated"], "duration_ms": end["duration_ms"], "context": end["context"],
    }))
    .into_response())
}

struct Output {
    limit: usize,
    out: (usize, Utf8Carry),
    err: (usize, Utf8Carry),
    truncated: bool,
}

impl Output {
    async fn emit(&mut self, is_err: bool, data: &[u8], tx: &mpsc::Sender<Value>) {
        let (n, dec) = if is_err {
            (&mut self.err.0, &mut self.err.1)
        } else {
            (&mut self.out.0, &mut self.out.1)
        };
        let room = self.limit.saturating_sub(*n);
        if data.len() > room {
            self.truncated = true;
        }
        let take = data.len().min(room);
        *n += take;
        let text = dec.push(&data[..take]);
        if !text.is_empty() {
            let _ = tx
                .send(json!({"type": if is_err { "stderr" } else { "stdout" }, "data": text}))
                .await;
        }
    }
}

async fn execute(
    app: Arc<App>,
    ctx: Arc<Context>,
    code: String,
    timeout: Duration,
    limit: usize,
    tx: mpsc::Sender<Value>,
) {
    let started = Instant::now();
    let mut guard = ctx.kernel.lock().await;
    let mut status = "ok";
    let mut out = Output {
        limit,
        out: (0, Utf8Carry::default()),
        err: (0, Utf8Carry::default()),
        truncated: false,
    };
    if guard.is_none() {
        match start_kernel(&app, &ctx) {
            Ok(k) => *guard = Some(k),
            Err(e) => {
                let _ = tx.send(json!({"type": "error", "name": "KernelError", "value": e.message, "traceback": ""})).await;
                let _ = tx
                    .send(json!({"type": "end", "status": "error", "context": ctx.id}))
                    .await;
                return;
            }
        }
    }
    let count = ctx.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let mut died = false;
    {
        let Some(k) = guard.as_mut() else { return };
        // Output that background work wrote since the last cell is not this cell's.
        drop(drain_now(&k.stdout));
        drop(drain_now(&k.stderr));
        let request = match ctx.lang {
            Lang::Bash => {
                let mut r = code.replace('\0', "").into_bytes();
                r.push(0);
                r
            }
            _ => {
                let mut r = serde_json::to_vec(&json!({ "code": code })).unwrap_or_default();
                r.push(b'\n');
                r
            }
        };
        if k.stdin.write_all(&request).await.is_err() {
            died = true;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut kill_at: Option<tokio::time::Instant> = None;
        let (mut obuf, mut ebuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        let mut client_gone = false;
        while !died {
            let kill_wait = async {
                match kill_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                line = k.proto.next_line() => match line {
                    Ok(Some(line)) => {
                        let frame: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                        match frame["type"].as_str() {
                            Some("done") => {
                                let o = drain_now(&k.stdout);
                                out.emit(false, &o, &tx).await;
                                let e = drain_now(&k.stderr);
                                out.emit(true, &e, &tx).await;
                                if frame["status"] == "error" && status == "ok" {
                                    status = "error";
                                    if ctx.lang == Lang::Bash {
                                        let code = frame["exit_code"].as_i64().unwrap_or(1);
                                        let _ = tx.send(json!({"type": "error", "name": "ExitCode", "value": format!("exit status {code}"), "traceback": ""})).await;
                                    }
                                }
                                break;
                            }
                            Some("result") => { let _ = tx.send(frame).await; }
                            Some("error") => {
                                status = if kill_at.is_some() && status == "timeout" { "timeout" } else { "error" };
                                let _ = tx.send(frame).await;
                            }
                            _ => {}
                        }
                    }
                    Ok(None) | Err(_) => died = true,
                },
                r = k.stdout.read(&mut obuf) => match r {
                    Ok(n) if n > 0 => out.emit(false, &obuf[..n], &tx).await,
                    _ => died = true,
                },
                r = k.stderr.read(&mut ebuf) => match r {
                    Ok(n) if n > 0 => out.emit(true, &ebuf[..n], &tx).await,
                    _ => died = true,
                },
                _ = &mut k.exit => died = true,
                _ = &mut deadline, if kill_at.is_none() => {
                    status = "timeout";
                    let _ = process::signal_group(k.pid, Signal::INT);
                    kill_at = Some(tokio::time::Instant::now() + INTERRUPT_GRACE);
                }
                _ = tx.closed(), if !client_gone && kill_at.is_none() => {
                    client_gone = true;
                    status = "interrupted";
                    let _ = process::signal_group(k.pid, Signal::INT);
                    kill_at = Some(tokio::time::Instant::now() + INTERRUPT_GRACE);
                }
                _ = kill_wait => {
                    let _ = process::signal_group(k.pid, Signal::KILL);
                    died = true;
                }
            }
        }
    }
    if died {
        if let Some(k) = guard.as_ref() {
            let o = drain_now(&k.stdout);
            out.emit(false, &o, &tx).await;
            let e = drain_now(&k.stderr);
            out.emit(true, &e, &tx).await;
        }
        if status == "ok" || status == "error" {
            status = "died";
            let _ = tx
                .send(json!({"type": "error", "name": "KernelDied",
                    "value": format!("the {} kernel exited; its state is lost and it restarts on the next run", ctx.lang.name()),
                    "traceback": ""}))
                .await;
        }
        stop_kernel(&app, &ctx, guard.take());
    }
    drop(guard);
    for (kind, dec) in [("stdout", &mut out.out.1), ("stderr", &mut out.err.1)] {
        let rest = dec.finish();
        if !rest.is_empty() {
            let _ = tx.send(json!({"type": kind, "data": rest})).await;
        }
    }
    let _ = tx
        .send(json!({
            "type": "end",
            "status": status,
            "context": ctx.id,
            "execution_count": count,
            "truncated": out.truncated,
            "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
        }))
        .await;
}
