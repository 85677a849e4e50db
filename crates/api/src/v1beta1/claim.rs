//! `SandboxClaim` v1beta1 (group `extensions.agents.x-k8s.io`): a request for a Sandbox from a
//! warm pool (upstream-core §3.5).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PersistentVolumeClaimTemplate, PodMetadata};

/// A request for a Sandbox.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1beta1",
    kind = "SandboxClaim",
    plural = "sandboxclaims",
    singular = "sandboxclaim",
    shortname = "sandboxclaim",
    namespaced,
    status = "SandboxClaimStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "SandboxClaim requests a Sandbox from a warm pool, adopting a warm one when it can.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Sandbox","type":"string","jsonPath":".status.sandbox.name"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxClaimSpec {
    /// The warm pool to claim from (and, through it, the template).
    pub warm_pool_ref: SandboxWarmPoolRef,
    /// Expiry of the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Extra labels and annotations for the Pod.
    #[serde(default, skip_serializing_if = "PodMetadata::is_empty")]
    pub additional_pod_metadata: PodMetadata,
    /// Environment variables to inject (forces a cold start; needs the template's policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra PVC templates (forces a cold start; needs the template's policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaimTemplate>,
}

/// A reference to a SandboxWarmPool in the claim's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxWarmPoolRef {
    /// Name of the pool.
    pub name: String,
}

/// Expiry of a claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// When the claim expires. Not propagated to the Sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// Seconds after the Finished condition before the claim expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// What happens on expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Retain"))]
    pub shutdown_policy: Option<ClaimShutdownPolicy>,
}

impl Lifecycle {
    /// The shutdown policy, with its default applied.
    pub fn shutdown_policy(&self) -> ClaimShutdownPolicy {
        self.shutdown_policy.unwrap_or_default()
    }
}

/// What happens when a claim expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClaimShutdownPolicy {
    /// Delete the claim (and, by ownership, its Sandbox) in the background.
    Delete,
    /// Delete the claim with foreground propagation.
    DeleteForeground,
    /// Keep the claim; delete its Sandbox.
    #[default]
    Retain,
}

/// An environment variable for a container of the claimed Pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Variable value.
    pub value: String,
    /// Container to set it on; empty means every container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
}

/// Observed state of a claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxClaimStatus {
    /// Ready and Finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Sandbox assigned to this claim.
    #[serde(default, skip_serializing_if = "ClaimedSandbox::is_empty")]
    pub sandbox: ClaimedSandbox,
}

/// The Sandbox a claim got.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimedSandbox {
    /// Name of the Sandbox.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Pod IPs, mirrored from the Sandbox.
    #[serde(rename = "podIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<String>,
}

impl ClaimedSandbox {
    /// True when no Sandbox is assigned.
    pub fn is_empty(&self) -> bool {
        self.name.is_empty() && self.pod_ips.is_empty()
    }
}
