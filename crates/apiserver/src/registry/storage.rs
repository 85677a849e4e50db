//! Storage as a cluster shows it: PersistentVolumeClaims (the DefaultStorageClass admission on
//! create), PersistentVolumes and StorageClasses (their defaults), with kubectl's columns.

use serde_json::{Value, json};

use super::{Strategy, age_cell, age_column, column, default, name_cell, name_column, str_or};
use crate::admission;
use crate::api::App;
use crate::resources::ResourceDef;

/// The PersistentVolumeClaim strategy.
#[derive(Debug, Default)]
pub struct PersistentVolumeClaim;

/// The PersistentVolume strategy.
#[derive(Debug, Default)]
pub struct PersistentVolume;

/// The StorageClass strategy.
#[derive(Debug, Default)]
pub struct StorageClass;

/// The StorageClasses that exist (for the DefaultStorageClass admission).
fn storage_classes(app: &App) -> Vec<Value> {
    let Some(rd) = app.resources.iter().find(|r| r.plural == "storageclasses") else {
        return vec![];
    };
    let (items, _, _) = app.store.list(&rd.key(), None, None, None, &|_| true);
    items.iter().map(|s| (*s.obj).clone()).collect()
}

/// Access modes as kubectl prints them (`RWO,ROX`).
fn access_modes(o: &Value) -> String {
    let modes = o.pointer("/spec/accessModes").and_then(Value::as_array);
    modes
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Strategy for PersistentVolumeClaim {
    fn prepare_create(&self, app: &App, _rd: &ResourceDef, obj: &mut Value) {
        admission::default_storage_class(obj, &storage_classes(app));
        obj["status"] = json!({"phase": "Pending"});
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column("Status", "string", 0, "Phase."),
            column("Volume", "string", 0, "Bound volume."),
            column("Capacity", "string", 0, "Capacity."),
            column("Access Modes", "string", 0, "Access modes."),
            column("StorageClass", "string", 0, "Storage class."),
            age_column(),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, o: &Value) -> Vec<Value> {
        vec![
            name_cell(o),
            json!(str_or(o, "/status/phase", "")),
            json!(str_or(o, "/spec/volumeName", "")),
            json!(str_or(o, "/status/capacity/storage", "")),
            json!(access_modes(o)),
            json!(str_or(o, "/spec/storageClassName", "<unset>")),
            age_cell(o),
        ]
    }
}

impl Strategy for PersistentVolume {
    fn prepare_create(&self, _app: &App, _rd: &ResourceDef, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column("Capacity", "string", 0, "Capacity."),
            column("Access Modes", "string", 0, "Access modes."),
            column("Reclaim Policy", "string", 0, "Reclaim policy."),
            column("Status", "string", 0, "Phase."),
            column("Claim", "string", 0, "Bound claim."),
            column("StorageClass", "string", 0, "Storage class."),
            column(
                "VolumeAttributesClass",
                "string",
                0,
                "Volume attributes class.",
            ),
            column("Reason", "string", 0, "Reason."),
            age_column(),
            column("VolumeMode", "string", 1, "Volume mode."),
        ]
    }

    fn cells(&self, _rd: &ResourceDef, _version: &str, o: &Value) -> Vec<Value> {
        let s = |p: &str| str_or(o, p, "");
        let claim = match (s("/spec/claimRef/namespace"), s("/spec/claimRef/name")) {
            (_, "") => String::new(),
            (ns, n) => format!("{ns}/{n}"),
        };
        vec![
            name_cell(o),
            json!(s("/spec/capacity/storage")),
            json!(access_modes(o)),
            json!(s("/spec/persistentVolumeReclaimPolicy")),
            json!(s("/status/phase")),
            json!(claim),
            json!(s("/spec/storageClassName")),
            json!(str_or(o, "/spec/volumeAttributesClassName", "<unset>")),
            json!(s("/status/reason")),
            age_cell(o),
            json!(str_or(o, "/spec/volumeMode", "Filesystem")),
        ]
    }
}

impl Strategy for StorageClass {
    fn prepare_create(&self, _app: &App, _rd: &ResourceDef, obj: &mut Value) {
        default(obj, "reclaimPolicy", json!("Delete"));
        default(obj, "volumeBindingMode", json!("Immediate"));
    }

    fn columns(&self, _rd: &ResourceDef, _version: &str) -> Vec<Value> {
        vec![
            name_column(),
            column("Provisioner", "string", 0, "Provisioner."),
            column("ReclaimPolicy", "string", 0, "Reclaim policy."),
            column("VolumeBindingMode", "string", 0, "Binding mode."),
            column("AllowVolumeExpansion", "string", 0, "Expansion allowed."),
            age_column(),
        ]
    }

    /// The default class is marked `(default)` after its name, as kubectl shows it.
    fn cells(&self, _rd: &ResourceDef, _version: &str, o: &Value) -> Vec<Value> {
        let mut name = name_cell(o);
        if admission::is_default_class(o) {
            name = json!(format!("{} (default)", name.as_str().unwrap_or("")));
        }
        vec![
            name,
            json!(o["provisioner"].as_str().unwrap_or("")),
            json!(o["reclaimPolicy"].as_str().unwrap_or("Delete")),
            json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate")),
            json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false)),
            age_cell(o),
        ]
    }
}
