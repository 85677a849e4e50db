//! Recovery after a `kill -9` of the process that owns the engine: a child process (this test
//! binary re-executed) creates and starts sandboxes and is killed with SIGKILL; a new engine on
//! the same directories re-adopts the running sandbox (same pid, not restarted), reports the
//! exit code of one that finished while no engine was running, and removes both cleanly.
#![allow(clippy::print_stdout)]

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_sandbox_node::{Phase, SandboxEngine, SandboxSpec};
use common::{Env, TestImage, assert_no_leaks, need};

const IMAGE: &str = "localhost/test/busybox:1";
const CHILD_ENV: &str = "NODE_RECOVERY_CHILD_DIR";

/// Runs only inside the child process: create two sandboxes, report, then wait to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_child_helper() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mut config = Env::config(&dir);
    config.handlers = vec![common::default_kind()];
    let e = SandboxEngine::new(config).await.unwrap();
    let layout = dir.join("layout");
    TestImage::busybox().write_layout(&layout, "test");
    e.images()
        .import_oci_layout(&layout, Some("test"), IMAGE)
        .await
        .unwrap();
    let mut s = SandboxSpec::new("survivor", IMAGE);
    s.main.command = Some(vec!["/bin/sleep".into(), "1000".into()]);
    e.run(s).await.unwrap();
    let mut s = SandboxSpec::new("finisher", IMAGE);
    s.main.command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "sleep 1; exit 9".into(),
    ]);
    e.run(s).await.unwrap();
    let pid = e.state("survivor").await.unwrap().pid.unwrap();
    fs_err::write(dir.join("ready"), pid.to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_survive_kill_9_of_the_engine_process() {
    if std::env::var(CHILD_ENV).is_ok() || need(Some(common::default_kind())) {
        return;
    }
    let mut env = Env::new(&[common::default_kind()], None).await;
    let dir = env.dir.path().to_path_buf();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "recovery::recovery_child_helper", "--nocapture"])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = dir.join("ready");
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "child did not create its sandboxes"
        );
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid: i32 = fs_err::read_to_string(&ready).unwrap().parse().unwrap();
    // kill -9 the engine's process.
    child.kill().unwrap();
    child.wait().unwrap();
    // Let the short sandbox finish while no engine runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    env.reopen().await;
    let e = env.engine();
    let report = e.recover().await.unwrap();
    let mut adopted = report.adopted.clone();
    adopted.sort();
    assert_eq!(
        adopted,
        vec!["finisher".to_string(), "survivor".to_string()],
        "{report:?}"
    );
    let st = e.state("survivor").await.unwrap();
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(st.pid, Some(pid), "re-adopted, not restarted");
    let st = e.state("finisher").await.unwrap();
    assert_eq!((st.phase, st.exit_code), (Phase::Exited, Some(9)));
    // Recovering again is a no-op.
    assert!(e.recover().await.unwrap().adopted.is_empty());
    e.remove("survivor").await.unwrap();
    e.remove("finisher").await.unwrap();
    assert_no_leaks(&env);
}
