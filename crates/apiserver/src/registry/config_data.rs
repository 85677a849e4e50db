//! core/v1 ConfigMap and Secret: their strategy, and their admission: `stringData` folded into `data`, the `Opaque` type
//! default, the key, base64 and size rules, the keys typed Secrets require, and `type` and
//! `immutable` on update, with kube-apiserver's messages.
//!
//! [`admit`] runs on the object as the client sent it (after a patch is applied), before the
//! typed decoding: a value of the wrong JSON type is left alone here so that decoding reports it.

use super::{Strategy, age_cell, age_column, column, name_cell, name_column};
use crate::error::Cause;
use crate::resources::ResourceDef;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// kube-apiserver's limit on the total size of a ConfigMap's or a Secret's data (1 MiB).
pub const MAX_SIZE: usize = 1024 * 1024;

const KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const IMMUTABLE_MSG: &str = "field is immutable when `immutable` is set";
const REDACTED: &str = "<secret contents redacted>";

/// The kinds this module admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// core/v1 ConfigMap.
    ConfigMap,
    /// core/v1 Secret.
    Secret,
}

/// The ConfigMap and Secret strategy.
#[derive(Debug)]
pub struct ConfigData(pub Kind);

impl Strategy for ConfigData {
    fn admit_raw(&self, obj: &mut Value, old: Option<&Value>) -> Vec<Cause> {
        admit(self.0, obj, old)
    }

    fn converts_field_labels(&self) -> bool {
        self.0 == Kind::Secret
    }

    fn field_pointer(&self, field: &str) -> Option<String> {
        (self.0 == Kind::Secret && field == "type").then(|| "/type".into())
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        match self.0 {
            Kind::ConfigMap => vec![
                name_column(),
                column(
                    "Data",
                    "string",
                    0,
                    "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
                ),
                age_column(),
            ],
            Kind::Secret => vec![
                name_column(),
                column(
                    "Type",
                    "string",
                    0,
                    "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
                ),
                column(
                    "Data",
                    "string",
                    0,
                    "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
                ),
                age_column(),
            ],
        }
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, obj: &Value) -> Vec<Value> {
        let keys = |field: &str| {
            obj.get(field)
                .and_then(Value::as_object)
                .map_or(0, Map::len)
        };
        match self.0 {
            Kind::ConfigMap => vec![
                name_cell(obj),
                json!(keys("data") + keys("binaryData")),
                age_cell(obj),
            ],
            Kind::Secret => vec![
                name_cell(obj),
                json!(obj["type"].as_str().unwrap_or("")),
                json!(keys("data")),
                age_cell(obj),
            ],
        }
    }
}

/// Normalises `obj` (a v1 ConfigMap or Secret) and validates it; `old` is the stored object on
/// an update. A Secret's `stringData` is merged into `data` (it wins for a key in both) and
/// removed, and its `type` defaults to `Opaque`. Returns the field errors; none means admitted.
pub fn admit(kind: Kind, obj: &mut Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = vec![];
    match kind {
        Kind::Secret => {
            fold_string_data(obj);
            default_type(obj);
            if let Some(old) = old {
                let (new_type, old_type) = (&obj["type"], &old["type"]);
                if new_type.is_string() && new_type != old_type {
                    causes.push(invalid(
                        "type",
                        new_type.as_str().unwrap_or_default(),
                        "field is immutable",
                    ));
                }
            }
        }
        Kind::ConfigMap => {}
    }
    if let Some(old) = old {
        causes.extend(immutable(kind, obj, old));
    }
    causes.extend(match kind {
        Kind::Secret => validate_secret(obj),
        Kind::ConfigMap => validate_config_map(obj),
    });
    causes
}

/// The messages for a ConfigMap or Secret data key (apimachinery's `IsConfigMapKey`).
pub fn key_errors(key: &str) -> Vec<&'static str> {
    let mut out = vec![];
    if key.len() > 253 {
        out.push("must be no more than 253 characters");
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        out.push(KEY_MSG);
    }
    if key == "." {
        out.push("must not be '.'");
    } else if key == ".." {
        out.push("must not be '..'");
    } else if key.starts_with("..") {
        out.push("must not start with '..'");
    }
    out
}

/// Moves `stringData` into `data` as base64. Left alone when either is not a map of strings
/// (the typed decoding then refuses the object with the type error).
fn fold_string_data(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    match m.get("stringData") {
        None => return,
        Some(Value::Null) => {
            m.remove("stringData");
            return;
        }
        Some(Value::Object(sd)) if sd.values().all(Value::is_string) => {}
        Some(_) => return,
    }
    if !matches!(m.get("data"), None | Some(Value::Null | Value::Object(_))) {
        return;
    }
    let Some(Value::Object(string_data)) = m.remove("stringData") else {
        return;
    };
    let data = m.entry("data").or_insert(Value::Null);
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            let encoded = STANDARD.encode(v.as_str().unwrap_or_default());
            data.insert(k, json!(encoded));
        }
    }
}

