//! Unit tests of the lifecycle's effects against a handler whose commands go to the recording
//! host: which runtime commands, in which order, for each phase.

use super::*;
use crate::host::RecordingHost;

fn runtime(host: &Arc<RecordingHost>) -> OciRuntime {
    OciRuntime::with_host(
        HandlerKind::Runc,
        PathBuf::from("/usr/bin/runc"),
        PathBuf::from("/run/test-runc"),
        Arc::clone(host) as Arc<dyn Host>,
    )
}

/// A container record in `dir`, with no processes (so nothing waits on a pid).
fn container(dir: &Path) -> ContainerRecord {
    ContainerRecord {
        name: "main".into(),
        runtime_id: "s1.main.".into(),
        dir: dir.to_path_buf(),
        cgroup_path: "/agent-sandbox/s1.main.".into(),
        image: Image {
            reference: "busybox".into(),
            manifest_digest: String::new(),
            config_digest: String::new(),
            config: Default::default(),
            layers: Vec::new(),
        },
        lowers: Vec::new(),
        shim_pid: None,
        container_pid: None,
        started: true,
        paused: false,
    }
}

fn in_state(host: &RecordingHost, status: &str) {
    host.script_run(
        &["state"],
        0,
        &format!(r#"{{"status": "{status}", "pid": 0}}"#),
        "",
    );
}

fn unknown(host: &RecordingHost) {
    host.script_run(&["state"], 1, "", "container \"s1.main.\" does not exist");
}

#[tokio::test]
async fn state_comes_from_the_exit_file_first_then_the_runtime() {
    let d = tempfile::tempdir().unwrap();
    let host = Arc::new(RecordingHost::new());
    let (rt, c) = (runtime(&host), container(d.path()));
    in_state(&host, "paused");
    assert_eq!(container_state(&rt, &c).await.unwrap().phase, Phase::Paused);
    unknown(&host);
    let st = container_state(&rt, &c).await.unwrap();
    assert_eq!((st.phase, st.exit_code), (Phase::Exited, None));
    fs_err::write(d.path().join("exit"), "3").unwrap();
    let st = container_state(&rt, &c).await.unwrap();
    assert_eq!((st.phase, st.exit_code), (Phase::Exited, Some(3)));
    assert_eq!(host.commands(), ["state s1.main.", "state s1.main."]);
}

#[tokio::test]
async fn stop_signals_a_running_container_then_kills_it() {
    let d = tempfile::tempdir().unwrap();
    let host = Arc::new(RecordingHost::new());
    let (rt, c) = (runtime(&host), container(d.path()));
    in_state(&host, "running");
    // No process to wait for: the code is whatever the shim wrote (nothing here).
    assert_eq!(stop(&rt, &c, Duration::from_secs(1)).await.unwrap(), None);
    assert_eq!(
        host.commands(),
        ["state s1.main.", "kill s1.main. TERM", "kill s1.main. KILL"]
    );
}

#[tokio::test]
async fn stop_without_grace_kills_and_a_paused_container_is_thawed_first() {
    let d = tempfile::tempdir().unwrap();
    let host = Arc::new(RecordingHost::new());
    let (rt, c) = (runtime(&host), container(d.path()));
    in_state(&host, "paused");
    stop(&rt, &c, Duration::ZERO).await.unwrap();
    assert_eq!(
        host.commands(),
        ["state s1.main.", "resume s1.main.", "kill s1.main. KILL"]
    );
}

#[tokio::test]
async fn stop_deletes_a_created_container_and_leaves_an_exited_one() {
    let d = tempfile::tempdir().unwrap();
    let host = Arc::new(RecordingHost::new());
    let (rt, c) = (runtime(&host), container(d.path()));
    in_state(&host, "created");
    stop(&rt, &c, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        host.commands(),
        ["state s1.main.", "delete --force s1.main."]
    );

    let host = Arc::new(RecordingHost::new());
    let rt = runtime(&host);
    fs_err::write(d.path().join("exit"), "0").unwrap();
    assert_eq!(
        stop(&rt, &c, Duration::from_secs(1)).await.unwrap(),
        Some(0)
    );
    assert!(host.commands().is_empty(), "{:?}", host.commands());
}

#[tokio::test]
async fn a_failed_signal_stops_the_stop() {
    let d = tempfile::tempdir().unwrap();
    let host = Arc::new(RecordingHost::new());
    let (rt, c) = (runtime(&host), container(d.path()));
    in_state(&host, "running");
    host.script_run(&["kill"], 1, "", "permission denied");
    let err = stop(&rt, &c, Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(err, NodeError::Runtime { ref op, .. } if op == "kill"),
        "{err}"
    );
    assert_eq!(host.commands(), ["state s1.main.", "kill s1.main. TERM"]);
}

#[tokio::test]
async fn removal_follows_the_phase() {
    let d = tempfile::tempdir().unwrap();
    for (status, expected) in [
        (
            "paused",
            &["state", "resume", "kill s1.main. KILL", "delete --force"][..],
        ),
        (
            "running",
            &["state", "kill s1.main. KILL", "delete --force"][..],
        ),
        ("created", &["state", "delete --force"][..]),
        ("stopped", &["state", "delete --force"][..]),
    ] {
        let host = Arc::new(RecordingHost::new());
        let (rt, c) = (runtime(&host), container(d.path()));
        in_state(&host, status);
        assert!(remove_from_runtime(Some(&rt), &c).await.is_empty());
        let commands = host.commands();
        assert_eq!(commands.len(), expected.len(), "{status}: {commands:?}");
        for (got, want) in commands.iter().zip(expected) {
            assert!(got.starts_with(want), "{status}: {commands:?}");
        }
    }
}

#[tokio::test]
async fn removal_of_an_unknown_container_does_nothing_and_errors_are_collected() {
    let d = tempfile::tempdir().unwrap();
    let host = Arc::new(RecordingHost::new());
    let (rt, c) = (runtime(&host), container(d.path()));
    unknown(&host);
    assert!(remove_from_runtime(Some(&rt), &c).await.is_empty());
    assert_eq!(host.commands(), ["state s1.main."]);
    assert!(remove_from_runtime(None, &c).await.is_empty());

    let host = Arc::new(RecordingHost::new());
    let rt = runtime(&host);
    in_state(&host, "running");
    host.script_run(&["kill"], 1, "", "permission denied");
    host.script_run(&["delete"], 1, "", "device busy");
    let errors = remove_from_runtime(Some(&rt), &c).await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        host.commands().len(),
        3,
        "delete is tried after a failed kill"
    );
}
