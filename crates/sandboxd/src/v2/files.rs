//! `/v2` file operations beyond upstream: stat, mkdir, move, recursive tree listing, tar
//! download and upload of a directory, and a watch stream of changes (inotify). Every path is
//! confined like the upstream API.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path as StdPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, StatusCode, header};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::App;
use crate::confine::{ConfineError, Walked};
use crate::error::ApiError;
use crate::fsops::{self, AtomicWriter};
use crate::rest::blocking;
use crate::v2::exec::{stream_response, wire};

/// `?path=` of the read endpoints.
#[derive(Debug, Deserialize)]
pub struct PathQuery {
    /// Path under the root (default: the root).
    #[serde(default)]
    pub path: String,
    /// Tree: deepest level listed (default unlimited).
    pub max_depth: Option<usize>,
    /// Tree: most entries returned (default 100000).
    pub max_entries: Option<usize>,
    /// Watch: also watch subdirectories (default true).
    pub recursive: Option<bool>,
    /// Watch: end the stream after this many seconds.
    pub timeout: Option<f64>,
}

fn kind(stat: &Stat) -> &'static str {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        _ => "other",
    }
}

fn stat_json(path: &str, name: &str, stat: &Stat) -> Value {
    json!({
        "path": path,
        "name": name,
        "type": kind(stat),
        "size": stat.st_size,
        "mode": fsops::mode_string(stat),
        "modified_at": fsops::rfc3339(stat),
    })
}

/// `GET /v2/files/stat?path=`.
pub(crate) async fn stat(State(app): State<Arc<App>>, Query(q): Query<PathQuery>) -> Response {
    let result = blocking(move || {
        let path = q.path;
        let walked = app
            .root
            .resolve(&path, false, false)
            .map_err(ApiError::from_confine)?;
        let (stat, name, link) = match &walked {
            Walked::Root => (
                rustix::fs::fstat(app.root.fd()).map_err(|e| ApiError::from_errno(&path, e))?,
                String::new(),
                None,
            ),
            Walked::Entry { stat: None, .. } => {
                return Err(ApiError::not_found(format!(
                    "path {path:?} does not exist within the sandbox"
                )));
            }
            Walked::Entry {
                parent,
                name,
                stat: Some(st),
                ..
            } => {
                let link = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    rustix::fs::readlinkat(parent, name.as_os_str(), Vec::new())
                        .ok()
                        .map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
                } else {
                    None
                };
                (*st, name.to_string_lossy().into_owned(), link)
            }
        };
        let rel = format!("/{}", walked.rel_path().display());
        let mut v = stat_json(&rel, &name, &stat);
        if let Some(target) = link {
            v["link_target"] = json!(target);
            // Where the link leads, when that is inside the root.
            v["target_type"] = match app.root.resolve(&path, true, false) {
                Ok(Walked::Entry { stat: Some(t), .. }) => json!(kind(&t)),
                Ok(Walked::Root) => json!("directory"),
                _ => Value::Null,
            };
        }
        Ok(v)
    })
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn parse_mode(mode: Option<&str>, default: u32) -> Result<u32, ApiError> {
    let Some(m) = mode.filter(|m| !m.is_empty()) else {
        return Ok(default);
    };
    let valid =
        m.len() == 4 && m.starts_with('0') && m[1..].bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !valid {
        return Err(ApiError::invalid(format!(
            "mode {m:?} must match ^0[0-7]{{3}}$"
        )));
    }
    u32::from_str_radix(m, 8).map_err(|e| ApiError::invalid(format!("mode {m:?}: {e}")))
}

/// Body of `POST /v2/files/mkdir`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    /// Directory to create.
    pub path: String,
    /// Create missing parents and accept an existing directory (default true).
    pub parents: Option<bool>,
    /// Permission bits, e.g. "0755".
    pub mode: Option<String>,
}

