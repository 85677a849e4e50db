//! Restart durability: a child process (this test binary, re-executed) runs the server; the
//! parent writes 10 000 objects, kills the child with SIGKILL while more writes are in flight,
//! restarts it on the same data directory, and checks that every acknowledged write is there
//! with the same resourceVersion and that a watch resumes from a version taken before the kill.

use crate::common;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHILD_ENV: &str = "APISERVER_DURABILITY_CHILD_DIR";

/// Entry point of the child process; a no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_server() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut cfg = common::config(Path::new(&dir));
    cfg.socket_path = None;
    let server = agent_sandbox_apiserver::ApiServer::start(cfg)
        .await
        .expect("child start");
    let addr = server.tcp_addr().unwrap().to_string();
    fs_err::write(Path::new(&dir).join("addr.tmp"), &addr).unwrap();
    fs_err::rename(
        Path::new(&dir).join("addr.tmp"),
        Path::new(&dir).join("addr"),
    )
    .unwrap();
    // Bounded: the parent kills us long before this.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

fn spawn_child(dir: &Path) -> Child {
    let _ = fs_err::remove_file(dir.join("addr"));
    Command::new(std::env::current_exe().unwrap())
        .args([
            "durability::child_server",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(dir: &Path) {
    for _ in 0..600 {
        if dir.join("addr").exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("child server did not start");
}

fn lease(name: &str) -> Lease {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"holderIdentity": "x"}}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_every_acknowledged_write() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut child = spawn_child(&dir);
    wait_ready(&dir).await;
    let client = common::https_client_from(&dir.join("kubeconfig")).await;
    let api: Api<Lease> = Api::default_namespaced(client);

    // Wave 1: 10 000 creates, 64 in flight.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    futures::stream::iter(0..10_000)
        .map(|i| {
            let api = api.clone();
            let acked = acked.clone();
            async move {
                let name = format!("obj-{i:05}");
                let l = api
                    .create(&PostParams::default(), &lease(&name))
                    .await
                    .unwrap();
                let rv: u64 = l.resource_version().unwrap().parse().unwrap();
                acked.lock().unwrap().insert(name, rv);
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let rv_mid: u64 = api
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();

    // Wave 2: updates in flight while the child is killed with SIGKILL.
    let updated: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let writer = {
        let api = api.clone();
        let updated = updated.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..10_000)
                .map(|i| {
                    let api = api.clone();
                    let updated = updated.clone();
                    async move {
                        let name = format!("obj-{i:05}");
                        let p = json!({"spec": {"holderIdentity": "updated"}});
                        if let Ok(l) = api
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                            .await
                        {
                            let rv: u64 = l.resource_version().unwrap().parse().unwrap();
                            updated.lock().unwrap().insert(name, rv);
                        }
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
    let updated = updated.lock().unwrap().clone();
    assert!(
        !updated.is_empty(),
        "some updates should have been acknowledged before the kill"
    );

    // Restart on the same data directory.
    let mut child = spawn_child(&dir);
    wait_ready(&dir).await;
    let client = common::https_client_from(&dir.join("kubeconfig")).await;
    let api: Api<Lease> = Api::default_namespaced(client);
    let list = api.list(&ListParams::default()).await.unwrap();
    let stored: HashMap<String, (u64, Lease)> = list
        .items
        .into_iter()
        .map(|l| {
            (
                l.name_any(),
                (l.resource_version().unwrap().parse().unwrap(), l),
            )
        })
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 10_000);
    for (name, rv) in &acked {
        let (srv, l) = stored
            .get(name)
            .unwrap_or_else(|| panic!("acknowledged {name} lost"));
        match updated.get(name) {
            Some(urv) => {
                assert_eq!(srv, urv, "{name}: acknowledged update lost");
                assert_eq!(
                    l.spec.as_ref().unwrap().holder_identity.as_deref(),
                    Some("updated")
                );
            }
            None => assert!(srv >= rv, "{name}: version went backwards"),
        }
        if !updated.contains_key(name) && srv == rv {
            assert_eq!(
                l.spec.as_ref().unwrap().holder_identity.as_deref(),
                Some("x")
            );
        }
    }
    // Ordering: creation versions keep the acknowledged order.
    let mut by_rv: Vec<(&u64, &String)> = acked.iter().map(|(n, r)| (r, n)).collect();
    by_rv.sort();
    assert!(
        by_rv.windows(2).all(|w| w[0].0 < w[1].0),
        "resourceVersions must be unique and ordered"
    );

    // A watch from a version taken before the kill resumes (no 410) and replays the updates.
    let mut s = api
        .watch(&WatchParams::default().timeout(10), &rv_mid.to_string())
        .await
        .unwrap()
        .boxed();
    let mut replayed = std::collections::HashSet::new();
    api.create(&PostParams::default(), &lease("after-restart"))
        .await
        .unwrap();
    let mut saw_new = false;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), s.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        match ev {
            WatchEvent::Modified(l) => {
                replayed.insert(l.name_any());
            }
            WatchEvent::Added(l) if l.name_any() == "after-restart" => {
                saw_new = true;
                break;
            }
            WatchEvent::Error(e) => panic!("watch did not resume: {e:?}"),
            _ => {}
        }
    }
    assert!(saw_new);
    for name in updated.keys() {
        assert!(
            replayed.contains(name),
            "update of {name} not replayed to the resumed watch"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
