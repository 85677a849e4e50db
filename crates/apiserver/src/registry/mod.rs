//! One strategy per served kind: everything a kind does differently from a plain object lives in
//! its own module here, the way kube-apiserver's registry (`pkg/registry/<group>/<kind>`) keeps a
//! kind's create and update preparation, validation, deletion, field selectors, printer and
//! subresources together.
//!
//! The verbs in `api.rs` are the same for every kind (metadata, resourceVersions, finalizers,
//! conversion, the store); at each point where kinds differ they ask the resource's
//! [`Strategy`]. A kind without special behaviour uses [`Generic`]; adding a kind is a
//! `ResourceDef` in `resources.rs` plus, when it needs one, a strategy module here.

pub mod config_data;
mod custom;
mod endpointslice;
mod event;
mod generic;
mod namespace;
pub mod pod;
mod service;
mod storage;

pub use config_data::ConfigData;
pub use custom::{Crd, Custom};
pub use endpointslice::EndpointSlice;
pub use event::Event;
pub use generic::{Generic, Lease, NetworkPolicy, Node};
pub use namespace::Namespace;
pub use pod::Pod;
pub use service::Service;
pub use storage::{PersistentVolume, PersistentVolumeClaim, StorageClass};

use std::fmt;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::admission::NameRule;
use crate::api::{App, Req, Target};
use crate::error::{ApiResult, Cause};
use crate::resources::ResourceDef;

/// How one kind differs from a plain object. Every method has the plain object's behaviour as
/// its default, so a strategy states only what is special about its kind.
pub trait Strategy: Send + Sync + fmt::Debug {
    // --- names and storage ---

    /// How `metadata.name` is validated.
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// The store key of the resource; kinds served by two groups share one.
    fn storage_key(&self, rd: &ResourceDef) -> String {
        crate::error::qualified(&rd.group, &rd.plural)
    }

