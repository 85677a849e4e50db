//! OCI bundle construction: the security baseline, the command, user, environment, limits and
//! volumes of one sandbox, as an `oci_spec::runtime::Spec` written to `config.json`.
//!
//! Steps, in order: resolve the command (Pod command/args over image entrypoint/cmd) and check
//! that argv\[0\] exists in the rootfs → resolve the user (runAsUser/Group, else the image's
//! `User`, names looked up in the image's `/etc/passwd`) → environment (image, then Pod) →
//! capabilities (OCI default set, then drop, then add) → mounts (proc, dev, sysfs read-only,
//! `/etc/hosts`, `/etc/hostname`, volumes) → namespaces (pid, ipc, uts, mount, the sandbox's
//! network namespace, cgroup) → cgroup v1 limits → masked and read-only paths → seccomp.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use crate::error::{NodeError, Result};
use crate::image::Image;
use crate::runtime::HandlerKind;
use crate::spec::{ContainerSpec, SandboxSpec, VolumeSpec};

/// The OCI default capability set (what Docker and containerd grant, and Kubernetes with them).
/// The node grants it less `CAP_NET_RAW` unless told otherwise ([`CapabilityDefaults`]).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The capabilities a container has before its `securityContext.capabilities`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CapabilityDefaults {
    /// [`DEFAULT_CAPS`] without `CAP_NET_RAW`: raw and packet sockets would let a sandbox forge
    /// ARP and ICMP on the bridge it shares with other sandboxes. A Pod that needs them (ping,
    /// traceroute) adds `NET_RAW`.
    #[default]
    Hardened,
    /// [`DEFAULT_CAPS`] as they are: what containerd and Docker grant under Kubernetes.
    Kubernetes,
}

impl CapabilityDefaults {
    /// The capability names granted before a container's drop and add lists.
    pub fn base(self) -> impl Iterator<Item = &'static str> {
        DEFAULT_CAPS
            .iter()
            .copied()
            .filter(move |c| self == Self::Kubernetes || *c != "CAP_NET_RAW")
    }
}

/// Paths under /proc and /sys hidden from every sandbox.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in every sandbox.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Host threads of the gVisor sentry and gofer, added to the pids limit under runsc.
pub const RUNSC_PIDS_HEADROOM: i64 = 256;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the bundle needs besides the spec and image.
pub struct BundleInputs<'a> {
    /// The sandbox.
    pub spec: &'a SandboxSpec,
    /// The container this bundle runs.
    pub container: &'a ContainerSpec,
    /// Its image.
    pub image: &'a Image,
    /// The mounted rootfs (to look up users and the command).
    pub rootfs: &'a Path,
    /// Handler that will run it.
    pub handler: HandlerKind,
    /// Network namespace to join.
    pub netns: &'a Path,
    /// cgroup path relative to each hierarchy root.
    pub cgroup_path: &'a str,
    /// Volumes with their host directories.
    pub volumes: &'a [(VolumeSpec, PathBuf)],
    /// Host file for `/etc/hosts`.
    pub hosts_file: &'a Path,
    /// Host file for `/etc/hostname`.
    pub hostname_file: &'a Path,
    /// Host file for `/etc/resolv.conf`, if the node manages it.
    pub resolv_file: Option<&'a Path>,
    /// Host file mounted at the container's termination message path.
    pub termination_log: Option<&'a Path>,
    /// pids limit when the spec has none.
    pub default_pids_limit: i64,
    /// The node's sandboxd kit, for containers that ask for sandboxd ([`crate::sandboxd_kit`]).
    pub sandboxd_kit: Option<&'a Path>,
    /// The capabilities granted before the container's own list.
    pub capability_defaults: CapabilityDefaults,
}

/// Resolve `path` inside `root` like the kernel would after `chroot(root)`: symlinks (absolute
/// or relative) never leave `root`. Returns the host path (which may not exist).
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(&cur).join(&c);
        match fs_err::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && hops < 40 => {
                hops += 1;
                let target = fs_err::read_link(&candidate)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if target.starts_with('/') {
                    cur = PathBuf::new();
                }
                for t in target.split('/').filter(|s| !s.is_empty()).rev() {
                    pending.push(t.to_string());
                }
            }
            _ => cur.push(&c),
        }
    }
    let mut out = root.to_path_buf();
    for comp in cur.components() {
        if let Component::Normal(p) = comp {
            out.push(p);
        }
    }
    out
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The argv per Kubernetes rules: `command` replaces the entrypoint, `args` the cmd.
pub fn resolve_argv(spec: &SandboxSpec, c: &ContainerSpec, image: &Image) -> Result<Vec<String>> {
    let cfg = &image.config;
    let argv: Vec<String> = match (&c.command, &c.args) {
        (Some(c), a) => c.iter().chain(a.iter().flatten()).cloned().collect(),
        (None, Some(a)) => cfg
            .entrypoint
            .iter()
            .flatten()
            .chain(a.iter())
            .cloned()
            .collect(),
        (None, None) => cfg
            .entrypoint
            .iter()
            .flatten()
            .chain(cfg.cmd.iter().flatten())
            .cloned()
            .collect(),
    };
    if argv.is_empty() {
        return Err(NodeError::InvalidSpec {
            sandbox: spec.display_name(),
            field: c.field("command"),
            reason: format!(
                "neither the container nor image {} defines a command",
                image.reference
            ),
        });
    }
    Ok(argv)
}

