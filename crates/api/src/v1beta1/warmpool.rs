//! `SandboxWarmPool` v1beta1 (group `extensions.agents.x-k8s.io`): a pool of ready Sandboxes
//! from one template, scaled like a ReplicaSet (upstream-core §3.6).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of pre-created Sandboxes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1beta1",
    kind = "SandboxWarmPool",
    plural = "sandboxwarmpools",
    singular = "sandboxwarmpool",
    shortname = "swp",
    namespaced,
    status = "SandboxWarmPoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "SandboxWarmPool keeps a number of ready Sandboxes from one template for claims to adopt.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxWarmPoolSpec {
    /// Number of Sandboxes to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0), extend("default" = 1))]
    pub replicas: Option<i32>,
    /// The template pool members are made from.
    #[serde(rename = "sandboxTemplateRef")]
    pub template_ref: SandboxTemplateRef,
    /// How members are replaced when the template changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
}

impl SandboxWarmPoolSpec {
    /// The replica count, with its default applied.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }

    /// The update strategy type, with its default applied (a nil strategy means OnReplenish).
    pub fn update_strategy_type(&self) -> UpdateStrategyType {
        self.update_strategy
            .as_ref()
            .and_then(|s| s.type_)
            .unwrap_or_default()
    }
}

/// A reference to a SandboxTemplate in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxTemplateRef {
    /// Name of the template.
    pub name: String,
}

/// How pool members are replaced when the template changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateStrategy {
    /// Recreate replaces stale members at once; OnReplenish replaces them as they are claimed.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "OnReplenish"))]
    pub type_: Option<UpdateStrategyType>,
}

/// Update strategy types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UpdateStrategyType {
    /// Delete stale members at once.
    Recreate,
    /// Replace stale members only as they leave the pool.
    #[default]
    OnReplenish,
}

/// Observed state of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxWarmPoolStatus {
    /// Active (non-terminating) members.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub replicas: i32,
    /// Active members with Ready=True.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub ready_replicas: i32,
    /// `agents.x-k8s.io/warm-pool-sandbox=<hash>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// The generation this status was computed from.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    #[schemars(range(min = 0))]
    pub observed_generation: i64,
}
