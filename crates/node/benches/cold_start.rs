//! Cold start benchmark: for each usable handler, the engine's create→running time (with and
//! without CNI networking) and create→exited for `/bin/true`, printed as p50/p99 beside the
//! runtime's own `run` of the same bundle measured in the same process run.
//!
//! Needs root, busybox-static and the runtimes. `cargo bench -p agent-sandbox-node --bench
//! cold_start`; `BENCH_N` sets the iterations (default 30), `BENCH_HANDLERS` the handlers
//! (comma-separated; default all usable), `BENCH_IDLE` the idle-memory sandbox counts (default
//! 100; 0 skips). Each engine row is followed by the median begin → end of every step of the
//! engine's timeline.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_sandbox_node::cni::{self, NetworkConfig};
use agent_sandbox_node::timeline::StepTime;
use agent_sandbox_node::{EngineConfig, HandlerKind, SandboxEngine, SandboxSpec, host};
use sha2::{Digest, Sha256};

const IMAGE: &str = "localhost/bench/busybox:1";

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn tar_header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// An OCI layout with busybox-static and its applet links.
fn busybox_layout(dir: &Path) {
    let bb = fs_err::read("/bin/busybox").expect("busybox-static (/bin/busybox) is needed");
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        b.append(
            &tar_header(d, tar::EntryType::Directory, 0o755, 0),
            std::io::empty(),
        )
        .unwrap();
    }
    b.append(
        &tar_header(
            "bin/busybox",
            tar::EntryType::Regular,
            0o755,
            bb.len() as u64,
        ),
        &bb[..],
    )
    .unwrap();
    for a in ["sh", "true", "sleep"] {
        let mut h = tar_header(&format!("bin/{a}"), tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{a}"), "/bin/busybox")
            .unwrap();
    }
    let raw = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let layer = gz.finish().unwrap();
    let sha = |d: &[u8]| format!("sha256:{:x}", Sha256::digest(d));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&raw)]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(&layer), "size": layer.len()}]
    }))
    .unwrap();
    let blobs = dir.join("blobs/sha256");
    fs_err::create_dir_all(&blobs).unwrap();
    for d in [&layer, &config, &manifest] {
        fs_err::write(blobs.join(sha(d).trim_start_matches("sha256:")), d).unwrap();
    }
    fs_err::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs_err::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
        .unwrap(),
    )
    .unwrap();
}

fn free_subnet() -> Option<String> {
    let routes = cni::host_routes();
    (200..250u32).find_map(|third| {
        let s = format!("10.88.{third}.0/24");
        let net = cni::parse_cidr(&s)?;
        routes
            .iter()
            .all(|(_, d, l)| *l == 0 || !cni::overlaps(net, (*d, *l)))
            .then_some(s)
    })
}

async fn engine(dir: &Path, sub: &str, network: Option<NetworkConfig>) -> SandboxEngine {
    let mut c = EngineConfig::new(dir.join(sub).join("root"), dir.join(sub).join("run"));
    c.cgroup_parent = format!("agent-sandbox-bench-{}", std::process::id());
    c.network = network;
    let e = SandboxEngine::new(c).await.unwrap();
    e.images()
        .import_oci_layout(&dir.join("layout"), Some("bench"), IMAGE)
        .await
        .unwrap();
    e
}

fn spec(id: &str, kind: HandlerKind, argv: &[&str]) -> SandboxSpec {
    let mut s = SandboxSpec::new(id, IMAGE);
    s.handler = Some(kind.name().into());
    s.main.command = Some(argv.iter().map(|a| a.to_string()).collect());
    s.main.resources.memory_limit = Some(128 << 20);
    s
}

