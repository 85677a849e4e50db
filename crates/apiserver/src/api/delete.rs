//! Deletion: preconditions, propagation policies as finalizers, graceful deletion and server
//! finalization as the kind's strategy asks, and deletecollection.

use super::*;

impl App {
    /// DELETE one object.
    pub async fn delete(
        &self,
        t: &Target,
        body: &[u8],
        req: &mut Req,
    ) -> ApiResult<(StatusCode, Value)> {
        t.refuse_if_read_only()?;
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
        t.rd.strategy.check_delete(t.name())?;
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
            let grace = t.rd.strategy.grace_period(&old.obj, opts);
            let finalizing = t.rd.strategy.finalized_by_server(&old.obj);
            if fins.is_empty() && grace <= 0 && !finalizing {
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
                    Ok(s) if t.rd.strategy.returns_deleted_object() => {
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
            t.rd.strategy.mark_terminating(&mut new);
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

    /// DELETE collection.
    pub async fn delete_collection(
        &self,
        t: &Target,
        body: &[u8],
        req: &mut Req,
    ) -> ApiResult<Value> {
        t.refuse_if_read_only()?;
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
            match self
                .delete_with(
                    &tt,
                    &opts,
                    req.dry_run() || opts["dryRun"] == json!(["All"]),
                )
                .await
            {
                // The answer lists the objects as they were listed, as kube-apiserver's does.
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

/// kube-apiserver's answer to a delete that removed the object at once (no finalizers, no
/// grace period) of a kind that does not return the object: a `Status` naming it, with the
/// resource in `details.kind`.
fn deleted_status(rd: &ResourceDef, obj: &Value) -> Value {
    let mut details =
        json!({"name": meta(obj)["name"], "kind": rd.plural, "uid": meta(obj)["uid"]});
    if !rd.group.is_empty() {
        details["group"] = json!(rd.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
