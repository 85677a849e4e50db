//! `SandboxWarmPool` v1alpha1: `spec.replicas` is required and has no default, and the status has
//! no `observedGeneration`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SandboxTemplateRef;
use crate::v1beta1::UpdateStrategy;

/// A pool of pre-created Sandboxes (v1alpha1).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1alpha1",
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
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// The template pool members are made from.
    #[serde(rename = "sandboxTemplateRef")]
    pub template_ref: SandboxTemplateRef,
    /// How members are replaced when the template changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
}

/// Observed state of a v1alpha1 pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxWarmPoolStatus {
    /// Active members.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub replicas: i32,
    /// Active members with Ready=True.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub ready_replicas: i32,
    /// `agents.x-k8s.io/warm-pool-sandbox=<hash>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
}
