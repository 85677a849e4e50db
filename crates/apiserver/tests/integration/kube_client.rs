//! kube-rs against the real server (HTTPS on loopback, SQLite in a temp dir): conflicts,
//! generateName, watch resume, 410 then relist, garbage collection, finalizers, the status
//! subresource, selectors, and ConfigMaps and Secrets.

use crate::common;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::time::Duration;

fn lease(name: &str) -> Lease {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"holderIdentity": "a"}}))
        .unwrap()
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "busybox:1"}]}
    }))
    .unwrap()
}

fn owned_by(mut l: Lease, owner: &Lease, block: bool) -> Lease {
    l.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        name: owner.name_any(),
        uid: owner.uid().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(block),
    }]);
    l
}

async fn wait_gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..100 {
        if api.get_opt(name).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_generate_name_and_in_process_client() {
    let ts = common::start().await;
    for client in [ts.https_client().await, ts.server.client()] {
        let api: Api<Lease> = Api::default_namespaced(client.clone());
        let name = format!("l-{}", uuid_suffix());
        let created = api
            .create(&PostParams::default(), &lease(&name))
            .await
            .unwrap();
        assert!(created.uid().is_some());
        // Leases have no generation on kube-apiserver either.
        assert_eq!(created.metadata.generation, None);
        let mut a = created.clone();
        a.spec.as_mut().unwrap().holder_identity = Some("b".into());
        let updated = api
            .replace(&name, &PostParams::default(), &a)
            .await
            .unwrap();
        assert_ne!(updated.resource_version(), created.resource_version());
        // Stale update: 409 with kube-apiserver's message.
        let mut stale = created.clone();
        stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
        let err = api
            .replace(&name, &PostParams::default(), &stale)
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 409);
                assert_eq!(s.reason, "Conflict");
                assert_eq!(
                    s.message,
                    format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    )
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // A merge patch with a stale resourceVersion conflicts too.
        let p = json!({"metadata": {"resourceVersion": created.resource_version()}, "spec": {"holderIdentity": "d"}});
        let err = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&p))
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 409),
            "{err:?}"
        );
        // generateName: 5 characters from kube-apiserver's alphabet.
        let g: Lease =
            serde_json::from_value(json!({"metadata": {"generateName": "pool-"}})).unwrap();
        let g = api.create(&PostParams::default(), &g).await.unwrap();
        let suffix = g.name_any().strip_prefix("pool-").unwrap().to_string();
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{suffix}"
        );
        // AlreadyExists.
        let err = api
            .create(&PostParams::default(), &lease(&name))
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists")
        );
    }
}

