//! The upstream REST files and runtime API under `/v1`: files (GET, HEAD, PUT, DELETE), health
//! and metadata, with upstream's status codes, error codes and JSON shapes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use rustix::fs::{FileType, Stat};
use rustix::io::Errno;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::App;
use crate::confine::{self, ConfineError, Walked};
use crate::error::ApiError;
use crate::fsops::{self, AtomicWriter};

/// `FileEntry` of upstream's OpenAPI spec.
#[derive(Debug, Serialize)]
pub struct FileEntry {
    /// Base name.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// `file` or `directory`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339 UTC.
    pub modified_at: String,
    /// Octal permission bits, `%04o`.
    pub mode: String,
}

/// `DirectoryListing` of upstream's OpenAPI spec.
#[derive(Debug, Serialize)]
pub struct DirectoryListing {
    /// Request path with a leading `/`.
    pub path: String,
    /// Entries sorted by name.
    pub entries: Vec<FileEntry>,
}

/// Runs blocking file system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("file system task failed: {e}")))?
}

/// The file at the end of a GET: a directory listing or an open regular file.
enum Target {
    Listing(DirectoryListing),
    File(File, Stat),
}

pub(crate) fn entry_json(e: &fsops::Entry) -> FileEntry {
    FileEntry {
        name: e.name.to_string_lossy().into_owned(),
        size: e.stat.st_size,
        kind: e.kind(),
        modified_at: fsops::rfc3339(&e.stat),
        mode: fsops::mode_string(&e.stat),
    }
}

fn listing_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

fn resolve_target(app: &App, path: &str) -> Result<Target, ApiError> {
    let walked = app
        .root
        .resolve(path, true, false)
        .map_err(ApiError::from_confine)?;
    let is_directory = match &walked {
        Walked::Root => true,
        Walked::Entry { stat: None, .. } => {
            return Err(ApiError::not_found(format!(
                "path {path:?} does not exist within the sandbox"
            )));
        }
        Walked::Entry { stat: Some(st), .. } => fsops::is_dir(st),
    };
    if is_directory {
        let rel: Vec<OsString> = walked.rel_path().iter().map(|c| c.to_os_string()).collect();
        let dir = fsops::open_dir(&walked, &app.root).map_err(|e| ApiError::from_errno(path, e))?;
        let entries =
            fsops::list_dir(&app.root, &dir, &rel).map_err(|e| ApiError::from_errno(path, e))?;
        return Ok(Target::Listing(DirectoryListing {
            path: listing_path(path),
            entries: entries.iter().map(entry_json).collect(),
        }));
    }
    let Walked::Entry { parent, name, .. } = walked else {
        unreachable!("root is a directory")
    };
    let fd = confine::open_read(&parent, &name).map_err(|e| match e {
        Errno::LOOP => ApiError::from_confine(ConfineError::Loop(path.to_string())),
        e => ApiError::from_errno(path, e),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| ApiError::from_errno(path, e))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(ApiError::invalid(format!(
            "path {path:?} is not a regular file or directory; only those can be read"
        )));
    }
    // Reads block from here on.
    rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::empty())
        .map_err(|e| ApiError::from_errno(path, e))?;
    Ok(Target::File(File::from(fd), stat))
}

/// `GET`/`HEAD /v1/files/{path}`.
pub(crate) async fn get_file(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    path: Option<Path<String>>,
) -> Response {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    let app2 = app.clone();
    let p2 = path.clone();
    let target = match blocking(move || resolve_target(&app2, &p2)).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match target {
        Target::Listing(listing) => json_with_newline(StatusCode::OK, &listing),
        Target::File(file, stat) => serve_file(file, &stat, &method, &headers),
    }
}