/// The environment: image `Env`, then the spec's (overriding by name), PATH and HOSTNAME ensured.
pub fn resolve_env(c: &ContainerSpec, image: &Image, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if let Some(e) = env.iter_mut().find(|(n, _)| n == k) {
            e.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    set("PATH", DEFAULT_PATH);
    set("HOSTNAME", hostname);
    for e in image.config.env.iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &c.env {
        set(k, v);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Check that argv\[0\] exists in the rootfs (searching PATH for bare names).
pub fn check_command(
    spec: &SandboxSpec,
    c: &ContainerSpec,
    image: &Image,
    rootfs: &Path,
    argv0: &str,
    env: &[String],
) -> Result<()> {
    let path_env = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let found = if argv0.contains('/') {
        let p = if argv0.starts_with('/') {
            argv0.to_string()
        } else {
            format!("{}/{argv0}", c.working_dir.as_deref().unwrap_or("/"))
        };
        is_executable_file(&resolve_in_root(rootfs, &p))
    } else {
        path_env
            .split(':')
            .filter(|d| d.starts_with('/'))
            .any(|d| is_executable_file(&resolve_in_root(rootfs, &format!("{d}/{argv0}"))))
    };
    if found {
        Ok(())
    } else {
        Err(NodeError::CommandNotFound {
            sandbox: spec.display_name(),
            command: argv0.to_string(),
            image: image.reference.clone(),
            path: path_env,
        })
    }
}

fn lookup_id(rootfs: &Path, file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    let data = fs_err::read_to_string(resolve_in_root(rootfs, file)).ok()?;
    data.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() >= 3).then(|| {
            (
                f[2].parse().ok().unwrap_or(u32::MAX),
                f.get(3).and_then(|g| g.parse().ok()),
            )
        })
    })
}

/// Resolve the process uid/gid.
pub fn resolve_user(
    spec: &SandboxSpec,
    c: &ContainerSpec,
    image: &Image,
    rootfs: &Path,
) -> Result<(u32, u32)> {
    let bad = |reason: String| NodeError::InvalidSpec {
        sandbox: spec.display_name(),
        field: "image config User".into(),
        reason,
    };
    let (mut uid, mut gid) = (0u32, None::<u32>);
    if let Some(u) = image.config.user.as_deref().filter(|u| !u.is_empty()) {
        let (user, group) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        if let Ok(n) = user.parse::<u32>() {
            uid = n;
        } else {
            let (u2, g2) = lookup_id(rootfs, "/etc/passwd", user).ok_or_else(|| {
                bad(format!(
                    "user {user:?} of image {} is not in its /etc/passwd",
                    image.reference
                ))
            })?;
            uid = u2;
            gid = g2;
        }
        if let Some(g) = group {
            gid = Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    lookup_id(rootfs, "/etc/group", g)
                        .ok_or_else(|| bad(format!("group {g:?} is not in /etc/group")))?
                        .0
                }
            });
        }
    }
    if let Some(u) = c.security.run_as_user {
        uid = u;
        if gid.is_none() {
            gid = Some(u);
        }
    }
    if let Some(g) = c.security.run_as_group {
        gid = Some(g);
    }
    if c.security.run_as_non_root && uid == 0 {
        return Err(NodeError::InvalidSpec {
            sandbox: spec.display_name(),
            field: c.field("securityContext.runAsNonRoot"),
            reason: format!(
                "runAsNonRoot is set but image {} runs as root; set runAsUser or use a non-root image",
                image.reference
            ),
        });
    }
    Ok((uid, gid.unwrap_or(if uid == 0 { 0 } else { uid })))
}

