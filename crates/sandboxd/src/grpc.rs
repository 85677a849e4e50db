//! The gRPC `process.v1.ProcessService` (Start, Execute, WriteStdin, SendSignal, ResizeTTY) with
//! upstream's semantics and status codes. Call deadlines are enforced around it, in
//! [`crate::deadline`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::Stream;
use rustix::process::Signal;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::App;
use crate::confine::{ConfineError, Walked};
use crate::pb::process_service_server::ProcessService;
use crate::pb::{self, start_response::Event, write_stdin_request::Payload};
use crate::process::{self, Exit, KillOnDrop, SpawnError, SpawnSpec, StdinSink};

/// After a process exits, how long its pipes may still be drained (a grandchild may hold them).
pub(crate) const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long `Execute` waits for output after the process exited.
pub(crate) const WAIT_DELAY: Duration = Duration::from_secs(10);
/// With a PTY, output is drained after exit until it has been quiet this long.
pub(crate) const PTY_QUIET: Duration = Duration::from_millis(50);

/// The service implementation.
#[derive(Debug, Clone)]
pub struct ProcessSvc {
    pub(crate) app: Arc<App>,
}

/// What failed, as upstream words the start of its messages.
const EXECUTE_FAILED: &str = "failed to execute command";
const START_FAILED: &str = "failed to start command";
const START_PTY_FAILED: &str = "failed to start command with PTY";

/// Maps a spawn failure onto upstream's codes; `what` is one of the `*_FAILED` prefixes.
fn spawn_status(e: SpawnError, what: &str) -> Status {
    match e {
        SpawnError::Empty => Status::invalid_argument("command is required"),
        SpawnError::NotFound { program, source } => Status::not_found(format!(
            "{what}: command or path not found: {program:?}: {source}"
        )),
        SpawnError::Permission { program, source } => {
            Status::permission_denied(format!("{what}: permission denied: {program:?}: {source}"))
        }
        SpawnError::Other { program, source } => {
            Status::internal(format!("{what}: {program:?}: {source}"))
        }
    }
}

/// Confines a requested working directory; the default is the working directory.
pub(crate) fn resolve_cwd(
    app: &App,
    cwd: Option<&str>,
) -> Result<std::path::PathBuf, ConfineError> {
    let Some(cwd) = cwd.filter(|c| !c.is_empty()) else {
        return Ok(app.root.work_path());
    };
    let walked = app.root.resolve(cwd, true, false)?;
    if let Walked::Entry { stat: None, .. } = walked {
        return Err(ConfineError::Missing(cwd.to_string()));
    }
    Ok(app.root.host_path(&walked.rel_path()))
}

/// The spawn of a `ProcessConfig`; `what` names the RPC in errors (see [`spawn_status`]).
fn build_spec(
    app: &App,
    config: Option<pb::ProcessConfig>,
    what: &str,
) -> Result<SpawnSpec, Status> {
    let config = config.unwrap_or_default();
    if config.command.is_empty() {
        return Err(Status::invalid_argument("command is required"));
    }
    // Upstream: an escape is refused up front, a missing directory fails the start (chdir) and
    // anything else while resolving is INTERNAL.
    let cwd = resolve_cwd(app, config.cwd.as_deref()).map_err(|e| match e {
        ConfineError::Escape(_) => Status::permission_denied(format!("cwd: {e}")),
        ConfineError::Missing(_) => {
            Status::not_found(format!("{what}: command or path not found: cwd: {e}"))
        }
        e => Status::internal(format!("cwd: {e}")),
    })?;
    let mut env: Vec<(String, String)> = config.env_vars.into_iter().collect();
    env.sort();
    Ok(SpawnSpec {
        argv: config.command,
        env,
        cwd,
        ..SpawnSpec::default()
    })
}

type StartStream = Pin<Box<dyn Stream<Item = Result<pb::StartResponse, Status>> + Send + 'static>>;