/// JSON with the trailing newline of Go's `json.Encoder`.
pub(crate) fn json_with_newline(status: StatusCode, body: &impl Serialize) -> Response {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Serves an open regular file with Range, HEAD, Last-Modified and If-Modified-Since support.
pub(crate) fn serve_file(
    file: File,
    stat: &Stat,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let size = stat.st_size.max(0) as u64;
    let modified = chrono::DateTime::from_timestamp(stat.st_mtime, 0).unwrap_or_default();
    let last_modified = modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Some(ims) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        && headers.get(header::RANGE).is_none()
        && let Ok(since) = chrono::DateTime::parse_from_rfc2822(&ims.replace("GMT", "+0000"))
        && modified.timestamp() <= since.timestamp()
    {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::LAST_MODIFIED, last_modified)],
        )
            .into_response();
    }
    let mut status = StatusCode::OK;
    let (mut offset, mut len) = (0u64, size);
    let mut content_range = None;
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        match parse_range(range, size) {
            RangeSpec::Full => {}
            RangeSpec::Part(start, end) => {
                status = StatusCode::PARTIAL_CONTENT;
                offset = start;
                len = end - start + 1;
                content_range = Some(format!("bytes {start}-{end}/{size}"));
            }
            RangeSpec::Unsatisfiable => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [
                        (header::CONTENT_RANGE, format!("bytes */{size}")),
                        (
                            header::CONTENT_TYPE,
                            "text/plain; charset=utf-8".to_string(),
                        ),
                    ],
                    "invalid range: failed to overlap\n",
                )
                    .into_response();
            }
        }
    }
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        let rx = fsops::stream_file(file, offset, len);
        Body::from_stream(receiver_stream(rx))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(cr) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
    }
    resp
}

/// Adapts a channel receiver into a stream.
pub(crate) fn receiver_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

