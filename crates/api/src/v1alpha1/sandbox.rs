//! `Sandbox` v1alpha1: `spec.replicas` (0 or 1) instead of `operatingMode`, a scale subresource,
//! no `status.nodeName` and no `volumeClaimTemplates` immutability rule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1beta1::{PersistentVolumeClaimTemplate, PodTemplate, ShutdownPolicy};

/// Desired state of a v1alpha1 Sandbox.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agents.x-k8s.io",
    version = "v1alpha1",
    kind = "Sandbox",
    plural = "sandboxes",
    singular = "sandbox",
    shortname = "sandbox",
    namespaced,
    status = "SandboxStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Sandbox is an isolated, stateful, singleton workload backed by one Pod.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// The Pod to run.
    pub pod_template: PodTemplate,
    /// PVCs created for the Sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaimTemplate>,
    /// When the Sandbox expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// What happens at shutdownTime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Retain"))]
    pub shutdown_policy: Option<ShutdownPolicy>,
    /// 1 runs the Pod, 0 suspends the Sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1), extend("default" = 1))]
    pub replicas: Option<i32>,
    /// Whether to create a headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
}

/// Observed state of a v1alpha1 Sandbox.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `<service>.<namespace>.svc.<cluster domain>` when a Service is in use.
    #[serde(
        rename = "serviceFQDN",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub service_fqdn: String,
    /// Name of the Service, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// 1 when running, 0 when suspended.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// `agents.x-k8s.io/sandbox-name-hash=<hash>`.
    #[serde(rename = "selector", default, skip_serializing_if = "String::is_empty")]
    pub label_selector: String,
    /// IPs of the owned Pod.
    #[serde(rename = "podIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<String>,
}
