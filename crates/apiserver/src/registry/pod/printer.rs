//! The Pod's row in `kubectl get pods`: READY, STATUS and RESTARTS as kube-apiserver's Pod
//! printer computes them.

use serde_json::{Value, json};

use crate::registry::{age_cell, str_or};

/// The cells after NAME: READY, STATUS, RESTARTS, AGE, IP, NODE.
pub(super) fn cells(o: &Value) -> Vec<Value> {
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
        age_cell(o),
        json!(str_or(o, "/status/podIP", "<none>")),
        json!(str_or(o, "/spec/nodeName", "<none>")),
    ]
}

/// The READY count, STATUS and RESTARTS of a Pod as kube-apiserver's Pod printer computes
/// them: the phase or the status reason; then the first init container that has not completed
/// (`Init:<reason>`, `Init:ExitCode:N`, `Init:N/M`); once initialized, the containers from the
/// last to the first (a waiting or terminated reason, `ExitCode:N`), `Completed` turned back
/// into `Running` or `NotReady` while a container still runs; `Terminating` when deleted.
pub(super) fn pod_status(o: &Value) -> (usize, String, i64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