enum RangeSpec {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range; several ranges or other units serve the whole file.
fn parse_range(value: &str, size: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::Unsatisfiable;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        let n = n.min(size);
        return RangeSpec::Part(size - n, size - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Unsatisfiable;
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    let end = if b.is_empty() {
        size - 1
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(size - 1),
            _ => return RangeSpec::Unsatisfiable,
        }
    };
    RangeSpec::Part(start, end)
}

fn mode_param(query: &[(String, String)]) -> Result<u32, ApiError> {
    let Some((_, m)) = query.iter().find(|(k, _)| k == "mode") else {
        return Ok(0o644);
    };
    if m.is_empty() {
        return Ok(0o644);
    }
    let valid =
        m.len() == 4 && m.starts_with('0') && m[1..].bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !valid {
        return Err(ApiError::invalid(format!(
            "mode {m:?} must match ^0[0-7]{{3}}$"
        )));
    }
    u32::from_str_radix(m, 8).map_err(|e| ApiError::invalid(format!("mode {m:?}: {e}")))
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Where a PUT writes: the target's directory (owned, so it can move to a thread) and name.
pub(crate) struct PutTarget {
    pub(crate) dir: std::os::fd::OwnedFd,
    pub(crate) name: OsString,
}

/// Resolves the target of a write, creating missing parents when `create` is set. Links on the
/// way (and a link as the final component) are followed beneath the root.
pub(crate) fn resolve_put(
    app: &App,
    path: &str,
    create: bool,
) -> Result<Option<PutTarget>, ApiError> {
    let walked = match app.root.resolve(path, true, create) {
        Ok(w) => w,
        Err(ConfineError::Missing(_)) if !create => return Ok(None),
        Err(ConfineError::NotDir(p)) => {
            return Err(ApiError::invalid(format!(
                "path {p:?}: a parent component is a file, not a directory"
            )));
        }
        Err(e) => return Err(ApiError::from_confine(e)),
    };
    match walked {
        Walked::Root => Err(ApiError::invalid(
            "target path is a directory: the sandbox root",
        )),
        Walked::Entry { stat: Some(st), .. } if fsops::is_dir(&st) => Err(ApiError::invalid(
            format!("target path is a directory: {path:?}"),
        )),
        Walked::Entry { parent, name, .. } => {
            let dir = fsops::own(parent).map_err(|e| ApiError::from_errno(path, e))?;
            Ok(Some(PutTarget { dir, name }))
        }
    }
}

/// Streams `body` into an atomic write of `target`. Returns the bytes written.
pub(crate) async fn write_atomic<S, E>(
    app: &Arc<App>,
    path: &str,
    target: PutTarget,
    mode: u32,
    mut body: S,
) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    enum Msg {
        Data(Vec<Bytes>),
        End,
    }
    /// Body bytes handed to the writer thread at once.
    const BATCH: usize = 1 << 20;
    /// After a failure, the rest of the body is read and dropped (up to this much) so that the
    /// client receives the error instead of a reset connection.
    const DRAIN_LIMIT: u64 = 64 << 20;
    let (tx, mut rx) = mpsc::channel::<Msg>(8);
    let p = path.to_string();
    let writer = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
        let mut w = AtomicWriter::create(target.dir, target.name, mode)
            .map_err(|e| ApiError::from_errno(&p, e))?;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Data(batch) => {
                    for b in batch {
                        w.write(&b).map_err(|e| ApiError::from_errno(&p, e))?;
                    }
                }
                Msg::End => {
                    let n = w.written();
                    w.commit().map_err(|e| ApiError::from_errno(&p, e))?;
                    return Ok(n);
                }
            }
        }
        Err(ApiError::invalid(format!(
            "upload of {p:?} ended early; nothing was written"
        )))
    });
    let limit = app.config.max_upload_bytes;
    let mut total = 0u64;
    let mut failure: Option<ApiError> = None;
    let mut writer_gone = false;
    let mut drained = 0u64;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => {
                if failure.is_some() || writer_gone {
                    drained += b.len() as u64;
                    if drained > DRAIN_LIMIT {
                        break;
                    }
                    continue;
                }
                total += b.len() as u64;
                if limit > 0 && total > limit {
                    failure = Some(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RESOURCE_EXHAUSTED",
                        format!(
                            "upload of {path:?} exceeds the limit of {limit} bytes; nothing was written"
                        ),
                    ));
                    batch.clear();
                    continue;
                }
                batch_len += b.len();
                batch.push(b);
                if batch_len >= BATCH {
                    batch_len = 0;
                    if tx
                        .send(Msg::Data(std::mem::take(&mut batch)))
                        .await
                        .is_err()
                    {
                        writer_gone = true; // its error is reported below
                    }
                }
            }
            Err(e) => {
                failure = Some(ApiError::invalid(format!(
                    "reading the body of {path:?} failed: {e}; nothing was written"
                )));
                break;
            }
        }
    }
    if failure.is_none() && !writer_gone {
        if !batch.is_empty() {
            let _ = tx.send(Msg::Data(batch)).await;
        }
        let _ = tx.send(Msg::End).await;
    }
    drop(tx);
    let result = writer
        .await
        .map_err(|e| ApiError::internal(format!("write task failed: {e}")))?;
    match failure {
        Some(f) => Err(f),
        None => result,
    }
}

/// `PUT /v1/files/{path}`.
pub(crate) async fn put_file(
    State(app): State<Arc<App>>,
    Query(query): Query<Vec<(String, String)>>,
    path: Option<Path<String>>,
    request: Request,
) -> Response {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    match put_inner(app, query, path, request).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn put_inner(
    app: Arc<App>,
    query: Vec<(String, String)>,
    path: String,
    request: Request,
) -> Result<(), ApiError> {
    let mode = mode_param(&query)?;
    let (a, p) = (app.clone(), path.clone());
    let target = blocking(move || resolve_put(&a, &p, false)).await?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = request.into_body().into_data_stream();
    let ensure = |target: Option<PutTarget>| {
        let (a, p) = (app.clone(), path.clone());
        async move {
            match target {
                Some(t) => Ok(t),
                None => {
                    let msg = format!("cannot create the parent directories of {p:?}");
                    blocking(move || resolve_put(&a, &p, true))
                        .await?
                        .ok_or_else(|| ApiError::internal(msg))
                }
            }
        }
    };
    if is_multipart(&content_type) {
        let boundary = multer::parse_boundary(&content_type)
            .map_err(|e| ApiError::invalid(format!("invalid multipart body: {e}")))?;
        let mut multipart = multer::Multipart::new(body, boundary);
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::invalid(format!("invalid multipart body: {e}")))?;
            let Some(field) = field else {
                return Err(ApiError::invalid(
                    "multipart body is missing the required \"file\" part",
                ));
            };
            if field.name() == Some("file") {
                let target = ensure(target).await?;
                write_atomic(&app, &path, target, mode, field).await?;
                return Ok(());
            }
        }
    }
    let target = ensure(target).await?;
    write_atomic(&app, &path, target, mode, body).await?;
    Ok(())
}

