//! Admission of custom objects against their CRD's structural schema, with kube-apiserver's
//! semantics and messages, so that the embedded API server and offline validation
//! (`agent-sandbox validate`) reject exactly what a cluster would.
//!
//! [`Admission::admit`] runs, in order:
//! 1. pruning: fields the schema does not declare are removed (and reported, so the caller can
//!    apply `fieldValidation=Strict|Warn|Ignore`); `null` values of non-nullable fields are
//!    dropped;
//! 2. defaulting: `default`s of absent fields are filled in, inside objects that exist;
//! 3. validation: types, `enum`, `required`, `minimum`/`maximum`, `minLength`/`maxLength`,
//!    `pattern` (compiled once per CRD), `minItems`/`maxItems`, `format: date-time`,
//!    `x-kubernetes-int-or-string` (an integer, or a string held to the string rules, as a
//!    Quantity's pattern), `anyOf` and key uniqueness of `listType=map|set`;
//! 4. CEL: `x-kubernetes-validations`, including transition rules against the old object,
//!    unless an error above is of a blocking type (required, not supported, too long, too many,
//!    wrong type), which then adds apiextensions-apiserver's "some validation rules were not
//!    checked" cause; only the fields the rules read are converted into CEL values (see
//!    `cel_plan`).
//!
//! `metadata` of the root object is left to the API server (ObjectMeta has its own rules).

use std::collections::HashSet;
use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use regex::Regex;

use crate::cel_plan::CelPlan;
use serde_json::{Map, Value};

/// Kubernetes `StatusCause` types used in field errors.
pub mod cause {
    /// A required field is missing.
    pub const REQUIRED: &str = "FieldValueRequired";
    /// A value is out of range or otherwise invalid.
    pub const INVALID: &str = "FieldValueInvalid";
    /// A value is not one of the allowed values.
    pub const NOT_SUPPORTED: &str = "FieldValueNotSupported";
    /// A value has the wrong JSON type.
    pub const TYPE_INVALID: &str = "FieldValueTypeInvalid";
    /// A list key appears twice.
    pub const DUPLICATE: &str = "FieldValueDuplicate";
    /// A field is not allowed.
    pub const FORBIDDEN: &str = "FieldValueForbidden";
    /// A string is longer than its `maxLength`.
    pub const TOO_LONG: &str = "FieldValueTooLong";
    /// A list has more items than its `maxItems`.
    pub const TOO_MANY: &str = "FieldValueTooMany";

    /// Whether an error of this type stops the CEL rules from being evaluated, as
    /// apiextensions-apiserver decides (`hasBlockingErr`).
    pub fn blocks_cel(reason: &str) -> bool {
        matches!(
            reason,
            REQUIRED | NOT_SUPPORTED | TOO_LONG | TOO_MANY | TYPE_INVALID
        )
    }
}

/// One field that failed admission, worded as kube-apiserver words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.podTemplate.spec.containers[0].name`.
    pub field: String,
    /// The `StatusCause` type (see [`cause`]).
    pub reason: &'static str,
    /// What is wrong, e.g. `Required value`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// What admission changed that the caller may need to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Paths of the unknown fields that were pruned, e.g. `spec.foo`.
    pub unknown_fields: Vec<String>,
}

/// The schemas of one CRD, prepared once and reused for every object.
pub struct Admission {
    kind: String,
    group: String,
    versions: Vec<PreparedVersion>,
}

struct PreparedVersion {
    name: String,
    schema: Value,
    cel: Option<CompiledSchema>,
    /// What of an object the CEL rules read.
    cel_plan: CelPlan,
    /// Every `pattern` of the schema, compiled.
    patterns: Patterns,
}

/// Compiled `pattern`s with their source text (a CRD has a handful: a linear search comparing
/// lengths first is cheaper than hashing the long pattern text on every string checked).
#[derive(Default)]
struct Patterns(Vec<(String, Regex)>);

impl Patterns {
    fn get(&self, pattern: &str) -> Option<&Regex> {
        self.0
            .iter()
            .find(|(p, _)| p.len() == pattern.len() && p == pattern)
            .map(|(_, re)| re)
    }
}

