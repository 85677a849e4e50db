//! Which part of an object the CRD's CEL rules can see, worked out once per schema, so that
//! admission converts only that part into CEL values.
//!
//! Converting a whole object into CEL values is what CEL validation costs: a Sandbox's pod
//! template is dozens of nested maps, while upstream's only rule reads
//! `self.volumeClaimTemplates`. A [`CelPlan`] records where rules sit and which fields of their
//! node they read; [`CelPlan::project`] keeps just those fields. Two facts make this exact:
//! - a rule whose every `self`/`oldSelf` is followed by `.field` (and not by a call such as
//!   `.all(`) reads only those fields, so its result and message do not change when the other
//!   fields are left out;
//! - a transition rule (one that mentions `oldSelf`) is not evaluated without an old object
//!   (kube-apiserver skips it on create), so a create whose rules are all transition rules needs
//!   no CEL at all.
//!
//! Any rule the scanner cannot read with certainty (string forms it does not parse, escaped
//! field names, rules inside lists or maps, nested rule sites) makes the plan fall back to the
//! whole object.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// Where the CEL rules of a schema sit, and what they read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CelPlan {
    /// Rules are somewhere the plan cannot narrow: the whole object is validated.
    Whole,
    /// Every rule sits on a node reached through `properties` only.
    Sites(Vec<RuleSite>),
}

/// The rules on one schema node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuleSite {
    /// Property names from the root to the node.
    path: Vec<String>,
    /// The fields of the node the rules read; `None` when they read the node as a whole.
    fields: Option<BTreeSet<String>>,
    /// Every rule on the node mentions `oldSelf`.
    transition_only: bool,
}

impl CelPlan {
    /// Plans the rules of an OpenAPI v3 schema (as JSON).
    pub(crate) fn new(schema: &Value) -> Self {
        let mut sites = Vec::new();
        if !collect(schema, &mut Vec::new(), &mut sites) {
            return Self::Whole;
        }
        // A site inside another site's node would be cut away by the outer projection.
        let nested = sites.iter().any(|a| {
            sites
                .iter()
                .any(|b| a.path.len() > b.path.len() && a.path.starts_with(&b.path))
        });
        if nested {
            return Self::Whole;
        }
        Self::Sites(sites)
    }

    /// The parts of `obj` and `old` the rules need, or `None` when no rule applies to this
    /// request (a create with transition rules only). `Whole` plans return the objects as given.
    pub(crate) fn project<'a>(
        &self,
        obj: &'a Value,
        old: Option<&'a Value>,
    ) -> Option<(Cow<'a, Value>, Option<Cow<'a, Value>>)> {
        let sites = match self {
            Self::Whole => return Some((Cow::Borrowed(obj), old.map(Cow::Borrowed))),
            Self::Sites(sites) => sites,
        };
        let live: Vec<&RuleSite> = sites
            .iter()
            .filter(|s| old.is_some() || !s.transition_only)
            .collect();
        if live.is_empty() {
            return None;
        }
        let cut = |v: &Value| {
            let mut out = Value::Object(Map::new());
            for site in &live {
                copy_site(v, &mut out, site);
            }
            Cow::Owned(out)
        };
        Some((cut(obj), old.map(cut)))
    }
}

/// Walks `properties` from `node`, recording rule sites; `false` when a rule sits where a plan
/// cannot reach it (under `items`, `additionalProperties` or a combinator) or cannot be read.
fn collect(node: &Value, path: &mut Vec<String>, sites: &mut Vec<RuleSite>) -> bool {
    let Some(m) = node.as_object() else {
        return true;
    };
    if let Some(rules) = m.get("x-kubernetes-validations") {
        let Some(site) = read_rules(rules, path) else {
            return false;
        };
        sites.push(site);
    }
    for (key, child) in m {
        match key.as_str() {
            "properties" => {
                if let Some(props) = child.as_object() {
                    for (name, schema) in props {
                        path.push(name.clone());
                        let ok = collect(schema, path, sites);
                        path.pop();
                        if !ok {
                            return false;
                        }
                    }
                }
            }
            "x-kubernetes-validations" => {}
            _ => {
                if has_rules(child) {
                    return false;
                }
            }
        }
    }
    true
}