pub(crate) fn is_multipart(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// `DELETE /v1/files/{path}`.
pub(crate) async fn delete_file(
    State(app): State<Arc<App>>,
    Query(query): Query<Vec<(String, String)>>,
    path: Option<Path<String>>,
) -> Response {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    match blocking(move || delete_inner(&app, &query, &path)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

fn delete_inner(app: &App, query: &[(String, String)], path: &str) -> Result<(), ApiError> {
    let walked = app
        .root
        .resolve(path, false, false)
        .map_err(ApiError::from_confine)?;
    if let Walked::Entry { stat: None, .. } = walked {
        return Err(ApiError::not_found(format!(
            "path {path:?} does not exist within the sandbox"
        )));
    }
    let recursive = match query.iter().find(|(k, _)| k == "recursive") {
        None => false,
        Some((_, v)) if v.is_empty() => false,
        Some((_, v)) => parse_go_bool(v)
            .ok_or_else(|| ApiError::invalid(format!("recursive {v:?} must be a boolean")))?,
    };
    match walked {
        Walked::Root => {
            if !recursive {
                return Err(ApiError::conflict(
                    "cannot delete the sandbox root; pass recursive=true to clear its contents",
                ));
            }
            let dir = fsops::open_dir(&Walked::Root, &app.root)
                .map_err(|e| ApiError::from_errno(path, e))?;
            fsops::clear_dir(&dir).map_err(|e| ApiError::from_errno(path, e))
        }
        Walked::Entry {
            parent,
            name,
            stat: Some(st),
            ..
        } => {
            let result = if fsops::is_dir(&st) {
                if recursive {
                    fsops::remove_all(&parent, &name)
                } else {
                    rustix::fs::unlinkat(&parent, name.as_os_str(), rustix::fs::AtFlags::REMOVEDIR)
                }
            } else {
                rustix::fs::unlinkat(&parent, name.as_os_str(), rustix::fs::AtFlags::empty())
            };
            result.map_err(|e| match e {
                Errno::NOTEMPTY | Errno::EXIST => ApiError::conflict(format!(
                    "directory {path:?} is not empty; pass recursive=true to remove it"
                )),
                e => ApiError::from_errno(path, e),
            })
        }
        Walked::Entry { stat: None, .. } => unreachable!("handled above"),
    }
}

/// `GET /v1/health`.
pub(crate) async fn health(State(app): State<Arc<App>>) -> Response {
    if !app.ready.load(Ordering::SeqCst) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "sandboxd is shutting down",
        )
        .into_response();
    }
    let body = serde_json::json!({
        "status": "ok",
        "uptime_seconds": app.started.elapsed().as_secs(),
    });
    json_with_newline(StatusCode::OK, &body)
}

/// Names of variables never exposed on `/v1/metadata`.
const SENSITIVE_MARKERS: [&str; 10] = [
    "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CRED", "KEY", "AUTH", "BEARER", "PRIVATE", "CERT",
];

/// The environment exposed on `/v1/metadata`: prefixed names, minus anything that looks secret.
pub(crate) fn metadata_env(prefix: &str) -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| {
            let upper = k.to_uppercase();
            !SENSITIVE_MARKERS.iter().any(|m| upper.contains(m))
        })
        .collect()
}

/// `GET /v1/metadata`.
pub(crate) async fn metadata(State(app): State<Arc<App>>) -> Response {
    json_with_newline(
        StatusCode::OK,
        &serde_json::json!({ "env": &app.metadata_env }),
    )
}