    /// The group whose `apiVersion` stored objects carry.
    fn storage_group<'a>(&self, rd: &'a ResourceDef) -> &'a str {
        &rd.group
    }

    /// Whether a stored object needs converting to be served in `version` (beyond its
    /// `apiVersion`, which stored objects name for the storage version).
    fn converts(&self, rd: &ResourceDef, version: &str) -> bool {
        version != rd.storage_version()
    }

    /// Converts a stored object to `version` (`apiVersion` and `kind` are set afterwards).
    fn to_external(
        &self,
        _app: &App,
        _rd: &ResourceDef,
        _version: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        Ok(obj)
    }

    /// Converts an object of `version` to the storage version.
    fn to_storage(
        &self,
        _app: &App,
        _rd: &ResourceDef,
        _version: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        Ok(obj)
    }

    // --- create and update ---

    /// Rules on the object as the client sent it, before typed decoding; `old` is the stored
    /// object (request version) on an update.
    fn admit_raw(&self, _obj: &mut Value, _old: Option<&Value>) -> Vec<Cause> {
        vec![]
    }

    /// Create-time preparation after decoding: defaults, status reset, allocations.
    fn prepare_create(&self, _app: &App, _rd: &ResourceDef, _obj: &mut Value) {}

    /// Update-time preparation of `new` against `old` (both in the request version); causes
    /// refuse the update. Warnings go to `req`.
    fn prepare_update(
        &self,
        _old: &Value,
        _new: &mut Value,
        _status_only: bool,
        _req: &mut Req,
    ) -> Vec<Cause> {
        vec![]
    }

    /// Validation of the whole object on create and update, after preparation.
    fn validate(&self, _obj: &Value) -> Vec<Cause> {
        vec![]
    }

    /// Admission against a schema (custom resources), last before the write.
    fn admit(
        &self,
        _app: &App,
        _t: &Target,
        _obj: &mut Value,
        _old: Option<&Value>,
        _req: &mut Req,
    ) -> ApiResult<()> {
        Ok(())
    }

    /// Whether `metadata.generation` is kept (1 at creation, raised by spec changes and by the
    /// start of a deletion), as kube-apiserver's strategy for the kind does.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// Whether a body of another kind is refused as an invalid `kind` field (422), as
    /// kube-apiserver validates custom resources, rather than as a bad request.
    fn validates_kind_as_field(&self) -> bool {
        false
    }

    /// Whether strategic merge patches apply (kube-apiserver refuses them for custom
    /// resources, which carry no patch strategy).
    fn strategic_merge(&self) -> bool {
        true
    }

    // --- deletion ---

    /// Refuses the deletion of `name` outright (protected objects).
    fn check_delete(&self, _name: &str) -> ApiResult<()> {
        Ok(())
    }

    /// Whether a delete that removes the object at once answers with the object (else with a
    /// `Status` naming it).
    fn returns_deleted_object(&self) -> bool {
        false
    }

    /// The grace period of a deletion of `old` with `opts` (DeleteOptions); 0 deletes at once.
    fn grace_period(&self, _old: &Value, _opts: &Value) -> i64 {
        0
    }

    /// Whether `old` must be finalized by the server before it goes (a Namespace's content).
    fn finalized_by_server(&self, _old: &Value) -> bool {
        false
    }

    /// Marks an object whose deletion has started (a Namespace's `Terminating` phase).
    fn mark_terminating(&self, _obj: &mut Value) {}

    // --- reading ---

    /// The JSON pointer of a field selector's field beyond `metadata.name` and
    /// `metadata.namespace`, which every kind supports; None refuses the field.
    fn field_pointer(&self, _field: &str) -> Option<String> {
        None
    }

    /// Whether the kind converts field labels itself (its unknown fields are "field label not
    /// supported"); kinds without their own conversion get apimachinery's default message.
    fn converts_field_labels(&self) -> bool {
        false
    }

    /// The Table columns of `kubectl get`.
    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![name_column(), age_column()]
    }

    /// One Table row's cells for `obj` (request version).
    fn cells(&self, _rd: &ResourceDef, _version: &str, obj: &Value) -> Vec<Value> {
        vec![name_cell(obj), age_cell(obj)]
    }

    /// The OpenAPI v2 definition (name, schema) of the kind, when the kind provides its own
    /// rather than the core types' (custom resources).
    fn openapi_definition(
        &self,
        _app: &App,
        _rd: &ResourceDef,
        _version: &str,
    ) -> Option<(String, Value)> {
        None
    }

    // --- subresources ---

    /// The discovery entries of the kind's connect subresources (`pods/exec`, ...).
    fn subresource_entries(&self) -> Vec<Value> {
        vec![]
    }

    /// Whether `sub` is a connect subresource of the kind that `method` reaches.
    fn connects(&self, _sub: &str, _method: &Method) -> bool {
        false
    }

    /// Serves a connect subresource for which [`Strategy::connects`] said yes.
    fn connect(&self, app: Arc<App>, t: Target, _req: Request) -> BoxFuture<'static, Response> {
        let err = crate::error::ApiError::not_found(&t.rd.group, &t.rd.plural, t.name());
        drop(app);
        Box::pin(async move { axum::response::IntoResponse::into_response(err) })
    }
}

/// A Table column definition.
pub fn column(name: &str, typ: &str, priority: i64, desc: &str) -> Value {
    json!({"name": name, "type": typ, "format": if name == "Name" { "name" } else { "" },
        "description": desc, "priority": priority})
}

/// The NAME column every kind starts with.
pub fn name_column() -> Value {
    column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    )
}

/// The AGE column.
pub fn age_column() -> Value {
    column(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    )
}

/// The NAME cell of `obj`.
pub fn name_cell(obj: &Value) -> Value {
    obj["metadata"]["name"].clone()
}

/// The AGE cell of `obj`.
pub fn age_cell(obj: &Value) -> Value {
    json!(crate::table::age(&obj["metadata"]["creationTimestamp"]))
}

/// The string at `pointer` in `obj`, or `default`.
pub fn str_or<'a>(obj: &'a Value, pointer: &str, default: &'a str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or(default)
}

/// Sets `key` of object `obj` when it is absent.
pub fn default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry(key).or_insert(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_prints_a_cell_per_column() {
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}});
        for rd in crate::resources::builtin() {
            let version = rd.storage_version().to_string();
            let columns = rd.strategy.columns(&rd, &version);
            assert_eq!(
                columns.len(),
                rd.strategy.cells(&rd, &version, &obj).len(),
                "{}",
                rd.plural
            );
        }
    }

    #[test]
    fn field_selectors_are_the_kinds_own() {
        assert_eq!(
            Pod.field_pointer("spec.nodeName").as_deref(),
            Some("/spec/nodeName")
        );
        assert_eq!(Generic.field_pointer("spec.nodeName"), None);
        assert_eq!(
            Event.field_pointer("involvedObject.name").as_deref(),
            Some("/regarding/name")
        );
    }
}