/// `POST /v2/files/mkdir`.
pub(crate) async fn mkdir(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let result = blocking(move || {
        let req: MkdirRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid mkdir request: {e}")))?;
        let mode = parse_mode(req.mode.as_deref(), 0o755)?;
        let parents = req.parents.unwrap_or(true);
        let path = req.path;
        let walked = app
            .root
            .resolve(&path, true, parents)
            .map_err(ApiError::from_confine)?;
        match walked {
            Walked::Root => {
                if parents {
                    Ok(StatusCode::OK)
                } else {
                    Err(ApiError::conflict("the sandbox root already exists"))
                }
            }
            Walked::Entry { stat: Some(st), .. } => {
                if fsops::is_dir(&st) && parents {
                    Ok(StatusCode::OK)
                } else {
                    Err(ApiError::conflict(format!("path {path:?} already exists")))
                }
            }
            Walked::Entry {
                parent,
                name,
                stat: None,
                ..
            } => match rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(mode)) {
                Ok(()) => Ok(StatusCode::CREATED),
                Err(Errno::EXIST) if parents => Ok(StatusCode::OK),
                Err(Errno::EXIST) => {
                    Err(ApiError::conflict(format!("path {path:?} already exists")))
                }
                Err(e) => Err(ApiError::from_errno(&path, e)),
            },
        }
    })
    .await;
    match result {
        Ok(status) => status.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Body of `POST /v2/files/move`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Source path.
    pub from: String,
    /// Destination path (parents are created).
    pub to: String,
    /// Replace an existing destination (default false).
    pub overwrite: Option<bool>,
}

/// `POST /v2/files/move`.
pub(crate) async fn move_path(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let result = blocking(move || {
        let req: MoveRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid move request: {e}")))?;
        let from = app
            .root
            .resolve(&req.from, false, false)
            .map_err(ApiError::from_confine)?;
        let Walked::Entry {
            parent: fp,
            name: fname,
            stat: Some(_),
            ..
        } = from
        else {
            return Err(match from {
                Walked::Root => ApiError::invalid("the sandbox root cannot be moved"),
                _ => ApiError::not_found(format!(
                    "path {:?} does not exist within the sandbox",
                    req.from
                )),
            });
        };
        let to = app
            .root
            .resolve(&req.to, false, true)
            .map_err(ApiError::from_confine)?;
        let Walked::Entry {
            parent: tp,
            name: tname,
            stat: tstat,
            ..
        } = to
        else {
            return Err(ApiError::conflict("the destination is the sandbox root"));
        };
        let overwrite = req.overwrite.unwrap_or(false);
        if tstat.is_some() && !overwrite {
            return Err(ApiError::conflict(format!(
                "destination {:?} exists; pass \"overwrite\": true to replace it",
                req.to
            )));
        }
        let flags = if overwrite {
            rustix::fs::RenameFlags::empty()
        } else {
            rustix::fs::RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(&fp, fname.as_os_str(), &tp, tname.as_os_str(), flags).map_err(
            |e| match e {
                Errno::EXIST | Errno::NOTEMPTY | Errno::ISDIR | Errno::NOTDIR => {
                    ApiError::conflict(format!("cannot move {:?} onto {:?}: {e}", req.from, req.to))
                }
                Errno::INVAL => ApiError::invalid(format!(
                    "cannot move {:?} into itself ({:?})",
                    req.from, req.to
                )),
                e => ApiError::from_errno(&req.from, e),
            },
        )
    })
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

fn open_dir_at(parent: &impl std::os::fd::AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn dir_names(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Opens a resolved directory (following links beneath the root) and returns it with its path.
fn open_target_dir(app: &App, path: &str) -> Result<(OwnedFd, PathBuf), ApiError> {
    let walked = app
        .root
        .resolve(path, true, false)
        .map_err(ApiError::from_confine)?;
    match &walked {
        Walked::Entry { stat: None, .. } => {
            return Err(ApiError::not_found(format!(
                "path {path:?} does not exist within the sandbox"
            )));
        }
        Walked::Entry { stat: Some(st), .. } if !fsops::is_dir(st) => {
            return Err(ApiError::invalid(format!(
                "path {path:?} is not a directory"
            )));
        }
        _ => {}
    }
    let fd = fsops::open_dir(&walked, &app.root).map_err(|e| ApiError::from_errno(path, e))?;
    Ok((fd, walked.rel_path()))
}

/// `GET /v2/files/tree?path=&max_depth=&max_entries=`: every entry below a directory, links not
/// followed.
pub(crate) async fn tree(State(app): State<Arc<App>>, Query(q): Query<PathQuery>) -> Response {
    let result = blocking(move || {
        let (dir, rel) = open_target_dir(&app, &q.path)?;
        let max_depth = q.max_depth.unwrap_or(usize::MAX);
        let max_entries = q.max_entries.unwrap_or(100_000);
        let mut entries = Vec::new();
        let mut truncated = false;
        let mut stack: Vec<(OwnedFd, PathBuf, usize)> = vec![(dir, PathBuf::new(), 1)];
        'outer: while let Some((fd, prefix, depth)) = stack.pop() {
            let names = dir_names(&fd).map_err(|e| ApiError::from_errno(&q.path, e))?;
            for name in names {
                let Ok(st) = rustix::fs::statat(&fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
                let p = prefix.join(&name);
                entries.push(stat_json(&p.display().to_string(), &name.to_string_lossy(), &st));
                if entries.len() >= max_entries {
                    truncated = true;
                    break 'outer;
                }
                if fsops::is_dir(&st)
                    && depth < max_depth
                    && let Ok(sub) = open_dir_at(&fd, &name)
                {
                    stack.push((sub, p, depth + 1));
                }
            }
        }
        entries.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
        Ok(json!({ "path": format!("/{}", rel.display()), "entries": entries, "truncated": truncated }))
    })
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A `Write` that sends 64 KiB chunks into a channel (for streaming a tar from a thread).
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
            })?;
        }
        Ok(())
    }
}