/// The effective capability set: `defaults`, then the container's drop and add lists.
pub fn capabilities(
    spec: &SandboxSpec,
    c: &ContainerSpec,
    defaults: CapabilityDefaults,
) -> Result<Vec<String>> {
    let norm = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let mut caps: Vec<String> = defaults.base().map(str::to_owned).collect();
    for d in &c.security.caps_drop {
        if d.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else {
            let d = norm(d);
            caps.retain(|c| *c != d);
        }
    }
    for a in &c.security.caps_add {
        if a.eq_ignore_ascii_case("ALL") {
            return Err(NodeError::Unsupported {
                sandbox: spec.display_name(),
                field: c.field("securityContext.capabilities.add"),
                reason: "adding ALL capabilities is refused; list the ones needed".into(),
            });
        }
        let a = norm(a);
        // NET_ADMIN would let the sandbox rewrite its own interface and routes; the node's
        // NetworkPolicy and anti-spoofing rules stay on the host side, but refuse it anyway.
        if matches!(
            a.as_str(),
            "CAP_SYS_ADMIN"
                | "CAP_SYS_MODULE"
                | "CAP_SYS_RAWIO"
                | "CAP_SYS_BOOT"
                | "CAP_SYS_TIME"
                | "CAP_MAC_ADMIN"
                | "CAP_MAC_OVERRIDE"
                | "CAP_BPF"
                | "CAP_PERFMON"
                | "CAP_NET_ADMIN"
                | "CAP_DAC_READ_SEARCH"
                | "CAP_SYSLOG"
        ) {
            return Err(NodeError::Unsupported {
                sandbox: spec.display_name(),
                field: c.field("securityContext.capabilities.add"),
                reason: format!("{a} would let the sandbox escape; it is refused"),
            });
        }
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    Ok(caps)
}

/// Build the OCI runtime spec.
pub fn build(inp: &BundleInputs<'_>) -> Result<Spec> {
    let spec = inp.spec;
    let c = inp.container;
    let hostname = spec.hostname.clone().unwrap_or_else(|| spec.name.clone());
    let env = resolve_env(c, inp.image, &hostname);
    let workload = match resolve_argv(spec, c, inp.image) {
        Ok(argv) => {
            check_command(spec, c, inp.image, inp.rootfs, &argv[0], &env)?;
            Some(argv)
        }
        // Under sandboxd a container needs no command of its own.
        Err(_) if c.sandboxd.is_some() => None,
        Err(e) => return Err(e),
    };
    let (uid, gid) = resolve_user(spec, c, inp.image, inp.rootfs)?;
    let caps = capabilities(spec, c, inp.capability_defaults)?;
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| {
            inp.image
                .config
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/".into());

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/etc/hosts", "type": "bind", "source": inp.hosts_file,
               "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec", "ro"]}),
        json!({"destination": "/etc/hostname", "type": "bind", "source": inp.hostname_file,
               "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec", "ro"]}),
    ];
    if let Some(r) = inp.resolv_file {
        mounts.push(
            json!({"destination": "/etc/resolv.conf", "type": "bind", "source": r,
               "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec", "ro"]}),
        );
    }
    if let (Some(host), Some(path)) = (inp.termination_log, c.termination_message_path.as_deref()) {
        mounts.push(json!({"destination": path, "type": "bind", "source": host,
               "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"]}));
    }
    let argv = match (&c.sandboxd, inp.sandboxd_kit) {
        (None, _) => workload.unwrap_or_default(),
        (Some(extra), Some(kit)) => {
            mounts.push(
                json!({"destination": crate::sandboxd_kit::MOUNT, "type": "bind",
                "source": kit, "options": ["rbind", "rprivate", "nosuid", "nodev", "ro"]}),
            );
            let mut flags = vec![
                "--root-dir".to_string(),
                "/".into(),
                "--work-dir".into(),
                cwd.clone(),
            ];
            flags.extend(extra.iter().cloned());
            crate::sandboxd_kit::wrap(kit, &flags, workload.as_deref())
        }
        (Some(_), None) => {
            return Err(NodeError::Unsupported {
                sandbox: spec.display_name(),
                field: format!("metadata.annotations[{}]", crate::sandboxd_kit::ANNOTATION),
                reason: "this node has no sandboxd kit to run the container under; use an image with sandboxd in it".into(),
            });
        }
    };
    for (v, host) in inp.volumes {
        let mut opts = vec!["rbind", "rprivate", "nosuid", "nodev"];
        opts.push(if v.read_only { "ro" } else { "rw" });
        mounts.push(
            json!({"destination": v.mount_path, "type": "bind", "source": host,
                           "options": opts}),
        );
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "network", "path": inp.netns}),
    ];
    if inp.handler != HandlerKind::Runsc {
        namespaces.push(json!({"type": "cgroup"}));
    }

    let mut resources = serde_json::Map::new();
    let mut devices = vec![json!({"allow": false, "access": "rwm"})];
    for (t, maj, min) in [
        ("c", 1, Some(3)),
        ("c", 1, Some(5)),
        ("c", 1, Some(7)),
        ("c", 1, Some(8)),
        ("c", 1, Some(9)),
        ("c", 5, Some(0)),
        ("c", 5, Some(1)),
        ("c", 5, Some(2)),
        ("c", 136, None),
    ] {
        let mut d = json!({"allow": true, "type": t, "major": maj, "access": "rwm"});
        if let Some(m) = min {
            d["minor"] = json!(m);
        }
        devices.push(d);
    }
    resources.insert("devices".into(), Value::Array(devices));
    if let Some(m) = c.resources.memory_limit {
        resources.insert("memory".into(), json!({"limit": m, "swap": m}));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(l) = c.resources.cpu_limit_millis {
        let period: i64 = 100_000;
        cpu.insert("quota".into(), json!((l * period / 1000).max(1000)));
        cpu.insert("period".into(), json!(period));
    }
    if let Some(r) = c.resources.cpu_request_millis {
        cpu.insert("shares".into(), json!((r * 1024 / 1000).max(2)));
    }
    if !cpu.is_empty() {
        resources.insert("cpu".into(), Value::Object(cpu));
    }
    let mut pids = c.resources.pids_limit.unwrap_or(inp.default_pids_limit);
    if inp.handler == HandlerKind::Runsc {
        // The sentry and gofer are Go programs with their own host threads in the cgroup.
        pids += RUNSC_PIDS_HEADROOM;
    }
    resources.insert("pids".into(), json!({ "limit": pids }));

    let doc = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": c.security.supplemental_groups},
            "args": argv,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": []
            },
            "noNewPrivileges": true,
            "oomScoreAdj": 500
        },
        "root": {"path": "rootfs", "readonly": c.security.read_only_root},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": {
            "io.agent-sandbox.id": spec.id,
            "io.kubernetes.pod.namespace": spec.namespace,
            "io.kubernetes.pod.name": spec.name,
            "io.kubernetes.container.name": c.name,
        },
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": inp.cgroup_path,
            "resources": Value::Object(resources),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "rootfsPropagation": "rprivate",
            "sysctl": spec.sysctls.iter().cloned().collect::<std::collections::BTreeMap<String, String>>(),
        }
    });
    let mut oci: Spec = serde_json::from_value(doc)
        .map_err(|e| NodeError::json(format!("OCI spec of sandbox {}", spec.id), e))?;
    if let Some(linux) = oci.linux_mut() {
        linux.set_seccomp(Some(crate::seccomp::profile_for(inp.handler)));
    }
    Ok(oci)
}

