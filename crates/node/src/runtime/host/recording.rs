//! The recording test double of [`Host`]: records every effect in order, keeps a pretend mount
//! table (so `is_mounted` and `mounts_under` answer as the host would), and fails the calls a
//! test scripts to fail. Network namespaces are plain files, so code that checks that a
//! namespace exists sees it; an overlay "mount" copies its lower directories into the target
//! (and its unmount empties it again), so code that reads a rootfs finds the image's files.
//! Programs are found at `/usr/bin/<name>` and never run: `run` returns scripted outputs and
//! `spawn_shim` a scripted `create` status with a pid no process has; `copy_tree` is recorded and
//! done (between test directories). Nothing needs root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::time::Duration;

use super::{CmdOutput, Host, ShimPlan, ShimStarted};
use crate::error::{NodeError, Result};

/// One effect asked of the host, as [`RecordingHost`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCall {
    /// `mount_overlay` on `target` with `lowers` (topmost first).
    MountOverlay {
        /// The lower directories.
        lowers: Vec<PathBuf>,
        /// The mount point.
        target: PathBuf,
    },
    /// `mount_tmpfs` on `target`.
    MountTmpfs {
        /// The mount point.
        target: PathBuf,
        /// Size limit in bytes.
        size: u64,
    },
    /// `unmount` of `target`.
    Unmount(PathBuf),
    /// `create_netns` at the path.
    CreateNetns(PathBuf),
    /// `remove_netns` at the path.
    RemoveNetns(PathBuf),
    /// `remove_cgroup` of the relative cgroup path.
    RemoveCgroup(String),
    /// `spawn_shim` of a runtime's `create` (or `run`) command line.
    SpawnShim(Vec<String>),
    /// `copy_tree` of a snapshot's layer or volume data.
    CopyTree {
        /// The source.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
    },
    /// `run` of `program` with `args`.
    Run {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// The environment variables it was given (`CNI_COMMAND`, ...).
        env: Vec<(String, String)>,
    },
}

