//! The JSON error body of the REST API (`{"code": "...", "message": "..."}`) and the mapping of
//! confinement and system errors onto it.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use rustix::io::Errno;

use crate::confine::ConfineError;

/// An error answered by the REST API, with upstream's code names.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Upstream code name, e.g. `NOT_FOUND`.
    pub code: &'static str,
    /// What went wrong, naming the path, and what to do.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }
    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    /// 403 `PERMISSION_DENIED`.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message)
    }
    /// 409 `CONFLICT`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }
    /// 500 `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// Maps a confinement failure for the request path `path`.
    pub fn from_confine(err: ConfineError) -> Self {
        match err {
            ConfineError::Escape(p) => Self::denied(format!(
                "path traversal outside sandbox root is forbidden: {p:?} resolves outside the root"
            )),
            ConfineError::Missing(p) | ConfineError::NotDir(p) => {
                Self::not_found(format!("path {p:?} does not exist within the sandbox"))
            }
            ConfineError::Loop(p) => {
                Self::invalid(format!("path {p:?}: too many levels of symbolic links"))
            }
            ConfineError::Io { path, errno } => Self::from_errno(&path, errno),
        }
    }

    /// Maps a failed system call on `path`.
    pub fn from_errno(path: &str, errno: Errno) -> Self {
        match errno {
            Errno::ACCESS | Errno::PERM | Errno::ROFS => {
                Self::denied(format!("permission denied on {path:?}"))
            }
            Errno::NOENT => {
                Self::not_found(format!("path {path:?} does not exist within the sandbox"))
            }
            Errno::NOSPC | Errno::DQUOT => Self::internal(format!(
                "no space left on the device while writing {path:?}; free some space or write less"
            )),
            e => Self::internal(format!("{path:?}: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}
