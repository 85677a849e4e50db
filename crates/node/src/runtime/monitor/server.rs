//! The node's end of gVisor's remote sink: one `SOCK_SEQPACKET` listener per sandbox, one
//! thread per sentry connection, and the fan-out of each message to the sandbox's JSON event
//! log and, when asked, to Falco's socket (as the sentry sent it, on a connection of the node's
//! own per sentry connection).
//!
//! Nothing here can hold a sandbox up: the sentry writes without blocking (it drops what the
//! node does not take in time and reports the count in its headers), the node forwards without
//! blocking, and a Falco socket that is absent, refuses or is full drops the event and counts
//! it. Plain threads: the work is blocking socket reads and file appends, and the threads must
//! outlive any one async runtime (tests open several engines).

use fs_err::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, accept4, bind, connect, listen,
    recv, send, socket,
};
use prost::Message;

use super::wire::{self, Handshake, Header};

/// The largest message read from a sentry; larger ones are dropped as malformed.
const MAX_MESSAGE: usize = 256 * 1024;
/// How often blocked threads look at their stop flag.
const TICK: Duration = Duration::from_millis(200);
/// How long a peer has for its half of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node waits before trying an unreachable Falco socket again.
const FALCO_RETRY: Duration = Duration::from_secs(1);

/// The node's runtime-monitoring counters (rendered by [`super::Monitoring::metrics_text`]).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages received from sentries.
    pub received: AtomicU64,
    /// Events written to JSON logs.
    pub logged: AtomicU64,
    /// Messages forwarded to Falco.
    pub forwarded: AtomicU64,
    /// Events Falco did not get (socket absent, refusing, full, or gone).
    pub dropped_falco: AtomicU64,
    /// Events the log did not get (a write failed).
    pub dropped_log: AtomicU64,
    /// Points the sentries dropped before they reached the node (their own count).
    pub dropped_sentry: AtomicU64,
    /// Messages that were malformed or too large, or of a type the node does not decode.
    pub undecoded: AtomicU64,
    /// Sentries connected now.
    pub connections: AtomicI64,
}

/// Where one sandbox's events go.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// The JSON event log, when asked for.
    pub log: Option<Arc<Mutex<EventLog>>>,
    /// Falco's socket, when asked for.
    pub falco: Option<PathBuf>,
}

/// A JSON-lines file with one rotation: past `max_bytes` it becomes `<path>.1` (replacing
/// the last one) and a new file starts.
#[derive(Debug)]
pub struct EventLog {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
}

impl EventLog {
    /// A log at `path` (created on the first event, mode 0600).
    pub fn new(path: PathBuf, max_bytes: u64) -> Self {
        let written = fs_err::metadata(&path).map(|m| m.len()).unwrap_or(0);
        EventLog {
            path,
            file: None,
            written,
            max_bytes,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            use fs_err::os::unix::fs::OpenOptionsExt;
            let f = fs_err::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            self.file = Some(f);
        }
        Ok(self.file.as_mut().unwrap_or_else(|| unreachable!()))
    }

    /// Append one line.
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.max_bytes {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            fs_err::rename(&self.path, old)?;
            self.written = 0;
        }
        self.open()?.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }
}

/// A running listener; dropping it stops its threads (within [`TICK`]) and removes the socket.
pub struct Listener {
    stop: Arc<AtomicBool>,
    socket: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = fs_err::remove_file(&self.socket);
    }
}

