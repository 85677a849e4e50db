//! `SandboxTemplate` v1alpha1: as v1beta1 without `volumeClaimTemplatesPolicy`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1beta1::{
    InjectionPolicy, NetworkPolicyManagement, NetworkPolicySpec, PersistentVolumeClaimTemplate,
    PodTemplate,
};

/// A reusable Sandbox blueprint (v1alpha1).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1alpha1",
    kind = "SandboxTemplate",
    plural = "sandboxtemplates",
    singular = "sandboxtemplate",
    shortname = "sandboxtemplate",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    doc = "SandboxTemplate is a reusable Sandbox blueprint with the policies for claims made from it."
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTemplateSpec {
    /// The Pod to run.
    pub pod_template: PodTemplate,
    /// PVCs created for each Sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaimTemplate>,
    /// Ingress and egress rules of the managed NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// Managed or Unmanaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Managed"))]
    pub network_policy_management: Option<NetworkPolicyManagement>,
    /// Whether claims may set environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Disallowed"))]
    pub env_vars_injection_policy: Option<InjectionPolicy>,
    /// Whether Sandboxes get a headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
}