/// Compiles every `pattern` in `schema` (one that does not compile is left out: kube-apiserver
/// would have refused the CRD).
fn compile_patterns(schema: &Value, out: &mut Patterns) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(pattern)) = map.get("pattern")
                && out.get(pattern).is_none()
                && let Ok(re) = Regex::new(pattern)
            {
                out.0.push((pattern.clone(), re));
            }
            map.values().for_each(|v| compile_patterns(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| compile_patterns(v, out)),
        _ => {}
    }
}

/// The admission error for a version that the CRD does not serve.
#[derive(Debug, thiserror::Error)]
#[error("{kind}.{group} has no version {version:?}; served versions are {served}")]
pub struct UnknownVersion {
    /// Kind of the CRD.
    pub kind: String,
    /// Group of the CRD.
    pub group: String,
    /// The version asked for.
    pub version: String,
    /// Comma-separated served versions.
    pub served: String,
}

impl Admission {
    /// Prepares every served version of `crd`.
    pub fn new(crd: &CustomResourceDefinition) -> Self {
        let versions = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .filter_map(|v| {
                let schema = v.schema.as_ref()?.open_api_v3_schema.as_ref()?;
                let schema = serde_json::to_value(schema).expect("schemas serialise");
                let cel = has_cel_rules(&schema).then(|| compile_schema(&schema));
                let cel_plan = CelPlan::new(&schema);
                let mut patterns = Patterns::default();
                compile_patterns(&schema, &mut patterns);
                Some(PreparedVersion {
                    name: v.name.clone(),
                    schema,
                    cel,
                    cel_plan,
                    patterns,
                })
            })
            .collect();
        Self {
            kind: crd.spec.names.kind.clone(),
            group: crd.spec.group.clone(),
            versions,
        }
    }

