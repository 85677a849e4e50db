//! sandboxd for any image: the kit (the node's own executable, which is also sandboxd, and the
//! shared libraries and loader it runs with, copied into one directory), and what a container
//! whose Pod asks for it gets: the kit mounted read-only at [`MOUNT`] and its process wrapped
//! as `sandboxd [flags] -- <its command>` (started through the kit's own loader, so the image
//! needs no libc of its own). A Pod asks with the annotation [`ANNOTATION`] (`"true"` for its
//! first container, or a container's name), usually set in a SandboxTemplate's
//! `podTemplate.metadata.annotations`; [`ARGS_ANNOTATION`] adds sandboxd flags. The keys are not
//! under `agents.x-k8s.io/`: the Sandbox controller never copies that system prefix from a
//! pod template to its Pod.

use std::path::{Path, PathBuf};

/// The Pod annotation that asks for sandboxd: `"true"` (the first container) or a container
/// name.
pub const ANNOTATION: &str = "agent-sandbox/sandboxd";

/// Extra sandboxd flags, separated by spaces (for example `--rest-port 8081 --no-legacy`).
pub const ARGS_ANNOTATION: &str = "agent-sandbox/sandboxd-args";

/// Where the kit appears in the container.
pub const MOUNT: &str = "/.agent-sandbox";

/// The kit's file that names its loader (empty for a static executable).
const LOADER_FILE: &str = "loader";

/// Copy the running executable and the shared objects it has mapped (its libraries and the
/// dynamic loader, from `/proc/self/maps`) into `dir`: `dir/sandboxd`, `dir/lib/*` and
/// `dir/loader` (the loader's file name). Files are replaced by rename, so sandboxes that
/// mounted an older kit keep running. Returns `dir`.
pub fn prepare(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let lib = dir.join("lib");
    fs_err::create_dir_all(&lib)?;
    for d in [dir, lib.as_path()] {
        fs_err::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let maps = fs_err::read_to_string("/proc/self/maps")?;
    let mut objects: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect();
    objects.sort();
    objects.dedup();
    let mut loader = String::new();
    for o in &objects {
        let Some(name) = o.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("ld-linux")
            || name.starts_with("ld64.so")
            || name.starts_with("ld-musl")
        {
            loader = name.to_string();
        }
        install(o, &lib.join(name), 0o755)?;
    }
    install(Path::new("/proc/self/exe"), &dir.join("sandboxd"), 0o755)?;
    fs_err::write(dir.join(LOADER_FILE), &loader)?;
    Ok(dir.to_path_buf())
}

/// Copy `from` to `to` through a temporary name; skipped when `to` already has the same size
/// and is not older.
fn install(from: &Path, to: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let src = fs_err::metadata(from)?;
    if let Ok(dst) = fs_err::metadata(to)
        && dst.len() == src.len()
        && dst.modified().ok() >= src.modified().ok()
    {
        return Ok(());
    }
    let tmp = to.with_extension("tmp");
    fs_err::copy(from, &tmp)?;
    fs_err::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    fs_err::rename(&tmp, to)
}

/// The argv that runs sandboxd from the kit at `kit` (host path; mounted at [`MOUNT`]), with
/// `flags`, around `workload` (none: sandboxd alone).
pub fn wrap(kit: &Path, flags: &[String], workload: Option<&[String]>) -> Vec<String> {
    let loader = fs_err::read_to_string(kit.join(LOADER_FILE)).unwrap_or_default();
    let loader = loader.trim();
    let mut argv = Vec::new();
    if !loader.is_empty() {
        argv.push(format!("{MOUNT}/lib/{loader}"));
        argv.push("--library-path".into());
        argv.push(format!("{MOUNT}/lib"));
    }
    argv.push(format!("{MOUNT}/sandboxd"));
    argv.extend(flags.iter().cloned());
    if let Some(w) = workload {
        argv.push("--".into());
        argv.extend(w.iter().cloned());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kit_holds_the_executable_its_libraries_and_loader() {
        let tmp = tempfile::tempdir().unwrap();
        let kit = prepare(&tmp.path().join("kit")).unwrap();
        let exe = fs_err::metadata("/proc/self/exe").unwrap().len();
        assert_eq!(fs_err::metadata(kit.join("sandboxd")).unwrap().len(), exe);
        let loader = fs_err::read_to_string(kit.join(LOADER_FILE)).unwrap();
        if !loader.is_empty() {
            assert!(kit.join("lib").join(&loader).is_file());
            assert!(fs_err::read_dir(kit.join("lib")).unwrap().count() >= 2);
        }
        // A second preparation changes nothing.
        let before = fs_err::metadata(kit.join("sandboxd"))
            .unwrap()
            .modified()
            .unwrap();
        prepare(&kit).unwrap();
        let after = fs_err::metadata(kit.join("sandboxd"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        let argv = wrap(
            &kit,
            &["--root-dir".into(), "/".into()],
            Some(&["sleep".into(), "1".into()]),
        );
        assert_eq!(argv.last().map(String::as_str), Some("1"));
        assert!(argv.contains(&format!("{MOUNT}/sandboxd")));
        assert!(argv.contains(&"--".to_string()));
        if !loader.is_empty() {
            assert_eq!(argv[0], format!("{MOUNT}/lib/{loader}"));
        }
    }
}
