//! Custom resources served from the CRDs (schema admission, conversion between versions
//! through the CRD support, status reset on create, no strategic merge, the CRD's printer
//! columns and OpenAPI schema), and the built-in CustomResourceDefinitions themselves (read
//! only but for their metadata).

use serde_json::{Value, json};

use super::{Strategy, age_cell, age_column, column, name_cell, name_column};
use crate::api::{App, Req, Target};
use crate::error::{ApiError, ApiResult, Cause};
use crate::resources::ResourceDef;

/// This project's annotations, checked as a webhook would (the CRDs stay upstream's, so the
/// schema cannot): the idle policy on the Pod metadata a kind carries, and a Sandbox's pause-at.
fn extension_causes(group: &str, kind: &str, obj: &Value) -> Vec<Cause> {
    if group != agent_sandbox_api::constants::CORE_GROUP
        && group != agent_sandbox_api::constants::EXTENSIONS_GROUP
    {
        return Vec::new();
    }
    let path = match kind {
        "Sandbox" | "SandboxTemplate" => "spec.podTemplate.metadata.annotations",
        "SandboxClaim" => "spec.additionalPodMetadata.annotations",
        _ => return Vec::new(),
    };
    let at = path.split('.').fold(obj, |v, k| &v[k]);
    let Ok(annotations) =
        serde_json::from_value::<Option<std::collections::BTreeMap<String, String>>>(at.clone())
    else {
        return Vec::new();
    };
    let mut causes = agent_sandbox_api::idle::validate(annotations.as_ref(), path);
    if kind == "Sandbox" {
        use agent_sandbox_api::constants::extensions::{annotations::PAUSE_AT, parse_pause_at};
        if let Some(Err(e)) = obj["metadata"]["annotations"][PAUSE_AT]
            .as_str()
            .map(parse_pause_at)
        {
            causes.push((format!("metadata.annotations[{PAUSE_AT}]"), e));
        }
    }
    causes
        .into_iter()
        .map(|(field, message)| Cause {
            reason: "FieldValueInvalid".into(),
            message,
            field,
        })
        .collect()
}

/// The strategy of every custom resource.
#[derive(Debug, Default)]
pub struct Custom;

impl Strategy for Custom {
    fn to_external(
        &self,
        app: &App,
        rd: &ResourceDef,
        version: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        convert(app, rd, obj, version, version)
            .map_err(|e| ApiError::internal(format!("conversion to {version} failed: {e}")))
    }

    fn to_storage(
        &self,
        app: &App,
        rd: &ResourceDef,
        version: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        convert(app, rd, obj, version, rd.storage_version())
            .map_err(|e| ApiError::bad_request(format!("conversion from {version} failed: {e}")))
    }

    /// A status sent on create is dropped when the status is a subresource.
    fn prepare_create(&self, _app: &App, rd: &ResourceDef, obj: &mut Value) {
        if rd.has_status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
    }

    /// The CRD's structural schema: pruning (unknown fields reported per `fieldValidation`),
    /// defaults, validation and CEL rules, in the request's version.
    fn admit(
        &self,
        app: &App,
        t: &Target,
        obj: &mut Value,
        old: Option<&Value>,
        req: &mut Req,
    ) -> ApiResult<()> {
        let Some(crd) = app.crd_objects.get(&t.rd.key()) else {
            return Ok(());
        };
        let invalid = |obj: &Value, causes| {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            ApiError::invalid(&t.rd.group, &t.rd.kind, &name, causes)
        };
        match app.crd.admit(crd, &t.version, obj, old) {
            Ok(unknown) => {
                let causes = extension_causes(&t.rd.group, &t.rd.kind, obj);
                if !causes.is_empty() {
                    return Err(invalid(obj, causes));
                }
                crate::api::unknown_fields(t, &unknown, req)
            }
            Err(causes) => Err(invalid(obj, causes)),
        }
    }

    fn strategic_merge(&self) -> bool {
        false
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn validates_kind_as_field(&self) -> bool {
        true
    }

    fn converts_field_labels(&self) -> bool {
        true
    }

    /// NAME, the version's `additionalPrinterColumns` (dates shown as ages), then AGE only
    /// when the CRD declares no columns, as kube-apiserver prints custom resources.
    fn columns(&self, rd: &ResourceDef, version: &str) -> Vec<Value> {
        let printer = rd.columns_for(version);
        if printer.is_empty() {
            return vec![name_column(), age_column()];
        }
        let mut cols = vec![name_column()];
        for c in printer {
            let typ = if c.type_ == "date" {
                "string"
            } else {
                c.type_.as_str()
            };
            cols.push(column(&c.name, typ, c.priority, &c.description));
        }
        cols
    }

    fn cells(&self, rd: &ResourceDef, version: &str, obj: &Value) -> Vec<Value> {
        let printer = rd.columns_for(version);
        if printer.is_empty() {
            return vec![name_cell(obj), age_cell(obj)];
        }
        let mut cells = vec![name_cell(obj)];
        for pc in printer {
            let vals = crate::table::jsonpath(obj, &pc.json_path);
            cells.push(if pc.type_ == "date" {
                vals.first()
                    .map(|v| json!(crate::table::age(v)))
                    .unwrap_or(json!("<unknown>"))
            } else if vals.is_empty() {
                Value::Null
            } else if vals.len() == 1
                && matches!(pc.type_.as_str(), "integer" | "number" | "boolean")
            {
                vals[0].clone()
            } else {
                json!(crate::table::text(&vals))
            });
        }
        cells
    }

    fn openapi_definition(
        &self,
        app: &App,
        rd: &ResourceDef,
        version: &str,
    ) -> Option<(String, Value)> {
        let crd = app.crd_objects.get(&rd.key())?;
        let schema = crd["spec"]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == version))
            .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
            .cloned()
            .unwrap_or(json!({"type": "object"}));
        let reversed: Vec<&str> = rd.group.split('.').rev().collect();
        Some((
            format!("{}.{}.{}", reversed.join("."), version, rd.kind),
            schema,
        ))
    }
}

/// `obj` converted between the storage version and a request's `version`, into `to` (one of
/// the two), through the CRD support; nothing to do when `version` is the storage version.
fn convert(
    app: &App,
    rd: &ResourceDef,
    obj: Value,
    version: &str,
    to: &str,
) -> Result<Value, String> {
    if version == rd.storage_version() {
        return Ok(obj);
    }
    app.crd.convert(obj, &rd.api_version(to))
}

/// The strategy of the built-in CustomResourceDefinitions: created with the server, never
/// deleted; writes may change their metadata (labels, annotations) and nothing else.
#[derive(Debug, Default)]
pub struct Crd;

impl Strategy for Crd {
    fn prepare_update(
        &self,
        old: &Value,
        new: &mut Value,
        _status_only: bool,
        req: &mut Req,
    ) -> Vec<Cause> {
        if new.get("spec") != old.get("spec") {
            req.warnings.push(format!(
                "{} is built into this API server; spec changes are ignored",
                old["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
        new["spec"] = old["spec"].clone();
        vec![]
    }

    fn strategic_merge(&self) -> bool {
        false
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn openapi_definition(
        &self,
        _app: &App,
        _rd: &ResourceDef,
        _version: &str,
    ) -> Option<(String, Value)> {
        Some((
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
                .into(),
            json!({"type": "object", "description": "CustomResourceDefinition represents a resource that should be exposed on the API server."}),
        ))
    }
}