    /// Prunes, defaults and validates `obj` (of `version`) in place; `old` is the stored object
    /// for updates (used by CEL transition rules).
    pub fn admit(
        &self,
        version: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Admitted, AdmitError> {
        let prepared = self
            .versions
            .iter()
            .find(|v| v.name == version)
            .ok_or_else(|| {
                AdmitError::UnknownVersion(UnknownVersion {
                    kind: self.kind.clone(),
                    group: self.group.clone(),
                    version: version.to_owned(),
                    served: self
                        .versions
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            })?;
        let mut walker = Walker::new(&prepared.patterns);
        walker.object(obj, &prepared.schema, "", true, old);
        let mut errors = walker.errors;
        if let Some(cel) = &prepared.cel {
            if errors.iter().any(|e| cause::blocks_cel(e.reason)) {
                // As apiextensions-apiserver: the rules are not run on an object missing
                // what they may read, and the answer says so.
                errors.push(FieldError {
                    field: "<nil>".into(),
                    reason: cause::INVALID,
                    message: "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".into(),
                });
            } else if let Some((obj, old)) = prepared.cel_plan.project(obj, old)
                // What the rules read is unchanged on this update: they held when it was
                // written (ratcheting, as for the schema walk), so they are not run again.
                && old.as_deref() != Some(&*obj)
                && let Err(errs) =
                    VALIDATOR.with(|v| v.validate_compiled(cel, &obj, old.as_deref()))
            {
                errors.extend(errs.into_vec().into_iter().map(|e| FieldError {
                    field: e.field_path.clone(),
                    reason: cause::INVALID,
                    message: format!("Invalid value: \"object\": {}", e.message),
                }));
            }
        }
        if !errors.is_empty() {
            return Err(AdmitError::Invalid(errors));
        }
        Ok(Admitted {
            unknown_fields: walker.unknown,
        })
    }
}

/// Why an object was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The version is not served.
    #[error(transparent)]
    UnknownVersion(#[from] UnknownVersion),
    /// One or more fields are invalid.
    #[error("{}", join_errors(.0))]
    Invalid(Vec<FieldError>),
}

/// Field errors joined as kube-apiserver joins them: one bare, several in brackets.
pub fn join_errors(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One-shot form of [`Admission::admit`] (prepares the CRD on every call; keep an
/// [`Admission`] for repeated use).
pub fn admit(
    crd: &CustomResourceDefinition,
    version: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<Admitted, Vec<FieldError>> {
    Admission::new(crd)
        .admit(version, obj, old)
        .map_err(|e| match e {
            AdmitError::Invalid(errors) => errors,
            AdmitError::UnknownVersion(e) => vec![FieldError {
                field: "apiVersion".to_owned(),
                reason: cause::NOT_SUPPORTED,
                message: e.to_string(),
            }],
        })
}

fn has_cel_rules(v: &Value) -> bool {
    match v {
        Value::Object(m) => {
            m.contains_key("x-kubernetes-validations") || m.values().any(has_cel_rules)
        }
        Value::Array(a) => a.iter().any(has_cel_rules),
        _ => false,
    }
}

thread_local! {
    /// A CEL validator per thread: building one registers every Kubernetes CEL function, which
    /// is too slow to do per object.
    static VALIDATOR: Validator = Validator::new();
}

struct Walker<'p> {
    errors: Vec<FieldError>,
    unknown: Vec<String>,
    patterns: &'p Patterns,
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl<'p> Walker<'p> {
    fn new(patterns: &'p Patterns) -> Self {
        Self {
            errors: Vec::new(),
            unknown: Vec::new(),
            patterns,
        }
    }

    fn error(&mut self, field: &str, reason: &'static str, message: String) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            reason,
            message,
        });
    }

    fn type_error(&mut self, path: &str, value: &Value, expected: &str) {
        let message = format!(
            "Invalid value: {actual}: {path} in body must be of type {expected}: {actual}",
            actual = shown_type(value)
        );
        self.error(path, cause::TYPE_INVALID, message);
    }

    /// Visits `value` against `schema`. `root` marks the top-level object, whose `apiVersion`,
    /// `kind` and `metadata` are the API server's business. `old` is the same place in the
    /// stored object on an update: a property equal to it there was admitted when it was
    /// written and is not walked again (validation ratcheting, as kube-apiserver does for
    /// unchanged fields), so a status write does not revisit the spec.
    fn object(
        &mut self,
        value: &mut Value,
        schema: &Value,
        path: &str,
        root: bool,
        old: Option<&Value>,
    ) {
        if schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            == Some(true)
        {
            // An integer, or a string held to the string rules (a Quantity's pattern); the
            // `anyOf: [integer, string]` beside the marker says the same.
            match &*value {
                Value::String(s) => self.string(s, schema, path),
                v if json_type(v) == "integer" => {
                    self.number(v.as_f64().unwrap_or_default(), v, schema, path);
                }
                _ => return self.type_error(path, value, "integer or string"),
            }
            return self.enumeration(value, schema, path);
        }
        if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            self.any_of(value, branches, path);
        }
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        let Some(ty) = schema.get("type").and_then(Value::as_str) else {
            return; // untyped with preserve-unknown-fields: anything goes
        };
        match ty {
            "object" => {
                let Value::Object(map) = value else {
                    return self.type_error(path, value, "object");
                };
                self.properties(map, schema, path, root, preserve, old);
            }
            "array" => {
                let Value::Array(items) = value else {
                    return self.type_error(path, value, "array");
                };
                self.array(items, schema, path);
            }
            "string" => match value {
                Value::String(s) => self.string(s, schema, path),
                _ => self.type_error(path, value, "string"),
            },
            "integer" => match value.as_f64() {
                Some(n) if value.is_i64() || value.is_u64() || n.fract() == 0.0 => {
                    self.number(n, value, schema, path)
                }
                _ => self.type_error(path, value, "integer"),
            },
            "number" => match value.as_f64() {
                Some(n) => self.number(n, value, schema, path),
                None => self.type_error(path, value, "number"),
            },
            "boolean" if !value.is_boolean() => {
                self.type_error(path, value, "boolean");
            }
            _ => {}
        }
        self.enumeration(value, schema, path);
    }

    fn properties(
        &mut self,
        map: &mut Map<String, Value>,
        schema: &Value,
        path: &str,
        root: bool,
        preserve: bool,
        old: Option<&Value>,
    ) {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        // 1. prune unknown fields and non-nullable nulls
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let sub = props.and_then(|p| p.get(&key)).or(additional);
            match sub {
                Some(sub) => {
                    let nullable = sub.get("nullable").and_then(Value::as_bool) == Some(true);
                    if map[&key].is_null() && !nullable {
                        map.remove(&key);
                    }
                }
                None if preserve => {}
                None => {
                    self.unknown.push(child_path(path, &key));
                    map.remove(&key);
                }
            }
        }
        // 2. defaults
        if let Some(props) = props {
            for (key, sub) in props {
                if let Some(default) = sub.get("default")
                    && !map.contains_key(key)
                {
                    map.insert(key.clone(), default.clone());
                }
            }
        }
        // 3. the properties, whose errors come before the object's own `required` ones, as
        //    kube-apiserver lists them
        for (key, child) in map.iter_mut() {
            if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let old_child = old.and_then(|o| o.get(key));
            if old_child == Some(&*child) {
                continue;
            }
            if let Some(sub) = props.and_then(|p| p.get(key)).or(additional) {
                self.object(child, sub, &child_path(path, key), false, old_child);
            }
        }
        // 4. required
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    self.error(
                        &child_path(path, key),
                        cause::REQUIRED,
                        "Required value".to_owned(),
                    );
                }
            }
        }
    }

    fn array(&mut self, items: &mut [Value], schema: &Value, path: &str) {
        let count = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && count < min
        {
            self.error(
                path,
                cause::INVALID,
                format!("Invalid value: {count}: {path} in body should have at least {min} items"),
            );
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && count > max
        {
            self.error(
                path,
                cause::TOO_MANY,
                format!("Too many: {count}: must have at most {max} items"),
            );
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter_mut().enumerate() {
                let p = format!("{path}[{i}]");
                if item.is_null() {
                    self.type_error(
                        &p,
                        item,
                        item_schema
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("object"),
                    );
                    continue;
                }
                self.object(item, item_schema, &p, false, None);
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Map<String, Value> = keys
                        .iter()
                        .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                        .collect();
                    let key = Value::Object(key);
                    if !seen.insert(key.to_string()) {
                        self.error(
                            &format!("{path}[{i}]"),
                            cause::DUPLICATE,
                            format!("Duplicate value: {key}"),
                        );
                    }
                }
            }
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        self.error(
                            &format!("{path}[{i}]"),
                            cause::DUPLICATE,
                            format!("Duplicate value: {item}"),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn string(&mut self, s: &str, schema: &Value, path: &str) {
        let len = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            self.error(
                path,
                cause::TOO_LONG,
                format!("Too long: may not be more than {max} bytes"),
            );
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            self.error(
                path,
                cause::INVALID,
                format!(
                    "Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                ),
            );
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
            && let Some(re) = self.patterns.get(pattern)
            && !re.is_match(s)
        {
            // kube-openapi's pattern failure, as apiextensions-apiserver words it.
            self.error(
                path,
                cause::INVALID,
                format!(
                    "Invalid value: {shown}: {path} in body should match '{pattern}'",
                    shown = Value::from(s)
                ),
            );
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time")
            && s.parse::<k8s_openapi::jiff::Timestamp>().is_err()
        {
            self.error(
                path,
                cause::INVALID,
                format!(
                    "Invalid value: \"{s}\": {path} in body must be of type date-time: \"{s}\""
                ),
            );
        }
    }

    /// `anyOf`: the value must pass at least one branch (in a structural schema the branches
    /// hold value validations only, so checking a copy is cheap and changes nothing).
    fn any_of(&mut self, value: &Value, branches: &[Value], path: &str) {
        let passes = |branch: &Value| {
            let mut walker = Walker::new(self.patterns);
            walker.object(&mut value.clone(), branch, path, false, None);
            walker.errors.is_empty()
        };
        if !branches.is_empty() && !branches.iter().any(passes) {
            self.error(
                path,
                cause::INVALID,
                format!("Invalid value: {value}: {path} must validate at least one schema (anyOf)"),
            );
        }
    }

    fn number(&mut self, n: f64, value: &Value, schema: &Value, path: &str) {
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            self.error(
                path,
                cause::INVALID,
                format!(
                    "Invalid value: {value}: {path} in body should be less than or equal to {}",
                    fmt_bound(max)
                ),
            );
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            self.error(
                path,
                cause::INVALID,
                format!(
                    "Invalid value: {value}: {path} in body should be greater than or equal to {}",
                    fmt_bound(min)
                ),
            );
        }
    }

    fn enumeration(&mut self, value: &Value, schema: &Value, path: &str) {
        let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
            return;
        };
        if !allowed.is_empty() && !allowed.contains(value) {
            let list = allowed
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            self.error(
                path,
                cause::NOT_SUPPORTED,
                format!("Unsupported value: {value}: supported values: {list}"),
            );
        }
    }
}

fn shown_type(v: &Value) -> String {
    format!("\"{}\"", json_type(v))
}

fn fmt_bound(b: f64) -> String {
    if b.fract() == 0.0 {
        format!("{}", b as i64)
    } else {
        b.to_string()
    }
}
