//! Events, stored once as `events.k8s.io/v1` and served by both that group and core/v1 (the
//! fields renamed between the two), with their field selectors and printer columns.

use serde_json::{Value, json};

use super::{Strategy, column};
use crate::api::App;
use crate::error::{ApiResult, Cause};
use crate::resources::ResourceDef;

/// The Event strategy, for both groups.
#[derive(Debug, Default)]
pub struct Event;

impl Strategy for Event {
    fn storage_key(&self, _rd: &ResourceDef) -> String {
        "events".into()
    }

    fn storage_group<'a>(&self, _rd: &'a ResourceDef) -> &'a str {
        "events.k8s.io"
    }

    fn converts(&self, rd: &ResourceDef, version: &str) -> bool {
        rd.group.is_empty() || version != rd.storage_version()
    }

    fn to_external(&self, _app: &App, rd: &ResourceDef, _v: &str, obj: Value) -> ApiResult<Value> {
        Ok(if rd.group.is_empty() {
            event_to_core(obj)
        } else {
            obj
        })
    }

    fn to_storage(&self, _app: &App, rd: &ResourceDef, _v: &str, obj: Value) -> ApiResult<Value> {
        Ok(if rd.group.is_empty() {
            event_from_core(obj)
        } else {
            obj
        })
    }

    fn converts_field_labels(&self) -> bool {
        true
    }

    /// A core/v1 Event's `involvedObject.namespace` must be its own namespace (or, when empty,
    /// the Event lives in `default` or no namespace), as kube-apiserver's legacy Event
    /// validation requires.
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        if obj["apiVersion"] != "v1" {
            return vec![];
        }
        let own = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let involved = obj
            .pointer("/involvedObject/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let fine = if involved.is_empty() {
            matches!(own, "" | "default")
        } else {
            involved == own
        };
        if fine {
            return vec![];
        }
        vec![Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {involved:?}: does not match event.namespace"),
            field: "involvedObject.namespace".into(),
        }]
    }

    fn field_pointer(&self, field: &str) -> Option<String> {
        if let Some(rest) = field
            .strip_prefix("involvedObject.")
            .or_else(|| field.strip_prefix("regarding."))
        {
            return Some(format!("/regarding/{rest}"));
        }
        match field {
            "reason" | "type" | "reportingController" | "action" => Some(format!("/{field}")),
            "reportingComponent" => Some("/reportingController".into()),
            "source" => Some("/deprecatedSource/component".into()),
            _ => None,
        }
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            column("Last Seen", "string", 0, "Time since the last occurrence."),
            column("Type", "string", 0, "Event type."),
            column("Reason", "string", 0, "Event reason."),
            column("Object", "string", 0, "The object this event is about."),
            column("Message", "string", 0, "The event message."),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, o: &Value) -> Vec<Value> {
        let last = o
            .get("lastTimestamp")
            .or(o.get("eventTime"))
            .or(o.pointer("/metadata/creationTimestamp"))
            .cloned()
            .unwrap_or(Value::Null);
        let io = o
            .get("involvedObject")
            .or(o.get("regarding"))
            .cloned()
            .unwrap_or(json!({}));
        vec![
            json!(crate::table::age(&last)),
            json!(o["type"].as_str().unwrap_or("")),
            json!(o["reason"].as_str().unwrap_or("")),
            json!(format!(
                "{}/{}",
                io["kind"].as_str().unwrap_or("").to_lowercase(),
                io["name"].as_str().unwrap_or("")
            )),
            json!(
                o.get("message")
                    .or(o.get("note"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ),
        ]
    }
}

/// events.k8s.io/v1 (stored) to core/v1 field names.
fn event_to_core(mut e: Value) -> Value {
    let m = e.as_object_mut().expect("object");
    let mv = |m: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = m.remove(from) {
            m.insert(to.into(), v);
        }
    };
    mv(m, "regarding", "involvedObject");
    mv(m, "note", "message");
    mv(m, "reportingController", "reportingComponent");
    mv(m, "deprecatedSource", "source");
    mv(m, "deprecatedFirstTimestamp", "firstTimestamp");
    mv(m, "deprecatedLastTimestamp", "lastTimestamp");
    mv(m, "deprecatedCount", "count");
    if let Some(s) = m.get("series").cloned() {
        m.insert(
            "series".into(),
            json!({"count": s["count"], "lastObservedTime": s["lastObservedTime"]}),
        );
    }
    if !m.contains_key("involvedObject") {
        m.insert("involvedObject".into(), json!({}));
    }
    if !m.contains_key("source") {
        // kube-apiserver serves an Event without a source with an empty one (not filled from
        // reportingController).
        m.insert("source".into(), json!({}));
    }
    m.insert("apiVersion".into(), json!("v1"));
    e
}

/// core/v1 to events.k8s.io/v1 (stored) field names.
fn event_from_core(mut e: Value) -> Value {
    let m = e.as_object_mut().expect("object");
    let mv = |m: &mut serde_json::Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = m.remove(from) {
            m.insert(to.into(), v);
        }
    };
    mv(m, "involvedObject", "regarding");
    mv(m, "message", "note");
    mv(m, "reportingComponent", "reportingController");
    mv(m, "source", "deprecatedSource");
    mv(m, "firstTimestamp", "deprecatedFirstTimestamp");
    mv(m, "lastTimestamp", "deprecatedLastTimestamp");
    mv(m, "count", "deprecatedCount");
    if m.get("reportingController")
        .is_none_or(|v| v.as_str() == Some(""))
        && let Some(c) = m
            .get("deprecatedSource")
            .and_then(|s| s.get("component"))
            .cloned()
    {
        m.insert("reportingController".into(), c);
    }
    m.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    e
}
