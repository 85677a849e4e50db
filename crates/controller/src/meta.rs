//! Object-metadata helpers shared by every reconciler: controller references matched on
//! group+kind (never version), owner-reference construction, `created-by` normalisation, merge
//! patches of string maps with explicit nulls, and the wall clock.

use std::collections::BTreeMap;

use agent_sandbox_api::constants::{CREATED_BY_ALLOWED, CREATED_BY_UNKNOWN};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde_json::{Map, Value};

/// The current time as a `metav1.Time`.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether an update changed more than the status: the spec (seen as a new generation), or the
/// labels, annotations, owners, finalizers or deletion mark. Writes of status alone (a
/// controller's own among them) answer `false`.
pub fn spec_or_metadata_changed(old: &ObjectMeta, new: &ObjectMeta) -> bool {
    old.generation != new.generation
        || old.deletion_timestamp != new.deletion_timestamp
        || old.labels != new.labels
        || old.annotations != new.annotations
        || old.owner_references != new.owner_references
        || old.finalizers != new.finalizers
}

/// The API group of an `apiVersion` string (`""` for the core group).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Whether an owner reference points at `group`/`kind`, whatever the version.
pub fn ref_is(r: &OwnerReference, group: &str, kind: &str) -> bool {
    r.kind == kind && group_of(&r.api_version) == group
}

/// Whether the object's controller reference has this UID.
pub fn is_controlled_by_uid(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// Whether the object is controlled by `owner` (matched by UID).
pub fn is_controlled_by<K: Resource>(meta: &ObjectMeta, owner: &K) -> bool {
    owner
        .meta()
        .uid
        .as_deref()
        .is_some_and(|uid| is_controlled_by_uid(meta, uid))
}

/// A controller owner reference to `owner` (`controller: true`, `blockOwnerDeletion: true`),
/// with the owner's current apiVersion, as `SetControllerReference` writes it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Normalises a `created-by` value to the allow-list, else `unknown`.
pub fn normalize_created_by(v: &str) -> &str {
    CREATED_BY_ALLOWED
        .iter()
        .find(|a| **a == v)
        .copied()
        .unwrap_or(CREATED_BY_UNKNOWN)
}

/// A label value of an object, if present.
pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// An annotation value of an object, if present.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The JSON merge patch that turns map `old` into map `new`: changed and added keys with their
/// values, removed keys as explicit `null`. Empty when the maps are equal.
pub fn map_patch(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.insert(k.clone(), Value::String(v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: objects are diffed key by key
/// with explicit `null` for removed keys; arrays and scalars are replaced whole. `None` when equal.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_diff(ov, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        _ if old == new => None,
        _ => Some(new.clone()),
    }
}

/// Whether the object is being deleted.
pub fn is_deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn owner_refs_match_on_group_and_kind_only() {
        let r = OwnerReference {
            api_version: "extensions.agents.x-k8s.io/v1alpha1".into(),
            kind: "SandboxWarmPool".into(),
            name: "p".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        assert!(ref_is(&r, "extensions.agents.x-k8s.io", "SandboxWarmPool"));
        assert!(!ref_is(&r, "agents.x-k8s.io", "SandboxWarmPool"));
        assert!(!ref_is(&r, "extensions.agents.x-k8s.io", "SandboxClaim"));
        assert_eq!(group_of("v1"), "");
        let meta = ObjectMeta {
            owner_references: Some(vec![r]),
            ..Default::default()
        };
        assert!(is_controlled_by_uid(&meta, "u"));
        assert!(!is_controlled_by_uid(&meta, "v"));
    }

    #[test]
    fn created_by_is_normalised() {
        assert_eq!(normalize_created_by("go-client"), "go-client");
        assert_eq!(normalize_created_by("python-client"), "python-client");
        assert_eq!(normalize_created_by("controller"), "controller");
        assert_eq!(normalize_created_by("kubectl"), "unknown");
        assert_eq!(normalize_created_by(""), "unknown");
    }

    #[test]
    fn merge_diff_nulls_removed_and_replaces_arrays() {
        let old = json!({"a": 1, "b": {"c": 1, "d": 2}, "l": [1, 2]});
        let new = json!({"b": {"c": 1, "d": 3}, "l": [1], "e": "x"});
        assert_eq!(
            merge_diff(&old, &new),
            Some(json!({"a": null, "b": {"d": 3}, "l": [1], "e": "x"}))
        );
        assert_eq!(merge_diff(&old, &old), None);
    }

    #[test]
    fn map_patch_sends_nulls_for_removed_keys() {
        let old = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
        let new = BTreeMap::from([("a".to_string(), "1".to_string()), ("c".into(), "3".into())]);
        assert_eq!(
            Value::Object(map_patch(&old, &new)),
            json!({"b": null, "c": "3"})
        );
        assert!(map_patch(&old, &old).is_empty());
    }
}
