//! The four CustomResourceDefinitions, generated from the Rust types (upstream-core §2).
//!
//! Each CRD is built in four steps:
//! 1. kube's derive produces one single-version CRD per Rust type;
//! 2. the two versions are merged, v1beta1 first and marked as the storage version, v1alpha1
//!    marked deprecated with upstream's warning text;
//! 3. the schemas are finished the way controller-gen finishes upstream's: `nullable` is
//!    dropped (Go pointers are not nullable), the PodSpec lists that Kubernetes declares as maps
//!    get their `x-kubernetes-list-type`/`x-kubernetes-list-map-keys` markers and the `TCP`
//!    protocol default their keys need, and v1beta1 Sandbox gets the CEL rule that makes
//!    `volumeClaimTemplates` immutable;
//! 4. the webhook conversion stanza is added.
//!
//! `agent-sandbox crd` prints them; `deploy/crds/` holds the committed copies.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, ServiceReference, WebhookClientConfig,
    WebhookConversion,
};
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;
use serde_json::{Value, json};

use crate::constants::{self, deprecation, webhook};
use crate::{v1alpha1, v1beta1};

/// The four CRDs in file-name order: sandboxes, sandboxclaims, sandboxtemplates,
/// sandboxwarmpools.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        sandbox(),
        sandbox_claim(),
        sandbox_template(),
        sandbox_warm_pool(),
    ]
}

/// `sandboxes.agents.x-k8s.io`.
pub fn sandbox() -> CustomResourceDefinition {
    let mut crd = build(
        v1beta1::Sandbox::crd(),
        v1alpha1::Sandbox::crd(),
        deprecation::SANDBOX,
    );
    let spec = &mut crd.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.get_mut("spec"))
        .expect("derived Sandbox schema has spec");
    spec.x_kubernetes_validations = Some(vec![
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule {
            rule: constants::VCT_IMMUTABLE_RULE.to_owned(),
            message: Some(constants::VCT_IMMUTABLE_MESSAGE.to_owned()),
            ..Default::default()
        },
    ]);
    crd
}

/// `sandboxtemplates.extensions.agents.x-k8s.io`.
pub fn sandbox_template() -> CustomResourceDefinition {
    build(
        v1beta1::SandboxTemplate::crd(),
        v1alpha1::SandboxTemplate::crd(),
        deprecation::SANDBOX_TEMPLATE,
    )
}

/// `sandboxclaims.extensions.agents.x-k8s.io`.
pub fn sandbox_claim() -> CustomResourceDefinition {
    build(
        v1beta1::SandboxClaim::crd(),
        v1alpha1::SandboxClaim::crd(),
        deprecation::SANDBOX_CLAIM,
    )
}

/// `sandboxwarmpools.extensions.agents.x-k8s.io`.
pub fn sandbox_warm_pool() -> CustomResourceDefinition {
    build(
        v1beta1::SandboxWarmPool::crd(),
        v1alpha1::SandboxWarmPool::crd(),
        deprecation::SANDBOX_WARM_POOL,
    )
}

/// The CRD serving `group`/`kind`, if it is one of ours.
pub fn find(group: &str, kind: &str) -> Option<CustomResourceDefinition> {
    all()
        .into_iter()
        .find(|c| c.spec.group == group && c.spec.names.kind == kind)
}

/// A multi-document YAML stream of `crds`, each document starting with `---`.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(crd)?);
    }
    Ok(out)
}

/// The file name a CRD is committed under in `deploy/crds/` (`<group>_<plural>.yaml`).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

fn build(
    storage: CustomResourceDefinition,
    deprecated: CustomResourceDefinition,
    warning: &str,
) -> CustomResourceDefinition {
    let mut crd = merge_crds(vec![storage, deprecated], constants::STORAGE_VERSION)
        .expect("both versions describe the same kind");
    for version in &mut crd.spec.versions {
        if version.name == constants::DEPRECATED_VERSION {
            version.deprecated = Some(true);
            version.deprecation_warning = Some(warning.to_owned());
        }
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).expect("schema serialises");
            finish_schema(&mut value);
            *schema = serde_json::from_value(value).expect("finished schema is still a schema");
        }
    }
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    crd.spec.conversion = Some(CustomResourceConversion {
        strategy: "Webhook".to_owned(),
        webhook: Some(WebhookConversion {
            conversion_review_versions: vec!["v1".to_owned(), "v1beta1".to_owned()],
            client_config: Some(WebhookClientConfig {
                service: Some(ServiceReference {
                    name: webhook::SERVICE_NAME.to_owned(),
                    namespace: webhook::SERVICE_NAMESPACE.to_owned(),
                    path: Some(webhook::PATH.to_owned()),
                    port: None,
                }),
                ..Default::default()
            }),
        }),
    });
    crd
}

