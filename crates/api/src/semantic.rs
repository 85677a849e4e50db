//! Semantic equality with `equality.Semantic.DeepEqual` meaning (upstream-core §17.11), used for
//! staleness checks, skipping no-op status writes and NetworkPolicy drift.
//!
//! Values are compared in their JSON form, which makes the rules easy to state:
//! - `null`, an empty array and an object whose fields are all empty equal an absent field (Go's
//!   `omitempty` and nil-versus-empty collections; a JSON form cannot tell a nil struct pointer
//!   from a pointer to an empty struct, and the two behave the same in every field we compare);
//! - resource quantities (values of `limits`, `requests`, `overhead`, `capacity`, `allocatable`,
//!   and `sizeLimit`) compare by value, so `1Gi` equals `1024Mi`;
//! - timestamps (fields named `*Time` or `*Timestamp`) compare as instants;
//! - everything else compares exactly, including `false` versus absent (nil pointers differ from
//!   pointers to zero values).

use serde::Serialize;
use serde_json::Value;

use crate::quantity::Quantity;

/// Whether `a` and `b` are semantically equal once serialised.
pub fn eq<T: Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => eq_json(&a, &b),
        _ => false,
    }
}

/// Whether two JSON values are semantically equal (see the module docs for the rules).
pub fn eq_json(a: &Value, b: &Value) -> bool {
    eq_at(a, b, FieldKind::Plain)
}

/// What kind of field a value sits in, which decides how strings compare.
#[derive(Clone, Copy, PartialEq)]
enum FieldKind {
    Plain,
    QuantityMap,
    Quantity,
    Time,
}

fn kind_of(key: &str) -> FieldKind {
    match key {
        "limits" | "requests" | "overhead" | "capacity" | "allocatable" => FieldKind::QuantityMap,
        "sizeLimit" => FieldKind::Quantity,
        k if k.ends_with("Time") || k.ends_with("Timestamp") => FieldKind::Time,
        _ => FieldKind::Plain,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

fn eq_at(a: &Value, b: &Value, kind: FieldKind) -> bool {
    // Equal values are equal under every rule: the common case costs one comparison.
    if a == b || (is_empty(a) && is_empty(b)) {
        return true;
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let child = |key: &str| match kind {
                FieldKind::QuantityMap => FieldKind::Quantity,
                _ => kind_of(key),
            };
            fn present<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a Value> {
                o.get(k).filter(|v| !is_empty(v))
            }
            a.keys()
                .chain(b.keys())
                .all(|k| match (present(a, k), present(b, k)) {
                    (None, None) => true,
                    (Some(x), Some(y)) => eq_at(x, y, child(k)),
                    _ => false,
                })
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| eq_at(x, y, kind))
        }
        (Value::String(x), Value::String(y)) if x != y => match kind {
            FieldKind::Quantity => matches!(
                (x.parse::<Quantity>(), y.parse::<Quantity>()),
                (Ok(p), Ok(q)) if p == q
            ),
            FieldKind::Time => matches!(
                (x.parse::<k8s_openapi::jiff::Timestamp>(), y.parse::<k8s_openapi::jiff::Timestamp>()),
                (Ok(p), Ok(q)) if p == q
            ),
            _ => false,
        },
        // Numbers in quantity positions may arrive as JSON numbers.
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n))
            if kind == FieldKind::Quantity =>
        {
            matches!((n.to_string().parse::<Quantity>(), s.parse::<Quantity>()), (Ok(p), Ok(q)) if p == q)
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_collections_equal_absent() {
        assert!(eq_json(&json!({"a": [], "b": {}, "c": null}), &json!({})));
        assert!(eq_json(&json!({"x": {"labels": {}}}), &json!({"x": {}})));
        assert!(!eq_json(&json!({"a": [1]}), &json!({})));
    }

    #[test]
    fn false_differs_from_absent() {
        assert!(!eq_json(&json!({"service": false}), &json!({})));
        assert!(!eq_json(&json!({"n": 0}), &json!({})));
    }

    #[test]
    fn quantities_by_value() {
        let a = json!({"resources": {"limits": {"memory": "1Gi", "cpu": "500m"}}});
        let b = json!({"resources": {"limits": {"memory": "1024Mi", "cpu": "0.5"}}});
        assert!(eq_json(&a, &b));
        let c = json!({"resources": {"limits": {"memory": "1G"}}});
        assert!(!eq_json(
            &json!({"resources": {"limits": {"memory": "1Gi"}}}),
            &c
        ));
        assert!(eq_json(
            &json!({"emptyDir": {"sizeLimit": "1k"}}),
            &json!({"emptyDir": {"sizeLimit": "1000"}})
        ));
        assert!(eq_json(
            &json!({"requests": {"cpu": 1}}),
            &json!({"requests": {"cpu": "1000m"}})
        ));
    }

    #[test]
    fn quantity_rule_does_not_leak_to_other_strings() {
        assert!(!eq_json(
            &json!({"env": [{"value": "1"}]}),
            &json!({"env": [{"value": "1.0"}]})
        ));
    }

    #[test]
    fn times_as_instants() {
        assert!(eq_json(
            &json!({"shutdownTime": "2026-01-01T00:00:00Z"}),
            &json!({"shutdownTime": "2026-01-01T01:00:00+01:00"})
        ));
        assert!(!eq_json(
            &json!({"shutdownTime": "2026-01-01T00:00:00Z"}),
            &json!({"shutdownTime": "2026-01-01T00:00:01Z"})
        ));
    }

    #[test]
    fn arrays_are_ordered() {
        assert!(!eq_json(&json!([1, 2]), &json!([2, 1])));
    }
}
