//! Watch streams: initial events (`resourceVersion` unset or 0, `sendInitialEvents`), resume
//! from a resourceVersion through the watch cache, selector transitions (objects leaving a
//! selector are reported as DELETED), bookmarks, `timeoutSeconds`, and 410 Expired ERROR events
//! for versions older than the retained window.

use crate::api::{App, Req, Target};
use crate::error::ApiError;
use crate::store::{Event, EventKind};
use crate::table;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Interval between bookmarks when the client asked for them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

fn raw_line(typ: &str, obj: &Bytes) -> Bytes {
    let mut v = Vec::with_capacity(obj.len() + 32);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(typ.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    v.extend_from_slice(obj);
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

fn line(typ: &str, obj: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": typ, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Serves `?watch=true` on a collection (or a named object).
pub async fn serve(app: Arc<App>, t: Target, r: Req) -> Response {
    match start(app, t, r).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn start(app: Arc<App>, t: Target, r: Req) -> Result<Response, ApiError> {
    let mut sel = app.selector(&t, &r)?;
    crate::api::validate_list_options(&r, true)?;
    if let Some(name) = &t.name {
        sel.fields
            .0
            .push(("/metadata/name".into(), name.clone(), true));
    }
    let q = |k: &str| r.query.get(k).map(String::as_str);
    let bookmarks = crate::query::flag(q("allowWatchBookmarks"));
    let send_initial = crate::query::flag(q("sendInitialEvents"));
    let timeout = crate::query::int64(q("timeoutSeconds"))?
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .unwrap_or(1800);
    let rv_param = q("resourceVersion")
        .filter(|s| !s.is_empty())
        .map(String::from);
    let start_rv = match rv_param.as_deref() {
        None | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_resource_version(s))?,
        ),
    };
    let as_table = r
        .headers
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|f| f.contains("as=Table")));
    let include = r.query.get("includeObject").cloned();
    let key = t.rd.key();
    let ns_filter = if t.rd.namespaced { t.ns.clone() } else { None };
    let mut notify = app.store.subscribe(&key);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let app2 = app.clone();
    let t2 = t.clone();
    let render = move |app: &App, obj: &Value| -> Option<Value> {
        let ext = app.to_external(&t2.rd, &t2.version, obj).ok()?;
        Some(if as_table {
            table::to_table(&t2, &ext, include.as_deref())
        } else {
            ext
        })
    };
    let matches = move |obj: &Value| -> bool {
        ns_filter
            .as_deref()
            .is_none_or(|ns| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
            && sel.matches(obj)
    };
    let av = t.rd.api_version(&t.version);
    // Stored objects already carry the storage apiVersion and kind: serialise them once.
    let fast = !as_table && !t.rd.strategy.converts(&t.rd, &t.version);
    let kind = t.rd.kind.clone();
    tokio::spawn(async move {
        let app = app2;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        notify.borrow_and_update();
        let (mut pos, from) = match start_rv.filter(|_| !send_initial) {
            Some(rv) => (rv, rv),
            None => {
                let (items, rv) = app.store.snapshot(&key, &matches);
                for s in items {
                    if let Some(o) = render(&app, &s.obj)
                        && tx.send(line("ADDED", o)).await.is_err()
                    {
                        return;
                    }
                }
                if send_initial {
                    let bm = json!({"kind": kind, "apiVersion": av, "metadata": {
                        "resourceVersion": rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}}});
                    if tx.send(line("BOOKMARK", bm)).await.is_err() {
                        return;
                    }
                }
                (rv, rv)
            }
        };
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            notify.borrow_and_update();
            match app.store.events_since(&key, pos) {
                Err(window) => {
                    let st = ApiError::gone(format!("too old resource version: {pos} ({window})"));
                    let _ = tx.send(line("ERROR", st.status())).await;
                    return;
                }
                Ok((events, upto)) => {
                    for e in events {
                        let Some(typ) = classify(&e, from, &matches) else {
                            continue;
                        };
                        let out = if fast {
                            raw_line(typ, e.stored.json())
                        } else {
                            match render(&app, &e.stored.obj) {
                                Some(o) => line(typ, o),
                                None => continue,
                            }
                        };
                        if tx.send(out).await.is_err() {
                            return;
                        }
                    }
                    pos = upto;
                }
            }
            let bm_at = last_bookmark + BOOKMARK_EVERY;
            tokio::select! {
                _ = notify.changed() => {}
                _ = tokio::time::sleep_until(bm_at) => {
                    last_bookmark = tokio::time::Instant::now();
                    if bookmarks {
                        let bm = json!({"kind": kind, "apiVersion": av, "metadata": {"resourceVersion": pos.to_string()}});
                        if tx.send(line("BOOKMARK", bm)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(Ok::<_, std::convert::Infallible>))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Maps a cache event to a watch event for one watcher (`from` = the watch's start version).
fn classify(e: &Event, from: u64, matches: &dyn Fn(&Value) -> bool) -> Option<&'static str> {
    let now = matches(&e.stored.obj);
    match e.kind {
        EventKind::Added => now.then_some("ADDED"),
        EventKind::Deleted => now.then_some("DELETED"),
        EventKind::Modified => {
            let before = e.prev.as_deref().is_some_and(matches);
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
        EventKind::Compacted {
            created_rv,
            deleted,
        } => {
            if !now {
                None
            } else if deleted {
                (created_rv <= from).then_some("DELETED")
            } else if created_rv > from {
                Some("ADDED")
            } else {
                Some("MODIFIED")
            }
        }
    }
}
