//! gVisor runtime monitoring with the real runsc: a command run in a monitored sandbox shows up
//! in its JSON event log (its execve, the file it opens, the address it connects to); with
//! Falco's socket absent the sandbox works on and the drops are counted; a listener speaking
//! the remote protocol (standing in for Falco), started late, receives the events from then
//! on; monitoring resumes after the node restarts; a bad setting is an error on the Pod naming
//! the annotation and what to write.
#![allow(clippy::print_stdout)]

use crate::common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_sandbox_node::monitor::RuntimeMonitoring;
use agent_sandbox_node::{HandlerKind, SandboxEngine, SandboxSpec};
use common::{AgentEnv, Env, need};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, accept4, bind, listen, recv,
    send, socket,
};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/test/busybox:1";

/// An engine with runsc whose Falco socket is `falco` (nothing listens there unless the test
/// says so).
async fn runsc_env(falco: &Path) -> Env {
    let dir = tempfile::Builder::new()
        .prefix("asbx-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut config = Env::config(dir.path());
    config.handlers = vec![HandlerKind::Runsc];
    config.runtime_monitoring.falco_socket = Some(falco.to_path_buf());
    let engine = Arc::new(SandboxEngine::new(config.clone()).await.unwrap());
    let env = Env {
        dir,
        engine: Some(engine),
        config,
    };
    env.busybox(IMAGE).await;
    env
}

fn sleeper(id: &str, monitoring: Option<RuntimeMonitoring>) -> SandboxSpec {
    let mut s = SandboxSpec::new(id, IMAGE);
    s.handler = Some("gvisor".into());
    s.main.command = Some(vec!["/bin/sleep".into(), "600".into()]);
    s.runtime_monitoring = monitoring;
    s
}

/// The command whose events the tests look for: it runs `cat` on a file and connects to a
/// closed loopback port.
fn probe_command() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "/bin/cat /etc/hostname; /bin/nc -w 1 127.0.0.1 9 </dev/null; echo probe-done".into(),
    ]
}

fn events(path: &Path) -> Vec<Value> {
    fs_err::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn has(events: &[Value], pred: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(pred)
}

fn argv_has(e: &Value, word: &str) -> bool {
    e["argv"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains(word)))
    })
}

/// The events the probe command must produce.
fn probe_seen(ev: &[Value]) -> [bool; 3] {
    [
        has(ev, |e| {
            (e["event"] == "sentry/execve" || e["event"] == "syscall/execve/exit")
                && argv_has(e, "/etc/hostname")
        }),
        has(ev, |e| {
            e["event"] == "syscall/openat/exit"
                && e["path"] == "/etc/hostname"
                && e["result"].as_i64().is_some_and(|r| r >= 0)
        }),
        has(ev, |e| {
            e["event"] == "syscall/connect/exit" && e["address"] == "127.0.0.1:9"
        }),
    ]
}

