//! The node scenarios: cold start under each runtime handler (beside the runtime's own `run` of
//! the same bundle) and density (host memory per idle sandbox, and what deleted sandboxes leave
//! on the host).

use std::path::Path;
use std::time::{Duration, Instant};

use agent_sandbox_api::v1beta1::Sandbox;
use agent_sandbox_node::HandlerKind;
use agent_sandbox_node::host;
use agent_sandbox_node::runtime::{OciRuntime, find_binary};
use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Row;
use super::fixture::{Fixture, RUN_LABEL};
use crate::args::{BenchArgs, Scenario};

pub(super) async fn create_sandbox(
    f: &Fixture,
    name: &str,
    handler: Option<&str>,
) -> anyhow::Result<()> {
    let sandbox: Sandbox = serde_json::from_value(json!({
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": name, "labels": {RUN_LABEL: f.run_id}},
        "spec": {"podTemplate": f.pod_template(handler)},
    }))?;
    f.conn
        .api::<Sandbox>()
        .create(&PostParams::default(), &sandbox)
        .await
        .with_context(|| format!("creating sandbox {name}"))?;
    Ok(())
}

/// Deletes sandboxes and waits (bounded) until their Pods are gone.
pub(super) async fn delete_sandboxes(f: &Fixture, names: &[String]) -> anyhow::Result<()> {
    let sandboxes: Api<Sandbox> = f.conn.api();
    for n in names {
        let _ = sandboxes.delete(n, &DeleteParams::background()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for n in names {
        f.wait_pod_gone(n, deadline.saturating_duration_since(Instant::now()))
            .await?;
    }
    Ok(())
}

/// Why a sandbox is not Ready, from its condition.
async fn not_ready_reason(f: &Fixture, name: &str) -> String {
    f.conn
        .api::<Sandbox>()
        .get(name)
        .await
        .ok()
        .and_then(|s| s.status)
        .map(|s| crate::commands::connect::ready_message(Some(&s.conditions)))
        .unwrap_or_default()
}

/// `<runtime> run` of `/bin/true` on the bundle the node wrote for a live sandbox (same rootfs,
/// namespaces, limits, seccomp), `n` times, each in a fresh cgroup.
async fn runtime_run_baseline(
    f: &Fixture,
    kind: HandlerKind,
    pod_uid: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let sandbox_dir = f.data_dir.join("node/sandboxes").join(pod_uid);
    let config_path = sandbox_dir.join("bundle/config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(
        &fs_err::read(&config_path).context("the node's bundle (bench must run on the node)")?,
    )?;
    cfg["root"]["path"] = json!(sandbox_dir.join("bundle/rootfs"));
    cfg["process"]["args"] = json!(["/bin/true"]);
    cfg["process"]["terminal"] = json!(false);
    let binary =
        find_binary(kind.name()).with_context(|| format!("{} is not installed", kind.name()))?;
    let work = tempfile::Builder::new()
        .prefix("agent-sandbox-bench-")
        .tempdir()?;
    let runtime = OciRuntime::new(kind, binary, work.path().join("state"));
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("bench-{}-{}-{i}", kind.name(), std::process::id());
        let cgroup = format!("/agent-sandbox-bench/{id}");
        let bundle = work.path().join(&id);
        fs_err::create_dir_all(&bundle)?;
        cfg["linux"]["cgroupsPath"] = json!(cgroup);
        fs_err::write(bundle.join("config.json"), serde_json::to_vec(&cfg)?)?;
        let t = Instant::now();
        let out = host::run(
            runtime.command([
                "run".into(),
                "--bundle".into(),
                bundle.into_os_string(),
                id.clone().into(),
            ]),
            None,
            Duration::from_secs(60),
        )
        .await?;
        samples.push(t.elapsed());
        anyhow::ensure!(
            out.code == 0,
            "{} run failed: {}",
            kind.name(),
            out.message()
        );
        let _ = runtime.delete(&id).await;
        let _ = host::remove_cgroup(&cgroup);
    }
    let _ = host::remove_cgroup("/agent-sandbox-bench");
    Ok(samples)
}

pub(super) async fn cold_start(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let pods: Api<Pod> = f.conn.api();
    for kind in HandlerKind::ALL {
        let handler = kind.name();
        if find_binary(handler).is_none() {
            rows.push(
                Row::latencies(
                    Scenario::ColdStart,
                    &format!("{handler}: Sandbox → Ready"),
                    &[],
                )
                .note("not installed"),
            );
            continue;
        }
        let mut samples = Vec::new();
        let mut names = Vec::new();
        let mut failure = None;
        for i in 0..args.iterations {
            let name = format!("bench-cold-{handler}-{}-{i}", f.run_id);
            let t = Instant::now();
            create_sandbox(f, &name, Some(handler)).await?;
            names.push(name.clone());
            match f
                .tracker
                .wait(&format!("sandbox/{name}"), Duration::from_secs(60))
                .await
            {
                Ok(r) => samples.push(r.at - t),
                Err(_) => {
                    failure = Some(not_ready_reason(f, &name).await);
                    break;
                }
            }
            // The last one stays up while the baseline uses its bundle.
            if i + 1 < args.iterations {
                delete_sandboxes(f, std::slice::from_ref(&name)).await?;
            }
        }
        let mut row = Row::latencies(
            Scenario::ColdStart,
            &format!("{handler}: Sandbox → Ready"),
            &samples,
        );
        if kind == HandlerKind::Crun {
            row = row.target("default: p50 ≤ 60");
        }
        if let Some(reason) = failure {
            rows.push(row.note(format!("not Ready: {reason}")));
            delete_sandboxes(f, &names).await?;
            continue;
        }
        rows.push(row);
        let last = names.last().context("no iterations")?;
        let uid = pods.get(last).await?.uid().unwrap_or_default();
        let measure = format!("baseline: `{handler} run` of the same bundle");
        let mut base_row = match runtime_run_baseline(f, kind, &uid, args.iterations).await {
            Ok(base) => Row::latencies(Scenario::ColdStart, &measure, &base),
            Err(e) => Row::latencies(Scenario::ColdStart, &measure, &[]).note(format!("{e:#}")),
        };
        if kind == HandlerKind::Runsc {
            base_row = base_row.target("runsc ≤ 1.5× this");
        }
        rows.push(base_row);
        delete_sandboxes(f, &names).await?;
    }
    Ok(rows)
}

/// Memory the kernel reports available (bytes).
fn mem_available() -> anyhow::Result<u64> {
    let meminfo = fs_err::read_to_string("/proc/meminfo")?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no MemAvailable in /proc/meminfo")?;
    Ok(kb * 1024)
}

/// Memory charged to the node's sandbox cgroups (cgroup v2 or v1), if readable.
fn sandbox_cgroup_memory() -> Option<u64> {
    [
        "/sys/fs/cgroup/agent-sandbox/memory.current",
        "/sys/fs/cgroup/memory/agent-sandbox/memory.usage_in_bytes",
    ]
    .iter()
    .find_map(|p| {
        fs_err::read_to_string(Path::new(p))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// What a sandbox holds on the host, counted to show that deleted sandboxes leave nothing
/// behind: state directories, mounts (rootfs overlays, network namespaces, volumes), sandbox
/// cgroups, network interfaces (veths), IP leases and shim processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostFootprint {
    state_dirs: usize,
    mounts: usize,
    cgroups: usize,
    interfaces: usize,
    ip_leases: usize,
    shims: usize,
}

impl HostFootprint {
    fn measure(data_dir: &Path) -> HostFootprint {
        let count = |dir: &Path| fs_err::read_dir(dir).map_or(0, Iterator::count);
        let node = data_dir.join("node");
        let node_str = node.to_string_lossy().into_owned();
        let mounts = fs_err::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(node_str.as_str()))
            .count();
        let cgroups = [
            "/sys/fs/cgroup/agent-sandbox",
            "/sys/fs/cgroup/memory/agent-sandbox",
        ]
        .iter()
        .map(|p| {
            fs_err::read_dir(p).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .count()
            })
        })
        .sum();
        let ip_leases = fs_err::read_dir(node.join("network/ipam")).map_or(0, |nets| {
            nets.filter_map(Result::ok)
                .map(|net| {
                    fs_err::read_dir(net.path()).map_or(0, |d| {
                        d.filter_map(Result::ok)
                            .filter(|e| {
                                e.file_name()
                                    .to_string_lossy()
                                    .parse::<std::net::IpAddr>()
                                    .is_ok()
                            })
                            .count()
                    })
                })
                .sum()
        });
        let shims = fs_err::read_dir("/proc").map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    fs_err::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == "sandbox-shim")
                })
                .count()
        });
        HostFootprint {
            state_dirs: count(&node.join("sandboxes")),
            mounts,
            cgroups,
            interfaces: count(Path::new("/sys/class/net")),
            ip_leases,
            shims,
        }
    }

    /// What `self` holds beyond `before`, or `None` when nothing.
    fn excess_over(&self, before: &HostFootprint) -> Option<String> {
        let pairs = [
            ("state directories", self.state_dirs, before.state_dirs),
            ("mounts", self.mounts, before.mounts),
            ("cgroups", self.cgroups, before.cgroups),
            ("network interfaces", self.interfaces, before.interfaces),
            ("IP leases", self.ip_leases, before.ip_leases),
            ("shim processes", self.shims, before.shims),
        ];
        let extra: Vec<String> = pairs
            .iter()
            .filter(|(_, now, was)| now > was)
            .map(|(what, now, was)| format!("{} {what}", now - was))
            .collect();
        (!extra.is_empty()).then(|| extra.join(", "))
    }
}

