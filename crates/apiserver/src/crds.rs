//! The agent-sandbox CRDs as the API server serves them: the [`CrdSupport`] backed by the `api`
//! crate's registry (schemas, admission with cached CEL programs, and conversion).

use agent_sandbox_api::conversion;
use agent_sandbox_api::registry::registry;
use agent_sandbox_api::schema::AdmitError;
use serde_json::Value;

use crate::admission::CrdSupport;
use crate::error::Cause;

/// Serves `Sandbox`, `SandboxTemplate`, `SandboxClaim` and `SandboxWarmPool`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentSandboxCrds;

impl AgentSandboxCrds {
    /// The CRD support (the registry behind it is built once per process).
    pub fn new() -> Self {
        Self
    }
}

impl CrdSupport for AgentSandboxCrds {
    fn crds(&self) -> Vec<Value> {
        registry()
            .entries()
            .iter()
            .map(|e| e.json.clone())
            .collect()
    }

    fn convert(&self, obj: Value, desired_api_version: &str) -> Result<Value, String> {
        conversion::convert(obj, desired_api_version).map_err(|e| e.to_string())
    }

    fn admit(
        &self,
        crd: &Value,
        version: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Vec<String>, Vec<Cause>> {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(result) = registry().admit(name, version, obj, old) else {
            return Err(vec![Cause {
                reason: "FieldValueNotSupported".into(),
                message: format!("no schema is registered for CustomResourceDefinition {name:?}"),
                field: "apiVersion".into(),
            }]);
        };
        match result {
            Ok(admitted) => Ok(admitted.unknown_fields),
            Err(AdmitError::Invalid(errors)) => Err(errors
                .into_iter()
                .map(|e| Cause {
                    reason: e.reason.into(),
                    message: e.message,
                    field: e.field,
                })
                .collect()),
            Err(AdmitError::UnknownVersion(e)) => Err(vec![Cause {
                reason: "FieldValueNotSupported".into(),
                message: e.to_string(),
                field: "apiVersion".into(),
            }]),
        }
    }
}
