//! The only module with `unsafe`: raw system calls that nix does not wrap safely.
//!
//! It owns four things:
//! 1. the per-sandbox shim (like conmon), whose steps are: (intermediate) setsid, fork, `_exit`
//!    → (shim) become child subreaper, reset signals, close inherited fds, fork+exec the
//!    runtime's `create` with the log file as stdout/stderr → report the create status and the
//!    shim pid on a pipe → read the container pid file → reap every orphan, writing the
//!    container's exit code to a file atomically when its init exits → `_exit` once no
//!    children remain. The shim survives a restart of the agent, so exit codes are never lost.
//!    The intermediate is forked by the launcher, a fresh copy of the agent's own executable
//!    started once with `posix_spawn` (`/proc/self/exe` with a marker argument) and taken over
//!    before `main` by [`SHIM_ENTRY`], a constructor in `.init_array`; the agent sends it one
//!    request per shim over a socket (see [`launcher`]). Forking the agent itself would copy
//!    its page tables twice per sandbox (about 10 ms on a busy host) and leave every shim
//!    holding a copy-on-write snapshot of the agent's heap, which turns into private memory as
//!    the agent writes to it; forks of the small, idle launcher share its pages. Where the
//!    launcher does not work, the intermediate is a fork of the agent;
//! 2. the pre-exec hook that hides the cgroup2 mount from crun (hybrid hosts);
//! 3. pidfds (wait for the exit of a process that is not our child) and `setxattr`;
//! 4. for [`crate::exec`]: owning a PTY master received over a console socket, registering it
//!    with tokio, and its window size (`TIOCSWINSZ`).
//!
//! Code that runs between `fork` and `exec`/`_exit`, and the shim, only call async-signal-safe
//! libc functions on memory prepared before the fork (or, in the constructor, on the process's
//! arguments).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr, c_char, c_int};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::libc;

/// Everything the shim needs, prepared before the fork so the child never allocates.
pub struct ShimPlan {
    /// argv of the runtime `create` command, argv\[0\] an absolute path.
    pub argv: Vec<CString>,
    /// Environment of the `create` command.
    pub envp: Vec<CString>,
    /// File that receives the container's stdout and stderr (opened by the caller).
    pub log: OwnedFd,
    /// `/dev/null`, for stdin of the container and all stdio of the shim.
    pub devnull: OwnedFd,
    /// The runtime writes the container init pid here.
    pub pid_file: CString,
    /// The shim writes the exit code here first ...
    pub exit_tmp: CString,
    /// ... then renames it here.
    pub exit_file: CString,
    /// Run `create` in a private mount namespace without `/sys/fs/cgroup/unified` (crun on
    /// hybrid cgroup hosts).
    pub hide_cgroup2: bool,
}

/// Async-signal-safe: unshare the mount namespace, make it private, detach cgroup2 (crun on
/// hybrid cgroup hosts). Returns false if the unshare or the propagation change failed.
fn hide_cgroup2() -> bool {
    // SAFETY: raw syscalls on static NUL-terminated strings; no allocation happens here.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return false;
        }
        // Absent on pure v1 hosts: ignore the result.
        libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH);
    }
    true
}