/// Write `config.json` into the bundle directory.
pub fn write(spec: &Spec, bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    let data = serde_json::to_vec(spec).map_err(|e| NodeError::json(&path, e))?;
    fs_err::write(&path, data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_root_never_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs_err::create_dir_all(root.join("bin")).unwrap();
        fs_err::write(root.join("bin/busybox"), b"x").unwrap();
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("bin/up")).unwrap();
        assert_eq!(resolve_in_root(root, "/bin/sh"), root.join("bin/busybox"));
        assert_eq!(
            resolve_in_root(root, "/bin/up/passwd"),
            root.join("etc/passwd")
        );
        assert_eq!(resolve_in_root(root, "/../../x"), root.join("x"));
    }

    #[test]
    fn net_raw_only_on_request_unless_kubernetes_defaults() {
        let mut s = SandboxSpec::new("a", "img");
        let has_raw = |s: &SandboxSpec, d| {
            capabilities(s, &s.main, d)
                .unwrap()
                .contains(&"CAP_NET_RAW".to_string())
        };
        assert!(!has_raw(&s, CapabilityDefaults::Hardened));
        assert!(has_raw(&s, CapabilityDefaults::Kubernetes));
        assert_eq!(
            capabilities(&s, &s.main, CapabilityDefaults::Hardened)
                .unwrap()
                .len(),
            DEFAULT_CAPS.len() - 1,
            "only NET_RAW goes"
        );
        s.main.security.caps_add = vec!["NET_RAW".into()];
        assert!(has_raw(&s, CapabilityDefaults::Hardened));
    }

    #[test]
    fn caps_drop_all_then_add() {
        let mut s = SandboxSpec::new("a", "img");
        s.main.security.caps_drop = vec!["ALL".into()];
        s.main.security.caps_add = vec!["net_bind_service".into()];
        assert_eq!(
            capabilities(&s, &s.main, CapabilityDefaults::Kubernetes).unwrap(),
            vec!["CAP_NET_BIND_SERVICE"]
        );
        s.main.security.caps_add = vec!["SYS_ADMIN".into()];
        assert!(capabilities(&s, &s.main, CapabilityDefaults::Kubernetes).is_err());
        s.main.security.caps_add = vec!["NET_ADMIN".into()];
        assert!(capabilities(&s, &s.main, CapabilityDefaults::Kubernetes).is_err());
    }
}
