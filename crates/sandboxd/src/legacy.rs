//! The legacy python-runtime HTTP API (`GET /`, `POST /execute`, `POST /upload`,
//! `GET /download/{path}`, `GET /list/{path}`, `GET /exists/{path}`) that upstream's Python SDK
//! speaks through the router, with its JSON shapes and quirks: commands are split like
//! `shlex.split` and run without a shell, leading `/` of paths is stripped, paths are
//! percent-decoded a second time.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::App;
use crate::confine::{ConfineError, Walked};
use crate::fsops;
use crate::process::{Exit, SpawnError, SpawnSpec};
use crate::rest::{self, blocking};

fn message(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "message": msg.into() }))).into_response()
}

fn access_denied() -> Response {
    message(StatusCode::FORBIDDEN, "Access denied")
}

/// FastAPI's 422 for a missing body field.
fn missing_field(field: &str, input: Value) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "detail": [{
            "type": "missing", "loc": ["body", field], "msg": "Field required", "input": input
        }]})),
    )
        .into_response()
}

/// `GET /`.
pub(crate) async fn root_health() -> Response {
    Json(json!({ "status": "ok", "message": "Sandbox Runtime is active." })).into_response()
}

/// Fallback of the legacy port, FastAPI-style.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "detail": "Not Found" })),
    )
        .into_response()
}

/// Splits a command line like Python's `shlex.split` (POSIX mode, no comments).
pub fn shlex_split(s: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            '\\' => {
                in_token = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("No escaped character"),
                }
            }
            '\'' => {
                in_token = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("No closing quotation"),
                    }
                }
            }
            '"' => {
                in_token = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n) if n == '"' || n == '\\' => {
                                cur.push(n);
                                chars.next();
                            }
                            Some(_) => cur.push('\\'),
                            None => return Err("No closing quotation"),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("No closing quotation"),
                    }
                }
            }
            c => {
                in_token = true;
                cur.push(c);
            }
        }
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// Python's `repr` of a string.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str` of a float.
fn py_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Text-mode decoding of subprocess output: UTF-8 and universal newlines.
fn text_mode(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .replace('\r', "\n")
}

fn failed(msg: impl std::fmt::Display) -> Response {
    Json(json!({ "stdout": "", "stderr": format!("Failed to execute command: {msg}"), "exit_code": 1 }))
        .into_response()
}

/// `POST /execute`.
pub(crate) async fn execute(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "detail": [{
                    "type": "json_invalid", "loc": ["body", e.column()], "msg": "JSON decode error",
                    "input": {}, "ctx": { "error": e.to_string() }
                }]})),
            )
                .into_response();
        }
    };
    let command = match value.get("command") {
        None => return missing_field("command", value.clone()),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "detail": [{
                    "type": "string_type", "loc": ["body", "command"],
                    "msg": "Input should be a valid string", "input": other
                }]})),
            )
                .into_response();
        }
    };
    // `timeout_seconds` (newer upstream SDKs send it with `command_timeout`): the command's own
    // limit, reported as `timed_out` with exit code 124.
    let asked = match value.get("timeout_seconds") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t > 0.0 && t.is_finite()) => {
            n.as_f64()
        }
        Some(Value::Number(n)) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "detail": [{
                    "type": "greater_than", "loc": ["body", "timeout_seconds"],
                    "msg": "Input should be greater than 0", "input": n, "ctx": {"gt": 0}
                }]})),
            )
                .into_response();
        }
        Some(other) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "detail": [{
                    "type": "float_type", "loc": ["body", "timeout_seconds"],
                    "msg": "Input should be a valid number", "input": other
                }]})),
            )
                .into_response();
        }
    };
    let args = match shlex_split(&command) {
        Ok(a) => a,
        Err(e) => return failed(e),
    };
    if args.is_empty() {
        return failed("list index out of range");
    }
    let spec = SpawnSpec {
        argv: args.clone(),
        cwd: app.root.work_path(),
        ..SpawnSpec::default()
    };
    let child = match app.sup.spawn(spec) {
        Ok(c) => c,
        Err(SpawnError::NotFound { program, .. }) => {
            return failed(format!(
                "[Errno 2] No such file or directory: {}",
                py_repr(&program)
            ));
        }
        Err(SpawnError::Permission { program, .. }) => {
            return failed(format!(
                "[Errno 13] Permission denied: {}",
                py_repr(&program)
            ));
        }
        Err(e) => return failed(e),
    };
    let timeout = app.config.legacy_exec_timeout;
    let server_limit = if timeout.is_finite() && timeout > 0.0 {
        timeout
    } else {
        300.0
    };
    let limit = Duration::from_secs_f64(asked.map_or(server_limit, |a| a.min(server_limit)));
    let run = crate::grpc::collect(child, Duration::from_secs(10), usize::MAX);
    match tokio::time::timeout(limit, run).await {
        Ok(crate::grpc::Output {
            exit,
            stdout: out,
            stderr: err,
            ..
        }) => {
            let code = match exit {
                Exit::Code(c) => c,
                // subprocess reports death by signal N as -N.
                Exit::Signal(s) => -s,
            };
            Json(json!({
                "stdout": text_mode(&out.data),
                "stderr": text_mode(&err.data),
                "exit_code": code,
            }))
            .into_response()
        }
        // Dropping the run killed the command's process group.
        Err(_) if asked.is_some() => Json(json!({
            "stdout": "",
            "stderr": format!("Command timed out after {} seconds", py_float(limit.as_secs_f64())),
            "exit_code": 124,
            "timed_out": true,
        }))
        .into_response(),
        Err(_) => {
            let list: Vec<String> = args.iter().map(|a| py_repr(a)).collect();
            failed(format!(
                "Command '[{}]' timed out after {} seconds",
                list.join(", "),
                py_float(limit.as_secs_f64())
            ))
        }
    }
}