/// Install the cgroup2-hiding hook on a command (crun's `create` and `run` on hybrid hosts).
pub(crate) fn hide_cgroup2_before_exec(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only performs raw,
    // async-signal-safe syscalls on static strings.
    unsafe {
        cmd.pre_exec(|| {
            if hide_cgroup2() {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// What the shim reports once `create` has finished.
#[derive(Debug, Clone, Copy)]
pub struct ShimStarted {
    /// Wait status of the runtime `create` process, as an exit code (128+signal if killed).
    pub create_exit: i32,
    /// Pid of the shim (it stays alive while the container runs).
    pub shim_pid: i32,
}

fn exit_code_of(status: c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// Async-signal-safe decimal formatting into a stack buffer.
fn fmt_i32(mut v: i32, buf: &mut [u8; 16]) -> usize {
    let neg = v < 0;
    let mut tmp = [0u8; 16];
    let mut n = 0;
    if v == 0 {
        tmp[0] = b'0';
        n = 1;
    }
    while v != 0 {
        let d = (v % 10).unsigned_abs() as u8;
        tmp[n] = b'0' + d;
        n += 1;
        v /= 10;
    }
    let mut len = 0;
    if neg {
        buf[0] = b'-';
        len = 1;
    }
    for i in (0..n).rev() {
        buf[len] = tmp[i];
        len += 1;
    }
    len
}

/// Async-signal-safe: read a decimal pid from a file.
///
/// # Safety
/// `path` must be a valid NUL-terminated string.
unsafe fn read_pid_file(path: *const c_char) -> i32 {
    let mut buf = [0u8; 32];
    // SAFETY: valid C string; buffer on the stack with its true length.
    let n = unsafe {
        let fd = libc::open(path, libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return -1;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    if n <= 0 {
        return -1;
    }
    let mut v: i32 = 0;
    for &b in &buf[..n as usize] {
        if b.is_ascii_digit() {
            v = v.saturating_mul(10).saturating_add((b - b'0') as i32);
        } else {
            break;
        }
    }
    if v > 0 { v } else { -1 }
}

/// The first argument that makes a start of this executable the sandbox shim.
const SHIM_MARKER: &CStr = c"--agent-sandbox-node-shim-v1";
/// What the shim prints to stdout when asked `ping` (the check that the constructor runs).
const SHIM_PONG: &[u8] = b"agent-sandbox-node-shim ok\n";

/// Runs before `main` in every process of an executable that links this crate (glibc calls
/// `.init_array` entries with `argc`, `argv`, `envp`). Returns at once unless the first
/// argument is [`SHIM_MARKER`]; then the process is a shim intermediate (see
/// [`spawn_shim`]) and never reaches `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static SHIM_ENTRY: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = shim_entry;

/// Arguments: `MARKER ping` (answers on stdout), or `MARKER launcher` (stdin is the agent's
/// end of the request socket; see [`launcher`]).
extern "C" fn shim_entry(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    if argc != 3 || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the process's argc/argv, valid NUL-terminated C strings for the life
    // of the process. Everything below is single-threaded (constructors run before any thread
    // exists) and ends in `_exit`.
    unsafe {
        let arg = |i: usize| *argv.add(i);
        if arg(1).is_null() || libc::strcmp(arg(1), SHIM_MARKER.as_ptr()) != 0 {
            return;
        }
        if libc::strcmp(arg(2), c"ping".as_ptr()) == 0 {
            libc::write(1, SHIM_PONG.as_ptr().cast(), SHIM_PONG.len());
            libc::_exit(0);
        }
        if libc::strcmp(arg(2), c"launcher".as_ptr()) == 0 {
            launcher();
        }
        libc::_exit(125);
    }
}

/// Largest request the launcher takes (paths and the runtime's argv).
const MAX_REQUEST: usize = 64 * 1024;

/// The launcher: a fresh copy of this executable, started once per agent process, that forks
/// every shim's intermediate. The shims are forks of this small, idle process, so they share
/// its pages (its relocated data, about 1 MiB for the agent) instead of each holding a copy,
/// and a fork of it is cheap. Each request on fd 0 (a `SOCK_SEQPACKET` socket) is one
/// datagram: `argc: u32`, `envc: u32`, then NUL-terminated strings (pid file, exit tmp, exit
/// file, hide `0`/`1`, the runtime's argv, its environment), with three fds (log, `/dev/null`,
/// the report pipe's write end). Exits when the agent's end closes.
///
/// # Safety
/// Only called from the constructor, in a fresh single-threaded process; never returns.
unsafe fn launcher() -> ! {
    // SAFETY: single-threaded process; raw libc calls on buffers owned here; the forked child
    // only calls async-signal-safe functions on memory prepared before the fork.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"sandbox-launch".as_ptr(), 0, 0, 0);
        let mut buf = vec![0u8; MAX_REQUEST];
        // Room for one SCM_RIGHTS message with three descriptors, aligned for cmsghdr.
        let mut control = [0u64; 16];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(0, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n == 0 {
                libc::_exit(0);
            }
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(1);
            }
            let mut fds: [RawFd; 3] = [-1; 3];
            let mut nfds = 0;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const c_int;
                    let k = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<c_int>();
                    for i in 0..k {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        if nfds < fds.len() {
                            fds[nfds] = fd;
                            nfds += 1;
                        } else {
                            libc::close(fd);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            let whole = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) == 0;
            if whole
                && nfds == 3
                && let Some(req) = parse_request(&buf[..n as usize])
            {
                let io = ShimIo {
                    argv: req.argv.as_ptr(),
                    envp: req.envp.as_ptr(),
                    log: fds[0],
                    devnull: fds[1],
                    report: fds[2],
                    pid_file: req.pid_file,
                    exit_tmp: req.exit_tmp,
                    exit_file: req.exit_file,
                    hide_cgroup2: req.hide_cgroup2,
                };
                let pid = libc::fork();
                if pid == 0 {
                    libc::close(0);
                    intermediate(&io);
                }
                // The intermediate exits right after forking the shim.
                let mut status: c_int = 0;
                while pid > 0
                    && libc::waitpid(pid, &mut status, 0) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
            // Without a shim the report pipe closes here, and the agent reads why.
            for &fd in &fds[..nfds] {
                libc::close(fd);
            }
        }
    }
}

/// A launcher request, as pointers into the received datagram.
struct Request {
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    pid_file: *const c_char,
    exit_tmp: *const c_char,
    exit_file: *const c_char,
    hide_cgroup2: bool,
}

/// Parse a request (see [`launcher`]); `None` if malformed.
fn parse_request(data: &[u8]) -> Option<Request> {
    let argc = u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let envc = u32::from_ne_bytes(data.get(4..8)?.try_into().ok()?) as usize;
    let mut strings: Vec<*const c_char> = Vec::new();
    let mut rest = data.get(8..)?;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == 0)?;
        strings.push(rest.as_ptr().cast());
        rest = &rest[end + 1..];
    }
    if argc == 0 || strings.len() != 4 + argc + envc {
        return None;
    }
    // SAFETY: every pointer in `strings` starts a NUL-terminated string inside `data`.
    let hide_cgroup2 = unsafe { libc::strcmp(strings[3], c"1".as_ptr()) == 0 };
    let mut argv = strings[4..4 + argc].to_vec();
    argv.push(std::ptr::null());
    let mut envp = strings[4 + argc..].to_vec();
    envp.push(std::ptr::null());
    Some(Request {
        argv,
        envp,
        pid_file: strings[0],
        exit_tmp: strings[1],
        exit_file: strings[2],
        hide_cgroup2,
    })
}

/// What the intermediate and the shim work with: raw pointers into memory that stays valid
/// (the plan of the forking parent, or the process's arguments), and fds.
struct ShimIo {
    /// NULL-terminated argv of the runtime's `create`.
    argv: *const *const c_char,
    /// NULL-terminated environment of the runtime's `create`.
    envp: *const *const c_char,
    log: RawFd,
    devnull: RawFd,
    report: RawFd,
    pid_file: *const c_char,
    exit_tmp: *const c_char,
    exit_file: *const c_char,
    hide_cgroup2: bool,
}

/// Whether shims start as fresh copies of this executable (checked once: the constructor
/// answers `ping`).
fn exec_shim_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        // Keep the constructor linked wherever the shim can be spawned.
        std::hint::black_box(SHIM_ENTRY);
        let child = std::process::Command::new("/proc/self/exe")
            .arg0("agent-sandbox-shim")
            .arg(OsStr::from_bytes(SHIM_MARKER.to_bytes()))
            .arg("ping")
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            return false;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let ok = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
            }
        };
        let mut out = Vec::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_end(&mut out);
        }
        let works = ok && out == SHIM_PONG;
        if !works {
            tracing::warn!(target: "node::host", "sandbox shims fork the agent: starting this executable as a shim did not work");
        }
        works
    })
}

