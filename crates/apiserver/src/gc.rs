//! Background controllers inside the API server: the ownerReference garbage collector
//! (background, foreground with `blockOwnerDeletion` and the `foregroundDeletion` finalizer,
//! orphan with the `orphan` finalizer), namespace finalization (deleting a namespace deletes its
//! contents), and the reaper that removes pods whose deletion grace period has passed.

use crate::api::{App, Target};
use crate::store::{Change, EventKind, Op, StoreError};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};

fn target(app: &App, res: &str, ns: &str, name: &str) -> Option<Target> {
    let rd = app
        .resources
        .iter()
        .filter(|r| r.key() == res)
        .max_by_key(|r| !r.group.is_empty())
        .cloned()?;
    Some(Target {
        version: rd.storage_version().to_string(),
        ns: (!ns.is_empty()).then(|| ns.to_string()),
        name: Some(name.to_string()),
        sub: None,
        rd,
    })
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn is_deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    strs(&o["metadata"]["finalizers"]).iter().any(|x| x == f)
}

fn ns_name(o: &Value) -> (String, String) {
    (
        o.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        o.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    )
}

/// Read-modify-write of a stored object with retries; deletes it when it is being deleted and
/// its last finalizer went away.
async fn mutate(
    app: &App,
    res: &str,
    ns: &str,
    name: &str,
    f: &(dyn Fn(&mut Value) -> bool + Send + Sync),
) {
    for _ in 0..16 {
        let Some(cur) = app.store.get(res, ns, name) else {
            return;
        };
        let mut o = (*cur.obj).clone();
        if !f(&mut o) {
            return;
        }
        let fins_empty = o
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
        if let Some(m) = o["metadata"].as_object_mut()
            && fins_empty
        {
            m.remove("finalizers");
        }
        let grace_over = o
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .is_some_and(|d| d <= chrono::Utc::now());
        let ns_pending = o
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
            && res == "namespaces";
        let op = if is_deleting(&o) && fins_empty && grace_over && !ns_pending {
            Op::Delete {
                res: res.into(),
                key: (ns.into(), name.into()),
                expect_rv: Some(cur.rv),
                expect_uid: None,
            }
        } else {
            Op::Update {
                res: res.into(),
                obj: o,
                expect_rv: Some(cur.rv),
            }
        };
        match app.store.write(op).await {
            Err(StoreError::Conflict) => continue,
            _ => return,
        }
    }
}

async fn delete(app: &App, res: &str, ns: &str, name: &str, policy: &str) {
    let Some(t) = target(app, res, ns, name) else {
        return;
    };
    let opts = json!({"propagationPolicy": policy});
    if let Err(e) = app.delete_with(&t, &opts, false).await
        && e.code != 404
    {
        tracing::warn!(res, ns, name, error = %e, "garbage collector could not delete a dependent");
    }
}

/// Decides the fate of one dependent from its owners.
async fn check_dependent(app: &App, res: &str, obj: &Value) {
    if is_deleting(obj) {
        return;
    }
    let refs = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if refs.is_empty() {
        return;
    }
    let mut live = 0;
    let mut dangling: Vec<String> = vec![];
    let mut foreground = false;
    for r in &refs {
        let uid = r["uid"].as_str().unwrap_or("");
        match app.store.by_uid(uid) {
            None => dangling.push(uid.to_string()),
            Some((_, owner)) => {
                if is_deleting(&owner.obj) && has_finalizer(&owner.obj, "foregroundDeletion") {
                    foreground = true;
                } else {
                    live += 1;
                }
            }
        }
    }
    let (ns, name) = ns_name(obj);
    if live == 0 && (!dangling.is_empty() || foreground) {
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        let policy = if foreground && !app.store.dependents(uid).is_empty() {
            "Foreground"
        } else {
            "Background"
        };
        delete(app, res, &ns, &name, policy).await;
    } else if live > 0 && !dangling.is_empty() {
        mutate(app, res, &ns, &name, &|o: &mut Value| {
            let Some(a) = o
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            else {
                return false;
            };
            let before = a.len();
            a.retain(|r| !dangling.iter().any(|d| r["uid"].as_str() == Some(d)));
            a.len() != before
        })
        .await;
    }
}

/// Foreground deletion of an owner: delete dependents, and drop the finalizer once no
/// dependent with `blockOwnerDeletion` remains.
async fn foreground(app: &App, res: &str, owner: &Value) {
    let uid = owner
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let deps = app.store.dependents(&uid);
    let mut blocking = 0;
    for (dres, d) in &deps {
        let blocks = d
            .obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter().any(|r| {
                    r["uid"].as_str() == Some(&uid)
                        && r["blockOwnerDeletion"].as_bool() == Some(true)
                })
            });
        if blocks {
            blocking += 1;
        }
        if !is_deleting(&d.obj) {
            check_dependent(app, dres, &d.obj).await;
        }
    }
    if blocking == 0 {
        remove_finalizer(app, res, owner, &uid, "foregroundDeletion").await;
    }
}

/// Removes `finalizer` from `owner` if it is still the object with `uid`.
async fn remove_finalizer(app: &App, res: &str, owner: &Value, uid: &str, finalizer: &str) {
    let (ns, name) = ns_name(owner);
    mutate(app, res, &ns, &name, &|o: &mut Value| {
        if o.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
            return false;
        }
        let Some(a) = o
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = a.len();
        a.retain(|f| f != finalizer);
        a.len() != before
    })
    .await;
}

