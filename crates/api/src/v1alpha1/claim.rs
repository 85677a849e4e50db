//! `SandboxClaim` v1alpha1: points at a template and a warm pool policy string (`default`,
//! `none` or a pool name) instead of a pool reference; it has no `volumeClaimTemplates`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1beta1::{ClaimedSandbox, EnvVar, Lifecycle, PodMetadata};

/// A request for a Sandbox (v1alpha1).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1alpha1",
    kind = "SandboxClaim",
    plural = "sandboxclaims",
    singular = "sandboxclaim",
    shortname = "sandboxclaim",
    namespaced,
    status = "SandboxClaimStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "SandboxClaim requests a Sandbox from a template."
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxClaimSpec {
    /// The template to create the Sandbox from.
    #[serde(rename = "sandboxTemplateRef")]
    pub template_ref: SandboxTemplateRef,
    /// Expiry of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// `default` (any pool of the template), `none` (always cold) or a pool name.
    #[serde(rename = "warmpool", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "default"))]
    pub warm_pool: Option<String>,
    /// Extra labels and annotations for the Pod.
    #[serde(default, skip_serializing_if = "PodMetadata::is_empty")]
    pub additional_pod_metadata: PodMetadata,
    /// Environment variables to inject.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// A reference to a SandboxTemplate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxTemplateRef {
    /// Name of the template.
    pub name: String,
}

/// Observed state of a v1alpha1 claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxClaimStatus {
    /// Ready and Finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// The Sandbox assigned to this claim.
    #[serde(default, skip_serializing_if = "ClaimedSandbox::is_empty")]
    pub sandbox: ClaimedSandbox,
}
