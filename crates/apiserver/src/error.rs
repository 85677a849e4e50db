//! Kubernetes `Status` errors: the API error type every handler returns, and its HTTP rendering
//! with the reasons, codes and message formats kube-apiserver uses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level cause inside an `Invalid` status (`details.causes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Kubernetes cause type, e.g. `FieldValueRequired`.
    pub reason: String,
    /// Human message, e.g. `Required value`.
    pub message: String,
    /// Dotted field path, e.g. `spec.foo`.
    pub field: String,
}

/// An API error rendered as a Kubernetes `Status` object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `reason` (e.g. `NotFound`, `Conflict`).
    pub reason: &'static str,
    /// The full message, formatted as kube-apiserver formats it.
    pub message: String,
    /// `details`, if any.
    pub details: Option<Value>,
}

/// Result alias for API handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// `pods` or `sandboxes.agents.x-k8s.io`, the way apimachinery prints a GroupResource.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

fn details(group: &str, kind: &str, name: &str) -> Value {
    let mut d = serde_json::Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(kind));
    Value::Object(d)
}

impl ApiError {
    /// An error with a code, reason and message and no details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(group, plural)),
            details: Some(details(group, plural, name)),
        }
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(group, plural)),
            details: Some(details(group, plural, name)),
        }
    }

    /// 409 Conflict for a stale resourceVersion, with kube-apiserver's message.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::conflict_msg(
            group,
            plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict with a custom explanation: `Operation cannot be fulfilled on pods "x": <msg>`.
    pub fn conflict_msg(group: &str, plural: &str, name: &str, msg: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                qualified(group, plural)
            ),
            details: Some(details(group, plural, name)),
        }
    }

    /// 422 Invalid: `Pod "x" is invalid: [a, b]` with one cause per field.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let gk = qualified(group, kind);
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let mut d = details(group, kind, name);
        d["causes"] = Value::Array(
            causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect(),
        );
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{gk} \"{name}\" is invalid: {joined}"),
            details: Some(d),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: format!("Internal error occurred: {message}"),
            details: Some(json!({"causes": [{"message": message.to_string()}]})),
        }
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 410 Expired (a watch or list resourceVersion older than the retained window).
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        if self.reason.is_empty()
            && let Some(m) = s.as_object_mut()
        {
            m.remove("reason");
        }
        s
    }

    /// kube-apiserver's answer to an unparsable `resourceVersion` on watch and get: a 500
    /// without a reason (kubernetes/kubernetes#139485 tracks changing it to 400).
    pub fn bad_resource_version(rv: &str) -> Self {
        Self::new(
            500,
            "",
            format!(
                "resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
            ),
        )
    }

    /// kube-apiserver's answer to an unparsable `resourceVersion` on list: a 400.
    pub fn bad_list_resource_version(rv: &str) -> Self {
        Self::bad_request(format!(
            "invalid resource version: resourceVersion: Invalid value: {rv:?}: strconv.ParseUint: parsing {rv:?}: invalid syntax"
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        let mut resp = (
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// A successful `Status` (e.g. for a delete that returns no object).
pub fn success_status(group: &str, kind: &str, name: &str, uid: Option<&str>) -> Value {
    let mut d = details(group, kind, name);
    if let Some(uid) = uid {
        d["uid"] = json!(uid);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}