/// Percent-decodes like `urllib.parse.unquote` (invalid escapes stay as they are).
pub fn unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Resolves a legacy path (leading `/` stripped, symlinks followed beneath the root).
fn resolve<'a>(app: &'a App, path: &str) -> Result<Option<Walked<'a>>, ConfineError> {
    let comps = app.root.lex_relative(path)?;
    match app.root.walk(path, comps, true, false) {
        Ok(w) => Ok(Some(w)),
        Err(ConfineError::Missing(_) | ConfineError::NotDir(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

enum Found {
    Denied,
    Missing,
    Dir(Vec<fsops::Entry>),
    File(std::fs::File, rustix::fs::Stat),
    Other,
}

fn lookup(app: &App, path: &str, want_listing: bool) -> Found {
    let walked = match resolve(app, path) {
        Ok(Some(w)) => w,
        Ok(None) => return Found::Missing,
        Err(ConfineError::Escape(_)) => return Found::Denied,
        Err(_) => return Found::Missing,
    };
    let dir = match &walked {
        Walked::Root => true,
        Walked::Entry { stat: None, .. } => return Found::Missing,
        Walked::Entry { stat: Some(st), .. } => fsops::is_dir(st),
    };
    if dir {
        if !want_listing {
            return Found::Other;
        }
        let rel: Vec<std::ffi::OsString> =
            walked.rel_path().iter().map(|c| c.to_os_string()).collect();
        return match fsops::open_dir(&walked, &app.root)
            .and_then(|fd| fsops::list_dir(&app.root, &fd, &rel))
        {
            Ok(entries) => Found::Dir(entries),
            Err(_) => Found::Missing,
        };
    }
    let Walked::Entry {
        parent,
        name,
        stat: Some(st),
        ..
    } = walked
    else {
        return Found::Missing;
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Found::Other;
    }
    match crate::confine::open_read(&parent, &name) {
        Ok(fd) => {
            let _ = rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::empty());
            match rustix::fs::fstat(&fd) {
                Ok(st) => Found::File(std::fs::File::from(fd), st),
                Err(_) => Found::Missing,
            }
        }
        Err(_) => Found::Missing,
    }
}

/// `GET /download/{path}`.
pub(crate) async fn download(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    let decoded = unquote(&path);
    let d2 = decoded.clone();
    let found = blocking(move || Ok(lookup(&app, &d2, false))).await;
    match found {
        Ok(Found::File(file, stat)) => {
            let mut resp = rest::serve_file(file, &stat, &method, &headers);
            let encoded = percent_encode_filename(&decoded);
            let disposition = if encoded == decoded {
                format!("attachment; filename=\"{decoded}\"")
            } else {
                format!("attachment; filename*=utf-8''{encoded}")
            };
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Ok(Found::Denied) => access_denied(),
        _ => message(StatusCode::NOT_FOUND, "File not found"),
    }
}

/// `urllib.parse.quote` with its default safe set (`/`).
fn percent_encode_filename(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /list/{path}`.
pub(crate) async fn list(State(app): State<Arc<App>>, path: Option<Path<String>>) -> Response {
    let decoded = unquote(&path.map(|Path(p)| p).unwrap_or_default());
    match blocking(move || Ok(lookup(&app, &decoded, true))).await {
        Ok(Found::Dir(entries)) => {
            let list: Vec<Value> = entries
                .iter()
                .map(|e| {
                    json!({
                        "name": e.name.to_string_lossy(),
                        "size": e.stat.st_size,
                        "type": e.kind(),
                        "mod_time": fsops::mtime_f64(&e.stat),
                    })
                })
                .collect();
            Json(Value::Array(list)).into_response()
        }
        Ok(Found::Denied) => access_denied(),
        Ok(_) => message(StatusCode::NOT_FOUND, "Path is not a directory"),
        Err(e) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("List files failed: {}", e.message),
        ),
    }
}

/// `GET /exists/{path}`.
pub(crate) async fn exists(State(app): State<Arc<App>>, path: Option<Path<String>>) -> Response {
    let decoded = unquote(&path.map(|Path(p)| p).unwrap_or_default());
    let d2 = decoded.clone();
    let result = blocking(move || {
        Ok(match resolve(&app, &d2) {
            Ok(Some(Walked::Root)) => Some(true),
            Ok(Some(Walked::Entry { stat, .. })) => Some(stat.is_some()),
            Ok(None) => Some(false),
            Err(ConfineError::Escape(_)) => None,
            Err(_) => Some(false),
        })
    })
    .await;
    match result {
        Ok(Some(exists)) => Json(json!({ "path": decoded, "exists": exists })).into_response(),
        _ => access_denied(),
    }
}

/// `POST /upload` (multipart, field `file`; the part's filename is the destination).
pub(crate) async fn upload(State(app): State<Arc<App>>, request: Request) -> Response {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !rest::is_multipart(&content_type) {
        return missing_field("file", Value::Null);
    }
    let Ok(boundary) = multer::parse_boundary(&content_type) else {
        return missing_field("file", Value::Null);
    };
    let mut multipart = multer::Multipart::new(request.into_body().into_data_stream(), boundary);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return missing_field("file", Value::Null),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "detail": format!("There was an error parsing the body: {e}") })),
                )
                    .into_response();
            }
        };
        if field.name() != Some("file") {
            continue;
        }
        let Some(filename) = field.file_name().map(str::to_string) else {
            return missing_field("file", Value::Null);
        };
        let (a, f) = (app.clone(), filename.clone());
        let target = blocking(move || {
            let comps = a
                .root
                .lex_relative(&f)
                .map_err(crate::error::ApiError::from_confine)?;
            if comps.is_empty() {
                return Err(crate::error::ApiError::invalid(format!(
                    "[Errno 21] Is a directory: {}",
                    py_repr(&a.root.work_path().to_string_lossy())
                )));
            }
            let walked = a
                .root
                .walk(&f, comps, true, true)
                .map_err(crate::error::ApiError::from_confine)?;
            match walked {
                Walked::Entry { stat: Some(st), .. } if fsops::is_dir(&st) => {
                    Err(crate::error::ApiError::invalid(format!(
                        "[Errno 21] Is a directory: {}",
                        py_repr(&f)
                    )))
                }
                Walked::Entry { parent, name, .. } => Ok(rest::PutTarget {
                    dir: fsops::own(parent)
                        .map_err(|e| crate::error::ApiError::from_errno(&f, e))?,
                    name,
                }),
                Walked::Root => Err(crate::error::ApiError::invalid("[Errno 21] Is a directory")),
            }
        })
        .await;
        let target = match target {
            Ok(t) => t,
            Err(e) if e.status == StatusCode::FORBIDDEN => return access_denied(),
            Err(e) => {
                return message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("File upload failed: {}", e.message),
                );
            }
        };
        return match rest::write_atomic(&app, &filename, target, 0o644, field).await {
            Ok(_) => message(
                StatusCode::OK,
                format!("File '{filename}' uploaded successfully."),
            ),
            Err(e) => message(
                if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                    e.status
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                format!("File upload failed: {}", e.message),
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shlex_matches_python() {
        assert_eq!(shlex_split("ls -l  /tmp").unwrap(), ["ls", "-l", "/tmp"]);
        assert_eq!(
            shlex_split("echo 'a b' \"c d\"").unwrap(),
            ["echo", "a b", "c d"]
        );
        assert_eq!(
            shlex_split(r#"echo "a\"b" 'x\y' z\ w"#).unwrap(),
            ["echo", "a\"b", "x\\y", "z w"]
        );
        assert_eq!(shlex_split(r#"echo "a\$b""#).unwrap(), ["echo", "a\\$b"]);
        assert_eq!(shlex_split("echo ''").unwrap(), ["echo", ""]);
        assert_eq!(shlex_split("echo 'oops"), Err("No closing quotation"));
        assert_eq!(shlex_split("echo oops\\"), Err("No escaped character"));
        assert!(shlex_split("   ").unwrap().is_empty());
    }

    #[test]
    fn python_reprs() {
        assert_eq!(py_repr("sleep"), "'sleep'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_float(300.0), "300.0");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(unquote("a%2Fb%zz%41"), "a/b%zzA");
    }
}