/// Waits (bounded) for the host footprint to come back to `before` once sandboxes are deleted;
/// returns what is left over, if anything.
async fn leftovers(data_dir: &Path, before: &HostFootprint) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let excess = HostFootprint::measure(data_dir).excess_over(before);
        if excess.is_none() || Instant::now() >= deadline {
            return excess;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn density(f: &Fixture, args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &count in &args.density {
        let footprint_before = HostFootprint::measure(&f.data_dir);
        let available_before = mem_available()?;
        let cgroup_before = sandbox_cgroup_memory();
        let started = Instant::now();
        let names: Vec<String> = (0..count)
            .map(|i| format!("bench-idle-{}-{i}", f.run_id))
            .collect();
        for chunk in names.chunks(20) {
            futures::future::try_join_all(chunk.iter().map(|n| create_sandbox(f, n, None))).await?;
        }
        for n in &names {
            f.tracker
                .wait(&format!("sandbox/{n}"), Duration::from_secs(600))
                .await?;
        }
        let all_ready = started.elapsed();
        // Let start-up allocations settle.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let per_sandbox_host =
            available_before.saturating_sub(mem_available()?) as f64 / count as f64;
        let per_sandbox_cgroup = match (cgroup_before, sandbox_cgroup_memory()) {
            (Some(b), Some(a)) => format!(
                "{:.1} MiB",
                a.saturating_sub(b) as f64 / count as f64 / 1048576.0
            ),
            _ => "unreadable".into(),
        };
        delete_sandboxes(f, &names).await?;
        let left = leftovers(&f.data_dir, &footprint_before)
            .await
            .unwrap_or_else(|| "none".into());
        rows.push(
            Row::rate(Scenario::Density, &format!("{count} idle sandboxes Ready"), count, count as f64 / all_ready.as_secs_f64())
                .target("≥ 500, ≤ 8 MiB each")
                .note(format!(
                    "host memory {:.1} MiB per sandbox (MemAvailable); cgroups {per_sandbox_cgroup} per sandbox; all Ready in {:.1} s; left on the host after deletion: {left}",
                    per_sandbox_host / 1048576.0,
                    all_ready.as_secs_f64()
                )),
        );
    }
    Ok(rows)
}
