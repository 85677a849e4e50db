//! Unit tests of whole engine operations against the recording host: a sandbox's create,
//! state, stop and removal, the undoing of a failed create, and snapshots (complete, over the
//! size limit, cancelled, of a sandbox that does not run), checked as the sequence of host
//! effects and runtime commands they issue, without root or an OCI runtime.

use super::*;
use crate::host::{HostCall, RecordingHost};

const SH: &[u8] = b"#!/bin/sh\n";

/// An engine on a recording host with one handler (runc, never run) and a one-layer image
/// `busybox` whose command is `/bin/sh`.
async fn engine(dir: &Path) -> (SandboxEngine, Arc<RecordingHost>) {
    engine_with(dir, HandlerKind::Runc).await
}

/// [`engine`] with `handler` instead of runc.
async fn engine_with(dir: &Path, handler: HandlerKind) -> (SandboxEngine, Arc<RecordingHost>) {
    let host = Arc::new(RecordingHost::new());
    let mut config = EngineConfig::new(dir.join("data"), dir.join("run"));
    config.handlers = vec![handler];
    let engine = SandboxEngine::with_host(config, Arc::clone(&host) as Arc<dyn Host>)
        .await
        .unwrap();
    assert_eq!(engine.default_handler(), Some(handler));
    engine
        .images()
        .insert_for_tests("busybox", &[("/bin/sh", SH, 0o755)], &["/bin/sh"])
        .unwrap();
    (engine, host)
}

/// The effects recorded from `from` on, each as `op` or, for programs, `run <command>` /
/// `spawn_shim <runtime's operation>`.
fn effects(host: &RecordingHost, from: usize) -> Vec<String> {
    host.calls()[from..]
        .iter()
        .map(|c| match c {
            HostCall::Run { .. } => format!("run {}", c.command().join(" ")),
            HostCall::SpawnShim(argv) => {
                let op = argv
                    .iter()
                    .skip(1)
                    .find(|a| !a.starts_with('-') && !a.starts_with('/'))
                    .cloned()
                    .unwrap_or_default();
                format!("spawn_shim {op}")
            }
            other => other.op().to_string(),
        })
        .collect()
}

#[tokio::test]
async fn the_probe_creates_and_deletes_a_container_in_its_own_namespace() {
    let d = tempfile::tempdir().unwrap();
    let (_engine, host) = engine(d.path()).await;
    let delete = format!("run delete --force probe-runc-{}", std::process::id());
    assert_eq!(
        effects(&host, 0),
        [
            "run ",
            "create_netns",
            "spawn_shim create",
            &delete,
            &delete,
            "remove_netns",
            "remove_cgroup",
        ]
    );
}

