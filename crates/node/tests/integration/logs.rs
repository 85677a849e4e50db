//! Container logs as `kubectl logs` reads them, on a Pod whose container restarts: the current
//! instance only, the previous one, the last lines, a byte limit, and a follow that ends when
//! the instance stops. Every wait is bounded.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox_node::logs::{self, LogOptions};
use common::AgentEnv;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const IMAGE: &str = "localhost/test/busybox:1";

async fn read_all(a: &AgentEnv, uid: &str, opts: LogOptions) -> String {
    let engine = Arc::clone(a.env.engine.as_ref().unwrap());
    let mut s = logs::stream(engine, uid, "main", &opts).unwrap();
    let mut out = Vec::new();
    let read = async {
        while let Some(chunk) = s.next().await {
            out.extend(chunk.unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the log stream ended within 30 s");
    String::from_utf8(out).unwrap()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_previous_tail_limit_and_follow() {
    let kind = common::default_kind();
    if common::need(Some(kind)) {
        return;
    }
    let a = AgentEnv::new(&[kind], None).await;
    a.env.busybox(IMAGE).await;
    // Each instance counts itself in an emptyDir, prints five ticks and fails.
    let script = "n=$(cat /d/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /d/n; \
                  echo \"instance $n\"; for i in 1 2 3 4 5; do echo \"tick $n $i\"; sleep 0.3; done; \
                  if [ $n -ge 3 ]; then exec sleep 600; fi; exit 1";
    let pod = a
        .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "chatty", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1, "restartPolicy": "Always",
                "volumes": [{"name": "d", "emptyDir": {}}],
                "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "volumeMounts": [{"name": "d", "mountPath": "/d"}]}]}}))
        .await;
    let uid = pod.metadata.uid.clone().unwrap();

    // Before it ran, kubelet's refusals.
    assert!(
        logs::check_status(&pod, "main", true)
            .unwrap_err()
            .contains("previous terminated container")
    );
    assert_eq!(
        logs::check_status(&pod, "nope", false).unwrap_err(),
        "container nope is not valid for pod chatty"
    );

    // Follow the first instance: the stream ends when it exits.
    a.wait_pod("default", "chatty", Duration::from_secs(30), |p| {
        logs::check_status(p, "main", false).is_ok()
    })
    .await;
    let t = Instant::now();
    let followed = read_all(
        &a,
        &uid,
        LogOptions {
            follow: true,
            ..LogOptions::default()
        },
    )
    .await;
    // Whichever instance was running (the first, unless the machine is slow), all of it.
    let n = followed
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("instance "))
        .unwrap_or_else(|| panic!("{followed}"));
    assert!(followed.ends_with(&format!("tick {n} 5\n")), "{followed}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // After a restart: the current instance alone, the previous one on request.
    let p = a
        .wait_pod("default", "chatty", Duration::from_secs(60), |p| {
            restarts(p) >= 2
        })
        .await;
    logs::check_status(&p, "main", true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let current = loop {
        let text = read_all(&a, &uid, LogOptions::default()).await;
        if text.contains("tick 3 5") {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(current.starts_with("instance 3\n"), "{current}");
    let previous = read_all(
        &a,
        &uid,
        LogOptions {
            previous: true,
            follow: true,
            ..LogOptions::default()
        },
    )
    .await;
    assert_eq!(
        previous,
        "instance 2\ntick 2 1\ntick 2 2\ntick 2 3\ntick 2 4\ntick 2 5\n"
    );
    let last = read_all(
        &a,
        &uid,
        LogOptions {
            tail_lines: Some(2),
            ..LogOptions::default()
        },
    )
    .await;
    assert_eq!(last, "tick 3 4\ntick 3 5\n");
    let limited = read_all(
        &a,
        &uid,
        LogOptions {
            limit_bytes: Some(8),
            follow: true,
            ..LogOptions::default()
        },
    )
    .await;
    assert_eq!(limited, "instance");
}
