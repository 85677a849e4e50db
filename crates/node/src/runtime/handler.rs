//! Runtime handlers: a typed wrapper around the OCI runtime CLIs (`runc`, `crun`, `runsc`) and
//! the start-up probe that finds which of them work on this host.
//!
//! Container lifecycle through a handler, in order: `create` (run by the sandbox shim, see
//! [`crate::sys`], so that the shim becomes the parent of the container) → `start` → `state` /
//! `pause` / `resume` / `kill` → `delete`. Host quirks live here: crun's `create` runs in a
//! private mount namespace without the cgroup2 mount on hybrid-cgroup hosts, runsc uses the
//! ptrace platform and the same global flags on every call (see `global_args` for why its
//! network mode is `host` inside the sandbox's namespace).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result};
use crate::host::{self, Host};

/// The OCI runtimes this node can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// runc (Go, the reference runtime).
    Runc,
    /// crun (C, fastest start).
    Crun,
    /// runsc (gVisor user-space kernel; strongest isolation, slowest).
    Runsc,
}

impl HandlerKind {
    /// All handlers, in no particular order.
    pub const ALL: [HandlerKind; 3] = [HandlerKind::Runc, HandlerKind::Crun, HandlerKind::Runsc];

    /// The handler name used in `RuntimeClass.handler`.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Runc => "runc",
            HandlerKind::Crun => "crun",
            HandlerKind::Runsc => "runsc",
        }
    }

    /// Parse a handler name (also accepts `gvisor` for runsc).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "runc" => Some(HandlerKind::Runc),
            "crun" => Some(HandlerKind::Crun),
            "runsc" | "gvisor" => Some(HandlerKind::Runsc),
            _ => None,
        }
    }
}

impl std::fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Status reported by the runtime's `state` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Created, not started.
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// The init process exited.
    Stopped,
}

/// Parsed output of `<runtime> state <id>`.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeState {
    /// Status.
    pub status: ContainerStatus,
    /// Host pid of the init process (runsc: the sandbox process); 0 when stopped.
    #[serde(default)]
    pub pid: i32,
}

/// One OCI runtime binary with its state directory.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    kind: HandlerKind,
    binary: PathBuf,
    root: PathBuf,
    hide_cgroup2: bool,
    /// Runs the runtime's commands.
    host: Arc<dyn Host>,
}