fn event(e: Event) -> pb::StartResponse {
    pb::StartResponse { event: Some(e) }
}

#[tonic::async_trait]
impl ProcessService for ProcessSvc {
    type StartStream = StartStream;

    async fn start(
        &self,
        request: Request<pb::StartRequest>,
    ) -> Result<Response<StartStream>, Status> {
        let req = request.into_inner();
        let what = if req.pty.is_some() {
            START_PTY_FAILED
        } else {
            START_FAILED
        };
        let mut spec = build_spec(&self.app, req.config, what)?;
        spec.stdin = true;
        spec.pty = req.pty.map(|p| {
            (
                p.cols.min(u16::MAX as u32) as u16,
                p.rows.min(u16::MAX as u32) as u16,
            )
        });
        let argv = spec.argv.clone();
        let mut child = self
            .app
            .sup
            .spawn(spec)
            .map_err(|e| spawn_status(e, what))?;
        let sink = match &child.pty {
            Some(pty) => Some(StdinSink::Pty(pty.clone())),
            None => child.stdin.take().map(StdinSink::Pipe),
        };
        let managed = self
            .app
            .sup
            .register(child.pid, argv, "grpc", sink, child.pty.clone());
        let (tx, rx) = mpsc::channel(32);
        // Registered before the InitEvent goes out, so WriteStdin/SendSignal work right after it.
        let _ = tx.try_send(Ok(event(Event::Init(pb::InitEvent {
            process_id: managed.id,
        }))));
        tokio::spawn(run_start(self.app.clone(), child, managed, tx));
        Ok(Response::new(Box::pin(crate::rest::receiver_stream(rx))))
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let spec = build_spec(&self.app, request.into_inner().config, EXECUTE_FAILED)?;
        let program = spec.argv[0].clone();
        let child = self
            .app
            .sup
            .spawn(spec)
            .map_err(|e| spawn_status(e, EXECUTE_FAILED))?;
        let out = collect(child, WAIT_DELAY, usize::MAX).await;
        // As Go's exec.Cmd: a successful command whose output is still held open (by a background
        // child) after the wait delay is an error; a failed one reports its exit code.
        if out.drain_expired && out.exit == Exit::Code(0) {
            return Err(Status::internal(format!(
                "{EXECUTE_FAILED}: WaitDelay expired before I/O complete: {program:?} exited but \
                 its output was still open {}s later (held by a background process); redirect \
                 the background process's output",
                WAIT_DELAY.as_secs()
            )));
        }
        Ok(Response::new(pb::ExecuteResponse {
            exit_code: out.exit.upstream_code(),
            stdout: out.stdout.data,
            stderr: out.stderr.data,
        }))
    }

    async fn write_stdin(
        &self,
        request: Request<pb::WriteStdinRequest>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        let req = request.into_inner();
        let id = req.process_id;
        let proc = self
            .app
            .sup
            .get(id)
            .ok_or_else(|| Status::not_found(format!("process {id} not found")))?;
        let write_failed = |e: std::io::Error| {
            Status::internal(format!("failed to write stdin of process {id}: {e}"))
        };
        let mut stdin = proc.stdin.lock().await;
        // Upstream's codes: closing twice, or writing after the close, is INTERNAL (the pipe is
        // already closed); an empty write is accepted either way.
        match req.payload {
            Some(Payload::Eof(())) => match stdin.take() {
                Some(StdinSink::Pipe(mut p)) => {
                    let _ = p.shutdown().await;
                }
                Some(StdinSink::Pty(pty)) => {
                    // End of input on a terminal is the EOF character, not closing the terminal.
                    let r = pty.write_all(&[4]).await;
                    *stdin = Some(StdinSink::Pty(pty));
                    r.map_err(write_failed)?;
                }
                None => {
                    return Err(Status::internal(format!(
                        "failed to close stdin of process {id}: it is already closed"
                    )));
                }
            },
            Some(Payload::Input(data)) if !data.is_empty() => match stdin.as_mut() {
                None => {
                    return Err(Status::internal(format!(
                        "failed to write stdin of process {id}: it was closed with eof; start \
                         a new process to send more input"
                    )));
                }
                Some(StdinSink::Pipe(p)) => p.write_all(&data).await.map_err(write_failed)?,
                Some(StdinSink::Pty(pty)) => pty.write_all(&data).await.map_err(write_failed)?,
            },
            Some(Payload::Input(_)) | None => {}
        }
        Ok(Response::new(pb::WriteStdinResponse {}))
    }