/// Read the shim's report (create exit code, shim pid) from the pipe.
fn read_report(rd: &OwnedFd) -> std::io::Result<ShimStarted> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(rd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if got != buf.len() {
        return Err(std::io::Error::other(
            "sandbox shim exited before reporting the runtime create status",
        ));
    }
    Ok(ShimStarted {
        create_exit: i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
        shim_pid: i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]),
    })
}

/// Spawn the shim described in the module docs and wait until the runtime's `create` finished.
/// Blocking: call it from `spawn_blocking`.
pub(crate) fn spawn_shim(plan: ShimPlan) -> std::io::Result<ShimStarted> {
    if exec_shim_works() {
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        match launch(&plan, &wr) {
            Ok(()) => {
                // The launcher and the shim hold the write end now.
                drop(wr);
                drop(plan);
                return read_report(&rd);
            }
            Err(e) => {
                tracing::warn!(target: "node::host", error = %e, "the shim launcher failed; forking the shim");
            }
        }
    }
    spawn_shim_fork(plan)
}

/// The agent's end of the launcher's socket, and the launcher.
struct Launcher {
    sock: OwnedFd,
    child: std::process::Child,
}

/// The launcher of this process (started on first use, restarted if it died).
static LAUNCHER: std::sync::Mutex<Option<Launcher>> = std::sync::Mutex::new(None);

