//! Every side effect on the host outside the node's own data directories goes through here:
//! mounts and unmounts (overlay rootfs, network-namespace bind mounts), network namespace
//! creation, running external programs (OCI runtimes, CNI plugins), cgroup directory removal.
//! Each function logs what it does at `debug` level under the `node::host` target, so one
//! filter shows the full audit trail.
//!
//! The sandbox engine reaches the mount, network-namespace and cgroup effects, finds and runs
//! its programs and starts its shims through the [`Host`] trait: [`SystemHost`] performs them (with the free functions below), and
//! [`RecordingHost`] records them and returns scripted results, so the engine's steps are
//! unit-tested without root.

mod copy;
mod recording;

pub use crate::sys::{ShimPlan, ShimStarted};
pub use copy::{CopyBudget, CopyError, Stop, tree_size};
pub use recording::{HostCall, RecordingHost};

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use tokio::io::AsyncWriteExt;

use crate::error::{NodeError, Result};

const TARGET: &str = "node::host";

/// The host effects of the sandbox engine: mounts, network namespaces, cgroups.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// See [`mount_overlay`].
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<()>;
    /// See [`mount_tmpfs`].
    fn mount_tmpfs(&self, target: &Path, size: u64) -> Result<()>;
    /// See [`unmount`].
    fn unmount(&self, target: &Path) -> Result<()>;
    /// See [`is_mounted`].
    fn is_mounted(&self, path: &Path) -> bool;
    /// See [`mounts_under`].
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf>;
    /// See [`create_netns`].
    fn create_netns(&self, path: &Path) -> Result<()>;
    /// See [`remove_netns`].
    fn remove_netns(&self, path: &Path) -> Result<()>;
    /// See [`remove_cgroup`].
    fn remove_cgroup(&self, rel: &str) -> Result<()>;
    /// See [`set_frozen`].
    fn set_frozen(&self, rel: &str, frozen: bool) -> Result<()>;
    /// See [`is_frozen`].
    fn is_frozen(&self, rel: &str) -> Option<bool>;
    /// Find a program on the standard system PATH (see [`crate::runtime::find_binary`]).
    fn find_program(&self, name: &str) -> Option<PathBuf>;
    /// Start the shim that runs a runtime's `create` (or `run`) and stays the container's
    /// parent (see the private `sys` module); blocking.
    fn spawn_shim(&self, plan: ShimPlan) -> std::io::Result<ShimStarted>;
    /// See [`run`]: run an external program (an OCI runtime, a CNI plugin) to completion.
    fn run<'a>(
        &'a self,
        cmd: tokio::process::Command,
        stdin: Option<&'a [u8]>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<CmdOutput>>;
    /// See [`copy_tree`]: copy a directory tree for a snapshot (blocking).
    fn copy_tree(
        &self,
        from: &Path,
        to: &Path,
        budget: &CopyBudget,
    ) -> std::result::Result<u64, CopyError>;
}

/// The real host: every call is the free function of the same name.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<()> {
        mount_overlay(lowers, upper, work, target)
    }
    fn mount_tmpfs(&self, target: &Path, size: u64) -> Result<()> {
        mount_tmpfs(target, size)
    }
    fn unmount(&self, target: &Path) -> Result<()> {
        unmount(target)
    }
    fn is_mounted(&self, path: &Path) -> bool {
        is_mounted(path)
    }
    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        mounts_under(dir)
    }
    fn create_netns(&self, path: &Path) -> Result<()> {
        create_netns(path)
    }
    fn remove_netns(&self, path: &Path) -> Result<()> {
        remove_netns(path)
    }
    fn remove_cgroup(&self, rel: &str) -> Result<()> {
        remove_cgroup(rel)
    }
    fn set_frozen(&self, rel: &str, frozen: bool) -> Result<()> {
        set_frozen(rel, frozen)
    }
    fn is_frozen(&self, rel: &str) -> Option<bool> {
        is_frozen(rel)
    }
    fn find_program(&self, name: &str) -> Option<PathBuf> {
        crate::runtime::find_binary(name)
    }
    fn spawn_shim(&self, plan: ShimPlan) -> std::io::Result<ShimStarted> {
        crate::sys::spawn_shim(plan)
    }
    fn run<'a>(
        &'a self,
        cmd: tokio::process::Command,
        stdin: Option<&'a [u8]>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<CmdOutput>> {
        Box::pin(run(cmd, stdin, timeout))
    }
    fn copy_tree(
        &self,
        from: &Path,
        to: &Path,
        budget: &CopyBudget,
    ) -> std::result::Result<u64, CopyError> {
        copy_tree(from, to, budget)
    }
}

