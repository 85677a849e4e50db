//! `SandboxTemplate` v1beta1 (group `extensions.agents.x-k8s.io`): a reusable Sandbox blueprint
//! plus the policies that govern claims made from it (upstream-core §3.4).

use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyIngressRule};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PersistentVolumeClaimTemplate, PodTemplate, SandboxBlueprint};

/// A reusable Sandbox blueprint.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1beta1",
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
    /// Whether Sandboxes from this template get a headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
    /// Ingress and egress rules of the managed NetworkPolicy. Unset means the secure default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// Managed: the controller owns `<template>-network-policy`; Unmanaged: it creates none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Managed"))]
    pub network_policy_management: Option<NetworkPolicyManagement>,
    /// Whether claims may set environment variables on the Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Disallowed"))]
    pub env_vars_injection_policy: Option<InjectionPolicy>,
    /// Whether claims may add volumeClaimTemplates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Disallowed"))]
    pub volume_claim_templates_policy: Option<InjectionPolicy>,
}

impl SandboxTemplateSpec {
    /// The blueprint fields of this spec.
    pub fn blueprint(&self) -> SandboxBlueprint {
        SandboxBlueprint {
            pod_template: self.pod_template.clone(),
            volume_claim_templates: self.volume_claim_templates.clone(),
            service: self.service,
        }
    }

    /// The NetworkPolicy management mode, with its default applied.
    pub fn network_policy_management(&self) -> NetworkPolicyManagement {
        self.network_policy_management.unwrap_or_default()
    }

    /// The env injection policy, with its default applied.
    pub fn env_vars_injection_policy(&self) -> InjectionPolicy {
        self.env_vars_injection_policy.unwrap_or_default()
    }

    /// The VCT policy, with its default applied.
    pub fn volume_claim_templates_policy(&self) -> InjectionPolicy {
        self.volume_claim_templates_policy.unwrap_or_default()
    }
}

/// A restricted NetworkPolicySpec: the controller manages podSelector and policyTypes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkPolicySpec {
    /// Allowed inbound traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Allowed outbound traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

/// Who manages the template's NetworkPolicy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NetworkPolicyManagement {
    /// The controller creates and updates `<template>-network-policy`.
    #[default]
    Managed,
    /// The controller creates no NetworkPolicy.
    Unmanaged,
}

/// What a claim may inject into Sandboxes of this template (env vars, or volumeClaimTemplates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InjectionPolicy {
    /// Claims may add new entries but not override the template's.
    Allowed,
    /// Claims may add and override entries.
    Overrides,
    /// Claims may not inject anything.
    #[default]
    Disallowed,
}
