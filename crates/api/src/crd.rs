//! The CustomResourceDefinitions, generated from the Rust types: upstream's four (upstream-core §2)
//! and this project's own `SandboxSnapshot` (one version, no conversion: step 2 and 5 do not apply).
//!
//! Each CRD is built in five steps:
//! 1. kube's derive produces one single-version CRD per Rust type;
//! 2. the two versions are merged, v1beta1 first and marked as the storage version, v1alpha1
//!    marked deprecated with upstream's warning text;
//! 3. the schemas are finished the way controller-gen finishes upstream's: `nullable` is
//!    dropped (Go pointers are not nullable), our own lists get their list types, and v1beta1
//!    Sandbox gets the CEL rule that makes `volumeClaimTemplates` immutable;
//! 4. the markers of the embedded Kubernetes types are applied (see below);
//! 5. the webhook conversion stanza is added.
//!
//! Step 4: k8s-openapi's schemas lack what controller-gen reads from the Go markers of the
//! Kubernetes types (`+listType`, `+listMapKey`, `+mapType`/`+structType`, `+default`, the
//! int-or-string and Quantity forms, `metav1.Condition`'s bounds). kube's derive inlines every
//! subschema, so its output no longer says which node is which type. schemars generates the same
//! schema a second time with every named type kept as a `$ref` to a definition named as in the
//! Kubernetes OpenAPI document (e.g. `io.k8s.api.core.v1.Container`); `typed` walks both side by
//! side and reports each node's type and field, and `markers` holds one table, a line per
//! (type, field, marker), restating the markers from the Kubernetes API types. Marking kube's own
//! output (rather than inlining ourselves) keeps every other detail of the derive unchanged.
//! Compared with upstream's controller-gen output, descriptions aside, the schemas are the same
//! (docs/api.md, "CRD schemas").
//!
//! `agent-sandbox crd` prints them; `deploy/crds/` holds the committed copies.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, ServiceReference, WebhookClientConfig,
    WebhookConversion,
};
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;
use serde_json::{Value, json};

use schemars::JsonSchema;

use crate::constants::{self, deprecation, webhook};

mod markers;
mod typed;

use crate::{extension, v1alpha1, v1beta1};
pub use markers::QUANTITY_PATTERN;
use typed::Typed;

/// The CRDs: upstream's four in file-name order (sandboxes, sandboxclaims, sandboxtemplates,
/// sandboxwarmpools), then this project's own (sandboxsnapshots).
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        sandbox(),
        sandbox_claim(),
        sandbox_template(),
        sandbox_warm_pool(),
        sandbox_snapshot(),
    ]
}

/// `sandboxsnapshots.agent-sandbox-rs.github.io`: one version, no conversion.
pub fn sandbox_snapshot() -> CustomResourceDefinition {
    let mut crd = extension::SandboxSnapshot::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).expect("schema serialises");
            finish_schema(&mut value);
            markers::apply(&mut value, &Typed::of::<extension::SandboxSnapshot>());
            *schema = serde_json::from_value(value).expect("finished schema is still a schema");
        }
    }
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    crd
}

/// `sandboxes.agents.x-k8s.io`.
pub fn sandbox() -> CustomResourceDefinition {
    let mut crd = build::<v1beta1::Sandbox, v1alpha1::Sandbox>(deprecation::SANDBOX);
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
    build::<v1beta1::SandboxTemplate, v1alpha1::SandboxTemplate>(deprecation::SANDBOX_TEMPLATE)
}

/// `sandboxclaims.extensions.agents.x-k8s.io`.
pub fn sandbox_claim() -> CustomResourceDefinition {
    build::<v1beta1::SandboxClaim, v1alpha1::SandboxClaim>(deprecation::SANDBOX_CLAIM)
}

/// `sandboxwarmpools.extensions.agents.x-k8s.io`.
pub fn sandbox_warm_pool() -> CustomResourceDefinition {
    build::<v1beta1::SandboxWarmPool, v1alpha1::SandboxWarmPool>(deprecation::SANDBOX_WARM_POOL)
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

/// Merges the CRDs of `S` (the storage version) and `D` (the deprecated one) and finishes them.
fn build<S, D>(warning: &str) -> CustomResourceDefinition
where
    S: CustomResourceExt + JsonSchema,
    D: CustomResourceExt + JsonSchema,
{
    let mut crd = merge_crds(vec![S::crd(), D::crd()], constants::STORAGE_VERSION)
        .expect("both versions describe the same kind");
    for version in &mut crd.spec.versions {
        let typed = if version.name == constants::STORAGE_VERSION {
            Typed::of::<S>()
        } else {
            Typed::of::<D>()
        };
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
            markers::apply(&mut value, &typed);
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
    if let Some(vcts) = spec.get_mut("volumeClaimTemplates") {
        vcts["x-kubernetes-list-type"] = json!("atomic");
    }
    if let Some(env) = spec.get_mut("env") {
        env["x-kubernetes-list-type"] = json!("atomic");
    }
    // Upstream's marker lists this field's values in another order than the Go constants.
    if let Some(policy) = spec.get_mut("volumeClaimTemplatesPolicy") {
        policy["enum"] = json!(["Disallowed", "Allowed", "Overrides"]);
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
