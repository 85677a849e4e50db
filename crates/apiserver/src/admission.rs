//! Admission: Kubernetes name and label validation, per-kind defaulting of the core kinds the
//! controllers create, and the [`CrdSupport`] seam through which the CRD schemas (validation,
//! pruning, defaulting, CEL) and version conversion of the `api` crate are plugged in.

use crate::error::Cause;
use serde_json::{Value, json};

/// Schema admission and conversion for the custom resources (implemented over the `api` crate).
pub trait CrdSupport: Send + Sync {
    /// The CRDs to serve (apiextensions.k8s.io/v1 JSON).
    fn crds(&self) -> Vec<Value>;
    /// Converts a custom object to `desired_api_version` (e.g. `agents.x-k8s.io/v1alpha1`).
    fn convert(&self, obj: Value, desired_api_version: &str) -> Result<Value, String>;
    /// Prunes, defaults and validates `obj` (in `version`) against the CRD. Returns the pruned
    /// unknown field paths, or the field errors.
    fn admit(
        &self,
        crd: &Value,
        version: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Vec<String>, Vec<Cause>>;
}

/// No custom resources.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCrds;

impl CrdSupport for NoCrds {
    fn crds(&self) -> Vec<Value> {
        vec![]
    }
    fn convert(&self, mut obj: Value, desired_api_version: &str) -> Result<Value, String> {
        obj["apiVersion"] = json!(desired_api_version);
        Ok(obj)
    }
    fn admit(
        &self,
        _: &Value,
        _: &str,
        _: &mut Value,
        _: Option<&Value>,
    ) -> Result<Vec<String>, Vec<Cause>> {
        Ok(vec![])
    }
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// DNS-1123 subdomain.
pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

fn invalid(field: &str, value: &str, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {value:?}: {msg}"),
        field: field.into(),
    }
}

/// How a kind's names are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most kinds).
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label (services).
    Dns1035,
}

/// Validates `metadata.name` (and `generateName`-derived names).
pub fn validate_name(name: &str, rule: NameRule) -> Vec<Cause> {
    let mut out = vec![];
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                out.push(invalid(
                    "metadata.name",
                    name,
                    "must be no more than 253 characters",
                ));
            }
            if !name.split('.').all(is_label) {
                out.push(invalid("metadata.name", name, SUBDOMAIN_MSG));
            }
        }
        NameRule::Label => {
            if name.len() > 63 {
                out.push(invalid(
                    "metadata.name",
                    name,
                    "must be no more than 63 characters",
                ));
            }
            if !is_label(&name[..name.len().min(63)]) || name.len() > 63 && !is_label(name) {
                out.push(invalid("metadata.name", name, LABEL_MSG));
            }
        }
        NameRule::Dns1035 => {
            if name.len() > 63 {
                out.push(invalid(
                    "metadata.name",
                    name,
                    "must be no more than 63 characters",
                ));
            }
            if !is_label(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.push(invalid("metadata.name", name, DNS1035_MSG));
            }
        }
    }
    out
}

/// Validates label keys and values and annotation keys.
pub fn validate_metadata(meta: &Value) -> Vec<Cause> {
    let mut out = vec![];
    use agent_sandbox_api::validation::{label_key_errors, label_value_errors};
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for msg in label_key_errors(k) {
                out.push(invalid("metadata.labels", k, &msg));
            }
            let v = v.as_str().unwrap_or("");
            for msg in label_value_errors(v) {
                out.push(invalid("metadata.labels", v, &msg));
            }
        }
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            for msg in label_key_errors(&k.to_lowercase()) {
                out.push(invalid("metadata.annotations", k, &msg));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_LIMIT {
            out.push(Cause {
                reason: "FieldValueTooLong".into(),
                message: format!("Too long: must have at most {ANNOTATIONS_LIMIT} bytes"),
                field: "metadata.annotations".into(),
            });
        }
    }
    out
}

