//! The resource API: URL routing to a served resource, and the verbs (get, list, create,
//! update, patch, delete, deletecollection, the status and scale subresources) with
//! kube-apiserver's object metadata semantics (uid, generation, resourceVersion, finalizers,
//! graceful deletion, propagation policies) and version conversion.

use crate::admission::{self, CrdSupport, NameRule};
use crate::config_data;
use crate::error::{ApiError, ApiResult, Cause};
use crate::patch::{self, PatchType};
use crate::resources::{ResourceDef, Special};
use crate::selectors::{FieldSelector, LabelSelector, Selector};
use crate::store::{ObjKey, Op, Store, StoreError, Stored};
use crate::{protobuf, query, table, watch};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

/// kube-apiserver's request body limit (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Streams a Pod's container log (registered by the node agent).
pub trait PodLogs: Send + Sync {
    /// Returns the log stream of `container` in `pod`; `query` holds the request's log options
    /// (`follow`, `tailLines`, `sinceSeconds`, `timestamps`, `previous`).
    fn logs(
        &self,
        pod: &Value,
        container: &str,
        query: &HashMap<String, String>,
    ) -> futures::future::BoxFuture<'static, Result<Body, String>>;
}

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
    pub logs: RwLock<Option<Arc<dyn PodLogs>>>,
    /// Exec provider.
    pub exec: RwLock<Option<Arc<dyn crate::exec::PodExec>>>,
    /// Port-forward provider.
    pub port_forward: RwLock<Option<Arc<dyn crate::portforward::PodPortForward>>>,
    next_service_ip: AtomicU32,
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
    fn api_version(&self) -> String {
        self.rd.api_version(&self.version)
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    fn ns(&self) -> &str {
        if self.rd.namespaced {
            self.ns.as_deref().unwrap_or("")
        } else {
            ""
        }
    }
    fn not_found(&self) -> ApiError {
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

/// kube-apiserver's answer to a delete that removed the object at once (no finalizers, no
/// grace period): a `Status` naming it, with the resource in `details.kind`.
fn deleted_status(rd: &ResourceDef, obj: &Value) -> Value {
    let mut details =
        json!({"name": meta(obj)["name"], "kind": rd.plural, "uid": meta(obj)["uid"]});
    if !rd.group.is_empty() {
        details["group"] = json!(rd.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// Go's `%#v` of a sorted `[]string`, as kube-apiserver's messages print them.
fn go_strings(v: &[String]) -> String {
    let mut v: Vec<&String> = v.iter().collect();
    v.sort();
    v.dedup();
    let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
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
    version == rd.storage_version()
        && !(rd.special == Special::Event && rd.group.is_empty())
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

fn event_to_core(mut e: Value) -> Value {
    let m = e.as_object_mut().expect("object");
    let mv = |m: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = m.remove(from) {
            m.insert(to.into(), v);
        }
    };
    mv(m, "regarding", "involvedObject");
    mv(m, "note", "message");
    mv(m, "reportingController", "reportingComponent");
    mv(m, "deprecatedSource", "source");
    mv(m, "deprecatedFirstTimestamp", "firstTimestamp");
    mv(m, "deprecatedLastTimestamp", "lastTimestamp");
    mv(m, "deprecatedCount", "count");
    if let Some(s) = m.get("series").cloned() {
        m.insert(
            "series".into(),
            json!({"count": s["count"], "lastObservedTime": s["lastObservedTime"]}),
        );
    }
    if !m.contains_key("involvedObject") {
        m.insert("involvedObject".into(), json!({}));
    }
    if !m.contains_key("source") {
        // kube-apiserver serves an Event without a source with an empty one (not filled from
        // reportingController).
        m.insert("source".into(), json!({}));
    }
    m.insert("apiVersion".into(), json!("v1"));
    e
}

fn event_from_core(mut e: Value) -> Value {
    let m = e.as_object_mut().expect("object");
    let mv = |m: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = m.remove(from) {
            m.insert(to.into(), v);
        }
    };
    mv(m, "involvedObject", "regarding");
    mv(m, "message", "note");
    mv(m, "reportingComponent", "reportingController");
    mv(m, "source", "deprecatedSource");
    mv(m, "firstTimestamp", "deprecatedFirstTimestamp");
    mv(m, "lastTimestamp", "deprecatedLastTimestamp");
    mv(m, "count", "deprecatedCount");
    if m.get("reportingController")
        .is_none_or(|v| v.as_str() == Some(""))
        && let Some(c) = m
            .get("deprecatedSource")
            .and_then(|s| s.get("component"))
            .cloned()
    {
        m.insert("reportingController".into(), c);
    }
    m.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    e
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
            next_service_ip: AtomicU32::new(0),
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
        let mut o = obj.clone();
        match rd.special {
            Special::Event if rd.group.is_empty() => o = event_to_core(o),
            Special::Custom if version != rd.storage_version() => {
                o = self.crd.convert(o, &rd.api_version(version)).map_err(|e| {
                    ApiError::internal(format!("conversion to {version} failed: {e}"))
                })?;
            }
            _ => {}
        }
        o["apiVersion"] = json!(rd.api_version(version));
        o["kind"] = json!(rd.kind);
        Ok(o)
    }

    fn to_storage(&self, rd: &ResourceDef, version: &str, obj: Value) -> ApiResult<Value> {
        let mut o = obj;
        match rd.special {
            Special::Event if rd.group.is_empty() => o = event_from_core(o),
            Special::Custom if version != rd.storage_version() => {
                o = self
                    .crd
                    .convert(o, &rd.api_version(rd.storage_version()))
                    .map_err(|e| {
                        ApiError::bad_request(format!("conversion from {version} failed: {e}"))
                    })?;
            }
            _ => {}
        }
        let storage_group = if rd.special == Special::Event {
            "events.k8s.io"
        } else {
            &rd.group
        };
        let sv = rd.storage_version();
        o["apiVersion"] = json!(if storage_group.is_empty() {
            sv.to_string()
        } else {
            format!("{storage_group}/{sv}")
        });
        o["kind"] = json!(rd.kind);
        Ok(o)
    }

    fn name_rule(rd: &ResourceDef) -> NameRule {
        match rd.special {
            Special::Namespace => NameRule::Label,
            Special::Service => NameRule::Dns1035,
            _ => NameRule::Subdomain,
        }
    }

    /// Schema admission for custom resources (in the request version).
    fn admit_custom(
        &self,
        t: &Target,
        obj: &mut Value,
        old: Option<&Value>,
        req: &mut Req,
    ) -> ApiResult<()> {
        if t.rd.special != Special::Custom {
            return Ok(());
        }
        let Some(crd) = self.crd_objects.get(&t.rd.key()) else {
            return Ok(());
        };
        match self.crd.admit(crd, &t.version, obj, old) {
            Ok(unknown) => self.unknown_fields(t, &unknown, req),
            Err(causes) => {
                let name = meta(obj)["name"].as_str().unwrap_or("").to_string();
                Err(ApiError::invalid(&t.rd.group, &t.rd.kind, &name, causes))
            }
        }
    }

    /// Reports unknown fields per `fieldValidation` (Strict: 400, Warn: warning, Ignore).
    fn unknown_fields(&self, t: &Target, unknown: &[String], req: &mut Req) -> ApiResult<()> {
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

    /// Typed decoding of core kinds (drops and reports unknown fields, rejects type errors).
    fn decode_core(&self, t: &Target, obj: &mut Value, req: &mut Req) -> ApiResult<()> {
        let Some(r) = admission::core_roundtrip(&t.rd.group, &t.rd.kind, obj) else {
            return Ok(());
        };
        match r {
            Ok((back, unknown)) => {
                self.unknown_fields(t, &unknown, req)?;
                *obj = back;
                Ok(())
            }
            Err(e) => Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                t.rd.kind, t.version, t.rd.kind
            ))),
        }
    }

    /// ConfigMap and Secret rules on create (`old` None), update and patch: `stringData` folded
    /// into `data`, defaults, keys, base64, sizes, and the update rules against `old` (the stored
    /// object in the request version). Runs before the typed decoding.
    fn admit_config_data(&self, t: &Target, obj: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let kind = match t.rd.special {
            Special::ConfigMap => config_data::Kind::ConfigMap,
            Special::Secret => config_data::Kind::Secret,
            _ => return Ok(()),
        };
        let causes = config_data::admit(kind, obj, old);
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
            if t.rd.special == Special::Custom {
                // kube-apiserver validates a custom resource's kind as a field.
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

    /// Kind-specific create-time preparation (status reset, defaults, binding).
    fn prepare_create(&self, t: &Target, obj: &mut Value) {
        match t.rd.special {
            Special::Pod => {
                admission::default_pod(obj);
                let spec = &mut obj["spec"];
                if spec.is_object() && spec["nodeName"].as_str().is_none_or(str::is_empty) {
                    spec["nodeName"] = json!(self.node_name);
                }
                obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])});
            }
            Special::Namespace => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
                let name = meta(obj)["name"].as_str().unwrap_or("").to_string();
                let labels = meta_mut(obj).entry("labels").or_insert(json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
            Special::Service => {
                admission::default_service(obj);
                let spec = &mut obj["spec"];
                if spec.is_object() && spec.get("clusterIP").is_none() {
                    let n = self.next_service_ip.fetch_add(1, Ordering::Relaxed) + 10;
                    let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                } else if let Some(ip) = spec.get("clusterIP").cloned() {
                    spec["clusterIPs"] = json!([ip]);
                }
                obj["status"] = json!({"loadBalancer": {}});
            }
            Special::Custom => {
                if t.rd.has_status
                    && let Some(m) = obj.as_object_mut()
                {
                    m.remove("status");
                }
            }
            _ => match t.rd.plural.as_str() {
                "persistentvolumeclaims" => {
                    admission::default_storage_class(obj, &self.storage_classes());
                    obj["status"] = json!({"phase": "Pending"});
                }
                "persistentvolumes" => obj["status"] = json!({"phase": "Pending"}),
                "storageclasses" => {
                    default(obj, "reclaimPolicy", json!("Delete"));
                    default(obj, "volumeBindingMode", json!("Immediate"));
                }
                _ => {}
            },
        }
    }

    /// The StorageClasses that exist (for the DefaultStorageClass admission).
    fn storage_classes(&self) -> Vec<Value> {
        let Some(rd) = self.resources.iter().find(|r| r.plural == "storageclasses") else {
            return vec![];
        };
        let (items, _, _) = self.store.list(&rd.key(), None, None, None, &|_| true);
        items.iter().map(|s| (*s.obj).clone()).collect()
    }

    /// POST: create.
    pub async fn create(
        &self,
        t: &Target,
        body: &[u8],
        req: &mut Req,
    ) -> ApiResult<(StatusCode, Reply)> {
        if t.rd.read_only {
            return Err(ApiError::method_not_allowed(format!(
                "{} are read-only on this server",
                t.rd.plural
            )));
        }
        let mut obj = self.decode(t, body)?;
        obj["apiVersion"] = json!(t.api_version());
        obj["kind"] = json!(t.rd.kind);
        let m = meta_mut(&mut obj);
        if t.rd.namespaced {
            let url_ns = t.ns().to_string();
            match m.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    m.insert("namespace".into(), json!(url_ns));
                }
                Some(ns) if ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
        } else {
            m.remove("namespace");
        }
        if m.get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let generated = match m.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => false,
            _ => match m.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => {
                    let base: String = g.chars().take(63 - 5).collect();
                    m.insert("name".into(), json!(format!("{base}{}", name_suffix())));
                    true
                }
                _ => {
                    return Err(ApiError::invalid(
                        &t.rd.group,
                        &t.rd.kind,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired".into(),
                            message: "Required value: name or generateName is required".into(),
                            field: "metadata.name".into(),
                        }],
                    ));
                }
            },
        };
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now()));
        if t.rd.tracks_generation() {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("managedFields");
        m.remove("selfLink");
        let name = m["name"].as_str().unwrap_or("").to_string();
        let mut causes = admission::validate_name(&name, Self::name_rule(&t.rd));
        causes.extend(admission::validate_metadata(meta(&obj)));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&t.rd.group, &t.rd.kind, &name, causes));
        }
        self.check_namespace(t)?;
        self.admit_config_data(t, &mut obj, None)?;
        self.decode_core(t, &mut obj, req)?;
        self.prepare_create(t, &mut obj);
        if t.rd.special == Special::Pod {
            let causes = admission::validate_pod(&obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(&t.rd.group, &t.rd.kind, &name, causes));
            }
        }
        self.admit_custom(t, &mut obj, None, req)?;
        let stored = self.to_storage(&t.rd, &t.version, obj)?;
        if req.dry_run() {
            return Ok((
                StatusCode::CREATED,
                Reply::Built(self.to_external(&t.rd, &t.version, &stored)?),
            ));
        }
        let mut attempt = stored;
        for _ in 0..8 {
            match self
                .store
                .write(Op::Create {
                    res: t.rd.key(),
                    obj: attempt.clone(),
                })
                .await
            {
                Ok(s) => return Ok((StatusCode::CREATED, self.reply(&t.rd, &t.version, &s)?)),
                Err(StoreError::AlreadyExists) if generated => {
                    let g = meta(&attempt)["generateName"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let base: String = g.chars().take(63 - 5).collect();
                    meta_mut(&mut attempt)
                        .insert("name".into(), json!(format!("{base}{}", name_suffix())));
                }
                Err(e) => return Err(store_err(t, &name, e)),
            }
        }
        Err(ApiError::new(
            500,
            "AlreadyExists",
            format!(
                "{} \"{name}\" already exists: generateName could not find a free name",
                t.rd.plural
            ),
        ))
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

    /// Finishes an update of `new` (in the request version) against `old` (stored): keeps the
    /// system metadata, applies the status rules and generation, admits, and writes with a
    /// compare-and-swap on `old`'s resourceVersion. `status_only` is the status subresource.
    async fn write_update(
        &self,
        t: &Target,
        old: &Arc<Stored>,
        new: Value,
        status_only: bool,
        req: &mut Req,
    ) -> ApiResult<Reply> {
        let old_ext = self.external_view(&t.rd, &t.version, &old.obj)?;
        let mut new = new;
        new["apiVersion"] = json!(t.api_version());
        new["kind"] = json!(t.rd.kind);
        if status_only {
            // Only status changes are taken: everything else is the old object's. The request
            // (a patched copy of the old object, or a client's PUT) usually carries the rest
            // unchanged, so only what differs is copied back.
            keep_all_but_status(&mut new, &old_ext);
        } else if t.rd.has_status {
            match old_ext.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        {
            let om = meta(&old_ext);
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ] {
                match om.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
            if om.get("generateName").is_some() && m.get("generateName").is_none() {
                m.insert("generateName".into(), om["generateName"].clone());
            }
            m.remove("managedFields");
            m.remove("selfLink");
            if t.rd.tracks_generation() {
                m.insert(
                    "generation".into(),
                    om.get("generation").cloned().unwrap_or(json!(1)),
                );
            } else {
                m.remove("generation");
            }
        }
        self.admit_config_data(t, &mut new, Some(&old_ext))?;
        self.decode_core(t, &mut new, req)?;
        if t.rd.special == Special::Crd {
            // The served CRDs are built in: only metadata (labels, annotations) may change.
            if new.get("spec") != old_ext.get("spec") {
                req.warnings.push(format!(
                    "{} is built into this API server; spec changes are ignored",
                    t.name()
                ));
            }
            new["spec"] = old_ext["spec"].clone();
        }
        if t.rd.special == Special::Pod {
            admission::default_pod(&mut new);
            if !status_only && !pod_spec_update_allowed(&old_ext["spec"], &new["spec"]) {
                return Err(ApiError::invalid(&t.rd.group, &t.rd.kind, t.name(), vec![Cause {
                    reason: "FieldValueForbidden".into(),
                    message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                    field: "spec".into(),
                }]));
            }
        }
        if t.rd.special == Special::Service {
            admission::default_service(&mut new);
        }
        let mut causes = admission::validate_metadata(meta(&new));
        if t.rd.special == Special::Pod {
            causes.extend(admission::validate_pod(&new));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&t.rd.group, &t.rd.kind, t.name(), causes));
        }
        if meta(&old.obj).get("deletionTimestamp").is_some() {
            // Finalizers may only be removed from an object being deleted, not added.
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !finalizers(&old_ext).contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &t.rd.group,
                    &t.rd.kind,
                    t.name(),
                    vec![Cause {
                        reason: "FieldValueForbidden".into(),
                        message: format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {}",
                            go_strings(&added)
                        ),
                        field: "metadata.finalizers".into(),
                    }],
                ));
            }
        }
        self.admit_custom(t, &mut new, Some(&old_ext), req)?;
        // Compared after defaulting, so that re-sending an object without its defaults is no
        // change.
        if t.rd.tracks_generation() && !spec_equal(&new, &old_ext) {
            let g = meta(&old_ext)["generation"].as_i64().unwrap_or(1);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        let mut stored = self.to_storage(&t.rd, &t.version, new)?;
        meta_mut(&mut stored).insert("resourceVersion".into(), json!(old.rv.to_string()));
        if stored == *old.obj {
            return self.reply(&t.rd, &t.version, old);
        }
        if req.dry_run() {
            return self
                .to_external(&t.rd, &t.version, &stored)
                .map(Reply::Built);
        }
        let deleting = meta(&stored).get("deletionTimestamp").is_some();
        if deleting && finalizers(&stored).is_empty() && self.grace_expired(&stored) {
            // The last finalizer went away: the object is deleted now.
            let s = self
                .store
                .write(Op::Delete {
                    res: t.rd.key(),
                    key: (t.ns().into(), t.name().into()),
                    expect_rv: Some(old.rv),
                    expect_uid: None,
                })
                .await
                .map_err(|e| store_err(t, t.name(), e))?;
            return self
                .to_external(&t.rd, &t.version, &stored_with_rv(&stored, s.rv))
                .map(Reply::Built);
        }
        let s = self
            .store
            .write(Op::Update {
                res: t.rd.key(),
                obj: stored,
                expect_rv: Some(old.rv),
            })
            .await
            .map_err(|e| store_err(t, t.name(), e))?;
        self.reply(&t.rd, &t.version, &s)
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

    /// PUT: update (main resource or status).
    pub async fn update(&self, t: &Target, body: &[u8], req: &mut Req) -> ApiResult<Reply> {
        if t.rd.read_only && t.rd.special != Special::Crd {
            return Err(ApiError::method_not_allowed(format!(
                "{} are read-only on this server",
                t.rd.plural
            )));
        }
        let new = self.decode(t, body)?;
        if let Some(n) = meta(&new)["name"].as_str()
            && n != t.name()
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                t.name()
            )));
        }
        if t.rd.namespaced
            && let Some(ns) = meta(&new)["namespace"].as_str()
            && !ns.is_empty()
            && ns != t.ns()
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let status_only = t.sub.as_deref() == Some("status");
        let expected = rv_of(&new).map(parse_rv).transpose()?;
        // Without a resourceVersion the update is unconditional: retry lost races.
        for _ in 0..16 {
            let old = self.current(t)?;
            if expected.is_some_and(|rv| rv != old.rv) {
                return Err(ApiError::conflict(&t.rd.group, &t.rd.plural, t.name()));
            }
            match self
                .write_update(t, &old, new.clone(), status_only, req)
                .await
            {
                Err(e) if e.code == 409 && e.reason == "Conflict" && expected.is_none() => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(&t.rd.group, &t.rd.plural, t.name()))
    }

    /// PATCH (main resource or status). Retries on write races when the patch carries no
    /// resourceVersion, as kube-apiserver's GuaranteedUpdate does.
    pub async fn patch(
        &self,
        t: &Target,
        body: &[u8],
        ct: &str,
        req: &mut Req,
    ) -> ApiResult<Reply> {
        if t.rd.read_only && t.rd.special != Special::Crd {
            return Err(ApiError::method_not_allowed(format!(
                "{} are read-only on this server",
                t.rd.plural
            )));
        }
        let kind = PatchType::from_content_type(ct).ok_or_else(|| {
            ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ))
        })?;
        if kind == PatchType::Apply {
            patch::apply(&Value::Null, kind, body)?;
        }
        if kind == PatchType::Strategic && matches!(t.rd.special, Special::Custom | Special::Crd) {
            return Err(ApiError::unsupported_media(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json (strategic merge patch is not supported for custom resources)",
            ));
        }
        let status_only = t.sub.as_deref() == Some("status");
        for _ in 0..16 {
            let old = self.current(t)?;
            let old_ext = self.external_view(&t.rd, &t.version, &old.obj)?;
            let patched = patch::apply(&old_ext, kind, body)?;
            if !patched.is_object() {
                return Err(ApiError::bad_request("the patch produced a non-object"));
            }
            if let Some(rv) = rv_of(&patched)
                && rv_of(&old_ext) != Some(rv)
            {
                parse_rv(rv)?;
                return Err(ApiError::conflict(&t.rd.group, &t.rd.plural, t.name()));
            }
            if meta(&patched)["name"].as_str() != Some(t.name()) {
                return Err(ApiError::bad_request(format!(
                    "metadata.name: Invalid value: {:?}: field is immutable",
                    meta(&patched)["name"].as_str().unwrap_or("")
                )));
            }
            match self.write_update(t, &old, patched, status_only, req).await {
                Err(e) if e.code == 409 && e.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(&t.rd.group, &t.rd.plural, t.name()))
    }

    /// GET scale.
    pub fn get_scale(&self, t: &Target) -> ApiResult<Value> {
        let paths =
            t.rd.scale_for(&t.version)
                .ok_or_else(|| t.not_found())?
                .clone();
        let obj = self.get(t)?.into_value();
        let ptr = |p: &str| p.replace('.', "/");
        let spec = obj
            .pointer(&ptr(&paths.spec_replicas))
            .cloned()
            .unwrap_or(json!(0));
        let status = obj
            .pointer(&ptr(&paths.status_replicas))
            .cloned()
            .unwrap_or(json!(0));
        let mut st = json!({"replicas": status});
        if let Some(sel) = paths
            .label_selector
            .as_deref()
            .and_then(|p| obj.pointer(&ptr(p)))
        {
            st["selector"] = sel.clone();
        }
        let m = meta(&obj);
        Ok(json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": spec}, "status": st,
        }))
    }

    /// PUT or PATCH scale.
    pub async fn write_scale(
        &self,
        t: &Target,
        body: &[u8],
        ct: Option<&str>,
        req: &mut Req,
    ) -> ApiResult<Value> {
        let paths =
            t.rd.scale_for(&t.version)
                .ok_or_else(|| t.not_found())?
                .clone();
        for _ in 0..16 {
            let scale = self.get_scale(t)?;
            let new_scale = match ct {
                Some(ct) => {
                    let kind = PatchType::from_content_type(ct).ok_or_else(|| {
                        ApiError::unsupported_media(format!("unsupported patch type {ct:?}"))
                    })?;
                    patch::apply(&scale, kind, body)?
                }
                None => serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!(
                        "couldn't get version/kind; json parse error: {e}"
                    ))
                })?,
            };
            let replicas = new_scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    t.name(),
                    vec![Cause {
                        reason: "FieldValueInvalid".into(),
                        message: format!(
                            "Invalid value: {replicas}: must be greater than or equal to 0"
                        ),
                        field: "spec.replicas".into(),
                    }],
                ));
            }
            if let Some(rv) = rv_of(&new_scale)
                && Some(rv) != rv_of(&scale)
            {
                return Err(ApiError::conflict(&t.rd.group, &t.rd.plural, t.name()));
            }
            let old = self.current(t)?;
            let mut obj = self.to_external(&t.rd, &t.version, &old.obj)?;
            let segs: Vec<&str> = paths
                .spec_replicas
                .trim_start_matches('.')
                .split('.')
                .collect();
            let mut cur = &mut obj;
            for s in &segs[..segs.len() - 1] {
                if !cur.get(*s).is_some_and(Value::is_object) {
                    cur[*s] = json!({});
                }
                cur = cur.get_mut(*s).expect("inserted");
            }
            cur[segs[segs.len() - 1]] = json!(replicas);
            match self.write_update(t, &old, obj, false, req).await {
                Err(e) if e.code == 409 && ct.is_some() => continue,
                Err(e) => return Err(e),
                Ok(_) => return self.get_scale(t),
            }
        }
        Err(ApiError::conflict(&t.rd.group, &t.rd.plural, t.name()))
    }

    /// DELETE one object.
    pub async fn delete(
        &self,
        t: &Target,
        body: &[u8],
        req: &mut Req,
    ) -> ApiResult<(StatusCode, Value)> {
        if t.rd.read_only {
            return Err(ApiError::method_not_allowed(format!(
                "{} are read-only on this server",
                t.rd.plural
            )));
        }
        let opts = delete_options(body, req)?;
        let dry = req.dry_run() || opts["dryRun"] == json!(["All"]);
        self.delete_with(t, &opts, dry).await
    }

    /// Deletes with parsed options (also used by deletecollection, the GC and namespaces).
    pub async fn delete_with(
        &self,
        t: &Target,
        opts: &Value,
        dry_run: bool,
    ) -> ApiResult<(StatusCode, Value)> {
        if t.rd.special == Special::Namespace
            && matches!(t.name(), "default" | "kube-system" | "kube-public")
        {
            return Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                    t.name()
                ),
                details: Some(json!({"name": t.name(), "kind": "namespaces"})),
            });
        }
        for _ in 0..16 {
            let old = self.current(t)?;
            let ext = self.to_external(&t.rd, &t.version, &old.obj)?;
            let m = meta(&old.obj);
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
                && Some(uid) != m["uid"].as_str()
            {
                return Err(ApiError::conflict_msg(
                    &t.rd.group,
                    &t.rd.kind,
                    t.name(),
                    &format!(
                        "the UID in the precondition ({uid}) does not match the UID in record ({}). The object might have been deleted and then recreated",
                        m["uid"].as_str().unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                && rv != old.rv.to_string()
            {
                return Err(ApiError::conflict_msg(
                    &t.rd.group,
                    &t.rd.kind,
                    t.name(),
                    &format!(
                        "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                        old.rv
                    ),
                ));
            }
            if dry_run {
                return Ok((StatusCode::OK, ext));
            }
            let policy = opts["propagationPolicy"]
                .as_str()
                .map(String::from)
                .or_else(|| {
                    opts["orphanDependents"].as_bool().map(|o| {
                        if o {
                            "Orphan".into()
                        } else {
                            "Background".into()
                        }
                    })
                });
            let mut fins = finalizers(&old.obj);
            match policy.as_deref() {
                Some("Foreground") => {
                    fins.retain(|f| f != "orphan");
                    if !fins.iter().any(|f| f == "foregroundDeletion") {
                        fins.push("foregroundDeletion".into());
                    }
                }
                Some("Orphan") => {
                    fins.retain(|f| f != "foregroundDeletion");
                    if !fins.iter().any(|f| f == "orphan") {
                        fins.push("orphan".into());
                    }
                }
                Some("Background") | None => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        "meta.k8s.io",
                        "DeleteOptions",
                        "",
                        vec![Cause {
                            reason: "FieldValueNotSupported".into(),
                            message: format!(
                                "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                            ),
                            field: "propagationPolicy".into(),
                        }],
                    ));
                }
            }
            if t.rd.special == Special::Namespace && !fins.iter().any(|f| f == "kubernetes") {
                let spec_fins = old
                    .obj
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                if spec_fins {
                    // Namespace content is removed by the namespace finalizer (see gc.rs).
                }
            }
            let mut grace: i64 = 0;
            if t.rd.special == Special::Pod {
                let phase = old
                    .obj
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let node = old
                    .obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                grace = opts["gracePeriodSeconds"].as_i64().unwrap_or_else(|| {
                    old.obj
                        .pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                });
                if phase == "Succeeded" || phase == "Failed" || node.is_empty() {
                    grace = 0;
                }
                if let Some(existing) = m["deletionGracePeriodSeconds"].as_i64() {
                    grace = grace.min(existing);
                }
            }
            let ns_pending = t.rd.special == Special::Namespace
                && old
                    .obj
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
            if fins.is_empty() && grace <= 0 && !ns_pending {
                let s = self
                    .store
                    .write(Op::Delete {
                        res: t.rd.key(),
                        key: (t.ns().into(), t.name().into()),
                        expect_rv: Some(old.rv),
                        expect_uid: None,
                    })
                    .await;
                match s {
                    Ok(s) if t.rd.special == Special::Pod => {
                        return Ok((StatusCode::OK, self.to_external(&t.rd, &t.version, &s.obj)?));
                    }
                    Ok(s) => return Ok((StatusCode::OK, deleted_status(&t.rd, &s.obj))),
                    Err(StoreError::Conflict) => continue,
                    Err(e) => return Err(store_err(t, t.name(), e)),
                }
            }
            let mut new = (*old.obj).clone();
            let nm = meta_mut(&mut new);
            let ts_now = chrono::Utc::now();
            let already = nm.get("deletionTimestamp").is_some();
            // The first deletionTimestamp raises the generation (of kinds that keep one), as
            // kube-apiserver does: the object's controllers see a new desired state.
            if !already && let Some(g) = nm.get("generation").and_then(Value::as_i64) {
                nm.insert("generation".into(), json!(g + 1));
            }
            if !already
                || grace
                    < nm.get("deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
            {
                let when = ts_now + chrono::Duration::seconds(grace.max(0));
                nm.insert(
                    "deletionTimestamp".into(),
                    json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                );
                nm.insert("deletionGracePeriodSeconds".into(), json!(grace.max(0)));
            }
            if fins.is_empty() {
                nm.remove("finalizers");
            } else {
                nm.insert("finalizers".into(), json!(fins));
            }
            if t.rd.special == Special::Namespace {
                new["status"]["phase"] = json!("Terminating");
            }
            if new == *old.obj {
                return Ok((StatusCode::OK, ext));
            }
            match self
                .store
                .write(Op::Update {
                    res: t.rd.key(),
                    obj: new,
                    expect_rv: Some(old.rv),
                })
                .await
            {
                Ok(s) => {
                    let code = StatusCode::OK;
                    return Ok((code, self.to_external(&t.rd, &t.version, &s.obj)?));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(store_err(t, t.name(), e)),
            }
        }
        Err(ApiError::conflict(&t.rd.group, &t.rd.plural, t.name()))
    }

    /// Builds the selector from the query.
    pub fn selector(&self, t: &Target, req: &Req) -> ApiResult<Selector> {
        let labels = match req.q("labelSelector") {
            Some(s) if !s.is_empty() => LabelSelector::parse(s)?,
            _ => LabelSelector::default(),
        };
        let mut fields = match req.q("fieldSelector") {
            Some(s) if !s.is_empty() => FieldSelector::parse(s, t.rd.special)?,
            _ => FieldSelector::default(),
        };
        // Namespaced objects listed within a namespace need no namespace filter.
        fields.0.retain(|(p, v, eq)| {
            !(p == "/metadata/namespace"
                && *eq
                && t.ns.as_deref() == Some(v.as_str())
                && t.rd.namespaced)
        });
        Ok(Selector { labels, fields })
    }

    /// GET collection (list).
    pub fn list(&self, t: &Target, req: &Req) -> ApiResult<Value> {
        let sel = self.selector(t, req)?;
        let limit = query::int64(req.q("limit"))?
            .and_then(|l| usize::try_from(l).ok())
            .filter(|l| *l > 0);
        let rv_param = req.q("resourceVersion").filter(|s| !s.is_empty());
        let rv_match = req.q("resourceVersionMatch").filter(|s| !s.is_empty());
        if let Some(rv) = rv_param {
            let n = rv
                .parse::<u64>()
                .map_err(|_| ApiError::bad_list_resource_version(rv))?;
            if rv_match == Some("Exact") && n != self.store.current_rv() {
                return Err(ApiError::gone(format!(
                    "too old resource version: {n} ({})",
                    self.store.current_rv()
                )));
            }
        } else if rv_match.is_some() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", vec![Cause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                field: "resourceVersionMatch".into(),
            }]));
        }
        let mut after: Option<ObjKey> = None;
        let mut list_rv: Option<u64> = None;
        if let Some(c) = req.q("continue").filter(|s| !s.is_empty()) {
            let tok = base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?;
            after = Some((
                tok["ns"].as_str().unwrap_or("").to_string(),
                tok["name"].as_str().unwrap_or("").to_string(),
            ));
            list_rv = tok["rv"].as_u64();
        }
        let ns = if t.rd.namespaced {
            t.ns.as_deref()
        } else {
            None
        };
        let key = t.rd.key();
        let filter = |o: &Value| sel.matches(o);
        let (items, rv, next) = self.store.list(&key, ns, after.as_ref(), limit, &filter);
        let list_rv = list_rv.unwrap_or(rv);
        let mut out = Vec::with_capacity(items.len());
        for s in &items {
            out.push(self.to_external(&t.rd, &t.version, &s.obj)?);
        }
        let mut lm = json!({"resourceVersion": list_rv.to_string()});
        if let Some((ns, name)) = next {
            let tok = json!({"rv": list_rv, "ns": ns, "name": name});
            lm["continue"] =
                json!(base64::engine::general_purpose::STANDARD.encode(tok.to_string()));
            let (rest, _, _) = self.store.list(
                &key,
                t.ns.as_deref().filter(|_| t.rd.namespaced),
                Some(&(ns, name)),
                None,
                &filter,
            );
            lm["remainingItemCount"] = json!(rest.len());
        }
        Ok(json!({
            "kind": format!("{}List", t.rd.kind),
            "apiVersion": t.api_version(),
            "metadata": lm,
            "items": out,
        }))
    }

    /// DELETE collection.
    pub async fn delete_collection(
        &self,
        t: &Target,
        body: &[u8],
        req: &mut Req,
    ) -> ApiResult<Value> {
        if t.rd.read_only {
            return Err(ApiError::method_not_allowed(format!(
                "{} are read-only on this server",
                t.rd.plural
            )));
        }
        let opts = delete_options(body, req)?;
        let list = self.list(t, req)?;
        let mut deleted = vec![];
        for item in list["items"].as_array().cloned().unwrap_or_default() {
            let mut tt = t.clone();
            tt.name = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from);
            tt.ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(String::from);
            // The answer lists the objects as they were listed, as kube-apiserver's does.
            match self
                .delete_with(
                    &tt,
                    &opts,
                    req.dry_run() || opts["dryRun"] == json!(["All"]),
                )
                .await
            {
                Ok(_) => deleted.push(item),
                Err(e) if e.code == 404 => deleted.push(item),
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "kind": format!("{}List", t.rd.kind),
            "apiVersion": t.api_version(),
            "metadata": {"resourceVersion": self.store.current_rv().to_string()},
            "items": deleted,
        }))
    }
}