    async fn send_signal(
        &self,
        request: Request<pb::SendSignalRequest>,
    ) -> Result<Response<pb::SendSignalResponse>, Status> {
        let req = request.into_inner();
        let id = req.process_id;
        let proc = self
            .app
            .sup
            .get(id)
            .ok_or_else(|| Status::not_found(format!("process {id} not found")))?;
        let sig = match pb::Signal::try_from(req.signal) {
            Ok(pb::Signal::Sigint) => Signal::INT,
            Ok(pb::Signal::Sigterm) => Signal::TERM,
            Ok(pb::Signal::Sigkill) => Signal::KILL,
            other => {
                // Named as Go prints the enum: its name, or the number when it has none.
                let name =
                    other.map_or_else(|_| req.signal.to_string(), |s| s.as_str_name().into());
                return Err(Status::invalid_argument(format!(
                    "unsupported or unspecified signal: {name}; use SIGNAL_SIGINT, SIGNAL_SIGTERM \
                     or SIGNAL_SIGKILL"
                )));
            }
        };
        proc.signal(sig)
            .map_err(|e| Status::internal(format!("failed to send signal to process {id}: {e}")))?;
        Ok(Response::new(pb::SendSignalResponse {}))
    }

    async fn resize_tty(
        &self,
        request: Request<pb::ResizeTtyRequest>,
    ) -> Result<Response<pb::ResizeTtyResponse>, Status> {
        let req = request.into_inner();
        let id = req.process_id;
        let proc = self
            .app
            .sup
            .get(id)
            .ok_or_else(|| Status::not_found(format!("process {id} not found")))?;
        let pty = match (&proc.pty, proc.done.load(Ordering::SeqCst)) {
            (Some(pty), false) => pty.clone(),
            _ => {
                return Err(Status::failed_precondition(format!(
                    "failed to resize TTY: process {id} is completed or has no active PTY"
                )));
            }
        };
        pty.resize(
            req.cols.min(u16::MAX as u32) as u16,
            req.rows.min(u16::MAX as u32) as u16,
        )
        .map_err(|e| {
            Status::failed_precondition(format!("failed to resize TTY of process {id}: {e}"))
        })?;
        Ok(Response::new(pb::ResizeTtyResponse {}))
    }
}

/// Output of one stream collected by [`collect`].
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub(crate) data: Vec<u8>,
    pub(crate) truncated: bool,
}

async fn read_into(
    reader: Option<tokio::net::unix::pipe::Receiver>,
    out: &mut Collected,
    limit: usize,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut reader) = reader else { return };
    // Reads go straight into the output (spare capacity, never zeroed) up to the limit; what
    // comes after it is read into a scratch buffer and dropped.
    let mut scratch = Vec::new();
    loop {
        let room = limit.saturating_sub(out.data.len());
        let read = if room > 0 {
            out.data.reserve(room.min(READ_CHUNK));
            let mut limited = bytes::BufMut::limit(&mut out.data, room);
            reader.read_buf(&mut limited).await
        } else {
            scratch.resize(READ_CHUNK, 0);
            let n = reader.read(&mut scratch).await;
            if matches!(n, Ok(n) if n > 0) {
                out.truncated = true;
            }
            n
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
    }
}

/// How much output a read takes at most.
const READ_CHUNK: usize = 64 * 1024;

