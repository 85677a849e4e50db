//! `kubectl exec` on the embedded node: a command started in a running container through the
//! OCI runtime's `exec` (the container's user, environment and working directory), streaming
//! its stdin, stdout and stderr through pipes, or through a terminal whose window size follows
//! the client (crun hands the terminal's master over a console socket with `SCM_RIGHTS`; runc
//! relays the container's terminal to one of ours; runsc has none to give); its exit code;
//! and, when the client goes away first, the command killed with every process it started, so
//! nothing is left running in the sandbox.
//!
//! Which process to kill comes from the runtime's pid file: a host pid for runc and crun (the
//! process tree is found in `/proc`, stopped, then killed), a pid inside the sandbox for runsc
//! (found with `runsc ps` and killed with `runsc kill --pid`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::process::Child;

use crate::engine::{RunningContainer, SandboxEngine};
use crate::error::{NodeError, Result};
use crate::host;
use crate::runtime::{HandlerKind, OciRuntime, clean_message};
use crate::sys;

/// How long the runtime may take to hand over the terminal of a TTY exec.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed exec's pid file is waited for (the runtime may still be starting it).
const PID_FILE_WAIT: Duration = Duration::from_secs(5);

/// What to run and which streams to connect (the `pods/exec` query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// argv; the first entry is looked up in the container's `PATH`.
    pub command: Vec<String>,
    /// Connect stdin.
    pub stdin: bool,
    /// Connect stdout.
    pub stdout: bool,
    /// Connect stderr (not with `tty`: a terminal has one output).
    pub stderr: bool,
    /// Run under a terminal.
    pub tty: bool,
    /// With `tty`: the terminal's size (columns, rows) when the command starts.
    pub size: Option<(u16, u16)>,
}

/// A readable stream of an exec.
pub type ExecReader = Box<dyn AsyncRead + Send + Unpin>;
/// A writable stream of an exec.
pub type ExecWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A started exec: its streams (those requested), its terminal (with `tty`) and its process.
pub struct ExecSession {
    /// The command's stdin; dropping it closes stdin (with a terminal, input stays open).
    pub stdin: Option<ExecWriter>,
    /// The command's stdout (with a terminal: everything the terminal shows).
    pub stdout: Option<ExecReader>,
    /// The command's stderr, and the runtime's own messages (no terminal only).
    pub stderr: Option<ExecReader>,
    /// The terminal, to resize.
    pub terminal: Option<Terminal>,
    /// The process: its exit code; dropped before it exited, it is killed.
    pub process: ExecProcess,
}

/// The terminal of a TTY exec (the master side of a pseudo-terminal).
#[derive(Clone)]
pub struct Terminal {
    master: Arc<AsyncFd<OwnedFd>>,
    /// The runtime process that relays a resize (runc, runsc), told with `SIGWINCH`.
    notify: Option<i32>,
}

impl Terminal {
    /// Set the window size (the command sees `SIGWINCH` and the new size).
    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        sys::set_window_size(self.master.get_ref().as_fd(), cols, rows)?;
        if let Some(pid) = self.notify {
            kill(Pid::from_raw(pid), Signal::SIGWINCH).map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

/// Whether `container` of the Pod runs, so that a command can be started in it; kubelet's
/// message otherwise (`container not found ("main")`).
pub fn check(
    engine: &SandboxEngine,
    pod: &Pod,
    container: &str,
) -> std::result::Result<(), String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if engine.is_paused(uid) {
        return Err(paused_message(&format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default()
        )));
    }
    match engine.running_container(uid, container) {
        Some(_) => Ok(()),
        None => Err(format!("container not found ({container:?})")),
    }
}

/// Why exec into the paused Pod `who` (`namespace/name`) is refused, and what to do.
pub fn paused_message(who: &str) -> String {
    format!(
        "pod {who} is paused: its processes are frozen, so a command cannot run in it; unpause it first (agent-sandbox unpause <sandbox>, or remove the annotation {})",
        agent_sandbox_api::constants::extensions::annotations::PAUSED
    )
}

