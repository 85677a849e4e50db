//! Child processes: spawning with pipes or on a PTY, the SIGCHLD reaper (which also reaps
//! orphans when sandboxd is PID 1 or a subreaper, so no zombie is left), and the registry of
//! running processes that clients address by a daemon-assigned id.
//!
//! Spawning takes `posix_spawn` (a vfork-like clone) inside the standard library: the plain path
//! sets no `pre_exec` hook, and the new process group comes from `process_group(0)`, which
//! `posix_spawn` supports. Only a PTY (setsid, controlling terminal) or a descriptor to keep
//! across exec needs the fork path.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// The exit code upstream reports: the code, or -1 when killed by a signal.
    pub fn upstream_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(_) => -1,
        }
    }
    /// The exit code a shell reports: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
    /// The signal that killed the process, if any.
    pub fn signal(self) -> Option<i32> {
        match self {
            Exit::Code(_) => None,
            Exit::Signal(s) => Some(s),
        }
    }
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No command given.
    #[error("command is required")]
    Empty,
    /// The program or the working directory does not exist.
    #[error("failed to start {program:?}: command or path not found: {source}")]
    NotFound {
        /// argv[0]
        program: String,
        /// OS error.
        source: io::Error,
    },
    /// Not executable, or the working directory is not accessible.
    #[error("failed to start {program:?}: permission denied: {source}")]
    Permission {
        /// argv[0]
        program: String,
        /// OS error.
        source: io::Error,
    },
    /// Anything else.
    #[error("failed to start {program:?}: {source}")]
    Other {
        /// argv[0]
        program: String,
        /// OS error.
        source: io::Error,
    },
}

impl SpawnError {
    fn from_io(program: &str, source: io::Error) -> Self {
        let program = program.to_string();
        match source.kind() {
            io::ErrorKind::NotFound => SpawnError::NotFound { program, source },
            io::ErrorKind::PermissionDenied => SpawnError::Permission { program, source },
            _ => SpawnError::Other { program, source },
        }
    }
}

/// What to start.
#[derive(Debug, Default)]
pub struct SpawnSpec {
    /// Program and arguments; no shell is involved.
    pub argv: Vec<String>,
    /// Added to (and overriding) the daemon's environment.
    pub env: Vec<(String, String)>,
    /// Working directory (already confined to the root).
    pub cwd: PathBuf,
    /// Give the child a stdin pipe (otherwise /dev/null).
    pub stdin: bool,
    /// Run on a new PTY of this size (cols, rows); stdout and stderr merge.
    pub pty: Option<(u16, u16)>,
    /// A descriptor the child keeps open across exec (its number is passed by the caller).
    pub inherit: Option<Arc<OwnedFd>>,
    /// Share sandboxd's stdin, stdout and stderr (the entrypoint workload).
    pub inherit_stdio: bool,
}

/// The master side of a PTY, readable and writable without blocking the runtime.
#[derive(Debug)]
pub struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    fn open(cols: u16, rows: u16) -> io::Result<(Pty, OwnedFd)> {
        use rustix::pty::OpenptFlags;
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        rustix::fs::fcntl_setfl(
            &master,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK,
        )?;
        let pty = Pty {
            fd: crate::sys::async_fd(master)?,
        };
        if cols > 0 && rows > 0 {
            pty.resize(cols, rows)?;
        }
        Ok((pty, slave))
    }

    /// Sets the window size.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(self.fd.get_ref(), size)?;
        Ok(())
    }

    /// Reads output; 0 means every slave side is closed.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::IO.raw_os_error()) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Ok(())
    }
}

/// A started child.
#[derive(Debug)]
pub struct Child {
    /// OS process id (also its process group id).
    pub pid: i32,
    /// Stdin pipe, when asked for.
    pub stdin: Option<pipe::Sender>,
    /// Stdout pipe (absent with a PTY).
    pub stdout: Option<pipe::Receiver>,
    /// Stderr pipe (absent with a PTY).
    pub stderr: Option<pipe::Receiver>,
    /// PTY master, when run on one.
    pub pty: Option<Arc<Pty>>,
    /// Resolves when the reaper has collected the child.
    pub exit: oneshot::Receiver<Exit>,
}

/// Where stdin of a registered process goes.
#[derive(Debug)]
pub enum StdinSink {
    /// A pipe.
    Pipe(pipe::Sender),
    /// The PTY master.
    Pty(Arc<Pty>),
}

