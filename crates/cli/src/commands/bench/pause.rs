//! The pause scenario: pause → unpause round trips through the API (annotate the Sandbox, wait
//! for its `Paused` condition to turn True; remove the annotation, wait for it to turn False),
//! beside a freeze + thaw written straight to the same sandbox's cgroup freezer, and the CPU a
//! paused sandbox uses (none: its cgroup's CPU time does not grow).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_sandbox_api::conditions::find_status_condition;
use agent_sandbox_api::constants::extensions as ext;
use agent_sandbox_api::v1beta1::Sandbox;
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::Row;
use super::fixture::Fixture;
use super::nodes::{create_sandbox, delete_sandboxes};
use crate::args::{BenchArgs, Scenario};
use crate::commands::sandboxes::{PauseProgress, pause_progress, paused_patch};

/// The latest conditions of one Sandbox, fed by a watch.
pub(super) struct Watched {
    rx: tokio::sync::watch::Receiver<Vec<Condition>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    pub(super) fn start(api: Api<Sandbox>, name: &str) -> Watched {
        let (tx, rx) = tokio::sync::watch::channel(Vec::new());
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(api, config).boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Apply(sb) | watcher::Event::InitApply(sb)) = ev {
                    let _ = tx.send(sb.status.map(|s| s.conditions).unwrap_or_default());
                }
            }
        });
        Watched { rx, task }
    }

    /// Waits until the `Paused` condition says `paused`.
    pub(super) async fn until(
        &mut self,
        name: &str,
        paused: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match pause_progress(&self.rx.borrow_and_update(), paused) {
                PauseProgress::Done => return Ok(()),
                PauseProgress::Refused(why) => anyhow::bail!("sandbox {name}: {why}"),
                PauseProgress::Waiting => {}
            }
            if tokio::time::timeout_at(deadline, self.rx.changed())
                .await
                .is_err()
            {
                let why = find_status_condition(&self.rx.borrow(), ext::condition_types::PAUSED)
                    .map(|c| format!("{}: {}", c.reason, c.message))
                    .unwrap_or_else(|| "no Paused condition".into());
                anyhow::bail!(
                    "sandbox {name} did not become {} within {timeout:?}: {why}",
                    if paused { "paused" } else { "unpaused" }
                );
            }
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A directory of `hierarchy` (e.g. `/sys/fs/cgroup/freezer`) for the sandbox's container:
/// `<parent>/<pod uid>.<container>.`, found by the uid under any parent.
fn container_cgroup(hierarchy: &str, pod_uid: &str) -> Option<PathBuf> {
    for parent in fs_err::read_dir(hierarchy).ok()?.flatten() {
        if !parent.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for entry in fs_err::read_dir(parent.path()).ok()?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(pod_uid) {
                return Some(entry.path());
            }
        }
    }
    None
}

/// CPU time used by the container's cgroup so far (cgroup v1 `cpuacct.usage`, else v2
/// `cpu.stat`).
fn cpu_used(pod_uid: &str) -> Option<Duration> {
    if let Some(dir) = container_cgroup("/sys/fs/cgroup/cpuacct", pod_uid)
        .or_else(|| container_cgroup("/sys/fs/cgroup/cpu,cpuacct", pod_uid))
        && let Ok(s) = fs_err::read_to_string(dir.join("cpuacct.usage"))
    {
        return s.trim().parse().ok().map(Duration::from_nanos);
    }
    let dir = container_cgroup("/sys/fs/cgroup", pod_uid)?;
    let stat = fs_err::read_to_string(dir.join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_micros)
}

/// One freeze and thaw written to the cgroup freezer (v1 `freezer.state`, or v2
/// `cgroup.freeze`), each waiting until the kernel reports it done.
fn freezer_round_trip(dir: &Path, v1: bool) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let t = Instant::now();
    let (file, frozen, thawed) = if v1 {
        ("freezer.state", "FROZEN", "THAWED")
    } else {
        ("cgroup.freeze", "1", "0")
    };
    for want in [frozen, thawed] {
        fs_err::write(dir.join(file), want)?;
        loop {
            let now = if v1 {
                fs_err::read_to_string(dir.join("freezer.state"))?
                    .trim()
                    .to_owned()
            } else {
                let events = fs_err::read_to_string(dir.join("cgroup.events"))?;
                let f = events
                    .lines()
                    .find_map(|l| l.strip_prefix("frozen "))
                    .unwrap_or("0");
                f.trim().to_owned()
            };
            if now == want {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the freezer of {} did not reach {want}",
                dir.display()
            );
            std::thread::yield_now();
        }
    }
    Ok(t.elapsed())
}

/// Freeze + thaw of the sandbox's container cgroup, `n` times.
fn freezer_baseline(pod_uid: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let (dir, v1) = match container_cgroup("/sys/fs/cgroup/freezer", pod_uid) {
        Some(d) => (d, true),
        None => (
            container_cgroup("/sys/fs/cgroup/unified", pod_uid)
                .or_else(|| container_cgroup("/sys/fs/cgroup", pod_uid))
                .context(
                    "no freezer cgroup of the sandbox on this host (bench must run on the node)",
                )?,
            false,
        ),
    };
    (0..n).map(|_| freezer_round_trip(&dir, v1)).collect()
}