/// Mount an overlay with the given lower directories (topmost first) on `target`.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if opts.len() >= 4000 {
        return Err(NodeError::Config(format!(
            "overlay options for {} are {} bytes, over the kernel's page limit: too many layers or a too long data directory path",
            target.display(),
            opts.len()
        )));
    }
    tracing::debug!(target: TARGET, target_dir = %target.display(), %opts, "mount overlay");
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| NodeError::sys("mount overlay", target, e))
}

/// Mount a memory-backed filesystem of at most `size` bytes on `target` (mode 0755, no
/// devices, no set-uid, nothing executable).
pub fn mount_tmpfs(target: &Path, size: u64) -> Result<()> {
    tracing::debug!(target: TARGET, target_dir = %target.display(), size, "mount tmpfs");
    let opts = format!("mode=0755,size={size}");
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(|e| NodeError::sys("mount tmpfs", target, e))
}

/// Unmount `target` if it is mounted (lazily if busy). Missing or unmounted paths are fine.
pub fn unmount(target: &Path) -> Result<()> {
    tracing::debug!(target: TARGET, path = %target.display(), "unmount");
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| NodeError::sys("unmount (detach)", target, e)),
        Err(e) => Err(NodeError::sys("unmount", target, e)),
    }
}

/// Whether `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs_err::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// All mount points under `dir` (for leak checks and cleanup).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs_err::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Create a new network namespace with `lo` up and pin it with a bind mount on `path` (like
/// `ip netns add` + `ip link set lo up`). The namespace is made on a short-lived thread so no
/// other thread changes namespace.
pub fn create_netns(path: &Path) -> Result<()> {
    tracing::debug!(target: TARGET, path = %path.display(), "create netns");
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir)?;
    }
    fs_err::File::create(path)?;
    let target = path.to_path_buf();
    let res = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NodeError::sys("unshare network namespace", &target, e))?;
        crate::sys::loopback_up().map_err(|e| {
            NodeError::Io(std::io::Error::new(
                e.kind(),
                format!("bring up lo in network namespace {}: {e}", target.display()),
            ))
        })?;
        nix::mount::mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| NodeError::sys("bind-mount network namespace", &target, e))
    })
    .join()
    .map_err(|_| NodeError::Config("network namespace thread panicked".into()))?;
    if res.is_err() {
        let _ = fs_err::remove_file(path);
    }
    res
}

/// Unpin and remove a network namespace made by [`create_netns`]. Missing is fine.
pub fn remove_netns(path: &Path) -> Result<()> {
    tracing::debug!(target: TARGET, path = %path.display(), "remove netns");
    unmount(path)?;
    match fs_err::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The freezer file of a cgroup: v1 `freezer.state` when the v1 freezer hierarchy has the
/// cgroup, else cgroup2's `cgroup.freeze`; `None` when neither exists.
fn freezer_file(rel: &str) -> Option<(PathBuf, bool)> {
    let rel = rel.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup/freezer")
        .join(rel)
        .join("freezer.state");
    if v1.exists() {
        return Some((v1, true));
    }
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|root| Path::new(root).join(rel).join("cgroup.freeze"))
        .find(|p| p.exists())
        .map(|p| (p, false))
}

/// Ask the cgroup freezer to freeze (or thaw) every process of cgroup `rel`. Freezing is
/// asynchronous: [`is_frozen`] says when it is done.
pub fn set_frozen(rel: &str, frozen: bool) -> Result<()> {
    let (file, v1) = freezer_file(rel).ok_or_else(|| {
        NodeError::NotFound(format!(
            "the freezer of cgroup {rel} (neither cgroup v1 nor v2 has it)"
        ))
    })?;
    let value = match (v1, frozen) {
        (true, true) => "FROZEN",
        (true, false) => "THAWED",
        (false, true) => "1",
        (false, false) => "0",
    };
    fs_err::write(&file, value)?;
    Ok(())
}

