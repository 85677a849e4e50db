//! Discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/{group}[/{version}]`), `/version`,
//! and OpenAPI v2/v3 documents enough for `kubectl apply` validation and `kubectl explain`.

use crate::api::App;
use crate::resources::ResourceDef;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "36", "gitVersion": "v1.36.0", "gitCommit": "agent-sandbox",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0",
        "compiler": "gc", "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "36",
        "minCompatibilityMajor": "1", "minCompatibilityMinor": "35"
    })
}

fn groups(app: &App) -> BTreeMap<String, Vec<String>> {
    let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &app.resources {
        if r.group.is_empty() {
            continue;
        }
        let vs = g.entry(r.group.clone()).or_default();
        for v in &r.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    g
}

/// `/api`.
pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]})
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

/// `/apis`.
pub fn api_groups(app: &App) -> Value {
    let groups: Vec<Value> = groups(app).iter().map(|(g, v)| group_doc(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`.
pub fn api_group(app: &App, group: &str) -> Option<Value> {
    let g = groups(app);
    let vs = g.get(group)?;
    let mut d = group_doc(group, vs);
    d["kind"] = json!("APIGroup");
    d["apiVersion"] = json!("v1");
    Some(d)
}

fn resource_entries(r: &ResourceDef, version: &str) -> Vec<Value> {
    let mut e = json!({
        "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
        "kind": r.kind, "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    let mut out = vec![e];
    if r.has_status {
        out.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "patch", "update"]}));
    }
    if r.scale_for(version).is_some() {
        out.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced,
            "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
    }
    out.extend(r.strategy.subresource_entries());
    out
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub fn resource_list(app: &App, group: &str, version: &str) -> Option<Value> {
    let rs: Vec<Value> = app
        .resources
        .iter()
        .filter(|r| r.group == group && r.serves(version))
        .flat_map(|r| resource_entries(r, version))
        .collect();
    if rs.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": rs}),
    )
}

fn schema_for_core(kind: &str, group: &str) -> Option<(String, Map<String, Value>)> {
    use k8s_openapi::api;
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let root = match (group, kind) {
        ("", "Pod") => generator.root_schema_for::<api::core::v1::Pod>(),
        ("", "Service") => generator.root_schema_for::<api::core::v1::Service>(),
        ("", "Namespace") => generator.root_schema_for::<api::core::v1::Namespace>(),
        ("", "PersistentVolumeClaim") => {
            generator.root_schema_for::<api::core::v1::PersistentVolumeClaim>()
        }
        ("", "PersistentVolume") => generator.root_schema_for::<api::core::v1::PersistentVolume>(),
        ("storage.k8s.io", "StorageClass") => {
            generator.root_schema_for::<api::storage::v1::StorageClass>()
        }
        ("", "Node") => generator.root_schema_for::<api::core::v1::Node>(),
        ("", "ConfigMap") => generator.root_schema_for::<api::core::v1::ConfigMap>(),
        ("", "Secret") => generator.root_schema_for::<api::core::v1::Secret>(),
        ("", "Event") => generator.root_schema_for::<api::core::v1::Event>(),
        ("events.k8s.io", "Event") => generator.root_schema_for::<api::events::v1::Event>(),
        ("networking.k8s.io", "NetworkPolicy") => {
            generator.root_schema_for::<api::networking::v1::NetworkPolicy>()
        }
        ("node.k8s.io", "RuntimeClass") => {
            generator.root_schema_for::<api::node::v1::RuntimeClass>()
        }
        ("coordination.k8s.io", "Lease") => {
            generator.root_schema_for::<api::coordination::v1::Lease>()
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            generator.root_schema_for::<api::discovery::v1::EndpointSlice>()
        }
        _ => return None,
    };
    let mut v = root.to_value();
    let defs = v
        .as_object_mut()
        .and_then(|m| {
            m.remove("components")
                .or_else(|| m.remove("$defs"))
                .or_else(|| m.remove("definitions"))
        })
        .unwrap_or(json!({}));
    let defs = defs.get("schemas").cloned().unwrap_or(defs);
    let mut all: Map<String, Value> = defs.as_object().cloned().unwrap_or_default();
    let name = root_name(group, kind);
    if let Some(m) = v.as_object_mut() {
        m.remove("$schema");
        m.remove("title");
    }
    all.insert(name.clone(), v);
    Some((name, all))
}

fn root_name(group: &str, kind: &str) -> String {
    let pkg = match group {
        "" => "core".to_string(),
        g => g.trim_end_matches(".k8s.io").replace('.', "_").to_string(),
    };
    format!("io.k8s.api.{pkg}.v1.{kind}")
}

fn fix_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(rest) = r
                    .strip_prefix("#/$defs/")
                    .or_else(|| r.strip_prefix("#/definitions/"))
            {
                *r = format!("#/components/schemas/{rest}");
            }
            for x in m.values_mut() {
                fix_refs(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(fix_refs),
        _ => {}
    }
}

/// `/openapi/v3`: the index of group-version documents.
pub fn openapi_v3_index(app: &App) -> Value {
    let mut paths = Map::new();
    paths.insert(
        "api/v1".into(),
        json!({"serverRelativeURL": "/openapi/v3/api/v1?hash=1"}),
    );
    for (g, vs) in groups(app) {
        for v in vs {
            paths.insert(
                format!("apis/{g}/{v}"),
                json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}?hash=1")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api/v1 | apis/g/v}`.
pub fn openapi_v3_doc(app: &App, group: &str, version: &str) -> Option<Value> {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    let mut any = false;
    for r in app
        .resources
        .iter()
        .filter(|r| r.group == group && r.serves(version))
    {
        any = true;
        let gvk = json!([{"group": r.group, "version": version, "kind": r.kind}]);
        let name = match r.strategy.openapi_definition(app, r, version) {
            Some((n, mut schema)) => {
                schema["x-kubernetes-group-version-kind"] = gvk.clone();
                schemas.insert(n.clone(), schema);
                n
            }
            None => {
                let Some((n, defs)) = schema_for_core(&r.kind, &r.group) else {
                    continue;
                };
                for (k, mut v) in defs {
                    fix_refs(&mut v);
                    if k == n {
                        v["x-kubernetes-group-version-kind"] = gvk.clone();
                    }
                    schemas.insert(k, v);
                }
                n
            }
        };
        let base = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let body_ref = json!({"schema": {"$ref": format!("#/components/schemas/{name}")}});
        paths.insert(path, json!({
            "get": {"operationId": format!("read{}", r.kind), "x-kubernetes-group-version-kind": gvk[0],
                "responses": {"200": {"description": "OK", "content": {"application/json": body_ref}}}},
            "patch": {"operationId": format!("patch{}", r.kind), "x-kubernetes-group-version-kind": gvk[0],
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
                ],
                "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}},
                    "application/json-patch+json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "OK", "content": {"application/json": body_ref}}}}
        }));
    }
    if !any {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
}

/// `/openapi/v2` as JSON (no definitions: client-side validation is skipped and kubectl relies
/// on server-side field validation).
pub fn openapi_v2() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.36.0"}, "paths": {}, "definitions": {}})
}
