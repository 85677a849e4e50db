//! `Sandbox` v1beta1 (group `agents.x-k8s.io`): one isolated, stateful singleton backed by one Pod
//! (upstream-core §3.2).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PersistentVolumeClaimTemplate, PodTemplate, SandboxBlueprint};

/// Desired state of a Sandbox.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agents.x-k8s.io",
    version = "v1beta1",
    kind = "Sandbox",
    plural = "sandboxes",
    singular = "sandbox",
    shortname = "sandbox",
    namespaced,
    status = "SandboxStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Sandbox is an isolated, stateful, singleton workload backed by one Pod.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// The Pod to run.
    pub pod_template: PodTemplate,
    /// PVCs created for the Sandbox, named `<template name>-<sandbox name>`. Immutable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaimTemplate>,
    /// nil: create no Service but keep an existing owned one; true: create or adopt a headless
    /// Service; false: delete the owned Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
    /// When the Sandbox expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// What happens at shutdownTime: Delete removes the Sandbox; Retain keeps it with its live
    /// status cleared and Ready=False (SandboxExpired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Retain"))]
    pub shutdown_policy: Option<ShutdownPolicy>,
    /// Running keeps a Pod; Suspended deletes the Pod and keeps PVCs and the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Running"))]
    pub operating_mode: Option<OperatingMode>,
}

impl SandboxSpec {
    /// The operating mode, with its default applied.
    pub fn operating_mode(&self) -> OperatingMode {
        self.operating_mode.unwrap_or_default()
    }

    /// The shutdown policy, with its default applied.
    pub fn shutdown_policy(&self) -> ShutdownPolicy {
        self.shutdown_policy.unwrap_or_default()
    }

    /// The blueprint fields of this spec.
    pub fn blueprint(&self) -> SandboxBlueprint {
        SandboxBlueprint {
            pod_template: self.pod_template.clone(),
            volume_claim_templates: self.volume_claim_templates.clone(),
            service: self.service,
        }
    }
}

/// Whether a Sandbox keeps a running Pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OperatingMode {
    /// A Pod runs.
    #[default]
    Running,
    /// The Pod is deleted; PVCs and the Service are kept.
    Suspended,
}

/// What happens when a Sandbox reaches its shutdownTime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ShutdownPolicy {
    /// Delete the Sandbox.
    Delete,
    /// Keep the Sandbox, delete its Pod and Service, and mark it expired.
    #[default]
    Retain,
}

/// Observed state of a Sandbox.
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
    /// Suspended, PodScheduled, Finished and Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `agents.x-k8s.io/sandbox-name-hash=<hash>`; set once a Pod has been seen.
    #[serde(rename = "selector", default, skip_serializing_if = "String::is_empty")]
    pub label_selector: String,
    /// IPs of the owned Pod.
    #[serde(rename = "podIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<String>,
    /// Node of the owned Pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}