fn start_launcher() -> std::io::Result<Launcher> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let child = std::process::Command::new("/proc/self/exe")
        .arg0("sandbox-launcher")
        .arg(OsStr::from_bytes(SHIM_MARKER.to_bytes()))
        .arg("launcher")
        .env_clear()
        .stdin(theirs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    Ok(Launcher { sock: ours, child })
}

/// Ask the launcher for a shim (starting or restarting the launcher as needed).
fn launch(plan: &ShimPlan, report: &OwnedFd) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let mut payload = Vec::with_capacity(1024);
    payload.extend_from_slice(&(plan.argv.len() as u32).to_ne_bytes());
    payload.extend_from_slice(&(plan.envp.len() as u32).to_ne_bytes());
    let hide: &CStr = if plan.hide_cgroup2 { c"1" } else { c"0" };
    for s in [
        plan.pid_file.as_c_str(),
        plan.exit_tmp.as_c_str(),
        plan.exit_file.as_c_str(),
        hide,
    ]
    .into_iter()
    .chain(plan.argv.iter().map(CString::as_c_str))
    .chain(plan.envp.iter().map(CString::as_c_str))
    {
        payload.extend_from_slice(s.to_bytes_with_nul());
    }
    if payload.len() > MAX_REQUEST {
        return Err(std::io::Error::other("the shim request is too large"));
    }
    let fds = [
        plan.log.as_raw_fd(),
        plan.devnull.as_raw_fd(),
        report.as_raw_fd(),
    ];
    let mut guard = LAUNCHER.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = None;
    for _ in 0..2 {
        if guard.is_none() {
            *guard = Some(start_launcher()?);
        }
        let Some(l) = guard.as_ref() else { break };
        let sent = sendmsg::<()>(
            l.sock.as_raw_fd(),
            &[std::io::IoSlice::new(&payload)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            Ok(_) => return Ok(()),
            Err(e) => {
                // Gone (or wedged): reap it and start another.
                if let Some(mut l) = guard.take() {
                    let _ = l.child.kill();
                    let _ = l.child.wait();
                }
                last = Some(std::io::Error::from(e));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no shim launcher")))
}

/// The intermediate as a fork of the agent (where starting this executable again does not
/// work).
fn spawn_shim_fork(plan: ShimPlan) -> std::io::Result<ShimStarted> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut argv_ptrs: Vec<*const c_char> = plan.argv.iter().map(|s| s.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const c_char> = plan.envp.iter().map(|s| s.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let io = ShimIo {
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        log: plan.log.as_raw_fd(),
        devnull: plan.devnull.as_raw_fd(),
        report: wr.as_raw_fd(),
        pid_file: plan.pid_file.as_ptr(),
        exit_tmp: plan.exit_tmp.as_ptr(),
        exit_file: plan.exit_file.as_ptr(),
        hide_cgroup2: plan.hide_cgroup2,
    };

    // SAFETY: fork in a multi-threaded process; the child only runs async-signal-safe libc
    // calls on data prepared above (pointers stay valid: the child has a copy of this memory)
    // and always ends in `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; this never returns.
        unsafe { intermediate(&io) }
    }
    drop(wr);
    // Reap the intermediate process (it exits right after forking the shim).
    while let Err(nix::errno::Errno::EINTR) =
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
    {}
    read_report(&rd)
}

/// The intermediate: a new session, then the shim in a child; exits at once.
///
/// # Safety
/// Only called in a fresh child process (of `fork`, or the constructor's process); the
/// pointers in `io` are valid; never returns.
unsafe fn intermediate(io: &ShimIo) -> ! {
    // SAFETY: async-signal-safe calls only; every path ends in `_exit`.
    unsafe {
        libc::setsid();
        let pid = libc::fork();
        if pid != 0 {
            libc::_exit(if pid < 0 { 1 } else { 0 });
        }
        shim(io)
    }
}

/// The shim itself (see the module docs).
///
/// # Safety
/// As [`intermediate`].
unsafe fn shim(io: &ShimIo) -> ! {
    // SAFETY: async-signal-safe calls only; every path ends in `_exit`.
    unsafe {
        // What `ps` and `top` show (otherwise the launcher's or the agent's name).
        libc::prctl(libc::PR_SET_NAME, c"sandbox-shim".as_ptr(), 0, 0, 0);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [
            libc::SIGCHLD,
            libc::SIGPIPE,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        let (log, devnull, wr) = (io.log, io.devnull, io.report);
        libc::dup2(devnull, 0);
        libc::dup2(devnull, 1);
        libc::dup2(devnull, 2);
        // Close every inherited descriptor except the three we need.
        let mut keep: [RawFd; 3] = [log, devnull, wr];
        keep.sort_unstable();
        let mut lo: libc::c_uint = 3;
        for &fd in keep.iter() {
            let fd = fd as libc::c_uint;
            if fd > lo {
                libc::syscall(libc::SYS_close_range, lo, fd - 1, 0);
            }
            if fd + 1 > lo {
                lo = fd + 1;
            }
        }
        libc::syscall(libc::SYS_close_range, lo, libc::c_uint::MAX, 0);

        let create = libc::fork();
        if create == 0 {
            libc::dup2(devnull, 0);
            libc::dup2(log, 1);
            libc::dup2(log, 2);
            // Only stdio goes to the runtime (and on to the container).
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                0,
            );
            if io.hide_cgroup2 && !hide_cgroup2() {
                libc::_exit(126);
            }
            libc::execve(*io.argv, io.argv, io.envp);
            libc::_exit(127);
        }
        let mut status: c_int = 0;
        let create_exit = if create < 0 {
            127
        } else {
            loop {
                let r = libc::waitpid(create, &mut status, 0);
                if r == create {
                    break exit_code_of(status);
                }
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    break 127;
                }
            }
        };
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&create_exit.to_ne_bytes());
        msg[4..].copy_from_slice(&libc::getpid().to_ne_bytes());
        libc::write(wr, msg.as_ptr().cast(), msg.len());
        libc::close(wr);
        libc::close(log);

        let container = if create_exit == 0 {
            read_pid_file(io.pid_file)
        } else {
            -1
        };
        loop {
            let r = libc::waitpid(-1, &mut status, 0);
            if r < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            if r == container {
                let mut buf = [0u8; 16];
                let n = fmt_i32(exit_code_of(status), &mut buf);
                let fd = libc::open(
                    io.exit_tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::write(fd, buf.as_ptr().cast(), n);
                    libc::fsync(fd);
                    libc::close(fd);
                    libc::rename(io.exit_tmp, io.exit_file);
                }
            }
        }
        libc::_exit(0);
    }
}

/// Open a pidfd for any process (child or not). `None` if it no longer exists.
pub(crate) fn pidfd_open(pid: i32) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: plain syscall with integer arguments; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(None);
        }
        return Err(err);
    }
    // SAFETY: the kernel just returned this fd and nobody else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// Wait until the process behind a pidfd exits (the pidfd becomes readable), up to `timeout`.