fn header_for(st: &Stat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(st.st_mode & 0o7777);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h
}

fn tar_dir(
    builder: &mut tar::Builder<ChannelWriter>,
    dir: &OwnedFd,
    prefix: &StdPath,
) -> std::io::Result<()> {
    for name in dir_names(dir)? {
        let Ok(st) = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let path = prefix.join(&name);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let mut h = header_for(&st, tar::EntryType::Directory, 0);
                builder.append_data(&mut h, &path, std::io::empty())?;
                if let Ok(sub) = open_dir_at(dir, &name) {
                    tar_dir(builder, &sub, &path)?;
                }
            }
            FileType::RegularFile => {
                let Ok(fd) = rustix::fs::openat(
                    dir,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) else {
                    continue;
                };
                let file = std::fs::File::from(fd);
                let size = file.metadata()?.len();
                let mut h = header_for(&st, tar::EntryType::Regular, size);
                builder.append_data(&mut h, &path, file.take(size))?;
            }
            FileType::Symlink => {
                let Ok(target) = rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new()) else {
                    continue;
                };
                let mut h = header_for(&st, tar::EntryType::Symlink, 0);
                builder.append_link(&mut h, &path, OsStr::from_bytes(target.as_bytes()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `GET /v2/files/tar?path=`: the directory (or file) as an uncompressed tar stream, with entry
/// names relative to it. Links are stored as links.
pub(crate) async fn tar_download(
    State(app): State<Arc<App>>,
    Query(q): Query<PathQuery>,
) -> Response {
    let path = q.path.clone();
    let a = app.clone();
    let opened = blocking(move || {
        let walked = a
            .root
            .resolve(&path, true, false)
            .map_err(ApiError::from_confine)?;
        let is_dir = match &walked {
            Walked::Root => true,
            Walked::Entry { stat: None, .. } => {
                return Err(ApiError::not_found(format!(
                    "path {path:?} does not exist within the sandbox"
                )));
            }
            Walked::Entry { stat: Some(st), .. } => fsops::is_dir(st),
        };
        if is_dir {
            let fd =
                fsops::open_dir(&walked, &a.root).map_err(|e| ApiError::from_errno(&path, e))?;
            return Ok((fd, None));
        }
        let Walked::Entry { parent, name, .. } = walked else {
            unreachable!("root is a directory")
        };
        Ok((
            fsops::own(parent).map_err(|e| ApiError::from_errno(&path, e))?,
            Some(name),
        ))
    })
    .await;
    let (dir, single) = match opened {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let mut builder = tar::Builder::new(writer);
        let result = match single {
            None => tar_dir(&mut builder, &dir, StdPath::new("")),
            Some(name) => (|| {
                let st = rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let file = std::fs::File::from(fd);
                let size = file.metadata()?.len();
                let mut h = header_for(&st, tar::EntryType::Regular, size);
                builder.append_data(&mut h, StdPath::new(&name), file.take(size))
            })(),
        };
        let result = result.and_then(|()| builder.into_inner().and_then(|mut w| w.flush()));
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(Body::from_stream(crate::rest::receiver_stream(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A blocking `Read` over request body chunks.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Normalises an archive member name; `None` for names that climb out or are absolute.
fn member_comps(path: &StdPath) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn extract(app: &App, dest: &str, reader: ChannelReader) -> Result<Value, ApiError> {
    let base = app.root.lex(dest).map_err(ApiError::from_confine)?;
    // The destination itself (created when missing).
    match app
        .root
        .walk(dest, base.clone(), true, true)
        .map_err(ApiError::from_confine)?
    {
        Walked::Entry {
            parent,
            name,
            stat: None,
            ..
        } => {
            rustix::fs::mkdirat(&parent, name.as_os_str(), Mode::from_raw_mode(0o755))
                .map_err(|e| ApiError::from_errno(dest, e))?;
        }
        Walked::Entry { stat: Some(st), .. } if !fsops::is_dir(&st) => {
            return Err(ApiError::invalid(format!(
                "destination {dest:?} is not a directory"
            )));
        }
        _ => {}
    }
    let mut archive = tar::Archive::new(reader);
    let (mut files, mut dirs, mut links, mut skipped, mut bytes) =
        (0u64, 0u64, 0u64, Vec::<String>::new(), 0u64);
    let entries = archive
        .entries()
        .map_err(|e| ApiError::invalid(format!("invalid tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ApiError::invalid(format!("invalid tar stream: {e}")))?;
        let member = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        let shown = member.display().to_string();
        let Some(rel) = member_comps(&member) else {
            skipped.push(shown);
            continue;
        };
        if rel.is_empty() {
            continue;
        }
        let mut comps = base.clone();
        comps.extend(rel);
        let user = crate::confine::display(&comps);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let walked = match app.root.walk(&user, comps, false, true) {
            Ok(w) => w,
            Err(ConfineError::Escape(_)) => {
                return Err(ApiError::denied(format!(
                    "archive member {shown:?} leads outside the sandbox root"
                )));
            }
            Err(e) => return Err(ApiError::from_confine(e)),
        };
        let Walked::Entry {
            parent, name, stat, ..
        } = walked
        else {
            continue;
        };
        match kind {
            tar::EntryType::Directory => {
                if stat.is_none() {
                    rustix::fs::mkdirat(
                        &parent,
                        name.as_os_str(),
                        Mode::from_raw_mode(mode | 0o700),
                    )
                    .or_else(|e| if e == Errno::EXIST { Ok(()) } else { Err(e) })
                    .map_err(|e| ApiError::from_errno(&user, e))?;
                }
                dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if stat.is_some_and(|s| fsops::is_dir(&s)) {
                    return Err(ApiError::conflict(format!(
                        "archive member {shown:?} would replace a directory"
                    )));
                }
                let dir = fsops::own(parent).map_err(|e| ApiError::from_errno(&user, e))?;
                let mut w = AtomicWriter::create(dir, name, mode)
                    .map_err(|e| ApiError::from_errno(&user, e))?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = entry.read(&mut buf).map_err(|e| {
                        ApiError::invalid(format!("reading {shown:?} from the tar stream: {e}"))
                    })?;
                    if n == 0 {
                        break;
                    }
                    w.write(&buf[..n])
                        .map_err(|e| ApiError::from_errno(&user, e))?;
                    bytes += n as u64;
                }
                w.commit().map_err(|e| ApiError::from_errno(&user, e))?;
                files += 1;
            }
            tar::EntryType::Symlink => {
                let Some(target) = entry.link_name().ok().flatten().map(|t| t.into_owned()) else {
                    skipped.push(shown);
                    continue;
                };
                if stat.is_some() {
                    let _ = rustix::fs::unlinkat(&parent, name.as_os_str(), AtFlags::empty());
                }
                rustix::fs::symlinkat(target.as_os_str(), &parent, name.as_os_str())
                    .map_err(|e| ApiError::from_errno(&user, e))?;
                links += 1;
            }
            _ => skipped.push(shown),
        }
    }
    Ok(
        json!({ "files": files, "directories": dirs, "symlinks": links, "bytes": bytes, "skipped": skipped }),
    )
}

/// `PUT /v2/files/tar?path=`: extracts an uncompressed tar stream into the directory. Members
/// with absolute names or `..` are skipped; hard links and special files are skipped too.
pub(crate) async fn tar_upload(
    State(app): State<Arc<App>>,
    Query(q): Query<PathQuery>,
    request: Request,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(16);
    let a = app.clone();
    let dest = q.path.clone();
    let worker = tokio::task::spawn_blocking(move || {
        extract(
            &a,
            &dest,
            ChannelReader {
                rx,
                cur: Bytes::new(),
            },
        )
    });
    let mut body = request.into_body().into_data_stream();
    let limit = app.config.max_upload_bytes;
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let item = chunk.map_err(|e| e.to_string());
        if let Ok(b) = &item {
            total += b.len() as u64;
            if limit > 0 && total > limit {
                let _ = tx
                    .send(Err(format!("upload exceeds the limit of {limit} bytes")))
                    .await;
                break;
            }
        }
        if tx.send(item).await.is_err() {
            break;
        }
    }
    drop(tx);
    match worker.await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(format!("extract task failed: {e}")).into_response(),
    }
}

/// `GET /v2/files/watch?path=&recursive=&timeout=`: a stream (NDJSON or SSE) of changes below a
/// directory: `create`, `modify`, `delete`, `move_from`, `move_to`, `attrib`, with paths
/// relative to the root.
pub(crate) async fn watch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<PathQuery>,
) -> Response {
    use inotify::{Inotify, WatchMask};
    let wire = wire(&headers);
    let a = app.clone();
    let path = q.path.clone();
    let recursive = q.recursive.unwrap_or(true);
    let dirs = blocking(move || {
        let (dir, rel) = open_target_dir(&a, &path)?;
        let mut out = vec![rel.clone()];
        if recursive {
            let mut stack = vec![(dir, rel)];
            while let Some((fd, prefix)) = stack.pop() {
                for name in dir_names(&fd).unwrap_or_default() {
                    let Ok(st) =
                        rustix::fs::statat(&fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    else {
                        continue;
                    };
                    if fsops::is_dir(&st)
                        && let Ok(sub) = open_dir_at(&fd, &name)
                    {
                        out.push(prefix.join(&name));
                        stack.push((sub, prefix.join(&name)));
                        if out.len() > 10_000 {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    })
    .await;
    let dirs = match dirs {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let inotify = match Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            return ApiError::internal(format!("inotify is unavailable: {e}")).into_response();
        }
    };
    let mask = WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR;
    let mut watches = inotify.watches();
    let mut names: HashMap<inotify::WatchDescriptor, PathBuf> = HashMap::new();
    for d in dirs {
        if let Ok(wd) = watches.add(app.root.host_path(&d), mask) {
            names.insert(wd, d);
        }
    }
    let mut stream = match inotify.into_event_stream(vec![0u8; 64 * 1024]) {
        Ok(s) => s,
        Err(e) => return ApiError::internal(format!("inotify stream: {e}")).into_response(),
    };
    let (tx, rx) = mpsc::channel::<Value>(64);
    let deadline = q
        .timeout
        .filter(|t| t.is_finite() && *t > 0.0)
        .map(Duration::from_secs_f64);
    let root = app.clone();
    tokio::spawn(async move {
        let _ = tx.send(json!({"type": "ready"})).await;
        let end = async {
            match deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(end);
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = &mut end => break,
                _ = tx.closed() => break,
            };
            let Some(Ok(ev)) = ev else { break };
            let Some(dir) = names.get(&ev.wd).cloned() else {
                continue;
            };
            let Some(name) = ev.name else { continue };
            if name.as_bytes().starts_with(fsops::TMP_PREFIX.as_bytes()) {
                continue;
            }
            let rel = dir.join(&name);
            let m = ev.mask;
            use inotify::EventMask as E;
            let is_dir = m.contains(E::ISDIR);
            let kind = if m.contains(E::CREATE) {
                "create"
            } else if m.contains(E::DELETE) {
                "delete"
            } else if m.contains(E::MOVED_FROM) {
                "move_from"
            } else if m.contains(E::MOVED_TO) {
                "move_to"
            } else if m.contains(E::CLOSE_WRITE) || m.contains(E::MODIFY) {
                "modify"
            } else if m.contains(E::ATTRIB) {
                "attrib"
            } else {
                continue;
            };
            if recursive
                && is_dir
                && (kind == "create" || kind == "move_to")
                && let Ok(wd) = watches.add(root.root.host_path(&rel), mask)
            {
                names.insert(wd, rel.clone());
            }
            let v = json!({"type": kind, "path": format!("/{}", rel.display()), "is_dir": is_dir});
            if tx.send(v).await.is_err() {
                break;
            }
        }
    });
    stream_response(wire, rx)
}