/// kube-apiserver's validation of the Pod fields every Pod needs right: containers (at least
/// one; names RFC 1123 labels, unique across init and regular containers; an image without
/// surrounding whitespace) and the restart policy. Runs after defaulting.
pub fn validate_pod(pod: &Value) -> Vec<Cause> {
    let spec = &pod["spec"];
    let mut out = vec![];
    let required = |field: String| Cause {
        reason: "FieldValueRequired".into(),
        message: "Required value".into(),
        field,
    };
    if spec["containers"].as_array().is_none_or(Vec::is_empty) {
        out.push(required("spec.containers".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = |f: &str| format!("spec.{list}[{i}].{f}");
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() {
                out.push(required(at("name")));
            } else if !is_label(name) {
                out.push(invalid(&at("name"), name, LABEL_MSG));
            } else if !seen.insert(name.to_string()) {
                out.push(Cause {
                    reason: "FieldValueDuplicate".into(),
                    message: format!("Duplicate value: {name:?}"),
                    field: at("name"),
                });
            }
            let image = c["image"].as_str().unwrap_or("");
            if image.is_empty() {
                out.push(required(at("image")));
            } else if image.trim() != image {
                out.push(invalid(
                    &at("image"),
                    image,
                    "must not have leading or trailing whitespace",
                ));
            }
        }
    }
    if let Some(p) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&p)
    {
        out.push(Cause {
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {p:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
            field: "spec.restartPolicy".into(),
        });
    }
    out
}

/// Whether a StorageClass is marked as the default one (the GA annotation or the beta one).
pub fn is_default_class(class: &Value) -> bool {
    let a = &class["metadata"]["annotations"];
    [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| a[*k] == "true")
}

/// The DefaultStorageClass admission: a PVC created without `spec.storageClassName` gets the
/// default class, the newest when several are marked (an empty name asks for none and is
/// kept). `classes` are the StorageClasses that exist.
pub fn default_storage_class(pvc: &mut Value, classes: &[Value]) {
    if pvc
        .pointer("/spec/storageClassName")
        .is_some_and(|v| !v.is_null())
    {
        return;
    }
    let newest = classes
        .iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            let created = |c: &Value| {
                c["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            };
            let name = |c: &Value| c["metadata"]["name"].as_str().unwrap_or("").to_string();
            created(a)
                .cmp(&created(b))
                .then_with(|| name(b).cmp(&name(a)))
        });
    if let (Some(class), Some(spec)) = (newest, pvc.get_mut("spec").and_then(Value::as_object_mut))
    {
        spec.insert("storageClassName".into(), class["metadata"]["name"].clone());
    }
}

/// kube-apiserver's limit on an object's annotations, keys and values together.
pub const ANNOTATIONS_LIMIT: usize = 256 * 1024;

fn default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut()
        && !m.contains_key(key)
    {
        m.insert(key.into(), v);
    }
}

/// Pod defaults applied by kube-apiserver that controllers and kubectl rely on.
pub fn default_pod(pod: &mut Value) {
    if let Some(status) = pod.get_mut("status").filter(|s| s.is_object()) {
        pair_ips(status, "podIP", "podIPs");
        pair_ips(status, "hostIP", "hostIPs");
    }
    let Some(spec) = pod.get_mut("spec") else {
        return;
    };
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    default(spec, "priority", json!(0));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                default(c, "terminationMessagePath", json!("/dev/termination-log"));
                default(c, "terminationMessagePolicy", json!("File"));
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let tag = image.rsplit('/').next().unwrap_or("");
                let pull = if image.contains('@') {
                    "IfNotPresent"
                } else if !tag.contains(':') || tag.ends_with(":latest") {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                default(c, "imagePullPolicy", json!(pull));
                default(c, "resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// Keeps a Pod status's single IP and its list in step, as kube-apiserver's conversion does: a
/// single IP that differs from the list's first entry replaces the list, a missing list is made
/// from the single IP, and a missing single IP is the list's first entry.
fn pair_ips(status: &mut Value, one: &str, list: &str) {
    let ip = status[one]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from);
    let first = status[list][0]["ip"].as_str().map(String::from);
    match (ip, first) {
        (Some(ip), first) if first.as_deref() != Some(ip.as_str()) => {
            status[list] = json!([{ "ip": ip }]);
        }
        (None, Some(first)) => status[one] = json!(first),
        _ => {}
    }
}

/// Service defaults (type, session affinity, port protocol and targetPort).
pub fn default_service(svc: &mut Value) {
    let Some(spec) = svc.get_mut("spec") else {
        return;
    };
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    default(spec, "ipFamilies", json!(["IPv4"]));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default(p, "protocol", json!("TCP"));
            if p.get("targetPort").is_none()
                && let Some(port) = p.get("port").cloned()
            {
                p["targetPort"] = port;
            }
        }
    }
}

