//! The node's own sandbox spec: the subset of a Pod that decides how one sandbox and its
//! containers are built, and its derivation from a k8s-openapi `Pod` (every behaviour-changing
//! field the node does not implement is refused with the field named, never ignored: see
//! [`crate::audit`]). Probes, restart policy and status belong to the Pod loop that drives the
//! engine ([`crate::agent`]), not to this spec.

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

    /// Derive a spec from a Pod: every container and init container, the Pod-level settings
    /// the node honours; any other behaviour-changing field is refused with its path. The id
    /// is the Pod's uid when set, else `namespace-name`.
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
        if spec.containers.is_empty() {
            return Err(unsupported(
                "spec.containers",
                "a Pod needs at least one container",
            ));
        }
        if let Some(field) = crate::audit::unsupported_pod_field(spec) {
            return Err(unsupported(&field.0, &field.1));
        }
        let declared: BTreeMap<&str, &k8s_openapi::api::core::v1::Volume> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        let mut host_ports = Vec::new();
        let mut convert = |c: &Container, field: String, sidecar: bool| -> Result<ContainerSpec> {
            for (i, p) in c.ports.iter().flatten().enumerate() {
                if let Some(hp) = p.host_port.filter(|h| *h != 0) {
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                    if proto != "tcp" && proto != "udp" {
                        return Err(unsupported(
                            &format!("{field}.ports[{i}].protocol"),
                            "hostPort supports TCP and UDP",
                        ));
                    }
                    let ok = |v: i32| u16::try_from(v).ok().filter(|v| *v != 0);
                    let (Some(hp), Some(cp)) = (ok(hp), ok(p.container_port)) else {
                        return Err(NodeError::InvalidSpec {
                            sandbox: who.clone(),
                            field: format!("{field}.ports[{i}]"),
                            reason: "hostPort and containerPort must be 1-65535".into(),
                        });
                    };
                    host_ports.push(HostPort {
                        host_port: hp,
                        container_port: cp,
                        protocol: proto,
                        host_ip: p.host_ip.clone().unwrap_or_default(),
                    });
                }
            }
            container_from(c, &field, sidecar, spec, &declared, &who)
        };
        let mut containers = Vec::new();
        for (i, c) in spec.containers.iter().enumerate() {
            containers.push(convert(c, format!("spec.containers[{i}]"), false)?);
        }
        let mut init_containers = Vec::new();
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let field = format!("spec.initContainers[{i}]");
            let sidecar = match c.restart_policy.as_deref() {
                None => false,
                Some("Always") => true,
                Some(other) => {
                    return Err(NodeError::InvalidSpec {
                        sandbox: who.clone(),
                        field: format!("{field}.restartPolicy"),
                        reason: format!("{other:?}: only Always is valid for an init container"),
                    });
                }
            };
            init_containers.push(convert(c, field, sidecar)?);
        }
        if let Some(wanted) = annotation(pod, crate::sandboxd_kit::ANNOTATION) {
            let target = if wanted == "true" {
                containers.first_mut()
            } else {
                containers
                    .iter_mut()
                    .chain(init_containers.iter_mut().filter(|c| c.sidecar))
                    .find(|c| c.name == wanted)
            };
            let Some(target) = target else {
                return Err(NodeError::InvalidSpec {
                    sandbox: who.clone(),
                    field: format!("metadata.annotations[{}]", crate::sandboxd_kit::ANNOTATION),
                    reason: format!(
                        "{wanted:?} is neither \"true\" (the first container) nor the name of a container or sidecar"
                    ),
                });
            };
            target.sandboxd = Some(
                annotation(pod, crate::sandboxd_kit::ARGS_ANNOTATION)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
            );
        }
        let main = containers.remove(0);

        let dns = dns_from(spec, &who)?;
        let mut host_aliases = Vec::new();
        for (i, a) in spec.host_aliases.iter().flatten().enumerate() {
            let names: Vec<String> = a.hostnames.clone().unwrap_or_default();
            let ok = a.ip.parse::<std::net::IpAddr>().is_ok()
                && names.iter().all(|n| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                });
            if !ok {
                return Err(NodeError::InvalidSpec {
                    sandbox: who.clone(),
                    field: format!("spec.hostAliases[{i}]"),
                    reason: "needs an IP address and DNS names".into(),
                });
            }
            host_aliases.push((a.ip.clone(), names));
        }
        let sysctls = spec
            .security_context
            .iter()
            .flat_map(|p| p.sysctls.iter().flatten())
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect();
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
            hostname: spec.hostname.clone().or(Some(name)),
            main,
            containers,
            init_containers,
            dns,
            host_ports,
            host_aliases,
            sysctls,
            termination_grace: Duration::from_secs(
                spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64,
            ),
        };
        s.validate()?;
        Ok(s)
    }
}

/// The value of the Pod's annotation `key`.
fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