/// `type` defaults to `Opaque` (when absent, null or empty).
fn default_type(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut()
        && m.get("type").is_none_or(|t| t.is_null() || t == "")
    {
        m.insert("type".into(), json!("Opaque"));
    }
}

fn map<'a>(obj: &'a Value, field: &str) -> Option<&'a Map<String, Value>> {
    obj.get(field).and_then(Value::as_object)
}

/// Checks the keys of `field` and decodes its base64 values; returns the total decoded size and
/// the decoded values (of the string values that are valid base64).
fn check_base64_map(
    obj: &Value,
    field: &str,
    redact: bool,
    causes: &mut Vec<Cause>,
) -> (usize, Vec<(String, Vec<u8>)>) {
    let mut size = 0;
    let mut decoded = vec![];
    for (k, v) in map(obj, field).into_iter().flatten() {
        check_key(field, k, causes);
        let Some(s) = v.as_str() else {
            continue;
        };
        match STANDARD.decode(s) {
            Ok(bytes) => {
                size += bytes.len();
                decoded.push((k.clone(), bytes));
            }
            Err(e) => {
                let shown = if redact {
                    REDACTED.to_string()
                } else {
                    truncated(s)
                };
                let hint = if redact {
                    "values in data must be base64-encoded; put plain text in stringData instead"
                } else {
                    "values in binaryData must be base64-encoded; put text in data instead"
                };
                causes.push(invalid(
                    &format!("{field}[{k}]"),
                    &shown,
                    &format!("{}; {hint}", base64_error(&e)),
                ));
            }
        }
    }
    (size, decoded)
}

fn validate_secret(obj: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    let (size, decoded) = check_base64_map(obj, "data", true, &mut causes);
    if size > MAX_SIZE {
        causes.push(too_long("data"));
    }
    let has = |k: &str| map(obj, "data").is_some_and(|d| d.contains_key(k));
    match obj.get("type").and_then(Value::as_str) {
        Some("kubernetes.io/tls") => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    causes.push(required(&format!("data[{k}]")));
                }
            }
        }
        Some("kubernetes.io/dockerconfigjson") => {
            const KEY: &str = ".dockerconfigjson";
            if !has(KEY) {
                causes.push(required(&format!("data[{KEY}]")));
            } else if let Some((_, bytes)) = decoded.iter().find(|(k, _)| k == KEY)
                && let Err(e) = serde_json::from_slice::<Map<String, Value>>(bytes)
            {
                causes.push(invalid(
                    &format!("data[{KEY}]"),
                    REDACTED,
                    &format!("{e}; it must be a JSON object (a docker config.json)"),
                ));
            }
        }
        _ => {}
    }
    causes
}

fn validate_config_map(obj: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    let (data, binary) = (map(obj, "data"), map(obj, "binaryData"));
    let mut size = 0;
    for (k, v) in data.into_iter().flatten() {
        check_key("data", k, &mut causes);
        if binary.is_some_and(|b| b.contains_key(k)) {
            causes.push(invalid(
                &format!("data[{k}]"),
                k,
                "duplicate of key present in binaryData",
            ));
        }
        size += v.as_str().map_or(0, str::len);
    }
    for k in binary.into_iter().flatten().map(|(k, _)| k) {
        if data.is_some_and(|d| d.contains_key(k)) {
            causes.push(invalid(
                &format!("binaryData[{k}]"),
                k,
                "duplicate of key present in data",
            ));
        }
    }
    let (binary_size, _) = check_base64_map(obj, "binaryData", false, &mut causes);
    if size + binary_size > MAX_SIZE {
        // kube-apiserver reports the whole object, which prints as `[]`.
        causes.push(too_long("[]"));
    }
    causes
}

/// The update rules of `immutable: true`: the data fields may not change and `immutable` may
/// not be unset.
fn immutable(kind: Kind, new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return causes;
    }
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        causes.push(forbidden("immutable", IMMUTABLE_MSG));
    }
    let fields: &[&str] = match kind {
        Kind::Secret => &["data"],
        Kind::ConfigMap => &["data", "binaryData"],
    };
    for f in fields {
        // Absent, null and empty are the same map.
        let empty = Map::new();
        let a = map(old, f).unwrap_or(&empty);
        let b = map(new, f).unwrap_or(&empty);
        if a != b {
            causes.push(forbidden(f, IMMUTABLE_MSG));
        }
    }
    causes
}

fn check_key(field: &str, key: &str, causes: &mut Vec<Cause>) {
    for msg in key_errors(key) {
        causes.push(invalid(&format!("{field}[{key}]"), key, msg));
    }
}

