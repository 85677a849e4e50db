//! Patch application: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
//! patch for the core kinds (lists merged by their patchMergeKey, with the `$patch`,
//! `$setElementOrder`, `$deleteFromPrimitiveList` and `$retainKeys` directives kubectl sends).

use crate::error::ApiError;
use serde_json::Value;

/// The patch flavours, from the request Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply, not supported)
    Apply,
}

impl PatchType {
    /// Parses a Content-Type.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a patch body to a JSON document.
pub fn apply(doc: &Value, kind: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let mut out = doc.clone();
    match kind {
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::merge(&mut out, &p);
        }
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            json_patch::patch(&mut out, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            strategic(&mut out, &p);
        }
        PatchType::Apply => {
            return Err(ApiError::unsupported_media(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json (server-side apply is not supported by \
                 this API server; use client-side `kubectl apply` without --server-side)",
            ));
        }
    }
    Ok(out)
}

/// patchMergeKey for a list field, by field name and element shape.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "ports" => {
            if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists merged as sets.
fn primitive_merge(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Applies a strategic merge patch object onto `target`.
pub fn strategic(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let retain: Option<Vec<String>> = pm.get("$retainKeys").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    });
    for (k, pv) in pm {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(del), Some(list)) = (
                pv.as_array(),
                target.get_mut(field).and_then(Value::as_array_mut),
            ) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        let tm = target.as_object_mut().expect("object");
        if pv.is_null() {
            tm.remove(k);
            continue;
        }
        match (tm.get_mut(k), pv) {
            (Some(tv @ Value::Object(_)), Value::Object(pobj)) => {
                if pobj.get("$patch").and_then(Value::as_str) == Some("delete") {
                    tm.remove(k);
                } else {
                    strategic(tv, pv);
                }
            }
            (Some(Value::Array(tl)), Value::Array(pl)) => {
                if primitive_merge(k) {
                    for x in pl {
                        if !tl.contains(x) {
                            tl.push(x.clone());
                        }
                    }
                } else if let Some(mk) = merge_key(k, pl.first().or(tl.first())) {
                    merge_list(tl, pl, mk);
                } else {
                    *tl = pl.iter().map(strip_directives).collect();
                }
            }
            _ => {
                tm.insert(k.clone(), strip_directives(pv));
            }
        }
    }
    if let (Some(keep), Some(tm)) = (retain, target.as_object_mut()) {
        tm.retain(|k, _| keep.contains(k));
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str) {
    for pe in patch {
        let Some(kv) = pe.get(key) else {
            if pe.get("$patch").and_then(Value::as_str) == Some("replace") {
                target.clear();
            }
            continue;
        };
        let pos = target.iter().position(|t| t.get(key) == Some(kv));
        let directive = pe.get("$patch").and_then(Value::as_str);
        match (pos, directive) {
            (Some(i), Some("delete")) => {
                target.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), Some("replace")) => target[i] = strip_directives(pe),
            (Some(i), _) => strategic(&mut target[i], pe),
            (None, _) => target.push(strip_directives(pe)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_lists_by_key() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]},
            {"name": "b", "image": "y"}
        ]}, "metadata": {"finalizers": ["f1"], "labels": {"x": "1", "y": "2"}}});
        let p = json!({"spec": {"containers": [
            {"name": "a", "env": [{"name": "B", "value": "2"}]},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "z"}
        ], "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}]},
          "metadata": {"finalizers": ["f2"], "labels": {"y": null}}});
        strategic(&mut pod, &p);
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "c", "image": "z"}
            ]}, "metadata": {"finalizers": ["f1", "f2"], "labels": {"x": "1"}}})
        );
    }

    #[test]
    fn json_and_merge() {
        let d = json!({"a": {"b": 1}, "l": [1, 2]});
        let m = apply(&d, PatchType::Merge, br#"{"a":{"b":null,"c":2}}"#).unwrap();
        assert_eq!(m, json!({"a": {"c": 2}, "l": [1, 2]}));
        let j = apply(
            &d,
            PatchType::Json,
            br#"[{"op":"add","path":"/l/-","value":3}]"#,
        )
        .unwrap();
        assert_eq!(j["l"], json!([1, 2, 3]));
        assert_eq!(apply(&d, PatchType::Apply, b"{}").unwrap_err().code, 415);
    }
}
