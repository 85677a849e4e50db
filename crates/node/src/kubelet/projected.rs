//! The files of `configMap`, `secret`, `downwardAPI` and `projected` volumes: which files a
//! volume holds (resolved from the Pod and its ConfigMaps and Secrets, with kubelet's rules and
//! messages), and writing them into the volume's directory in kubelet's atomic layout
//! (`..data` → a timestamped directory, one symlink per top-level name) so that a change
//! appears inside the sandbox all at once. The node agent rewrites a volume when its sources
//! change; the container sees it read-only.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, Volume};

use crate::refs::{DataKind, NodeFacts, Sources, Use, container_resource, pod_field};

/// Kubernetes' default file mode of these volumes (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// A volume's files: relative path → (content, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Whether the node agent writes this volume's files (one of the four kinds).
pub fn is_projected(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// A relative path inside a volume: no absolute path, no `..` element, not starting with `..`
/// (kubelet's rule; `..` names are its own layout).
fn check_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if p.is_empty()
        || p.starts_with("..")
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "{p:?} must be a relative path without '..' elements, not starting with '..'"
        ));
    }
    Ok(())
}

fn mode_of(m: Option<i32>, default: u32, what: &str) -> Result<u32, String> {
    match m {
        None => Ok(default),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(format!("{what} {m} must be between 0 and 0777 (511)")),
    }
}

/// What a volume takes from one ConfigMap or Secret.
struct DataRef<'a> {
    kind: DataKind,
    name: &'a str,
    items: Option<&'a Vec<KeyToPath>>,
    optional: Option<bool>,
}

/// The files of a ConfigMap or Secret: every key, or only `items` (a missing key is an error
/// unless the source is optional). An absent optional source adds nothing.
fn data_files(
    out: &mut Files,
    sources: &Sources,
    r: DataRef<'_>,
    default_mode: u32,
) -> Result<(), String> {
    let optional = r.optional == Some(true);
    let Some(data) = sources.get(r.kind, r.name, optional)? else {
        return Ok(());
    };
    let Some(items) = r.items.filter(|i| !i.is_empty()) else {
        for (k, v) in data {
            check_path(k)?;
            out.insert(k.clone(), (v.clone(), default_mode));
        }
        return Ok(());
    };
    for item in items {
        let Some(v) = data.get(&item.key) else {
            if optional {
                continue;
            }
            return Err(match r.kind {
                DataKind::ConfigMap => format!(
                    "configmap {:?} references non-existent config key: {}",
                    r.name, item.key
                ),
                DataKind::Secret => format!(
                    "secret {:?} references non-existent secret key: {}",
                    r.name, item.key
                ),
            });
        };
        check_path(&item.path)?;
        let mode = mode_of(item.mode, default_mode, "items mode")?;
        out.insert(item.path.clone(), (v.clone(), mode));
    }
    Ok(())
}

fn downward_files(
    out: &mut Files,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    node: &NodeFacts,
    default_mode: u32,
) -> Result<(), String> {
    for item in items {
        check_path(&item.path)?;
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => pod_field(pod, f, &[], Use::Volume)?,
            (None, Some(r)) => {
                let name = r.container_name.as_deref().ok_or_else(|| {
                    format!(
                        "downwardAPI item {:?}: resourceFieldRef needs containerName",
                        item.path
                    )
                })?;
                container_resource(&pod.spec.clone().unwrap_or_default(), name, r, node)?
            }
            _ => {
                return Err(format!(
                    "downwardAPI item {:?} needs exactly one of fieldRef and resourceFieldRef",
                    item.path
                ));
            }
        };
        let mode = mode_of(item.mode, default_mode, "items mode")?;
        out.insert(item.path.clone(), (value.into_bytes(), mode));
    }
    Ok(())
}

