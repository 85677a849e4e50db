//! The only module with `unsafe`: raw system calls that nix does not wrap safely.
//!
//! It owns three things:
//! 1. the per-sandbox shim (like conmon), whose steps are: (intermediate) setsid, fork, `_exit`
//!    → (shim) become child subreaper, reset signals, close inherited fds, fork+exec the
//!    runtime's `create` with the log file as stdout/stderr → report the create status and the
//!    shim pid on a pipe → read the container pid file → reap every orphan, writing the
//!    container's exit code to a file atomically when its init exits → `_exit` once no
//!    children remain. The shim survives a restart of the agent, so exit codes are never lost.
//!    The intermediate is a fresh copy of the agent's own executable started with
//!    `posix_spawn` (`/proc/self/exe` with a marker argument), taken over before `main` by
//!    [`SHIM_ENTRY`], a constructor in `.init_array`: forking the agent itself would copy its
//!    page tables twice per sandbox (about 10 ms on a busy host) and leave every shim holding a
//!    copy-on-write snapshot of the agent's heap, which turns into private memory as the agent
//!    writes to it. Where that does not work (checked once), the intermediate is a plain fork;
//! 2. the pre-exec hook that hides the cgroup2 mount from crun (hybrid hosts);
//! 3. pidfds (wait for the exit of a process that is not our child) and `setxattr`.
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
pub(crate) struct ShimPlan {
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
pub(crate) struct ShimStarted {
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

/// Arguments: `MARKER ping`, or `MARKER <pid file> <exit tmp> <exit file> <hide 0|1>
/// <runtime argv...>`, with stdin `/dev/null`, stdout the container log and stderr the report
/// pipe.
extern "C" fn shim_entry(argc: c_int, argv: *const *const c_char, envp: *const *const c_char) {
    if argc < 2 || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the process's argc/argv/envp, valid NUL-terminated arrays of C
    // strings for the life of the process. Everything below is single-threaded (constructors
    // run before any thread exists), only raw libc calls, and ends in `_exit`.
    unsafe {
        let arg = |i: c_int| *argv.add(i as usize);
        if arg(1).is_null() || libc::strcmp(arg(1), SHIM_MARKER.as_ptr()) != 0 {
            return;
        }
        if argc == 3 && libc::strcmp(arg(2), c"ping".as_ptr()) == 0 {
            libc::write(1, SHIM_PONG.as_ptr().cast(), SHIM_PONG.len());
            libc::_exit(0);
        }
        if argc < 7 {
            libc::_exit(125);
        }
        // `ps` and `top` show the executable's name otherwise, which is `exe`.
        libc::prctl(libc::PR_SET_NAME, c"sandbox-shim".as_ptr(), 0, 0, 0);
        let report = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
        let log = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if report < 0 || log < 0 {
            libc::_exit(125);
        }
        libc::dup2(0, 1);
        libc::dup2(0, 2);
        let io = ShimIo {
            argv: argv.add(6),
            envp,
            log,
            devnull: 0,
            report,
            pid_file: arg(2),
            exit_tmp: arg(3),
            exit_file: arg(4),
            hide_cgroup2: libc::strcmp(arg(5), c"1".as_ptr()) == 0,
        };
        intermediate(&io)
    }
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
        spawn_shim_exec(plan)
    } else {
        spawn_shim_fork(plan)
    }
}

/// The intermediate as a fresh process of this executable, started with `posix_spawn`.
fn spawn_shim_exec(plan: ShimPlan) -> std::io::Result<ShimStarted> {
    use std::os::unix::process::CommandExt;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("agent-sandbox-shim")
        .arg(OsStr::from_bytes(SHIM_MARKER.to_bytes()))
        .arg(OsStr::from_bytes(plan.pid_file.as_bytes()))
        .arg(OsStr::from_bytes(plan.exit_tmp.as_bytes()))
        .arg(OsStr::from_bytes(plan.exit_file.as_bytes()))
        .arg(if plan.hide_cgroup2 { "1" } else { "0" })
        .args(plan.argv.iter().map(|a| OsStr::from_bytes(a.as_bytes())))
        .env_clear();
    for e in &plan.envp {
        let b = e.as_bytes();
        if let Some(i) = b.iter().position(|&c| c == b'=') {
            cmd.env(OsStr::from_bytes(&b[..i]), OsStr::from_bytes(&b[i + 1..]));
        }
    }
    cmd.stdin(plan.devnull).stdout(plan.log).stderr(wr);
    let mut child = cmd.spawn()?;
    // Our copies of the pipe's write end and the log go with the command.
    drop(cmd);
    let report = read_report(&rd);
    // The intermediate exits right after forking the shim.
    let status = child.wait()?;
    match report {
        Err(e) if !status.success() => Err(std::io::Error::new(
            e.kind(),
            format!("{e} (the shim's intermediate process ended with {status})"),
        )),
        r => r,
    }
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