/// Median begin and end of each step over the timelines, in the order of the median end.
fn print_steps(timelines: &[Vec<StepTime>]) {
    let mut names: Vec<&'static str> = Vec::new();
    for t in timelines {
        for s in t {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
    }
    let mut rows: Vec<(f64, f64, &'static str, usize)> = names
        .into_iter()
        .map(|name| {
            let (mut b, mut e): (Vec<Duration>, Vec<Duration>) = timelines
                .iter()
                .filter_map(|t| t.iter().find(|s| s.name == name))
                .map(|s| (s.begin, s.end))
                .unzip();
            let k = b.len();
            (pct(&mut b, 0.5), pct(&mut e, 0.5), name, k)
        })
        .collect();
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (b, e, name, k) in rows {
        println!(
            "          {name:16} {b:6.1} → {e:6.1} ms ({:5.1} ms){}",
            e - b,
            if k < timelines.len() {
                " (some runs)"
            } else {
                ""
            }
        );
    }
}

async fn bench_engine(e: &SandboxEngine, kind: HandlerKind, n: usize, tag: &str) -> Vec<Duration> {
    let mut v = Vec::new();
    let mut timelines = Vec::new();
    let (mut c, mut s) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("{tag}-{}-{i}", kind.name());
        let t = Instant::now();
        e.create(spec(&id, kind, &["/bin/sleep", "1000"]))
            .await
            .unwrap();
        let created = t.elapsed();
        e.start(&id).await.unwrap();
        v.push(t.elapsed());
        c.push(created);
        s.push(t.elapsed() - created);
        timelines.push(e.timeline(&id).unwrap());
        e.remove(&id).await.unwrap();
    }
    if n > 1 {
        println!(
            "{:5}   of which create {:.1} ms, start {:.1} ms (p50)",
            kind.name(),
            pct(&mut c, 0.5),
            pct(&mut s, 0.5)
        );
        print_steps(&timelines);
    }
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP: the cold-start benchmark needs root");
        return;
    }
    if !Path::new("/bin/busybox").is_file() {
        println!("SKIP: busybox-static is not installed");
        return;
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let tmp = tempfile::Builder::new()
        .prefix("asbx-bench-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    busybox_layout(&dir.join("layout"));

    let plain = engine(dir, "plain", None).await;
    for s in plain.handler_statuses() {
        println!("{}", s.summary());
    }
    println!(
        "default handler: {}",
        plain.default_handler().map(|k| k.name()).unwrap_or("none")
    );
    let net_cfg = (Path::new("/usr/lib/cni/bridge").is_file())
        .then(free_subnet)
        .flatten()
        .map(|subnet| NetworkConfig {
            name: format!("asbx-bench-{}", std::process::id()),
            bridge: format!("asbb{}", std::process::id() % 10_000_000),
            subnet,
            ..NetworkConfig::default()
        });
    let networked = match &net_cfg {
        Some(c) => Some(engine(dir, "net", Some(c.clone())).await),
        None => None,
    };

    println!();
    println!("cold start, n={n} per row (ms)               p50      p99");
    // BENCH_HANDLERS=crun,runc limits the rows to those handlers.
    let only: Option<Vec<String>> = std::env::var("BENCH_HANDLERS")
        .ok()
        .map(|v| v.split(',').map(|h| h.trim().to_string()).collect());
    for kind in HandlerKind::ALL {
        if !plain.has_handler(kind)
            || only
                .as_ref()
                .is_some_and(|o| !o.iter().any(|h| h == kind.name()))
        {
            continue;
        }
        // Warm the page cache once.
        let _ = bench_engine(&plain, kind, 1, "warm").await;
        let mut v = bench_engine(&plain, kind, n, "plain").await;
        println!(
            "{:5} engine create→running            {:8.1} {:8.1}",
            kind.name(),
            pct(&mut v, 0.5),
            pct(&mut v, 0.99)
        );
        if let Some(e) = &networked {
            let mut v = bench_engine(e, kind, n, "net").await;
            println!(
                "{:5} engine create→running + CNI      {:8.1} {:8.1}",
                kind.name(),
                pct(&mut v, 0.5),
                pct(&mut v, 0.99)
            );
        }
        // create+start in one runtime call.
        let mut v = Vec::new();
        for i in 0..n {
            let id = format!("run-{}-{i}", kind.name());
            let t = Instant::now();
            plain
                .run(spec(&id, kind, &["/bin/sleep", "1000"]))
                .await
                .unwrap();
            v.push(t.elapsed());
            plain.remove(&id).await.unwrap();
        }
        println!(
            "{:5} engine run (one call)→running    {:8.1} {:8.1}",
            kind.name(),
            pct(&mut v, 0.5),
            pct(&mut v, 0.99)
        );
        // create → start → exit of /bin/true through the engine.
        let mut v = Vec::new();
        for i in 0..n {
            let id = format!("true-{}-{i}", kind.name());
            let t = Instant::now();
            plain.create(spec(&id, kind, &["/bin/true"])).await.unwrap();
            plain.start(&id).await.unwrap();
            plain.wait(&id, Duration::from_secs(30)).await.unwrap();
            v.push(t.elapsed());
            plain.remove(&id).await.unwrap();
        }
        println!(
            "{:5} engine create→exited (true)      {:8.1} {:8.1}",
            kind.name(),
            pct(&mut v, 0.5),
            pct(&mut v, 0.99)
        );
        // The runtime's own `run` of the same bundle (same rootfs, netns, limits, seccomp).
        let base = format!("base-{}", kind.name());
        plain
            .create(spec(&base, kind, &["/bin/true"]))
            .await
            .unwrap();
        let sandbox_dir = plain.config().root.join("sandboxes").join(&base);
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&fs_err::read(sandbox_dir.join("bundle/config.json")).unwrap())
                .unwrap();
        cfg["root"]["path"] = serde_json::json!(sandbox_dir.join("bundle/rootfs"));
        let rt = plain.runtime(kind).unwrap();
        let mut v = Vec::new();
        for i in 0..n {
            let id = format!("run-{}-{i}", kind.name());
            let bundle = dir.join("runbundles").join(&id);
            fs_err::create_dir_all(&bundle).unwrap();
            cfg["linux"]["cgroupsPath"] =
                serde_json::json!(format!("/agent-sandbox-bench-{}/{id}", std::process::id()));
            fs_err::write(
                bundle.join("config.json"),
                serde_json::to_vec(&cfg).unwrap(),
            )
            .unwrap();
            let t = Instant::now();
            let out = host::run(
                rt.command([
                    "run".into(),
                    "--bundle".into(),
                    bundle.clone().into_os_string(),
                    std::ffi::OsString::from(&id),
                ]),
                None,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
            v.push(t.elapsed());
            if out.code != 0 {
                eprintln!("{} run failed: {}", kind.name(), out.message());
            }
            let _ = rt.delete(&id).await;
            let _ =
                host::remove_cgroup(&format!("/agent-sandbox-bench-{}/{id}", std::process::id()));
        }
        // `create` + `start` CLI calls without the engine (stdio to /dev/null), same bundle.
        let mut cs = Vec::new();
        for i in 0..n {
            let id = format!("cs-{}-{i}", kind.name());
            let bundle = dir.join("runbundles").join(&id);
            fs_err::create_dir_all(&bundle).unwrap();
            cfg["linux"]["cgroupsPath"] =
                serde_json::json!(format!("/agent-sandbox-bench-{}/{id}", std::process::id()));
            cfg["process"]["args"] = serde_json::json!(["/bin/sleep", "1000"]);
            fs_err::write(
                bundle.join("config.json"),
                serde_json::to_vec(&cfg).unwrap(),
            )
            .unwrap();
            let t = Instant::now();
            let mut c = rt.command([
                "create".into(),
                "--bundle".into(),
                bundle.clone().into_os_string(),
                std::ffi::OsString::from(&id),
            ]);
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let ok = c.status().await.unwrap().success();
            let started = ok && rt.start(&id).await.is_ok();
            cs.push(t.elapsed());
            if !started {
                eprintln!("{} create/start failed", kind.name());
            }
            let _ = rt.delete(&id).await;
            let _ =
                host::remove_cgroup(&format!("/agent-sandbox-bench-{}/{id}", std::process::id()));
        }
        println!(
            "{:5} `{} create` + `start` CLI (sleep)  {:8.1} {:8.1}",
            kind.name(),
            kind.name(),
            pct(&mut cs, 0.5),
            pct(&mut cs, 0.99)
        );
        plain.remove(&base).await.unwrap();
        println!(
            "{:5} `{} run` (true, same bundle)    {:8.1} {:8.1}",
            kind.name(),
            kind.name(),
            pct(&mut v, 0.5),
            pct(&mut v, 0.99)
        );
    }
    // Host memory per idle sandbox under the default handler.
    if let Some(kind) = plain.default_handler() {
        let counts: Vec<usize> = std::env::var("BENCH_IDLE")
            .unwrap_or_else(|_| "100".into())
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        for k in counts.into_iter().filter(|k| *k > 0) {
            idle_memory(&plain, kind, k).await;
        }
    }
    if let Some(c) = &net_cfg
        && Path::new("/sys/class/net").join(&c.bridge).exists()
    {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &c.bridge])
            .status();
    }
    let _ = host::remove_cgroup(&format!("/agent-sandbox-bench-{}", std::process::id()));
}

