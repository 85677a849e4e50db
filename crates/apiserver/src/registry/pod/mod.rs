//! core/v1 Pod: defaults and binding to the node on create, kube-apiserver's update rule and
//! validation, graceful deletion, field selectors, the printer's columns, and the connect
//! subresources `log`, `exec` and `portforward`.

pub mod exec;
pub mod log;
pub mod portforward;
mod printer;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Strategy, column, name_cell, name_column};
use crate::admission;
use crate::api::{App, Req, Target};
use crate::error::Cause;
use crate::resources::ResourceDef;

/// The Pod strategy.
#[derive(Debug, Default)]
pub struct Pod;

impl Strategy for Pod {
    fn prepare_create(&self, app: &App, _rd: &ResourceDef, obj: &mut Value) {
        admission::default_pod(obj);
        let spec = &mut obj["spec"];
        if spec.is_object() && spec["nodeName"].as_str().is_none_or(str::is_empty) {
            spec["nodeName"] = json!(app.node_name);
        }
        obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])});
    }

    fn prepare_update(
        &self,
        old: &Value,
        new: &mut Value,
        status_only: bool,
        _req: &mut Req,
    ) -> Vec<Cause> {
        admission::default_pod(new);
        if status_only || pod_spec_update_allowed(&old["spec"], &new["spec"]) {
            return vec![];
        }
        vec![Cause {
            reason: "FieldValueForbidden".into(),
            message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
            field: "spec".into(),
        }]
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        admission::validate_pod(obj)
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn returns_deleted_object(&self) -> bool {
        true
    }

    fn converts_field_labels(&self) -> bool {
        true
    }

    /// DeleteOptions' `gracePeriodSeconds`, else the Pod's `terminationGracePeriodSeconds`
    /// (30); none for a Pod that finished or never reached a node; never longer than a
    /// deletion already under way.
    fn grace_period(&self, old: &Value, opts: &Value) -> i64 {
        let phase = super::str_or(old, "/status/phase", "");
        if matches!(phase, "Succeeded" | "Failed")
            || super::str_or(old, "/spec/nodeName", "").is_empty()
        {
            return 0;
        }
        let grace = opts["gracePeriodSeconds"].as_i64().unwrap_or_else(|| {
            old.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        match old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
        {
            Some(existing) => grace.min(existing),
            None => grace,
        }
    }

    fn field_pointer(&self, field: &str) -> Option<String> {
        matches!(
            field,
            "status.phase"
                | "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.podIP"
                | "status.nominatedNodeName"
        )
        .then(|| format!("/{}", field.replace('.', "/")))
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            column(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            column(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            super::age_column(),
            column("IP", "string", 1, "IP address allocated to the pod."),
            column(
                "Node",
                "string",
                1,
                "Name of the node where the pod is running.",
            ),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, obj: &Value) -> Vec<Value> {
        let mut cells = vec![name_cell(obj)];
        cells.extend(printer::cells(obj));
        cells
    }

    fn subresource_entries(&self) -> Vec<Value> {
        vec![
            json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}),
            json!({"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]}),
            json!({"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}),
        ]
    }

    fn connects(&self, sub: &str, method: &Method) -> bool {
        match sub {
            "exec" | "portforward" => matches!(*method, Method::GET | Method::POST),
            "log" => *method == Method::GET,
            _ => false,
        }
    }

    fn connect(&self, app: Arc<App>, t: Target, req: Request) -> BoxFuture<'static, Response> {
        match t.sub.as_deref() {
            Some("exec") => Box::pin(exec::serve(app, t, req)),
            Some("portforward") => Box::pin(portforward::serve(app, t, req)),
            _ => Box::pin(log::serve(app, t, req)),
        }
    }
}

/// kube-apiserver's pod update rule: only images, activeDeadlineSeconds, added tolerations and
/// terminationGracePeriodSeconds may change.
fn pod_spec_update_allowed(old: &Value, new: &Value) -> bool {
    let normalise = |spec: &Value, other: &Value| -> Value {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            if let (Some(a), Some(b)) = (
                s.get_mut(list).and_then(Value::as_array_mut),
                other.get(list).and_then(Value::as_array),
            ) {
                for (c, o) in a.iter_mut().zip(b) {
                    if let Some(img) = o.get("image") {
                        c["image"] = img.clone();
                    }
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            for k in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "schedulingGates",
            ] {
                m.remove(k);
            }
        }
        s
    };
    let tolerations_ok = match (
        old.get("tolerations").and_then(Value::as_array),
        new.get("tolerations").and_then(Value::as_array),
    ) {
        (Some(o), Some(n)) => o.iter().all(|t| n.contains(t)),
        (Some(o), None) => o.is_empty(),
        _ => true,
    };
    let (a, b) = (normalise(old, new), normalise(new, new));
    if a != b {
        tracing::debug!(old = %a, new = %b, "pod spec update refused");
    }
    tolerations_ok && a == b
}

/// The Pod's QoS class (`status.qosClass`) from its containers' requests and limits.
fn qos_class(spec: &Value) -> &'static str {
    let cs = spec["containers"].as_array().cloned().unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !cs.is_empty();
    for c in &cs {
        let r = &c["resources"];
        let (req, lim) = (&r["requests"], &r["limits"]);
        if req.as_object().is_some_and(|m| !m.is_empty())
            || lim.as_object().is_some_and(|m| !m.is_empty())
        {
            any = true;
        }
        for k in ["cpu", "memory"] {
            let l = lim.get(k);
            let q = req.get(k).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}