const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the host has cgroup2 mounted at /sys/fs/cgroup/unified next to v1 hierarchies.
pub fn hybrid_cgroups() -> bool {
    Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
        && Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

/// Find a program on the standard system PATH.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}

impl OciRuntime {
    /// A handler using `binary`, keeping its container state under `root`.
    pub fn new(kind: HandlerKind, binary: PathBuf, root: PathBuf) -> Self {
        Self::with_host(kind, binary, root, Arc::new(host::SystemHost))
    }

    /// [`OciRuntime::new`] with the runtime's commands run through `host`.
    pub fn with_host(
        kind: HandlerKind,
        binary: PathBuf,
        root: PathBuf,
        host: Arc<dyn Host>,
    ) -> Self {
        OciRuntime {
            kind,
            binary,
            root,
            hide_cgroup2: kind == HandlerKind::Crun && hybrid_cgroups(),
            host,
        }
    }

    /// Which runtime this is.
    pub fn kind(&self) -> HandlerKind {
        self.kind
    }

    /// The runtime binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The runtime's state directory (`--root`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn global_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        if self.kind == HandlerKind::Runsc {
            v.push("--platform=ptrace".into());
            // `hostinet` inside the sandbox's own (CNI-made) network namespace: the sandbox
            // process joins that namespace, so it never sees the host's interfaces. gVisor's
            // own netstack (`--network=sandbox`) cannot be used with the Debian 2022 runsc on
            // kernels >= 6: its root-namespace check looks for
            // /proc/sys/net/core/rmem_default, which every namespace has now, and refuses.
            // The OCI seccomp profile is enforced inside the sentry too.
            v.push("--network=host".into());
            v.push("--oci-seccomp".into());
        }
        v
    }

    /// A command for `<runtime> <global flags> <args>`, with host quirks applied: on hybrid
    /// hosts crun's `create` and `run` run with the cgroup2 mount hidden (it refuses hybrid
    /// mode when it sees it). Its other commands (`start`, `state`, `kill`, `exec`, `pause`,
    /// `resume`, `delete`) work on the container's cgroups as recorded at create and run as
    /// they are: the hiding needs a hook between fork and exec, which rules out the cheap
    /// `posix_spawn` path (a full fork of the agent, about 10 ms on a busy host).
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut cmd = host::command(&self.binary);
        cmd.args(self.global_args());
        let creates = args
            .first()
            .is_some_and(|op| op.as_bytes() == b"create" || op.as_bytes() == b"run");
        cmd.args(args);
        if self.hide_cgroup2 && creates {
            crate::sys::hide_cgroup2_before_exec(&mut cmd);
        }
        cmd
    }

    /// Whether `create` and `run` must run with the cgroup2 mount hidden (crun on hybrid
    /// hosts).
    pub fn hides_cgroup2(&self) -> bool {
        self.hide_cgroup2
    }

    /// argv for `create` (or `run --detach` when `start` is set: create and start in one
    /// runtime process), used by the shim, which execs it without a shell. `pod_init` (runsc
    /// only) is a `--pod-init-config` file: the trace session the sandbox starts with.
    pub(crate) fn create_argv(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        start: bool,
        pod_init: Option<&Path>,
    ) -> Vec<CString> {
        let mut args: Vec<OsString> = vec![self.binary.clone().into()];
        args.extend(self.global_args());
        if let Some(p) = pod_init.filter(|_| self.kind == HandlerKind::Runsc) {
            let mut flag = OsString::from("--pod-init-config=");
            flag.push(p);
            args.push(flag);
        }
        if start {
            args.extend(["run".into(), "--detach".into()]);
        } else {
            args.push("create".into());
        }
        args.extend([
            "--bundle".into(),
            bundle.as_os_str().to_owned(),
            "--pid-file".into(),
            pid_file.as_os_str().to_owned(),
            id.into(),
        ]);
        args.into_iter()
            .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
            .collect()
    }

    async fn simple(&self, op: &str, id: &str, extra: &[&str]) -> Result<host::CmdOutput> {
        self.op_within(op, id, extra, CMD_TIMEOUT).await
    }

    async fn op_within(
        &self,
        op: &str,
        id: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<host::CmdOutput> {
        let mut args: Vec<OsString> = vec![op.into()];
        args.extend(extra.iter().map(OsString::from));
        args.push(id.into());
        let out = self.host.run(self.command(args), None, timeout).await?;
        if out.code != 0 {
            return Err(NodeError::Runtime {
                handler: self.kind.to_string(),
                op: op.to_string(),
                id: id.to_string(),
                status: out.code,
                message: clean_message(&out.message()),
            });
        }
        Ok(out)
    }

    /// `start`: run the user process of a created container.
    pub async fn start(&self, id: &str) -> Result<()> {
        self.simple("start", id, &[]).await.map(drop)
    }

    /// `state`; `Ok(None)` if the runtime does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<RuntimeState>> {
        let out = self
            .host
            .run(self.command(["state", id]), None, CMD_TIMEOUT)
            .await?;
        if out.code != 0 {
            let msg = out.message();
            if msg.contains("does not exist") || msg.contains("not found") {
                return Ok(None);
            }
            return Err(NodeError::Runtime {
                handler: self.kind.to_string(),
                op: "state".into(),
                id: id.into(),
                status: out.code,
                message: clean_message(&msg),
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| NodeError::json(format!("{} state {id}", self.kind), e))
    }

    /// `kill` with a signal name or number (`TERM`, `KILL`, `9`).
    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let args: Vec<OsString> = vec!["kill".into(), id.into(), signal.into()];
        let out = self.host.run(self.command(args), None, CMD_TIMEOUT).await?;
        if out.code != 0 {
            let msg = out.message();
            // Already gone or stopped: nothing to signal.
            if msg.contains("not running")
                || msg.contains("does not exist")
                || msg.contains("container not running")
                || msg.contains("in state stopped")
                || msg.contains("process already finished")
            {
                return Ok(());
            }
            return Err(NodeError::Runtime {
                handler: self.kind.to_string(),
                op: "kill".into(),
                id: id.into(),
                status: out.code,
                message: clean_message(&msg),
            });
        }
        Ok(())
    }

    /// `delete --force`: remove the container and its cgroups; missing is fine.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let out = self
            .host
            .run(self.command(["delete", "--force", id]), None, CMD_TIMEOUT)
            .await?;
        if out.code != 0 {
            let msg = out.message();
            if msg.contains("does not exist") || msg.contains("not found") {
                return Ok(());
            }
            return Err(NodeError::Runtime {
                handler: self.kind.to_string(),
                op: "delete".into(),
                id: id.into(),
                status: out.code,
                message: clean_message(&msg),
            });
        }
        Ok(())
    }

    /// `exec`: run `argv` in the running container (its user, environment and working
    /// directory), capturing output, bounded by `timeout` (the runtime process is killed on
    /// timeout; the command it started may linger in the container, as with kubelet).
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<host::CmdOutput> {
        let mut args: Vec<OsString> = vec!["exec".into(), id.into()];
        args.extend(argv.iter().map(OsString::from));
        match self.host.run(self.command(args), None, timeout).await {
            Ok(out) => Ok(out),
            Err(NodeError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(NodeError::Timeout {
                    sandbox: id.to_string(),
                    what: "exec",
                    secs: timeout.as_secs_f64(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `pause` (cgroup freezer for runc/crun, the sentry's own for runsc).
    pub async fn pause(&self, id: &str) -> Result<()> {
        self.simple("pause", id, &[]).await.map(drop)
    }

    /// `resume`.
    pub async fn resume(&self, id: &str) -> Result<()> {
        self.simple("resume", id, &[]).await.map(drop)
    }

    /// `checkpoint --leave-running --image-path <image>` (runsc only): the container's memory
    /// and process state written to `image`, the container running on afterwards.
    pub async fn checkpoint(&self, id: &str, image: &Path, timeout: Duration) -> Result<()> {
        let image = format!("--image-path={}", image.display());
        self.op_within("checkpoint", id, &["--leave-running", &image], timeout)
            .await
            .map(drop)
    }

    /// `trace create --force` (runsc only): replace the sandbox's trace session with the one in
    /// `config` (a `--pod-init-config` file also does), e.g. to reconnect its sink to a node
    /// that restarted.
    pub async fn trace_create(&self, id: &str, config: &Path) -> Result<()> {
        let config = format!("--config={}", config.display());
        self.simple("trace", id, &["create", "--force", &config])
            .await
            .map(drop)
    }

    /// `--version` first line.
    pub async fn version(&self) -> Result<String> {
        let mut cmd = host::command(&self.binary);
        cmd.arg("--version");
        let out = self.host.run(cmd, None, Duration::from_secs(10)).await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string())
    }
}

/// Strip the logrus decoration (`time=... level=error msg="..."`) from runtime messages.
pub(crate) fn clean_message(msg: &str) -> String {
    let mut lines = Vec::new();
    for line in msg.lines() {
        if let Some(i) = line.find("msg=\"") {
            let rest = &line[i + 5..];
            let end = rest.rfind('"').unwrap_or(rest.len());
            lines.push(rest[..end].replace("\\\"", "\""));
        } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(m) = v.get("msg").and_then(|m| m.as_str()) {
                lines.push(m.to_string());
            }
        } else if !line.trim().is_empty() {
            lines.push(line.trim().to_string());
        }
    }
    lines.join("; ")
}

/// Result of probing one handler on this host.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerStatus {
    /// Which handler.
    pub kind: HandlerKind,
    /// The binary, if found.
    pub binary: Option<PathBuf>,
    /// `--version` output.
    pub version: Option<String>,
    /// Whether a probe container could be created, started and deleted.
    pub usable: bool,
    /// Create→running→deleted time of the probe container.
    pub probe_time: Option<Duration>,
    /// Why it is not usable.
    pub error: Option<String>,
}

impl HandlerStatus {
    /// One line for start-up logs, e.g. `crun: usable (crun version 1.8.1, probe 21 ms)`.
    pub fn summary(&self) -> String {
        match (&self.error, self.usable) {
            (_, true) => format!(
                "{}: usable ({}, probe {:.1} ms)",
                self.kind,
                self.version.as_deref().unwrap_or("?"),
                self.probe_time.unwrap_or_default().as_secs_f64() * 1e3
            ),
            (Some(e), false) => format!("{}: not usable: {e}", self.kind),
            (None, false) => format!("{}: not usable", self.kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_logrus_messages() {
        let m = "time=\"2026\" level=error msg=\"runc create failed: exec: \\\"/x\\\": stat /x: no such file\"";
        assert_eq!(
            clean_message(m),
            "runc create failed: exec: \"/x\": stat /x: no such file"
        );
        assert_eq!(clean_message("plain error\n"), "plain error");
    }

    #[test]
    fn handler_names_round_trip() {
        for k in HandlerKind::ALL {
            assert_eq!(HandlerKind::from_name(k.name()), Some(k));
        }
        assert_eq!(HandlerKind::from_name("gvisor"), Some(HandlerKind::Runsc));
        assert_eq!(HandlerKind::from_name("kata"), None);
    }
}
