//! core/v1 Namespace: DNS-1123 label names, the `kubernetes` finalizer and the name label set on
//! create, the protected system namespaces, `Terminating` while its content is removed (by the
//! namespace finalizer in `gc.rs`), and its printer columns.

use serde_json::{Value, json};

use super::{Strategy, age_cell, age_column, column, name_cell, name_column, str_or};
use crate::admission::NameRule;
use crate::api::App;
use crate::error::{ApiError, ApiResult};
use crate::resources::ResourceDef;

/// The Namespace strategy.
#[derive(Debug, Default)]
pub struct Namespace;

impl Strategy for Namespace {
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn prepare_create(&self, _app: &App, _rd: &ResourceDef, obj: &mut Value) {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
        let name = obj["metadata"]["name"].clone();
        let meta = &mut obj["metadata"];
        if !meta["labels"].is_object() {
            meta["labels"] = json!({});
        }
        meta["labels"]["kubernetes.io/metadata.name"] = name;
    }

    fn check_delete(&self, name: &str) -> ApiResult<()> {
        if !matches!(name, "default" | "kube-system" | "kube-public") {
            return Ok(());
        }
        Err(ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            ),
            details: Some(json!({"name": name, "kind": "namespaces"})),
        })
    }

    fn finalized_by_server(&self, old: &Value) -> bool {
        old.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    }

    fn mark_terminating(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }

    fn converts_field_labels(&self) -> bool {
        true
    }

    fn field_pointer(&self, field: &str) -> Option<String> {
        (field == "status.phase").then(|| "/status/phase".into())
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column("Status", "string", 0, "The status of the namespace"),
            age_column(),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, obj: &Value) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(str_or(obj, "/status/phase", "")),
            age_cell(obj),
        ]
    }
}
