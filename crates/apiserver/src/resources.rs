//! The catalogue of served resources: group, versions, kind, plural, short names, scope,
//! subresources and printer columns, for the core kinds and the CRDs.

use std::sync::Arc;

use serde_json::Value;

use crate::registry::{self, Strategy};

/// `scale` subresource paths (from a CRD or built in).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    /// e.g. `.spec.replicas`
    pub spec_replicas: String,
    /// e.g. `.status.replicas`
    pub status_replicas: String,
    /// e.g. `.status.selector`
    pub label_selector: Option<String>,
}

/// An additional printer column (`kubectl get` table output).
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// `string`, `integer`, `date`, ...
    pub type_: String,
    /// JSONPath, e.g. `.status.conditions[?(@.type=='Ready')].status`
    pub json_path: String,
    /// Priority (0 = shown by default).
    pub priority: i64,
    /// Description for the table column.
    pub description: String,
}

/// One served resource (all its served versions share one storage key).
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group ("" for core).
    pub group: String,
    /// Served versions, the storage version first.
    pub versions: Vec<String>,
    /// Kind.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Short names (`swp`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `status` subresource (main-resource writes then ignore status).
    pub has_status: bool,
    /// Scale subresource per version (None = not served for that version).
    pub scale: Vec<(String, ScalePaths)>,
    /// Printer columns per version.
    pub columns: Vec<(String, Vec<PrinterColumn>)>,
    /// What the kind does differently from a plain object (`registry`).
    pub strategy: Arc<dyn Strategy>,
    /// Objects of this kind may not be created or deleted through the API (updates are left to
    /// its strategy: the built-in CRDs keep their spec).
    pub read_only: bool,
    /// Deprecation warnings per version.
    pub deprecated: Vec<(String, String)>,
}

impl ResourceDef {
    /// Storage key, e.g. `pods` or `sandboxes.agents.x-k8s.io`. Versions share one key.
    pub fn key(&self) -> String {
        self.strategy.storage_key(self)
    }

    /// The storage version.
    pub fn storage_version(&self) -> &str {
        &self.versions[0]
    }

    /// `apiVersion` string for a version.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// Scale paths for a version.
    pub fn scale_for(&self, version: &str) -> Option<&ScalePaths> {
        self.scale
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, s)| s)
    }

    /// Printer columns for a version.
    pub fn columns_for(&self, version: &str) -> &[PrinterColumn] {
        self.columns
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, c)| c.as_slice())
            .unwrap_or(&[])
    }

    /// Whether the version is served.
    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// Whether `metadata.generation` is kept (the kind's strategy decides).
    pub fn tracks_generation(&self) -> bool {
        self.strategy.tracks_generation()
    }

    /// `verbs` for discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.read_only {
            vec!["get", "list", "patch", "update", "watch"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn core(
    group: &str,
    versions: &[&str],
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
    has_status: bool,
    strategy: impl Strategy + 'static,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        versions: versions.iter().map(|s| s.to_string()).collect(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: vec![],
        namespaced,
        has_status,
        scale: vec![],
        columns: vec![],
        strategy: Arc::new(strategy),
        read_only: false,
        deprecated: vec![],
    }
}

