//! discovery.k8s.io/v1 EndpointSlice: written by the EndpointSlice controller (`endpoints`) or
//! by users for Services without a selector; kubectl's columns.

use serde_json::{Value, json};

use super::{Strategy, age_cell, age_column, column, name_cell, name_column};
use crate::resources::ResourceDef;

/// The EndpointSlice strategy.
#[derive(Debug, Default)]
pub struct EndpointSlice;

impl Strategy for EndpointSlice {
    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column(
                "AddressType",
                "string",
                0,
                "The address type of the endpoints.",
            ),
            column("Ports", "string", 0, "The ports of the endpoints."),
            column("Endpoints", "string", 0, "The addresses of the endpoints."),
            age_column(),
        ]
    }

    /// PORTS and ENDPOINTS as kubectl prints them: `<unset>` for none, the first three
    /// addresses then `+ N more...`.
    fn cells(&self, _rd: &ResourceDef, _version: &str, o: &Value) -> Vec<Value> {
        let list = |k: &str| {
            o.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let ports: Vec<String> = list("ports")
            .iter()
            .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
            .collect();
        let addresses: Vec<String> = list("endpoints")
            .iter()
            .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let endpoints = match addresses.len() {
            0 => "<unset>".to_string(),
            n if n > 3 => format!("{} + {} more...", addresses[..3].join(","), n - 3),
            _ => addresses.join(","),
        };
        vec![
            name_cell(o),
            json!(o["addressType"].as_str().unwrap_or("")),
            json!(if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            }),
            json!(endpoints),
            age_cell(o),
        ]
    }
}