fn stored_with_rv(obj: &Value, rv: u64) -> Value {
    let mut o = obj.clone();
    meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
    o
}

/// kube-apiserver's pod update rule: only images, activeDeadlineSeconds, added tolerations and
/// terminationGracePeriodSeconds may change.
fn pod_spec_update_allowed(old: &Value, new: &Value) -> bool {
    let normalise = |spec: &Value, other: &Value| -> Value {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            if let (Some(a), Some(b)) = (
                s.get_mut(list).and_then(Value::as_array_mut),
                other.get(list).and_then(Value::as_array),
            ) {
                for (c, o) in a.iter_mut().zip(b) {
                    if let Some(img) = o.get("image") {
                        c["image"] = img.clone();
                    }
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            for k in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "schedulingGates",
            ] {
                m.remove(k);
            }
        }
        s
    };
    let tolerations_ok = match (
        old.get("tolerations").and_then(Value::as_array),
        new.get("tolerations").and_then(Value::as_array),
    ) {
        (Some(o), Some(n)) => o.iter().all(|t| n.contains(t)),
        (Some(o), None) => o.is_empty(),
        _ => true,
    };
    let (a, b) = (normalise(old, new), normalise(new, new));
    if a != b {
        tracing::debug!(old = %a, new = %b, "pod spec update refused");
    }
    tolerations_ok && a == b
}