fn has_rules(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

fn read_rules(rules: &Value, path: &[String]) -> Option<RuleSite> {
    let mut fields = Some(BTreeSet::new());
    let mut transition_only = true;
    for rule in rules.as_array()? {
        let text = rule.get("rule")?.as_str()?;
        transition_only &= mentions(text, "oldSelf");
        for expr in [
            Some(text),
            rule.get("messageExpression").and_then(Value::as_str),
        ]
        .into_iter()
        .flatten()
        {
            match (fields.as_mut(), fields_read(expr)) {
                (Some(all), Some(read)) => all.extend(read),
                _ => fields = None,
            }
        }
    }
    Some(RuleSite {
        path: path.to_vec(),
        fields,
        transition_only,
    })
}

/// Whether `ident` occurs in `expr` as a whole identifier outside string literals.
fn mentions(expr: &str, ident: &str) -> bool {
    match identifiers(expr) {
        Some(ids) => ids.iter().any(|(id, _)| *id == ident),
        // Unreadable: assume it does (a transition rule is the safe reading for `mentions`).
        None => true,
    }
}

/// The fields of `self`/`oldSelf` that `expr` reads, when every use of either is a plain
/// field access (`self.name`, not `self`, `self[0]`, `self.all(...)` or `self.?name`).
fn fields_read(expr: &str) -> Option<BTreeSet<String>> {
    let bytes = expr.as_bytes();
    let mut fields = BTreeSet::new();
    for (id, end) in identifiers(expr)? {
        if id != "self" && id != "oldSelf" {
            continue;
        }
        if bytes.get(end) != Some(&b'.') {
            return None;
        }
        let field: String = expr[end + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // Escaped property names (`__dash__`, ...) would need unescaping: not narrowed.
        if field.is_empty()
            || field.contains("__")
            || field.starts_with(|c: char| c.is_ascii_digit())
        {
            return None;
        }
        let after = expr[end + 1 + field.len()..].trim_start();
        if after.starts_with('(') {
            return None;
        }
        fields.insert(field);
    }
    Some(fields)
}

/// The identifiers of `expr` with the byte offset just past each, skipping plain `'…'` and
/// `"…"` string literals; `None` for forms this scanner does not read (raw, bytes or
/// triple-quoted strings, an unterminated literal).
fn identifiers(expr: &str) -> Option<Vec<(&str, usize)>> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' {
            if bytes.get(i + 1) == Some(&c) && bytes.get(i + 2) == Some(&c) {
                return None;
            }
            if i > 0 && matches!(bytes[i - 1], b'r' | b'R' | b'b' | b'B') {
                return None;
            }
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return None,
                    Some(b'\\') => i += 2,
                    Some(&q) if q == c => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((&expr[start..i], i));
        } else {
            i += 1;
        }
    }
    Some(out)
}

/// Copies the node at `site.path` of `from` into `to` (creating the objects on the way),
/// keeping only `site.fields` of it when the rules read fields.
fn copy_site(from: &Value, to: &mut Value, site: &RuleSite) {
    let mut src = from;
    for key in &site.path {
        match src.get(key) {
            Some(v) => src = v,
            None => return,
        }
    }
    let value = match (&site.fields, src.as_object()) {
        (Some(fields), Some(m)) => Value::Object(
            m.iter()
                .filter(|(k, _)| fields.contains(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => src.clone(),
    };
    let Some((last, parents)) = site.path.split_last() else {
        *to = value;
        return;
    };
    let mut dst = to;
    for key in parents {
        let Some(m) = dst.as_object_mut() else {
            return;
        };
        dst = m
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(m) = dst.as_object_mut() {
        m.insert(last.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(rules: Value) -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "x-kubernetes-validations": rules, "properties": {
                "a": {"type": "string"}, "b": {"type": "object"}
            }},
            "status": {"type": "object"}
        }})
    }

    #[test]
    fn reads_plain_field_accesses() {
        assert_eq!(
            fields_read("has(self.a) == has(oldSelf.a) && self.a == 'self.x'"),
            Some(BTreeSet::from(["a".to_owned()]))
        );
        for whole in [
            "self == oldSelf",
            "self.all(k, k != '')",
            "self.a.size() > 0 && self[0] == 1",
            "self.?a.orValue('') == ''",
            "self.x__dash__y == 1",
            "r'self' == self.a",
            "'''self''' == self.a",
        ] {
            assert_eq!(fields_read(whole), None, "{whole}");
        }
        assert_eq!(
            fields_read("self.a.size() > 0"),
            Some(BTreeSet::from(["a".to_owned()]))
        );
    }

    #[test]
    fn projects_only_what_rules_read() {
        let plan = CelPlan::new(&schema(json!([
            {"rule": "has(self.a) == has(oldSelf.a)", "message": "immutable"}
        ])));
        let obj = json!({"spec": {"a": "x", "b": {"big": [1, 2, 3]}}, "status": {"s": 1}});
        // Create: a transition rule does not run.
        assert_eq!(plan.project(&obj, None), None);
        let (new, old) = plan.project(&obj, Some(&obj)).unwrap();
        assert_eq!(*new, json!({"spec": {"a": "x"}}));
        assert_eq!(old.as_deref(), Some(&json!({"spec": {"a": "x"}})));
        // An object without the node gives an empty projection.
        let bare = json!({"status": {}});
        let (new, _) = plan.project(&bare, Some(&obj)).unwrap();
        assert_eq!(*new, json!({}));
    }

    #[test]
    fn falls_back_to_the_whole_object() {
        let whole = CelPlan::new(&schema(json!([{"rule": "self == oldSelf"}])));
        let obj = json!({"spec": {"a": "x", "b": {}}});
        let (new, _) = whole.project(&obj, Some(&obj)).unwrap();
        assert_eq!(*new, obj);
        // A rule that does not mention oldSelf runs on create.
        let plain = CelPlan::new(&schema(json!([{"rule": "self.a != ''"}])));
        assert_eq!(
            *plain.project(&obj, None).unwrap().0,
            json!({"spec": {"a": "x"}})
        );
        // Rules under items cannot be narrowed.
        let listed = json!({"type": "object", "properties": {"l": {"type": "array", "items": {
            "type": "object", "x-kubernetes-validations": [{"rule": "self.a != ''"}]}}}});
        assert_eq!(CelPlan::new(&listed), CelPlan::Whole);
        // A messageExpression that reads the whole node widens the site.
        let msg = CelPlan::new(&schema(json!([
            {"rule": "self.a != ''", "messageExpression": "string(self)"}
        ])));
        let (new, _) = msg.project(&obj, None).unwrap();
        assert_eq!(*new, obj);
    }
}
