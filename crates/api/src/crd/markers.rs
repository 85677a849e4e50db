//! The validation markers of the Kubernetes API types that our CRDs embed (`+listType`,
//! `+listMapKey`, `+mapType`/`+structType`, `+default`, `+optional`, the bounds of
//! `metav1.Condition`, and the int-or-string and Quantity forms), as one table, and applying
//! them to a generated schema.
//!
//! k8s-openapi's schemas carry neither the markers of the Go types nor their defaults;
//! controller-gen reads them from the Go source and writes them into upstream's CRDs. The table
//! restates them per type and field, one line per rule, so that our CRDs validate, default and
//! merge exactly as upstream's do.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Value, json};

use super::typed::{self, Site, Typed};

/// What a rule adds to (or changes in) a node.
#[derive(Clone, Copy, Debug)]
enum Mark {
    /// `+listType=atomic`: the list is replaced whole on merge.
    ListAtomic,
    /// `+listType=set`: scalar items, each at most once.
    ListSet,
    /// `+listType=map` with these `+listMapKey`s: items are unique by the keys.
    ListMap(&'static [&'static str]),
    /// `+mapType=atomic` (on a map field) or `+structType=atomic` (on a type).
    MapAtomic,
    /// `+default="…"`.
    DefaultStr(&'static str),
    /// `+default=true|false`.
    DefaultBool(bool),
    /// `+optional` on a field the generated schema lists as required (the Go field is a plain
    /// string that defaults to `""`); applies to the owning type's `required`.
    Optional,
    /// `+kubebuilder:validation:Pattern`.
    Pattern(&'static str),
    /// `+kubebuilder:validation:MinLength`.
    MinLength(u64),
    /// `+kubebuilder:validation:MaxLength`.
    MaxLength(u64),
    /// `+kubebuilder:validation:Minimum`.
    Minimum(i64),
    /// `+kubebuilder:validation:Enum`.
    Enum(&'static [&'static str]),
    /// `intstr.IntOrString`: an integer or a string.
    IntOrString,
    /// `resource.Quantity`: an integer or a string in quantity syntax.
    Quantity,
    /// An embedded `ObjectMeta` that controller-gen leaves opaque: `type: object` with no
    /// properties, so its content is pruned.
    OpaqueObject,
}

use Mark::*;

/// One marker: on `field` of `ty`, or on `ty` itself when `field` is empty.
struct Rule {
    ty: &'static str,
    field: &'static str,
    mark: Mark,
}

const fn on(ty: &'static str, field: &'static str, mark: Mark) -> Rule {
    Rule { ty, field, mark }
}

/// The syntax of a `resource.Quantity` string, as kube-apiserver checks it.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// `metav1.Condition.type`: an optional DNS-subdomain prefix and a qualified name.
const CONDITION_TYPE_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";

/// `metav1.Condition.reason`: a CamelCase word (commas and colons allowed inside).
const CONDITION_REASON_PATTERN: &str = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

