//! Unit tests of the engine's host steps with the recording host: which effects, in which
//! order, and what is refused while something is still mounted.

use super::*;
use crate::host::{HostCall, RecordingHost};

fn vol(name: &str, source: VolumeSource) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        source,
        mount_path: format!("/{name}"),
        read_only: false,
    }
}

fn spec_with(volumes: Vec<VolumeSpec>) -> SandboxSpec {
    let mut spec = SandboxSpec::new("s1", "busybox");
    spec.main.volumes = volumes;
    spec
}

#[test]
fn volumes_are_directories_and_projected_ones_memory() {
    let d = tempfile::tempdir().unwrap();
    let host = RecordingHost::new();
    let spec = spec_with(vec![
        vol("scratch", VolumeSource::EmptyDir),
        vol("config", VolumeSource::Projected),
    ]);
    let dir_of = |v: &VolumeSpec| d.path().join(&v.name);
    make_volumes(&host, &spec, dir_of).unwrap();
    assert!(d.path().join("scratch").is_dir());
    assert!(d.path().join("config").is_dir());
    assert_eq!(
        host.calls(),
        [HostCall::MountTmpfs {
            target: d.path().join("config"),
            size: PROJECTED_VOLUME_BYTES
        }]
    );
    // Made again (a second prepare after a restart): the filesystem is already there.
    make_volumes(&host, &spec, dir_of).unwrap();
    assert_eq!(host.calls().len(), 1);
}

#[test]
fn a_missing_host_path_is_refused_before_any_effect() {
    let d = tempfile::tempdir().unwrap();
    let host = RecordingHost::new();
    let missing = d.path().join("nope");
    let spec = spec_with(vec![vol(
        "h",
        VolumeSource::HostPath {
            path: missing.display().to_string(),
        },
    )]);
    let err = make_volumes(&host, &spec, |_| missing.clone()).unwrap_err();
    assert!(
        matches!(&err, NodeError::InvalidSpec { field, .. } if field == "spec.volumes[h].hostPath"),
        "{err}"
    );
    assert!(host.calls().is_empty());
}

#[test]
fn rootfs_is_an_overlay_of_the_image_layers() {
    let host = RecordingHost::new();
    let cp = CPaths {
        dir: PathBuf::from("/data/s1"),
    };
    let lowers = vec![PathBuf::from("/img/l2"), PathBuf::from("/img/l1")];
    mount_rootfs(&host, &lowers, &cp).unwrap();
    assert_eq!(
        host.calls(),
        [HostCall::MountOverlay {
            lowers,
            target: PathBuf::from("/data/s1/bundle/rootfs")
        }]
    );
    assert!(host.is_mounted(&cp.rootfs()));
}

#[test]
fn releasing_a_container_unmounts_then_removes_its_cgroup_even_after_a_failure() {
    let cp = CPaths {
        dir: PathBuf::from("/data/s1"),
    };
    let host = RecordingHost::new().with_mount(cp.rootfs());
    host.fail("unmount");
    let errors = release_container(&host, &cp, "/agent-sandbox/s1.main.");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        host.calls(),
        [
            HostCall::Unmount(cp.rootfs()),
            HostCall::RemoveCgroup("/agent-sandbox/s1.main.".into())
        ]
    );
}

#[test]
fn container_files_stay_while_its_rootfs_is_mounted() {
    let d = tempfile::tempdir().unwrap();
    let cp = CPaths {
        dir: d.path().to_path_buf(),
    };
    for p in [cp.rootfs(), cp.upper(), cp.work()] {
        fs_err::create_dir_all(p).unwrap();
    }
    fs_err::write(cp.log(), "out").unwrap();
    fs_err::write(cp.exit(), "0").unwrap();
    let host = RecordingHost::new().with_mount(cp.rootfs());
    let err = remove_container_files(&host, &cp, "s1.main.", false).unwrap_err();
    assert!(err.to_string().contains("mounts still present"), "{err}");
    assert!(cp.upper().exists());

    host.unmount(&cp.rootfs()).unwrap();
    remove_container_files(&host, &cp, "s1.main.", false).unwrap();
    assert!(!cp.bundle().exists() && !cp.upper().exists() && !cp.work().exists());
    assert!(!cp.exit().exists());
    assert!(cp.log().exists(), "the log stays for the next instance");
    remove_container_files(&host, &cp, "s1.main.", true).unwrap();
    assert!(!cp.log().exists());
}

#[test]
fn releasing_a_sandbox_removes_the_netns_then_unmounts_volumes_innermost_first() {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths {
        dir: d.path().join("s1"),
    };
    let netns = d.path().join("netns/s1");
    let host = RecordingHost::new();
    host.create_netns(&netns).unwrap();
    host.mount_tmpfs(&paths.volume("a"), 1).unwrap();
    host.mount_tmpfs(&paths.volume("b"), 1).unwrap();
    let before = host.calls().len();
    assert!(release_pod(&host, &netns, &paths).is_empty());
    assert_eq!(
        host.calls()[before..],
        [
            HostCall::RemoveNetns(netns.clone()),
            HostCall::Unmount(paths.volume("b")),
            HostCall::Unmount(paths.volume("a")),
        ]
    );
    assert!(!netns.exists());
    assert!(host.mounted().is_empty());
}

#[test]
fn the_sandbox_directory_outlives_any_leftover_mount() {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths {
        dir: d.path().join("s1"),
    };
    fs_err::create_dir_all(paths.etc()).unwrap();
    let host = RecordingHost::new().with_mount(paths.dir.join("bundle/rootfs"));
    let err = remove_sandbox_dir(&host, "s1", &paths).unwrap_err();
    assert!(
        err.to_string().contains("sandbox s1: mounts still present"),
        "{err}"
    );
    assert!(paths.dir.exists());
    host.unmount(&paths.dir.join("bundle/rootfs")).unwrap();
    remove_sandbox_dir(&host, "s1", &paths).unwrap();
    assert!(!paths.dir.exists());
    // Gone already: nothing to do.
    remove_sandbox_dir(&host, "s1", &paths).unwrap();
}

#[test]
fn an_unrecorded_sandbox_is_unmounted_and_removed() {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths {
        dir: d.path().join("s1"),
    };
    fs_err::create_dir_all(paths.dir.join("bundle/rootfs")).unwrap();
    let netns = d.path().join("netns/s1");
    let host = RecordingHost::new()
        .with_mount(paths.dir.join("bundle/rootfs"))
        .with_mount(paths.volume("v"));
    clean_unrecorded(&host, &paths, &netns).unwrap();
    assert_eq!(
        host.calls(),
        [
            HostCall::Unmount(paths.volume("v")),
            HostCall::Unmount(paths.dir.join("bundle/rootfs")),
            HostCall::RemoveNetns(netns),
        ]
    );
    assert!(!paths.dir.exists());
}

#[test]
fn an_unrecorded_sandbox_whose_unmount_fails_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let paths = Paths {
        dir: d.path().join("s1"),
    };
    fs_err::create_dir_all(&paths.dir).unwrap();
    let host = RecordingHost::new().with_mount(paths.volume("v"));
    host.fail("unmount");
    assert!(clean_unrecorded(&host, &paths, &d.path().join("ns")).is_err());
    assert!(paths.dir.exists());
    assert_eq!(host.ops(), ["unmount"]);
}