fn diff_unknown(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => out.push(p),
                    Some(bv) => diff_unknown(v, bv, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_unknown(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(
    obj: &Value,
) -> Result<(Value, Vec<String>), String> {
    let t: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    let mut unknown = vec![];
    diff_unknown(obj, &back, "", &mut unknown);
    Ok((back, unknown))
}

/// Decodes a core object through its typed schema, as kube-apiserver does: unknown fields are
/// dropped (and reported), and type errors fail. `None` for kinds without a built-in schema.
pub fn core_roundtrip(
    group: &str,
    kind: &str,
    obj: &Value,
) -> Option<Result<(Value, Vec<String>), String>> {
    use k8s_openapi::api;
    Some(match (group, kind) {
        ("", "Pod") => roundtrip::<api::core::v1::Pod>(obj),
        ("", "Service") => roundtrip::<api::core::v1::Service>(obj),
        ("", "Namespace") => roundtrip::<api::core::v1::Namespace>(obj),
        ("", "PersistentVolumeClaim") => roundtrip::<api::core::v1::PersistentVolumeClaim>(obj),
        ("", "PersistentVolume") => roundtrip::<api::core::v1::PersistentVolume>(obj),
        ("storage.k8s.io", "StorageClass") => roundtrip::<api::storage::v1::StorageClass>(obj),
        ("", "Node") => roundtrip::<api::core::v1::Node>(obj),
        ("", "ConfigMap") => roundtrip::<api::core::v1::ConfigMap>(obj),
        ("", "Secret") => roundtrip::<api::core::v1::Secret>(obj),
        ("", "Event") => roundtrip::<api::core::v1::Event>(obj),
        ("events.k8s.io", "Event") => roundtrip::<api::events::v1::Event>(obj),
        ("networking.k8s.io", "NetworkPolicy") => {
            roundtrip::<api::networking::v1::NetworkPolicy>(obj)
        }
        ("node.k8s.io", "RuntimeClass") => roundtrip::<api::node::v1::RuntimeClass>(obj),
        ("coordination.k8s.io", "Lease") => roundtrip::<api::coordination::v1::Lease>(obj),
        ("discovery.k8s.io", "EndpointSlice") => {
            roundtrip::<api::discovery::v1::EndpointSlice>(obj)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_ips_are_paired_as_kube_apiserver_converts_them() {
        let status = |st: Value| {
            let mut p = json!({ "status": st });
            default_pod(&mut p);
            p["status"].clone()
        };
        assert_eq!(
            status(json!({"podIP": "10.0.0.1"})),
            json!({"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]})
        );
        assert_eq!(
            status(json!({"podIPs": [{"ip": "10.0.0.2"}, {"ip": "fd00::2"}]})),
            json!({"podIP": "10.0.0.2", "podIPs": [{"ip": "10.0.0.2"}, {"ip": "fd00::2"}]})
        );
        assert_eq!(
            status(json!({"podIP": "10.0.0.3", "podIPs": [{"ip": "10.0.0.2"}, {"ip": "fd00::2"}]})),
            json!({"podIP": "10.0.0.3", "podIPs": [{"ip": "10.0.0.3"}]})
        );
        assert_eq!(
            status(json!({"hostIP": "192.0.2.1", "phase": "Running"})),
            json!({"hostIP": "192.0.2.1", "hostIPs": [{"ip": "192.0.2.1"}], "phase": "Running"})
        );
        assert_eq!(
            status(json!({"phase": "Pending"})),
            json!({"phase": "Pending"})
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("a-b.c", NameRule::Subdomain).is_empty());
        assert_eq!(
            validate_name("Bad_Name", NameRule::Subdomain)[0].field,
            "metadata.name"
        );
        assert!(!validate_name("a.b", NameRule::Label).is_empty());
        assert!(!validate_name("1abc", NameRule::Dns1035).is_empty());
        assert!(!validate_name(&"a".repeat(254), NameRule::Subdomain).is_empty());
        assert!(validate_metadata(&json!({"labels": {"a/b": "c"}})).is_empty());
        assert!(!validate_metadata(&json!({"labels": {"a": "bad value"}})).is_empty());
        // Pods: containers, names, images, restart policy.
        let ok = json!({"spec": {"restartPolicy": "Always",
            "initContainers": [{"name": "i", "image": "busybox"}],
            "containers": [{"name": "main", "image": "busybox:1"}]}});
        assert!(validate_pod(&ok).is_empty());
        let bad = json!({"spec": {"restartPolicy": "Bogus",
            "initContainers": [{"name": "main", "image": " x"}],
            "containers": [{"name": "C_1"}, {"name": "main", "image": "b"}, {"image": "b"}]}});
        let got: Vec<String> = validate_pod(&bad)
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            got,
            [
                "spec.initContainers[0].image: Invalid value: \" x\": must not have leading or trailing whitespace",
                &format!("spec.containers[0].name: Invalid value: \"C_1\": {LABEL_MSG}"),
                "spec.containers[0].image: Required value",
                "spec.containers[1].name: Duplicate value: \"main\"",
                "spec.containers[2].name: Required value",
                "spec.restartPolicy: Unsupported value: \"Bogus\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ]
        );
        let none = validate_pod(&json!({"spec": {"containers": []}}));
        assert_eq!(
            (none[0].field.as_str(), none[0].message.as_str()),
            ("spec.containers", "Required value")
        );
        // DefaultStorageClass: the newest default class, only when no class is named.
        let classes = [
            json!({"metadata": {"name": "old", "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}}),
            json!({"metadata": {"name": "new", "creationTimestamp": "2026-02-01T00:00:00Z",
                "annotations": {"storageclass.beta.kubernetes.io/is-default-class": "true"}}}),
            json!({"metadata": {"name": "other", "creationTimestamp": "2026-03-01T00:00:00Z"}}),
        ];
        let mut pvc = json!({"spec": {"accessModes": ["ReadWriteOnce"]}});
        default_storage_class(&mut pvc, &classes);
        assert_eq!(pvc["spec"]["storageClassName"], "new");
        let mut none = json!({"spec": {"storageClassName": ""}});
        default_storage_class(&mut none, &classes);
        assert_eq!(none["spec"]["storageClassName"], "");
        let mut named = json!({"spec": {"storageClassName": "other"}});
        default_storage_class(&mut named, &classes);
        assert_eq!(named["spec"]["storageClassName"], "other");
        let mut no_default = json!({"spec": {}});
        default_storage_class(&mut no_default, &classes[2..]);
        assert!(no_default["spec"].get("storageClassName").is_none());
        // Annotations: 256 KiB in total, keys included.
        let at_limit = "x".repeat(ANNOTATIONS_LIMIT - 1);
        assert!(validate_metadata(&json!({"annotations": {"a": at_limit}})).is_empty());
        let over = "x".repeat(ANNOTATIONS_LIMIT);
        let causes = validate_metadata(&json!({"annotations": {"a": over}}));
        assert_eq!(causes.len(), 1);
        assert_eq!(
            (
                causes[0].field.as_str(),
                causes[0].message.as_str(),
                causes[0].reason.as_str()
            ),
            (
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
                "FieldValueTooLong"
            )
        );
    }
}