fn uuid_suffix() -> String {
    agent_sandbox_apiserver::api::name_suffix()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resume_and_gone_then_relist() {
    let ts = common::start_with(|c| c.watch_window = 10).await;
    let client = ts.https_client().await;
    let api: Api<Lease> = Api::default_namespaced(client.clone());
    let first = api
        .create(&PostParams::default(), &lease("w0"))
        .await
        .unwrap();
    let rv0 = first.resource_version().unwrap();
    for i in 1..4 {
        api.create(&PostParams::default(), &lease(&format!("w{i}")))
            .await
            .unwrap();
    }
    // Resume from rv0: exactly the three later creations, in order.
    let mut s = api
        .watch(&WatchParams::default().timeout(2), &rv0)
        .await
        .unwrap()
        .boxed();
    let mut seen = vec![];
    while let Some(ev) = s.try_next().await.unwrap() {
        if let WatchEvent::Added(l) = ev {
            seen.push(l.name_any());
            if seen.len() == 3 {
                break;
            }
        }
    }
    assert_eq!(seen, vec!["w1", "w2", "w3"]);
    // Push rv0 out of the window: the watch gets an ERROR event with 410 Expired.
    for i in 0..15 {
        let p = json!({"spec": {"leaseDurationSeconds": i}});
        api.patch("w1", &PatchParams::default(), &Patch::Merge(&p))
            .await
            .unwrap();
    }
    let mut s = api
        .watch(&WatchParams::default().timeout(2), &rv0)
        .await
        .unwrap()
        .boxed();
    match s.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(
                e.message.starts_with("too old resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // kube_runtime::watcher: let its resourceVersion fall out of the window while it is not
    // polled, then check that it relists and sees every object.
    let cfg = watcher::Config::default().timeout(1);
    let mut w = watcher(api.clone(), cfg).boxed();
    loop {
        if let watcher::Event::InitDone = w.try_next().await.unwrap().unwrap() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..20 {
        api.create(&PostParams::default(), &lease(&format!("late{i}")))
            .await
            .unwrap();
    }
    let mut saw_gone = false;
    let mut relisted = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Err(watcher::Error::WatchError(e)))) if e.code == 410 => saw_gone = true,
            Ok(Some(Ok(watcher::Event::InitApply(l)))) if saw_gone => {
                relisted.insert(l.name_any());
            }
            Ok(Some(Ok(watcher::Event::InitDone))) if saw_gone => break,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert!(saw_gone, "the watcher never saw 410");
    assert_eq!(
        relisted.len(),
        24,
        "relist after 410 must return every object: {relisted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_changes_and_selectors() {
    let ts = common::start().await;
    let client = ts.server.client();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let cfg = watcher::Config::default().labels("app=web");
    let mut w = watcher(pods.clone(), cfg).boxed();
    loop {
        if let watcher::Event::InitDone = w.try_next().await.unwrap().unwrap() {
            break;
        }
    }
    pods.create(
        &PostParams::default(),
        &pod("web-1", json!({"app": "web", "tier": "fe"})),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &pod("db-1", json!({"app": "db"})))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(watcher::Event::Apply(p)) => assert_eq!(p.name_any(), "web-1"),
        other => panic!("unexpected {other:?}"),
    }
    // Relabelling out of the selector is a delete for this watcher.
    let p = json!({"metadata": {"labels": {"app": "other"}}});
    pods.patch("web-1", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(watcher::Event::Delete(p)) => assert_eq!(p.name_any(), "web-1"),
        other => panic!("unexpected {other:?}"),
    }
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .unwrap();
    // Bound to the configured node, phase Pending.
    let got = pods.get("db-1").await.unwrap();
    assert_eq!(got.spec.unwrap().node_name.as_deref(), Some("test-node"));
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Pending"));
    // Label selectors: equality and set-based.
    let names = |l: Vec<Pod>| l.into_iter().map(|p| p.name_any()).collect::<Vec<_>>();
    let l = pods
        .list(&ListParams::default().labels("app in (web,db)"))
        .await
        .unwrap();
    assert_eq!(names(l.items), vec!["db-1", "web-1"]);
    let l = pods
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(names(l.items), vec!["db-1"]);
    let l = pods
        .list(&ListParams::default().labels("tier,app notin (db)"))
        .await
        .unwrap();
    assert_eq!(names(l.items), vec!["web-1"]);
    // Field selectors.
    let l = pods
        .list(&ListParams::default().fields("metadata.name=db-1"))
        .await
        .unwrap();
    assert_eq!(names(l.items), vec!["db-1"]);
    let l = pods
        .list(&ListParams::default().fields("spec.nodeName=test-node,status.phase=Pending"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 2);
    let l = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap();
    assert!(l.items.is_empty());
    let err = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
    // Paging with limit/continue.
    for i in 0..5 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("page-{i}"), json!({"paged": "yes"})),
        )
        .await
        .unwrap();
    }
    let mut all = vec![];
    let mut lp = ListParams::default().labels("paged").limit(2);
    loop {
        let page = pods.list(&lp).await.unwrap();
        assert!(page.items.len() <= 2);
        all.extend(names(page.items));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(all, vec!["page-0", "page-1", "page-2", "page-3", "page-4"]);
    // All namespaces.
    let all_ns: Api<Pod> = Api::all(client);
    assert_eq!(
        all_ns
            .list(&ListParams::default().labels("paged"))
            .await
            .unwrap()
            .items
            .len(),
        5
    );
}

async fn gc_setup(client: &Client, ns: &str) -> (Api<Lease>, Lease, Lease) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    nss.create(&PostParams::default(), &n).await.unwrap();
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let owner = api
        .create(&PostParams::default(), &lease("owner"))
        .await
        .unwrap();
    let mut dep = owned_by(lease("dep"), &owner, true);
    dep.metadata.finalizers = None;
    let dep = api.create(&PostParams::default(), &dep).await.unwrap();
    (api, owner, dep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_policies_and_finalizers() {
    let ts = common::start().await;
    let client = ts.https_client().await;

    // Background: the owner goes at once, the dependent follows.
    let (api, _owner, _dep) = gc_setup(&client, "gc-bg").await;
    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert!(api.get_opt("owner").await.unwrap().is_none());
    assert!(
        wait_gone(&api, "dep").await,
        "background GC did not delete the dependent"
    );

    // Orphan: the dependent stays, without the owner reference.
    let (api, _owner, _dep) = gc_setup(&client, "gc-orphan").await;
    api.delete("owner", &DeleteParams::orphan()).await.unwrap();
    assert!(wait_gone(&api, "owner").await);
    let dep = api.get("dep").await.unwrap();
    assert!(
        dep.owner_references().is_empty(),
        "{:?}",
        dep.metadata.owner_references
    );

    // Foreground with a blocking dependent held by a finalizer.
    let (api, _owner, _dep) = gc_setup(&client, "gc-fg").await;
    let hold = json!({"metadata": {"finalizers": ["example.com/hold"]}});
    api.patch("dep", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    let r = api
        .delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let pending = r.left().expect("foreground delete returns the object");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(
        pending
            .finalizers()
            .contains(&"foregroundDeletion".to_string())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let owner = api.get("owner").await.unwrap();
    assert!(
        owner.metadata.deletion_timestamp.is_some(),
        "owner must wait for its blocking dependent"
    );
    let dep = api.get("dep").await.unwrap();
    assert!(
        dep.metadata.deletion_timestamp.is_some(),
        "dependent must be deleting"
    );
    // Finalizers hold deletion until removed; adding one while deleting is refused.
    let add = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}});
    let err = api
        .patch("dep", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
    api.patch(
        "dep",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(wait_gone(&api, "dep").await);
    assert!(
        wait_gone(&api, "owner").await,
        "owner must go once its dependents are gone"
    );

    // Delete preconditions.
    let api: Api<Lease> = Api::default_namespaced(client.clone());
    let l = api
        .create(&PostParams::default(), &lease("pre"))
        .await
        .unwrap();
    let mut dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let err = api.delete("pre", &dp).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    dp.preconditions = Some(kube::api::Preconditions {
        uid: l.uid(),
        resource_version: l.resource_version(),
    });
    api.delete("pre", &dp).await.unwrap();

    // Namespace deletion deletes the contents.
    let (api, _o, _d) = gc_setup(&client, "doomed").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    assert!(wait_gone(&api, "owner").await);
    assert!(
        wait_gone(&nss, "doomed").await,
        "namespace must go once empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_and_generation() {
    let ts = common::start().await;
    let client = ts.server.client();
    let svcs: Api<Service> = Api::default_namespaced(client);
    let s: Service = serde_json::from_value(json!({
        "metadata": {"name": "svc"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    }))
    .unwrap();
    let s = svcs.create(&PostParams::default(), &s).await.unwrap();
    // Services have no generation on kube-apiserver (kinds that have one: the CRD tests).
    assert_eq!(s.metadata.generation, None);
    assert!(s.spec.as_ref().unwrap().cluster_ip.is_some());
    assert_eq!(
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .protocol
            .as_deref(),
        Some("TCP")
    );
    // Status through the status subresource.
    let st = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}});
    let s2 = svcs
        .patch_status("svc", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(
        s2.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .as_deref(),
        Some("10.0.0.1")
    );
    // Status changes through the main resource are ignored.
    let p = json!({"spec": {"selector": {"app": "y"}}, "status": {"loadBalancer": {}}});
    let s3 = svcs
        .patch("svc", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(s3.metadata.generation, None);
    assert_eq!(
        s3.status
            .clone()
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("10.0.0.1")
    );
    // A no-op update writes nothing.
    let s4 = svcs
        .patch("svc", &PatchParams::default(), &Patch::Merge(&json!({})))
        .await
        .unwrap();
    assert_eq!(s4.resource_version(), s3.resource_version());
    // Strategic merge patch merges ports by port.
    let smp = json!({"spec": {"ports": [{"port": 443, "name": "https"}]}});
    let s5 = svcs
        .patch("svc", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .unwrap();
    assert_eq!(s5.spec.unwrap().ports.unwrap().len(), 2);
    // JSON patch.
    let jp = serde_json::from_value(
        json!([{"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}]),
    )
    .unwrap();
    let s6 = svcs
        .patch("svc", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(s6.labels().get("k").map(String::as_str), Some("v"));
    // Server-side apply: 415.
    let err = svcs
        .patch(
            "svc",
            &PatchParams::apply("t"),
            &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Service"})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 415),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_and_v1alpha1_watch() {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let ts = common::start().await;
    let client = ts.server.client();
    // kube_runtime::watcher with sendInitialEvents (streaming lists).
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    for i in 0..3 {
        leases
            .create(&PostParams::default(), &lease(&format!("s{i}")))
            .await
            .unwrap();
    }
    let mut w = watcher(leases.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut init = vec![];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), w.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(l) => init.push(l.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(init, vec!["s0", "s1", "s2"]);
    leases
        .create(&PostParams::default(), &lease("s3"))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), w.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(watcher::Event::Apply(l)) => assert_eq!(l.name_any(), "s3"),
        other => panic!("unexpected {other:?}"),
    }
    // A v1alpha1 watch sees v1beta1 writes converted.
    let ar =
        |v: &str| ApiResource::from_gvk(&GroupVersionKind::gvk("agents.x-k8s.io", v, "Sandbox"));
    let alpha: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ar("v1alpha1"));
    let beta: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ar("v1beta1"));
    let mut s = alpha
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    let sb: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "sb"},
        "spec": {"operatingMode": "Suspended", "podTemplate": {"spec": {"containers": [{"name": "m", "image": "i"}]}}}
    }))
    .unwrap();
    beta.create(&PostParams::default(), &sb).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), s.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Added(o)) => {
            assert_eq!(
                o.types.as_ref().unwrap().api_version,
                "agents.x-k8s.io/v1alpha1"
            );
            assert_eq!(o.data["spec"]["replicas"], json!(0));
        }
        other => panic!("unexpected {other:?}"),
    }
    // A v1alpha1 write is stored as v1beta1.
    let p = json!({"spec": {"replicas": 1}});
    alpha
        .patch("sb", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let b = beta.get("sb").await.unwrap();
    assert_eq!(b.data["spec"]["operatingMode"], json!("Running"));
    let stored = ts
        .server
        .store()
        .get("sandboxes.agents.x-k8s.io", "default", "sb")
        .unwrap();
    assert_eq!(stored.obj["apiVersion"], json!("agents.x-k8s.io/v1beta1"));
    // Schema errors come back as 422 Invalid with causes.
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox", "metadata": {"name": "bad"}, "spec": {}
    }))
    .unwrap();
    match beta.create(&PostParams::default(), &bad).await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .starts_with("Sandbox.agents.x-k8s.io \"bad\" is invalid: "),
                "{}",
                s.message
            );
            assert!(
                s.message.contains("spec.podTemplate: Required value"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_dry_run_and_protected_namespaces() {
    let ts = common::start().await;
    let client = ts.server.client();
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    for (name, team) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let l: Lease =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))
                .unwrap();
        leases.create(&PostParams::default(), &l).await.unwrap();
    }
    // dryRun changes nothing.
    let dry = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    leases.delete("a", &dry).await.unwrap();
    assert!(leases.get_opt("a").await.unwrap().is_some());
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    leases.create(&pp, &lease("dry")).await.unwrap();
    assert!(leases.get_opt("dry").await.unwrap().is_none());
    // deletecollection with a label selector.
    leases
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("team=x"),
        )
        .await
        .unwrap();
    let left: Vec<String> = leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|l| l.name_any())
        .collect();
    assert_eq!(left, vec!["c"]);
    // default may not be deleted.
    let nss: Api<Namespace> = Api::all(client.clone());
    let err = nss
        .delete("default", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err:?}"
    );
    // Creating in a missing namespace is a 404 for the namespace.
    let missing: Api<Lease> = Api::namespaced(client, "nope");
    let err = missing
        .create(&PostParams::default(), &lease("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404 && s.message == "namespaces \"nope\" not found"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_the_same_data_dir_is_refused() {
    let ts = common::start().await;
    let cfg = common::config(ts.dir.path());
    match agent_sandbox_apiserver::ApiServer::start(cfg).await {
        Err(agent_sandbox_apiserver::StartError::Locked(_)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second server must not share the data directory"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_both_versions_and_ttl() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    let ts = common::start().await;
    let client = ts.server.client();
    let ev: Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2020-01-01T00:00:00.000000Z",
        "reportingController": "ctl", "reportingInstance": "ctl-0", "action": "Create",
        "reason": "Created", "note": "made it", "type": "Normal",
        "regarding": {"kind": "Sandbox", "name": "sb", "namespace": "default"}
    }))
    .unwrap();
    let api: Api<Event> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &ev).await.unwrap();
    // The same object through core/v1.
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let c = core.get("e1").await.unwrap();
    assert_eq!(c.message.as_deref(), Some("made it"));
    assert_eq!(c.involved_object.name.as_deref(), Some("sb"));
    let l = core
        .list(&ListParams::default().fields("involvedObject.name=sb"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    // Events expire a TTL after their last write.
    agent_sandbox_apiserver::gc::expire_events(&ts.server.app(), Duration::from_secs(3600)).await;
    assert!(api.get_opt("e1").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    agent_sandbox_apiserver::gc::expire_events(&ts.server.app(), Duration::from_millis(10)).await;
    assert!(api.get_opt("e1").await.unwrap().is_none());
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The 422 message of a refused write.
fn invalid_message<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 422 && s.reason == "Invalid" => s.message,
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
}

/// The next watch event (bounded), as (type, name, object).
async fn next_event<K>(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> (&'static str, K)
where
    K: kube::Resource + Clone + std::fmt::Debug,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), s.try_next())
            .await
            .expect("a watch event within 10 s")
            .unwrap()
            .expect("the watch ended early");
        match ev {
            WatchEvent::Added(o) => return ("ADDED", o),
            WatchEvent::Modified(o) => return ("MODIFIED", o),
            WatchEvent::Deleted(o) => return ("DELETED", o),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_maps_create_get_list_watch_update_patch_delete() {
    let ts = common::start().await;
    let client = ts.https_client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = cms
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings", "labels": {"app": "x"}},
        "data": {"mode": "fast"},
        "binaryData": {"blob": "AAEC"}
    }))
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let data = created.data.clone().unwrap();
    assert_eq!(data["mode"], "fast");
    assert_eq!(
        created.binary_data.clone().unwrap()["blob"].0,
        vec![0, 1, 2]
    );
    let got = cms.get("settings").await.unwrap();
    assert_eq!(got.data, created.data);
    let l = cms
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        vec!["settings"]
    );
    // Update (PUT), then merge, strategic and JSON patches.
    let mut c = got.clone();
    c.data.as_mut().unwrap().insert("level".into(), "3".into());
    let c = cms
        .replace("settings", &PostParams::default(), &c)
        .await
        .unwrap();
    assert_eq!(c.data.as_ref().unwrap()["level"], "3");
    let p = json!({"data": {"mode": "slow"}});
    cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let p = json!({"data": {"extra": "e"}});
    cms.patch("settings", &PatchParams::default(), &Patch::Strategic(&p))
        .await
        .unwrap();
    let jp = serde_json::from_value(json!([{"op": "remove", "path": "/data/level"}])).unwrap();
    let c = cms
        .patch("settings", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(
        c.data.clone().unwrap().into_iter().collect::<Vec<_>>(),
        vec![
            ("extra".to_string(), "e".to_string()),
            ("mode".to_string(), "slow".to_string())
        ]
    );
    // The watch saw each write in order.
    let (t, o) = next_event(&mut w).await;
    assert_eq!((t, o.name_any()), ("ADDED", "settings".to_string()));
    for _ in 0..4 {
        assert_eq!(next_event(&mut w).await.0, "MODIFIED");
    }
    // Bad keys, a key in both maps, bad base64: 422 naming the key.
    let bad: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "data": {"a b": "1"}})).unwrap();
    let m = invalid_message(cms.create(&PostParams::default(), &bad).await);
    assert!(
        m.starts_with(r#"ConfigMap "bad" is invalid: data[a b]: Invalid value: "a b": a valid config key must consist of alphanumeric characters, '-', '_' or '.'"#),
        "{m}"
    );
    let p = json!({"binaryData": {"mode": "AA=="}});
    let m = invalid_message(
        cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(
        m.contains(r#"data[mode]: Invalid value: "mode": duplicate of key present in binaryData"#),
        "{m}"
    );
    let p = json!({"binaryData": {"raw": "not base64"}});
    let m = invalid_message(
        cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(
        m.contains("binaryData[raw]: Invalid value") && m.contains("base64"),
        "{m}"
    );
    // Too big.
    let p = json!({"data": {"big": "x".repeat(1024 * 1024)}});
    let m = invalid_message(
        cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(
        m.ends_with("[]: Too long: must have at most 1048576 bytes"),
        "{m}"
    );
    // immutable: data may not change and immutable may not be unset; metadata may change.
    let p = json!({"immutable": true});
    cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let p = json!({"data": {"mode": "other"}});
    let m = invalid_message(
        cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert_eq!(
        m,
        "ConfigMap \"settings\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
    );
    let p = json!({"immutable": false});
    let m = invalid_message(
        cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(m.contains("immutable: Forbidden"), "{m}");
    let p = json!({"metadata": {"labels": {"app": "y"}}});
    cms.patch("settings", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    // Delete.
    cms.delete("settings", &DeleteParams::default())
        .await
        .unwrap();
    assert!(cms.get_opt("settings").await.unwrap().is_none());
    loop {
        let (t, o) = next_event(&mut w).await;
        if t == "DELETED" {
            assert_eq!(o.name_any(), "settings");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_string_data_base64_type_and_immutable() {
    use kube::api::{ApiResource, DynamicObject};
    let ts = common::start().await;
    // The database holds the Secrets: its directory is the owner's only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs_err::metadata(ts.dir.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let client = ts.https_client().await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let rv = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut w = secrets
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    // stringData is merged into data (winning over data) and never returned or stored.
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"},
        "data": {"user": b64("admin"), "password": b64("old")},
        "stringData": {"password": "hunter2"}
    }))
    .unwrap();
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.string_data.is_none());
    let data = created.data.clone().unwrap();
    assert_eq!(data["user"].0, b"admin");
    assert_eq!(data["password"].0, b"hunter2");
    let stored = ts
        .server
        .store()
        .get("secrets", "default", "creds")
        .unwrap();
    assert!(stored.obj.get("stringData").is_none(), "{}", stored.obj);
    assert_eq!(stored.obj["data"]["password"], json!(b64("hunter2")));
    let got = secrets.get("creds").await.unwrap();
    assert!(got.string_data.is_none());
    assert_eq!(
        secrets
            .list(&ListParams::default().fields("type=Opaque"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // A merge patch with stringData.
    let p = json!({"stringData": {"user": "root"}});
    let s = secrets
        .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(s.data.as_ref().unwrap()["user"].0, b"root");
    assert!(s.string_data.is_none());
    // A strategic patch with stringData and a JSON patch adding to data.
    let p = json!({"stringData": {"token": "t0"}});
    secrets
        .patch("creds", &PatchParams::default(), &Patch::Strategic(&p))
        .await
        .unwrap();
    let jp = serde_json::from_value(
        json!([{"op": "add", "path": "/stringData", "value": {"extra": "x"}}]),
    )
    .unwrap();
    let s = secrets
        .patch("creds", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    let data = s.data.clone().unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        vec!["extra", "password", "token", "user"]
    );
    assert!(s.string_data.is_none());
    // Update (PUT) with stringData.
    let mut s = s;
    s.string_data = Some([("password".to_string(), "new".to_string())].into());
    let s = secrets
        .replace("creds", &PostParams::default(), &s)
        .await
        .unwrap();
    assert_eq!(s.data.as_ref().unwrap()["password"].0, b"new");
    // The watch sees each write, never with stringData.
    let (t, o) = next_event(&mut w).await;
    assert_eq!((t, o.name_any()), ("ADDED", "creds".to_string()));
    for _ in 0..4 {
        let (t, o) = next_event(&mut w).await;
        assert_eq!(t, "MODIFIED");
        assert!(o.string_data.is_none());
    }
    // Bad base64 in data: 422 naming the key, on create and on patch.
    let dynamic: Api<DynamicObject> =
        Api::default_namespaced_with(client.clone(), &ApiResource::erase::<Secret>(&()));
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad"},
        "data": {"api-key": "plain text!"}
    }))
    .unwrap();
    let m = invalid_message(dynamic.create(&PostParams::default(), &bad).await);
    assert!(
        m.starts_with(r#"Secret "bad" is invalid: data[api-key]: Invalid value: "<secret contents redacted>": illegal base64 data at input byte 5"#)
            && m.contains("stringData"),
        "{m}"
    );
    let p = json!({"data": {"token": "%%%"}});
    let m = invalid_message(
        secrets
            .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(m.contains("data[token]: Invalid value"), "{m}");
    // Bad key.
    let p = json!({"stringData": {"no/slash": "v"}});
    let m = invalid_message(
        secrets
            .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(
        m.contains(r#"data[no/slash]: Invalid value: "no/slash": a valid config key must consist of alphanumeric characters"#),
        "{m}"
    );
    // type is immutable; typed secrets need their keys.
    let p = json!({"type": "kubernetes.io/tls"});
    let m = invalid_message(
        secrets
            .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(
        m.contains(r#"type: Invalid value: "kubernetes.io/tls": field is immutable"#),
        "{m}"
    );
    let tls: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "c"}
    }))
    .unwrap();
    let m = invalid_message(secrets.create(&PostParams::default(), &tls).await);
    assert_eq!(
        m,
        "Secret \"tls\" is invalid: data[tls.key]: Required value"
    );
    // immutable: data may not change (also through stringData), nor immutable be unset.
    let p = json!({"immutable": true});
    secrets
        .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let p = json!({"stringData": {"user": "other"}});
    let m = invalid_message(
        secrets
            .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert_eq!(
        m,
        "Secret \"creds\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
    );
    let p = json!({"immutable": null});
    let m = invalid_message(
        secrets
            .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
            .await,
    );
    assert!(m.contains("immutable: Forbidden"), "{m}");
    let p = json!({"metadata": {"annotations": {"note": "ok"}}});
    secrets
        .patch("creds", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    // Delete.
    secrets
        .delete("creds", &DeleteParams::default())
        .await
        .unwrap();
    assert!(secrets.get_opt("creds").await.unwrap().is_none());
    loop {
        let (t, o) = next_event(&mut w).await;
        if t == "DELETED" {
            assert_eq!(o.name_any(), "creds");
            assert!(o.string_data.is_none());
            break;
        }
    }
}

/// A Service's EndpointSlices follow the Pods it selects (readiness, labels, deletion) and go
/// with the Service, as kube-controller-manager keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_the_selected_pods() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let ts = common::start().await;
    let client = ts.https_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    for (name, ip) in [("web-a", "10.1.0.1"), ("web-b", "10.1.0.2")] {
        pods.create(&PostParams::default(), &pod(name, json!({"app": "web"})))
            .await
            .unwrap();
        let status = json!({"status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let by_service = ListParams::default().labels("kubernetes.io/service-name=web");
    let addresses = || async {
        let list = slices.list(&by_service).await.unwrap();
        let mut out: Vec<(String, bool)> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.clone().unwrap_or_default())
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.and_then(|c| c.ready).unwrap_or(false),
                )
            })
            .collect();
        out.sort();
        (list.items.len(), out)
    };
    let wait_for = |want: Vec<(&'static str, bool)>| {
        let addresses = &addresses;
        async move {
            let want: Vec<(String, bool)> =
                want.into_iter().map(|(a, r)| (a.to_string(), r)).collect();
            for _ in 0..100 {
                if addresses().await.1 == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("slices stayed at {:?}, wanted {want:?}", addresses().await);
        }
    };
    wait_for(vec![("10.1.0.1", true), ("10.1.0.2", true)]).await;
    let list = slices.list(&by_service).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let s = &list.items[0];
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
    assert_eq!(
        s.labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpointslice-controller.k8s.io")
    );
    assert_eq!(s.owner_references()[0].name, "web");
    // Not ready, then relabelled out of the selector.
    let unready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    pods.patch_status("web-b", &PatchParams::default(), &Patch::Merge(unready))
        .await
        .unwrap();
    wait_for(vec![("10.1.0.1", true), ("10.1.0.2", false)]).await;
    pods.patch(
        "web-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    wait_for(vec![("10.1.0.2", false)]).await;
    // The slices go with their Service.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    for _ in 0..100 {
        if slices.list(&by_service).await.unwrap().items.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slices outlived their Service");
}
