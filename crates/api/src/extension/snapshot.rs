//! `SandboxSnapshot` v1alpha1 (group `agent-sandbox-rs.github.io`, this project's own kind; upstream
//! has none): a point-in-time copy of one Sandbox's state, taken and kept by the node that runs it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a snapshot: which Sandbox to copy.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agent-sandbox-rs.github.io",
    version = "v1alpha1",
    kind = "SandboxSnapshot",
    plural = "sandboxsnapshots",
    singular = "sandboxsnapshot",
    shortname = "sbsnap",
    namespaced,
    status = "SandboxSnapshotStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "SandboxSnapshot is a point-in-time copy of a Sandbox: its memory under gVisor (runsc), its writable filesystem layer and the data of its volumes.",
    printcolumn = r#"{"name":"Sandbox","type":"string","jsonPath":".spec.sandboxRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".status.kind"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.sizeBytes"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSnapshotSpec {
    /// The Sandbox to snapshot, in the snapshot's namespace.
    pub sandbox_ref: SandboxRef,
}

/// A reference to a Sandbox in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxRef {
    /// Name of the Sandbox.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Observed state of a snapshot, written by the node that takes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSnapshotStatus {
    /// Pending, InProgress, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SnapshotPhase>,
    /// Ready, with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What the snapshot holds: `Memory+Filesystem` (runsc) or `Filesystem` (runc, crun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SnapshotKind>,
    /// The runtime handler that ran the Sandbox (runc, crun, runsc).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handler: String,
    /// Bytes the snapshot takes on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// The node that holds the snapshot's files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// When the node began taking it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// When it became Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

/// The phase of a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SnapshotPhase {
    /// Accepted, not begun (waiting for the node, or for another snapshot of the same Sandbox).
    #[default]
    Pending,
    /// The node is copying.
    InProgress,
    /// Complete; its files are on the node.
    Ready,
    /// Not taken; the Ready condition's message says why. Nothing is left on the node.
    Failed,
}

impl SnapshotPhase {
    /// Whether the phase is final (Ready or Failed).
    pub fn is_final(self) -> bool {
        matches!(self, SnapshotPhase::Ready | SnapshotPhase::Failed)
    }

    /// The phase as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotPhase::Pending => "Pending",
            SnapshotPhase::InProgress => "InProgress",
            SnapshotPhase::Ready => "Ready",
            SnapshotPhase::Failed => "Failed",
        }
    }
}

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SnapshotKind {
    /// The process memory (runsc checkpoint image), the writable layer and the volumes' data.
    #[serde(rename = "Memory+Filesystem")]
    MemoryFilesystem,
    /// The writable layer of each container and the volumes' data.
    Filesystem,
}

impl SnapshotKind {
    /// The kind as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::MemoryFilesystem => "Memory+Filesystem",
            SnapshotKind::Filesystem => "Filesystem",
        }
    }
}

impl SandboxSnapshot {
    /// The phase, `Pending` when the status has none yet.
    pub fn phase(&self) -> SnapshotPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_snapshot_crd_is_one_version_in_the_project_group_without_conversion() {
        let c = crate::crd::sandbox_snapshot();
        assert_eq!(c.spec.group, "agent-sandbox-rs.github.io");
        assert_eq!(c.spec.scope, "Namespaced");
        assert_eq!(
            c.spec.names.list_kind.as_deref(),
            Some("SandboxSnapshotList")
        );
        let versions: Vec<_> = c
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.storage, v.served))
            .collect();
        assert_eq!(versions, [("v1alpha1", true, true)]);
        assert!(c.spec.conversion.is_none());
        let v = &c.spec.versions[0];
        assert!(
            v.subresources.as_ref().unwrap().status.is_some(),
            "status is a subresource"
        );
        let columns: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Sandbox", "Phase", "Kind", "Size", "Node", "Message", "Age"]
        );
    }

    #[test]
    fn a_snapshot_without_a_sandbox_name_is_refused_as_kube_apiserver_does() {
        let reg = crate::registry::registry();
        let mut obj = json!({
            "apiVersion": "agent-sandbox-rs.github.io/v1alpha1", "kind": "SandboxSnapshot",
            "metadata": {"name": "s", "namespace": "default"},
            "spec": {"sandboxRef": {"name": ""}}
        });
        let err = reg
            .admit(
                "sandboxsnapshots.agent-sandbox-rs.github.io",
                "v1alpha1",
                &mut obj,
                None,
            )
            .unwrap()
            .unwrap_err();
        let text = format!("{err:?}");
        assert!(text.contains("spec.sandboxRef.name"), "{text}");
        let mut missing = json!({
            "apiVersion": "agent-sandbox-rs.github.io/v1alpha1", "kind": "SandboxSnapshot",
            "metadata": {"name": "s", "namespace": "default"}, "spec": {}
        });
        let err = reg
            .admit(
                "sandboxsnapshots.agent-sandbox-rs.github.io",
                "v1alpha1",
                &mut missing,
                None,
            )
            .unwrap()
            .unwrap_err();
        let text = format!("{err:?}");
        assert!(text.contains("spec.sandboxRef"), "{text}");
    }
}
