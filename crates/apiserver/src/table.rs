//! Server-side printing: `meta.k8s.io/v1` Table responses for `kubectl get` from the columns
//! and cells of each kind's strategy (`registry`), and the helpers printers share: ages and
//! the JSONPath subset of additionalPrinterColumns.

use crate::api::Target;
use serde_json::{Value, json};

/// apimachinery's `duration.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    let (m, h) = (secs / 60, secs / 3600);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{hh}h", h / 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        if dy == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{dy}d", h / 24 / 365)
        }
    } else {
        format!("{}y", h / 24 / 365)
    }
}

/// The age of a timestamp (`5m`), `<unknown>` when it does not parse.
pub fn age(ts: &Value) -> String {
    ts.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| human_duration(chrono::Utc::now() - t.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|| "<unknown>".into())
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*].b`,
/// `.a[?(@.k=='v')].b`.
pub fn jsonpath(obj: &Value, path: &str) -> Vec<Value> {
    let mut cur = vec![obj.clone()];
    let p = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            cur = cur.iter().filter_map(|v| v.get(field).cloned()).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return vec![];
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .collect();
            } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, want) = match f.split_once("==") {
                    Some((k, w)) => (
                        k.trim(),
                        Some(w.trim().trim_matches(['\'', '"']).to_string()),
                    ),
                    None => (f.trim(), None),
                };
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter(|e| match (&want, e.get(k)) {
                        (Some(w), Some(Value::String(s))) => s == w,
                        (Some(w), Some(other)) => other.to_string().as_str() == w.as_str(),
                        (None, Some(_)) => true,
                        _ => false,
                    })
                    .collect();
            } else if let Ok(i) = inner.parse::<i64>() {
                cur = cur
                    .iter()
                    .filter_map(|v| {
                        let a = v.as_array()?;
                        let idx = if i < 0 { a.len() as i64 + i } else { i };
                        a.get(usize::try_from(idx).ok()?).cloned()
                    })
                    .collect();
            } else {
                return vec![];
            }
        } else {
            return vec![];
        }
    }
    cur
}

/// Values joined as kubectl joins a column's several results.
pub fn text(v: &[Value]) -> String {
    v.iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Converts an object or a list (request version) into a Table.
pub fn to_table(t: &Target, v: &Value, include: Option<&str>) -> Value {
    let defs = t.rd.strategy.columns(&t.rd, &t.version);
    let items: Vec<Value> = match v.get("items").and_then(Value::as_array) {
        Some(items) if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) => items.clone(),
        _ => vec![v.clone()],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({"cells": t.rd.strategy.cells(&t.rd, &t.version, o)});
            match include {
                Some("None") => {}
                Some("Object") => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(m) = v.get("metadata").filter(|_| v.get("items").is_some()) {
        meta = m.clone();
    } else if let Some(rv) = v.pointer("/metadata/resourceVersion") {
        meta["resourceVersion"] = rv.clone();
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True", "reason": "Ok"}]}, "spec": {"replicas": 3}});
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type=='Ready')].status"),
            vec![json!("True")]
        );
        assert_eq!(jsonpath(&o, ".spec.replicas"), vec![json!(3)]);
        assert_eq!(jsonpath(&o, ".status.conditions[*].type").len(), 2);
        assert_eq!(
            jsonpath(&o, ".status.conditions[-1].reason"),
            vec![json!("Ok")]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(chrono::Duration::seconds(5)), "5s");
        assert_eq!(human_duration(chrono::Duration::seconds(125)), "2m5s");
        assert_eq!(human_duration(chrono::Duration::seconds(3600 * 5)), "5h");
        assert_eq!(
            human_duration(chrono::Duration::seconds(3600 * 24 * 3)),
            "3d"
        );
    }
}
