//! The audit of Pod fields against what the embedded node implements. Every field of
//! `PodSpec`, `Container`, `SecurityContext` and `PodSecurityContext` (core/v1, 1.36) falls in
//! one of four classes:
//! - implemented (see [`crate::spec`], [`crate::bundle`] and [`crate::agent`]);
//! - refused: honouring it is impossible or would weaken isolation, and ignoring it would
//!   change what the Pod does — the Pod does not start and its status names the field
//!   ([`unsupported_pod_field`], [`unsupported_container_field`]);
//! - accepted but not honoured, with a Pod condition [`IGNORED_FIELDS_CONDITION`] naming each
//!   such field and why ([`ignored_fields`]);
//! - not applicable on one node (scheduling: `nodeSelector`, `affinity`, `tolerations`,
//!   `topologySpreadConstraints`, `schedulerName`, `priority*`, `preemptionPolicy`,
//!   `schedulingGates`, `schedulingGroup`, `overhead`; in-place resize: `resizePolicy`; Windows options;
//!   `enableServiceLinks`, as the node has no Services): accepted silently, listed in the docs.

use k8s_openapi::api::core::v1::{Container, PodSpec, SeccompProfile};

/// The Pod condition type listing fields the node accepted without honouring them.
pub const IGNORED_FIELDS_CONDITION: &str = "agents.x-k8s.io/IgnoredFields";

/// Namespaced sysctls Kubernetes considers safe; the node sets them through the OCI spec.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

fn seccomp_refused(p: Option<&SeccompProfile>, field: &str) -> Option<(String, String)> {
    match p.map(|p| p.type_.as_str()) {
        None | Some("RuntimeDefault") => None,
        Some("Unconfined") => Some((
            field.into(),
            "every sandbox runs under the node's seccomp profile; use RuntimeDefault or remove the field".into(),
        )),
        Some(other) => Some((
            field.into(),
            format!("seccomp profile type {other} is not supported; use RuntimeDefault"),
        )),
    }
}

/// The first Pod-level field the node refuses, with the reason (what to do instead).
pub fn unsupported_pod_field(spec: &PodSpec) -> Option<(String, String)> {
    let r = |f: &str, why: &str| Some((f.to_string(), why.to_string()));
    for (flag, field) in [
        (spec.host_network, "spec.hostNetwork"),
        (spec.host_pid, "spec.hostPID"),
        (spec.host_ipc, "spec.hostIPC"),
    ] {
        if flag == Some(true) {
            return r(
                field,
                "sandboxes never share host namespaces; remove the field",
            );
        }
    }
    if spec.host_users == Some(false) {
        return r(
            "spec.hostUsers",
            "user-namespaced Pods are not supported by the embedded node; remove the field",
        );
    }
    if spec.hostname_override.is_some() {
        return r(
            "spec.hostnameOverride",
            "the sandbox's hostname comes from spec.hostname or the Pod name; use spec.hostname",
        );
    }
    if spec.share_process_namespace == Some(true) {
        return r(
            "spec.shareProcessNamespace",
            "the containers of a sandbox have separate process namespaces; remove the field",
        );
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return r(
            "spec.ephemeralContainers",
            "ephemeral containers are not supported",
        );
    }
    if spec.resource_claims.as_ref().is_some_and(|v| !v.is_empty()) {
        return r(
            "spec.resourceClaims",
            "dynamic resource allocation is not supported on the embedded node",
        );
    }
    if spec
        .resources
        .as_ref()
        .is_some_and(|r| r.limits.as_ref().is_some_and(|l| !l.is_empty()))
    {
        return r(
            "spec.resources",
            "Pod-level limits are not supported; set limits on each container",
        );
    }
    if let Some(os) = &spec.os
        && os.name != "linux"
    {
        return r(
            "spec.os.name",
            "the embedded node runs Linux sandboxes only",
        );
    }
    if spec
        .restart_policy
        .as_deref()
        .is_some_and(|p| !matches!(p, "Always" | "OnFailure" | "Never"))
    {
        return r("spec.restartPolicy", "must be Always, OnFailure or Never");
    }
    if let Some(psc) = &spec.security_context {
        for (i, s) in psc.sysctls.iter().flatten().enumerate() {
            if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                return Some((
                    format!("spec.securityContext.sysctls[{i}]"),
                    format!(
                        "sysctl {} is not in the safe set the node allows ({})",
                        s.name,
                        SAFE_SYSCTLS.join(", ")
                    ),
                ));
            }
        }
        if let Some(x) = seccomp_refused(
            psc.seccomp_profile.as_ref(),
            "spec.securityContext.seccompProfile",
        ) {
            return Some(x);
        }
        if psc
            .app_armor_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Localhost")
        {
            return r(
                "spec.securityContext.appArmorProfile",
                "the host has no AppArmor; remove the field",
            );
        }
    }
    None
}

