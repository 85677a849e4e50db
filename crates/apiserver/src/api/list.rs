//! Lists: label and field selectors, `limit`/`continue` paging and `resourceVersion`/
//! `resourceVersionMatch` semantics.

use super::*;

impl App {
    /// Builds the selector from the query.
    pub fn selector(&self, t: &Target, req: &Req) -> ApiResult<Selector> {
        let labels = match req.q("labelSelector") {
            Some(s) if !s.is_empty() => LabelSelector::parse(s)?,
            _ => LabelSelector::default(),
        };
        let mut fields = match req.q("fieldSelector") {
            Some(s) if !s.is_empty() => FieldSelector::parse(s, t.rd.strategy.as_ref())?,
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
                .map_err(|_| ApiError::bad_resource_version(rv))?;
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
}