/// Start `opts.command` in `container` of sandbox `id`.
pub async fn start(
    engine: &SandboxEngine,
    id: &str,
    container: &str,
    opts: &ExecOptions,
) -> Result<ExecSession> {
    if opts.command.is_empty() {
        return Err(NodeError::InvalidSpec {
            sandbox: id.to_string(),
            field: "exec command".into(),
            reason: "it is empty; give at least the program to run".into(),
        });
    }
    if engine.is_paused(id) {
        let who = engine
            .spec(id)
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .unwrap_or_else(|_| id.to_string());
        return Err(NodeError::InvalidState {
            sandbox: id.to_string(),
            op: "exec",
            state: paused_message(&who),
        });
    }
    if opts.tty
        && engine
            .running_container(id, container)
            .is_some_and(|c| c.runtime.kind() == HandlerKind::Runsc)
    {
        return Err(NodeError::Unsupported {
            sandbox: id.to_string(),
            field: "exec with a terminal (tty)".into(),
            reason: "runsc (gVisor) lets a sandbox use terminals only when its container starts with one, which Pods here do not; run the command without a terminal (kubectl exec -i, without -t)".into(),
        });
    }
    let target =
        engine
            .running_container(id, container)
            .ok_or_else(|| NodeError::InvalidState {
                sandbox: id.to_string(),
                op: "exec",
                state: format!("container {container} is not running"),
            })?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = engine.config().run_dir.join("exec").join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs_err::create_dir_all(&dir)?;
    fs_err::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let started = spawn(&target, &dir, opts).await;
    if started.is_err() {
        let _ = fs_err::remove_dir_all(&dir);
    }
    started
}

/// How a TTY exec gets its terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TerminalMode {
    /// crun: `exec` with a terminal and `--console-socket` hands the terminal's master over
    /// the socket and still waits for the command (its exit code is the command's).
    ConsoleSocket,
    /// runc: `exec` with a terminal, on a terminal of ours (in raw mode) whose input and output
    /// it relays to the container's; it resizes that one to ours on `SIGWINCH`. (runc accepts a
    /// console socket only with `--detach`, which loses the exit code.) runsc gives commands
    /// in a sandbox that started without a terminal none at all, so it is refused there.
    Relayed,
}

