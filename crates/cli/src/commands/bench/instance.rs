//! Instances the benchmark starts itself (`--durability`): `agent-sandbox up` with one durability
//! setting on a scratch data directory under `<data dir>/bench/`, sharing the image store of the
//! data directory, on free loopback ports and a bridge and subnet of its own; stopped (SIGINT,
//! as Ctrl-C) and its scratch directories removed when the scenarios are done.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::args::{BenchArgs, ConnectArgs, DurabilityChoice};

/// The bridge and pod subnet of the benchmark's instances (one at a time).
const BRIDGE: &str = "asbxbench";
const POD_SUBNET: &str = "10.87.0.0/16";
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings `--durability` asks for, in the order they run.
pub(super) fn settings(choice: DurabilityChoice) -> Vec<DurabilityChoice> {
    match choice {
        DurabilityChoice::Both => vec![DurabilityChoice::Sync, DurabilityChoice::NoSync],
        one => vec![one],
    }
}

pub(super) fn label(setting: DurabilityChoice) -> &'static str {
    match setting {
        DurabilityChoice::Sync => "sync",
        DurabilityChoice::NoSync => "no-sync",
        DurabilityChoice::Both => "both",
    }
}

pub(super) struct Instance {
    child: tokio::process::Child,
    data_dir: PathBuf,
    run_dir: PathBuf,
    scratch: PathBuf,
    log: PathBuf,
}

fn free_ports() -> anyhow::Result<[u16; 3]> {
    // Held together so that the three differ.
    let listeners = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports for the benchmark's instance")?;
    let mut ports = [0; 3];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// Mount points at or under `dir` (an instance leaves its sandboxes' mounts there until they are
/// torn down).
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    fs_err::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect()
}

impl Instance {
    /// Starts `agent-sandbox up` with `setting` and waits until it has written its
    /// `endpoints.json`.
    pub(super) async fn start(args: &BenchArgs, setting: DurabilityChoice) -> anyhow::Result<Self> {
        let images = args.connect.data_dir.join("node/images");
        anyhow::ensure!(
            images.is_dir(),
            "{} does not exist: --durability runs instances with the image store of --data-dir \
             ({}); import the benchmark image there (`agent-sandbox image import … --data-dir \
             {}`) or pass the --data-dir that has it",
            images.display(),
            args.connect.data_dir.display(),
            args.connect.data_dir.display()
        );
        let images = fs_err::canonicalize(&images)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("{:x}-{}", nanos, label(setting));
        let scratch = args.connect.data_dir.join("bench").join(&name);
        fs_err::create_dir_all(scratch.join("data/node"))
            .context("creating the benchmark instance's data directory")?;
        let scratch = fs_err::canonicalize(&scratch)?;
        let data_dir = scratch.join("data");
        let run_dir = Path::new("/run").join(format!("agent-sandbox-bench-{name}"));
        std::os::unix::fs::symlink(&images, data_dir.join("node/images")).with_context(|| {
            format!(
                "linking {} to the image store {}",
                data_dir.join("node/images").display(),
                images.display()
            )
        })?;
        let [api, router, metrics] = free_ports()?;
        let log = scratch.join("up.log");
        let out = fs_err::File::create(&log)?.into_parts().0;
        let err = out.try_clone()?;
        let mut cmd = tokio::process::Command::new(
            std::env::current_exe().context("finding this executable to run `up`")?,
        );
        cmd.arg("up")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--router-listen", &format!("127.0.0.1:{router}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--bridge", BRIDGE, "--pod-subnet", POD_SUBNET])
            // The setting is this flag alone, whatever the environment says.
            .env_remove("AGENT_SANDBOX_NO_SYNC")
            .env_remove("AGENT_SANDBOX_SYNC_WRITES")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        if setting == DurabilityChoice::NoSync {
            cmd.arg("--no-sync");
        }
        let mut child = cmd
            .spawn()
            .context("starting `agent-sandbox up` for the benchmark")?;
        eprintln!(
            "started `agent-sandbox up` ({}) on {}; its log: {}",
            label(setting),
            data_dir.display(),
            log.display()
        );
        let endpoints = data_dir.join("endpoints.json");
        let deadline = Instant::now() + START_TIMEOUT;
        while !endpoints.exists() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "`agent-sandbox up` for the benchmark exited ({status}) before it was ready; \
                     see {}",
                    log.display()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                anyhow::bail!(
                    "`agent-sandbox up` for the benchmark is not ready after {START_TIMEOUT:?}; \
                     see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Instance {
            child,
            data_dir,
            run_dir,
            scratch,
            log,
        })
    }

    /// How the scenarios find this instance.
    pub(super) fn connect(&self, base: &ConnectArgs) -> ConnectArgs {
        ConnectArgs {
            kubeconfig: None,
            data_dir: self.data_dir.clone(),
            router: None,
            router_token: None,
            ..base.clone()
        }
    }

    /// Stops the instance as Ctrl-C does and removes its scratch directories, unless its
    /// sandboxes left mounts there.
    pub(super) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "`agent-sandbox up` for the benchmark did not stop within {STOP_TIMEOUT:?} of \
                 SIGINT; killing it (see {})",
                self.log.display()
            );
            let _ = self.child.kill().await;
        }
        let mounts = [mounts_under(&self.scratch), mounts_under(&self.run_dir)].concat();
        if !mounts.is_empty() {
            eprintln!(
                "left {} and {} in place: mounts remain under them ({}); remove them once those \
                 sandboxes are gone",
                self.scratch.display(),
                self.run_dir.display(),
                mounts.join(", ")
            );
            return;
        }
        // The link first, so that nothing can reach the shared image store.
        let _ = fs_err::remove_file(self.data_dir.join("node/images"));
        for dir in [&self.scratch, &self.run_dir] {
            if let Err(e) = fs_err::remove_dir_all(dir) {
                eprintln!("could not remove the benchmark's {}: {e}", dir.display());
            }
        }
        // `<data dir>/bench` itself, when no other run's directory is in it.
        if let Some(parent) = self.scratch.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