/// A process clients can address by id.
#[derive(Debug)]
pub struct Managed {
    /// Daemon-assigned id (not the OS pid).
    pub id: i32,
    /// OS pid.
    pub pid: i32,
    /// Command line.
    pub argv: Vec<String>,
    /// Start time.
    pub started_at: SystemTime,
    /// Which API started it (`grpc`, `exec`, `pty`, `kernel`).
    pub origin: &'static str,
    /// Stdin, if it still has one.
    pub stdin: tokio::sync::Mutex<Option<StdinSink>>,
    /// PTY master, if any.
    pub pty: Option<Arc<Pty>>,
    /// Set once the process has exited.
    pub done: AtomicBool,
}

impl Managed {
    /// Signals the process group; a process that already finished is left alone.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        if self.done.load(Ordering::SeqCst) {
            return Ok(());
        }
        signal_group(self.pid, sig)
    }
}

/// Sends `sig` to the process group `pid`, falling back to the process alone.
pub fn signal_group(pid: i32, sig: Signal) -> io::Result<()> {
    let Some(p) = Pid::from_raw(pid) else {
        return Ok(());
    };
    match rustix::process::kill_process_group(p, sig) {
        Ok(()) => Ok(()),
        Err(Errno::SRCH) => match rustix::process::kill_process(p, sig) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Kills a process group when dropped, unless disarmed: a cancelled request never leaves its
/// process behind.
#[derive(Debug)]
pub struct KillOnDrop {
    pid: i32,
    armed: bool,
}

impl KillOnDrop {
    /// Arms the guard for `pid`.
    pub fn new(pid: i32) -> Self {
        KillOnDrop { pid, armed: true }
    }
    /// Stops the guard from killing.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = signal_group(self.pid, Signal::KILL);
        }
    }
}

/// Owns every child: spawns, reaps and tracks them.
#[derive(Debug)]
pub struct Supervisor {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
    reap_all: bool,
    registry: Mutex<HashMap<i32, Arc<Managed>>>,
    next_id: AtomicI32,
}

impl Supervisor {
    /// A supervisor; with `reap_all` it collects every child, orphans included.
    pub fn new(reap_all: bool) -> Arc<Self> {
        Arc::new(Supervisor {
            waiters: Mutex::new(HashMap::new()),
            reap_all,
            registry: Mutex::new(HashMap::new()),
            next_id: AtomicI32::new(0),
        })
    }

