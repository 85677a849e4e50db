//! The node's own sandbox spec: the subset of a Pod that decides how one sandbox is built, and
//! its derivation from a k8s-openapi `Pod` (every behaviour-changing field the node does not
//! implement is refused with the field named, never ignored). Probes, ports and status belong to
//! the Pod loop that drives the engine, not to this spec.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result};

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PullPolicy {
    /// Always resolve the tag against the registry (blobs already cached are not downloaded).
    Always,
    /// Pull only when the image is not in the local store.
    #[default]
    IfNotPresent,
    /// Never pull; fail if absent.
    Never,
}

impl PullPolicy {
    /// Kubernetes defaulting: `Always` for `:latest` or untagged images, else `IfNotPresent`.
    pub fn for_image(image: &str, explicit: Option<&str>) -> Self {
        match explicit {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let name = image.rsplit('/').next().unwrap_or(image);
                if image.contains('@') {
                    PullPolicy::IfNotPresent
                } else if !name.contains(':') || name.ends_with(":latest") {
                    PullPolicy::Always
                } else {
                    PullPolicy::IfNotPresent
                }
            }
        }
    }
}

/// Where a volume's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// Scratch directory deleted with the sandbox.
    EmptyDir,
    /// A durable directory per claim name that outlives the sandbox.
    Pvc {
        /// `persistentVolumeClaim.claimName`.
        claim: String,
    },
    /// A host directory (refused unless the node allows it).
    HostPath {
        /// Host path.
        path: String,
    },
}

/// A volume mounted into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Volume name.
    pub name: String,
    /// Source.
    pub source: VolumeSource,
    /// Absolute path in the container.
    pub mount_path: String,
    /// Read-only mount.
    pub read_only: bool,
}

/// Resource limits applied through cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (cpu shares).
    pub cpu_request_millis: Option<i64>,
    /// Maximum number of processes (node default when unset).
    pub pids_limit: Option<i64>,
}

/// Security settings of the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecuritySpec {
    /// `runAsUser`.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`.
    pub run_as_group: Option<u32>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// Capabilities to add (names without `CAP_`).
    pub caps_add: Vec<String>,
    /// Capabilities to drop (`ALL` allowed).
    pub caps_drop: Vec<String>,
    /// `privileged` (always refused).
    pub privileged: bool,
}

/// Everything needed to build one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Unique id on this node: `[a-z0-9][a-z0-9-]{0,62}`.
    pub id: String,
    /// Pod namespace (for messages and PVC directories).
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `runtimeClassName` resolved to a handler name, or `None` for the default handler.
    pub handler: Option<String>,
    /// Image reference.
    pub image: String,
    /// Pull policy.
    pub pull_policy: PullPolicy,
    /// Overrides the image entrypoint.
    pub command: Option<Vec<String>>,
    /// Overrides the image cmd.
    pub args: Option<Vec<String>>,
    /// Extra environment (after the image's).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Hostname (defaults to the Pod name).
    pub hostname: Option<String>,
    /// Security settings.
    pub security: SecuritySpec,
    /// Limits.
    pub resources: Resources,
    /// Volumes.
    pub volumes: Vec<VolumeSpec>,
    /// Grace period for stop.
    pub termination_grace: Duration,
}

impl SandboxSpec {
    /// A minimal spec for `image` running its default command.
    pub fn new(id: impl Into<String>, image: impl Into<String>) -> Self {
        let id = id.into();
        SandboxSpec {
            namespace: "default".into(),
            name: id.clone(),
            id,
            handler: None,
            image: image.into(),
            pull_policy: PullPolicy::IfNotPresent,
            command: None,
            args: None,
            env: Vec::new(),
            working_dir: None,
            hostname: None,
            security: SecuritySpec::default(),
            resources: Resources::default(),
            volumes: Vec::new(),
            termination_grace: Duration::from_secs(30),
        }
    }