/// Returns false on timeout.
pub(crate) async fn wait_pidfd(fd: OwnedFd, timeout: std::time::Duration) -> std::io::Result<bool> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // refers to the same pidfd until the AsyncFd is dropped at the end of this function.
    let afd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
    match tokio::time::timeout(timeout, afd.readable()).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Take ownership of a descriptor that `recvmsg` just installed in this process from an
/// `SCM_RIGHTS` message (the PTY master an OCI runtime hands over on its console socket).
pub(crate) fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in our table while receiving the message and returned
    // it to this caller only; nothing else owns or closes it, so the OwnedFd is its one owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Register a non-blocking descriptor (a PTY master) with tokio's reactor.
pub(crate) fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and
    // refers to the same file until the AsyncFd is dropped, which deregisters it first.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Set the window size of a terminal (`TIOCSWINSZ` on a PTY master), which the kernel reports
/// to the foreground process group with `SIGWINCH`.
pub(crate) fn set_window_size(
    fd: std::os::fd::BorrowedFd<'_>,
    cols: u16,
    rows: u16,
) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid open descriptor (borrowed for the call) and a pointer to an initialised
    // `winsize` that outlives the call; the kernel only reads it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bring the loopback interface of the calling thread's network namespace up
/// (`SIOCGIFFLAGS`/`SIOCSIFFLAGS` on `lo`), instead of running the CNI loopback plugin.
pub(crate) fn loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket fd and a properly initialised `ifreq` that outlives both calls; the
    // kernel reads the name and reads/writes the flags union member.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Set an extended attribute on a path (no symlink following).
pub(crate) fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: valid C strings and a slice with its true length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fmt_i32;

    #[test]
    fn this_executable_starts_as_a_shim() {
        assert!(super::exec_shim_works());
    }

    #[test]
    fn formats_integers() {
        for v in [0, 7, 137, -1, i32::MAX, i32::MIN] {
            let mut b = [0u8; 16];
            let n = fmt_i32(v, &mut b);
            assert_eq!(std::str::from_utf8(&b[..n]).unwrap(), v.to_string());
        }
    }
}