    /// Installs the SIGCHLD handler and starts reaping. Call before the first spawn.
    pub fn start_reaper(self: &Arc<Self>) -> io::Result<()> {
        let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while sig.recv().await.is_some() {
                let Some(me) = me.upgrade() else { break };
                me.reap();
            }
        });
        Ok(())
    }

    fn reap(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if self.reap_all {
            while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
                if let Some(tx) = waiters.remove(&pid.as_raw_nonzero().get()) {
                    let _ = tx.send(convert(status));
                }
            }
        } else {
            let pids: Vec<i32> = waiters.keys().copied().collect();
            for pid in pids {
                let Some(p) = Pid::from_raw(pid) else {
                    continue;
                };
                match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
                    Ok(Some((_, status))) => {
                        if let Some(tx) = waiters.remove(&pid) {
                            let _ = tx.send(convert(status));
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        if let Some(tx) = waiters.remove(&pid) {
                            let _ = tx.send(Exit::Code(-1));
                        }
                    }
                }
            }
        }
    }

    /// Starts a child. It runs in its own process group (or session, with a PTY).
    pub fn spawn(&self, spec: SpawnSpec) -> Result<Child, SpawnError> {
        let Some(program) = spec.argv.first() else {
            return Err(SpawnError::Empty);
        };
        let mut cmd = Command::new(program);
        cmd.args(&spec.argv[1..]).current_dir(&spec.cwd);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let other = |e: io::Error| SpawnError::Other {
            program: program.clone(),
            source: e,
        };
        let mut pty = None;
        if let Some((cols, rows)) = spec.pty {
            let (master, slave) = Pty::open(cols, rows).map_err(other)?;
            let a = slave.try_clone().map_err(other)?;
            let b = slave.try_clone().map_err(other)?;
            cmd.stdin(Stdio::from(a))
                .stdout(Stdio::from(b))
                .stderr(Stdio::from(slave));
            crate::sys::pty_session(&mut cmd, spec.inherit.clone());
            pty = Some(Arc::new(master));
        } else if spec.inherit_stdio {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
            cmd.process_group(0);
        } else {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            cmd.process_group(0);
            if let Some(fd) = &spec.inherit {
                crate::sys::inherit_fd(&mut cmd, fd.clone());
            }
        }
        let (tx, rx) = oneshot::channel();
        let mut child = {
            // Held across spawn so the reaper cannot collect the child before it is registered.
            let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            let child = cmd.spawn().map_err(|e| SpawnError::from_io(program, e))?;
            waiters.insert(child.id() as i32, tx);
            child
        };
        drop(cmd); // closes our copies of the PTY slave
        let pid = child.id() as i32;
        let mut guard = KillOnDrop::new(pid);
        let stdin = child
            .stdin
            .take()
            .map(|s| pipe::Sender::from_owned_fd_unchecked(nonblocking(s.into())?))
            .transpose()
            .map_err(other)?;
        let stdout = output_pipe(child.stdout.take()).map_err(other)?;
        let stderr = output_pipe(child.stderr.take()).map_err(other)?;
        guard.disarm();
        Ok(Child {
            pid,
            stdin,
            stdout,
            stderr,
            pty,
            exit: rx,
        })
    }

    /// Registers a started child under a fresh id.
    pub fn register(
        &self,
        child_pid: i32,
        argv: Vec<String>,
        origin: &'static str,
        stdin: Option<StdinSink>,
        pty: Option<Arc<Pty>>,
    ) -> Arc<Managed> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let managed = Arc::new(Managed {
            id,
            pid: child_pid,
            argv,
            started_at: SystemTime::now(),
            origin,
            stdin: tokio::sync::Mutex::new(stdin),
            pty,
            done: AtomicBool::new(false),
        });
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, managed.clone());
        managed
    }

    /// Looks up a registered process.
    pub fn get(&self, id: i32) -> Option<Arc<Managed>> {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Forgets a registered process.
    pub fn remove(&self, id: i32) {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// All registered processes, by id.
    pub fn list(&self) -> Vec<Arc<Managed>> {
        let mut all: Vec<_> = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|m| m.id);
        all
    }

    /// Number of children not yet reaped.
    pub fn live_children(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Signals the process group of every live child.
    pub fn signal_all(&self, sig: Signal) {
        let pids: Vec<i32> = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for pid in pids {
            let _ = signal_group(pid, sig);
        }
    }
}

/// Puts our end of a pipe the standard library made (blocking, close-on-exec) in non-blocking
/// mode, as tokio's pipe types need; one `fcntl`, where the checked constructors take three.
/// The child's end of an output pipe, as a non-blocking receiver for the runtime.
fn output_pipe(end: Option<impl Into<OwnedFd>>) -> io::Result<Option<pipe::Receiver>> {
    end.map(|s| pipe::Receiver::from_owned_fd_unchecked(nonblocking(s.into())?))
        .transpose()
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK)?;
    Ok(fd)
}

fn convert(status: rustix::process::WaitStatus) -> Exit {
    if let Some(code) = status.exit_status() {
        Exit::Code(code)
    } else if let Some(sig) = status.terminating_signal() {
        Exit::Signal(sig)
    } else {
        Exit::Code(-1)
    }
}

/// Reads a pipe or PTY to the end, sending chunks of at most `chunk` bytes wrapped by `wrap`.
/// Stops early when the receiver is gone.
pub async fn pump<R, T>(
    mut reader: R,
    chunk: usize,
    tx: tokio::sync::mpsc::Sender<T>,
    wrap: impl Fn(Vec<u8>) -> T,
) where
    R: ChunkReader,
{
    let mut buf = vec![0u8; chunk.max(1)];
    loop {
        match reader.read_chunk(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Something output can be read from.
pub trait ChunkReader {
    /// Reads some bytes; 0 at the end.
    fn read_chunk(
        &mut self,
        buf: &mut [u8],
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send;
}

impl ChunkReader for pipe::Receiver {
    async fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::io::AsyncReadExt::read(self, buf).await
    }
}

impl ChunkReader for Arc<Pty> {
    async fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf).await
    }
}
