//! The resource API: URL routing to a served resource, and the verbs (get, list, create,
//! update, patch, delete, deletecollection, the status and scale subresources) with
//! kube-apiserver's object metadata semantics (uid, generation, resourceVersion, finalizers,
//! graceful deletion, propagation policies) and version conversion. The verbs are the same
//! for every kind; where kinds differ they ask the kind's strategy (`registry`). Writes are in
//! [`write`], deletion in [`delete`], lists in [`list`].

mod delete;
mod list;
pub(crate) use list::validate_list_options;
mod write;

use crate::admission::{self, CrdSupport};
use crate::error::{ApiError, ApiResult, Cause};
use crate::patch::{self, PatchType};
use crate::resources::ResourceDef;
use crate::selectors::{FieldSelector, LabelSelector, Selector};
use crate::store::{ObjKey, Op, Store, StoreError, Stored};
use crate::{protobuf, query, table, watch};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// kube-apiserver's request body limit (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared server state.
pub struct App {
    /// The store.
    pub store: Store,
    /// Served resources.
    pub resources: Vec<Arc<ResourceDef>>,
    /// CRD admission and conversion.
    pub crd: Arc<dyn CrdSupport>,
    /// CRD objects by resource key.
    pub crd_objects: HashMap<String, Value>,
    /// The node pods are bound to.
    pub node_name: String,
    /// Request body limit.
    pub max_body: usize,
    /// Log provider.
    pub logs: RwLock<Option<Arc<dyn crate::PodLogs>>>,
    /// Exec provider.
    pub exec: RwLock<Option<Arc<dyn crate::PodExec>>>,
    /// Port-forward provider.
    pub port_forward: RwLock<Option<Arc<dyn crate::PodPortForward>>>,
}

/// A parsed resource URL.
#[derive(Clone)]
pub struct Target {
    /// The resource.
    pub rd: Arc<ResourceDef>,
    /// The request version.
    pub version: String,
    /// Namespace from the URL.
    pub ns: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// Subresource.
    pub sub: Option<String>,
}

impl Target {
    pub(crate) fn api_version(&self) -> String {
        self.rd.api_version(&self.version)
    }
    pub(crate) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    pub(crate) fn ns(&self) -> &str {
        if self.rd.namespaced {
            self.ns.as_deref().unwrap_or("")
        } else {
            ""
        }
    }
    /// Creating or deleting objects of a read-only kind (the built-in CRDs) is refused.
    pub(crate) fn refuse_if_read_only(&self) -> ApiResult<()> {
        if !self.rd.read_only {
            return Ok(());
        }
        Err(ApiError::method_not_allowed(format!(
            "{} are read-only on this server",
            self.rd.plural
        )))
    }
    pub(crate) fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.rd.group, &self.rd.plural, self.name())
    }
}

/// Request options shared by the verbs.
pub struct Req {
    /// Query parameters.
    pub query: HashMap<String, String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Warnings to return (`Warning: 299 - "..."`).
    pub warnings: Vec<String>,
}

impl Req {
    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
}

/// RFC 3339 timestamp with second precision, as metav1.Time serialises.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `generateName` suffix: 5 characters from kube-apiserver's alphabet.
pub fn name_suffix() -> String {
    let r = uuid::Uuid::new_v4();
    r.as_bytes()[..5]
        .iter()
        .map(|b| NAME_ALPHABET[*b as usize % NAME_ALPHABET.len()] as char)
        .collect()
}

fn store_err(t: &Target, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(&t.rd.group, &t.rd.plural, name),
        StoreError::AlreadyExists => ApiError::already_exists(&t.rd.group, &t.rd.plural, name),
        StoreError::Conflict => ApiError::conflict(&t.rd.group, &t.rd.plural, name),
        StoreError::UidMismatch { expected, actual } => ApiError::conflict_msg(
            &t.rd.group,
            &t.rd.plural,
            name,
            &format!(
                "Precondition failed: UID in precondition: {expected}, UID in object meta: {actual}"
            ),
        ),
        StoreError::Internal(m) => ApiError::internal(m),
    }
}

fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn rv_of(obj: &Value) -> Option<&str> {
    meta(obj)["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resource version {s:?}: must be an unsigned integer"
        ))
    })
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether everything but metadata and status is equal (generation bumps otherwise).
fn spec_equal(a: &Value, b: &Value) -> bool {
    const SKIP: [&str; 4] = ["metadata", "status", "apiVersion", "kind"];
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    a.iter()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()))
        .all(|(k, v)| b.get(k) == Some(v))
        && b.keys()
            .filter(|k| !SKIP.contains(&k.as_str()))
            .all(|k| a.contains_key(k))
}

/// Whether the stored `obj` is already what a request in `version` sees.
fn is_external(rd: &ResourceDef, version: &str, obj: &Value) -> bool {
    !rd.strategy.converts(rd, version)
        && obj["kind"].as_str() == Some(rd.kind.as_str())
        && obj["apiVersion"].as_str() == Some(rd.api_version(version).as_str())
}

/// An object to answer with: the stored object itself when the request's version is the
/// storage version (its JSON is serialised once and shared with the watchers), or one built for
/// the request (converted, dry run, deleted).
#[derive(Debug)]
pub enum Reply {
    /// The stored object, as stored.
    Stored(Arc<Stored>),
    /// An object built for this request.
    Built(Value),
}

impl Reply {
    /// The object.
    pub fn value(&self) -> &Value {
        match self {
            Reply::Stored(s) => &s.obj,
            Reply::Built(v) => v,
        }
    }

    /// The object, owned (a copy of a stored one).
    pub fn into_value(self) -> Value {
        match self {
            Reply::Stored(s) => Value::clone(&s.obj),
            Reply::Built(v) => v,
        }
    }

    fn body(&self) -> bytes::Bytes {
        match self {
            Reply::Stored(s) => s.json().clone(),
            Reply::Built(v) => serde_json::to_vec(v).unwrap_or_default().into(),
        }
    }
}

/// JSON response with a status code.
pub fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    json_body_response(
        code,
        serde_json::to_vec(v).unwrap_or_default().into(),
        warnings,
    )
}

fn json_body_response(code: StatusCode, body: bytes::Bytes, warnings: &[String]) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(h) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

impl App {
    /// Builds the state.
    pub fn new(store: Store, crd: Arc<dyn CrdSupport>, node_name: String, max_body: usize) -> Self {
        let mut resources: Vec<Arc<ResourceDef>> = crate::resources::builtin()
            .into_iter()
            .map(Arc::new)
            .collect();
        let mut crd_objects = HashMap::new();
        for c in crd.crds() {
            if let Some(rd) = crate::resources::from_crd(&c) {
                crd_objects.insert(rd.key(), c);
                resources.push(Arc::new(rd));
            }
        }
        App {
            store,
            resources,
            crd,
            crd_objects,
            node_name,
            max_body,
            logs: RwLock::new(None),
            exec: RwLock::new(None),
            port_forward: RwLock::new(None),
        }
    }

