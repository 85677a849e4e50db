//! What a Pod's environment and volumes read besides their own literals: the ConfigMaps and
//! Secrets they name (fetched through the API by the node agent each time a container starts or
//! a volume is refreshed) and the downward API (the Pod's own fields, its containers'
//! resources). Shared by [`crate::env`] and [`crate::projected`]; the messages are kubelet's.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, PodSpec, ResourceFieldSelector, Secret, Volume,
};

use crate::spec::{parse_quantity_bytes, parse_quantity_millis};

/// The address the node reports as `status.hostIP` (the embedded node is the local host).
pub const HOST_IP: &str = "127.0.0.1";

/// The two kinds of API objects a Pod reads data from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataKind {
    /// core/v1 ConfigMap (`data` and `binaryData`).
    ConfigMap,
    /// core/v1 Secret (`data`, and `stringData` if a server left it in).
    Secret,
}

impl DataKind {
    /// Lower-case name as kubelet prints it (`configmap "x" not found`).
    pub fn word(self) -> &'static str {
        match self {
            DataKind::ConfigMap => "configmap",
            DataKind::Secret => "secret",
        }
    }
}

/// The key-value data of one ConfigMap or Secret.
pub type Data = BTreeMap<String, Vec<u8>>;

/// The data of a ConfigMap: `data` and `binaryData`.
pub fn config_map_data(cm: &ConfigMap) -> Data {
    let mut out: Data = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// The data of a Secret: `data`, and `stringData` over it (a server merges it on write; this
/// keeps the result right if one did not).
pub fn secret_data(s: &Secret) -> Data {
    let mut out: Data = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// The `auths` of an image pull Secret: `.dockerconfigjson` of a
/// `kubernetes.io/dockerconfigjson` Secret, or `.dockercfg` (the map itself) of a
/// `kubernetes.io/dockercfg` one; `None` for any other Secret or unreadable data.
pub fn docker_auths(s: &Secret) -> Option<serde_json::Map<String, serde_json::Value>> {
    let data = secret_data(s);
    let (key, nested) = match s.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => (".dockerconfigjson", true),
        Some("kubernetes.io/dockercfg") => (".dockercfg", false),
        _ => return None,
    };
    let v: serde_json::Value = serde_json::from_slice(data.get(key)?).ok()?;
    let map = if nested { v.get("auths")? } else { &v };
    map.as_object().cloned()
}

/// The ConfigMaps and Secrets of the Pod's namespace that a resolution may read, as fetched:
/// `None` for an object that does not exist.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The Pod's namespace (objects are always read from it).
    pub namespace: String,
    objects: BTreeMap<(DataKind, String), Option<Data>>,
}

impl Sources {
    /// Empty sources for `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Sources {
            namespace: namespace.into(),
            objects: BTreeMap::new(),
        }
    }

    /// Record what was fetched for `kind`/`name` (`None`: not found).
    pub fn insert(&mut self, kind: DataKind, name: impl Into<String>, data: Option<Data>) {
        self.objects.insert((kind, name.into()), data);
    }

    /// The object's data; `Ok(None)` when it is absent and `optional`, else kubelet's
    /// `configmap "x" not found`.
    pub fn get(&self, kind: DataKind, name: &str, optional: bool) -> Result<Option<&Data>, String> {
        match self.objects.get(&(kind, name.to_string())) {
            Some(Some(d)) => Ok(Some(d)),
            _ if optional => Ok(None),
            _ => Err(format!("{} {name:?} not found", kind.word())),
        }
    }
}

/// The objects a container's `env` and `envFrom` name.
pub fn container_refs(c: &Container) -> BTreeSet<(DataKind, String)> {
    let mut out = BTreeSet::new();
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            out.insert((DataKind::ConfigMap, r.name.clone()));
        }
        if let Some(r) = &f.secret_ref {
            out.insert((DataKind::Secret, r.name.clone()));
        }
    }
    for e in c.env.iter().flatten() {
        let Some(v) = &e.value_from else { continue };
        if let Some(r) = &v.config_map_key_ref {
            out.insert((DataKind::ConfigMap, r.name.clone()));
        }
        if let Some(r) = &v.secret_key_ref {
            out.insert((DataKind::Secret, r.name.clone()));
        }
    }
    out
}

/// The objects a Pod's configMap, secret and projected volumes name.
pub fn volume_refs(volumes: &[Volume]) -> BTreeSet<(DataKind, String)> {
    let mut out = BTreeSet::new();
    for v in volumes {
        if let Some(cm) = &v.config_map {
            out.insert((DataKind::ConfigMap, cm.name.clone()));
        }
        if let Some(s) = &v.secret {
            out.insert((DataKind::Secret, s.secret_name.clone().unwrap_or_default()));
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &p.config_map {
                out.insert((DataKind::ConfigMap, cm.name.clone()));
            }
            if let Some(s) = &p.secret {
                out.insert((DataKind::Secret, s.name.clone()));
            }
        }
    }
    out
}