fn mem_available_kib() -> u64 {
    fs_err::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A field of the process's smaps_rollup in KiB (`Pss`, `Private_Dirty`...).
fn smaps_kib(pid: i32, field: &str) -> u64 {
    fs_err::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn idle_memory(e: &SandboxEngine, kind: HandlerKind, k: usize) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = mem_available_kib();
    let t = Instant::now();
    let mut ids = Vec::new();
    for i in 0..k {
        let id = format!("idle-{i}");
        e.create(spec(&id, kind, &["/bin/sleep", "1000000"]))
            .await
            .unwrap();
        e.start(&id).await.unwrap();
        ids.push(id);
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = mem_available_kib();
    let mut cg_bytes = 0u64;
    let mut shim_pss = 0u64;
    let mut shim_private = 0u64;
    for id in &ids {
        let usage = format!(
            "/sys/fs/cgroup/memory{}/memory.usage_in_bytes",
            e.cgroup_path(id)
        );
        cg_bytes += fs_err::read_to_string(&usage)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        for p in e.shim_pids(id) {
            shim_pss += smaps_kib(p, "Pss");
            shim_private += smaps_kib(p, "Private_Dirty");
        }
    }
    println!();
    let cg = cg_bytes as f64 / 1048576.0 / k as f64;
    let shim = shim_pss as f64 / 1024.0 / k as f64;
    println!(
        "{} idle sandboxes ({}), created in {:.1} s: {:.2} MiB/sandbox = cgroup memory {:.2} + \
         shim PSS {:.2} (shim private dirty {:.2}; host MemAvailable drop {:.2} MiB/sandbox, \
         noisy on a shared machine)",
        k,
        kind.name(),
        took.as_secs_f64(),
        cg + shim,
        cg,
        shim,
        shim_private as f64 / 1024.0 / k as f64,
        before.saturating_sub(after) as f64 / 1024.0 / k as f64,
    );
    for id in &ids {
        e.remove(id).await.unwrap();
    }
}