/// `/etc/resolv.conf` settings from `dnsPolicy` and `dnsConfig`. There is no cluster DNS on
/// the embedded node: `ClusterFirst` and `ClusterFirstWithHostNet` behave as `Default` (the
/// host's resolvers, loopback ones dropped).
fn dns_from(spec: &PodSpec, who: &str) -> Result<Option<DnsSpec>> {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cfg = spec.dns_config.as_ref();
    let ignore_host = match policy {
        "None" => true,
        "Default" | "ClusterFirst" | "ClusterFirstWithHostNet" => false,
        other => {
            return Err(NodeError::InvalidSpec {
                sandbox: who.into(),
                field: "spec.dnsPolicy".into(),
                reason: format!("{other:?} is not a DNS policy"),
            });
        }
    };
    if ignore_host && cfg.is_none_or(|c| c.nameservers.as_ref().is_none_or(|n| n.is_empty())) {
        return Err(NodeError::InvalidSpec {
            sandbox: who.into(),
            field: "spec.dnsConfig.nameservers".into(),
            reason: "dnsPolicy None needs at least one nameserver".into(),
        });
    }
    let mut dns = DnsSpec {
        ignore_host,
        ..DnsSpec::default()
    };
    if let Some(c) = cfg {
        for ns in c.nameservers.iter().flatten() {
            if ns.parse::<std::net::IpAddr>().is_err() {
                return Err(NodeError::InvalidSpec {
                    sandbox: who.into(),
                    field: "spec.dnsConfig.nameservers".into(),
                    reason: format!("{ns:?} is not an IP address"),
                });
            }
            dns.nameservers.push(ns.clone());
        }
        let clean = |s: &str| s.chars().all(|c| !c.is_whitespace() && !c.is_control());
        for s in c.searches.iter().flatten() {
            if !clean(s) {
                return Err(NodeError::InvalidSpec {
                    sandbox: who.into(),
                    field: "spec.dnsConfig.searches".into(),
                    reason: format!("{s:?} is not a domain"),
                });
            }
            dns.searches.push(s.clone());
        }
        for o in c.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            let text = match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            };
            if !clean(&text) {
                return Err(NodeError::InvalidSpec {
                    sandbox: who.into(),
                    field: "spec.dnsConfig.options".into(),
                    reason: format!("{text:?} is not a resolver option"),
                });
            }
            dns.options.push(text);
        }
    }
    Ok(Some(dns))
}

