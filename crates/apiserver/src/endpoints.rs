//! The EndpointSlice controller inside the API server (kube-controller-manager's job on a
//! cluster): for every Service with a selector, `discovery.k8s.io/v1` EndpointSlices listing
//! the Pods it selects, so that clients that find a Service's Pods through its slices (upstream's
//! Go client in tunnel mode, service meshes, `kubectl describe svc`) see what a cluster shows.
//!
//! [`desired`] computes the slices of one Service from the Service and its namespace's Pods
//! without I/O; [`reconcile`] writes the difference through the API's verbs (owned by the
//! Service, so deleting it deletes them). Services without a selector are left to their users,
//! as kube-controller-manager leaves them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use serde_json::{Value, json};

use crate::api::{App, Req, Target, parse_target};
use crate::selectors::LabelSelector;
use crate::store::Change;

/// `endpointslice.kubernetes.io/managed-by` of the slices this controller owns.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

fn str_at<'a>(o: &'a Value, p: &str) -> &'a str {
    o.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn condition_true(pod: &Value, kind: &str) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

/// The port a Service port reaches on `pod`: its `targetPort` as a number, or the container
/// port of that name; None when the Pod has no such named port.
fn target_port(svc_port: &Value, pod: &Value) -> Option<i64> {
    match &svc_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => svc_port["port"].as_i64(),
    }
}

/// The EndpointSlices Service `svc` should have, given the Pods of its namespace: one per set
/// of resolved ports (Pods that name their ports differently land in different slices), each
/// named `<service>-<hash of its ports>`.
pub fn desired(svc: &Value, pods: &[&Value]) -> Vec<Value> {
    let Some(selector) = svc
        .pointer("/spec/selector")
        .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
    else {
        return vec![];
    };
    let selector = LabelSelector::from_label_selector(&json!({"matchLabels": selector}));
    let (ns, name) = (
        str_at(svc, "/metadata/namespace"),
        str_at(svc, "/metadata/name"),
    );
    let svc_ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selector.matches(p)) {
        let ip = str_at(pod, "/status/podIP");
        let phase = str_at(pod, "/status/phase");
        if ip.is_empty() || matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let ports: Vec<Value> = svc_ports
            .iter()
            .filter_map(|sp| {
                let mut p = json!({"name": sp["name"].as_str().unwrap_or(""),
                    "port": target_port(sp, pod)?,
                    "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                if let Some(ap) = sp.get("appProtocol") {
                    p["appProtocol"] = ap.clone();
                }
                Some(p)
            })
            .collect();
        let terminating = pod
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|d| !d.is_null());
        let serving = condition_true(pod, "Ready");
        let mut endpoint = json!({
            "addresses": [ip],
            "conditions": {"ready": serving && !terminating, "serving": serving, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": ns, "name": str_at(pod, "/metadata/name"),
                "uid": str_at(pod, "/metadata/uid")},
        });
        let node = str_at(pod, "/spec/nodeName");
        if !node.is_empty() {
            endpoint["nodeName"] = json!(node);
        }
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (ports, vec![]))
            .1
            .push(endpoint);
    }
    let mut labels = svc
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    labels[SERVICE_NAME] = json!(name);
    labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": name,
        "uid": str_at(svc, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]);
    let slice = |suffix: String, ports: Vec<Value>, endpoints: Vec<Value>| {
        let base: String = name.chars().take(57).collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{base}-{suffix}"), "namespace": ns,
                "labels": labels, "ownerReferences": owner},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        })
    };
    if groups.is_empty() {
        // A Service that selects nothing still has one, empty, slice.
        let ports: Vec<Value> = svc_ports
            .iter()
            .map(|sp| json!({"name": sp["name"].as_str().unwrap_or(""), "protocol": sp["protocol"].as_str().unwrap_or("TCP")}))
            .collect();
        return vec![slice(suffix_of(""), ports, vec![])];
    }
    groups
        .into_iter()
        .map(|(key, (ports, endpoints))| slice(suffix_of(&key), ports, endpoints))
        .collect()
}

/// Five characters from the alphabet of generated names, fixed for a set of ports (FNV-1a).
fn suffix_of(key: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let n = ALPHABET.len() as u64;
    let mut h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..5)
        .map(|_| {
            let c = ALPHABET[(h % n) as usize] as char;
            h /= n;
            c
        })
        .collect()
}

fn target(app: &App, name: Option<&str>, ns: &str) -> Option<Target> {
    let mut t = parse_target(
        app,
        "discovery.k8s.io",
        "v1",
        &["namespaces", ns, "endpointslices"],
    )?
    .ok()?;
    t.name = name.map(String::from);
    Some(t)
}

fn request() -> Req {
    Req {
        query: Default::default(),
        headers: Default::default(),
        warnings: vec![],
    }
}