/// What [`collect`] gathered.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) exit: Exit,
    pub(crate) stdout: Collected,
    pub(crate) stderr: Collected,
    /// The output was still open `drain` after the exit (a background process holds it).
    pub(crate) drain_expired: bool,
}

/// Waits for a child and collects its output (at most `limit` bytes per stream). After the exit,
/// output is awaited for at most `drain`. The process group is killed if this is cancelled.
pub(crate) async fn collect(child: process::Child, drain: Duration, limit: usize) -> Output {
    let mut guard = KillOnDrop::new(child.pid);
    let mut out = Collected::default();
    let mut err = Collected::default();
    let mut exit_rx = child.exit;
    let exit;
    let mut drain_expired = false;
    {
        let readers = async {
            tokio::join!(
                read_into(child.stdout, &mut out, limit),
                read_into(child.stderr, &mut err, limit)
            )
        };
        tokio::pin!(readers);
        tokio::select! {
            _ = &mut readers => {
                exit = (&mut exit_rx).await.unwrap_or(Exit::Code(-1));
            }
            e = &mut exit_rx => {
                exit = e.unwrap_or(Exit::Code(-1));
                drain_expired = tokio::time::timeout(drain, &mut readers).await.is_err();
            }
        }
    }
    guard.disarm();
    Output {
        exit,
        stdout: out,
        stderr: err,
        drain_expired,
    }
}

async fn run_start(
    app: Arc<App>,
    child: process::Child,
    managed: Arc<process::Managed>,
    tx: mpsc::Sender<Result<pb::StartResponse, Status>>,
) {
    let chunk = app.config.chunk_size();
    let mut guard = KillOnDrop::new(child.pid);
    let (otx, mut orx) = mpsc::channel::<pb::StartResponse>(16);
    let mut readers = Vec::new();
    let is_pty = child.pty.is_some();
    if let Some(pty) = child.pty.clone() {
        readers.push(tokio::spawn(process::pump(pty, chunk, otx.clone(), |b| {
            event(Event::Stdout(b))
        })));
    }
    if let Some(out) = child.stdout {
        readers.push(tokio::spawn(process::pump(out, chunk, otx.clone(), |b| {
            event(Event::Stdout(b))
        })));
    }
    if let Some(err) = child.stderr {
        readers.push(tokio::spawn(process::pump(err, chunk, otx.clone(), |b| {
            event(Event::Stderr(b))
        })));
    }
    drop(otx);
    let mut exit_rx = child.exit;
    let mut readers_done = false;
    let mut client_gone = false;
    let exit = loop {
        tokio::select! {
            ev = orx.recv(), if !readers_done => match ev {
                Some(ev) => {
                    if !client_gone && tx.send(Ok(ev)).await.is_err() {
                        client_gone = true;
                        let _ = process::signal_group(child.pid, Signal::KILL);
                    }
                }
                None => readers_done = true,
            },
            e = &mut exit_rx => break e.unwrap_or(Exit::Code(-1)),
            _ = tx.closed(), if !client_gone => {
                // The client went away: the process goes too.
                client_gone = true;
                let _ = process::signal_group(child.pid, Signal::KILL);
            }
        }
    };
    guard.disarm();
    managed.done.store(true, Ordering::SeqCst);
    if !readers_done {
        let deadline = tokio::time::Instant::now() + PIPE_DRAIN_GRACE;
        loop {
            let wait = if is_pty {
                PTY_QUIET
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            };
            match tokio::time::timeout(wait, orx.recv()).await {
                Ok(Some(ev)) => {
                    if !client_gone && tx.send(Ok(ev)).await.is_err() {
                        client_gone = true;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    for r in readers {
        r.abort();
    }
    if !client_gone {
        let _ = tx
            .send(Ok(event(Event::Exit(pb::ExitEvent {
                exit_code: exit.upstream_code(),
            }))))
            .await;
    }
    app.sup.remove(managed.id);
}