fn io(e: Errno, what: impl std::fmt::Display) -> std::io::Error {
    let kind = std::io::Error::from(e).kind();
    std::io::Error::new(kind, format!("{what}: {e}"))
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Listen on `path` (replacing a stale socket) and serve sentries until the listener is
/// dropped. `sandbox` names the sandbox in log messages.
pub fn listen_at(
    path: &Path,
    sandbox: &str,
    fanout: Fanout,
    counters: Arc<Counters>,
) -> std::io::Result<Listener> {
    let addr = UnixAddr::new(path).map_err(|e| {
        io(
            e,
            format_args!(
                "runtime monitoring socket {} (a unix socket path must be under 108 bytes; choose a shorter --data-dir)",
                path.display()
            ),
        )
    })?;
    let _ = fs_err::remove_file(path);
    let fd = seqpacket().map_err(|e| io(e, "creating a SOCK_SEQPACKET socket"))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| io(e, format_args!("binding {}", path.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| io(e, format_args!("listening on {}", path.display())))?;
    let stop = Arc::new(AtomicBool::new(false));
    let listener = Listener {
        stop: Arc::clone(&stop),
        socket: path.to_path_buf(),
    };
    let sandbox = sandbox.to_string();
    std::thread::Builder::new()
        .name(format!("monitor-{}", &sandbox[..sandbox.len().min(8)]))
        .spawn(move || accept_loop(fd, sandbox, fanout, counters, stop))?;
    Ok(listener)
}

/// Wait until `fd` is readable, the stop flag is set (false), or `limit` passes (false).
fn readable(fd: &OwnedFd, stop: &AtomicBool, limit: Option<Instant>) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) || limit.is_some_and(|l| Instant::now() >= l) {
            return false;
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)) {
            Ok(0) => continue,
            Ok(_) => return true,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

fn accept_loop(
    fd: OwnedFd,
    sandbox: String,
    fanout: Fanout,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    while readable(&fd, &stop, None) {
        match accept4(fd.as_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(conn) => {
                let (name, fanout, counters, stop) = (
                    sandbox.clone(),
                    fanout.clone(),
                    Arc::clone(&counters),
                    Arc::clone(&stop),
                );
                let spawned = std::thread::Builder::new()
                    .name("monitor-conn".into())
                    .spawn(move || serve(conn, &name, &fanout, &counters, &stop));
                if let Err(e) = spawned {
                    tracing::warn!(target: "node::monitor", sandbox = %sandbox, error = %e, "cannot serve a sentry connection");
                }
            }
            Err(Errno::EINTR | Errno::EAGAIN | Errno::ECONNABORTED) => {}
            Err(e) => {
                tracing::warn!(target: "node::monitor", sandbox = %sandbox, error = %e, "runtime monitoring listener failed");
                return;
            }
        }
    }
}

/// Read the peer's handshake and answer with ours (the listening side of the exchange).
fn handshake_as_server(conn: &OwnedFd, stop: &AtomicBool) -> Result<(), String> {
    if !readable(conn, stop, Some(Instant::now() + HANDSHAKE_TIMEOUT)) {
        return Err("no handshake within 5 s".into());
    }
    let mut buf = [0u8; 1024];
    let n = recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| e.to_string())?;
    let hs = Handshake::decode(&buf[..n]).map_err(|e| format!("bad handshake: {e}"))?;
    if hs.version < wire::VERSION {
        return Err(format!(
            "protocol version {} is older than {}",
            hs.version,
            wire::VERSION
        ));
    }
    let out = Handshake {
        version: wire::VERSION,
    }
    .encode_to_vec();
    send(conn.as_raw_fd(), &out, MsgFlags::MSG_NOSIGNAL).map_err(|e| e.to_string())?;
    Ok(())
}

