//! The node's own sandbox spec: the subset of a Pod that decides how one sandbox and its
//! containers are built, and its derivation from a k8s-openapi `Pod` (every behaviour-changing
//! field the node does not implement is refused with the field named, never ignored: see
//! [`crate::audit`]). Probes, restart policy and status belong to the Pod loop that drives the
//! engine ([`crate::agent`]), not to this spec.
//!
//! `mod.rs` holds the spec's types and checks; `from_pod.rs` the derivation from a Pod.

mod from_pod;

use std::collections::BTreeMap;
use std::path::PathBuf;
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
    /// A `configMap`, `secret`, `downwardAPI` or `projected` volume: a directory in the
    /// sandbox whose files the node agent writes (see [`crate::projected`]); always read-only.
    Projected,
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
    /// `runAsNonRoot`: refuse to run as uid 0 (also when the image's user is root).
    #[serde(default)]
    pub run_as_non_root: bool,
    /// `supplementalGroups` (and `fsGroup`) of the Pod.
    #[serde(default)]
    pub supplemental_groups: Vec<u32>,
}

/// `dnsPolicy`/`dnsConfig` resolved to what `/etc/resolv.conf` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSpec {
    /// `dnsPolicy: None` ignores the host's resolver configuration.
    pub ignore_host: bool,
    /// Extra nameservers (after the host's, if any).
    pub nameservers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Options (`ndots:2`, `edns0`).
    pub options: Vec<String>,
}

/// A `hostPort` mapping (done with the CNI `portmap` plugin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Host address to bind (empty: all).
    pub host_ip: String,
}

fn default_container_name() -> String {
    "main".into()
}

/// One container of a sandbox: its image, process, limits and mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name (a DNS label; `main` unless the Pod names it).
    #[serde(rename = "container_name", default = "default_container_name")]
    pub name: String,
    /// Field path of the container in the Pod, for messages (`spec.containers[0]`).
    #[serde(default)]
    pub field: String,
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
    /// Security settings.
    pub security: SecuritySpec,
    /// Limits.
    pub resources: Resources,
    /// Volumes mounted into this container (same-named emptyDirs are shared by the sandbox's
    /// containers).
    pub volumes: Vec<VolumeSpec>,
    /// An init container with `restartPolicy: Always` (a native sidecar).
    #[serde(default)]
    pub sidecar: bool,
    /// Where the process may write its termination message (`terminationMessagePath`);
    /// `None` for sandboxes not made from a Pod.
    #[serde(default)]
    pub termination_message_path: Option<String>,
    /// Run the process under sandboxd from the node's kit, with these extra sandboxd flags
    /// (see [`crate::sandboxd_kit`]); `None`: as it is.
    #[serde(default)]
    pub sandboxd: Option<Vec<String>>,
}

impl ContainerSpec {
    /// A container named `name` running `image`'s default command.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ContainerSpec {
            name: name.into(),
            field: String::new(),
            image: image.into(),
            pull_policy: PullPolicy::IfNotPresent,
            command: None,
            args: None,
            env: Vec::new(),
            working_dir: None,
            security: SecuritySpec::default(),
            resources: Resources::default(),
            volumes: Vec::new(),
            sidecar: false,
            termination_message_path: None,
            sandboxd: None,
        }
    }

    /// The field path for messages: `spec.containers[0].<f>`.
    pub fn field(&self, f: &str) -> String {
        let base = if self.field.is_empty() {
            "spec.containers[0]"
        } else {
            self.field.as_str()
        };
        if f.is_empty() {
            base.to_string()
        } else {
            format!("{base}.{f}")
        }
    }
}