/// Type names as k8s-openapi spells them, less `io.k8s.api.`, `io.k8s.apimachinery.pkg.apis.`
/// or `io.k8s.apimachinery.pkg.` (see [`short_name`]).
#[rustfmt::skip]
const RULES: &[Rule] = &[
    // Scalars with a schema of their own.
    on("api.resource.Quantity", "", Quantity),
    on("util.intstr.IntOrString", "", IntOrString),
    // meta/v1
    on("meta.v1.Condition", "type", Pattern(CONDITION_TYPE_PATTERN)),
    on("meta.v1.Condition", "type", MaxLength(316)),
    on("meta.v1.Condition", "status", Enum(&["True", "False", "Unknown"])),
    on("meta.v1.Condition", "observedGeneration", Minimum(0)),
    on("meta.v1.Condition", "reason", Pattern(CONDITION_REASON_PATTERN)),
    on("meta.v1.Condition", "reason", MinLength(1)),
    on("meta.v1.Condition", "reason", MaxLength(1024)),
    on("meta.v1.Condition", "message", MaxLength(32768)),
    on("meta.v1.LabelSelector", "", MapAtomic),
    on("meta.v1.LabelSelector", "matchExpressions", ListAtomic),
    on("meta.v1.LabelSelectorRequirement", "values", ListAtomic),
    // core/v1 PodSpec
    on("core.v1.PodSpec", "containers", ListMap(&["name"])),
    on("core.v1.PodSpec", "initContainers", ListMap(&["name"])),
    on("core.v1.PodSpec", "ephemeralContainers", ListMap(&["name"])),
    on("core.v1.PodSpec", "volumes", ListMap(&["name"])),
    on("core.v1.PodSpec", "imagePullSecrets", ListMap(&["name"])),
    on("core.v1.PodSpec", "hostAliases", ListMap(&["ip"])),
    on("core.v1.PodSpec", "resourceClaims", ListMap(&["name"])),
    on("core.v1.PodSpec", "schedulingGates", ListMap(&["name"])),
    on("core.v1.PodSpec", "topologySpreadConstraints", ListMap(&["topologyKey", "whenUnsatisfiable"])),
    on("core.v1.PodSpec", "nodeSelector", MapAtomic),
    on("core.v1.PodSpec", "readinessGates", ListAtomic),
    on("core.v1.PodSpec", "tolerations", ListAtomic),
    on("core.v1.PodSecurityContext", "supplementalGroups", ListAtomic),
    on("core.v1.PodSecurityContext", "sysctls", ListAtomic),
    on("core.v1.PodDNSConfig", "nameservers", ListAtomic),
    on("core.v1.PodDNSConfig", "options", ListAtomic),
    on("core.v1.PodDNSConfig", "searches", ListAtomic),
    on("core.v1.HostAlias", "hostnames", ListAtomic),
    on("core.v1.TopologySpreadConstraint", "matchLabelKeys", ListAtomic),
    // core/v1 Container and EphemeralContainer (the same fields)
    on("core.v1.Container", "args", ListAtomic),
    on("core.v1.Container", "command", ListAtomic),
    on("core.v1.Container", "env", ListMap(&["name"])),
    on("core.v1.Container", "envFrom", ListAtomic),
    on("core.v1.Container", "ports", ListMap(&["containerPort", "protocol"])),
    on("core.v1.Container", "resizePolicy", ListAtomic),
    on("core.v1.Container", "restartPolicyRules", ListAtomic),
    on("core.v1.Container", "volumeDevices", ListMap(&["devicePath"])),
    on("core.v1.Container", "volumeMounts", ListMap(&["mountPath"])),
    on("core.v1.EphemeralContainer", "args", ListAtomic),
    on("core.v1.EphemeralContainer", "command", ListAtomic),
    on("core.v1.EphemeralContainer", "env", ListMap(&["name"])),
    on("core.v1.EphemeralContainer", "envFrom", ListAtomic),
    on("core.v1.EphemeralContainer", "ports", ListMap(&["containerPort", "protocol"])),
    on("core.v1.EphemeralContainer", "resizePolicy", ListAtomic),
    on("core.v1.EphemeralContainer", "restartPolicyRules", ListAtomic),
    on("core.v1.EphemeralContainer", "volumeDevices", ListMap(&["devicePath"])),
    on("core.v1.EphemeralContainer", "volumeMounts", ListMap(&["mountPath"])),
    on("core.v1.ContainerPort", "protocol", DefaultStr("TCP")),
    on("core.v1.ContainerRestartRuleOnExitCodes", "values", ListSet),
    on("core.v1.ResourceRequirements", "claims", ListMap(&["name"])),
    on("core.v1.Capabilities", "add", ListAtomic),
    on("core.v1.Capabilities", "drop", ListAtomic),
    on("core.v1.ExecAction", "command", ListAtomic),
    on("core.v1.HTTPGetAction", "httpHeaders", ListAtomic),
    on("core.v1.GRPCAction", "service", DefaultStr("")),
    // core/v1 references and selectors
    on("core.v1.LocalObjectReference", "", MapAtomic),
    on("core.v1.LocalObjectReference", "name", DefaultStr("")),
    on("core.v1.LocalObjectReference", "name", Optional),
    on("core.v1.TypedLocalObjectReference", "", MapAtomic),
    on("core.v1.ObjectFieldSelector", "", MapAtomic),
    on("core.v1.ResourceFieldSelector", "", MapAtomic),
    on("core.v1.ConfigMapKeySelector", "", MapAtomic),
    on("core.v1.ConfigMapKeySelector", "name", DefaultStr("")),
    on("core.v1.ConfigMapKeySelector", "name", Optional),
    on("core.v1.SecretKeySelector", "", MapAtomic),
    on("core.v1.SecretKeySelector", "name", DefaultStr("")),
    on("core.v1.SecretKeySelector", "name", Optional),
    on("core.v1.FileKeySelector", "", MapAtomic),
    on("core.v1.FileKeySelector", "optional", DefaultBool(false)),
    on("core.v1.ConfigMapEnvSource", "", MapAtomic),
    on("core.v1.ConfigMapEnvSource", "name", DefaultStr("")),
    on("core.v1.ConfigMapEnvSource", "name", Optional),
    on("core.v1.SecretEnvSource", "", MapAtomic),
    on("core.v1.SecretEnvSource", "name", DefaultStr("")),
    on("core.v1.SecretEnvSource", "name", Optional),
    // core/v1 affinity
    on("core.v1.NodeSelector", "", MapAtomic),
    on("core.v1.NodeSelector", "nodeSelectorTerms", ListAtomic),
    on("core.v1.NodeSelectorTerm", "", MapAtomic),
    on("core.v1.NodeSelectorTerm", "matchExpressions", ListAtomic),
    on("core.v1.NodeSelectorTerm", "matchFields", ListAtomic),
    on("core.v1.NodeSelectorRequirement", "values", ListAtomic),
    on("core.v1.NodeAffinity", "preferredDuringSchedulingIgnoredDuringExecution", ListAtomic),
    on("core.v1.PodAffinity", "preferredDuringSchedulingIgnoredDuringExecution", ListAtomic),
    on("core.v1.PodAffinity", "requiredDuringSchedulingIgnoredDuringExecution", ListAtomic),
    on("core.v1.PodAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution", ListAtomic),
    on("core.v1.PodAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution", ListAtomic),
    on("core.v1.PodAffinityTerm", "matchLabelKeys", ListAtomic),
    on("core.v1.PodAffinityTerm", "mismatchLabelKeys", ListAtomic),
    on("core.v1.PodAffinityTerm", "namespaces", ListAtomic),
    // core/v1 volumes
    on("core.v1.ConfigMapVolumeSource", "", MapAtomic),
    on("core.v1.ConfigMapVolumeSource", "items", ListAtomic),
    on("core.v1.ConfigMapVolumeSource", "name", DefaultStr("")),
    on("core.v1.ConfigMapVolumeSource", "name", Optional),
    on("core.v1.SecretVolumeSource", "items", ListAtomic),
    on("core.v1.DownwardAPIVolumeSource", "items", ListAtomic),
    on("core.v1.ProjectedVolumeSource", "sources", ListAtomic),
    on("core.v1.ConfigMapProjection", "", MapAtomic),
    on("core.v1.ConfigMapProjection", "items", ListAtomic),
    on("core.v1.ConfigMapProjection", "name", DefaultStr("")),
    on("core.v1.ConfigMapProjection", "name", Optional),
    on("core.v1.SecretProjection", "", MapAtomic),
    on("core.v1.SecretProjection", "items", ListAtomic),
    on("core.v1.SecretProjection", "name", DefaultStr("")),
    on("core.v1.SecretProjection", "name", Optional),
    on("core.v1.DownwardAPIProjection", "items", ListAtomic),
    on("core.v1.PersistentVolumeClaimTemplate", "metadata", OpaqueObject),
    on("core.v1.PersistentVolumeClaimSpec", "accessModes", ListAtomic),
    on("core.v1.AzureDiskVolumeSource", "fsType", DefaultStr("ext4")),
    on("core.v1.AzureDiskVolumeSource", "readOnly", DefaultBool(false)),
    on("core.v1.CephFSVolumeSource", "monitors", ListAtomic),
    on("core.v1.FCVolumeSource", "targetWWNs", ListAtomic),
    on("core.v1.FCVolumeSource", "wwids", ListAtomic),
    on("core.v1.ISCSIVolumeSource", "iscsiInterface", DefaultStr("default")),
    on("core.v1.ISCSIVolumeSource", "portals", ListAtomic),
    on("core.v1.RBDVolumeSource", "monitors", ListAtomic),
    on("core.v1.RBDVolumeSource", "keyring", DefaultStr("/etc/ceph/keyring")),
    on("core.v1.RBDVolumeSource", "pool", DefaultStr("rbd")),
    on("core.v1.RBDVolumeSource", "user", DefaultStr("admin")),
    on("core.v1.ScaleIOVolumeSource", "fsType", DefaultStr("xfs")),
    on("core.v1.ScaleIOVolumeSource", "storageMode", DefaultStr("ThinProvisioned")),
    // networking/v1
    on("networking.v1.IPBlock", "except", ListAtomic),
    on("networking.v1.NetworkPolicyIngressRule", "from", ListAtomic),
    on("networking.v1.NetworkPolicyIngressRule", "ports", ListAtomic),
    on("networking.v1.NetworkPolicyEgressRule", "to", ListAtomic),
    on("networking.v1.NetworkPolicyEgressRule", "ports", ListAtomic),
];