/// Applies step 3 of the module docs to a root schema.
fn finish_schema(root: &mut Value) {
    strip_derive_artifacts(root);
    let root_map = root.as_object_mut().expect("root schema is an object");
    root_map.remove("title");
    let props = root_map
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("properties is an object");
    props.insert(
        "apiVersion".into(),
        json!({"type": "string", "description": API_VERSION_DOC}),
    );
    props.insert(
        "kind".into(),
        json!({"type": "string", "description": KIND_DOC}),
    );
    props.insert("metadata".into(), json!({"type": "object"}));
    let spec = &mut root["properties"]["spec"]["properties"];
    if let Some(pod_spec) = spec.pointer_mut("/podTemplate/properties/spec") {
        mark_pod_spec(pod_spec);
    }
    if let Some(vcts) = spec.get_mut("volumeClaimTemplates") {
        vcts["x-kubernetes-list-type"] = json!("atomic");
    }
    if let Some(env) = spec.get_mut("env") {
        env["x-kubernetes-list-type"] = json!("atomic");
    }
}

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values.";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. In CamelCase.";

/// Removes what the derive adds and controller-gen does not: `nullable` (Go pointers are not
/// nullable) and `default: {}` on structs that serde fills with `Default`.
fn strip_derive_artifacts(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("nullable");
            if map.get("default") == Some(&json!({})) {
                map.remove("default");
            }
            map.values_mut().for_each(strip_derive_artifacts);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_derive_artifacts),
        _ => {}
    }
}

/// Lists of a PodSpec that Kubernetes declares `listType=map`, with their keys.
const POD_SPEC_MAP_LISTS: &[(&str, &[&str])] = &[
    ("hostAliases", &["ip"]),
    ("imagePullSecrets", &["name"]),
    ("resourceClaims", &["name"]),
    ("schedulingGates", &["name"]),
    (
        "topologySpreadConstraints",
        &["topologyKey", "whenUnsatisfiable"],
    ),
    ("volumes", &["name"]),
];

/// Lists of a Container that Kubernetes declares `listType=map`, with their keys.
const CONTAINER_MAP_LISTS: &[(&str, &[&str])] = &[
    ("env", &["name"]),
    ("ports", &["containerPort", "protocol"]),
    ("volumeDevices", &["devicePath"]),
    ("volumeMounts", &["mountPath"]),
];

fn mark_map_list(list: &mut Value, keys: &[&str]) {
    list["x-kubernetes-list-type"] = json!("map");
    list["x-kubernetes-list-map-keys"] = json!(keys);
}

fn mark_pod_spec(pod_spec: &mut Value) {
    let props = &mut pod_spec["properties"];
    for (field, keys) in POD_SPEC_MAP_LISTS {
        if let Some(list) = props.get_mut(*field) {
            mark_map_list(list, keys);
        }
    }
    if let Some(claims) = props.pointer_mut("/resources/properties/claims") {
        mark_map_list(claims, &["name"]);
    }
    for containers in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(list) = props.get_mut(containers) else {
            continue;
        };
        mark_map_list(list, &["name"]);
        let container = &mut list["items"]["properties"];
        for (field, keys) in CONTAINER_MAP_LISTS {
            if let Some(l) = container.get_mut(*field) {
                mark_map_list(l, keys);
            }
        }
        if let Some(protocol) = container.pointer_mut("/ports/items/properties/protocol") {
            protocol["default"] = json!("TCP");
        }
        if let Some(claims) = container.pointer_mut("/resources/properties/claims") {
            mark_map_list(claims, &["name"]);
        }
    }
}