/// Everything needed to build one sandbox: the Pod-level settings and its containers. The
/// first regular container (`main`) is flattened into the record for compatibility with
/// single-container sandboxes.
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
    /// Hostname (defaults to the Pod name).
    pub hostname: Option<String>,
    /// The first regular container.
    #[serde(flatten)]
    pub main: ContainerSpec,
    /// The other regular containers, in Pod order.
    #[serde(default)]
    pub containers: Vec<ContainerSpec>,
    /// Init containers, in order (sidecars among them); run by the node agent.
    #[serde(default)]
    pub init_containers: Vec<ContainerSpec>,
    /// `/etc/resolv.conf` contents; `None` keeps the image's.
    #[serde(default)]
    pub dns: Option<DnsSpec>,
    /// `hostPort` mappings of all containers.
    #[serde(default)]
    pub host_ports: Vec<HostPort>,
    /// `hostAliases`: extra `/etc/hosts` lines (address, names).
    #[serde(default)]
    pub host_aliases: Vec<(String, Vec<String>)>,
    /// Namespaced sysctls (`securityContext.sysctls`, safe set only).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Grace period for stop.
    pub termination_grace: Duration,
    /// A snapshot directory whose writable layers and volume data the sandbox starts from (the
    /// node resolves `agent-sandbox-rs.github.io/restore-from` to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
    /// With `restore_from`: replace the data of volumes that already hold some (a rollback,
    /// `agent-sandbox-rs.github.io/restore-volumes: Replace`); otherwise only empty volumes are
    /// filled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore_replaces_volumes: bool,
    /// gVisor runtime monitoring: where the sandbox's trace events go (runsc only; the node
    /// resolves `agent-sandbox-rs.github.io/runtime-monitoring` or its default to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_monitoring: Option<crate::monitor::RuntimeMonitoring>,
}

impl SandboxSpec {
    /// A minimal spec for `image` running its default command in one container named `main`.
    pub fn new(id: impl Into<String>, image: impl Into<String>) -> Self {
        let id = id.into();
        SandboxSpec {
            namespace: "default".into(),
            name: id.clone(),
            id,
            handler: None,
            hostname: None,
            main: ContainerSpec::new("main", image),
            containers: Vec::new(),
            init_containers: Vec::new(),
            dns: None,
            host_ports: Vec::new(),
            host_aliases: Vec::new(),
            sysctls: Vec::new(),
            restore_from: None,
            restore_replaces_volumes: false,
            runtime_monitoring: None,
            termination_grace: Duration::from_secs(30),
        }
    }

    /// `namespace/name (id)` for messages.
    pub fn display_name(&self) -> String {
        format!("{}/{} ({})", self.namespace, self.name, self.id)
    }

    /// The regular containers: `main`, then the others.
    pub fn regular(&self) -> impl Iterator<Item = &ContainerSpec> {
        std::iter::once(&self.main).chain(self.containers.iter())
    }

    /// Every container: init containers first, then the regular ones.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerSpec> {
        self.init_containers.iter().chain(self.regular())
    }

    /// The container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.all_containers().find(|c| c.name == name)
    }

    /// The container named `name`, to change.
    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerSpec> {
        std::iter::once(&mut self.main)
            .chain(self.containers.iter_mut())
            .chain(self.init_containers.iter_mut())
            .find(|c| c.name == name)
    }

    /// Check the id, the container names and the paths.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| NodeError::InvalidSpec {
            sandbox: self.display_name(),
            field: field.into(),
            reason,
        };
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
        };
        if !label_ok(&self.id) {
            return Err(bad(
                "id",
                format!("{:?} must be 1-63 characters of a-z, 0-9 and '-'", self.id),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for c in self.all_containers() {
            if !label_ok(&c.name) {
                return Err(bad(
                    &c.field("name"),
                    format!("{:?} must be 1-63 characters of a-z, 0-9 and '-'", c.name),
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(bad(
                    &c.field("name"),
                    format!("{:?} is used by two containers", c.name),
                ));
            }
            for (i, v) in c.volumes.iter().enumerate() {
                if !v.mount_path.starts_with('/') || v.mount_path.split('/').any(|c| c == "..") {
                    return Err(bad(
                        &c.field(&format!("volumeMounts[{i}].mountPath")),
                        format!("{:?} must be absolute without '..'", v.mount_path),
                    ));
                }
                if v.name.is_empty() || v.name.contains('/') || v.name.starts_with('.') {
                    return Err(bad(
                        &c.field(&format!("volumeMounts[{i}].name")),
                        format!("{:?} is not a valid volume name", v.name),
                    ));
                }
                if let VolumeSource::Pvc { claim } = &v.source
                    && (claim.is_empty() || claim.contains('/') || claim.starts_with('.'))
                {
                    return Err(bad(
                        &format!("spec.volumes[{}].persistentVolumeClaim.claimName", v.name),
                        format!("{claim:?} is not a valid claim name"),
                    ));
                }
            }
            if let Some(wd) = &c.working_dir
                && !wd.starts_with('/')
            {
                return Err(bad(
                    &c.field("workingDir"),
                    format!("{wd:?} must be absolute"),
                ));
            }
        }
        Ok(())
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
#[path = "spec_tests.rs"]
mod tests;