/// The rules by type name.
static BY_TYPE: LazyLock<HashMap<&'static str, Vec<&'static Rule>>> = LazyLock::new(|| {
    let mut by_type: HashMap<_, Vec<_>> = HashMap::new();
    for rule in RULES {
        by_type.entry(rule.ty).or_default().push(rule);
    }
    by_type
});

/// `io.k8s.api.core.v1.Container` → `core.v1.Container`.
fn short_name(name: &str) -> &str {
    [
        "io.k8s.api.",
        "io.k8s.apimachinery.pkg.apis.",
        "io.k8s.apimachinery.pkg.",
    ]
    .iter()
    .find_map(|prefix| name.strip_prefix(prefix))
    .unwrap_or(name)
}

/// Applies every rule of the table to `schema` (an inlined, finished root schema) where
/// `typed` places the rule's type.
pub(super) fn apply(schema: &mut Value, typed: &Typed) {
    typed::walk(schema, typed, &mut |node, site| match site {
        Site::Type(ty) => {
            for rule in BY_TYPE.get(short_name(ty)).into_iter().flatten() {
                match (rule.field, rule.mark) {
                    ("", mark) => mark_node(node, mark),
                    (field, Optional) => make_optional(node, field),
                    _ => {}
                }
            }
        }
        Site::Field { owner, field } => {
            for rule in BY_TYPE.get(short_name(owner)).into_iter().flatten() {
                if rule.field == field && !matches!(rule.mark, Optional) {
                    mark_node(node, rule.mark);
                }
            }
        }
    });
}