async fn spawn(target: &RunningContainer, dir: &Path, opts: &ExecOptions) -> Result<ExecSession> {
    let (runtime, rid) = (&target.runtime, target.runtime_id.as_str());
    let pid_file = dir.join("pid");
    let runsc = runtime.kind() == HandlerKind::Runsc;
    let mode = opts.tty.then_some(match runtime.kind() {
        HandlerKind::Crun => TerminalMode::ConsoleSocket,
        _ => TerminalMode::Relayed,
    });
    let mut args: Vec<OsString> = vec!["exec".into()];
    // runsc's pid file would hold its own pid: the command's pid is inside the sandbox.
    args.push(
        if runsc {
            "--internal-pid-file"
        } else {
            "--pid-file"
        }
        .into(),
    );
    args.push(pid_file.clone().into());
    // The container's terminal gets its size when it is made: a command that asks at once
    // (`stty size`) must not see 0x0, and the runtimes apply a later resize only after the
    // command started (runc) or race it (crun).
    let process = match (mode, opts.size) {
        (Some(_), Some((cols, rows))) => process_spec(&target.bundle, &opts.command, cols, rows),
        _ => None,
    };
    if let Some(process) = &process {
        let path = dir.join("process.json");
        fs_err::write(&path, process.to_string())?;
        args.extend(["--process".into(), path.into()]);
    } else {
        if mode.is_some() {
            args.push("--tty".into());
        }
        // Without a process file the runtime builds the process from its flags, and crun then
        // leaves no_new_privileges off although every container's own process has it (the
        // process file above copies it from the bundle). gVisor sets it in its sentry.
        if !runsc {
            args.push("--no-new-privs".into());
        }
    }
    let mut listener = None;
    let mut ours = None;
    match mode {
        Some(TerminalMode::ConsoleSocket) => {
            let sock = dir.join("console.sock");
            listener = Some(tokio::net::UnixListener::bind(&sock)?);
            args.extend(["--console-socket".into(), sock.into()]);
        }
        Some(TerminalMode::Relayed) => {
            let (master, replica) = open_terminal()?;
            // runc copies the size of our terminal to the container's on SIGWINCH.
            if let Some((cols, rows)) = opts.size {
                sys::set_window_size(master.as_fd(), cols, rows)?;
            }
            ours = Some((master, replica));
        }
        None => {}
    }
    args.push(rid.into());
    if process.is_none() {
        args.extend(opts.command.iter().map(OsString::from));
    }
    let mut cmd = runtime.command(args);
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    match (&mode, &ours) {
        (Some(_), Some((_, replica))) => {
            cmd.stdin(Stdio::from(replica.try_clone()?))
                .stdout(Stdio::from(replica.try_clone()?))
                .stderr(Stdio::from(replica.try_clone()?));
        }
        // The runtime's own messages (why it failed) on stderr; the command uses the terminal.
        (Some(_), None) => {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
        }
        (None, _) => {
            cmd.stdin(pipe(opts.stdin))
                .stdout(pipe(opts.stdout))
                .stderr(pipe(opts.stderr));
        }
    }
    tracing::debug!(target: "node::exec", container = rid, command = ?opts.command, ?mode, "exec");
    let spawned = cmd.spawn();
    // Our copies of the terminal's replica side go now: the output ends (EIO) once the runtime
    // and the command closed theirs.
    drop(cmd);
    let master = ours.map(|(master, _replica)| master);
    let mut child = spawned.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("starting {} exec: {e}", runtime.binary().display()),
        )
    })?;
    let mut process = ExecProcess {
        child: None,
        runtime: runtime.clone(),
        rid: rid.to_string(),
        pid_file,
        dir: dir.to_path_buf(),
        exited: false,
    };
    if mode.is_none() {
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        process.child = Some(child);
        return Ok(ExecSession {
            stdin: stdin.map(|w| Box::new(w) as ExecWriter),
            stdout: stdout.map(|r| Box::new(r) as ExecReader),
            stderr: stderr.map(|r| Box::new(r) as ExecReader),
            terminal: None,
            process,
        });
    }
    let (master, notify) = match (listener, master) {
        (Some(listener), _) => {
            let master = match receive_console(&listener, &mut child).await {
                Ok(m) => {
                    if let Some((cols, rows)) = opts.size {
                        sys::set_window_size(m.as_fd(), cols, rows)?;
                    }
                    m
                }
                Err(message) => {
                    process.child = Some(child);
                    drop(process);
                    return Err(NodeError::Runtime {
                        handler: runtime.kind().to_string(),
                        op: "exec --tty".into(),
                        id: rid.to_string(),
                        status: -1,
                        message,
                    });
                }
            };
            (master, None)
        }
        (None, Some(master)) => {
            // The runtime handles SIGWINCH once the command runs, which is when it writes the
            // pid file; a resize before that would be lost.
            let deadline = Instant::now() + CONSOLE_TIMEOUT;
            while read_pid(&process.pid_file).is_none()
                && matches!(child.try_wait(), Ok(None))
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (master, child.id())
        }
        (None, None) => unreachable!("a terminal mode without a terminal"),
    };
    let flags =
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))
        .map_err(std::io::Error::from)?;
    let master = Arc::new(sys::async_fd(master)?);
    process.child = Some(child);
    Ok(ExecSession {
        stdin: opts
            .stdin
            .then(|| Box::new(PtyWriter(Arc::clone(&master))) as ExecWriter),
        stdout: Some(Box::new(PtyReader(Arc::clone(&master))) as ExecReader),
        stderr: None,
        terminal: Some(Terminal {
            master,
            notify: notify.and_then(|p| i32::try_from(p).ok()),
        }),
        process,
    })
}

/// The container's process (from the `config.json` it was created with: user, environment,
/// directory, capabilities, limits) running `command` on a terminal of the given size; `None`
/// if the bundle cannot be read.
fn process_spec(
    bundle: &Path,
    command: &[String],
    cols: u16,
    rows: u16,
) -> Option<serde_json::Value> {
    let config: serde_json::Value =
        serde_json::from_slice(&fs_err::read(bundle.join("config.json")).ok()?).ok()?;
    let mut process = config.get("process")?.clone();
    let p = process.as_object_mut()?;
    p.insert("args".into(), serde_json::json!(command));
    p.insert("terminal".into(), serde_json::Value::Bool(true));
    p.insert(
        "consoleSize".into(),
        serde_json::json!({"height": rows, "width": cols}),
    );
    Some(process)
}

/// A new terminal of ours (master, replica), both close-on-exec, the replica in raw mode: the
/// runtime relays it to the container's own terminal, which does the echo and line editing.
fn open_terminal() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let path = ptsname_r(&master)?;
    let replica = nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let mut t = tcgetattr(&replica)?;
    cfmakeraw(&mut t);
    tcsetattr(&replica, SetArg::TCSANOW, &t)?;
    Ok((master.into(), replica))
}

