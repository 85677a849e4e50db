//! Server-side printing: `meta.k8s.io/v1` Table responses for `kubectl get`, with the built-in
//! columns of the core kinds and the CRDs' additionalPrinterColumns (a JSONPath subset).

use crate::api::{App, Target};
use crate::resources::{PrinterColumn, Special};
use serde_json::{Value, json};

/// apimachinery's `duration.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    let (m, h) = (secs / 60, secs / 3600);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{hh}h", h / 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        if dy == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{dy}d", h / 24 / 365)
        }
    } else {
        format!("{}y", h / 24 / 365)
    }
}

fn age(ts: &Value) -> String {
    ts.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| human_duration(chrono::Utc::now() - t.with_timezone(&chrono::Utc)))
        .unwrap_or_else(|| "<unknown>".into())
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*].b`,
/// `.a[?(@.k=='v')].b`.
pub fn jsonpath(obj: &Value, path: &str) -> Vec<Value> {
    let mut cur = vec![obj.clone()];
    let p = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            cur = cur.iter().filter_map(|v| v.get(field).cloned()).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return vec![];
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .collect();
            } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, want) = match f.split_once("==") {
                    Some((k, w)) => (
                        k.trim(),
                        Some(w.trim().trim_matches(['\'', '"']).to_string()),
                    ),
                    None => (f.trim(), None),
                };
                cur = cur
                    .iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_default())
                    .filter(|e| match (&want, e.get(k)) {
                        (Some(w), Some(Value::String(s))) => s == w,
                        (Some(w), Some(other)) => other.to_string().as_str() == w.as_str(),
                        (None, Some(_)) => true,
                        _ => false,
                    })
                    .collect();
            } else if let Ok(i) = inner.parse::<i64>() {
                cur = cur
                    .iter()
                    .filter_map(|v| {
                        let a = v.as_array()?;
                        let idx = if i < 0 { a.len() as i64 + i } else { i };
                        a.get(usize::try_from(idx).ok()?).cloned()
                    })
                    .collect();
            } else {
                return vec![];
            }
        } else {
            return vec![];
        }
    }
    cur
}

fn col(name: &str, typ: &str, priority: i64, desc: &str) -> Value {
    json!({"name": name, "type": typ, "format": if name == "Name" { "name" } else { "" }, "description": desc, "priority": priority})
}

fn text(v: &[Value]) -> String {
    v.iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
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

fn columns(t: &Target) -> (Vec<Value>, Vec<PrinterColumn>) {
    let name = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = col(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match t.rd.special {
        Special::Pod => (
            vec![
                name,
                col(
                    "Ready",
                    "string",
                    0,
                    "The aggregate readiness state of this pod for accepting traffic.",
                ),
                col(
                    "Status",
                    "string",
                    0,
                    "The aggregate status of the containers in this pod.",
                ),
                col(
                    "Restarts",
                    "string",
                    0,
                    "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                ),
                age,
                col("IP", "string", 1, "IP address allocated to the pod."),
                col(
                    "Node",
                    "string",
                    1,
                    "Name of the node where the pod is running.",
                ),
            ],
            vec![],
        ),
        Special::Namespace => (
            vec![
                name,
                col("Status", "string", 0, "The status of the namespace"),
                age,
            ],
            vec![],
        ),
        Special::Service => (
            vec![
                name,
                col("Type", "string", 0, "The type of the service."),
                col("Cluster-IP", "string", 0, "The cluster IP of the service."),
                col("External-IP", "string", 0, "External IPs of the service."),
                col("Port(s)", "string", 0, "Ports of the service."),
                age,
                col(
                    "Selector",
                    "string",
                    1,
                    "The label selector of the service.",
                ),
            ],
            vec![],
        ),
        Special::ConfigMap => (
            vec![
                name,
                col(
                    "Data",
                    "string",
                    0,
                    "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
                ),
                age,
            ],
            vec![],
        ),
        Special::Secret => (
            vec![
                name,
                col(
                    "Type",
                    "string",
                    0,
                    "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
                ),
                col(
                    "Data",
                    "string",
                    0,
                    "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
                ),
                age,
            ],
            vec![],
        ),
        Special::Event => (
            vec![
                col("Last Seen", "string", 0, "Time since the last occurrence."),
                col("Type", "string", 0, "Event type."),
                col("Reason", "string", 0, "Event reason."),
                col("Object", "string", 0, "The object this event is about."),
                col("Message", "string", 0, "The event message."),
            ],
            vec![],
        ),
        Special::Custom => {
            let pcs = t.rd.columns_for(&t.version).to_vec();
            if pcs.is_empty() {
                (vec![name, age], vec![])
            } else {
                let mut cols = vec![name];
                for c in &pcs {
                    let typ = if c.type_ == "date" {
                        "string"
                    } else {
                        c.type_.as_str()
                    };
                    cols.push(col(&c.name, typ, c.priority, &c.description));
                }
                (cols, pcs)
            }
        }
        _ => {
            if t.rd.plural == "nodes" {
                (
                    vec![
                        name,
                        col("Status", "string", 0, "Node readiness."),
                        col("Roles", "string", 0, "Node roles."),
                        age,
                        col("Version", "string", 0, "Kubelet version."),
                    ],
                    vec![],
                )
            } else if t.rd.plural == "persistentvolumeclaims" {
                (
                    vec![
                        name,
                        col("Status", "string", 0, "Phase."),
                        col("Volume", "string", 0, "Bound volume."),
                        col("Capacity", "string", 0, "Capacity."),
                        col("Access Modes", "string", 0, "Access modes."),
                        col("StorageClass", "string", 0, "Storage class."),
                        age,
                    ],
                    vec![],
                )
            } else if t.rd.plural == "persistentvolumes" {
                (
                    vec![
                        name,
                        col("Capacity", "string", 0, "Capacity."),
                        col("Access Modes", "string", 0, "Access modes."),
                        col("Reclaim Policy", "string", 0, "Reclaim policy."),
                        col("Status", "string", 0, "Phase."),
                        col("Claim", "string", 0, "Bound claim."),
                        col("StorageClass", "string", 0, "Storage class."),
                        col(
                            "VolumeAttributesClass",
                            "string",
                            0,
                            "Volume attributes class.",
                        ),
                        col("Reason", "string", 0, "Reason."),
                        age,
                        col("VolumeMode", "string", 1, "Volume mode."),
                    ],
                    vec![],
                )
            } else if t.rd.plural == "storageclasses" {
                (
                    vec![
                        name,
                        col("Provisioner", "string", 0, "Provisioner."),
                        col("ReclaimPolicy", "string", 0, "Reclaim policy."),
                        col("VolumeBindingMode", "string", 0, "Binding mode."),
                        col("AllowVolumeExpansion", "string", 0, "Expansion allowed."),
                        age,
                    ],
                    vec![],
                )
            } else if t.rd.plural == "leases" {
                (
                    vec![
                        name,
                        col("Holder", "string", 0, "The holder of the lease."),
                        age,
                    ],
                    vec![],
                )
            } else {
                (vec![name, age], vec![])
            }
        }
    }
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let (ready, status, restarts) = pod_status(o);
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(&o["metadata"]["creationTimestamp"])),
        json!(
            o.pointer("/status/podIP")
                .and_then(Value::as_str)
                .unwrap_or("<none>")
        ),
        json!(
            o.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("<none>")
        ),
    ]
}

/// The READY count, STATUS and RESTARTS of a Pod as kube-apiserver's Pod printer computes
/// them: the phase or the status reason; then the first init container that has not completed
/// (`Init:<reason>`, `Init:ExitCode:N`, `Init:N/M`); once initialized, the containers from the
/// last to the first (a waiting or terminated reason, `ExitCode:N`), `Completed` turned back
/// into `Running` or `NotReady` while a container still runs; `Terminating` when deleted.
fn pod_status(o: &Value) -> (usize, String, i64) {
    let list = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let str_at = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
    let exit = |v: &Value, prefix: &str| {
        let t = &v["state"]["terminated"];
        match t["signal"].as_i64().filter(|s| *s != 0) {
            Some(sig) => format!("{prefix}Signal:{sig}"),
            None => format!("{prefix}ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
        }
    };
    let mut reason = str_at(o, "/status/reason")
        .filter(|r| !r.is_empty())
        .or_else(|| str_at(o, "/status/phase"))
        .unwrap_or_else(|| "Pending".into());
    let init_specs = list("/spec/initContainers");
    let mut restarts = 0;
    let mut initializing = false;
    for (i, c) in list("/status/initContainerStatuses").iter().enumerate() {
        restarts += c["restartCount"].as_i64().unwrap_or(0);
        let terminated = &c["state"]["terminated"];
        let sidecar = init_specs
            .iter()
            .find(|s| s["name"] == c["name"])
            .is_some_and(|s| s["restartPolicy"] == "Always");
        let waiting = str_at(c, "/state/waiting/reason").filter(|r| !r.is_empty());
        if terminated.is_object() && terminated["exitCode"].as_i64() == Some(0) {
            continue;
        }
        if sidecar && c["started"].as_bool() == Some(true) {
            continue;
        }
        reason = if terminated.is_object() {
            match str_at(c, "/state/terminated/reason").filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => exit(c, "Init:"),
            }
        } else if let Some(w) = waiting.filter(|w| w != "PodInitializing") {
            format!("Init:{w}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }
    let initialized = list("/status/conditions")
        .iter()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    let mut ready = 0;
    if !initializing || initialized {
        restarts = 0;
        let mut running = false;
        for c in list("/status/containerStatuses").iter().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            let terminated = c["state"]["terminated"].is_object();
            if let Some(w) = str_at(c, "/state/waiting/reason").filter(|r| !r.is_empty()) {
                reason = w;
            } else if let Some(t) = str_at(c, "/state/terminated/reason").filter(|r| !r.is_empty())
            {
                reason = t;
            } else if terminated {
                reason = exit(c, "");
            } else if c["ready"].as_bool() == Some(true) && c["state"]["running"].is_object() {
                running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && running {
            let pod_ready = list("/status/conditions")
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    if o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        reason = "Terminating".into();
    }
    (ready, reason, restarts)
}

/// The number of keys in the map `field` (the DATA column of ConfigMaps and Secrets).
fn keys(o: &Value, field: &str) -> usize {
    o.get(field)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

fn cells(t: &Target, o: &Value, pcs: &[PrinterColumn]) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let created = age(&o["metadata"]["creationTimestamp"]);
    match t.rd.special {
        Special::Pod => {
            let mut c = vec![name];
            c.extend(pod_cells(o));
            c
        }
        Special::Namespace => vec![
            name,
            json!(
                o.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ),
            json!(created),
        ],
        Special::Service => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            let sel = o
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
                name,
                json!(
                    o.pointer("/spec/type")
                        .and_then(Value::as_str)
                        .unwrap_or("ClusterIP")
                ),
                json!(
                    o.pointer("/spec/clusterIP")
                        .and_then(Value::as_str)
                        .unwrap_or("<none>")
                ),
                json!("<none>"),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(created),
                json!(sel),
            ]
        }
        Special::ConfigMap => vec![
            name,
            json!(keys(o, "data") + keys(o, "binaryData")),
            json!(created),
        ],
        Special::Secret => vec![
            name,
            json!(o["type"].as_str().unwrap_or("")),
            json!(keys(o, "data")),
            json!(created),
        ],
        Special::Event => {
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
                json!(age(&last)),
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
        Special::Custom if !pcs.is_empty() => {
            let mut c = vec![name];
            for pc in pcs {
                let vals = jsonpath(o, &pc.json_path);
                c.push(if pc.type_ == "date" {
                    vals.first()
                        .map(|v| json!(age(v)))
                        .unwrap_or(json!("<unknown>"))
                } else if vals.is_empty() {
                    Value::Null
                } else if vals.len() == 1
                    && (pc.type_ == "integer" || pc.type_ == "number" || pc.type_ == "boolean")
                {
                    vals[0].clone()
                } else {
                    json!(text(&vals))
                });
            }
            c
        }
        _ => {
            if t.rd.plural == "nodes" {
                let ready = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter().find(|c| c["type"] == "Ready").map(|c| {
                            if c["status"] == "True" {
                                "Ready"
                            } else {
                                "NotReady"
                            }
                        })
                    })
                    .unwrap_or("Unknown");
                vec![
                    name,
                    json!(ready),
                    json!("<none>"),
                    json!(created),
                    json!(
                        o.pointer("/status/nodeInfo/kubeletVersion")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    ),
                ]
            } else if t.rd.plural == "persistentvolumeclaims" {
                vec![
                    name,
                    json!(
                        o.pointer("/status/phase")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    ),
                    json!(
                        o.pointer("/spec/volumeName")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    ),
                    json!(
                        o.pointer("/status/capacity/storage")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    ),
                    json!(access_modes(o)),
                    json!(
                        o.pointer("/spec/storageClassName")
                            .and_then(Value::as_str)
                            .unwrap_or("<unset>")
                    ),
                    json!(created),
                ]
            } else if t.rd.plural == "persistentvolumes" {
                let s = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or("");
                let claim = match (s("/spec/claimRef/namespace"), s("/spec/claimRef/name")) {
                    (_, "") => String::new(),
                    (ns, n) => format!("{ns}/{n}"),
                };
                vec![
                    name,
                    json!(s("/spec/capacity/storage")),
                    json!(access_modes(o)),
                    json!(s("/spec/persistentVolumeReclaimPolicy")),
                    json!(s("/status/phase")),
                    json!(claim),
                    json!(s("/spec/storageClassName")),
                    json!(
                        o.pointer("/spec/volumeAttributesClassName")
                            .and_then(Value::as_str)
                            .unwrap_or("<unset>")
                    ),
                    json!(s("/status/reason")),
                    json!(created),
                    json!(
                        o.pointer("/spec/volumeMode")
                            .and_then(Value::as_str)
                            .unwrap_or("Filesystem")
                    ),
                ]
            } else if t.rd.plural == "storageclasses" {
                let mut name = name;
                if crate::admission::is_default_class(o) {
                    name = json!(format!("{} (default)", name.as_str().unwrap_or("")));
                }
                vec![
                    name,
                    json!(o["provisioner"].as_str().unwrap_or("")),
                    json!(o["reclaimPolicy"].as_str().unwrap_or("Delete")),
                    json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate")),
                    json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false)),
                    json!(created),
                ]
            } else if t.rd.plural == "leases" {
                vec![
                    name,
                    json!(
                        o.pointer("/spec/holderIdentity")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    ),
                    json!(created),
                ]
            } else {
                vec![name, json!(created)]
            }
        }
    }
}

/// Converts an object or a list (request version) into a Table.
pub fn to_table(_app: &App, t: &Target, v: &Value, include: Option<&str>) -> Value {
    let (defs, pcs) = columns(t);
    let items: Vec<Value> = match v.get("items").and_then(Value::as_array) {
        Some(items) if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) => items.clone(),
        _ => vec![v.clone()],
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(t, o, &pcs)});
            match include {
                Some("None") => {}
                Some("Object") => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
                }
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(m) = v.get("metadata").filter(|_| v.get("items").is_some()) {
        meta = m.clone();
    } else if let Some(rv) = v.pointer("/metadata/resourceVersion") {
        meta["resourceVersion"] = rv.clone();
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_status_follows_kube_apiserver_printer() {
        let running = |name: &str, ready: bool| json!({"name": name, "ready": ready, "restartCount": 1, "state": {"running": {}}});
        let waiting = |name: &str, r: &str| json!({"name": name, "ready": false, "restartCount": 0, "state": {"waiting": {"reason": r}}});
        let init_spec = json!([{"name": "a"}, {"name": "b"}]);
        // Initializing: the first init container that has not completed decides.
        let pod = json!({"spec": {"initContainers": init_spec, "containers": [{"name": "m"}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [
                    {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                    waiting("b", "PodInitializing")],
                "containerStatuses": [waiting("m", "PodInitializing")]}});
        assert_eq!(pod_status(&pod), (0, "Init:1/2".into(), 0));
        let mut pulling = pod.clone();
        pulling["status"]["initContainerStatuses"][1] = waiting("b", "ImagePullBackOff");
        assert_eq!(pod_status(&pulling).1, "Init:ImagePullBackOff");
        let mut failed = pod.clone();
        failed["status"]["initContainerStatuses"][1] =
            json!({"name": "b", "restartCount": 2, "state": {"terminated": {"exitCode": 3}}});
        assert_eq!(pod_status(&failed), (0, "Init:ExitCode:3".into(), 2));
        // Running: containers from the last to the first.
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [running("a", true), waiting("b", "CrashLoopBackOff")]}});
        assert_eq!(pod_status(&pod), (1, "CrashLoopBackOff".into(), 1));
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [running("a", true),
                    {"name": "b", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}});
        assert_eq!(pod_status(&pod).1, "NotReady");
        let pod = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [running("a", true)]}});
        assert_eq!(pod_status(&pod), (1, "Terminating".into(), 1));
    }

    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True", "reason": "Ok"}]}, "spec": {"replicas": 3}});
        assert_eq!(
            jsonpath(&o, ".status.conditions[?(@.type=='Ready')].status"),
            vec![json!("True")]
        );
        assert_eq!(jsonpath(&o, ".spec.replicas"), vec![json!(3)]);
        assert_eq!(jsonpath(&o, ".status.conditions[*].type").len(), 2);
        assert_eq!(
            jsonpath(&o, ".status.conditions[-1].reason"),
            vec![json!("Ok")]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(chrono::Duration::seconds(5)), "5s");
        assert_eq!(human_duration(chrono::Duration::seconds(125)), "2m5s");
        assert_eq!(human_duration(chrono::Duration::seconds(3600 * 5)), "5h");
        assert_eq!(
            human_duration(chrono::Duration::seconds(3600 * 24 * 3)),
            "3d"
        );
    }
}