fn mark_node(node: &mut Value, mark: Mark) {
    let Some(map) = node.as_object_mut() else {
        return;
    };
    match mark {
        ListAtomic => _ = map.insert("x-kubernetes-list-type".into(), json!("atomic")),
        ListSet => _ = map.insert("x-kubernetes-list-type".into(), json!("set")),
        ListMap(keys) => {
            map.insert("x-kubernetes-list-type".into(), json!("map"));
            map.insert("x-kubernetes-list-map-keys".into(), json!(keys));
        }
        MapAtomic => _ = map.insert("x-kubernetes-map-type".into(), json!("atomic")),
        DefaultStr(value) => _ = map.insert("default".into(), json!(value)),
        DefaultBool(value) => _ = map.insert("default".into(), json!(value)),
        Optional => {}
        Pattern(pattern) => _ = map.insert("pattern".into(), json!(pattern)),
        MinLength(n) => _ = map.insert("minLength".into(), json!(n)),
        MaxLength(n) => _ = map.insert("maxLength".into(), json!(n)),
        Minimum(n) => _ = map.insert("minimum".into(), json!(n)),
        Enum(values) => _ = map.insert("enum".into(), json!(values)),
        IntOrString | Quantity => {
            // The type's own long description is not repeated at every use (a field's own
            // description stays).
            let own_doc = if matches!(mark, Quantity) {
                "Quantity is a fixed-point representation"
            } else {
                "IntOrString is a type that can hold"
            };
            if map
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| d.starts_with(own_doc))
            {
                map.remove("description");
            }
            map.remove("type");
            map.remove("format");
            map.insert(
                "anyOf".into(),
                json!([{"type": "integer"}, {"type": "string"}]),
            );
            if matches!(mark, Quantity) {
                map.insert("pattern".into(), json!(QUANTITY_PATTERN));
            }
            map.insert("x-kubernetes-int-or-string".into(), json!(true));
        }
        OpaqueObject => {
            map.retain(|k, _| k == "description");
            map.insert("type".into(), json!("object"));
        }
    }
}

