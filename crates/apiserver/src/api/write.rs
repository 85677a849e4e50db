//! The writes: create (names, generateName, metadata, admission through the kind's strategy),
//! update and patch (the status subresource, resourceVersion preconditions, generation,
//! finalizers of objects being deleted) and the scale subresource.

use super::*;

impl App {
    /// POST: create.
    pub async fn create(
        &self,
        t: &Target,
        body: &[u8],
        req: &mut Req,
    ) -> ApiResult<(StatusCode, Reply)> {
        t.refuse_if_read_only()?;
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
        let mut causes = admission::validate_name(&name, t.rd.strategy.name_rule());
        causes.extend(admission::validate_metadata(meta(&obj)));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&t.rd.group, &t.rd.kind, &name, causes));
        }
        self.check_namespace(t)?;
        self.admit_raw(t, &mut obj, None)?;
        self.decode_core(t, &mut obj, req)?;
        t.rd.strategy.prepare_create(self, &t.rd, &mut obj);
        let causes = t.rd.strategy.validate(&obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(&t.rd.group, &t.rd.kind, &name, causes));
        }
        t.rd.strategy.admit(self, t, &mut obj, None, req)?;
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
        self.admit_raw(t, &mut new, Some(&old_ext))?;
        self.decode_core(t, &mut new, req)?;
        let mut causes =
            t.rd.strategy
                .prepare_update(&old_ext, &mut new, status_only, req);
        if causes.is_empty() {
            causes = admission::validate_metadata(meta(&new));
            causes.extend(t.rd.strategy.validate(&new));
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
        t.rd.strategy
            .admit(self, t, &mut new, Some(&old_ext), req)?;
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

    /// PUT: update (main resource or status).
    pub async fn update(&self, t: &Target, body: &[u8], req: &mut Req) -> ApiResult<Reply> {
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
        let kind = PatchType::from_content_type(ct).ok_or_else(|| {
            ApiError::unsupported_media(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ))
        })?;
        if kind == PatchType::Apply {
            patch::apply(&Value::Null, kind, body)?;
        }
        if kind == PatchType::Strategic && !t.rd.strategy.strategic_merge() {
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
}

fn stored_with_rv(obj: &Value, rv: u64) -> Value {
    let mut o = obj.clone();
    meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
    o
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

/// Go's `%#v` of a sorted `[]string`, as kube-apiserver's messages print them.
fn go_strings(v: &[String]) -> String {
    let mut v: Vec<&String> = v.iter().collect();
    v.sort();
    v.dedup();
    let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
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
}
