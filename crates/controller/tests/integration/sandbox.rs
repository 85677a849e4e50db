//! Conformance tests ported from upstream's core e2e suite (upstream-core §16.1), run against the
//! embedded API server with a test kubelet.

use crate::common;

use std::time::Duration;

use agent_sandbox_api::name_hash;
use agent_sandbox_api::v1beta1::{OperatingMode, Sandbox, SandboxStatus};
use common::{NS, api, eventually, start};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn sandbox_json(name: &str, extra: serde_json::Value) -> Sandbox {
    let mut v = json!({
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "service": true,
            "podTemplate": {
                "metadata": {"labels": {"test-label-key": "val-2"}, "annotations": {"test-anno-key": "val-1"}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}
            }
        }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("sandbox json")
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// (type, status, reason, message, observedGeneration) of each condition, sorted by type.
/// (type, status, reason, message, observedGeneration).
type Cond = (String, String, String, String, i64);
/// (service, serviceFQDN, selector, conditions sorted by type).
type Summary = (String, String, String, Vec<Cond>);

fn conds(st: &SandboxStatus) -> Vec<Cond> {
    let mut v: Vec<_> = st
        .conditions
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
                c.observed_generation.unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

fn c(t: &str, s: &str, r: &str, m: &str, g: i64) -> Cond {
    (t.into(), s.into(), r.into(), m.into(), g)
}

fn ready_status(name: &str, generation: i64) -> Summary {
    (
        name.to_string(),
        format!("{name}.{NS}.svc.cluster.local"),
        format!("agents.x-k8s.io/sandbox-name-hash={}", name_hash(name)),
        vec![
            c("PodScheduled", "True", "PodScheduled", "", generation),
            c(
                "Ready",
                "True",
                "DependenciesReady",
                "Pod is Ready; Service Exists",
                generation,
            ),
            c(
                "Suspended",
                "False",
                "NotSuspended",
                "Sandbox is not suspended",
                generation,
            ),
        ],
    )
}

fn summary(st: &SandboxStatus) -> Summary {
    (
        st.service.clone(),
        st.service_fqdn.clone(),
        st.label_selector.clone(),
        conds(st),
    )
}

async fn wait_status(client: &Client, name: &str, want: Summary) -> SandboxStatus {
    let sbs: Api<Sandbox> = api(client);
    let mut last = None;
    let r = tokio::time::timeout(T, async {
        loop {
            if let Ok(sb) = sbs.get(name).await {
                let st = sb.status.clone().unwrap_or_default();
                if summary(&st) == want {
                    return st;
                }
                last = Some(summary(&st));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match r {
        Ok(st) => st,
        Err(_) => panic!("sandbox {name} never reached\n{want:#?}\nlast seen\n{last:#?}"),
    }
}

fn cond<'a>(st: &'a SandboxStatus, t: &str) -> &'a Condition {
    st.conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition present")
}

fn sandbox_owner(sb: &Sandbox) -> OwnerReference {
    OwnerReference {
        api_version: "agents.x-k8s.io/v1beta1".into(),
        kind: "Sandbox".into(),
        name: sb.name_any(),
        uid: sb.uid().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

async fn set_mode(client: &Client, name: &str, mode: OperatingMode) {
    let sbs: Api<Sandbox> = api(client);
    sbs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"operatingMode": mode}})),
    )
    .await
    .expect("patch mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_sandbox() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    let sb = sbs
        .create(
            &PostParams::default(),
            &sandbox_json("my-sandbox", json!({})),
        )
        .await
        .unwrap();
    let st = wait_status(&env.client, "my-sandbox", ready_status("my-sandbox", 1)).await;
    assert!(!st.pod_ips.is_empty());
    assert_eq!(st.node_name, "test-node");
    let pod: Pod = api::<Pod>(&env.client).get("my-sandbox").await.unwrap();
    assert_eq!(
        pod.labels().get("test-label-key").map(String::as_str),
        Some("val-2")
    );
    assert_eq!(
        pod.labels().get("agents.x-k8s.io/sandbox-name-hash"),
        Some(&name_hash("my-sandbox"))
    );
    assert_eq!(
        pod.annotations().get("test-anno-key").map(String::as_str),
        Some("val-1")
    );
    assert_eq!(
        pod.metadata.owner_references.clone().unwrap(),
        vec![sandbox_owner(&sb)]
    );
    let svc: Service = api::<Service>(&env.client).get("my-sandbox").await.unwrap();
    assert_eq!(
        svc.metadata.owner_references.clone().unwrap(),
        vec![sandbox_owner(&sb)]
    );
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(
        spec.selector
            .unwrap()
            .get("agents.x-k8s.io/sandbox-name-hash"),
        Some(&name_hash("my-sandbox"))
    );
    let sb = sbs.get("my-sandbox").await.unwrap();
    assert_eq!(
        sb.annotations()
            .get("agents.x-k8s.io/pod-name")
            .map(String::as_str),
        Some("my-sandbox")
    );
    // The metrics exposition reports the ready sandbox.
    assert!(
        env.state
            .metrics_text()
            .contains("agent_sandboxes{namespace=\"e2e\",ready_condition=\"true\"")
    );
}

fn suspended_status(name: &str, generation: i64) -> Summary {
    let (s, f, sel, _) = ready_status(name, generation);
    (
        s,
        f,
        sel,
        vec![
            c(
                "Ready",
                "False",
                "SandboxSuspended",
                "Sandbox is suspended",
                generation,
            ),
            c(
                "Suspended",
                "True",
                "PodTerminated",
                "Pod has been terminated. Sandbox is suspended",
                generation,
            ),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_resume_cycle_with_operating_mode() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    let pods: Api<Pod> = api(&env.client);
    sbs.create(&PostParams::default(), &sandbox_json("cycle", json!({})))
        .await
        .unwrap();
    let st = wait_status(&env.client, "cycle", ready_status("cycle", 1)).await;
    let mut ltt: Time = cond(&st, "Suspended").last_transition_time.clone();
    let mut generation = 1;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        set_mode(&env.client, "cycle", OperatingMode::Suspended).await;
        generation += 1;
        let st = wait_status(&env.client, "cycle", suspended_status("cycle", generation)).await;
        let l = cond(&st, "Suspended").last_transition_time.clone();
        assert!(l.0 > ltt.0, "Suspended LTT advances on False->True");
        ltt = l;
        eventually("pod deleted", Duration::from_secs(10), || async {
            pods.get_opt("cycle").await.unwrap().is_none().then_some(())
        })
        .await;
        assert!(
            api::<Service>(&env.client)
                .get_opt("cycle")
                .await
                .unwrap()
                .is_some(),
            "the Service is kept"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        set_mode(&env.client, "cycle", OperatingMode::Running).await;
        generation += 1;
        let st = wait_status(&env.client, "cycle", ready_status("cycle", generation)).await;
        let l = cond(&st, "Suspended").last_transition_time.clone();
        assert!(l.0 > ltt.0, "Suspended LTT advances on True->False");
        ltt = l;
        assert!(
            pods.get_opt("cycle").await.unwrap().is_some(),
            "the Pod is recreated with the same name"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_with_terminating_pod() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    let pods: Api<Pod> = api(&env.client);
    sbs.create(&PostParams::default(), &sandbox_json("held", json!({})))
        .await
        .unwrap();
    let st = wait_status(&env.client, "held", ready_status("held", 1)).await;
    let ltt = cond(&st, "Suspended").last_transition_time.clone();
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["test.agents.x-k8s.io/hold"]}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    set_mode(&env.client, "held", OperatingMode::Suspended).await;
    let (s, f, sel, _) = ready_status("held", 2);
    let st = wait_status(
        &env.client,
        "held",
        (
            s,
            f,
            sel,
            vec![
                c("PodScheduled", "True", "PodScheduled", "", 2),
                c(
                    "Ready",
                    "False",
                    "SandboxSuspended",
                    "Sandbox is suspending",
                    2,
                ),
                c(
                    "Suspended",
                    "False",
                    "PodTerminating",
                    "Pod is terminating. Sandbox is suspending",
                    2,
                ),
            ],
        ),
    )
    .await;
    assert_eq!(
        cond(&st, "Suspended").last_transition_time,
        ltt,
        "False->False keeps the LTT"
    );
    assert!(
        pods.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let st = wait_status(&env.client, "held", suspended_status("held", 2)).await;
    assert!(cond(&st, "Suspended").last_transition_time.0 > ltt.0);
    eventually("pod gone", Duration::from_secs(10), || async {
        pods.get_opt("held").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_deletion_keeps_suspended_false() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    let pods: Api<Pod> = api(&env.client);
    sbs.create(&PostParams::default(), &sandbox_json("crash", json!({})))
        .await
        .unwrap();
    let st = wait_status(&env.client, "crash", ready_status("crash", 1)).await;
    let ltt = cond(&st, "Suspended").last_transition_time.clone();
    let old_uid = pods.get("crash").await.unwrap().uid();
    pods.delete("crash", &DeleteParams::default())
        .await
        .unwrap();
    let new_uid = eventually("pod recreated", T, || async {
        pods.get_opt("crash")
            .await
            .unwrap()
            .and_then(|p| p.uid())
            .filter(|u| Some(u) != old_uid.as_ref())
    })
    .await;
    assert_ne!(Some(new_uid), old_uid);
    let st = wait_status(&env.client, "crash", ready_status("crash", 1)).await;
    assert_eq!(cond(&st, "Suspended").last_transition_time, ltt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_blocked_by_unowned_pod_conflict() {
    let env = start().await;
    let pods: Api<Pod> = api(&env.client);
    let foreign: Pod = serde_json::from_value(json!({
        "metadata": {"name": "foreign", "namespace": NS},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &foreign).await.unwrap();
    let sbs: Api<Sandbox> = api(&env.client);
    sbs.create(
        &PostParams::default(),
        &sandbox_json("foreign", json!({"spec": {"operatingMode": "Suspended"}})),
    )
    .await
    .unwrap();
    let (s, f, sel, _) = ready_status("foreign", 1);
    wait_status(
        &env.client,
        "foreign",
        (
            s,
            f,
            sel,
            vec![
                c(
                    "Ready",
                    "False",
                    "SandboxSuspended",
                    "Sandbox is suspending",
                    1,
                ),
                c(
                    "Suspended",
                    "False",
                    "PodNotOwned",
                    "Refused to delete pod because it is not owned by this sandbox",
                    1,
                ),
            ],
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = pods.get("foreign").await.unwrap();
    assert!(
        p.metadata.deletion_timestamp.is_none() && p.metadata.owner_references.is_none(),
        "the foreign pod is not touched"
    );
}

fn expired_status(generation: i64) -> Summary {
    (
        String::new(),
        String::new(),
        String::new(),
        vec![
            c(
                "Ready",
                "False",
                "SandboxExpired",
                "Sandbox has expired",
                generation,
            ),
            c(
                "Suspended",
                "False",
                "NotSuspended",
                "Sandbox is not suspended",
                generation,
            ),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_shutdown_time() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    sbs.create(&PostParams::default(), &sandbox_json("expiring", json!({})))
        .await
        .unwrap();
    wait_status(&env.client, "expiring", ready_status("expiring", 1)).await;
    let at = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(3);
    let at_s = at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let shutdown: k8s_openapi::jiff::Timestamp = at_s.parse().unwrap();
    sbs.patch(
        "expiring",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"shutdownTime": at_s}})),
    )
    .await
    .unwrap();
    wait_status(&env.client, "expiring", ready_status("expiring", 2)).await;
    let st = wait_status(&env.client, "expiring", expired_status(2)).await;
    let ready = cond(&st, "Ready");
    assert!(
        ready.last_transition_time.0 >= shutdown,
        "not expired before shutdownTime"
    );
    eventually("pod and service deleted", T, || async {
        let p = api::<Pod>(&env.client).get_opt("expiring").await.unwrap();
        let s = api::<Service>(&env.client)
            .get_opt("expiring")
            .await
            .unwrap();
        (p.is_none() && s.is_none()).then_some(())
    })
    .await;
    assert!(
        sbs.get_opt("expiring").await.unwrap().is_some(),
        "Retain keeps the Sandbox"
    );
    assert!(st.pod_ips.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_expiry_preserves_finished_condition() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    let sb = sandbox_json(
        "finished",
        json!({"spec": {"podTemplate": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "exit 0"]}]
        }}}}),
    );
    sbs.create(&PostParams::default(), &sb).await.unwrap();
    eventually("Finished=PodSucceeded", T, || async {
        let st = sbs.get("finished").await.ok()?.status?;
        st.conditions
            .iter()
            .any(|c| c.type_ == "Finished" && c.reason == "PodSucceeded")
            .then_some(())
    })
    .await;
    let at = (k8s_openapi::jiff::Timestamp::now()
        + k8s_openapi::jiff::SignedDuration::from_secs(1))
    .strftime("%Y-%m-%dT%H:%M:%SZ")
    .to_string();
    sbs.patch(
        "finished",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"shutdownTime": at}})),
    )
    .await
    .unwrap();
    let st = eventually("expired with Finished", T, || async {
        let st = sbs.get("finished").await.ok()?.status?;
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "SandboxExpired");
        (ready && st.service.is_empty()).then_some(st)
    })
    .await;
    let f = cond(&st, "Finished");
    assert_eq!(
        (f.status.as_str(), f.reason.as_str()),
        ("True", "PodSucceeded")
    );
    assert!(st.service_fqdn.is_empty());
    eventually("pod and service gone", T, || async {
        let p = api::<Pod>(&env.client).get_opt("finished").await.unwrap();
        let s = api::<Service>(&env.client)
            .get_opt("finished")
            .await
            .unwrap();
        (p.is_none() && s.is_none()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_volume_claim_templates() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    let sb = sbs
        .create(
            &PostParams::default(),
            &sandbox_json(
                "vct-sandbox",
                json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                    "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}
                }}]}}),
            ),
        )
        .await
        .unwrap();
    wait_status(&env.client, "vct-sandbox", ready_status("vct-sandbox", 1)).await;
    let pvc: PersistentVolumeClaim = api::<PersistentVolumeClaim>(&env.client)
        .get("data-vct-sandbox")
        .await
        .unwrap();
    assert_eq!(
        pvc.metadata.owner_references.clone().unwrap(),
        vec![sandbox_owner(&sb)]
    );
    assert_eq!(
        pvc.labels().get("agents.x-k8s.io/sandbox-name-hash"),
        Some(&name_hash("vct-sandbox"))
    );
    let pod: Pod = api::<Pod>(&env.client).get("vct-sandbox").await.unwrap();
    let vol = pod
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert_eq!(
        vol.persistent_volume_claim.unwrap().claim_name,
        "data-vct-sandbox"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_volume_claim_templates_immutable() {
    let env = start().await;
    let sbs: Api<Sandbox> = api(&env.client);
    let vct = json!([{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]);
    let vct2 = json!([{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}]);
    for (name, before, after) in [
        ("set-modified", Some(vct.clone()), Some(vct2.clone())),
        ("unset-set", None, Some(vct.clone())),
        ("set-unset", Some(vct.clone()), None),
    ] {
        let extra = match &before {
            Some(v) => json!({"spec": {"volumeClaimTemplates": v}}),
            None => json!({}),
        };
        sbs.create(&PostParams::default(), &sandbox_json(name, extra))
            .await
            .unwrap();
        // The controller may write the Sandbox between the read and the replace: a conflict
        // (checked before validation, as kube-apiserver does) is retried on a fresh read.
        let err = loop {
            let mut sb = sbs.get(name).await.unwrap();
            sb.spec.volume_claim_templates = match &after {
                Some(v) => serde_json::from_value(v.clone()).unwrap(),
                None => vec![],
            };
            match sbs.replace(name, &PostParams::default(), &sb).await {
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                r => break r.expect_err("update must be rejected"),
            }
        };
        assert!(
            err.to_string()
                .contains("volumeClaimTemplates is immutable"),
            "{name}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sandboxes() {
    let env = common::start_with(
        |c| {
            c.sandbox_workers = 10;
            c.claim_workers = 100;
            c.warm_pool_workers = 10;
        },
        common::KubeletMode::Ready,
    )
    .await;
    let sbs: Api<Sandbox> = api(&env.client);
    let creates = (0..20).map(|i| {
        let sbs = sbs.clone();
        async move {
            sbs.create(
                &PostParams::default(),
                &sandbox_json(&format!("par-{i}"), json!({})),
            )
            .await
        }
    });
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    for i in 0..20 {
        let name = format!("par-{i}");
        wait_status(&env.client, &name, ready_status(&name, 1)).await;
    }
}
