//! core/v1 Service: DNS-1035 names, defaults, a cluster IP allocated on create (from
//! 10.96.0.0/16, served to clients; the embedded node does not route it), and its printer
//! columns.

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

use super::{Strategy, age_cell, age_column, column, name_cell, name_column, str_or};
use crate::admission::{self, NameRule};
use crate::api::{App, Req};
use crate::error::Cause;
use crate::resources::ResourceDef;

/// The Service strategy; it owns the cluster IP allocator.
#[derive(Debug, Default)]
pub struct Service {
    next_ip: AtomicU32,
}

impl Strategy for Service {
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035
    }

    fn prepare_create(&self, _app: &App, _rd: &ResourceDef, obj: &mut Value) {
        admission::default_service(obj);
        let spec = &mut obj["spec"];
        if spec.is_object() && spec.get("clusterIP").is_none() {
            let n = self.next_ip.fetch_add(1, Ordering::Relaxed) + 10;
            let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        } else if let Some(ip) = spec.get("clusterIP").cloned() {
            spec["clusterIPs"] = json!([ip]);
        }
        obj["status"] = json!({"loadBalancer": {}});
    }

    fn prepare_update(
        &self,
        _old: &Value,
        new: &mut Value,
        _status_only: bool,
        _req: &mut Req,
    ) -> Vec<Cause> {
        admission::default_service(new);
        vec![]
    }

    fn converts_field_labels(&self) -> bool {
        true
    }

    fn field_pointer(&self, field: &str) -> Option<String> {
        matches!(field, "spec.clusterIP" | "spec.type")
            .then(|| format!("/{}", field.replace('.', "/")))
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column("Type", "string", 0, "The type of the service."),
            column("Cluster-IP", "string", 0, "The cluster IP of the service."),
            column("External-IP", "string", 0, "External IPs of the service."),
            column("Port(s)", "string", 0, "Ports of the service."),
            age_column(),
            column(
                "Selector",
                "string",
                1,
                "The label selector of the service.",
            ),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, obj: &Value) -> Vec<Value> {
        let ports: Vec<String> = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
            .collect();
        let selector = obj
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_cell(obj),
            json!(str_or(obj, "/spec/type", "ClusterIP")),
            json!(str_or(obj, "/spec/clusterIP", "<none>")),
            json!("<none>"),
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            }),
            age_cell(obj),
            json!(selector),
        ]
    }
}