#[tokio::test]
async fn run_state_stop_and_remove_in_order() {
    let d = tempfile::tempdir().unwrap();
    let (engine, host) = engine(d.path()).await;
    host.script_run(&["state"], 0, r#"{"status": "running", "pid": 0}"#, "");
    let start = host.calls().len();

    let handle = engine.run(SandboxSpec::new("s1", "busybox")).await.unwrap();
    assert_eq!(handle.handler, HandlerKind::Runc);
    let rootfs = d.path().join("data/sandboxes/s1/bundle/rootfs");
    assert!(
        rootfs.join("bin/sh").is_file(),
        "the image's files are in the rootfs"
    );
    let config =
        fs_err::read_to_string(d.path().join("data/sandboxes/s1/bundle/config.json")).unwrap();
    assert!(config.contains("/bin/sh"), "{config}");
    assert_eq!(
        effects(&host, start),
        ["create_netns", "mount_overlay", "spawn_shim run"]
    );
    assert_eq!(engine.state("s1").await.unwrap().phase, Phase::Running);

    let at = host.calls().len();
    engine.stop("s1", Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        effects(&host, at),
        [
            "run state s1.main.",
            "run kill s1.main. TERM",
            "run kill s1.main. KILL"
        ]
    );

    let at = host.calls().len();
    engine.remove("s1").await.unwrap();
    assert_eq!(
        effects(&host, at),
        [
            "run state s1.main.",
            "run kill s1.main. KILL",
            "run delete --force s1.main.",
            "unmount",
            "remove_cgroup",
            "remove_netns"
        ]
    );
    assert!(!d.path().join("data/sandboxes/s1").exists());
    assert!(host.mounted().is_empty(), "{:?}", host.mounted());
    assert!(!engine.contains("s1"));
}

#[tokio::test]
async fn a_failed_create_is_undone_in_reverse() {
    let d = tempfile::tempdir().unwrap();
    let (engine, host) = engine(d.path()).await;
    host.script_create_exit(1);
    let start = host.calls().len();
    let err = engine
        .run(SandboxSpec::new("s2", "busybox"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NodeError::Runtime { op, status: 1, .. } if op == "run"),
        "{err}"
    );
    let got = effects(&host, start);
    assert_eq!(
        got,
        [
            "create_netns",
            "mount_overlay",
            "spawn_shim run",
            "run state s2.main.",
            "unmount",
            "remove_cgroup",
            "remove_netns"
        ]
    );
    assert!(!d.path().join("data/sandboxes/s2").exists());
    assert!(host.mounted().is_empty());
    assert!(!engine.contains("s2"));
}

#[tokio::test]
async fn a_missing_command_fails_before_the_runtime_runs() {
    let d = tempfile::tempdir().unwrap();
    let (engine, host) = engine(d.path()).await;
    let mut spec = SandboxSpec::new("s3", "busybox");
    spec.main.command = Some(vec!["/bin/missing".into()]);
    let start = host.calls().len();
    let err = engine.run(spec).await.unwrap_err();
    assert!(matches!(err, NodeError::CommandNotFound { .. }), "{err}");
    assert!(
        !effects(&host, start)
            .iter()
            .any(|e| e.starts_with("spawn_shim")),
        "{:?}",
        effects(&host, start)
    );
    assert!(host.mounted().is_empty());
}

/// A running runsc sandbox `s` with an emptyDir `scratch`, a file in its writable layer and
/// one in the volume.
async fn runsc_sandbox(dir: &Path) -> (SandboxEngine, Arc<RecordingHost>) {
    let (engine, host) = engine_with(dir, HandlerKind::Runsc).await;
    host.script_run(&["state"], 0, r#"{"status": "running", "pid": 0}"#, "");
    let mut spec = SandboxSpec::new("s", "busybox");
    spec.main.volumes.push(VolumeSpec {
        name: "scratch".into(),
        source: VolumeSource::EmptyDir,
        mount_path: "/data".into(),
        read_only: false,
    });
    engine.run(spec).await.unwrap();
    let sandbox = dir.join("data/sandboxes/s");
    fs_err::write(sandbox.join("upper/written"), b"layer").unwrap();
    fs_err::write(sandbox.join("volumes/scratch/kept"), b"volume").unwrap();
    (engine, host)
}

#[tokio::test]
async fn a_runsc_snapshot_checkpoints_memory_then_copies_layer_and_volumes() {
    let d = tempfile::tempdir().unwrap();
    let (engine, host) = runsc_sandbox(d.path()).await;
    let target = d.path().join("data/snapshots/default/snap-1");
    let at = host.calls().len();
    let budget = Arc::new(crate::host::CopyBudget::new(1 << 20));
    let out = engine.snapshot("s", &target, budget).await.unwrap();
    let image = target.join("containers/main/memory");
    let checkpoint = format!(
        "run checkpoint --leave-running --image-path={} s.main.",
        partial_dir(&target)
            .join("containers/main/memory")
            .display()
    );
    assert_eq!(
        effects(&host, at),
        [
            "run state s.main.",
            "run state s.main.",
            &checkpoint,
            "copy_tree",
            "copy_tree"
        ]
    );
    assert!(image.is_dir());
    assert_eq!(
        fs_err::read(target.join("containers/main/upper/written")).unwrap(),
        b"layer"
    );
    assert_eq!(
        fs_err::read(target.join("volumes/scratch/kept")).unwrap(),
        b"volume"
    );
    assert!(!partial_dir(&target).exists(), "renamed into place");
    assert!(out.memory && out.handler == HandlerKind::Runsc);
    assert_eq!(
        (out.containers, out.volumes),
        (vec!["main".to_string()], vec!["scratch".to_string()])
    );
    assert_eq!(out.size_bytes, 11);
    let manifest: SnapshotOutcome =
        serde_json::from_slice(&fs_err::read(target.join(SNAPSHOT_MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest.size_bytes, 11);
}

#[tokio::test]
async fn a_snapshot_over_the_limit_or_cancelled_leaves_nothing_and_the_sandbox_runs() {
    let d = tempfile::tempdir().unwrap();
    let (engine, host) = runsc_sandbox(d.path()).await;
    let target = d.path().join("data/snapshots/default/snap-2");
    let small = Arc::new(crate::host::CopyBudget::new(5));
    let err = engine.snapshot("s", &target, small).await.unwrap_err();
    assert!(
        matches!(err, NodeError::SnapshotTooLarge { limit: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--snapshot-size-limit"), "{err}");
    let cancelled = Arc::new(crate::host::CopyBudget::new(1 << 20));
    cancelled.cancel();
    let err = engine.snapshot("s", &target, cancelled).await.unwrap_err();
    assert!(matches!(err, NodeError::SnapshotCancelled { .. }), "{err}");
    assert!(!target.exists() && !partial_dir(&target).exists());
    assert!(
        !effects(&host, 0).iter().any(|e| e.starts_with("run kill")),
        "the sandbox is left running"
    );
    assert_eq!(engine.state("s").await.unwrap().phase, Phase::Running);
}

#[tokio::test]
async fn a_sandbox_that_does_not_run_is_not_snapshotted() {
    let d = tempfile::tempdir().unwrap();
    let (engine, host) = engine(d.path()).await;
    host.script_run(&["state"], 0, r#"{"status": "stopped", "pid": 0}"#, "");
    engine.run(SandboxSpec::new("s4", "busybox")).await.unwrap();
    let target = d.path().join("snap");
    let budget = Arc::new(crate::host::CopyBudget::new(1 << 20));
    let err = engine
        .snapshot("s4", &target, budget.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::InvalidState { .. }), "{err}");
    let err = engine.snapshot("nope", &target, budget).await.unwrap_err();
    assert!(matches!(err, NodeError::NotFound(_)), "{err}");
    assert!(!target.exists() && !partial_dir(&target).exists());
}

#[tokio::test]
async fn a_new_sandbox_starts_from_a_snapshots_layer_and_volumes() {
    let d = tempfile::tempdir().unwrap();
    let (engine, _host) = runsc_sandbox(d.path()).await;
    let target = d.path().join("data/snapshots/default/snap-3");
    let budget = Arc::new(crate::host::CopyBudget::new(1 << 20));
    engine.snapshot("s", &target, budget).await.unwrap();
    let mut spec = SandboxSpec::new("t", "busybox");
    spec.main.volumes.push(VolumeSpec {
        name: "scratch".into(),
        source: VolumeSource::EmptyDir,
        mount_path: "/data".into(),
        read_only: false,
    });
    spec.restore_from = Some(target.clone());
    engine.run(spec).await.unwrap();
    let sandbox = d.path().join("data/sandboxes/t");
    assert_eq!(
        fs_err::read(sandbox.join("upper/written")).unwrap(),
        b"layer"
    );
    assert_eq!(
        fs_err::read(sandbox.join("volumes/scratch/kept")).unwrap(),
        b"volume"
    );
    // Files that are not there: refused naming the annotation, nothing made.
    let mut spec = SandboxSpec::new("u", "busybox");
    spec.restore_from = Some(d.path().join("gone"));
    let err = engine.run(spec).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("agent-sandbox-rs.github.io/restore-from"),
        "{err}"
    );
    assert!(!engine.contains("u"));
}
