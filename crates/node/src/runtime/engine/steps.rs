//! The host effects of the engine's steps, as functions of a [`Host`]: volume directories,
//! a container's rootfs, and the order in which teardown and recovery undo mounts, network
//! namespaces and cgroups. The engine calls these with its host; the tests below call them
//! with a [`crate::host::RecordingHost`] and check the sequence of effects, without root.

use super::*;

/// The size limit of the memory-backed filesystem of one `configMap`, `secret`, `downwardAPI`
/// or `projected` volume: room for a few objects at the API's 1 MiB limit, twice over while an
/// update is written beside the previous files.
pub(super) const PROJECTED_VOLUME_BYTES: u64 = 16 << 20;

/// Make the host directory of each volume of `spec` (`dir_of` says where it lives): a
/// directory for emptyDir and PVC volumes, a memory-backed filesystem for projected ones
/// (ConfigMap, Secret and downward API files live in memory only, as kubelet keeps secret and
/// projected volumes; each container mounting the volume shares the one filesystem). A
/// hostPath must exist.
pub(super) fn make_volumes(
    host: &dyn Host,
    spec: &SandboxSpec,
    dir_of: impl Fn(&VolumeSpec) -> PathBuf,
) -> Result<()> {
    for c in spec.all_containers() {
        for v in &c.volumes {
            let host_dir = dir_of(v);
            if !matches!(v.source, VolumeSource::HostPath { .. }) {
                fs_err::create_dir_all(&host_dir)?;
                if v.source == VolumeSource::Projected && !host.is_mounted(&host_dir) {
                    host.mount_tmpfs(&host_dir, PROJECTED_VOLUME_BYTES)?;
                }
            } else if !host_dir.exists() {
                return Err(NodeError::InvalidSpec {
                    sandbox: spec.display_name(),
                    field: format!("spec.volumes[{}].hostPath", v.name),
                    reason: format!("hostPath {} does not exist", host_dir.display()),
                });
            }
        }
    }
    Ok(())
}

/// Mount a container's rootfs: the image's layers under its own upper and work directories.
pub(super) fn mount_rootfs(host: &dyn Host, lowers: &[PathBuf], cp: &CPaths) -> Result<()> {
    host.mount_overlay(lowers, &cp.upper(), &cp.work(), &cp.rootfs())
}

/// The host part of undoing a container once the runtime deleted it: unmount its rootfs, then
/// remove its cgroup. Both are tried; the errors come back in order.
pub(super) fn release_container(host: &dyn Host, cp: &CPaths, cgroup: &str) -> Vec<NodeError> {
    [host.unmount(&cp.rootfs()), host.remove_cgroup(cgroup)]
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Remove a released container's files: its bundle, writable layer, pid and exit files (with
/// `all`, its logs too). Refused while anything is still mounted under its bundle.
pub(super) fn remove_container_files(
    host: &dyn Host,
    cp: &CPaths,
    runtime_id: &str,
    all: bool,
) -> Result<()> {
    // One read of the mount table: its cost grows with the host's mounts.
    if !host.mounts_under(&cp.bundle()).is_empty() {
        return Err(NodeError::Config(format!(
            "container {runtime_id}: mounts still present under {}",
            cp.bundle().display()
        )));
    }
    for d in [cp.bundle(), cp.upper(), cp.work()] {
        match fs_err::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    for f in [cp.pid(), cp.exit(), cp.exit_tmp(), cp.termination_log()] {
        let _ = fs_err::remove_file(f);
    }
    if all {
        let _ = fs_err::remove_file(cp.log());
        let _ = fs_err::remove_file(cp.previous_log());
    }
    Ok(())
}

/// The host part of undoing a sandbox once its containers and network are gone: remove its
/// network namespace, then unmount its memory-backed volumes (innermost first). All are
/// tried; the errors come back in order.
pub(super) fn release_pod(host: &dyn Host, netns: &Path, paths: &Paths) -> Vec<NodeError> {
    let mut errors = Vec::new();
    errors.extend(host.remove_netns(netns).err());
    for m in host.mounts_under(&paths.dir.join("volumes")).iter().rev() {
        errors.extend(host.unmount(m).err());
    }
    errors
}

/// Delete a released sandbox's directory, unless something is still mounted under it.
pub(super) fn remove_sandbox_dir(host: &dyn Host, id: &str, paths: &Paths) -> Result<()> {
    if paths.dir.exists() {
        let leftover = host.mounts_under(&paths.dir);
        if !leftover.is_empty() {
            return Err(NodeError::Config(format!(
                "sandbox {id}: mounts still present under {}: {leftover:?}",
                paths.dir.display()
            )));
        }
        fs_err::remove_dir_all(&paths.dir)?;
    }
    Ok(())
}

/// A sandbox directory without a record (a create that never got far): unmount what is
/// mounted under it (innermost first), remove its network namespace, and delete it once
/// nothing is mounted there.
pub(super) fn clean_unrecorded(host: &dyn Host, paths: &Paths, netns: &Path) -> Result<()> {
    for m in host.mounts_under(&paths.dir).iter().rev() {
        host.unmount(m)?;
    }
    host.remove_netns(netns)?;
    if host.mounts_under(&paths.dir).is_empty() {
        fs_err::remove_dir_all(&paths.dir)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "steps_tests.rs"]
mod tests;
