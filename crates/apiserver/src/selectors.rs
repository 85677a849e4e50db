//! Label selectors (equality- and set-based) and field selectors: parsing with kube-apiserver's
//! error messages, and matching against stored JSON objects.

use crate::error::ApiError;
use crate::resources::Special;
use serde_json::Value;
use std::collections::BTreeMap;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    /// `k=v`, `k==v`, `k in (v1,v2)`
    In(String, Vec<String>),
    /// `k!=v`, `k notin (v1,v2)`
    NotIn(String, Vec<String>),
    /// `k`
    Exists(String),
    /// `!k`
    NotExists(String),
    /// `k>n`
    Gt(String, i64),
    /// `k<n`
    Lt(String, i64),
}

/// A parsed label selector (all requirements must match).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Req>);

fn split_top(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && k.matches('/').count() <= 1
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn bad(sel: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} in selector {sel:?}"
    ))
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = vec![];
        for part in split_top(s) {
            let lower = part.as_str();
            let set_op = |op: &str| -> Option<(String, Vec<String>)> {
                let idx = lower.find(op)?;
                let key = lower[..idx].trim().to_string();
                let rest = lower[idx + op.len()..].trim();
                let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
                let vals = inner
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                Some((key, vals))
            };
            let req = if let Some((k, vals)) = set_op(" notin ") {
                Req::NotIn(k, vals)
            } else if let Some((k, vals)) = set_op(" in ") {
                Req::In(k, vals)
            } else if let Some(k) = part.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Req::NotIn(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once("==") {
                Req::In(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once('=') {
                Req::In(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once('>') {
                Req::Gt(
                    k.trim().into(),
                    v.trim().parse().map_err(|_| bad(s, "invalid integer"))?,
                )
            } else if let Some((k, v)) = part.split_once('<') {
                Req::Lt(
                    k.trim().into(),
                    v.trim().parse().map_err(|_| bad(s, "invalid integer"))?,
                )
            } else {
                Req::Exists(part.trim().to_string())
            };
            let (key, vals): (&str, &[String]) = match &req {
                Req::In(k, v) | Req::NotIn(k, v) => (k, v),
                Req::Exists(k) | Req::NotExists(k) | Req::Gt(k, _) | Req::Lt(k, _) => (k, &[]),
            };
            if !valid_key(key) {
                return Err(bad(s, &format!("invalid label key {key:?}")));
            }
            if let Some(v) = vals.iter().find(|v| !valid_value(v)) {
                return Err(bad(s, &format!("invalid label value: {v:?}")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's labels match.
    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::In(k, vals) => get(k).is_some_and(|v| vals.iter().any(|x| x == v)),
            Req::NotIn(k, vals) => get(k).is_none_or(|v| !vals.iter().any(|x| x == v)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Req::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    /// Whether an object matches.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        self.matches_labels(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }

    /// Builds a selector from a metav1.LabelSelector JSON (matchLabels and matchExpressions).
    pub fn from_label_selector(sel: &Value) -> Self {
        let mut reqs = vec![];
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Req::In(
                    k.clone(),
                    vec![v.as_str().unwrap_or("").to_string()],
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let k = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let vals: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                match e.get("operator").and_then(Value::as_str) {
                    Some("In") => reqs.push(Req::In(k, vals)),
                    Some("NotIn") => reqs.push(Req::NotIn(k, vals)),
                    Some("Exists") => reqs.push(Req::Exists(k)),
                    Some("DoesNotExist") => reqs.push(Req::NotExists(k)),
                    _ => {}
                }
            }
        }
        LabelSelector(reqs)
    }

    /// The selector as a string (`a=b,c in (d,e)`), as the scale subresource reports it.
    pub fn to_query(&self) -> String {
        self.0
            .iter()
            .map(|r| match r {
                Req::In(k, v) if v.len() == 1 => format!("{k}={}", v[0]),
                Req::In(k, v) => format!("{k} in ({})", v.join(",")),
                Req::NotIn(k, v) if v.len() == 1 => format!("{k}!={}", v[0]),
                Req::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
                Req::Exists(k) => k.clone(),
                Req::NotExists(k) => format!("!{k}"),
                Req::Gt(k, n) => format!("{k}>{n}"),
                Req::Lt(k, n) => format!("{k}<{n}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A parsed field selector: `(path, wanted, equal?)` terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(pub Vec<(String, String, bool)>);

/// Maps a field label to the JSON pointer in the stored object for a kind, or None if unsupported.
fn field_pointer(special: Special, field: &str) -> Option<String> {
    let p = match field {
        "metadata.name" => "/metadata/name".to_string(),
        "metadata.namespace" => "/metadata/namespace".to_string(),
        _ => match special {
            Special::Pod => match field {
                "status.phase"
                | "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.podIP"
                | "status.nominatedNodeName" => format!("/{}", field.replace('.', "/")),
                _ => return None,
            },
            Special::Namespace => match field {
                "status.phase" => "/status/phase".into(),
                _ => return None,
            },
            Special::Secret => match field {
                "type" => "/type".into(),
                _ => return None,
            },
            Special::Service => match field {
                "spec.clusterIP" => "/spec/clusterIP".into(),
                "spec.type" => "/spec/type".into(),
                _ => return None,
            },
            Special::Event => {
                if let Some(rest) = field.strip_prefix("involvedObject.") {
                    format!("/regarding/{rest}")
                } else if let Some(rest) = field.strip_prefix("regarding.") {
                    format!("/regarding/{rest}")
                } else {
                    match field {
                        "reason" | "type" | "reportingController" | "action" => format!("/{field}"),
                        "reportingComponent" => "/reportingController".into(),
                        "source" => "/deprecatedSource/component".into(),
                        _ => return None,
                    }
                }
            }
            _ => return None,
        },
    };
    Some(p)
}

/// kube-apiserver's refusal of a field it cannot select on: kinds with their own field label
/// conversion (and custom resources) say "field label not supported", the others fall back to
/// apimachinery's default conversion and its message.
fn unknown_field(special: Special, field: &str) -> ApiError {
    ApiError::bad_request(match special {
        Special::Pod
        | Special::Namespace
        | Special::Secret
        | Special::Service
        | Special::Event
        | Special::Custom => format!("field label not supported: {field}"),
        _ => format!(
            "{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        ),
    })
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter for a kind.
    pub fn parse(s: &str, special: Special) -> Result<Self, ApiError> {
        let mut terms = vec![];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v, eq) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let k = k.trim();
            let ptr = field_pointer(special, k).ok_or_else(|| unknown_field(special, k))?;
            terms.push((ptr, v.trim().to_string(), eq));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether an object matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(ptr, want, eq)| {
            let have = match obj.pointer(ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }

    /// The `metadata.name` this selector pins, if any (for fast lookups).
    pub fn exact_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, _, eq)| p == "/metadata/name" && *eq)
            .map(|(_, v, _)| v.as_str())
    }
}

/// A label + field selector pair.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Labels.
    pub labels: LabelSelector,
    /// Fields.
    pub fields: FieldSelector,
}

impl Selector {
    /// Whether an object matches both.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Labels as a sorted map (used in tests and printing).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "web", "tier": "fe", "n": "5"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("n>3"));
        assert!(!m("n<3"));
        assert!(m("env notin (prod)"));
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors() {
        let o =
            json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("metadata.name=p,status.phase!=Failed", Special::Pod).unwrap();
        assert!(f.matches(&o));
        assert_eq!(f.exact_name(), Some("p"));
        assert!(FieldSelector::parse("status.phase=Running", Special::None).is_err());
    }

    #[test]
    fn unknown_fields_are_refused_with_kube_apiservers_messages() {
        let msg = |s: &str, special| FieldSelector::parse(s, special).unwrap_err().message;
        assert_eq!(
            msg("data.k=v", Special::ConfigMap),
            r#""data.k" is not a known field selector: only "metadata.name", "metadata.namespace""#
        );
        assert_eq!(
            msg("spec.x=1", Special::Pod),
            "field label not supported: spec.x"
        );
        assert_eq!(
            msg("spec.x=1", Special::Custom),
            "field label not supported: spec.x"
        );
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}});
        let f = FieldSelector::parse("spec.type=ClusterIP", Special::Service).unwrap();
        assert!(f.matches(&svc));
    }
}
