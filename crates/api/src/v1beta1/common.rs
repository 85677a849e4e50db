//! Types embedded in several kinds (upstream-core §3.1): pod metadata, the pod template, PVC
//! templates and the blueprint shared by Sandbox and SandboxTemplate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, PodSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Labels and annotations for a Pod (the pod template's metadata, or a claim's
/// `additionalPodMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodMetadata {
    /// Labels for the Pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for the Pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl PodMetadata {
    /// True when there are neither labels nor annotations.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// Metadata of a PVC template: a name (required in practice), labels and annotations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmbeddedObjectMetadata {
    /// Name of the PVC template; the PVC is named `<name>-<sandbox name>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Labels for the PVC.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for the PVC.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Pod a Sandbox runs: a full PodSpec plus labels and annotations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PodTemplate {
    /// Specification of the Pod.
    pub spec: PodSpec,
    /// Labels and annotations for the Pod. System keys (`agents.x-k8s.io/*`,
    /// `extensions.agents.x-k8s.io/*`) are never copied to the Pod.
    #[serde(default)]
    pub metadata: PodMetadata,
}

/// A template for a PersistentVolumeClaim created per Sandbox.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PersistentVolumeClaimTemplate {
    /// Metadata of the PVC.
    #[serde(default)]
    pub metadata: EmbeddedObjectMetadata,
    /// Specification of the PVC.
    pub spec: PersistentVolumeClaimSpec,
}

/// Fields shared by `Sandbox.spec` and `SandboxTemplate.spec`.
///
/// (Rust has no struct embedding; the fields are repeated in both specs and this type is what
/// hashing and staleness comparisons work on.)
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxBlueprint {
    /// The Pod to run.
    pub pod_template: PodTemplate,
    /// PVCs created for the Sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaimTemplate>,
    /// nil: create no Service but keep an existing owned one; true: create or adopt a headless
    /// Service; false: delete the owned Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
}