    /// Finds a served resource.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.plural == plural && r.serves(version))
            .cloned()
    }

    /// The stored object as the request's version sees it, borrowed when that needs no change
    /// (the storage version, which the stored object already names); for reading only.
    fn external_view<'a>(
        &self,
        rd: &ResourceDef,
        version: &str,
        obj: &'a Value,
    ) -> ApiResult<Cow<'a, Value>> {
        if is_external(rd, version, obj) {
            return Ok(Cow::Borrowed(obj));
        }
        self.to_external(rd, version, obj).map(Cow::Owned)
    }

    /// `s` as the answer to a request in `version`: itself when no conversion is needed.
    fn reply(&self, rd: &ResourceDef, version: &str, s: &Arc<Stored>) -> ApiResult<Reply> {
        if is_external(rd, version, &s.obj) {
            return Ok(Reply::Stored(s.clone()));
        }
        self.to_external(rd, version, &s.obj).map(Reply::Built)
    }

    /// Converts a stored object to the request's version.
    pub fn to_external(&self, rd: &ResourceDef, version: &str, obj: &Value) -> ApiResult<Value> {
        let mut o = rd.strategy.to_external(self, rd, version, obj.clone())?;
        o["apiVersion"] = json!(rd.api_version(version));
        o["kind"] = json!(rd.kind);
        Ok(o)
    }

    fn to_storage(&self, rd: &ResourceDef, version: &str, obj: Value) -> ApiResult<Value> {
        let mut o = rd.strategy.to_storage(self, rd, version, obj)?;
        let storage_group = rd.strategy.storage_group(rd);
        let sv = rd.storage_version();
        o["apiVersion"] = json!(if storage_group.is_empty() {
            sv.to_string()
        } else {
            format!("{storage_group}/{sv}")
        });
        o["kind"] = json!(rd.kind);
        Ok(o)
    }

    /// Typed decoding of core kinds (drops and reports unknown fields, rejects type errors).
    fn decode_core(&self, t: &Target, obj: &mut Value, req: &mut Req) -> ApiResult<()> {
        let Some(r) = admission::core_roundtrip(&t.rd.group, &t.rd.kind, obj) else {
            return Ok(());
        };
        match r {
            Ok((back, unknown)) => {
                unknown_fields(t, &unknown, req)?;
                *obj = back;
                Ok(())
            }
            Err(e) => Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                t.rd.kind, t.version, t.rd.kind
            ))),
        }
    }

    /// The kind's rules on the object as the client sent it (`old`: the stored object in the
    /// request version, on an update), before the typed decoding.
    fn admit_raw(&self, t: &Target, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let causes = t.rd.strategy.admit_raw(obj, old);
        if causes.is_empty() {
            return Ok(());
        }
        let name = meta(obj)["name"].as_str().unwrap_or("").to_string();
        Err(ApiError::invalid(&t.rd.group, &t.rd.kind, &name, causes))
    }

    fn check_namespace(&self, t: &Target) -> ApiResult<()> {
        if !t.rd.namespaced {
            return Ok(());
        }
        let ns = t.ns();
        match self.store.get("namespaces", "", ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(s) if meta(&s.obj).get("deletionTimestamp").is_some() => {
                Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    crate::error::qualified(&t.rd.group, &t.rd.plural),
                    meta(&s.obj)["name"].as_str().unwrap_or("")
                )))
            }
            Some(_) => Ok(()),
        }
    }

    fn decode(&self, t: &Target, body: &[u8]) -> ApiResult<Value> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?;
        if !v.is_object() {
            return Err(ApiError::bad_request(
                "couldn't get version/kind; json parse error: the object must be a JSON object",
            ));
        }
        if let Some(av) = v.get("apiVersion").and_then(Value::as_str)
            && av != t.api_version()
            && t.sub.as_deref() != Some("scale")
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                t.api_version()
            )));
        }
        if let Some(k) = v.get("kind").and_then(Value::as_str)
            && k != t.rd.kind
            && t.sub.as_deref() != Some("scale")
            && k != "DeleteOptions"
        {
            if t.rd.strategy.validates_kind_as_field() {
                let name = v.pointer("/metadata/name").and_then(Value::as_str);
                return Err(ApiError::invalid(
                    &t.rd.group,
                    k,
                    name.unwrap_or(""),
                    vec![Cause {
                        reason: "FieldValueInvalid".into(),
                        message: format!("Invalid value: {k:?}: must be {}", t.rd.kind),
                        field: "kind".into(),
                    }],
                ));
            }
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.rd.kind
            )));
        }
        Ok(v)
    }

    /// GET one object (also the status subresource).
    pub fn get(&self, t: &Target) -> ApiResult<Reply> {
        let s = self.current(t)?;
        self.reply(&t.rd, &t.version, &s)
    }

    fn current(&self, t: &Target) -> ApiResult<Arc<Stored>> {
        self.store
            .get(&t.rd.key(), t.ns(), t.name())
            .ok_or_else(|| t.not_found())
    }

    fn grace_expired(&self, obj: &Value) -> bool {
        let g = meta(obj)["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0);
        if g == 0 {
            return true;
        }
        meta(obj)["deletionTimestamp"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .is_some_and(|d| d <= chrono::Utc::now())
    }
}

/// Reports unknown fields per `fieldValidation` (Strict: 400, Warn: warning, Ignore).
pub(crate) fn unknown_fields(t: &Target, unknown: &[String], req: &mut Req) -> ApiResult<()> {
    if unknown.is_empty() {
        return Ok(());
    }
    match req.q("fieldValidation").unwrap_or("Warn") {
        "Strict" => {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                t.rd.kind,
                t.version,
                t.rd.kind,
                list.join(", ")
            )))
        }
        "Ignore" => Ok(()),
        _ => {
            req.warnings
                .extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
            Ok(())
        }
    }
}

