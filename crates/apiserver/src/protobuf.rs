//! The Kubernetes protobuf encoding of the objects kubectl's typed commands write: `kubectl create
//! configmap` and `kubectl create secret` post `application/vnd.kubernetes.protobuf` (the `k8s\0`
//! envelope around a `runtime.Unknown`), and get no JSON fallback on a 415; so does `kubectl
//! create namespace`. Decodes ConfigMap, Secret and Namespace bodies, with their ObjectMeta, into
//! the JSON objects the verbs work on.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Whether `content_type` is the Kubernetes protobuf media type.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim() == MEDIA_TYPE)
}

/// Whether request bodies of this core/v1 kind are decoded from protobuf.
pub fn decodes(group: &str, kind: &str) -> bool {
    group.is_empty() && matches!(kind, "ConfigMap" | "Secret" | "Namespace")
}

/// Decodes a protobuf request body of a core/v1 `kind` (one [`decodes`] accepts) into its JSON
/// form. The error says what is wrong with the bytes.
pub fn decode(kind: &str, body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the \"k8s\\0\" protobuf envelope prefix")?;
    let mut type_meta = (String::new(), String::new());
    let mut raw: &[u8] = &[];
    for (n, f) in fields(rest)? {
        match n {
            1 => {
                for (n, f) in fields(f.bytes()?)? {
                    match n {
                        1 => type_meta.0 = f.string()?,
                        2 => type_meta.1 = f.string()?,
                        _ => {}
                    }
                }
            }
            2 => raw = f.bytes()?,
            3 if !f.string()?.is_empty() => {
                return Err(format!(
                    "content encoding {:?} is not supported; send the object uncompressed",
                    f.string()?
                ));
            }
            _ => {}
        }
    }
    let mut obj = match kind {
        "ConfigMap" => config_map(raw)?,
        "Secret" => secret(raw)?,
        "Namespace" => namespace(raw)?,
        other => return Err(format!("{other} is not decoded from protobuf; send JSON")),
    };
    if !type_meta.0.is_empty() {
        obj["apiVersion"] = json!(type_meta.0);
    }
    if !type_meta.1.is_empty() {
        obj["kind"] = json!(type_meta.1);
    }
    Ok(obj)
}