/// The built-in (non-CRD) resources.
pub fn builtin() -> Vec<ResourceDef> {
    let mut pods = core(
        "",
        &["v1"],
        "Pod",
        "pods",
        &["po"],
        true,
        true,
        registry::Pod,
    );
    pods.categories = vec!["all".into()];
    let mut svc = core(
        "",
        &["v1"],
        "Service",
        "services",
        &["svc"],
        true,
        true,
        registry::Service::default(),
    );
    svc.categories = vec!["all".into()];
    let mut crd = core(
        "apiextensions.k8s.io",
        &["v1"],
        "CustomResourceDefinition",
        "customresourcedefinitions",
        &["crd", "crds"],
        false,
        true,
        registry::Crd,
    );
    crd.read_only = true;
    vec![
        core(
            "",
            &["v1"],
            "Namespace",
            "namespaces",
            &["ns"],
            false,
            true,
            registry::Namespace,
        ),
        pods,
        svc,
        core(
            "",
            &["v1"],
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            &["pvc"],
            true,
            true,
            registry::PersistentVolumeClaim,
        ),
        core(
            "",
            &["v1"],
            "PersistentVolume",
            "persistentvolumes",
            &["pv"],
            false,
            true,
            registry::PersistentVolume,
        ),
        core(
            "storage.k8s.io",
            &["v1"],
            "StorageClass",
            "storageclasses",
            &["sc"],
            false,
            false,
            registry::StorageClass,
        ),
        core(
            "",
            &["v1"],
            "ConfigMap",
            "configmaps",
            &["cm"],
            true,
            false,
            registry::ConfigData(registry::config_data::Kind::ConfigMap),
        ),
        core(
            "",
            &["v1"],
            "Secret",
            "secrets",
            &[],
            true,
            false,
            registry::ConfigData(registry::config_data::Kind::Secret),
        ),
        core(
            "",
            &["v1"],
            "Event",
            "events",
            &["ev"],
            true,
            false,
            registry::Event,
        ),
        core(
            "",
            &["v1"],
            "Node",
            "nodes",
            &["no"],
            false,
            true,
            registry::Node,
        ),
        core(
            "networking.k8s.io",
            &["v1"],
            "NetworkPolicy",
            "networkpolicies",
            &["netpol"],
            true,
            false,
            registry::NetworkPolicy,
        ),
        core(
            "node.k8s.io",
            &["v1"],
            "RuntimeClass",
            "runtimeclasses",
            &[],
            false,
            false,
            registry::Generic,
        ),
        core(
            "events.k8s.io",
            &["v1"],
            "Event",
            "events",
            &["ev"],
            true,
            false,
            registry::Event,
        ),
        core(
            "discovery.k8s.io",
            &["v1"],
            "EndpointSlice",
            "endpointslices",
            &[],
            true,
            false,
            registry::EndpointSlice,
        ),
        core(
            "coordination.k8s.io",
            &["v1"],
            "Lease",
            "leases",
            &[],
            true,
            false,
            registry::Lease,
        ),
        crd,
    ]
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    Some(cur)
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Builds the served resource from a CRD object (apiextensions/v1 JSON).
pub fn from_crd(crd: &Value) -> Option<ResourceDef> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let mut versions: Vec<(bool, String, &Value)> = spec
        .get("versions")?
        .as_array()?
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|v| {
            let storage = v.get("storage").and_then(Value::as_bool).unwrap_or(false);
            Some((storage, v.get("name")?.as_str()?.to_string(), v))
        })
        .collect();
    // storage version first, then the declared order
    versions.sort_by_key(|(storage, _, _)| !storage);
    let mut scale = vec![];
    let mut columns = vec![];
    let mut deprecated = vec![];
    let mut has_status = false;
    for (_, name, v) in &versions {
        if let Some(sub) = v.get("subresources") {
            if sub.get("status").is_some() {
                has_status = true;
            }
            if let Some(sc) = sub.get("scale") {
                scale.push((
                    name.clone(),
                    ScalePaths {
                        spec_replicas: sc
                            .get("specReplicasPath")
                            .and_then(Value::as_str)
                            .unwrap_or(".spec.replicas")
                            .into(),
                        status_replicas: sc
                            .get("statusReplicasPath")
                            .and_then(Value::as_str)
                            .unwrap_or(".status.replicas")
                            .into(),
                        label_selector: sc
                            .get("labelSelectorPath")
                            .and_then(Value::as_str)
                            .map(String::from),
                    },
                ));
            }
        }
        let cols = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|c| PrinterColumn {
                        name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .into(),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        columns.push((name.clone(), cols));
        if v.get("deprecated")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            let msg = v
                .get("deprecationWarning")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or(format!(
                    "{group}/{name} {} is deprecated",
                    names.get("kind").and_then(Value::as_str).unwrap_or("")
                ));
            deprecated.push((name.clone(), msg));
        }
    }
    Some(ResourceDef {
        group,
        versions: versions.iter().map(|(_, n, _)| n.clone()).collect(),
        kind: names.get("kind")?.as_str()?.into(),
        plural: names.get("plural")?.as_str()?.into(),
        singular: get(names, &["singular"])
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| names["kind"].as_str().unwrap_or("").to_lowercase()),
        short_names: strs(names.get("shortNames")),
        categories: strs(names.get("categories")),
        namespaced: spec.get("scope").and_then(Value::as_str) == Some("Namespaced"),
        has_status,
        scale,
        columns,
        strategy: Arc::new(registry::Custom),
        read_only: false,
        deprecated,
    })
}
