//! The derivation of a [`SandboxSpec`] from a Pod: every field the node honours, and the
//! refusal (with the field's path) of any other behaviour-changing field.

use super::*;

impl SandboxSpec {
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
            restore_from: None,
            restore_replaces_volumes: false,
            runtime_monitoring: None,
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