/// Parses a resource path (after `/api/v1` or `/apis/{g}/{v}`) into a target.
pub fn parse_target(
    app: &App,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Option<Result<Target, ApiError>> {
    let mut ns = None;
    let mut rest = rest;
    if rest.len() >= 3 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize") {
        ns = Some(rest[1].to_string());
        rest = &rest[2..];
    } else if rest.len() == 2 && rest[0] == "namespaces" && group.is_empty() {
        // /api/v1/namespaces/{name}
    }
    let plural = rest.first()?;
    let Some(rd) = app.find(group, version, plural) else {
        return Some(Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
    };
    if rd.namespaced && ns.is_none() && rest.len() > 1 {
        return Some(Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )));
    }
    Some(Ok(Target {
        rd,
        version: version.to_string(),
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    }))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

/// Dispatches one resource request.
pub async fn handle_resource(app: Arc<App>, t: Target, req: Request) -> Response {
    if t.name.is_some()
        && let Some(sub) = t.sub.as_deref()
        && t.rd.strategy.connects(sub, req.method())
    {
        let strategy = t.rd.strategy.clone();
        return strategy.connect(app, t, req).await;
    }
    let (parts, body) = req.into_parts();
    let query = crate::query::first_values(form_pairs(parts.uri.query().unwrap_or("")));
    let mut r = Req {
        query,
        headers: parts.headers.clone(),
        warnings: vec![],
    };
    if let Some((_, w)) = t.rd.deprecated.iter().find(|(v, _)| *v == t.version) {
        r.warnings.push(w.clone());
    }
    let mut body = match axum::body::to_bytes(body, app.max_body).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large(app.max_body).into_response(),
    };
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = parts.method.clone();
    // Bodies are JSON (patches name their own types). A client that sends protobuf or CBOR gets
    // 415, as kube-apiserver answers an encoding it does not serve, so it can fall back to JSON;
    // kubectl's typed commands do not fall back, so the protobuf of the kinds they write
    // (`kubectl create configmap|secret`) is decoded to JSON here.
    let json_body = ct.is_empty()
        || ct.starts_with("application/json")
        || ct
            .split(';')
            .next()
            .is_some_and(|m| m.trim().ends_with("+json"));
    let writes = matches!(method, Method::POST | Method::PUT) && !body.is_empty();
    if writes
        && !json_body
        && protobuf::is_protobuf(&ct)
        && protobuf::decodes(&t.rd.group, &t.rd.kind)
    {
        match protobuf::decode(&t.rd.kind, &body) {
            Ok(v) => body = serde_json::to_vec(&v).unwrap_or_default().into(),
            Err(e) => {
                return ApiError::bad_request(format!(
                    "the protobuf body of the request could not be decoded as a {}: {e}; send it as application/json instead",
                    t.rd.kind
                ))
                .into_response();
            }
        }
    } else if writes && !json_body {
        return ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (got {ct})"
            ),
        )
        .into_response();
    }
    let sub = t.sub.clone();
    let built = |v| (StatusCode::OK, Reply::Built(v));
    let result: ApiResult<(StatusCode, Reply)> = match (&method, t.name.is_some(), sub.as_deref()) {
        (&Method::GET, false, _) => {
            if query::flag(r.q("watch")) {
                return watch::serve(app, t, r).await;
            }
            app.list(&t, &r).map(built)
        }
        (&Method::POST, false, _) => app.create(&t, &body, &mut r).await,
        (&Method::DELETE, false, _) => app.delete_collection(&t, &body, &mut r).await.map(built),
        (&Method::GET, true, None) => {
            if query::flag(r.q("watch")) {
                return watch::serve(app, t, r).await;
            }
            app.get(&t).map(|v| (StatusCode::OK, v))
        }
        (&Method::GET, true, Some("status")) if t.rd.has_status => {
            app.get(&t).map(|v| (StatusCode::OK, v))
        }
        (&Method::GET, true, Some("scale")) => app.get_scale(&t).map(built),
        (&Method::PUT, true, None) => app
            .update(&t, &body, &mut r)
            .await
            .map(|v| (StatusCode::OK, v)),
        (&Method::PUT, true, Some("status")) if t.rd.has_status => app
            .update(&t, &body, &mut r)
            .await
            .map(|v| (StatusCode::OK, v)),
        (&Method::PUT, true, Some("scale")) => {
            app.write_scale(&t, &body, None, &mut r).await.map(built)
        }
        (&Method::PATCH, true, None) => app
            .patch(&t, &body, &ct, &mut r)
            .await
            .map(|v| (StatusCode::OK, v)),
        (&Method::PATCH, true, Some("status")) if t.rd.has_status => app
            .patch(&t, &body, &ct, &mut r)
            .await
            .map(|v| (StatusCode::OK, v)),
        (&Method::PATCH, true, Some("scale")) => app
            .write_scale(&t, &body, Some(&ct), &mut r)
            .await
            .map(built),
        (&Method::DELETE, true, None) => app
            .delete(&t, &body, &mut r)
            .await
            .map(|(code, v)| (code, Reply::Built(v))),
        (_, true, Some(_)) => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    };
    match result {
        Ok((code, v)) => {
            if wants_table(&r.headers) && method == Method::GET && sub.is_none() {
                let table = table::to_table(&t, v.value(), r.q("includeObject"));
                return json_response(code, &table, &r.warnings);
            }
            json_body_response(code, v.body(), &r.warnings)
        }
        Err(e) => {
            let mut resp = e.into_response();
            for w in &r.warnings {
                if let Ok(h) =
                    HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\"")))
                {
                    resp.headers_mut().append(header::WARNING, h);
                }
            }
            resp
        }
    }
}

/// Percent-decodes `s` (invalid escapes are kept as they are); `plus_is_space` for query
/// strings, where `+` is a space (Go's `url.QueryUnescape`), not for paths (`url.PathUnescape`).
pub fn unescape(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) if plus_is_space => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `a=b&c=d` (percent-decoding, `+` as space).
pub fn form_pairs(q: &str) -> Vec<(String, String)> {
    let dec = |s: &str| unescape(s, true);
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_alphabet() {
        for _ in 0..100 {
            let s = name_suffix();
            assert_eq!(s.len(), 5);
            assert!(s.bytes().all(|b| NAME_ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn query_decoding() {
        let p = form_pairs("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1");
        assert_eq!(p[0], ("labelSelector".into(), "app=web,tier in (a)".into()));
        assert_eq!(p[1], ("watch".into(), "1".into()));
        // Paths: `+` stays, escapes decode, invalid ones stay as they are.
        assert_eq!(unescape("pro%20be+x%2", false), "pro be+x%2");
        assert_eq!(unescape("de%66ault%zz", false), "default%zz");
        assert_eq!(unescape("a+b%2Bc", true), "a b+c");
    }
}
