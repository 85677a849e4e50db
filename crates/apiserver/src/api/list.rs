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
        validate_list_options(req, false)?;
        let rv_param = req.q("resourceVersion").filter(|s| !s.is_empty());
        let mut after: Option<ObjKey> = None;
        let mut list_rv: Option<u64> = None;
        if let Some(c) = req.q("continue").filter(|s| !s.is_empty()) {
            let (key, rv) = decode_continue(c, t.rd.namespaced).map_err(|e| {
                ApiError::bad_request(format!(
                    "invalid continue token: continue key is not valid{e}"
                ))
            })?;
            if rv_param.is_some_and(|rv| rv != "0") {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            after = Some(key);
            list_rv = Some(rv);
        } else if let Some(rv) = rv_param {
            let n = rv
                .parse::<u64>()
                .map_err(|_| ApiError::bad_list_resource_version(rv))?;
            if req.q("resourceVersionMatch") == Some("Exact") && n != self.store.current_rv() {
                return Err(ApiError::gone(format!(
                    "too old resource version: {n} ({})",
                    self.store.current_rv()
                )));
            }
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
            lm["continue"] = json!(encode_continue(list_rv, &ns, &name, t.rd.namespaced));
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

/// A `continue` token as kube-apiserver writes it: unpadded URL-safe base64 of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`, where the key (`ns/name`, or `name`
/// for cluster-scoped kinds) is the last one returned and the NUL makes the next page start
/// after it.
fn encode_continue(rv: u64, ns: &str, name: &str, namespaced: bool) -> String {
    let key = if namespaced {
        format!("{ns}/{name}")
    } else {
        name.to_string()
    };
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{key}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// The key to continue after and the list's resourceVersion of a `continue` token, or what
/// follows "continue key is not valid" in kube-apiserver's refusal (`: <cause>`).
fn decode_continue(token: &str, namespaced: bool) -> Result<(ObjKey, u64), String> {
    use base64::DecodeError;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| {
            let at = match e {
                DecodeError::InvalidByte(at, _) | DecodeError::InvalidLastSymbol(at, _) => at,
                DecodeError::InvalidLength(len) => len.saturating_sub(1),
                DecodeError::InvalidPadding => token.find('=').unwrap_or(0),
            };
            format!(": illegal base64 data at input byte {at}")
        })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            None => ": unexpected end of JSON input".to_string(),
            Some(c) if !b"{[\"-0123456789tfn".contains(c) => {
                format!(
                    ": invalid character '{}' looking for beginning of value",
                    *c as char
                )
            }
            _ if e.is_eof() => ": unexpected end of JSON input".to_string(),
            _ => format!(": {e}"),
        }
    })?;
    match v["v"].as_str().unwrap_or("") {
        "meta.k8s.io/v1" => {}
        other => {
            return Err(format!(
                ": server does not recognize this encoded version {other}"
            ));
        }
    }
    let rv = v["rv"]
        .as_u64()
        .filter(|rv| *rv > 0)
        .ok_or(": incorrect encoded start resourceVersion (version meta.k8s.io/v1)".to_string())?;
    let start = v["start"].as_str().unwrap_or("");
    let key = start.strip_suffix('\u{0}').unwrap_or(start);
    if key.is_empty() {
        return Err(": encoded start key empty (version meta.k8s.io/v1)".into());
    }
    let parsed = if namespaced {
        key.split_once('/')
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
    } else {
        Some((String::new(), key.to_string()))
    };
    match parsed {
        Some(k) if !k.1.is_empty() && !k.1.contains('/') && !key.contains("..") => Ok((k, rv)),
        _ => Err(format!(": {start}")),
    }
}

/// kube-apiserver's `ValidateListOptions` (the WatchList feature on, as by default): what
/// `resourceVersionMatch` and `sendInitialEvents` may be combined with, for a list or a watch.
pub(crate) fn validate_list_options(req: &Req, watch: bool) -> ApiResult<()> {
    let forbidden = |field: &str, msg: &str| Cause {
        reason: "FieldValueForbidden".into(),
        message: format!("Forbidden: {msg}"),
        field: field.into(),
    };
    let unsupported = |value: &str, supported: &[&str]| Cause {
        reason: "FieldValueNotSupported".into(),
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            supported
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        field: "resourceVersionMatch".into(),
    };
    let rv = req.q("resourceVersion").unwrap_or("");
    let rv_match = req.q("resourceVersionMatch").unwrap_or("");
    let has_continue = req.q("continue").is_some_and(|c| !c.is_empty());
    let send_initial = req.q("sendInitialEvents");
    let mut causes = vec![];
    if watch {
        // A watch from no or the "0" resourceVersion that sets neither is defaulted to
        // sendInitialEvents=true with NotOlderThan, which passes.
        if send_initial.is_some() && rv_match != "NotOlderThan" {
            causes.push(forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !rv_match.is_empty() {
            if send_initial.is_none() {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if rv_match != "NotOlderThan" {
                causes.push(unsupported(rv_match, &["NotOlderThan"]));
            }
            if has_continue {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
    } else {
        if !rv_match.is_empty() {
            if rv.is_empty() {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if has_continue {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if rv_match != "Exact" && rv_match != "NotOlderThan" {
                causes.push(unsupported(rv_match, &["Exact", "NotOlderThan", ""]));
            }
            if rv_match == "Exact" && rv == "0" {
                causes.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
        }
        if send_initial.is_some() {
            causes.push(forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            ));
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", causes))
}