    /// `namespace/name (id)` for messages.
    pub fn display_name(&self) -> String {
        format!("{}/{} ({})", self.namespace, self.name, self.id)
    }

    /// Check the id and the paths; returns the spec for chaining.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| NodeError::InvalidSpec {
            sandbox: self.display_name(),
            field: field.into(),
            reason,
        };
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 63
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.id.starts_with('-');
        if !id_ok {
            return Err(bad(
                "id",
                format!("{:?} must be 1-63 characters of a-z, 0-9 and '-'", self.id),
            ));
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if !v.mount_path.starts_with('/') || v.mount_path.split('/').any(|c| c == "..") {
                return Err(bad(
                    &format!("volumeMounts[{i}].mountPath"),
                    format!("{:?} must be absolute without '..'", v.mount_path),
                ));
            }
            if let VolumeSource::Pvc { claim } = &v.source
                && (claim.is_empty() || claim.contains('/') || claim.starts_with('.'))
            {
                return Err(bad(
                    &format!("volumes[{i}].persistentVolumeClaim.claimName"),
                    format!("{claim:?} is not a valid claim name"),
                ));
            }
        }
        if let Some(wd) = &self.working_dir
            && !wd.starts_with('/')
        {
            return Err(bad("workingDir", format!("{wd:?} must be absolute")));
        }
        Ok(())
    }

    /// Derive a spec from a Pod's first (only) container. The id is the Pod's uid when set,
    /// else `namespace-name`.
    pub fn from_pod(pod: &Pod) -> Result<Self> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let who = format!("{namespace}/{name}");
        let unsupported = |field: &str, reason: &str| NodeError::Unsupported {
            sandbox: who.clone(),
            field: field.into(),
            reason: reason.into(),
        };
        let spec: &PodSpec = pod
            .spec
            .as_ref()
            .ok_or_else(|| unsupported("spec", "the Pod has no spec"))?;
        if spec.containers.len() != 1 {
            return Err(unsupported(
                "spec.containers",
                "the embedded node runs exactly one container per sandbox Pod",
            ));
        }
        if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(unsupported(
                "spec.initContainers",
                "init containers are not run by the sandbox engine yet",
            ));
        }
        if spec
            .ephemeral_containers
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            return Err(unsupported("spec.ephemeralContainers", "not supported"));
        }
        for (flag, field) in [
            (spec.host_network, "spec.hostNetwork"),
            (spec.host_pid, "spec.hostPID"),
            (spec.host_ipc, "spec.hostIPC"),
        ] {
            if flag == Some(true) {
                return Err(unsupported(
                    field,
                    "sandboxes never share host namespaces; remove the field",
                ));
            }
        }
        if spec.share_process_namespace == Some(true) {
            return Err(unsupported(
                "spec.shareProcessNamespace",
                "one container per sandbox",
            ));
        }
        let c: &Container = &spec.containers[0];
        let cf = |f: &str| format!("spec.containers[0].{f}");
        let image = c
            .image
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unsupported(&cf("image"), "an image is required"))?;
        let pull_policy = PullPolicy::for_image(&image, c.image_pull_policy.as_deref());

        let mut env = Vec::new();
        for (i, e) in c.env.iter().flatten().enumerate() {
            if e.value_from.is_some() {
                return Err(unsupported(
                    &cf(&format!("env[{i}].valueFrom")),
                    "valueFrom (ConfigMap, Secret, field refs) is not supported; use value",
                ));
            }
            env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
        }
        if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(unsupported(
                &cf("envFrom"),
                "ConfigMap and Secret sources are not supported; list env values",
            ));
        }

        let psc = spec.security_context.as_ref();
        let sc = c.security_context.as_ref();
        if sc.and_then(|s| s.privileged) == Some(true) {
            return Err(unsupported(
                &cf("securityContext.privileged"),
                "privileged sandboxes are refused: they would get the host's devices and all capabilities",
            ));
        }
        if sc.and_then(|s| s.allow_privilege_escalation) == Some(true) {
            return Err(unsupported(
                &cf("securityContext.allowPrivilegeEscalation"),
                "every sandbox runs with no_new_privileges; remove the field or set it to false",
            ));
        }
        if psc.is_some_and(|p| p.run_as_non_root == Some(true))
            && sc
                .and_then(|s| s.run_as_user)
                .or(psc.and_then(|p| p.run_as_user))
                == Some(0)
        {
            return Err(NodeError::InvalidSpec {
                sandbox: who.clone(),
                field: "securityContext.runAsNonRoot".into(),
                reason: "runAsNonRoot is true but runAsUser is 0".into(),
            });
        }
        let to_u32 = |v: Option<i64>, f: &str| -> Result<Option<u32>> {
            v.map(|x| {
                u32::try_from(x).map_err(|_| NodeError::InvalidSpec {
                    sandbox: who.clone(),
                    field: cf(f),
                    reason: format!("{x} is not a valid id"),
                })
            })
            .transpose()
        };
        let security = SecuritySpec {
            run_as_user: to_u32(
                sc.and_then(|s| s.run_as_user)
                    .or(psc.and_then(|p| p.run_as_user)),
                "securityContext.runAsUser",
            )?,
            run_as_group: to_u32(
                sc.and_then(|s| s.run_as_group)
                    .or(psc.and_then(|p| p.run_as_group)),
                "securityContext.runAsGroup",
            )?,
            read_only_root: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
            caps_add: sc
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.add.clone())
                .unwrap_or_default(),
            caps_drop: sc
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.drop.clone())
                .unwrap_or_default(),
            privileged: false,
        };

        let mut resources = Resources::default();
        if let Some(r) = &c.resources {
            let lim = r.limits.as_ref();
            let req = r.requests.as_ref();
            if let Some(q) = lim.and_then(|l| l.get("memory")) {
                resources.memory_limit =
                    Some(
                        parse_quantity_bytes(&q.0).ok_or_else(|| NodeError::InvalidSpec {
                            sandbox: who.clone(),
                            field: cf("resources.limits.memory"),
                            reason: format!("{:?} is not a quantity", q.0),
                        })?,
                    );
            }
            if let Some(q) = lim.and_then(|l| l.get("cpu")) {
                resources.cpu_limit_millis = Some(parse_quantity_millis(&q.0).ok_or_else(
                    || NodeError::InvalidSpec {
                        sandbox: who.clone(),
                        field: cf("resources.limits.cpu"),
                        reason: format!("{:?} is not a quantity", q.0),
                    },
                )?);
            }
            if let Some(q) = req.and_then(|l| l.get("cpu")) {
                resources.cpu_request_millis = parse_quantity_millis(&q.0);
            }
        }

        let mut volumes = Vec::new();
        let declared: BTreeMap<&str, &k8s_openapi::api::core::v1::Volume> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
            let mf = |f: &str| cf(&format!("volumeMounts[{i}].{f}"));
            if m.sub_path.is_some() || m.sub_path_expr.is_some() {
                return Err(unsupported(&mf("subPath"), "subPath is not supported"));
            }
            if m.mount_propagation.as_deref().is_some_and(|p| p != "None") {
                return Err(unsupported(
                    &mf("mountPropagation"),
                    "only None propagation is supported",
                ));
            }
            let v = declared
                .get(m.name.as_str())
                .ok_or_else(|| NodeError::InvalidSpec {
                    sandbox: who.clone(),
                    field: mf("name"),
                    reason: format!("no volume named {:?} in spec.volumes", m.name),
                })?;
            let source = if v.empty_dir.is_some() {
                VolumeSource::EmptyDir
            } else if let Some(p) = &v.persistent_volume_claim {
                VolumeSource::Pvc {
                    claim: p.claim_name.clone(),
                }
            } else if let Some(h) = &v.host_path {
                VolumeSource::HostPath {
                    path: h.path.clone(),
                }
            } else {
                return Err(unsupported(
                    &format!("spec.volumes[{}]", m.name),
                    "only emptyDir, persistentVolumeClaim and hostPath volumes are supported",
                ));
            };
            volumes.push(VolumeSpec {
                name: m.name.clone(),
                source,
                mount_path: m.mount_path.clone(),
                read_only: m.read_only == Some(true),
            });
        }

        let id = pod
            .metadata
            .uid
            .clone()
            .map(|u| u.to_ascii_lowercase())
            .unwrap_or_else(|| sanitize_id(&format!("{namespace}-{name}")));
        let s = SandboxSpec {
            id,
            namespace,
            name: name.clone(),
            handler: spec.runtime_class_name.clone(),
            image,
            pull_policy,
            command: c.command.clone(),
            args: c.args.clone(),
            env,
            working_dir: c.working_dir.clone(),
            hostname: spec.hostname.clone().or(Some(name)),
            security,
            resources,
            volumes,
            termination_grace: Duration::from_secs(
                spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64,
            ),
        };
        s.validate()?;
        Ok(s)
    }
}