/// crun: the terminal's master from the console socket, or why there is none (the runtime's
/// message when it exited first).
async fn receive_console(
    listener: &tokio::net::UnixListener,
    child: &mut Child,
) -> std::result::Result<OwnedFd, String> {
    let received = tokio::select! {
        biased;
        r = tokio::time::timeout(CONSOLE_TIMEOUT, receive_terminal(listener)) => Some(r),
        _ = child.wait() => {
            // The runtime of a short command can exit right after it sent the terminal, and
            // both are then ready at once: the terminal may be waiting on the socket.
            match tokio::time::timeout(Duration::from_millis(500), receive_terminal(listener)).await {
                Ok(Ok(fd)) => Some(Ok(Ok(fd))),
                _ => None,
            }
        }
    };
    let mut runtime_err = child.stderr.take();
    let failed = match received {
        Some(Ok(Ok(fd))) => {
            if let Some(mut e) = runtime_err {
                // Later messages of the runtime (warnings) only go to the log.
                tokio::spawn(async move {
                    let mut msg = String::new();
                    let _ = e.read_to_string(&mut msg).await;
                    if !msg.trim().is_empty() {
                        tracing::debug!(target: "node::exec", "runtime: {}", msg.trim());
                    }
                });
            }
            return Ok(fd);
        }
        failed => failed,
    };
    let mut msg = String::new();
    if let Some(e) = runtime_err.as_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut msg)).await;
    }
    Err(match failed {
        Some(Ok(Err(e))) => format!("receiving the terminal: {e}"),
        Some(Err(_)) => format!(
            "no terminal on the console socket within {}s",
            CONSOLE_TIMEOUT.as_secs()
        ),
        _ => match clean_message(&msg) {
            m if m.is_empty() => "the runtime exited before it handed over the terminal".into(),
            m => m,
        },
    })
}

/// Accept the runtime's connection on the console socket and receive the PTY master.
async fn receive_terminal(listener: &tokio::net::UnixListener) -> std::io::Result<OwnedFd> {
    let (stream, _) = listener.accept().await?;
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_fd(stream.as_raw_fd())) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

fn recv_fd(sock: RawFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(v) = c {
            fds.extend(v.into_iter().map(sys::own_received_fd));
        }
    }
    let bytes = msg.bytes;
    match fds.len() {
        0 if bytes == 0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the runtime closed the console socket without sending a terminal",
        )),
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the runtime sent a message without a terminal on the console socket",
        )),
        _ => Ok(fds.swap_remove(0)),
    }
}

struct PtyReader(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), unfilled).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every process holding the terminal closed it: the end of the output.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

struct PtyWriter(Arc<AsyncFd<OwnedFd>>);

impl AsyncWrite for PtyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A terminal has no half close; the input stays open until the command exits.
        Poll::Ready(Ok(()))
    }
}

/// The process of an exec. Dropped before the command exited, it kills the command and every
/// process the command started (in the background, on the current tokio runtime).
pub struct ExecProcess {
    child: Option<Child>,
    runtime: OciRuntime,
    rid: String,
    pid_file: PathBuf,
    dir: PathBuf,
    exited: bool,
}

impl ExecProcess {
    /// Wait until the command exits; its exit code (128 + the signal when a signal ended it).
    /// Cancel-safe.
    pub async fn wait(&mut self) -> Result<i32> {
        let Some(child) = self.child.as_mut() else {
            return Err(NodeError::InvalidState {
                sandbox: self.rid.clone(),
                op: "wait for an exec",
                state: "it was not started".into(),
            });
        };
        let status = child.wait().await?;
        self.exited = true;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    /// Kill the command and the processes it started, then wait for the runtime to exit.
    pub async fn kill(mut self) {
        if let Some(child) = self.child.take()
            && !self.exited
        {
            reap(
                child,
                self.runtime.clone(),
                self.rid.clone(),
                self.pid_file.clone(),
            )
            .await;
        }
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        let dir = self.dir.clone();
        let Some(child) = self.child.take().filter(|_| !self.exited) else {
            let _ = fs_err::remove_dir_all(&dir);
            return;
        };
        let (runtime, rid, pid_file) = (
            self.runtime.clone(),
            self.rid.clone(),
            self.pid_file.clone(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    reap(child, runtime, rid, pid_file).await;
                    let _ = fs_err::remove_dir_all(&dir);
                });
            }
            Err(_) => {
                // No runtime to wait on: kill what the pid file names now (runsc needs its
                // CLI, so only the runtime process goes, on drop of the child).
                if runtime.kind() != HandlerKind::Runsc
                    && let Some(pid) = read_pid(&pid_file)
                {
                    kill_host_tree(pid);
                }
                drop(child);
                let _ = fs_err::remove_dir_all(&dir);
            }
        }
    }
}