/// The files of volume `v` of `pod`, or kubelet's message for why it cannot be set up.
pub fn files(pod: &Pod, v: &Volume, sources: &Sources, node: &NodeFacts) -> Result<Files, String> {
    let mut out = Files::new();
    let config_map = |name, items, optional| DataRef {
        kind: DataKind::ConfigMap,
        name,
        items,
        optional,
    };
    let secret = |name, items, optional| DataRef {
        kind: DataKind::Secret,
        name,
        items,
        optional,
    };
    if let Some(cm) = &v.config_map {
        let mode = mode_of(cm.default_mode, DEFAULT_MODE, "defaultMode")?;
        let r = config_map(&cm.name, cm.items.as_ref(), cm.optional);
        data_files(&mut out, sources, r, mode)?;
    } else if let Some(s) = &v.secret {
        let mode = mode_of(s.default_mode, DEFAULT_MODE, "defaultMode")?;
        let name = s.secret_name.as_deref().unwrap_or_default();
        data_files(
            &mut out,
            sources,
            secret(name, s.items.as_ref(), s.optional),
            mode,
        )?;
    } else if let Some(d) = &v.downward_api {
        let mode = mode_of(d.default_mode, DEFAULT_MODE, "defaultMode")?;
        let items = d.items.as_deref().unwrap_or_default();
        downward_files(&mut out, pod, items, node, mode)?;
    } else if let Some(p) = &v.projected {
        let mode = mode_of(p.default_mode, DEFAULT_MODE, "defaultMode")?;
        for (i, src) in p.sources.iter().flatten().enumerate() {
            if let Some(cm) = &src.config_map {
                let r = config_map(&cm.name, cm.items.as_ref(), cm.optional);
                data_files(&mut out, sources, r, mode)?;
            } else if let Some(s) = &src.secret {
                let r = secret(&s.name, s.items.as_ref(), s.optional);
                data_files(&mut out, sources, r, mode)?;
            } else if let Some(d) = &src.downward_api {
                let items = d.items.as_deref().unwrap_or_default();
                downward_files(&mut out, pod, items, node, mode)?;
            } else {
                return Err(format!(
                    "projected source {i}: only configMap, secret and downwardAPI sources are supported on the embedded node (it issues no service account tokens or certificates)"
                ));
            }
        }
    }
    Ok(out)
}

/// The files the volume directory `dir` shows now (through `..data`), to compare.
fn current(dir: &Path) -> Option<Files> {
    let data = dir.join("..data");
    let target = fs_err::read_link(&data).ok()?;
    let mut out = Files::new();
    let mut stack = vec![dir.join(target)];
    let root = stack[0].clone();
    while let Some(d) = stack.pop() {
        for e in fs_err::read_dir(&d).ok()? {
            let e = e.ok()?;
            let path = e.path();
            let meta = fs_err::symlink_metadata(&path).ok()?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(&root)
                    .ok()?
                    .to_string_lossy()
                    .into_owned();
                let content = fs_err::read(&path).ok()?;
                out.insert(rel, (content, meta.permissions().mode() & 0o777));
            }
        }
    }
    Some(out)
}