fn container_from(
    c: &Container,
    field: &str,
    sidecar: bool,
    spec: &PodSpec,
    declared: &BTreeMap<&str, &k8s_openapi::api::core::v1::Volume>,
    who: &str,
) -> Result<ContainerSpec> {
    let unsupported = |f: &str, reason: &str| NodeError::Unsupported {
        sandbox: who.to_string(),
        field: f.into(),
        reason: reason.into(),
    };
    let cf = |f: &str| format!("{field}.{f}");
    if let Some((f, reason)) = crate::audit::unsupported_container_field(c) {
        return Err(unsupported(&cf(&f), &reason));
    }
    let image = c
        .image
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unsupported(&cf("image"), "an image is required"))?;
    let pull_policy = PullPolicy::for_image(&image, c.image_pull_policy.as_deref());

    // The literal entries; `valueFrom`, `envFrom` and `$(VAR)` in command and args are
    // resolved by the node agent each time it creates the container (crate::env).
    let env = crate::env::literal(c);

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
    let run_as_non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(psc.and_then(|p| p.run_as_non_root));
    if run_as_non_root == Some(true)
        && sc
            .and_then(|s| s.run_as_user)
            .or(psc.and_then(|p| p.run_as_user))
            == Some(0)
    {
        return Err(NodeError::InvalidSpec {
            sandbox: who.to_string(),
            field: cf("securityContext.runAsNonRoot"),
            reason: "runAsNonRoot is true but runAsUser is 0".into(),
        });
    }
    let to_u32 = |v: Option<i64>, f: &str| -> Result<Option<u32>> {
        v.map(|x| {
            u32::try_from(x).map_err(|_| NodeError::InvalidSpec {
                sandbox: who.to_string(),
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
        run_as_non_root: run_as_non_root == Some(true),
        supplemental_groups: psc
            .iter()
            .flat_map(|p| {
                p.supplemental_groups
                    .iter()
                    .flatten()
                    .chain(p.fs_group.iter())
            })
            .filter_map(|g| u32::try_from(*g).ok())
            .collect(),
    };

    let mut resources = Resources::default();
    if let Some(r) = &c.resources {
        let lim = r.limits.as_ref();
        let req = r.requests.as_ref();
        if let Some(q) = lim.and_then(|l| l.get("memory")) {
            resources.memory_limit =
                Some(
                    parse_quantity_bytes(&q.0).ok_or_else(|| NodeError::InvalidSpec {
                        sandbox: who.to_string(),
                        field: cf("resources.limits.memory"),
                        reason: format!("{:?} is not a quantity", q.0),
                    })?,
                );
        }
        if let Some(q) = lim.and_then(|l| l.get("cpu")) {
            resources.cpu_limit_millis =
                Some(
                    parse_quantity_millis(&q.0).ok_or_else(|| NodeError::InvalidSpec {
                        sandbox: who.to_string(),
                        field: cf("resources.limits.cpu"),
                        reason: format!("{:?} is not a quantity", q.0),
                    })?,
                );
        }
        if let Some(q) = req.and_then(|l| l.get("cpu")) {
            resources.cpu_request_millis = parse_quantity_millis(&q.0);
        }
    }

    let mut volumes = Vec::new();
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
        if m.recursive_read_only
            .as_deref()
            .is_some_and(|p| p != "Disabled")
        {
            return Err(unsupported(
                &mf("recursiveReadOnly"),
                "recursive read-only mounts are not supported",
            ));
        }
        let v = declared
            .get(m.name.as_str())
            .ok_or_else(|| NodeError::InvalidSpec {
                sandbox: who.to_string(),
                field: mf("name"),
                reason: format!("no volume named {:?} in spec.volumes", m.name),
            })?;
        let source = if let Some(e) = &v.empty_dir {
            if e.medium.as_deref().is_some_and(|m| !m.is_empty()) {
                return Err(unsupported(
                    &format!("spec.volumes[{}].emptyDir.medium", m.name),
                    "only the default medium (the node's disk) is supported",
                ));
            }
            VolumeSource::EmptyDir
        } else if let Some(p) = &v.persistent_volume_claim {
            VolumeSource::Pvc {
                claim: p.claim_name.clone(),
            }
        } else if let Some(h) = &v.host_path {
            VolumeSource::HostPath {
                path: h.path.clone(),
            }
        } else if crate::projected::is_projected(v) {
            if let Some(field) = unsupported_projection(v) {
                return Err(unsupported(
                    &format!("spec.volumes[{}].projected.{field}", m.name),
                    "the embedded node issues no service account tokens or certificates; use configMap, secret and downwardAPI sources",
                ));
            }
            VolumeSource::Projected
        } else {
            return Err(unsupported(
                &format!("spec.volumes[{}]", m.name),
                "only emptyDir, persistentVolumeClaim, hostPath, configMap, secret, downwardAPI and projected volumes are supported",
            ));
        };
        volumes.push(VolumeSpec {
            name: m.name.clone(),
            source,
            mount_path: m.mount_path.clone(),
            read_only: m.read_only == Some(true)
                || crate::projected::is_projected(v)
                || v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|p| p.read_only == Some(true)),
        });
    }

    Ok(ContainerSpec {
        name: c.name.clone(),
        field: field.to_string(),
        image,
        pull_policy,
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        working_dir: c.working_dir.clone(),
        security,
        resources,
        volumes,
        sidecar,
        termination_message_path: Some(
            c.termination_message_path
                .clone()
                .filter(|p| p.starts_with('/') && !p.split('/').any(|x| x == ".."))
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        sandboxd: None,
    })
}

/// The first source of a projected volume the node cannot provide.
fn unsupported_projection(v: &k8s_openapi::api::core::v1::Volume) -> Option<&'static str> {
    v.projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
        .find_map(|s| {
            if s.service_account_token.is_some() {
                Some("sources[].serviceAccountToken")
            } else if s.cluster_trust_bundle.is_some() {
                Some("sources[].clusterTrustBundle")
            } else if s.config_map.is_none() && s.secret.is_none() && s.downward_api.is_none() {
                Some("sources[]")
            } else {
                None
            }
        })
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
    fn the_sandboxd_annotation_picks_a_container() {
        let pod = |value: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "annotations": {
                    crate::sandboxd_kit::ANNOTATION: value,
                    crate::sandboxd_kit::ARGS_ANNOTATION: "--no-legacy  --rest-port 8081"}},
                "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}]}
            }))
            .unwrap()
        };
        let s = SandboxSpec::from_pod(&pod("true")).unwrap();
        assert_eq!(
            s.main.sandboxd.as_deref(),
            Some(
                &[
                    "--no-legacy".to_string(),
                    "--rest-port".into(),
                    "8081".into()
                ][..]
            )
        );
        assert!(s.containers[0].sandboxd.is_none());
        let s = SandboxSpec::from_pod(&pod("b")).unwrap();
        assert!(s.main.sandboxd.is_none() && s.containers[0].sandboxd.is_some());
        let err = SandboxSpec::from_pod(&pod("c")).unwrap_err().to_string();
        assert!(err.contains(crate::sandboxd_kit::ANNOTATION), "{err}");
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
        assert_eq!(s.main.resources.memory_limit, Some(64 << 20));
        assert_eq!(s.main.resources.cpu_limit_millis, Some(500));
        assert_eq!(s.main.security.run_as_user, Some(1000));
        assert!(s.main.security.read_only_root);
        assert_eq!(s.main.name, "c");
        assert_eq!(
            s.main.volumes[0].source,
            VolumeSource::Pvc {
                claim: "data".into()
            }
        );
    }
}