fn qos_class(spec: &Value) -> &'static str {
    let cs = spec["containers"].as_array().cloned().unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !cs.is_empty();
    for c in &cs {
        let r = &c["resources"];
        let (req, lim) = (&r["requests"], &r["limits"]);
        if req.as_object().is_some_and(|m| !m.is_empty())
            || lim.as_object().is_some_and(|m| !m.is_empty())
        {
            any = true;
        }
        for k in ["cpu", "memory"] {
            let l = lim.get(k);
            let q = req.get(k).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

fn delete_options(body: &[u8], req: &Req) -> ApiResult<Value> {
    let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    if let Some(p) = req.q("propagationPolicy") {
        opts["propagationPolicy"] = json!(p);
    }
    if let Some(g) = query::int64(req.q("gracePeriodSeconds"))? {
        opts["gracePeriodSeconds"] = json!(g);
    }
    if let Some(o) = req.q("orphanDependents") {
        opts["orphanDependents"] = json!(query::flag(Some(o)));
    }
    if opts
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"))
    {
        opts["dryRun"] = json!(["All"]);
    }
    Ok(opts)
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

/// Makes `new` the old object with `new`'s status: every other top-level field is restored from
/// `old` where it differs (compared first, so the common unchanged case copies nothing).
fn keep_all_but_status(new: &mut Value, old: &Value) {
    let (Some(n), Some(o)) = (new.as_object_mut(), old.as_object()) else {
        *new = old.clone();
        return;
    };
    n.retain(|k, _| k == "status" || o.contains_key(k));
    for (k, v) in o {
        if k != "status" && n.get(k) != Some(v) {
            n.insert(k.clone(), v.clone());
        }
    }
}

/// Sets `key` of object `obj` when it is absent.
fn default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry(key).or_insert(v);
    }
}

/// Dispatches one resource request.
pub async fn handle_resource(app: Arc<App>, t: Target, req: Request) -> Response {
    if t.rd.special == Special::Pod
        && t.name.is_some()
        && t.sub.as_deref() == Some("exec")
        && matches!(*req.method(), Method::GET | Method::POST)
    {
        return crate::exec::serve(app, t, req).await;
    }
    if t.rd.special == Special::Pod
        && t.name.is_some()
        && t.sub.as_deref() == Some("portforward")
        && matches!(*req.method(), Method::GET | Method::POST)
    {
        return crate::portforward::serve(app, t, req).await;
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
        (&Method::GET, true, Some("log")) if t.rd.special == Special::Pod => {
            return pod_logs(&app, &t, &r).await;
        }
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
                let table = table::to_table(&app, &t, v.value(), r.q("includeObject"));
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

/// kube-apiserver's refusal of a connection to a Pod that no node runs (`pods/exec`,
/// `pods/portforward`).
pub fn require_host(pod: &Value, name: &str) -> ApiResult<()> {
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Ok(())
}

/// The container a `pods/log` or `pods/exec` request names (or the Pod's only one), with
/// kube-apiserver's refusals: none named in a Pod with several, or a name the Pod does not have.
pub(crate) fn pod_container(
    pod: &Value,
    pod_name: &str,
    named: Option<&str>,
) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    match named.filter(|c| !c.is_empty()) {
        Some(c) => {
            let known = containers.iter().any(|n| n == c)
                || names("initContainers").iter().any(|n| n == c)
                || names("ephemeralContainers").iter().any(|n| n == c);
            if known {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if containers.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}"
        ))),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            );
            let init = names("initContainers");
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

async fn pod_logs(app: &App, t: &Target, r: &Req) -> Response {
    let pod = match app.get(t) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let container = match pod_container(pod.value(), t.name(), r.q("container")) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let provider = app.logs.read().ok().and_then(|g| g.clone());
    let Some(provider) = provider else {
        return ApiError::bad_request(format!(
            "container {container:?} in pod {:?} is waiting to start: no node agent is serving logs on this server",
            t.name()
        ))
        .into_response();
    };
    match provider.logs(pod.value(), &container, &r.query).await {
        Ok(body) => {
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp
        }
        Err(e) => ApiError::bad_request(e).into_response(),
    }
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
    fn a_status_write_keeps_everything_but_the_status() {
        let old = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"n": 1},
            "status": {"phase": "Pending"},
        });
        // Status changed, spec and a label changed too, a field added and one dropped.
        let mut new = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"x": "2"}},
            "status": {"phase": "Running"},
            "extra": true,
        });
        keep_all_but_status(&mut new, &old);
        let mut want = old.clone();
        want["status"] = json!({"phase": "Running"});
        assert_eq!(new, want);
        // No status in the request: the status goes, nothing else does.
        let mut new = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}});
        keep_all_but_status(&mut new, &old);
        let mut want = old.clone();
        want.as_object_mut().unwrap().remove("status");
        assert_eq!(new, want);
    }

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