/// What the node knows of itself for the downward API: its address and the capacity that
/// stands in for a container's unset limits (as kubelet uses the node's allocatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// CPUs, in millicores.
    pub cpu_millis: i64,
    /// Memory, in bytes.
    pub memory_bytes: i64,
    /// The filesystem holding the node's state, in bytes.
    pub ephemeral_storage_bytes: i64,
}

impl NodeFacts {
    /// Read from the host: CPUs available to this process, `MemTotal`, and the size of the
    /// filesystem at `state_dir`.
    pub fn of_host(state_dir: &std::path::Path) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
        let memory = fs_err::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        let disk = nix::sys::statvfs::statvfs(state_dir)
            .map(|s| (s.blocks() as i64).saturating_mul(s.fragment_size() as i64))
            .unwrap_or(0);
        NodeFacts {
            cpu_millis: cpus * 1000,
            memory_bytes: memory,
            ephemeral_storage_bytes: disk,
        }
    }
}

/// Where a downward API value is read: the env of a container or a file of a volume (they
/// allow different fields, as in Kubernetes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// `env[].valueFrom.fieldRef`.
    Env,
    /// `downwardAPI.items[].fieldRef`.
    Volume,
}

/// `metadata.labels['key']` → `("labels", "key")`.
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (map, rest) = path.strip_prefix("metadata.")?.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    matches!(map, "labels" | "annotations").then_some((map, key))
}

/// A Pod field for the downward API (`fieldRef.fieldPath`); `pod_ips` are the sandbox's
/// addresses (empty before the network is attached).
pub fn pod_field(
    pod: &Pod,
    sel: &ObjectFieldSelector,
    pod_ips: &[String],
    usage: Use,
) -> Result<String, String> {
    if sel.api_version.as_deref().is_some_and(|v| v != "v1") {
        return Err(format!(
            "fieldRef apiVersion {:?} is not supported: use v1",
            sel.api_version.as_deref().unwrap_or_default()
        ));
    }
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = sel.field_path.as_str();
    if let Some((map, key)) = subscript(path) {
        let values = if map == "labels" {
            m.labels.as_ref()
        } else {
            m.annotations.as_ref()
        };
        return Ok(values.and_then(|v| v.get(key)).cloned().unwrap_or_default());
    }
    Ok(match (path, usage) {
        ("metadata.name", _) => m.name.clone().unwrap_or_default(),
        ("metadata.namespace", _) => m.namespace.clone().unwrap_or_else(|| "default".into()),
        ("metadata.uid", _) => m.uid.clone().unwrap_or_default(),
        ("metadata.labels", Use::Volume) => format_map(m.labels.as_ref()),
        ("metadata.annotations", Use::Volume) => format_map(m.annotations.as_ref()),
        ("spec.nodeName", Use::Env) => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ("spec.serviceAccountName", Use::Env) => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        ("status.hostIP" | "status.hostIPs", Use::Env) => HOST_IP.into(),
        ("status.podIP", Use::Env) => pod_ips.first().cloned().unwrap_or_default(),
        ("status.podIPs", Use::Env) => pod_ips.join(","),
        _ => {
            let allowed = match usage {
                Use::Env => {
                    "metadata.name, metadata.namespace, metadata.uid, metadata.labels['<key>'], metadata.annotations['<key>'], spec.nodeName, spec.serviceAccountName, status.hostIP, status.hostIPs, status.podIP, status.podIPs"
                }
                Use::Volume => {
                    "metadata.name, metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, metadata.labels['<key>'], metadata.annotations['<key>']"
                }
            };
            return Err(format!(
                "fieldPath {path:?} is not supported here; supported: {allowed}"
            ));
        }
    })
}

/// Whether an env entry reads the sandbox's address (it must wait for the network).
pub fn needs_pod_ip(c: &Container) -> bool {
    c.env.iter().flatten().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .is_some_and(|f| f.field_path.starts_with("status.podIP"))
    })
}