fn base64_error(e: &base64::DecodeError) -> String {
    use base64::DecodeError as E;
    match e {
        E::InvalidByte(at, _) | E::InvalidLastSymbol(at, _) => {
            format!("illegal base64 data at input byte {at}")
        }
        E::InvalidLength(_) => "illegal base64 data: the last group of 4 is incomplete".into(),
        E::InvalidPadding => "illegal base64 data: '=' padding missing or misplaced".into(),
    }
}

fn truncated(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn invalid(field: &str, value: &str, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {value:?}: {msg}"),
        field: field.into(),
    }
}

fn forbidden(field: &str, msg: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden".into(),
        message: format!("Forbidden: {msg}"),
        field: field.into(),
    }
}

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        message: "Required value".into(),
        field: field.into(),
    }
}

fn too_long(field: &str) -> Cause {
    Cause {
        reason: "FieldValueTooLong".into(),
        message: format!("Too long: must have at most {MAX_SIZE} bytes"),
        field: field.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn string_data_is_folded_into_data_and_wins() {
        let mut s = json!({
            "metadata": {"name": "s"},
            "data": {"a": b64("old"), "b": b64("kept")},
            "stringData": {"a": "new", "c": "añ"},
        });
        assert!(admit(Kind::Secret, &mut s, None).is_empty());
        assert_eq!(s.get("stringData"), None);
        assert_eq!(
            s["data"],
            json!({"a": b64("new"), "b": b64("kept"), "c": b64("añ")})
        );
        assert_eq!(s["type"], json!("Opaque"));
        // stringData alone, and a null stringData.
        let mut s = json!({"stringData": {"k": "v"}, "type": ""});
        assert!(admit(Kind::Secret, &mut s, None).is_empty());
        assert_eq!(s["data"], json!({"k": "dg=="}));
        assert_eq!(s["type"], json!("Opaque"));
        let mut s = json!({"stringData": null, "data": null});
        assert!(admit(Kind::Secret, &mut s, None).is_empty());
        assert_eq!(s, json!({"data": null, "type": "Opaque"}));
        // A type error is left to the typed decoding.
        let mut s = json!({"stringData": {"k": 1}});
        admit(Kind::Secret, &mut s, None);
        assert_eq!(s["stringData"], json!({"k": 1}));
    }

    #[test]
    fn keys() {
        assert!(key_errors("a.b-c_D9").is_empty());
        assert!(key_errors(".hidden").is_empty());
        assert_eq!(key_errors("a b"), vec![KEY_MSG]);
        assert_eq!(key_errors(""), vec![KEY_MSG]);
        assert_eq!(key_errors("a/b"), vec![KEY_MSG]);
        assert_eq!(key_errors(".."), vec!["must not be '..'"]);
        assert_eq!(key_errors("..a"), vec!["must not start with '..'"]);
        assert_eq!(key_errors("."), vec!["must not be '.'"]);
        assert_eq!(
            key_errors(&"k".repeat(254)),
            vec!["must be no more than 253 characters"]
        );
        let mut s = json!({"data": {"bad key": b64("v")}});
        let c = admit(Kind::Secret, &mut s, None);
        assert_eq!(fields(&c), vec!["data[bad key]"]);
        assert_eq!(
            c[0].message,
            format!("Invalid value: \"bad key\": {KEY_MSG}")
        );
        let mut cm = json!({"data": {"ok": "1"}, "binaryData": {"no/pe": b64("x")}});
        assert_eq!(
            fields(&admit(Kind::ConfigMap, &mut cm, None)),
            vec!["binaryData[no/pe]"]
        );
    }

    #[test]
    fn base64_values() {
        let mut s = json!({"data": {"k": "not base64!", "ok": b64("v")}});
        let c = admit(Kind::Secret, &mut s, None);
        assert_eq!(fields(&c), vec!["data[k]"]);
        assert!(
            c[0].message.starts_with(
                "Invalid value: \"<secret contents redacted>\": illegal base64 data at input byte 3"
            ),
            "{}",
            c[0].message
        );
        assert!(c[0].message.contains("stringData"), "{}", c[0].message);
        // Missing padding is refused as the typed decoding would refuse it.
        let mut s = json!({"data": {"k": "dg"}});
        assert_eq!(fields(&admit(Kind::Secret, &mut s, None)), vec!["data[k]"]);
        let mut cm = json!({"binaryData": {"b": "%%%"}});
        let c = admit(Kind::ConfigMap, &mut cm, None);
        assert_eq!(fields(&c), vec!["binaryData[b]"]);
        assert!(c[0].message.contains("\"%%%\""), "{}", c[0].message);
    }

    #[test]
    fn sizes() {
        let big = "x".repeat(MAX_SIZE);
        let mut s = json!({"stringData": {"a": big}});
        assert!(admit(Kind::Secret, &mut s, None).is_empty());
        let mut s = json!({"stringData": {"a": big, "b": "y"}});
        let c = admit(Kind::Secret, &mut s, None);
        assert_eq!(fields(&c), vec!["data"]);
        assert_eq!(c[0].message, "Too long: must have at most 1048576 bytes");
        // A ConfigMap counts data and binaryData together.
        let mut cm =
            json!({"data": {"a": "x".repeat(MAX_SIZE - 1)}, "binaryData": {"b": b64("yz")}});
        let c = admit(Kind::ConfigMap, &mut cm, None);
        assert_eq!(fields(&c), vec!["[]"]);
        assert_eq!(c[0].reason, "FieldValueTooLong");
    }

    #[test]
    fn config_map_key_in_both_maps() {
        let mut cm = json!({"data": {"k": "1"}, "binaryData": {"k": b64("1")}});
        let c = admit(Kind::ConfigMap, &mut cm, None);
        assert_eq!(fields(&c), vec!["data[k]", "binaryData[k]"]);
        assert_eq!(
            c[0].message,
            "Invalid value: \"k\": duplicate of key present in binaryData"
        );
        assert_eq!(
            c[1].message,
            "Invalid value: \"k\": duplicate of key present in data"
        );
    }

    #[test]
    fn typed_secrets() {
        let mut s = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": b64("c")}});
        let c = admit(Kind::Secret, &mut s, None);
        assert_eq!(fields(&c), vec!["data[tls.key]"]);
        assert_eq!(c[0].message, "Required value");
        let mut s =
            json!({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "c", "tls.key": "k"}});
        assert!(admit(Kind::Secret, &mut s, None).is_empty());
        let mut s = json!({"type": "kubernetes.io/dockerconfigjson"});
        assert_eq!(
            fields(&admit(Kind::Secret, &mut s, None)),
            vec!["data[.dockerconfigjson]"]
        );
        let mut s = json!({"type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "{not json"}});
        let c = admit(Kind::Secret, &mut s, None);
        assert_eq!(fields(&c), vec!["data[.dockerconfigjson]"]);
        assert!(!c[0].message.contains("not json"), "{}", c[0].message);
        let mut s = json!({"type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "{\"auths\": {}}"}});
        assert!(admit(Kind::Secret, &mut s, None).is_empty());
        for t in [
            "kubernetes.io/basic-auth",
            "kubernetes.io/ssh-auth",
            "kubernetes.io/service-account-token",
            "example.com/custom",
        ] {
            let mut s = json!({"type": t});
            assert!(admit(Kind::Secret, &mut s, None).is_empty(), "{t}");
        }
    }

    #[test]
    fn updates() {
        let old = json!({"type": "Opaque", "data": {"k": b64("v")}});
        // type is immutable, and defaults before the comparison.
        let mut new = json!({"type": "kubernetes.io/basic-auth", "data": {"k": b64("v")}});
        let c = admit(Kind::Secret, &mut new, Some(&old));
        assert_eq!(fields(&c), vec!["type"]);
        assert_eq!(
            c[0].message,
            "Invalid value: \"kubernetes.io/basic-auth\": field is immutable"
        );
        let mut new = json!({"data": {"k": b64("w")}});
        assert!(admit(Kind::Secret, &mut new, Some(&old)).is_empty());
        // immutable: data may not change, immutable may not be unset; metadata may change.
        let old = json!({"type": "Opaque", "immutable": true, "data": {"k": b64("v")}});
        let mut new = json!({"metadata": {"labels": {"a": "b"}}, "type": "Opaque", "immutable": true, "data": {"k": b64("v")}});
        assert!(admit(Kind::Secret, &mut new, Some(&old)).is_empty());
        let mut new = json!({"type": "Opaque", "immutable": false, "stringData": {"k": "w"}});
        let c = admit(Kind::Secret, &mut new, Some(&old));
        assert_eq!(fields(&c), vec!["immutable", "data"]);
        assert_eq!(
            c[0].message,
            "Forbidden: field is immutable when `immutable` is set"
        );
        let old = json!({"immutable": true, "data": {"a": "1"}});
        let mut new = json!({"immutable": true, "data": {"a": "1"}, "binaryData": {"b": b64("2")}});
        assert_eq!(
            fields(&admit(Kind::ConfigMap, &mut new, Some(&old))),
            vec!["binaryData"]
        );
        let mut new = json!({"immutable": true, "data": {"a": "1"}, "binaryData": {}});
        assert!(admit(Kind::ConfigMap, &mut new, Some(&old)).is_empty());
        // Setting immutable on a mutable object is allowed, with a change in the same write.
        let old = json!({"data": {"a": "1"}});
        let mut new = json!({"immutable": true, "data": {"a": "2"}});
        assert!(admit(Kind::ConfigMap, &mut new, Some(&old)).is_empty());
    }
}