fn serve(conn: OwnedFd, sandbox: &str, fanout: &Fanout, counters: &Counters, stop: &AtomicBool) {
    if let Err(e) = handshake_as_server(&conn, stop) {
        tracing::warn!(target: "node::monitor", sandbox = %sandbox, error = %e, "a sentry's runtime monitoring connection failed its handshake");
        return;
    }
    counters.connections.fetch_add(1, Ordering::SeqCst);
    let mut falco = fanout.falco.clone().map(|p| Falco::new(p, sandbox));
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut last_dropped = 0u32;
    while readable(&conn, stop, None) {
        let n = match recv(conn.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(_) => break,
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        if n > buf.len() {
            counters.undecoded.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let msg = &buf[..n];
        let Some(header) = Header::parse(msg) else {
            counters.undecoded.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let lost = header.dropped.wrapping_sub(last_dropped);
        last_dropped = header.dropped;
        counters
            .dropped_sentry
            .fetch_add(u64::from(lost), Ordering::Relaxed);
        if let Some(f) = falco.as_mut() {
            if f.forward(msg) {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.dropped_falco.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(log) = &fanout.log {
            let Some(event) = wire::decode(header.message_type, &msg[header.size..]) else {
                counters.undecoded.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            let written = log.lock().unwrap_or_else(|e| e.into_inner()).append(&line);
            match written {
                Ok(()) => counters.logged.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.dropped_log.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
    counters.connections.fetch_sub(1, Ordering::SeqCst);
}

/// The node's connection to Falco for one sentry connection.
struct Falco {
    path: PathBuf,
    sandbox: String,
    conn: Option<OwnedFd>,
    next_try: Instant,
    /// Whether the last attempt failed (to warn once per outage, not per event).
    down: bool,
}

impl Falco {
    fn new(path: PathBuf, sandbox: &str) -> Self {
        Falco {
            path,
            sandbox: sandbox.to_string(),
            conn: None,
            next_try: Instant::now(),
            down: false,
        }
    }

    /// Send one message as it came; false when it was dropped.
    fn forward(&mut self, msg: &[u8]) -> bool {
        if self.conn.is_none() {
            if Instant::now() < self.next_try {
                return false;
            }
            match connect_falco(&self.path) {
                Ok(fd) => {
                    if self.down {
                        tracing::info!(target: "node::monitor", sandbox = %self.sandbox, socket = %self.path.display(), "Falco's socket is reachable again");
                    }
                    self.down = false;
                    self.conn = Some(fd);
                }
                Err(e) => {
                    if !self.down {
                        tracing::warn!(target: "node::monitor", sandbox = %self.sandbox, error = %e, "Falco is not reachable; its runtime events are dropped (and counted) until it is");
                    }
                    self.down = true;
                    self.next_try = Instant::now() + FALCO_RETRY;
                    return false;
                }
            }
        }
        let Some(fd) = &self.conn else { return false };
        match send(
            fd.as_raw_fd(),
            msg,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(_) => true,
            // Falco is behind: this one is dropped, the connection stays.
            Err(Errno::EAGAIN) => false,
            Err(_) => {
                self.conn = None;
                self.next_try = Instant::now() + FALCO_RETRY;
                false
            }
        }
    }
}

/// Connect to a remote-protocol listener (Falco) at `path` and do the client's half of the
/// handshake.
pub fn connect_falco(path: &Path) -> Result<OwnedFd, String> {
    let what = || format!("Falco socket {}", path.display());
    let addr = UnixAddr::new(path).map_err(|e| format!("{}: {e}", what()))?;
    let fd = seqpacket().map_err(|e| format!("{}: {e}", what()))?;
    connect(fd.as_raw_fd(), &addr).map_err(|e| format!("{}: connect: {e}", what()))?;
    let hs = Handshake {
        version: wire::VERSION,
    }
    .encode_to_vec();
    send(fd.as_raw_fd(), &hs, MsgFlags::MSG_NOSIGNAL)
        .map_err(|e| format!("{}: sending the handshake: {e}", what()))?;
    let never = AtomicBool::new(false);
    if !readable(&fd, &never, Some(Instant::now() + HANDSHAKE_TIMEOUT)) {
        return Err(format!("{}: no handshake reply within 5 s", what()));
    }
    let mut buf = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("{}: reading the handshake: {e}", what()))?;
    let reply = Handshake::decode(&buf[..n])
        .map_err(|e| format!("{}: bad handshake reply: {e}", what()))?;
    if reply.version < wire::VERSION {
        return Err(format!(
            "{}: protocol version {} is older than {}",
            what(),
            reply.version,
            wire::VERSION
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_log_rotates_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("events.jsonl");
        let mut log = EventLog::new(p.clone(), 10);
        log.append(b"123456\n").unwrap();
        log.append(b"abcdef\n").unwrap();
        assert_eq!(fs_err::read_to_string(&p).unwrap(), "abcdef\n");
        assert_eq!(
            fs_err::read_to_string(d.path().join("events.jsonl.1")).unwrap(),
            "123456\n"
        );
    }

    /// A sentry stand-in: handshake, then one message; the node logs it and forwards it to a
    /// Falco stand-in; with Falco absent the forward is dropped and counted.
    #[test]
    fn serves_a_sentry_and_forwards() {
        let d = tempfile::tempdir().unwrap();
        let falco_path = d.path().join("falco.sock");
        let counters = Arc::new(Counters::default());
        let log = Arc::new(Mutex::new(EventLog::new(
            d.path().join("ev.jsonl"),
            1 << 20,
        )));
        let sock = d.path().join("m.sock");
        let _l = listen_at(
            &sock,
            "test",
            Fanout {
                log: Some(log),
                falco: Some(falco_path.clone()),
            },
            Arc::clone(&counters),
        )
        .unwrap();
        let sentry = || {
            let fd = seqpacket().unwrap();
            connect(fd.as_raw_fd(), &UnixAddr::new(&sock).unwrap()).unwrap();
            send(fd.as_raw_fd(), &[8, 1], MsgFlags::empty()).unwrap();
            let mut b = [0u8; 16];
            let n = recv(fd.as_raw_fd(), &mut b, MsgFlags::empty()).unwrap();
            assert_eq!(Handshake::decode(&b[..n]).unwrap().version, 1);
            fd
        };
        // A task_exit (type 5): context with a time, exit status 3.
        let payload = [0x0a, 0x02, 0x08, 0x01, 0x10, 0x03];
        let mut msg = vec![8, 0, 5, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&payload);
        let s = sentry();
        send(s.as_raw_fd(), &msg, MsgFlags::empty()).unwrap();
        let wait = |f: &dyn Fn() -> bool| {
            let end = Instant::now() + Duration::from_secs(5);
            while !f() {
                assert!(Instant::now() < end);
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait(&|| counters.dropped_falco.load(Ordering::SeqCst) == 1);
        wait(&|| counters.logged.load(Ordering::SeqCst) == 1);
        let line = fs_err::read_to_string(d.path().join("ev.jsonl")).unwrap();
        assert!(line.contains("\"event\":\"sentry/task_exit\""), "{line}");
        assert!(line.contains("\"exitStatus\":3"), "{line}");
        drop(s);

        // Falco listening: a new sentry connection's messages reach it as sent.
        let falco = seqpacket().unwrap();
        bind(falco.as_raw_fd(), &UnixAddr::new(&falco_path).unwrap()).unwrap();
        listen(&falco, Backlog::new(4).unwrap()).unwrap();
        let s = sentry();
        send(s.as_raw_fd(), &msg, MsgFlags::empty()).unwrap();
        let c = accept4(falco.as_fd(), SockFlag::SOCK_CLOEXEC).unwrap();
        let mut b = [0u8; 64];
        let n = recv(c.as_raw_fd(), &mut b, MsgFlags::empty()).unwrap();
        assert_eq!(Handshake::decode(&b[..n]).unwrap().version, 1);
        send(c.as_raw_fd(), &[8, 1], MsgFlags::empty()).unwrap();
        let n = recv(c.as_raw_fd(), &mut b, MsgFlags::empty()).unwrap();
        assert_eq!(&b[..n], &msg[..]);
        wait(&|| counters.forwarded.load(Ordering::SeqCst) == 1);
    }
}