/// Kill an exec that has not exited: its command's process tree, then the runtime process.
async fn reap(mut child: Child, runtime: OciRuntime, rid: String, pid_file: PathBuf) {
    let deadline = Instant::now() + PID_FILE_WAIT;
    let pid = loop {
        if let Some(p) = read_pid(&pid_file) {
            break Some(p);
        }
        if !matches!(child.try_wait(), Ok(None)) || Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(pid) = pid
        && matches!(child.try_wait(), Ok(None))
    {
        tracing::debug!(target: "node::exec", container = rid, pid, "killing an exec whose client went away");
        if runtime.kind() == HandlerKind::Runsc {
            kill_runsc_tree(&runtime, &rid, pid).await;
        } else {
            kill_host_tree(pid);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs_err::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Parent of every process on the host (`/proc/<pid>/stat`).
fn host_parents() -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let Ok(dir) = fs_err::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs_err::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            out.insert(pid, ppid);
        }
    }
    out
}

/// The descendants of the processes in `known` that are not in it yet.
fn new_descendants(parents: &HashMap<i32, i32>, known: &HashSet<i32>) -> Vec<i32> {
    let mut found: Vec<i32> = Vec::new();
    let mut seen = known.clone();
    loop {
        let more: Vec<i32> = parents
            .iter()
            .filter(|(pid, ppid)| seen.contains(ppid) && !seen.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        if more.is_empty() {
            return found;
        }
        seen.extend(&more);
        found.extend(more);
    }
}

/// Stop `root` and its descendants (so none can start more), then kill them all.
fn kill_host_tree(root: i32) {
    let mut tree: HashSet<i32> = HashSet::from([root]);
    let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    for _ in 0..10 {
        let more = new_descendants(&host_parents(), &tree);
        if more.is_empty() {
            break;
        }
        for p in &more {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        tree.extend(more);
    }
    for p in tree {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// runsc: the same inside the sandbox, with `runsc ps` and `runsc kill --pid`.
async fn kill_runsc_tree(runtime: &OciRuntime, rid: &str, root: i32) {
    let signal = |pid: i32, sig: &'static str| {
        let cmd = runtime.command(["kill", "--pid", &pid.to_string(), rid, sig]);
        async move {
            let _ = host::run(cmd, None, Duration::from_secs(10)).await;
        }
    };
    let mut tree: HashSet<i32> = HashSet::from([root]);
    signal(root, "STOP").await;
    for _ in 0..10 {
        let Ok(out) = host::run(runtime.command(["ps", rid]), None, Duration::from_secs(10)).await
        else {
            break;
        };
        let parents = runsc_parents(&String::from_utf8_lossy(&out.stdout));
        let more = new_descendants(&parents, &tree);
        if more.is_empty() {
            break;
        }
        for p in &more {
            signal(*p, "STOP").await;
        }
        tree.extend(more);
    }
    for p in tree {
        signal(p, "KILL").await;
    }
}

/// Parents from `runsc ps`'s table (`UID PID PPID C TTY STIME TIME CMD`; its JSON format is
/// only a list of pids in some versions).
fn runsc_parents(table: &str) -> HashMap<i32, i32> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let (Some(pid), Some(ppid)) = (
        header.iter().position(|c| *c == "PID"),
        header.iter().position(|c| *c == "PPID"),
    ) else {
        return HashMap::new();
    };
    lines
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.get(pid)?.parse().ok()?, cols.get(ppid)?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_found_at_any_depth_and_only_once() {
        let parents = HashMap::from([(2, 1), (3, 2), (4, 3), (5, 1), (6, 9), (7, 2)]);
        let mut d = new_descendants(&parents, &HashSet::from([2]));
        d.sort();
        assert_eq!(d, vec![3, 4, 7]);
        assert!(new_descendants(&parents, &HashSet::from([2, 3, 4, 7])).is_empty());
    }

    #[test]
    fn runsc_ps_tables_give_the_parents() {
        let table = "UID       PID       PPID      C         TTY       STIME     TIME      CMD\n\
                     0         1         0         0         ?         12:28     0s        sleep\n\
                     0         4         0         35        ?         12:28     0s        sh\n\
                     0         6         4         43        ?         12:28     20ms      sleep 1\n";
        assert_eq!(
            runsc_parents(table),
            HashMap::from([(1, 0), (4, 0), (6, 4)])
        );
        assert!(runsc_parents("[1,4,6]").is_empty());
    }

    #[test]
    fn this_process_is_found_under_its_parent() {
        let me = std::process::id() as i32;
        let parent = nix::unistd::getppid().as_raw();
        let parents = host_parents();
        assert_eq!(parents.get(&me), Some(&parent));
    }
}
