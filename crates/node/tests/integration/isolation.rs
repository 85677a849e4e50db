//! Isolation inside sandboxes under the default handler and runsc: no host processes, no host
//! files beyond the image and declared volumes, no host network, read-only /proc/sys, masked
//! paths, seccomp, no raw sockets unless the Pod adds NET_RAW, memory and pids limits enforced
//! (a fork bomb is contained and the host keeps working). No traffic leaves the sandboxes: they have no network configured here.
#![allow(clippy::print_stdout)]

use crate::common;

use std::time::{Duration, Instant};

use agent_sandbox_node::spec::{VolumeSource, VolumeSpec};
use agent_sandbox_node::{HandlerKind, SandboxEngine, SandboxSpec};
use common::{Env, assert_no_leaks, need};

const IMAGE: &str = "localhost/test/busybox:1";

fn sh(id: &str, kind: HandlerKind, script: &str) -> SandboxSpec {
    let mut s = SandboxSpec::new(id, IMAGE);
    s.handler = Some(kind.name().into());
    s.main.command = Some(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    s
}

async fn run_to_end(
    e: &SandboxEngine,
    spec: SandboxSpec,
    timeout: Duration,
) -> (Option<i32>, String) {
    let id = spec.id.clone();
    e.create(spec).await.unwrap();
    e.start(&id).await.unwrap();
    let code = e.wait(&id, timeout).await.unwrap();
    let log = fs_err::read_to_string(e.log_path(&id)).unwrap_or_default();
    e.remove(&id).await.unwrap();
    (code, log)
}

async fn isolation(kind: HandlerKind) {
    if need(Some(kind)) {
        return;
    }
    let env = Env::new(&[kind], None).await;
    env.busybox(IMAGE).await;
    let e = env.engine();

    // A host file next to the engine's data, and a volume the sandbox may see.
    let marker = format!("host-marker-{}", std::process::id());
    fs_err::write(env.dir.path().join(&marker), b"secret").unwrap();
    let mut s = sh(
        "iso",
        kind,
        &format!(
            "echo pid=$$; echo procs=$(ls /proc | grep -c '^[0-9]'); \
             echo found=$(find / -xdev -name {marker} 2>/dev/null | wc -l); \
             echo vol=$(cat /data/in-volume); \
             echo ifaces=$(cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); \
             echo hostname=$(cat /etc/hostname); \
             (ip link show lo | grep -q ',UP') && echo lo=up || echo lo=down; \
             (echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo procsys=rw || echo procsys=ro; \
             (cat /proc/kcore | head -c 1 | wc -c) 2>/dev/null | sed 's/^/kcore=/'; \
             (mount -t tmpfs none /mnt) 2>/dev/null && echo mount=ok || echo mount=denied; \
             echo caps=$(grep CapEff /proc/self/status | cut -f2); \
             (ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1) && echo raw=yes || echo raw=no; \
             echo nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
        ),
    );
    s.hostname = Some("iso-box".into());
    s.main.volumes = vec![VolumeSpec {
        name: "data".into(),
        source: VolumeSource::Pvc {
            claim: "iso-claim".into(),
        },
        mount_path: "/data".into(),
        read_only: true,
    }];
    let pvc = e.pvc_dir("default", "iso-claim");
    fs_err::create_dir_all(&pvc).unwrap();
    fs_err::write(pvc.join("in-volume"), b"visible").unwrap();
    let (code, log) = run_to_end(e, s, Duration::from_secs(60)).await;
    println!("{kind}: {log}");
    assert_eq!(code, Some(0), "{log}");
    let get = |k: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in {log}"))
            .trim()
            .to_string()
    };
    assert_eq!(get("pid"), "1", "own pid namespace");
    let procs: u32 = get("procs").parse().unwrap();
    assert!(procs <= 6, "sees {procs} processes: host processes visible");
    assert_eq!(get("found"), "0", "host file visible");
    assert_eq!(get("vol"), "visible", "declared volume not mounted");
    assert_eq!(get("ifaces"), "lo,", "host interfaces visible");
    assert_eq!(get("hostname"), "iso-box");
    assert_eq!(get("lo"), "up");
    assert_eq!(get("procsys"), "ro");
    assert_eq!(get("raw"), "no", "raw sockets (ping) without NET_RAW");
    assert_eq!(get("mount"), "denied");
    if kind != HandlerKind::Runsc {
        // gVisor's /proc does not report NoNewPrivs.
        assert_eq!(get("nnp"), "1");
        assert_eq!(get("kcore"), "0", "/proc/kcore is masked");
        // The OCI default set (0x00000000a80425fb) without CAP_NET_RAW (bit 13).
        assert_eq!(get("caps"), "00000000a80405fb");
    }
    assert!(
        pvc.join("in-volume").is_file(),
        "the PVC directory outlives the sandbox"
    );

    // Memory limit: a 200 MB string in a 32 MiB sandbox is killed, the host is unaffected.
    let mut s = sh(
        "oom",
        kind,
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    );
    s.main.resources.memory_limit = Some(32 << 20);
    let (code, log) = run_to_end(e, s, Duration::from_secs(120)).await;
    assert!(
        !log.contains("survived"),
        "memory limit not enforced: {log}"
    );
    assert_ne!(code, Some(0), "{log}");

    // Fork bomb under a pids limit: contained, host keeps forking.
    let mut s = sh(
        "bomb",
        kind,
        "bomb() { bomb | bomb & }; bomb; sleep 3; echo still-here",
    );
    s.main.resources.pids_limit = Some(64);
    s.main.resources.memory_limit = Some(256 << 20);
    e.create(s).await.unwrap();
    e.start("bomb").await.unwrap();
    let cg = e.cgroup_path("bomb");
    let limit_file = format!("/sys/fs/cgroup/pids{cg}/pids.max");
    let current_file = format!("/sys/fs/cgroup/pids{cg}/pids.current");
    let limit: u64 = fs_err::read_to_string(&limit_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut max_seen = 0u64;
    while Instant::now() < deadline {
        if let Ok(c) = fs_err::read_to_string(&current_file) {
            max_seen = max_seen.max(c.trim().parse().unwrap_or(0));
        }
        // The host can still start processes.
        let ok = std::process::Command::new("/bin/true")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{kind}: fork bomb peak {max_seen} tasks, limit {limit}");
    assert!(max_seen <= limit, "{max_seen} > {limit}");
    let t = Instant::now();
    e.remove("bomb").await.unwrap();
    println!("{kind}: fork bomb removed in {:?}", t.elapsed());
    assert_no_leaks(&env);
}

/// A Pod that adds NET_RAW gets raw sockets back (under runc and crun; gVisor serves raw
/// sockets only when started with --net-raw).
async fn net_raw_on_request(kind: HandlerKind) {
    if need(Some(kind)) {
        return;
    }
    let env = Env::new(&[kind], None).await;
    env.busybox(IMAGE).await;
    let e = env.engine();
    let probe = "(ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1) && echo raw=yes || echo raw=no";
    let mut s = sh("raw-added", kind, probe);
    s.main.security.caps_add = vec!["NET_RAW".into()];
    let (code, log) = run_to_end(e, s, Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("raw=yes"), "{kind}: NET_RAW added: {log}");
    assert_no_leaks(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_raw_on_request_default_handler() {
    net_raw_on_request(common::default_kind()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_raw_on_request_runc() {
    net_raw_on_request(HandlerKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_default_handler() {
    isolation(common::default_kind()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_runsc() {
    isolation(HandlerKind::Runsc).await;
}