/// Whether cgroup `rel` is frozen: every process stopped (v1 `FROZEN`, cgroup2 `frozen 1`);
/// `None` when it has no freezer.
pub fn is_frozen(rel: &str) -> Option<bool> {
    let (file, v1) = freezer_file(rel)?;
    if v1 {
        let state = fs_err::read_to_string(&file).ok()?;
        return Some(state.trim() == "FROZEN");
    }
    let events = fs_err::read_to_string(file.with_file_name("cgroup.events")).ok()?;
    Some(events.lines().any(|l| l.trim() == "frozen 1"))
}

/// Remove a cgroup directory from every v1 hierarchy and from cgroup2 (only empty cgroups can
/// be removed; missing ones are fine). Used for leftovers after a runtime failed to delete.
pub fn remove_cgroup(rel: &str) -> Result<()> {
    let rel = rel.trim_start_matches('/');
    let Ok(entries) = fs_err::read_dir("/sys/fs/cgroup") else {
        return Ok(());
    };
    for e in entries.flatten() {
        let dir = e.path().join(rel);
        if dir.is_dir() {
            tracing::debug!(target: TARGET, path = %dir.display(), "remove cgroup");
            // Killed tasks leave the cgroup asynchronously (a fork bomb's many children take a
            // moment): retry EBUSY for up to a second.
            let mut tries = 0;
            loop {
                match fs_err::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                    Err(err) if err.kind() == std::io::ErrorKind::ResourceBusy && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    Ok(())
}

/// Whether a cgroup exists in any hierarchy (for leak checks).
pub fn cgroup_exists(rel: &str) -> bool {
    let rel = rel.trim_start_matches('/');
    let Ok(entries) = fs_err::read_dir("/sys/fs/cgroup") else {
        return false;
    };
    entries.flatten().any(|e| e.path().join(rel).is_dir())
}

/// Whether bridged IPv4 traffic can be filtered by `inet` tables (br_netfilter is present).
pub fn bridge_netfilter_available() -> bool {
    Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
}

/// Make `bridge` pass its bridged IPv4 and IPv6 traffic through the `inet` hooks (the per-bridge
/// switch, so the host-wide sysctl is left alone). A missing bridge is fine: it is made by the
/// first CNI ADD, and the next call sets it.
pub fn enable_bridge_netfilter(bridge: &str) {
    for knob in ["nf_call_iptables", "nf_call_ip6tables"] {
        let p = Path::new("/sys/class/net")
            .join(bridge)
            .join("bridge")
            .join(knob);
        if fs_err::read_to_string(&p).is_ok_and(|v| v.trim() == "0") {
            tracing::debug!(target: TARGET, path = %p.display(), "enable bridge netfilter");
            if let Err(e) = fs_err::write(&p, "1") {
                tracing::warn!(target: TARGET, error = %e, "enabling netfilter on the bridge failed");
            }
        }
    }
}

/// Apply an nftables script in one transaction (`nft -f -`). The error is nft's message.
pub async fn nft_apply(nft: &Path, script: &str) -> std::result::Result<(), String> {
    tracing::debug!(target: TARGET, bytes = script.len(), "nft -f -");
    let mut cmd = command(nft);
    cmd.args(["-f", "-"]);
    match run(cmd, Some(script.as_bytes()), Duration::from_secs(30)).await {
        Ok(out) if out.code == 0 => Ok(()),
        Ok(out) => Err(format!(
            "nft -f failed (exit {}): {}",
            out.code,
            out.message()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Removes the nftables tables `<prefix><bridge>` (other than `own`) whose bridge is gone from
/// this host and whose rules name `subnet`: an instance that stopped leaves its tables behind,
/// and their drop rules for the subnet then drop the traffic of a later instance on another
/// bridge with the same subnet. A table whose bridge exists belongs to a running instance and
/// is left alone. Returns the `family name` of each table removed.
pub async fn nft_remove_stale_tables(
    nft: &Path,
    own: &str,
    prefix: &str,
    table_of: impl Fn(&str) -> String,
    subnet: &str,
) -> Vec<String> {
    let list = |args: Vec<String>| {
        let mut cmd = command(nft);
        cmd.args(args);
        run(cmd, None, Duration::from_secs(10))
    };
    let Ok(out) = list(vec!["list".into(), "tables".into()]).await else {
        return Vec::new();
    };
    let live: std::collections::HashSet<String> = fs_err::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| table_of(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let (Some("table"), Some(family), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if name == own || !name.starts_with(prefix) || live.contains(name) {
            continue;
        }
        let Ok(rules) = list(vec![
            "list".into(),
            "table".into(),
            family.into(),
            name.into(),
        ])
        .await
        else {
            continue;
        };
        if !String::from_utf8_lossy(&rules.stdout).contains(subnet) {
            continue;
        }
        let deleted = list(vec![
            "delete".into(),
            "table".into(),
            family.into(),
            name.into(),
        ])
        .await;
        if deleted.is_ok_and(|o| o.code == 0) {
            removed.push(format!("{family} {name}"));
        }
    }
    removed
}

/// Connect to `addr` from a TCP socket made inside the network namespace at `netns` (probes
/// and hooks reach the pod as from inside it). The socket is made on a short-lived thread so
/// no pooled thread changes namespace; it keeps its namespace afterwards.
pub async fn tcp_connect_in_netns(
    netns: &Path,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let ns = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| -> std::io::Result<std::os::fd::OwnedFd> {
            let f = fs_err::File::open(&ns)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(socket(
                if addr.is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                },
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )?)
        })();
        let _ = tx.send(r);
    });
    let fd = rx
        .await
        .map_err(|_| std::io::Error::other("socket thread ended"))??;
    let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("i/o timeout after {timeout:?}"),
        )),
    }
}

/// Copy the tree at `from` to `to` (a snapshot's layer or volume data), counting its bytes
/// against `budget`; see [`copy::copy_tree`].
pub fn copy_tree(
    from: &Path,
    to: &Path,
    budget: &CopyBudget,
) -> std::result::Result<u64, CopyError> {
    tracing::debug!(target: TARGET, from = %from.display(), to = %to.display(), "copy tree");
    copy::copy_tree(from, to, budget)
}

/// Output of an external program.
#[derive(Debug, Clone, Default)]
pub struct CmdOutput {
    /// Exit code (128+signal when killed).
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    /// Trimmed stderr, or stdout if stderr is empty.
    pub fn message(&self) -> String {
        let err = String::from_utf8_lossy(&self.stderr).trim().to_string();
        if err.is_empty() {
            String::from_utf8_lossy(&self.stdout).trim().to_string()
        } else {
            err
        }
    }
}

/// Prepare a command for an external program with a clean environment.
pub fn command(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .kill_on_drop(true);
    cmd
}

/// Run an external program to completion, with optional stdin, bounded by `timeout`.
pub async fn run(
    mut cmd: tokio::process::Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<CmdOutput> {
    let std_cmd = cmd.as_std();
    let program = PathBuf::from(std_cmd.get_program());
    tracing::debug!(
        target: TARGET,
        program = %program.display(),
        args = ?std_cmd.get_args().collect::<Vec<&OsStr>>(),
        "run"
    );
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        NodeError::Io(std::io::Error::new(
            e.kind(),
            format!("spawn {}: {e}", program.display()),
        ))
    })?;
    if let Some(data) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(data).await?;
        drop(pipe);
    }
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(NodeError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} did not finish within {timeout:?}", program.display()),
            )));
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = out
        .status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
    Ok(CmdOutput {
        code,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn netns_is_new_and_removable() {
        if !nix::unistd::geteuid().is_root() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP netns_is_new_and_removable: needs root"
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ns");
        create_netns(&p).unwrap();
        let ours = fs_err::metadata(&p).unwrap().ino();
        let host = fs_err::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(ours, host, "a new namespace, not the host's");
        assert!(is_mounted(&p));
        remove_netns(&p).unwrap();
        assert!(!p.exists());
    }
}