/// Make a string usable as a sandbox id.
pub fn sanitize_id(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    out.trim_matches('-').to_string()
}

/// Parse a Kubernetes memory quantity (`128Mi`, `1G`, `1e9`, `500`) into bytes.
pub fn parse_quantity_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    let (num, mult): (&str, f64) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("m", 1e-3),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((q, 1.0));
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some((v * mult).ceil() as i64)
}

/// Parse a CPU quantity (`500m`, `2`, `0.5`) into millicores.
pub fn parse_quantity_millis(q: &str) -> Option<i64> {
    let q = q.trim();
    let v = if let Some(m) = q.strip_suffix('m') {
        m.parse::<f64>().ok()?
    } else {
        q.parse::<f64>().ok()? * 1000.0
    };
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some(v.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity_bytes("1e3"), Some(1000));
        assert_eq!(parse_quantity_bytes("x"), None);
        assert_eq!(parse_quantity_millis("500m"), Some(500));
        assert_eq!(parse_quantity_millis("1.5"), Some(1500));
    }

    #[test]
    fn pull_policy_defaults() {
        assert_eq!(PullPolicy::for_image("busybox", None), PullPolicy::Always);
        assert_eq!(
            PullPolicy::for_image("busybox:latest", None),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_image("localhost:5000/b:1", None),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::for_image("localhost:5000/b", None),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_image("b:1", Some("Never")),
            PullPolicy::Never
        );
    }

    #[test]
    fn pod_conversion_refuses_privileged_and_names_field() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "image": "img:1",
                "securityContext": {"privileged": true}}]}
        }))
        .unwrap();
        let err = SandboxSpec::from_pod(&pod).unwrap_err().to_string();
        assert!(err.contains("securityContext.privileged"), "{err}");
        assert!(err.contains("ns/p"), "{err}");
    }

    #[test]
    fn pod_conversion_maps_fields() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "ABC-1"},
            "spec": {"runtimeClassName": "gvisor",
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                "containers": [{"name": "c", "image": "img:1", "command": ["/bin/sh"],
                "env": [{"name": "A", "value": "1"}],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                "volumeMounts": [{"name": "d", "mountPath": "/data"}],
                "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true}}]}
        }))
        .unwrap();
        let s = SandboxSpec::from_pod(&pod).unwrap();
        assert_eq!(s.id, "abc-1");
        assert_eq!(s.handler.as_deref(), Some("gvisor"));
        assert_eq!(s.resources.memory_limit, Some(64 << 20));
        assert_eq!(s.resources.cpu_limit_millis, Some(500));
        assert_eq!(s.security.run_as_user, Some(1000));
        assert!(s.security.read_only_root);
        assert_eq!(
            s.volumes[0].source,
            VolumeSource::Pvc {
                claim: "data".into()
            }
        );
    }
}
