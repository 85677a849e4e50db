//! The crate's only `unsafe`: hooks that run in a forked child between `fork` and `exec`.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

/// Makes the child a session leader whose controlling terminal is its stdin (a PTY slave), and
/// optionally keeps `inherit` open across exec.
pub(crate) fn pty_session(cmd: &mut Command, inherit: Option<Arc<OwnedFd>>) {
    // SAFETY: the hook runs in the child after fork and before exec. It only makes the raw
    // system calls setsid(2), ioctl(TIOCSCTTY) and fcntl(F_SETFD) through rustix, which neither
    // allocate nor take locks, so it is async-signal-safe in a multi-threaded parent.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            if let Some(fd) = &inherit {
                rustix::io::fcntl_setfd(&**fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
}

/// Keeps `fd` open across exec in the child (it is close-on-exec in the parent, so other
/// children spawned at the same time do not inherit it).
pub(crate) fn inherit_fd(cmd: &mut Command, fd: Arc<OwnedFd>) {
    // SAFETY: the hook runs in the child after fork and before exec and only clears the
    // close-on-exec flag with fcntl(F_SETFD) through rustix, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            rustix::io::fcntl_setfd(&*fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
}

/// Registers an owned descriptor (a PTY master) with tokio's reactor.
pub(crate) fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `AsyncFd::register` requires the descriptor to stay open and refer to the same
    // file for as long as the `AsyncFd` lives. The `OwnedFd` is moved into the `AsyncFd`, which
    // is its only owner, so it is closed only when the `AsyncFd` is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd).map_err(|e| e.into()) }
}