pub(super) async fn pause(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let name = format!("bench-pause-{}", f.run_id);
    create_sandbox(f, &name, None).await?;
    let result = measure(f, args, &name).await;
    // Unpause (a paused sandbox is deleted promptly too, but the cleanup should not rely on it).
    let sandboxes: Api<Sandbox> = f.conn.api();
    let _ = sandboxes
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&paused_patch(false)),
        )
        .await;
    delete_sandboxes(f, std::slice::from_ref(&name)).await?;
    result
}

async fn measure(f: &Fixture, args: &BenchArgs, name: &str) -> anyhow::Result<Vec<Row>> {
    let ready = f
        .tracker
        .wait(&format!("sandbox/{name}"), Duration::from_secs(60))
        .await?;
    let sandboxes: Api<Sandbox> = f.conn.api();
    let uid = f
        .conn
        .api::<Pod>()
        .get(name)
        .await?
        .uid()
        .unwrap_or_default();
    let mut watched = Watched::start(sandboxes.clone(), name);
    let timeout = Duration::from_secs(30);
    let pp = PatchParams::default();

    let mut pauses = Vec::new();
    let mut unpauses = Vec::new();
    let mut round_trips = Vec::new();
    for _ in 0..args.iterations {
        let t = Instant::now();
        sandboxes
            .patch(name, &pp, &Patch::Merge(&paused_patch(true)))
            .await?;
        watched.until(name, true, timeout).await?;
        let paused_in = t.elapsed();
        let t2 = Instant::now();
        sandboxes
            .patch(name, &pp, &Patch::Merge(&paused_patch(false)))
            .await?;
        watched.until(name, false, timeout).await?;
        let unpaused_in = t2.elapsed();
        pauses.push(paused_in);
        unpauses.push(unpaused_in);
        round_trips.push(paused_in + unpaused_in);
    }

    // The CPU a pause releases: a busy loop in the sandbox, one second running, one paused
    // (after the latencies, so that it does not take a core from the control plane then).
    let busy = {
        let (f_http, router, token, ns) = (
            f.http.clone(),
            f.router.clone(),
            f.token.clone(),
            f.conn.namespace.clone(),
        );
        let (sandbox, ip) = (name.to_owned(), ready.pod_ip.clone());
        tokio::spawn(async move {
            let mut req = f_http
                .post(format!("{router}/v2/exec"))
                .header("X-Sandbox-ID", sandbox)
                .header("X-Sandbox-Namespace", ns)
                .header("X-Sandbox-Port", "8080")
                .header("X-Sandbox-Pod-IP", ip)
                .json(&serde_json::json!({"command": "while :; do :; done", "timeout": 600}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            // The command lives as long as its request: read until the task is aborted.
            if let Ok(resp) = req.send().await {
                let _ = resp.bytes().await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = Duration::from_secs(1);
    let mut cpu_note = String::from("CPU time unreadable");
    if let Some(a) = cpu_used(&uid) {
        tokio::time::sleep(window).await;
        let running = cpu_used(&uid).unwrap_or(a) - a;
        sandboxes
            .patch(name, &pp, &Patch::Merge(&paused_patch(true)))
            .await?;
        watched.until(name, true, timeout).await?;
        let b = cpu_used(&uid).unwrap_or(a);
        tokio::time::sleep(window).await;
        let paused = cpu_used(&uid).unwrap_or(b) - b;
        sandboxes
            .patch(name, &pp, &Patch::Merge(&paused_patch(false)))
            .await?;
        watched.until(name, false, timeout).await?;
        cpu_note = format!(
            "CPU used in 1 s by a busy loop in the sandbox: {:.1} ms running, {:.1} ms paused",
            running.as_secs_f64() * 1e3,
            paused.as_secs_f64() * 1e3
        );
    }
    busy.abort();
    let baseline = match tokio::task::spawn_blocking({
        let uid = uid.clone();
        let n = args.iterations;
        move || freezer_baseline(&uid, n)
    })
    .await?
    {
        Ok(b) => Row::latencies(
            Scenario::Pause,
            "baseline: cgroup freezer freeze + thaw",
            &b,
        ),
        Err(e) => Row::latencies(
            Scenario::Pause,
            "baseline: cgroup freezer freeze + thaw",
            &[],
        )
        .note(format!("{e:#}")),
    };
    Ok(vec![
        Row::latencies(
            Scenario::Pause,
            "API: pause → unpause round trip",
            &round_trips,
        )
        .target("p50 ≤ 5")
        .note(cpu_note),
        Row::latencies(Scenario::Pause, "API: annotate → Paused=True", &pauses),
        Row::latencies(Scenario::Pause, "API: remove → Paused=False", &unpauses),
        baseline,
    ])
}