/// Brings the slices of Service `ns/name` (absent: deleted) to what [`desired`] says.
pub async fn reconcile(app: &App, ns: &str, name: &str) {
    let svc = app.store.get("services", ns, name);
    // Only the Pods the Service selects, borrowed from the store (a namespace's Pods change
    // far more often than its Services).
    let selector = svc
        .as_ref()
        .and_then(|s| s.obj.pointer("/spec/selector"))
        .map(|m| LabelSelector::from_label_selector(&json!({"matchLabels": m})));
    let selects = |o: &Value| {
        selector
            .as_ref()
            .is_some_and(|s| !s.0.is_empty() && s.matches(o))
    };
    let (pods, _, _) = app.store.list("pods", Some(ns), None, None, &selects);
    let pods: Vec<&Value> = pods.iter().map(|p| &*p.obj).collect();
    let want = match &svc {
        Some(s) if s.obj.pointer("/metadata/deletionTimestamp").is_none() => desired(&s.obj, &pods),
        _ => vec![],
    };
    let ours = |o: &Value| {
        str_at(o, "/metadata/labels/kubernetes.io~1service-name") == name
            && str_at(
                o,
                "/metadata/labels/endpointslice.kubernetes.io~1managed-by",
            ) == MANAGED_BY
    };
    let (have, _, _) = app.store.list(
        "endpointslices.discovery.k8s.io",
        Some(ns),
        None,
        None,
        &ours,
    );
    for slice in &want {
        let slice_name = str_at(slice, "/metadata/name");
        let current = have
            .iter()
            .find(|h| str_at(&h.obj, "/metadata/name") == slice_name);
        let Some(t) = target(app, current.map(|_| slice_name), ns) else {
            return;
        };
        let result = match current {
            None => app
                .create(&t, slice.to_string().as_bytes(), &mut request())
                .await
                .map(|_| ()),
            Some(cur)
                if ["endpoints", "ports", "addressType"]
                    .iter()
                    .all(|k| cur.obj[*k] == slice[*k])
                    && cur.obj["metadata"]["labels"] == slice["metadata"]["labels"] =>
            {
                Ok(())
            }
            Some(cur) => {
                let mut next = slice.clone();
                next["metadata"]["resourceVersion"] = json!(cur.rv.to_string());
                app.update(&t, next.to_string().as_bytes(), &mut request())
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::debug!(service = %format!("{ns}/{name}"), slice = slice_name, "EndpointSlice write: {e}");
        }
    }
    for stale in have.iter().filter(|h| {
        !want
            .iter()
            .any(|w| w["metadata"]["name"] == h.obj["metadata"]["name"])
    }) {
        if let Some(t) = target(app, Some(str_at(&stale.obj, "/metadata/name")), ns) {
            let _ = app.delete_with(&t, &json!({}), false).await;
        }
    }
}

/// Runs the controller until shutdown: every Service once at start, then the Services that
/// a change of a Service or a Pod may affect, one at a time (so two reconciles of a Service
/// never race), a burst of changes coalesced per Service.
pub async fn run(
    app: Arc<App>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut due: BTreeSet<(String, String)> = BTreeSet::new();
    let (svcs, _, _) = app.store.list("services", None, None, None, &|_| true);
    due.extend(svcs.iter().map(|s| {
        (
            str_at(&s.obj, "/metadata/namespace").into(),
            str_at(&s.obj, "/metadata/name").into(),
        )
    }));
    loop {
        while let Some((ns, name)) = due.pop_first() {
            reconcile(&app, &ns, &name).await;
        }
        tokio::select! {
            c = changes.recv() => {
                let Some(c) = c else { return };
                due.extend(affected(&app, &c));
                while let Ok(c) = changes.try_recv() {
                    due.extend(affected(&app, &c));
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The Services a change may affect: the Service itself, or every Service of a Pod's namespace
/// (its labels may have left one selector and entered another).
fn affected(app: &App, c: &Change) -> Vec<(String, String)> {
    let (ns, name) = (&c.key.0, &c.key.1);
    match c.res.as_str() {
        "services" => vec![(ns.clone(), name.clone())],
        "pods" => {
            let (svcs, _, _) = app.store.list("services", Some(ns), None, None, &|_| true);
            svcs.iter()
                .map(|s| (ns.clone(), str_at(&s.obj, "/metadata/name").to_string()))
                .collect()
        }
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: Value, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    #[test]
    fn a_service_lists_the_pods_it_selects() {
        let svc = json!({"metadata": {"name": "web", "namespace": "ns", "uid": "s1", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}});
        let pods = [
            pod("a", json!({"app": "web"}), "10.0.0.1", true),
            pod("b", json!({"app": "web"}), "10.0.0.2", false),
            pod("c", json!({"app": "db"}), "10.0.0.3", true),
            pod("d", json!({"app": "web"}), "", true),
        ];
        let slices = desired(&svc, &pods.iter().collect::<Vec<_>>());
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert!(s["metadata"]["name"].as_str().unwrap().starts_with("web-"));
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(s["metadata"]["labels"]["team"], "a");
        assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "s1");
        assert_eq!(
            s["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        let eps = s["endpoints"].as_array().unwrap();
        assert_eq!(
            eps.len(),
            2,
            "the Pod without an IP and the unselected one are out"
        );
        assert_eq!(eps[0]["targetRef"]["name"], "a");
        assert_eq!(
            eps[0]["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        assert_eq!(eps[1]["conditions"]["ready"], false);
        assert_eq!(
            desired(&svc, &pods.iter().collect::<Vec<_>>())[0]["metadata"]["name"],
            s["metadata"]["name"],
            "stable name"
        );
    }

    #[test]
    fn a_service_without_a_selector_is_left_alone_and_an_empty_one_has_an_empty_slice() {
        let manual = json!({"metadata": {"name": "ext", "namespace": "ns"}, "spec": {"ports": [{"port": 80}]}});
        assert!(desired(&manual, &[]).is_empty());
        let svc = json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
        let slices = desired(&svc, &[]);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0]["endpoints"], json!([]));
    }
}