async fn exec_ms(e: &SandboxEngine, id: &str) -> f64 {
    let t = Instant::now();
    let out = e
        .exec(id, "main", &probe_command(), Duration::from_secs(30))
        .await
        .unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("probe-done"), "{stdout:?}");
    ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_exec_events_reach_the_log_and_falco_down_is_counted() {
    if need(Some(HandlerKind::Runsc)) {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("asbx-falco-")
        .tempdir_in("/tmp")
        .unwrap();
    let falco = scratch.path().join("absent.sock");
    let env = runsc_env(&falco).await;
    let e = env.engine();
    let m = RuntimeMonitoring {
        log: true,
        falco: true,
    };
    e.run(sleeper("mon", Some(m))).await.unwrap();
    e.run(sleeper("plain", None)).await.unwrap();

    // The runsc configuration the sandbox was made with.
    let dir = e.config().root.join("sandboxes/mon");
    let cfg: Value =
        serde_json::from_slice(&fs_err::read(dir.join("pod-init.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["trace_session"]["sinks"][0]["config"]["endpoint"],
        json!(dir.join("monitor.sock"))
    );

    let mut traced = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..9 {
        traced.push(exec_ms(e, "mon").await);
        plain.push(exec_ms(e, "plain").await);
    }
    let log = e.runtime_events_path("mon");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ev = loop {
        let ev = events(&log);
        if probe_seen(&ev).iter().all(|x| *x) || Instant::now() > deadline {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen = probe_seen(&ev);
    let count = |name: &str| ev.iter().filter(|e| e["event"] == name).count();
    println!(
        "{} events; execve {} openat {} connect {} container/start {} task_exit {}",
        ev.len(),
        count("sentry/execve"),
        count("syscall/openat/exit"),
        count("syscall/connect/exit"),
        count("container/start"),
        count("sentry/task_exit"),
    );
    for e in ev.iter().filter(|e| {
        e["event"] == "sentry/execve"
            || e["event"] == "syscall/connect/exit"
            || (e["event"] == "syscall/openat/exit" && e["path"] == "/etc/hostname")
    }) {
        println!("{e}");
    }
    assert_eq!(seen, [true; 3], "execve, openat, connect of the probe");
    // Every event names its sandbox's container and process.
    assert!(
        ev.iter()
            .all(|e| e["time"].is_string() && e["container"].is_string())
    );
    // The unmonitored sandbox has no log.
    assert!(!e.runtime_events_path("plain").exists());

    // Falco's socket is absent: the sandbox works (the execs above), the forwards are counted
    // as dropped, nothing was forwarded.
    let c = e.monitoring().counters();
    assert!(c.dropped_falco.load(Ordering::SeqCst) > 0);
    assert_eq!(c.forwarded.load(Ordering::SeqCst), 0);
    let metrics = e.monitoring().metrics_text();
    assert!(
        metrics.contains("agent_sandbox_runtime_monitoring_events_dropped_total{sink=\"falco\"}"),
        "{metrics}"
    );
    traced.sort_by(f64::total_cmp);
    plain.sort_by(f64::total_cmp);
    println!(
        "exec of the probe, median of 9: traced {:.1} ms, untraced {:.1} ms; dropped for Falco {}, logged {}",
        traced[4],
        plain[4],
        c.dropped_falco.load(Ordering::SeqCst),
        c.logged.load(Ordering::SeqCst)
    );

    e.remove("mon").await.unwrap();
    e.remove("plain").await.unwrap();
    common::assert_no_leaks(&env);
}

/// A Falco stand-in: a SOCK_SEQPACKET listener that answers the handshake and keeps every
/// message it receives.
struct FakeFalco {
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FakeFalco {
    fn start(path: &Path) -> FakeFalco {
        let fd: OwnedFd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        listen(&fd, Backlog::new(8).unwrap()).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&messages);
        std::thread::spawn(move || {
            while let Ok(conn) = accept4(fd.as_fd(), SockFlag::SOCK_CLOEXEC) {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    // The client's handshake (version 1), then ours.
                    let n = recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
                    assert_eq!(&buf[..n], &[8, 1]);
                    send(conn.as_raw_fd(), &[8, 1], MsgFlags::empty()).unwrap();
                    while let Ok(n) = recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                        if n == 0 {
                            break;
                        }
                        store.lock().unwrap().push(buf[..n].to_vec());
                    }
                });
            }
        });
        FakeFalco { messages }
    }

    /// Message types (from each header) received so far.
    fn types(&self) -> Vec<u16> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| u16::from_le_bytes([m[2], m[3]]))
            .collect()
    }

    fn payloads_contain(&self, needle: &[u8]) -> bool {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.windows(needle.len()).any(|w| w == needle))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_events_reach_a_falco_listener() {
    if need(Some(HandlerKind::Runsc)) {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("asbx-falco-")
        .tempdir_in("/tmp")
        .unwrap();
    let falco_path: PathBuf = scratch.path().join("falco.sock");
    let env = runsc_env(&falco_path).await;
    let e = env.engine();
    let m = RuntimeMonitoring {
        log: false,
        falco: true,
    };
    // Falco starts after the sandbox: what came before is dropped, what comes after arrives
    // (the node tries the socket again within a second).
    e.run(sleeper("tofalco", Some(m))).await.unwrap();
    exec_ms(e, "tofalco").await;
    let dropped = e
        .monitoring()
        .counters()
        .dropped_falco
        .load(Ordering::SeqCst);
    assert!(dropped > 0);
    let falco = FakeFalco::start(&falco_path);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    exec_ms(e, "tofalco").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // 3: sentry/execve, 7: open, 10: connect (gVisor's message types).
    while !([3u16, 7, 10].iter().all(|t| falco.types().contains(t))
        && falco.payloads_contain(b"/etc/hostname"))
    {
        assert!(
            Instant::now() < deadline,
            "Falco stand-in got types {:?}",
            falco.types()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let types = falco.types();
    println!(
        "Falco stand-in: {} messages, {} of them syscalls",
        types.len(),
        types.len() - types.iter().filter(|t| **t <= 5).count()
    );
    let c = e.monitoring().counters();
    assert!(c.forwarded.load(Ordering::SeqCst) >= types.len() as u64);
    assert_eq!(c.dropped_falco.load(Ordering::SeqCst), dropped);
    // `log` was not asked for.
    assert!(!e.runtime_events_path("tofalco").exists());
    e.remove("tofalco").await.unwrap();
}

/// A bad value, and monitoring asked of a sandbox that does not run under gVisor: the Pod
/// waits with an event naming the annotation and what to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_monitoring_settings_are_errors_on_the_pod() {
    let kind = common::default_kind();
    if need(Some(kind)) {
        return;
    }
    let a = AgentEnv::new(&[kind], None).await;
    a.env.busybox(IMAGE).await;
    let pod = |name: &str, value: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default",
                            "annotations": {"agent-sandbox-rs.github.io/runtime-monitoring": value}},
               "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                   {"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                    "command": ["/bin/sleep", "600"]}]}})
    };
    for (name, value, want) in [
        ("badvalue", "yes", "unknown sink \"yes\""),
        ("notgvisor", "log", "runtimeClassName: gvisor"),
    ] {
        let p = a.create_pod(pod(name, value)).await;
        let uid = p.metadata.uid.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let note = loop {
            let ev = a.events_of(&uid).await;
            if let Some((_, note)) = ev.iter().find(|(r, _)| r == "Failed") {
                break note.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no Failed event for {name}: {ev:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("{name}: {note}");
        assert!(
            note.contains("metadata.annotations[agent-sandbox-rs.github.io/runtime-monitoring]"),
            "{note}"
        );
        assert!(note.contains(want), "{note}");
        let p = a
            .wait_pod("default", name, Duration::from_secs(20), |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref())
                    .and_then(|s| s.waiting.as_ref())
                    .is_some_and(|w| w.reason.as_deref() == Some("CreateContainerConfigError"))
            })
            .await;
        assert_ne!(
            p.status.and_then(|s| s.phase).as_deref(),
            Some("Running"),
            "{name} must not run"
        );
    }
}

