//! Bad input gives a clear typed error naming the sandbox and what to do, and leaves no mount,
//! network namespace, cgroup or directory behind; the engine keeps serving other sandboxes.
//! Also: many create/remove cycles leave nothing behind.
#![allow(clippy::print_stdout)]

use crate::common;

use std::time::{Duration, Instant};

use agent_sandbox_node::spec::{VolumeSource, VolumeSpec};
use agent_sandbox_node::{NodeError, Phase, PullPolicy, SandboxSpec};
use common::{Env, assert_no_leaks, need};

const IMAGE: &str = "localhost/test/busybox:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_cleanly() {
    let kind = common::default_kind();
    if need(Some(kind)) {
        return;
    }
    let env = Env::new(&[kind], None).await;
    env.busybox(IMAGE).await;
    let e = env.engine();

    // Missing image, pull forbidden.
    let mut s = SandboxSpec::new("noimg", "localhost/test/absent:1");
    s.main.pull_policy = PullPolicy::Never;
    let err = e.create(s).await.unwrap_err();
    assert!(matches!(err, NodeError::ImageNotPresent { .. }), "{err}");
    assert!(err.to_string().contains("localhost/test/absent:1"), "{err}");

    // Unreachable registry (a closed loopback port).
    let port = common::free_port();
    let s = SandboxSpec::new("noreg", format!("127.0.0.1:{port}/test/x:1"));
    let err = e.create(s).await.unwrap_err();
    assert!(matches!(err, NodeError::Pull { .. }), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");

    // Bad digest in the reference: the image is not in the store under that digest.
    let mut s = SandboxSpec::new(
        "baddigest",
        format!("localhost/test/busybox@sha256:{}", "1".repeat(64)),
    );
    s.main.pull_policy = PullPolicy::Never;
    let err = e.create(s).await.unwrap_err();
    assert!(matches!(err, NodeError::ImageNotPresent { .. }), "{err}");

    // A command that is not in the image.
    let mut s = SandboxSpec::new("nocmd", IMAGE);
    s.main.command = Some(vec![
        "/usr/bin/python3".into(),
        "-c".into(),
        "print(1)".into(),
    ]);
    let err = e.create(s).await.unwrap_err();
    match &err {
        NodeError::CommandNotFound {
            command, sandbox, ..
        } => {
            assert_eq!(command, "/usr/bin/python3");
            assert!(sandbox.contains("nocmd"));
        }
        other => panic!("expected CommandNotFound, got {other}"),
    }
    println!("{err}");
    let mut s = SandboxSpec::new("nocmd2", IMAGE);
    s.main.command = Some(vec!["not-a-command".into()]);
    let err = e.create(s).await.unwrap_err();
    assert!(matches!(err, NodeError::CommandNotFound { .. }), "{err}");

    // Privileged and hostPath are refused, naming the field.
    let mut s = SandboxSpec::new("priv", IMAGE);
    s.main.security.privileged = true;
    let err = e.create(s).await.unwrap_err();
    assert!(err.to_string().contains("privileged"), "{err}");
    let mut s = SandboxSpec::new("hostpath", IMAGE);
    s.main.volumes = vec![VolumeSpec {
        name: "h".into(),
        source: VolumeSource::HostPath {
            path: "/etc".into(),
        },
        mount_path: "/host".into(),
        read_only: true,
    }];
    let err = e.create(s).await.unwrap_err();
    assert!(matches!(err, NodeError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("hostPath"), "{err}");

    // Unknown runtime handler.
    let mut s = SandboxSpec::new("kata", IMAGE);
    s.handler = Some("kata-fc".into());
    let err = e.create(s).await.unwrap_err();
    assert!(matches!(err, NodeError::UnknownHandler { .. }), "{err}");
    assert!(err.to_string().contains("kata-fc"), "{err}");

    // Invalid id.
    let err = e
        .create(SandboxSpec::new("Bad/Id", IMAGE))
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InvalidSpec { .. }), "{err}");

    assert!(e.list().is_empty());
    assert_no_leaks(&env);

    // A command that exits at once: created and started fine, reported as exited with its code.
    let mut s = SandboxSpec::new("quick", IMAGE);
    s.main.command = Some(vec!["/bin/false".into()]);
    e.create(s).await.unwrap();
    e.start("quick").await.unwrap();
    assert_eq!(
        e.wait("quick", Duration::from_secs(20)).await.unwrap(),
        Some(1)
    );
    let st = e.state("quick").await.unwrap();
    assert_eq!((st.phase, st.exit_code), (Phase::Exited, Some(1)));
    assert!(matches!(
        e.pause("quick").await,
        Err(NodeError::InvalidState { .. })
    ));
    // Duplicate id while it exists.
    let err = e
        .create(SandboxSpec::new("quick", IMAGE))
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::AlreadyExists(_)), "{err}");
    e.remove("quick").await.unwrap();
    assert!(matches!(
        e.state("quick").await,
        Err(NodeError::NotFound(_))
    ));

    // The engine still serves.
    let mut s = SandboxSpec::new("after", IMAGE);
    s.main.command = Some(vec!["/bin/true".into()]);
    e.create(s).await.unwrap();
    e.start("after").await.unwrap();
    assert_eq!(
        e.wait("after", Duration::from_secs(20)).await.unwrap(),
        Some(0)
    );
    e.remove("after").await.unwrap();
    assert_no_leaks(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_create_remove_cycles_leave_nothing() {
    let kind = common::default_kind();
    if need(Some(kind)) {
        return;
    }
    let cycles: usize = std::env::var("NODE_TEST_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let env = Env::new(&[kind], None).await;
    env.busybox(IMAGE).await;
    let e = env.engine();
    let t = Instant::now();
    for i in 0..cycles {
        let id = format!("cycle-{i}");
        let mut s = SandboxSpec::new(&id, IMAGE);
        s.main.command = Some(vec!["/bin/sleep".into(), "100".into()]);
        s.main.resources.memory_limit = Some(64 << 20);
        e.create(s).await.unwrap();
        e.start(&id).await.unwrap();
        e.remove(&id).await.unwrap();
    }
    println!("{cycles} create/start/remove cycles in {:?}", t.elapsed());
    assert_no_leaks(&env);
}