/// Make `dir` show `files`, all at once: a new timestamped directory, `..data` swapped to it
/// with a rename, top-level symlinks added or removed, the old directory deleted. Returns
/// whether anything changed (nothing is written when the files are the same).
pub fn write(dir: &Path, files: &Files) -> std::io::Result<bool> {
    if current(dir).as_ref() == Some(files) {
        return Ok(false);
    }
    // The engine makes the directory with the sandbox; writing into a missing one would
    // leave files behind for a sandbox being removed.
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("volume directory {} does not exist", dir.display()),
        ));
    }
    let old = fs_err::read_link(dir.join("..data")).ok();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!("..{stamp}");
    let new = dir.join(&name);
    fs_err::create_dir(&new)?;
    fs_err::set_permissions(&new, std::fs::Permissions::from_mode(0o755))?;
    for (rel, (content, mode)) in files {
        let path = new.join(rel);
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        fs_err::write(&path, content)?;
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs_err::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    fs_err::rename(&tmp, dir.join("..data"))?;
    let tops: std::collections::BTreeSet<&str> =
        files.keys().filter_map(|p| p.split('/').next()).collect();
    for top in &tops {
        let link = dir.join(top);
        if fs_err::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    for e in fs_err::read_dir(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("..") && !tops.contains(n.as_str()) {
            fs_err::remove_file(e.path())?;
        }
    }
    if let Some(old) = old
        && old.as_os_str() != name.as_str()
    {
        let _ = fs_err::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn files_of(f: &[(&str, &str, u32)]) -> Files {
        f.iter()
            .map(|(p, c, m)| (p.to_string(), (c.as_bytes().to_vec(), *m)))
            .collect()
    }

    #[test]
    fn atomic_layout_and_updates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        assert!(write(&dir, &Files::new()).is_err());
        fs_err::create_dir(&dir).unwrap();
        let one = files_of(&[("a", "1", 0o644), ("sub/b", "2", 0o400)]);
        assert!(write(&dir, &one).unwrap());
        assert_eq!(fs_err::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(fs_err::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            fs_err::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let mode = fs_err::metadata(dir.join("sub/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        // The same files: nothing written.
        assert!(!write(&dir, &one).unwrap());
        // A change: new content, a removed name, one timestamped directory left.
        let two = files_of(&[("a", "changed", 0o644), ("c", "3", 0o644)]);
        assert!(write(&dir, &two).unwrap());
        assert_eq!(fs_err::read_to_string(dir.join("a")).unwrap(), "changed");
        assert!(fs_err::symlink_metadata(dir.join("sub")).is_err());
        let stamped: Vec<_> = fs_err::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != "..data")
            .collect();
        assert_eq!(stamped.len(), 1, "{stamped:?}");
        assert_eq!(current(&dir).unwrap(), two);
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"memory": "32Mi"}}}]}
        }))
        .unwrap()
    }

    fn sources() -> Sources {
        let mut s = Sources::new("ns");
        s.insert(
            DataKind::ConfigMap,
            "cfg",
            Some(
                [
                    ("k".to_string(), b"v".to_vec()),
                    ("other".into(), b"o".to_vec()),
                ]
                .into(),
            ),
        );
        s.insert(
            DataKind::Secret,
            "sec",
            Some([("t".to_string(), b"x".to_vec())].into()),
        );
        s
    }

    fn node() -> NodeFacts {
        NodeFacts {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ephemeral_storage_bytes: 1 << 40,
        }
    }

    fn volume(v: serde_json::Value) -> Volume {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn volume_files_follow_kubelet() {
        let p = pod();
        let f = |v: serde_json::Value| files(&p, &volume(v), &sources(), &node());
        let all = f(json!({"name": "v", "configMap": {"name": "cfg"}})).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["k", "other"]);
        let picked = f(json!({"name": "v", "configMap": {"name": "cfg", "defaultMode": 0o600,
            "items": [{"key": "k", "path": "dir/key.txt"}, {"key": "other", "path": "o", "mode": 0o400}]}}))
        .unwrap();
        assert_eq!(picked["dir/key.txt"], (b"v".to_vec(), 0o600));
        assert_eq!(picked["o"].1, 0o400);
        assert_eq!(
            f(json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}}))
                .unwrap_err(),
            "configmap \"cfg\" references non-existent config key: zz"
        );
        assert_eq!(
            f(json!({"name": "v", "secret": {"secretName": "nope"}})).unwrap_err(),
            "secret \"nope\" not found"
        );
        assert!(
            f(json!({"name": "v", "secret": {"secretName": "nope", "optional": true}}))
                .unwrap()
                .is_empty()
        );
        assert!(f(json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "k", "path": "../x"}]}})).is_err());
        let down = f(json!({"name": "v", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}}))
        .unwrap();
        assert_eq!(down["labels"].0, b"app=\"web\"");
        assert_eq!(down["mem"].0, b"32");
        let proj = f(json!({"name": "v", "projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "k", "path": "k"}]}},
            {"secret": {"name": "sec"}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}))
        .unwrap();
        assert_eq!(proj.keys().collect::<Vec<_>>(), ["k", "name", "t"]);
        assert!(proj.values().all(|(_, m)| *m == 0o440));
        let err = f(json!({"name": "v", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}))
        .unwrap_err();
        assert!(err.contains("service account tokens"), "{err}");
    }
}
