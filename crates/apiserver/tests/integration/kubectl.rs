//! The real kubectl binary against the server over HTTPS with the generated kubeconfig.

use crate::common;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn kubectl_bin() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn kubectl(kc: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let kc = kc.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.map(String::from);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(kubectl_bin());
        cmd.arg("--kubeconfig").arg(&kc).args(&args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("kubectl must be installed (set KUBECTL to its path)");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

async fn ok(kc: &Path, args: &[&str]) -> String {
    let o = kubectl(kc, args, None).await;
    assert!(o.ok, "kubectl {args:?} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: demo
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: busybox:1.36
    env:
    - {name: A, value: "1"}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: lock
  namespace: demo
spec:
  holderIdentity: me
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_patch_wait_watch_delete() {
    let ts = common::start().await;
    let kc: PathBuf = ts.server.kubeconfig_path().to_path_buf();
    let client = ts.https_client().await;

    // apply -f with a multi-document manifest, then idempotent re-apply, then a change.
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(MANIFEST)).await;
    assert!(o.ok, "{}", o.stderr);
    for line in [
        "namespace/demo created",
        "service/web created",
        "pod/web-0 created",
        "lease.coordination.k8s.io/lock created",
    ] {
        assert!(o.stdout.contains(line), "missing {line:?} in {}", o.stdout);
    }
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(MANIFEST)).await;
    assert!(
        o.stdout.contains("pod/web-0 unchanged"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    let changed = MANIFEST.replace("image: busybox:1.36", "image: busybox:1.37");
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(&changed)).await;
    assert!(
        o.stdout.contains("pod/web-0 configured"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    // Pod specs are immutable apart from images and a few fields, as in kube-apiserver.
    let forbidden = MANIFEST.replace("value: \"1\"", "value: \"2\"");
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(&forbidden)).await;
    assert!(
        !o.ok && o.stderr.contains("pod updates may not change fields"),
        "{}{}",
        o.stdout,
        o.stderr
    );

    // get -o yaml / json
    let y = ok(&kc, &["-n", "demo", "get", "pod", "web-0", "-o", "yaml"]).await;
    assert!(
        y.contains("nodeName: test-node") && y.contains("image: busybox:1.37"),
        "{y}"
    );
    let j: Value =
        serde_json::from_str(&ok(&kc, &["-n", "demo", "get", "svc", "web", "-o", "json"]).await)
            .unwrap();
    assert_eq!(j["spec"]["ports"][0]["targetPort"], json!(8080));
    let table = ok(&kc, &["-n", "demo", "get", "pods"]).await;
    assert!(
        table.starts_with("NAME") && table.contains("web-0") && table.contains("Pending"),
        "{table}"
    );

    // patch: merge, json, strategic
    ok(
        &kc,
        &[
            "-n",
            "demo",
            "patch",
            "pod",
            "web-0",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
        ],
    )
    .await;
    ok(
        &kc,
        &[
            "-n",
            "demo",
            "patch",
            "pod",
            "web-0",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/j","value":"2"}]"#,
        ],
    )
    .await;
    ok(
        &kc,
        &[
            "-n",
            "demo",
            "patch",
            "pod",
            "web-0",
            "-p",
            r#"{"spec":{"containers":[{"name":"c","image":"busybox:1.38"}]}}"#,
        ],
    )
    .await;
    ok(
        &kc,
        &[
            "-n",
            "demo",
            "patch",
            "svc",
            "web",
            "-p",
            r#"{"spec":{"ports":[{"port":443,"targetPort":8443}]}}"#,
        ],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let p = pods.get("web-0").await.unwrap();
    assert_eq!(p.labels().get("m").map(String::as_str), Some("1"));
    assert_eq!(p.labels().get("j").map(String::as_str), Some("2"));
    let c = &p.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("busybox:1.38"));
    assert_eq!(
        c.env.as_ref().unwrap().len(),
        1,
        "strategic merge keeps the env list"
    );
    let svc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "demo");
    let ports = svc.get("web").await.unwrap().spec.unwrap().ports.unwrap();
    assert_eq!(
        ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        vec![80, 443],
        "ports merged by port"
    );
    let o = kubectl(
        &kc,
        &[
            "-n", "demo", "patch", "pod", "missing", "--type", "merge", "-p", "{}",
        ],
        None,
    )
    .await;
    assert!(
        !o.ok && o.stderr.contains("pods \"missing\" not found"),
        "{}",
        o.stderr
    );

    // get -w streams changes.
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["-n", "demo", "get", "leases", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let header = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(header.starts_with("EVENT"), "{header}");
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("ADDED") && first.contains("lock"), "{first}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "demo");
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "later"}})).unwrap(),
        )
        .await
        .unwrap();
    let next = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(next.contains("ADDED") && next.contains("later"), "{next}");
    leases.delete("later", &Default::default()).await.unwrap();
    let next = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(next.contains("DELETED") && next.contains("later"), "{next}");
    let _ = child.kill();
    let _ = child.wait();

    // wait --for=condition=Ready while another client sets the condition.
    let pods2 = pods.clone();
    let setter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        pods2
            .patch_status("web-0", &PatchParams::default(), &Patch::Merge(&st))
            .await
            .unwrap();
    });
    let o = kubectl(
        &kc,
        &[
            "-n",
            "demo",
            "wait",
            "--for=condition=Ready",
            "pod/web-0",
            "--timeout=10s",
        ],
        None,
    )
    .await;
    assert!(
        o.ok && o.stdout.contains("condition met"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    setter.await.unwrap();

    // delete cascades to owned objects (background by default), orphan keeps them.
    for (cascade, dep_survives) in [
        ("background", false),
        ("orphan", true),
        ("foreground", false),
    ] {
        let owner = leases
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
            )
            .await
            .unwrap();
        let dep: Lease =
            serde_json::from_value(json!({"metadata": {"name": "dep", "ownerReferences": [{
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "owner",
            "uid": owner.uid().unwrap(), "controller": true, "blockOwnerDeletion": true}]}}))
            .unwrap();
        leases.create(&PostParams::default(), &dep).await.unwrap();
        let o = kubectl(
            &kc,
            &[
                "-n",
                "demo",
                "delete",
                "lease",
                "owner",
                &format!("--cascade={cascade}"),
                "--timeout=10s",
            ],
            None,
        )
        .await;
        assert!(
            o.ok && o.stdout.contains("deleted"),
            "{cascade}: {}{}",
            o.stdout,
            o.stderr
        );
        let mut gone = false;
        for _ in 0..60 {
            if leases.get_opt("dep").await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(gone, !dep_survives, "cascade={cascade}");
        if dep_survives {
            assert!(
                leases
                    .get("dep")
                    .await
                    .unwrap()
                    .owner_references()
                    .is_empty()
            );
            leases.delete("dep", &Default::default()).await.unwrap();
        }
    }

    // Deleting the namespace removes its contents.
    let o = kubectl(&kc, &["delete", "namespace", "demo", "--timeout=20s"], None).await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert!(pods.get_opt("web-0").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_api_resources_and_explain() {
    let ts = common::start().await;
    let kc = ts.server.kubeconfig_path().to_path_buf();
    let out = ok(&kc, &["api-resources"]).await;
    for (name, short) in [
        ("persistentvolumeclaims", "pvc"),
        ("networkpolicies", "netpol"),
        ("services", "svc"),
        ("pods", "po"),
        ("configmaps", "cm"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {out}"));
        assert!(line.split_whitespace().any(|w| w == short), "{line}");
    }
    for kind in [
        "Lease",
        "RuntimeClass",
        "CustomResourceDefinition",
        "Node",
        "Event",
        "Secret",
    ] {
        assert!(out.contains(kind), "{kind} missing from api-resources");
    }
    let v = ok(&kc, &["version", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["minor"], json!("36"));
    let e = ok(&kc, &["explain", "pods.spec.containers"]).await;
    assert!(e.contains("KIND:") && e.contains("Pod"), "{e}");
    let e = ok(&kc, &["explain", "secrets.stringData"]).await;
    assert!(e.contains("KIND:") && e.contains("Secret"), "{e}");
    let ns = ok(&kc, &["get", "ns", "-o", "name"]).await;
    assert!(
        ns.contains("namespace/default") && ns.contains("namespace/kube-system"),
        "{ns}"
    );
    // A kind this server does not serve: kubectl's validation reads the (empty) OpenAPI v2
    // document and then says plainly that the kind is unknown.
    let o = kubectl(
        &kc,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: c}\n"),
    )
    .await;
    assert!(!o.ok);
    assert!(
        o.stderr
            .contains(r#"no matches for kind "ServiceAccount" in version "v1""#),
        "{}",
        o.stderr
    );
}

const CONFIG: &str = r#"
apiVersion: v1
kind: Secret
metadata:
  name: app
stringData:
  password: hunter2
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: app
data:
  mode: fast
"#;

/// The header and the row of `name` in a `kubectl get` table (whitespace-split).
fn table_row(table: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let split = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    let mut header = vec![];
    for line in table.lines() {
        let cells = split(line);
        if cells.first().is_some_and(|c| c == "NAME") {
            header = cells;
        } else if cells.first().is_some_and(|c| c == name) {
            return (header, cells);
        }
    }
    panic!("no row {name} in {table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_maps_and_secrets() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ts = common::start().await;
    let kc = ts.server.kubeconfig_path().to_path_buf();
    let out = ok(&kc, &["create", "configmap", "x", "--from-literal=a=1"]).await;
    assert_eq!(out.trim(), "configmap/x created");
    let out = ok(
        &kc,
        &["create", "secret", "generic", "s", "--from-literal=k=v"],
    )
    .await;
    assert_eq!(out.trim(), "secret/s created");
    // `kubectl create namespace` posts protobuf too.
    let out = ok(&kc, &["create", "namespace", "team-a"]).await;
    assert_eq!(out.trim(), "namespace/team-a created");
    let out = ok(&kc, &["get", "secret", "s", "-o", "jsonpath={.data.k}"]).await;
    assert_eq!(out, b64("v"));
    // Tables with kube-apiserver's columns.
    let t = ok(&kc, &["get", "cm,secrets"]).await;
    let (head, row) = table_row(&t, "configmap/x");
    assert_eq!(head, ["NAME", "DATA", "AGE"], "{t}");
    assert_eq!(row[1], "1", "{t}");
    let (head, row) = table_row(&t, "secret/s");
    assert_eq!(head, ["NAME", "TYPE", "DATA", "AGE"], "{t}");
    assert_eq!(&row[1..3], ["Opaque", "1"], "{t}");
    // apply with stringData: merged into data, not returned; re-apply is unchanged.
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(CONFIG)).await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("secret/app created") && o.stdout.contains("configmap/app created"),
        "{}",
        o.stdout
    );
    let j: Value =
        serde_json::from_str(&ok(&kc, &["get", "secret", "app", "-o", "json"]).await).unwrap();
    assert_eq!(j["data"]["password"], json!(b64("hunter2")));
    assert_eq!(j["type"], json!("Opaque"));
    assert!(j.get("stringData").is_none(), "{j}");
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(CONFIG)).await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    let changed = CONFIG.replace("hunter2", "swordfish");
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(&changed)).await;
    assert!(
        o.stdout.contains("secret/app configured"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    let out = ok(
        &kc,
        &["get", "secret", "app", "-o", "jsonpath={.data.password}"],
    )
    .await;
    assert_eq!(out, b64("swordfish"));
    // patch: merge with stringData, strategic, JSON.
    ok(
        &kc,
        &[
            "patch",
            "secret",
            "s",
            "--type",
            "merge",
            "-p",
            r#"{"stringData":{"k":"w"}}"#,
        ],
    )
    .await;
    ok(&kc, &["patch", "cm", "x", "-p", r#"{"data":{"b":"2"}}"#]).await;
    ok(
        &kc,
        &[
            "patch",
            "cm",
            "x",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/data/c","value":"3"}]"#,
        ],
    )
    .await;
    let out = ok(&kc, &["get", "secret", "s", "-o", "jsonpath={.data.k}"]).await;
    assert_eq!(out, b64("w"));
    let out = ok(&kc, &["get", "cm", "x", "--no-headers"]).await;
    assert_eq!(out.split_whitespace().nth(1), Some("3"), "{out}");
    let out = ok(
        &kc,
        &[
            "get",
            "secrets",
            "--field-selector",
            "type=Opaque",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(out, "secret/app\nsecret/s\n");
    // Bad base64, a bad key, immutable: refused with kube-apiserver's messages.
    let o = kubectl(
        &kc,
        &[
            "patch",
            "secret",
            "s",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"k":"not base64"}}"#,
        ],
        None,
    )
    .await;
    assert!(
        !o.ok && o.stderr.contains(r#"The Secret "s" is invalid: data[k]: Invalid value: "<secret contents redacted>": illegal base64 data"#),
        "{}",
        o.stderr
    );
    let bad = CONFIG.replace("mode: fast", "bad key: fast");
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(&bad)).await;
    assert!(
        !o.ok && o.stderr.contains(r#"data[bad key]: Invalid value: "bad key": a valid config key must consist of alphanumeric characters"#),
        "{}{}",
        o.stdout,
        o.stderr
    );
    ok(
        &kc,
        &[
            "patch",
            "cm",
            "x",
            "--type",
            "merge",
            "-p",
            r#"{"immutable":true}"#,
        ],
    )
    .await;
    let o = kubectl(
        &kc,
        &[
            "patch",
            "cm",
            "x",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"a":"2"}}"#,
        ],
        None,
    )
    .await;
    assert!(
        !o.ok && o.stderr.contains(r#"The ConfigMap "x" is invalid: data: Forbidden: field is immutable when `immutable` is set"#),
        "{}",
        o.stderr
    );
    ok(&kc, &["label", "cm", "x", "team=a"]).await;
    // get -w streams changes.
    let mut child = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "secrets", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let header: Vec<String> = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(header, ["EVENT", "NAME", "TYPE", "DATA", "AGE"]);
    for _ in 0..2 {
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(line.contains("ADDED"), "{line}");
    }
    // delete
    let out = ok(&kc, &["delete", "cm/x", "secret/s"]).await;
    assert!(
        out.contains(r#"configmap "x" deleted"#) && out.contains(r#"secret "s" deleted"#),
        "{out}"
    );
    let next = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(next.contains("DELETED") && next.contains(" s "), "{next}");
    let _ = child.kill();
    let _ = child.wait();
    let out = ok(&kc, &["get", "cm,secrets", "-o", "name"]).await;
    assert_eq!(out, "configmap/app\nsecret/app\n");
}

const SANDBOXES: &str = r#"
apiVersion: extensions.agents.x-k8s.io/v1beta1
kind: SandboxTemplate
metadata:
  name: py
spec:
  podTemplate:
    spec:
      containers:
      - name: main
        image: python:3.12
---
apiVersion: extensions.agents.x-k8s.io/v1beta1
kind: SandboxWarmPool
metadata:
  name: pool
spec:
  replicas: 1
  sandboxTemplateRef:
    name: py
---
apiVersion: agents.x-k8s.io/v1beta1
kind: Sandbox
metadata:
  name: sb1
spec:
  podTemplate:
    spec:
      containers:
      - name: main
        image: python:3.12
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_columns_scale_conversion_and_validation() {
    let ts = common::start().await;
    let kc = ts.server.kubeconfig_path().to_path_buf();
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(SANDBOXES)).await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("sandbox.agents.x-k8s.io/sb1 created"),
        "{}",
        o.stdout
    );
    let crds = ok(&kc, &["get", "crd", "-o", "name"]).await;
    assert!(crds.contains("sandboxes.agents.x-k8s.io"), "{crds}");
    // Upstream's printer columns.
    let t = ok(&kc, &["get", "sandboxes"]).await;
    let head: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(head, vec!["NAME", "READY", "REASON", "AGE"], "{t}");
    let t = ok(&kc, &["get", "swp"]).await;
    let head: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(head, vec!["NAME", "READY", "DESIRED", "AGE"], "{t}");
    // Status drives the Ready column; wait sees the condition.
    let client = ts.https_client().await;
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::default_namespaced_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "agents.x-k8s.io",
            "v1beta1",
            "Sandbox",
        )),
    );
    let st = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "DependenciesReady",
        "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}});
    api.patch_status("sb1", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    let t = ok(&kc, &["get", "sandbox", "sb1", "--no-headers"]).await;
    let cells: Vec<&str> = t.split_whitespace().collect();
    assert_eq!(&cells[..3], &["sb1", "True", "DependenciesReady"], "{t}");
    let o = ok(
        &kc,
        &[
            "wait",
            "--for=condition=Ready",
            "sandbox/sb1",
            "--timeout=10s",
        ],
    )
    .await;
    assert!(o.contains("condition met"), "{o}");
    // scale through the scale subresource; spec changes bump generation.
    let o = ok(&kc, &["scale", "swp/pool", "--replicas", "3"]).await;
    assert!(o.contains("scaled"), "{o}");
    let r = ok(
        &kc,
        &[
            "get",
            "swp",
            "pool",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}",
        ],
    )
    .await;
    assert_eq!(r, "3 2");
    // v1alpha1 reads are converted on the fly (with the deprecation warning).
    let o = kubectl(
        &kc,
        &[
            "get",
            "sandboxes.v1alpha1.agents.x-k8s.io",
            "sb1",
            "-o",
            "json",
        ],
        None,
    )
    .await;
    assert!(o.ok, "{}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["apiVersion"], "agents.x-k8s.io/v1alpha1");
    assert_eq!(v["spec"]["replicas"], json!(1));
    assert!(o.stderr.contains("deprecated"), "{}", o.stderr);
    // Schema validation: 422 with kube-apiserver's message format.
    let o = kubectl(
        &kc,
        &[
            "patch",
            "sandbox",
            "sb1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"operatingMode":"Weird"}}"#,
        ],
        None,
    )
    .await;
    assert!(!o.ok);
    // The value is refused, and (the Sandbox having CEL rules) kube-apiserver says they were
    // not run; kubectl lists the two causes.
    assert!(
        o.stderr.contains(r#"The Sandbox "sb1" is invalid: "#)
            && o.stderr.contains(r#"* spec.operatingMode: Unsupported value: "Weird": supported values: "Running", "Suspended""#)
            && o.stderr.contains("* <nil>: Invalid value: null: some validation rules were not checked"),
        "{}",
        o.stderr
    );
    // Unknown fields with kubectl's strict validation are rejected on create.
    let bad = SANDBOXES.replace("name: sb1\nspec:\n", "name: sb2\nspec:\n  bogus: 1\n");
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(&bad)).await;
    assert!(
        !o.ok && o.stderr.contains("unknown field \"spec.bogus\""),
        "{}{}",
        o.stdout,
        o.stderr
    );
    // Writing the CRD manifests is accepted (metadata only; `kubectl replace`). A client-side
    // `kubectl apply` of this CRD stores the whole manifest in an annotation, over
    // kube-apiserver's 256 KiB limit, and is refused as on a cluster (where `apply
    // --server-side` is the way). Deleting them is refused.
    let crd = serde_json::to_string(&agent_sandbox_api::crd::all()[0]).unwrap();
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(&crd)).await;
    assert!(
        !o.ok
            && o.stderr
                .contains("metadata.annotations: Too long: must have at most 262144 bytes"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    let o = kubectl(&kc, &["replace", "-f", "-"], Some(&crd)).await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("sandboxes.agents.x-k8s.io"),
        "{}",
        o.stdout
    );
    // Deleting the CRD view is refused.
    let o = kubectl(&kc, &["delete", "crd", "sandboxes.agents.x-k8s.io"], None).await;
    assert!(!o.ok, "{}", o.stdout);
}

struct FakeLogs;

impl agent_sandbox_apiserver::PodLogs for FakeLogs {
    fn logs(
        &self,
        pod: &Value,
        container: &str,
        query: &std::collections::HashMap<String, String>,
    ) -> futures::future::BoxFuture<'static, Result<axum::body::Body, String>> {
        let line = format!(
            "{} {} tail={}\n",
            pod["metadata"]["name"].as_str().unwrap_or(""),
            container,
            query.get("tailLines").cloned().unwrap_or_default()
        );
        Box::pin(async move { Ok(axum::body::Body::from(line)) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_come_from_the_registered_provider() {
    let ts = common::start().await;
    let kc = ts.server.kubeconfig_path().to_path_buf();
    let o = kubectl(&kc, &["apply", "-f", "-"], Some(MANIFEST)).await;
    assert!(o.ok, "{}", o.stderr);
    let o = kubectl(&kc, &["-n", "demo", "logs", "web-0"], None).await;
    assert!(!o.ok, "logs without a node agent must fail: {}", o.stdout);
    ts.server.set_pod_logs(std::sync::Arc::new(FakeLogs));
    let out = ok(&kc, &["-n", "demo", "logs", "web-0", "--tail", "5"]).await;
    assert_eq!(out, "web-0 c tail=5\n");
}