/// Orphan deletion: remove the owner's references from dependents, then the finalizer.
async fn orphan(app: &App, res: &str, owner: &Value) {
    let uid = owner
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for (dres, d) in app.store.dependents(&uid) {
        let (ns, name) = ns_name(&d.obj);
        mutate(app, &dres, &ns, &name, &|o: &mut Value| {
            let Some(a) = o
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            else {
                return false;
            };
            let before = a.len();
            a.retain(|r| r["uid"].as_str() != Some(&uid));
            let changed = a.len() != before;
            if a.is_empty()
                && let Some(m) = o["metadata"].as_object_mut()
            {
                m.remove("ownerReferences");
            }
            changed
        })
        .await;
    }
    remove_finalizer(app, res, owner, &uid, "orphan").await;
}

/// Namespace finalization: delete the contents, then the namespace.
async fn finalize_namespace(app: &App, ns_obj: &Value) {
    let name = ns_obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let contents = app.store.namespace_contents(&name);
    for (res, (ns, n)) in &contents {
        if let Some(s) = app.store.get(res, ns, n)
            && !is_deleting(&s.obj)
        {
            delete(app, res, ns, n, "Background").await;
        }
    }
    if contents.is_empty() {
        mutate(app, "namespaces", "", &name, &|o: &mut Value| {
            if !is_deleting(o) {
                return false;
            }
            o["spec"]["finalizers"] = json!([]);
            true
        })
        .await;
    }
}

async fn process(app: &App, c: Change) {
    let obj = c.obj.clone();
    if c.kind == EventKind::Deleted {
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        for (dres, d) in app.store.dependents(&uid) {
            check_dependent(app, &dres, &d.obj).await;
        }
        // An owner waiting in foreground deletion may now be free.
        for r in obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if let Some((ores, owner)) = app.store.by_uid(r["uid"].as_str().unwrap_or(""))
                && is_deleting(&owner.obj)
                && has_finalizer(&owner.obj, "foregroundDeletion")
            {
                foreground(app, &ores, &owner.obj).await;
            }
        }
        let ns = c.key.0.clone();
        if !ns.is_empty()
            && let Some(n) = app.store.get("namespaces", "", &ns)
            && is_deleting(&n.obj)
        {
            finalize_namespace(app, &n.obj).await;
        }
        return;
    }
    if is_deleting(&obj) {
        if has_finalizer(&obj, "foregroundDeletion") {
            foreground(app, &c.res, &obj).await;
        }
        if has_finalizer(&obj, "orphan") {
            orphan(app, &c.res, &obj).await;
        }
        if c.res == "namespaces" {
            finalize_namespace(app, &obj).await;
        }
        return;
    }
    check_dependent(app, &c.res, &obj).await;
}

/// Events live one hour, as with kube-apiserver's default `--event-ttl`.
pub const EVENT_TTL: Duration = Duration::from_secs(3600);

/// Deletes events older than `ttl` (by their last activity, else creation).
pub async fn expire_events(app: &App, ttl: Duration) {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(ttl).unwrap_or_default();
    let old = |o: &Value| {
        [
            "/deprecatedLastTimestamp",
            "/series/lastObservedTime",
            "/eventTime",
            "/metadata/creationTimestamp",
        ]
        .iter()
        .filter_map(|p| o.pointer(p).and_then(Value::as_str))
        .filter_map(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&chrono::Utc))
        .max()
        .is_some_and(|d| d < cutoff)
    };
    let (events, _, _) = app.store.list("events", None, None, None, &old);
    for e in events {
        let (ns, name) = ns_name(&e.obj);
        let _ = app
            .store
            .write(Op::Delete {
                res: "events".into(),
                key: (ns, name),
                expect_rv: Some(e.rv),
                expect_uid: None,
            })
            .await;
    }
}

async fn sweep(app: &Arc<App>) {
    // Pods past their grace period (the node agent normally deletes them earlier).
    let now = chrono::Utc::now();
    let (pods, _, _) = app.store.list("pods", None, None, None, &|o: &Value| {
        o.pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .is_some_and(|d| d <= now)
            && o.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty())
    });
    for p in pods {
        let (ns, name) = ns_name(&p.obj);
        let _ = app
            .store
            .write(Op::Delete {
                res: "pods".into(),
                key: (ns, name),
                expect_rv: Some(p.rv),
                expect_uid: None,
            })
            .await;
    }
    let (nss, _, _) = app
        .store
        .list("namespaces", None, None, None, &|o: &Value| is_deleting(o));
    for n in nss {
        finalize_namespace(app, &n.obj).await;
    }
}

/// Runs the collector until shutdown; Events older than `event_ttl` are deleted.
pub async fn run(
    app: Arc<App>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    mut shutdown: watch::Receiver<bool>,
    event_ttl: Duration,
) {
    let sem = Arc::new(Semaphore::new(32));
    for (res, s) in app.store.gc_candidates() {
        let key = ns_name(&s.obj);
        let c = Change {
            res,
            key,
            kind: EventKind::Modified,
            obj: s.obj.clone(),
        };
        process(&app, c).await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            c = changes.recv() => {
                let Some(c) = c else { return };
                let Ok(permit) = sem.clone().acquire_owned().await else { return };
                let app = app.clone();
                tokio::spawn(async move {
                    process(&app, c).await;
                    drop(permit);
                });
            }
            _ = tick.tick() => {
                let app = app.clone();
                sweep(&app).await;
                ticks += 1;
                if ticks % 60 == 1 {
                    expire_events(&app, event_ttl).await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