fn config_map(buf: &[u8]) -> Result<Value, String> {
    let mut obj = Map::new();
    let (mut data, mut binary) = (Map::new(), Map::new());
    for (n, f) in fields(buf)? {
        match n {
            1 => {
                obj.insert("metadata".into(), object_meta(f.bytes()?)?);
            }
            2 => {
                let (k, v) = entry(f.bytes()?)?;
                data.insert(k, json!(utf8(v)?));
            }
            3 => {
                let (k, v) = entry(f.bytes()?)?;
                binary.insert(k, json!(STANDARD.encode(v)));
            }
            4 => {
                obj.insert("immutable".into(), json!(f.varint()? != 0));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    Ok(Value::Object(obj))
}

/// `kubectl create namespace`: metadata and `spec.finalizers` (the status is the server's).
fn namespace(buf: &[u8]) -> Result<Value, String> {
    let mut obj = Map::new();
    for (n, f) in fields(buf)? {
        match n {
            1 => {
                obj.insert("metadata".into(), object_meta(f.bytes()?)?);
            }
            2 => {
                let mut finalizers = vec![];
                for (n, f) in fields(f.bytes()?)? {
                    if n == 1 {
                        finalizers.push(json!(f.string()?));
                    }
                }
                if !finalizers.is_empty() {
                    obj.insert("spec".into(), json!({"finalizers": finalizers}));
                }
            }
            _ => {}
        }
    }
    Ok(Value::Object(obj))
}

fn secret(buf: &[u8]) -> Result<Value, String> {
    let mut obj = Map::new();
    let (mut data, mut string_data) = (Map::new(), Map::new());
    for (n, f) in fields(buf)? {
        match n {
            1 => {
                obj.insert("metadata".into(), object_meta(f.bytes()?)?);
            }
            2 => {
                let (k, v) = entry(f.bytes()?)?;
                data.insert(k, json!(STANDARD.encode(v)));
            }
            3 => {
                let t = f.string()?;
                if !t.is_empty() {
                    obj.insert("type".into(), json!(t));
                }
            }
            4 => {
                let (k, v) = entry(f.bytes()?)?;
                string_data.insert(k, json!(utf8(v)?));
            }
            5 => {
                obj.insert("immutable".into(), json!(f.varint()? != 0));
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    Ok(Value::Object(obj))
}

/// `metav1.ObjectMeta`; empty strings and zero numbers are left out, as in its JSON form.
fn object_meta(buf: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let (mut labels, mut annotations) = (Map::new(), Map::new());
    let (mut owners, mut finalizers) = (vec![], vec![]);
    for (n, f) in fields(buf)? {
        let name = match n {
            1 => "name",
            2 => "generateName",
            3 => "namespace",
            4 => "selfLink",
            5 => "uid",
            6 => "resourceVersion",
            7 | 10 => {
                let v = f.varint()? as i64;
                if v != 0 {
                    let k = if n == 7 {
                        "generation"
                    } else {
                        "deletionGracePeriodSeconds"
                    };
                    m.insert(k.into(), json!(v));
                }
                continue;
            }
            8 | 9 => {
                if let Some(t) = time(f.bytes()?)? {
                    let k = if n == 8 {
                        "creationTimestamp"
                    } else {
                        "deletionTimestamp"
                    };
                    m.insert(k.into(), json!(t));
                }
                continue;
            }
            11 | 12 => {
                let (k, v) = entry(f.bytes()?)?;
                let target = if n == 11 {
                    &mut labels
                } else {
                    &mut annotations
                };
                target.insert(k, json!(utf8(v)?));
                continue;
            }
            13 => {
                owners.push(owner_reference(f.bytes()?)?);
                continue;
            }
            14 => {
                finalizers.push(json!(f.string()?));
                continue;
            }
            _ => continue,
        };
        let s = f.string()?;
        if !s.is_empty() {
            m.insert(name.into(), json!(s));
        }
    }
    for (k, v) in [("labels", labels), ("annotations", annotations)] {
        if !v.is_empty() {
            m.insert(k.into(), Value::Object(v));
        }
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), Value::Array(owners));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

fn owner_reference(buf: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    for (n, f) in fields(buf)? {
        let k = match n {
            1 => "kind",
            3 => "name",
            4 => "uid",
            5 => "apiVersion",
            6 | 7 => {
                let k = if n == 6 {
                    "controller"
                } else {
                    "blockOwnerDeletion"
                };
                m.insert(k.into(), json!(f.varint()? != 0));
                continue;
            }
            _ => continue,
        };
        m.insert(k.into(), json!(f.string()?));
    }
    Ok(Value::Object(m))
}

/// `metav1.Time` (`seconds`, `nanos`); the zero time is encoded empty and decodes to `None`.
fn time(buf: &[u8]) -> Result<Option<String>, String> {
    let (mut secs, mut nanos) = (0i64, 0u32);
    for (n, f) in fields(buf)? {
        match n {
            1 => secs = f.varint()? as i64,
            2 => nanos = f.varint()? as u32,
            _ => {}
        }
    }
    if secs == 0 && nanos == 0 {
        return Ok(None);
    }
    let t = chrono::DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| format!("timestamp {secs} is out of range"))?;
    Ok(Some(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
}

/// A map entry: `key` (1) and `value` (2).
fn entry(buf: &[u8]) -> Result<(String, &[u8]), String> {
    let (mut k, mut v): (String, &[u8]) = (String::new(), &[]);
    for (n, f) in fields(buf)? {
        match n {
            1 => k = f.string()?,
            2 => v = f.bytes()?,
            _ => {}
        }
    }
    Ok((k, v))
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not valid UTF-8".to_string())
}

/// One decoded field value.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Field<'a> {
    fn varint(self) -> Result<u64, String> {
        match self {
            Field::Varint(v) => Ok(v),
            _ => Err("a field has the wrong wire type (expected a varint)".into()),
        }
    }
    fn bytes(self) -> Result<&'a [u8], String> {
        match self {
            Field::Bytes(b) => Ok(b),
            _ => Err("a field has the wrong wire type (expected length-delimited)".into()),
        }
    }
    fn string(self) -> Result<String, String> {
        utf8(self.bytes()?)
    }
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("the body ends inside a varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a varint is longer than 10 bytes".into())
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u32, Field<'_>)>, String> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3).map_err(|_| "a field number is out of range")?;
        let value = match key & 7 {
            0 => Field::Varint(varint(buf, &mut pos)?),
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                if buf.len() - pos < len {
                    return Err("the body ends inside a fixed-width field".into());
                }
                pos += len;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)
                    .map_err(|_| "a length is out of range")?;
                if buf.len() - pos < len {
                    return Err("the body ends inside a length-delimited field".into());
                }
                let b = &buf[pos..pos + len];
                pos += len;
                Field::Bytes(b)
            }
            w => return Err(format!("wire type {w} is not supported")),
        };
        out.push((number, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubectl v1.32 sends for `kubectl create configmap x --from-literal=a=1
    /// --from-literal=b=2` and `kubectl create secret generic s --from-literal=k=v`.
    const CONFIG_MAP: &[u8] = b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x12\x23\x0a\x11\x0a\x01x\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x06\x0a\x01a\x12\x011\x12\x06\x0a\x01b\x12\x012\x1a\x00\x22\x00";
    const SECRET: &[u8] = b"k8s\0\x0a\x0c\x0a\x02v1\x12\x06Secret\x12\x23\x0a\x11\x0a\x01s\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x06\x0a\x01k\x12\x01v\x1a\x06Opaque\x1a\x00\x22\x00";

    #[test]
    fn kubectl_create_bodies() {
        assert_eq!(
            decode("ConfigMap", CONFIG_MAP).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"},
                "data": {"a": "1", "b": "2"}})
        );
        assert_eq!(
            decode("Secret", SECRET).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "data": {"k": "dg=="}, "type": "Opaque"})
        );
        // TypeMeta {v1, Namespace}, raw Namespace {metadata {name: team-a}, spec {finalizers: [kubernetes]}}.
        let ns = b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x18\x0a\x08\x0a\x06team-a\x12\x0c\x0a\x0akubernetes";
        assert_eq!(
            decode("Namespace", ns).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"},
                "spec": {"finalizers": ["kubernetes"]}})
        );
        assert!(is_protobuf(
            "application/vnd.kubernetes.protobuf; charset=x"
        ));
        assert!(decodes("", "Secret") && !decodes("", "Pod"));
    }

    #[test]
    fn metadata_fields() {
        // labels {a: b}, finalizers [f], generation 3, creationTimestamp 1 s after the epoch.
        let meta = b"\x0a\x01n\x5a\x06\x0a\x01a\x12\x01b\x72\x01f\x38\x03\x42\x02\x08\x01";
        assert_eq!(
            object_meta(meta).unwrap(),
            json!({"name": "n", "labels": {"a": "b"}, "finalizers": ["f"], "generation": 3,
                "creationTimestamp": "1970-01-01T00:00:01Z"})
        );
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode("Secret", b"{}").unwrap_err().contains("envelope"));
        assert!(decode("Secret", b"k8s\0\x12\x05ab").is_err());
        assert!(decode("Secret", &CONFIG_MAP[..CONFIG_MAP.len() - 10]).is_err());
        assert!(decode("Pod", CONFIG_MAP).is_err());
    }
}
