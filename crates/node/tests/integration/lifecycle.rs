//! Lifecycle under each handler: start, exit code, stop with grace, pause/resume, recovery
//! after the engine object is dropped and re-created, removal without leftovers.
#![allow(clippy::print_stdout)]

use crate::common;

use std::time::Duration;

use agent_sandbox_node::{HandlerKind, Phase, SandboxSpec};
use common::{Env, assert_no_leaks, need};

const IMAGE: &str = "localhost/test/busybox:1";

fn sh(id: &str, handler: HandlerKind, script: &str) -> SandboxSpec {
    let mut s = SandboxSpec::new(id, IMAGE);
    s.handler = Some(handler.name().into());
    s.main.command = Some(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    s
}

/// Waits (bounded) until sandbox `id` has printed `armed`: its shell has installed its trap.
async fn wait_armed(e: &agent_sandbox_node::SandboxEngine, id: &str) {
    for _ in 0..200 {
        let log = fs_err::read_to_string(e.log_path(id)).unwrap_or_default();
        if log.contains("armed") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sandbox {id} did not print `armed` within 5 s");
}

async fn lifecycle(kind: HandlerKind) {
    if need(Some(kind)) {
        return;
    }
    let mut env = Env::new(&[kind], None).await;
    let st = &env.engine().handler_statuses()[0];
    assert!(st.usable, "{}", st.summary());
    println!("{}", st.summary());
    env.busybox(IMAGE).await;
    let e = env.engine();

    // Exit code and output.
    let h = e
        .create(sh("exit", kind, "echo hello-from-sandbox; exit 3"))
        .await
        .unwrap();
    assert_eq!(h.handler, kind);
    assert_eq!(e.state("exit").await.unwrap().phase, Phase::Created);
    e.start("exit").await.unwrap();
    assert_eq!(
        e.wait("exit", Duration::from_secs(20)).await.unwrap(),
        Some(3)
    );
    let st = e.state("exit").await.unwrap();
    assert_eq!((st.phase, st.exit_code), (Phase::Exited, Some(3)));
    let log = fs_err::read_to_string(e.log_path("exit")).unwrap();
    assert!(log.contains("hello-from-sandbox"), "log: {log}");
    e.remove("exit").await.unwrap();

    // Create and start in one runtime call.
    let h = e
        .run(sh("oneshot", kind, "echo ran-at-once; exit 4"))
        .await
        .unwrap();
    assert_eq!(
        e.wait(&h.id, Duration::from_secs(20)).await.unwrap(),
        Some(4)
    );
    assert!(e.start("oneshot").await.is_err(), "already started");
    let log = fs_err::read_to_string(e.log_path("oneshot")).unwrap();
    assert!(log.contains("ran-at-once"), "{log}");
    e.remove("oneshot").await.unwrap();
    e.run(sh("oneshot2", kind, "sleep 100")).await.unwrap();
    assert_eq!(e.state("oneshot2").await.unwrap().phase, Phase::Running);
    e.remove("oneshot2").await.unwrap();

    // Created, never started, then removed (and stopped) cleanly.
    e.create(sh("unstarted", kind, "exit 0")).await.unwrap();
    e.stop("unstarted", Duration::from_secs(1)).await.unwrap();
    e.remove("unstarted").await.unwrap();
    e.create(sh("unstarted2", kind, "exit 0")).await.unwrap();
    e.remove("unstarted2").await.unwrap();

    // A Pod spec drives the same engine.
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "from-pod", "namespace": "ns1"},
        "spec": {"runtimeClassName": kind.name(), "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "echo $GREETING; exit 5"],
                "env": [{"name": "GREETING", "value": "hi-from-pod"}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}]}
    }))
    .unwrap();
    let h = e.create_pod(&pod).await.unwrap();
    assert_eq!(h.id, "ns1-from-pod");
    e.start(&h.id).await.unwrap();
    assert_eq!(
        e.wait(&h.id, Duration::from_secs(20)).await.unwrap(),
        Some(5)
    );
    let log = fs_err::read_to_string(e.log_path(&h.id)).unwrap();
    assert!(log.contains("hi-from-pod"), "{log}");
    e.remove(&h.id).await.unwrap();

    // Stop with grace: the process handles TERM.
    e.create(sh(
        "grace",
        kind,
        "trap 'exit 42' TERM; echo armed; while true; do sleep 0.05; done",
    ))
    .await
    .unwrap();
    e.start("grace").await.unwrap();
    wait_armed(e, "grace").await;
    assert_eq!(e.state("grace").await.unwrap().phase, Phase::Running);
    let code = e.stop("grace", Duration::from_secs(10)).await.unwrap();
    assert_eq!(code, Some(42));
    e.remove("grace").await.unwrap();

    // Stop with grace: TERM ignored, SIGKILL after the grace period.
    e.create(sh(
        "kill",
        kind,
        "trap '' TERM; echo armed; while true; do sleep 0.05; done",
    ))
    .await
    .unwrap();
    e.start("kill").await.unwrap();
    // A TERM that arrives before the trap (even before the runtime's init has exec'd the
    // shell) is not the case under test.
    wait_armed(e, "kill").await;
    let t = std::time::Instant::now();
    let code = e.stop("kill", Duration::from_millis(500)).await.unwrap();
    assert_eq!(code, Some(137));
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    e.remove("kill").await.unwrap();

    // Pause and resume.
    e.create(sh(
        "pause",
        kind,
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.02; done",
    ))
    .await
    .unwrap();
    e.start("pause").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.pause("pause").await.unwrap();
    assert_eq!(e.state("pause").await.unwrap().phase, Phase::Paused);
    assert!(e.pause("pause").await.is_err());
    e.resume("pause").await.unwrap();
    assert_eq!(e.state("pause").await.unwrap().phase, Phase::Running);

    // Recovery: drop the engine, open a new one, find the sandbox still running. Its record
    // is turned into the single `record.json` of earlier versions first: read, then replaced.
    let pid_before = e.state("pause").await.unwrap().pid;
    let dir = env.config.root.join("sandboxes/pause");
    let newest = ["record.0.json", "record.1.json"]
        .iter()
        .filter_map(|n| fs_err::read_to_string(dir.join(n)).ok())
        .max_by_key(|t| {
            let header = t.lines().next().unwrap_or_default();
            header
                .rsplit(' ')
                .next()
                .and_then(|g| g.parse::<u64>().ok())
        })
        .unwrap();
    let (_, json) = newest.split_once('\n').unwrap();
    fs_err::write(dir.join("record.json"), json).unwrap();
    for n in ["record.0.json", "record.1.json"] {
        fs_err::remove_file(dir.join(n)).unwrap();
    }
    env.reopen().await;
    let e = env.engine();
    assert!(e.list().is_empty());
    let report = e.recover().await.unwrap();
    assert_eq!(report.adopted, vec!["pause".to_string()], "{report:?}");
    assert!(!dir.join("record.json").exists());
    let st = e.state("pause").await.unwrap();
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(st.pid, pid_before, "re-adopted, not restarted");
    let code = e.stop("pause", Duration::from_secs(5)).await.unwrap();
    // Killed by TERM (gVisor delivers it to pid 1) or, after the grace, by KILL.
    assert!(matches!(code, Some(137) | Some(143)), "{code:?}");
    e.remove("pause").await.unwrap();
    assert_no_leaks(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_runc() {
    lifecycle(HandlerKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_crun() {
    lifecycle(HandlerKind::Crun).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_runsc() {
    lifecycle(HandlerKind::Runsc).await;
}
