//! The pause extension on the node, under each handler: a Pod annotated
//! `agent-sandbox-rs.github.io/paused: "true"` is frozen (its counter stops, the runtime says
//! paused), its liveness probe does not restart it, exec is refused with a message that says to
//! unpause, and removing the annotation thaws it where it was (same process, counter goes on);
//! a restarted agent re-adopts a paused Pod as paused, and a paused Pod is deleted promptly.
//! No network; every wait is bounded.
#![allow(clippy::print_stdout)]

use crate::common;

use std::time::{Duration, Instant};

use agent_sandbox_api::constants::extensions as ext;
use agent_sandbox_node::{HandlerKind, Phase, exec};
use common::{AgentEnv, need};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

const IMAGE: &str = "localhost/test/busybox:1";

fn paused_cond(p: &Pod) -> Option<(String, String)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ext::condition_types::POD_PAUSED)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

fn counter(a: &AgentEnv, uid: &str) -> u64 {
    fs_err::read_to_string(a.engine().projected_dir(uid, "data").join("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

async fn annotate(a: &AgentEnv, value: Option<&str>) {
    let api: Api<Pod> = Api::namespaced(a.client.clone(), "default");
    let patch = json!({"metadata": {"annotations": {ext::annotations::PAUSED: value}}});
    api.patch("frozen", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn wait_counter_moves(a: &AgentEnv, uid: &str, from: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = counter(a, uid);
        if now > from {
            return now;
        }
        assert!(Instant::now() < deadline, "the counter stays at {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pause_unpause(kind: HandlerKind) {
    if need(Some(kind)) {
        return;
    }
    let mut a = AgentEnv::new(&[kind], None).await;
    a.env.busybox(IMAGE).await;
    // A counter in an emptyDir (readable from the host under every handler), and a liveness
    // probe that a frozen process would fail at once (period 1 s, timeout 1 s, threshold 1).
    a.create_pod(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "frozen", "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "volumes": [{"name": "data", "emptyDir": {}}],
                 "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c",
                        "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i > /data/count; sleep 0.05; done"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "livenessProbe": {"exec": {"command": ["cat", "/data/count"]},
                                      "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1}}]}}))
        .await;
    let p = a
        .wait_pod("default", "frozen", Duration::from_secs(60), |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    let uid = p.metadata.uid.clone().unwrap();
    wait_counter_moves(&a, &uid, 0).await;
    let pid = a.engine().state(&uid).await.unwrap().pid;

    // Pause.
    let t = Instant::now();
    annotate(&a, Some("true")).await;
    let p = a
        .wait_pod("default", "frozen", Duration::from_secs(20), |p| {
            paused_cond(p).is_some_and(|(s, _)| s == "True")
        })
        .await;
    println!("{kind}: paused through the API in {:?}", t.elapsed());
    assert_eq!(paused_cond(&p).unwrap().1, ext::pod_reasons::PAUSED);
    assert_eq!(
        a.engine().state(&uid).await.unwrap().phase,
        Phase::Paused,
        "the runtime reports the container paused"
    );
    if kind != HandlerKind::Runsc {
        let freezer = format!(
            "/sys/fs/cgroup/freezer{}/freezer.state",
            a.engine().cgroup_path(&uid)
        );
        if let Ok(state) = fs_err::read_to_string(&freezer) {
            assert_eq!(state.trim(), "FROZEN", "{freezer}");
        }
    }
    let frozen_at = counter(&a, &uid);
    // Three liveness periods: a probe would have failed and restarted it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        counter(&a, &uid),
        frozen_at,
        "the counter moved while paused"
    );
    let api: Api<Pod> = Api::namespaced(a.client.clone(), "default");
    let p = api.get("frozen").await.unwrap();
    assert_eq!(restarts(&p), 0, "restarted while paused: {:?}", p.status);
    // Exec is refused, naming the Pod and saying to unpause.
    let err = exec::check(a.engine(), &p, "main").unwrap_err();
    assert!(
        err.contains("default/frozen") && err.contains("paused") && err.contains("unpause"),
        "{err}"
    );
    // Pausing twice changes nothing.
    annotate(&a, Some("true")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.engine().is_paused(&uid));

    // Unpause: the same process goes on from where it was.
    let t = Instant::now();
    annotate(&a, None).await;
    let p = a
        .wait_pod("default", "frozen", Duration::from_secs(20), |p| {
            paused_cond(p).is_some_and(|(s, _)| s == "False")
        })
        .await;
    println!("{kind}: unpaused through the API in {:?}", t.elapsed());
    assert_eq!(paused_cond(&p).unwrap().1, ext::pod_reasons::RUNNING);
    let after = wait_counter_moves(&a, &uid, frozen_at).await;
    assert!(after > frozen_at);
    assert_eq!(a.engine().state(&uid).await.unwrap().pid, pid);
    exec::check(a.engine(), &p, "main").unwrap();
    let out = a
        .engine()
        .exec(
            &uid,
            "main",
            &["cat".to_string(), "/data/count".to_string()],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0);
    // The liveness probe runs again and passes: no restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(restarts(&api.get("frozen").await.unwrap()), 0);
    // Another value means running.
    annotate(&a, Some("yes")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.engine().is_paused(&uid));

    // Paused across an agent restart: re-adopted as paused.
    annotate(&a, Some("true")).await;
    a.wait_pod("default", "frozen", Duration::from_secs(20), |p| {
        paused_cond(p).is_some_and(|(s, _)| s == "True")
    })
    .await;
    a.restart_agent().await;
    let frozen_at = counter(&a, &uid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.engine().is_paused(&uid), "the restarted agent thawed it");
    assert_eq!(counter(&a, &uid), frozen_at);
    let p = api.get("frozen").await.unwrap();
    assert_eq!(paused_cond(&p).unwrap().0, "True");
    assert_eq!(restarts(&p), 0);

    // Deleting a paused Pod is prompt: it is thawed and stopped.
    let t = Instant::now();
    api.delete("frozen", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.get_opt("frozen").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "a paused pod is not going away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{kind}: paused pod deleted in {:?}", t.elapsed());
    while a.engine().contains(&uid) {
        assert!(Instant::now() < deadline, "the paused pod's sandbox stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_runc() {
    pause_unpause(HandlerKind::Runc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_crun() {
    pause_unpause(HandlerKind::Crun).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_runsc() {
    pause_unpause(HandlerKind::Runsc).await;
}