/// The first field of a container the node refuses, relative to the container
/// (`securityContext.procMount`), with the reason.
pub fn unsupported_container_field(c: &Container) -> Option<(String, String)> {
    let r = |f: &str, why: &str| Some((f.to_string(), why.to_string()));
    if c.restart_policy_rules
        .as_ref()
        .is_some_and(|v| !v.is_empty())
    {
        return r(
            "restartPolicyRules",
            "per-exit-code restart rules are not supported; use the Pod's restartPolicy",
        );
    }
    if c.volume_devices.as_ref().is_some_and(|v| !v.is_empty()) {
        return r("volumeDevices", "raw block devices are not supported");
    }
    if let Some(sc) = &c.security_context {
        if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
            return r(
                "securityContext.procMount",
                "every sandbox gets the masked /proc; remove the field",
            );
        }
        if let Some(x) = seccomp_refused(
            sc.seccomp_profile.as_ref(),
            "securityContext.seccompProfile",
        ) {
            return Some(x);
        }
        if sc
            .app_armor_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Localhost")
        {
            return r(
                "securityContext.appArmorProfile",
                "the host has no AppArmor; remove the field",
            );
        }
    }
    if let Some(res) = &c.resources {
        for (k, _) in res
            .limits
            .iter()
            .flatten()
            .chain(res.requests.iter().flatten())
        {
            let known = matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage");
            if !known {
                return Some((
                    "resources".into(),
                    format!(
                        "resource {k} cannot be provided: the node has no device plugins or huge pages"
                    ),
                ));
            }
        }
        if res.claims.as_ref().is_some_and(|c| !c.is_empty()) {
            return r(
                "resources.claims",
                "dynamic resource allocation is not supported",
            );
        }
    }
    None
}

/// Fields the node accepts without honouring, as `(field, why)`.
pub fn ignored_fields(spec: &PodSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut note = |f: String, why: &str| out.push((f, why.to_string()));
    if spec.automount_service_account_token != Some(false) {
        note(
            "spec.automountServiceAccountToken".into(),
            "service account tokens are not mounted into sandboxes",
        );
    }
    if spec.set_hostname_as_fqdn == Some(true) {
        note(
            "spec.setHostnameAsFQDN".into(),
            "there is no cluster domain; the hostname stays the short name",
        );
    }
    if spec.subdomain.is_some() {
        note(
            "spec.subdomain".into(),
            "there is no cluster DNS to publish the name in",
        );
    }
    if let Some(psc) = &spec.security_context {
        if psc.fs_group.is_some() {
            note(
                "spec.securityContext.fsGroup".into(),
                "volume ownership is not changed; the group is added to the processes' supplementary groups",
            );
        }
        if psc.se_linux_options.is_some() {
            note(
                "spec.securityContext.seLinuxOptions".into(),
                "the host has no SELinux",
            );
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.containers[{i}]"), c)),
        );
    for (field, c) in containers {
        if c.stdin == Some(true) || c.tty == Some(true) {
            note(
                format!("{field}.stdin/tty"),
                "the node does not attach a terminal or stdin; the process gets /dev/null",
            );
        }
        if c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|l| l.contains_key("ephemeral-storage"))
        {
            note(
                format!("{field}.resources.limits.ephemeral-storage"),
                "writable layers and emptyDirs are not size-limited",
            );
        }
        if c.security_context
            .as_ref()
            .is_some_and(|s| s.se_linux_options.is_some())
        {
            note(
                format!("{field}.securityContext.seLinuxOptions"),
                "the host has no SELinux",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_of_newer_kubernetes_the_node_cannot_honour_are_refused() {
        let spec: PodSpec = serde_json::from_value(json!({"hostnameOverride": "h",
            "containers": [{"name": "c", "image": "img:1"}]}))
        .unwrap();
        assert_eq!(
            unsupported_pod_field(&spec).unwrap().0,
            "spec.hostnameOverride"
        );
        let c: Container = serde_json::from_value(json!({"name": "c", "image": "img:1",
            "restartPolicyRules": [{"action": "Restart",
                "exitCodes": {"operator": "In", "values": [42]}}]}))
        .unwrap();
        assert_eq!(
            unsupported_container_field(&c).unwrap().0,
            "restartPolicyRules"
        );
        let spec: PodSpec = serde_json::from_value(json!({"schedulingGroup": {},
            "containers": [{"name": "c", "image": "img:1"}]}))
        .unwrap();
        assert_eq!(unsupported_pod_field(&spec), None);
    }
}