fn make_optional(node: &mut Value, field: &str) {
    let Some(map) = node.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(required)) = map.get_mut("required") {
        required.retain(|r| r != field);
        if required.is_empty() {
            map.remove("required");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::{v1alpha1, v1beta1};

    /// The `(type, field)` sites of one version of a CRD (`field` empty for the type itself).
    fn sites<T: schemars::JsonSchema>(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        version: usize,
        out: &mut HashSet<(String, String)>,
    ) {
        let schema = crd.spec.versions[version].schema.as_ref().unwrap();
        let mut schema = serde_json::to_value(schema.open_api_v3_schema.as_ref().unwrap()).unwrap();
        typed::walk(&mut schema, &Typed::of::<T>(), &mut |_, site| {
            let (ty, field) = match site {
                Site::Type(ty) => (ty, ""),
                Site::Field { owner, field } => (owner, field),
            };
            out.insert((short_name(ty).to_owned(), field.to_owned()));
        });
    }

    /// A misspelt type or field in the table would silently mark nothing.
    #[test]
    fn every_rule_meets_its_type_and_field() {
        let mut seen = HashSet::new();
        let (sb, t, c, p) = (
            super::super::sandbox(),
            super::super::sandbox_template(),
            super::super::sandbox_claim(),
            super::super::sandbox_warm_pool(),
        );
        sites::<v1beta1::Sandbox>(&sb, 0, &mut seen);
        sites::<v1alpha1::Sandbox>(&sb, 1, &mut seen);
        sites::<v1beta1::SandboxTemplate>(&t, 0, &mut seen);
        sites::<v1alpha1::SandboxTemplate>(&t, 1, &mut seen);
        sites::<v1beta1::SandboxClaim>(&c, 0, &mut seen);
        sites::<v1alpha1::SandboxClaim>(&c, 1, &mut seen);
        sites::<v1beta1::SandboxWarmPool>(&p, 0, &mut seen);
        sites::<v1alpha1::SandboxWarmPool>(&p, 1, &mut seen);
        let unmet: Vec<_> = RULES
            .iter()
            .filter(|r| !seen.contains(&(r.ty.to_owned(), r.field.to_owned())))
            .map(|r| format!("{}.{} {:?}", r.ty, r.field, r.mark))
            .collect();
        assert!(unmet.is_empty(), "rules that mark nothing: {unmet:?}");
    }
}
