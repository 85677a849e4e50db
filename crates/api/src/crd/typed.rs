//! Which Kubernetes type each node of a generated CRD schema describes, so that markers can be
//! attached per type and field.
//!
//! kube's derive inlines every subschema, so the schema it produces no longer says which node is
//! a `Container` and which a `Volume`. schemars can also generate the same schema with every
//! named type kept as a `$ref` to a definition named after the type (k8s-openapi names them as
//! the OpenAPI document does, e.g. `io.k8s.api.core.v1.Container`). [`walk`] visits the inlined
//! schema and that referencing schema side by side and reports, for each node of the inlined
//! one, the type it is an instance of and the field of which type it is.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};

/// The schema of `T` with every named type kept as a reference, and the definitions those
/// references point into.
pub(super) struct Typed {
    root: Value,
    definitions: Map<String, Value>,
}

impl Typed {
    /// Generates the referencing schema of `T` (no transforms: only the shape is needed).
    pub(super) fn of<T: JsonSchema>() -> Self {
        let mut generator = SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = false;
                s.meta_schema = None;
                s.transforms.clear();
            })
            .into_generator();
        let root = generator.subschema_for::<T>().to_value();
        let definitions = generator.take_definitions(false);
        Self { root, definitions }
    }
}

/// Where a node of the inlined schema sits.
#[derive(Clone, Copy, Debug)]
pub(super) enum Site<'a> {
    /// The node is an instance of the named type.
    Type(&'a str),
    /// The node is the schema of `field` of the named type.
    Field {
        /// The type that declares the field.
        owner: &'a str,
        /// The field's JSON name.
        field: &'a str,
    },
}

/// Visits `inlined` (the schema kube generated) alongside `typed` and calls `visit` for every
/// node with a known site: first as a field of its parent's type, then as an instance of its
/// own type. Nodes the two schemas do not share are not visited.
pub(super) fn walk(
    inlined: &mut Value,
    typed: &Typed,
    visit: &mut dyn FnMut(&mut Value, Site<'_>),
) {
    walk_node(inlined, &typed.root, &typed.definitions, visit);
}

fn walk_node(
    node: &mut Value,
    typed: &Value,
    definitions: &Map<String, Value>,
    visit: &mut dyn FnMut(&mut Value, Site<'_>),
) {
    let (name, typed) = resolve(typed, definitions);
    if let Some(name) = name {
        visit(node, Site::Type(name));
    }
    if let (Some(props), Some(typed_props)) = (
        node.get_mut("properties").and_then(Value::as_object_mut),
        typed.get("properties").and_then(Value::as_object),
    ) {
        for (field, child) in props.iter_mut() {
            let Some(typed_child) = typed_props.get(field) else {
                continue;
            };
            if let Some(owner) = name {
                visit(child, Site::Field { owner, field });
            }
            walk_node(child, typed_child, definitions, visit);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let (Some(child), Some(typed_child)) = (node.get_mut(key), typed.get(key))
            && child.is_object()
        {
            walk_node(child, typed_child, definitions, visit);
        }
    }
}

/// Follows a reference (also one wrapped as `anyOf: [ref, null]` for an `Option`) to its
/// definition, returning the definition's name.
fn resolve<'a>(
    typed: &'a Value,
    definitions: &'a Map<String, Value>,
) -> (Option<&'a str>, &'a Value) {
    let reference = typed.get("$ref").and_then(Value::as_str).or_else(|| {
        let any_of = typed.get("anyOf")?.as_array()?;
        let mut refs = any_of.iter().filter_map(|s| s.get("$ref")?.as_str());
        let only = refs.next()?;
        let rest_null = any_of
            .iter()
            .all(|s| s.get("$ref").is_some() || s.get("type") == Some(&Value::from("null")));
        (refs.next().is_none() && rest_null).then_some(only)
    });
    let Some(name) = reference.and_then(|r| r.rsplit('/').next()) else {
        return (None, typed);
    };
    match definitions.get(name) {
        Some(definition) => (Some(name), definition),
        None => (None, typed),
    }
}