/// After a restart of the node (a new engine re-adopting the sandbox), the running sentry's
/// trace session is made again and its events reach the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_resumes_after_the_node_restarts() {
    if need(Some(HandlerKind::Runsc)) {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("asbx-falco-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut env = runsc_env(&scratch.path().join("absent.sock")).await;
    let m = RuntimeMonitoring {
        log: true,
        falco: false,
    };
    env.engine().run(sleeper("again", Some(m))).await.unwrap();
    exec_ms(env.engine(), "again").await;
    env.reopen().await;
    let report = env.engine().recover().await.unwrap();
    assert_eq!(report.adopted, ["again"]);
    let log = env.engine().runtime_events_path("again");
    let before = events(&log).len();
    exec_ms(env.engine(), "again").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = events(&log);
        if probe_seen(&ev[before.min(ev.len())..]).iter().all(|x| *x) {
            println!("{} events after the restart", ev.len() - before);
            // They came through the new engine's socket (the sentry connected again).
            let c = env.engine().monitoring().counters();
            assert_eq!(c.connections.load(Ordering::SeqCst), 1);
            assert!(c.logged.load(Ordering::SeqCst) > 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no probe events after the restart: {:?}",
            &ev[before.min(ev.len())..]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.engine().remove("again").await.unwrap();
}