/// A labels or annotations map as kubelet writes it into a file: `key="value"` lines, sorted by
/// key, values quoted Go-style, no final newline.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string quoted as Go's `%q` does for printable text: `"`, `\` and control characters
/// escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A container's resource for the downward API (`resourceFieldRef`), divided by its divisor
/// and rounded up, as kubelet does: an unset limit is the node's capacity; an unset request
/// is the limit when one is set, else 0.
pub fn container_resource(
    spec: &PodSpec,
    container_name: &str,
    sel: &ResourceFieldSelector,
    node: &NodeFacts,
) -> Result<String, String> {
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container_name)
        .ok_or_else(|| format!("resourceFieldRef: no container named {container_name:?}"))?;
    let (kind, resource) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("resource {:?} is not supported", sel.resource))?;
    let r = c.resources.as_ref();
    let limit = r
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(resource));
    let request = r
        .and_then(|r| r.requests.as_ref())
        .and_then(|l| l.get(resource));
    let (capacity, parse): (i64, fn(&str) -> Option<i64>) = match resource {
        "cpu" => (node.cpu_millis, parse_quantity_millis),
        "memory" => (node.memory_bytes, parse_quantity_bytes),
        "ephemeral-storage" => (node.ephemeral_storage_bytes, parse_quantity_bytes),
        _ => {
            return Err(format!(
                "resource {:?} is not supported: use limits or requests of cpu, memory or ephemeral-storage",
                sel.resource
            ));
        }
    };
    let chosen = match kind {
        "limits" => limit.map(|q| q.0.as_str()),
        "requests" => request.or(limit).map(|q| q.0.as_str()),
        _ => {
            return Err(format!(
                "resource {:?} is not supported: it must start with limits. or requests.",
                sel.resource
            ));
        }
    };
    let amount = match chosen {
        Some(q) => parse(q).ok_or_else(|| format!("{q:?} is not a quantity"))?,
        None if kind == "limits" => capacity,
        None => 0,
    };
    let divisor = match sel.divisor.as_ref().map(|d| d.0.as_str()) {
        None | Some("") => parse("1").unwrap_or(1),
        Some(d) => parse(d)
            .filter(|d| *d > 0)
            .ok_or_else(|| format!("divisor {d:?} is not a positive quantity"))?,
    };
    Ok(((amount + divisor - 1) / divisor).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                "labels": {"b": "2", "a": "say \"hi\"\n"}, "annotations": {"x": "y"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"},
                              "requests": {"cpu": "250m"}}}]}
        }))
        .unwrap()
    }

    fn field(path: &str) -> ObjectFieldSelector {
        ObjectFieldSelector {
            api_version: None,
            field_path: path.into(),
        }
    }

    #[test]
    fn downward_fields() {
        let p = pod();
        let ips = vec!["10.88.0.5".to_string()];
        let f = |path: &str, u: Use| pod_field(&p, &field(path), &ips, u);
        assert_eq!(f("metadata.name", Use::Env).unwrap(), "p");
        assert_eq!(f("metadata.namespace", Use::Env).unwrap(), "ns");
        assert_eq!(f("metadata.uid", Use::Volume).unwrap(), "u-1");
        assert_eq!(f("metadata.labels['b']", Use::Env).unwrap(), "2");
        assert_eq!(f("metadata.annotations['nope']", Use::Env).unwrap(), "");
        assert_eq!(f("status.podIP", Use::Env).unwrap(), "10.88.0.5");
        assert_eq!(f("status.hostIP", Use::Env).unwrap(), HOST_IP);
        assert_eq!(f("spec.nodeName", Use::Env).unwrap(), "node-1");
        assert_eq!(f("spec.serviceAccountName", Use::Env).unwrap(), "default");
        assert_eq!(
            f("metadata.labels", Use::Volume).unwrap(),
            "a=\"say \\\"hi\\\"\\n\"\nb=\"2\""
        );
        let err = f("metadata.labels", Use::Env).unwrap_err();
        assert!(
            err.contains("metadata.labels") && err.contains("supported"),
            "{err}"
        );
        assert!(f("status.podIP", Use::Volume).is_err());
        let mut v1beta = field("metadata.name");
        v1beta.api_version = Some("v2".into());
        assert!(pod_field(&p, &v1beta, &ips, Use::Env).is_err());
    }

    #[test]
    fn resources_round_up_and_default_to_the_node() {
        let p = pod();
        let spec = p.spec.as_ref().unwrap();
        let node = NodeFacts {
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
            ephemeral_storage_bytes: 100 << 30,
        };
        let r = |res: &str, div: Option<&str>| {
            container_resource(
                spec,
                "c",
                &ResourceFieldSelector {
                    container_name: None,
                    divisor: div
                        .map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
                    resource: res.into(),
                },
                &node,
            )
        };
        assert_eq!(r("limits.cpu", None).unwrap(), "2");
        assert_eq!(r("limits.cpu", Some("1m")).unwrap(), "1500");
        assert_eq!(r("requests.cpu", Some("1m")).unwrap(), "250");
        assert_eq!(r("limits.memory", Some("1Mi")).unwrap(), "64");
        assert_eq!(r("requests.memory", None).unwrap(), (64 << 20).to_string());
        assert_eq!(r("limits.ephemeral-storage", Some("1Gi")).unwrap(), "100");
        assert_eq!(r("requests.ephemeral-storage", None).unwrap(), "0");
        assert!(r("limits.nvidia.com/gpu", None).is_err());
        assert!(r("cpu", None).is_err());
        assert!(r("limits.cpu", Some("0")).is_err());
    }

    #[test]
    fn sources_say_what_is_missing() {
        let mut s = Sources::new("ns");
        s.insert(DataKind::ConfigMap, "there", Some(Data::new()));
        s.insert(DataKind::Secret, "gone", None);
        assert!(
            s.get(DataKind::ConfigMap, "there", false)
                .unwrap()
                .is_some()
        );
        assert!(s.get(DataKind::Secret, "gone", true).unwrap().is_none());
        assert_eq!(
            s.get(DataKind::Secret, "gone", false).unwrap_err(),
            "secret \"gone\" not found"
        );
        assert_eq!(
            s.get(DataKind::ConfigMap, "never", false).unwrap_err(),
            "configmap \"never\" not found"
        );
    }
}