impl HostCall {
    /// The operation's name: `mount_overlay`, `mount_tmpfs`, `unmount`, `create_netns`,
    /// `remove_netns`, `remove_cgroup`.
    pub fn op(&self) -> &'static str {
        match self {
            HostCall::MountOverlay { .. } => "mount_overlay",
            HostCall::MountTmpfs { .. } => "mount_tmpfs",
            HostCall::Unmount(_) => "unmount",
            HostCall::CreateNetns(_) => "create_netns",
            HostCall::RemoveNetns(_) => "remove_netns",
            HostCall::RemoveCgroup(_) => "remove_cgroup",
            HostCall::SpawnShim(_) => "spawn_shim",
            HostCall::Run { .. } => "run",
            HostCall::CopyTree { .. } => "copy_tree",
        }
    }

    /// The path the call acts on (for `remove_cgroup`, the cgroup path; for `run`, the
    /// program).
    pub fn path(&self) -> PathBuf {
        match self {
            HostCall::MountOverlay { target, .. } | HostCall::MountTmpfs { target, .. } => {
                target.clone()
            }
            HostCall::Unmount(p) | HostCall::CreateNetns(p) | HostCall::RemoveNetns(p) => p.clone(),
            HostCall::RemoveCgroup(rel) => PathBuf::from(rel),
            HostCall::SpawnShim(argv) => PathBuf::from(argv.first().cloned().unwrap_or_default()),
            HostCall::Run { program, .. } => program.clone(),
            HostCall::CopyTree { from, .. } => from.clone(),
        }
    }

    /// For `run`, its arguments from the first that is not a flag of the program's own (the
    /// operation: `state x`, `kill x TERM`); empty for other calls.
    pub fn command(&self) -> Vec<&str> {
        match self {
            HostCall::Run { args, .. } => {
                let mut rest: &[String] = args;
                // Global flags come first, some with a value (`--root <dir>`).
                while let Some(first) = rest.first()
                    && first.starts_with("--")
                {
                    let with_value =
                        !first.contains('=') && GLOBAL_FLAGS_WITH_VALUE.contains(&first.as_str());
                    rest = &rest[if with_value { 2 } else { 1 }.min(rest.len())..];
                }
                rest.iter().map(String::as_str).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// The OCI runtimes' global flags that take a separate value.
const GLOBAL_FLAGS_WITH_VALUE: &[&str] =
    &["--root", "--log", "--log-format", "--platform", "--network"];

/// Which `run` calls a scripted output is for.
#[derive(Debug)]
enum Matcher {
    /// Commands starting with these words (see [`HostCall::command`]).
    Words(Vec<String>),
    /// A program of this file name, given this environment variable when set.
    Program(String, Option<(String, String)>),
}

impl Matcher {
    fn accepts(&self, call: &HostCall) -> bool {
        let HostCall::Run { program, env, .. } = call else {
            return false;
        };
        match self {
            Matcher::Words(prefix) => {
                let words = call.command();
                words.len() >= prefix.len() && words.iter().zip(prefix).all(|(a, b)| a == b)
            }
            Matcher::Program(name, var) => {
                program.file_name().is_some_and(|f| f == name.as_str())
                    && var.as_ref().is_none_or(|v| env.contains(v))
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<HostCall>,
    mounts: BTreeSet<PathBuf>,
    /// `(op, path)`: calls that fail; `None` as the path fails every call of the op.
    failures: Vec<(&'static str, Option<PathBuf>)>,
    /// What `run` returns for the commands a matcher accepts (the latest scripted first);
    /// other commands exit 0 with no output.
    outputs: Vec<(Matcher, CmdOutput)>,
    /// Targets of overlay "mounts" (emptied again on unmount).
    overlays: BTreeSet<PathBuf>,
    /// The exit status `spawn_shim` reports for the runtime's `create`.
    create_exit: i32,
}

/// A [`Host`] that records instead of acting (see the module documentation).
#[derive(Debug, Default)]
pub struct RecordingHost {
    inner: Mutex<Inner>,
}

impl RecordingHost {
    /// An empty host: nothing mounted, nothing recorded, nothing fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pretend `path` is mounted already (left by an earlier run).
    pub fn with_mount(self, path: impl Into<PathBuf>) -> Self {
        self.lock().mounts.insert(path.into());
        self
    }

    /// Make every call of `op` (see [`HostCall::op`]) fail.
    pub fn fail(&self, op: &'static str) {
        self.lock().failures.push((op, None));
    }

    /// Make the calls of `op` on `path` fail.
    pub fn fail_at(&self, op: &'static str, path: impl Into<PathBuf>) {
        self.lock().failures.push((op, Some(path.into())));
    }

    /// Make `run` of a command starting with `words` (after the program's global flags, see
    /// [`HostCall::command`]) return `code` with `stdout` and `stderr`.
    pub fn script_run(&self, words: &[&str], code: i32, stdout: &str, stderr: &str) {
        let m = Matcher::Words(words.iter().map(|w| w.to_string()).collect());
        self.script(m, code, stdout, stderr);
    }

    /// Make `run` of a program named `name` (its file name), given the environment variable
    /// `var` when set, return `code` with `stdout` and `stderr`.
    pub fn script_program(
        &self,
        name: &str,
        var: Option<(&str, &str)>,
        code: i32,
        stdout: &str,
        stderr: &str,
    ) {
        let var = var.map(|(k, v)| (k.to_string(), v.to_string()));
        self.script(
            Matcher::Program(name.to_string(), var),
            code,
            stdout,
            stderr,
        );
    }

    fn script(&self, m: Matcher, code: i32, stdout: &str, stderr: &str) {
        self.lock().outputs.push((
            m,
            CmdOutput {
                code,
                stdout: stdout.as_bytes().to_vec(),
                stderr: stderr.as_bytes().to_vec(),
            },
        ));
    }

    /// The programs run so far (file names), each with the value of `var` it was given.
    pub fn programs(&self, var: &str) -> Vec<(String, Option<String>)> {
        self.lock()
            .calls
            .iter()
            .filter_map(|c| match c {
                HostCall::Run { program, env, .. } => Some((
                    program
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()),
                )),
                _ => None,
            })
            .collect()
    }

    /// Make every later `spawn_shim` report that the runtime's `create` exited with `code`.
    pub fn script_create_exit(&self, code: i32) {
        self.lock().create_exit = code;
    }

    /// The commands run so far (see [`HostCall::command`]), each joined with spaces.
    pub fn commands(&self) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.op() == "run")
            .map(|c| c.command().join(" "))
            .collect()
    }

    /// Every effect so far, in order.
    pub fn calls(&self) -> Vec<HostCall> {
        self.lock().calls.clone()
    }

    /// The operation names of every effect so far, in order.
    pub fn ops(&self) -> Vec<&'static str> {
        self.lock().calls.iter().map(HostCall::op).collect()
    }

    /// What the pretend mount table holds now.
    pub fn mounted(&self) -> Vec<PathBuf> {
        self.lock().mounts.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record `call`; the scripted error if it is to fail.
    fn record(&self, call: HostCall) -> Result<()> {
        let mut inner = self.lock();
        let (op, path) = (call.op(), call.path());
        inner.calls.push(call);
        let fails = inner
            .failures
            .iter()
            .any(|(o, p)| *o == op && p.as_ref().is_none_or(|p| *p == path));
        if fails {
            return Err(NodeError::Config(format!(
                "{op} {}: scripted failure",
                path.display()
            )));
        }
        Ok(())
    }
}

impl Host for RecordingHost {
    fn mount_overlay(
        &self,
        lowers: &[PathBuf],
        _upper: &Path,
        _work: &Path,
        target: &Path,
    ) -> Result<()> {
        self.record(HostCall::MountOverlay {
            lowers: lowers.to_vec(),
            target: target.to_path_buf(),
        })?;
        // Bottom layer first, so upper layers overwrite.
        if target.is_dir() {
            for lower in lowers.iter().rev() {
                copy_tree(lower, target)?;
            }
        }
        let mut inner = self.lock();
        inner.mounts.insert(target.to_path_buf());
        inner.overlays.insert(target.to_path_buf());
        Ok(())
    }

    fn mount_tmpfs(&self, target: &Path, size: u64) -> Result<()> {
        self.record(HostCall::MountTmpfs {
            target: target.to_path_buf(),
            size,
        })?;
        self.lock().mounts.insert(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        self.record(HostCall::Unmount(target.to_path_buf()))?;
        let mut inner = self.lock();
        inner.mounts.remove(target);
        if inner.overlays.remove(target) && target.is_dir() {
            for e in fs_err::read_dir(target)?.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    fs_err::remove_dir_all(&p)?;
                } else {
                    fs_err::remove_file(&p)?;
                }
            }
        }
        Ok(())
    }

    fn is_mounted(&self, path: &Path) -> bool {
        self.lock().mounts.contains(path)
    }

    fn mounts_under(&self, dir: &Path) -> Vec<PathBuf> {
        self.lock()
            .mounts
            .iter()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect()
    }

    fn create_netns(&self, path: &Path) -> Result<()> {
        self.record(HostCall::CreateNetns(path.to_path_buf()))?;
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir)?;
        }
        fs_err::File::create(path)?;
        self.lock().mounts.insert(path.to_path_buf());
        Ok(())
    }

    fn remove_netns(&self, path: &Path) -> Result<()> {
        self.record(HostCall::RemoveNetns(path.to_path_buf()))?;
        self.lock().mounts.remove(path);
        match fs_err::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn remove_cgroup(&self, rel: &str) -> Result<()> {
        self.record(HostCall::RemoveCgroup(rel.to_string()))
    }

    /// The recording host has no freezer: the engine pauses through the runtime.
    fn set_frozen(&self, rel: &str, _frozen: bool) -> Result<()> {
        Err(crate::error::NodeError::NotFound(format!(
            "the freezer of cgroup {rel} (the recording host has none)"
        )))
    }

    fn is_frozen(&self, _rel: &str) -> Option<bool> {
        None
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        Some(Path::new("/usr/bin").join(name))
    }

    fn spawn_shim(&self, plan: ShimPlan) -> std::io::Result<ShimStarted> {
        let argv = plan
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.record(HostCall::SpawnShim(argv))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(ShimStarted {
            create_exit: self.lock().create_exit,
            // Above any pid_max: no process has it, so waits on it end at once.
            shim_pid: i32::MAX,
        })
    }

    fn run<'a>(
        &'a self,
        cmd: tokio::process::Command,
        _stdin: Option<&'a [u8]>,
        _timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<CmdOutput>> {
        let std_cmd = cmd.as_std();
        let call = HostCall::Run {
            program: PathBuf::from(std_cmd.get_program()),
            args: std_cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            env: std_cmd
                .get_envs()
                .filter_map(|(k, v)| {
                    Some((
                        k.to_string_lossy().into_owned(),
                        v?.to_string_lossy().into_owned(),
                    ))
                })
                .collect(),
        };
        let output = self
            .lock()
            .outputs
            .iter()
            .rev()
            .find(|(m, _)| m.accepts(&call))
            .map(|(_, out)| out.clone())
            .unwrap_or_default();
        let result = self.record(call).map(|()| output);
        Box::pin(std::future::ready(result))
    }

    /// Recorded, then done for real: a copy between test directories needs no root.
    fn copy_tree(
        &self,
        from: &Path,
        to: &Path,
        budget: &super::CopyBudget,
    ) -> std::result::Result<u64, super::CopyError> {
        self.record(HostCall::CopyTree {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        })
        .map_err(super::CopyError::Io)?;
        super::copy::copy_tree(from, to, budget)
    }
}

/// Copy the files, directories and symlinks under `from` into `to`, replacing files.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    for e in fs_err::read_dir(from)?.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let kind = e.file_type()?;
        if kind.is_symlink() {
            let _ = fs_err::remove_file(&dst);
            std::os::unix::fs::symlink(fs_err::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            fs_err::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else {
            fs_err::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_tracks_mounts() {
        let d = tempfile::tempdir().unwrap();
        let h = RecordingHost::new();
        let ns = d.path().join("netns/a");
        h.create_netns(&ns).unwrap();
        assert!(ns.exists() && h.is_mounted(&ns));
        h.mount_tmpfs(&d.path().join("v/x"), 10).unwrap();
        assert_eq!(
            h.mounts_under(&d.path().join("v")),
            vec![d.path().join("v/x")]
        );
        h.unmount(&d.path().join("v/x")).unwrap();
        h.remove_netns(&ns).unwrap();
        assert!(!ns.exists());
        assert!(h.mounted().is_empty());
        assert_eq!(
            h.ops(),
            ["create_netns", "mount_tmpfs", "unmount", "remove_netns"]
        );
    }

    #[test]
    fn scripted_failures_are_returned_and_recorded() {
        let h = RecordingHost::new();
        h.fail_at("remove_cgroup", "/a/b");
        assert!(h.remove_cgroup("/a/c").is_ok());
        let e = h.remove_cgroup("/a/b").unwrap_err();
        assert!(e.to_string().contains("scripted failure"), "{e}");
        h.fail("unmount");
        assert!(h.unmount(Path::new("/x")).is_err());
        assert_eq!(h.calls().len(), 3);
    }
}
