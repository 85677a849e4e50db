//! Kinds with no behaviour of their own beyond their printer columns: the [`Generic`] strategy
//! (RuntimeClass, ...), NetworkPolicies (which keep a generation), Nodes and Leases.

use serde_json::{Value, json};

use super::{Strategy, age_cell, age_column, column, name_cell, name_column, str_or};
use crate::resources::ResourceDef;

/// A plain object: every [`Strategy`] default.
#[derive(Debug, Default)]
pub struct Generic;

impl Strategy for Generic {}

/// The NetworkPolicy strategy: a plain object that keeps a generation.
#[derive(Debug, Default)]
pub struct NetworkPolicy;

impl Strategy for NetworkPolicy {
    fn tracks_generation(&self) -> bool {
        true
    }
}

/// The Node strategy (its printer columns).
#[derive(Debug, Default)]
pub struct Node;

impl Strategy for Node {
    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column("Status", "string", 0, "Node readiness."),
            column("Roles", "string", 0, "Node roles."),
            age_column(),
            column("Version", "string", 0, "Kubelet version."),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, o: &Value) -> Vec<Value> {
        let ready = o
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map_or("Unknown", |c| {
                if c["status"] == "True" {
                    "Ready"
                } else {
                    "NotReady"
                }
            });
        vec![
            name_cell(o),
            json!(ready),
            json!("<none>"),
            age_cell(o),
            json!(str_or(o, "/status/nodeInfo/kubeletVersion", "")),
        ]
    }
}

/// The Lease strategy (its printer columns).
#[derive(Debug, Default)]
pub struct Lease;

impl Strategy for Lease {
    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column("Holder", "string", 0, "The holder of the lease."),
            age_column(),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, o: &Value) -> Vec<Value> {
        vec![
            name_cell(o),
            json!(str_or(o, "/spec/holderIdentity", "")),
            age_cell(o),
        ]
    }
}
