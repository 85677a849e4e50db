//! `deploy/`: `kubectl kustomize deploy/` renders the complete install (CRDs, namespace, RBAC as
//! upstream grants it, controller and router with their Services), the pieces refer to each
//! other consistently, the binaries accept the Deployments' arguments, and the embedded API server
//! accepts the rendered objects it serves through `kubectl apply`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agent_sandbox_apiserver::{ApiServer, Config as ServerConfig};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_agent-sandbox");
const NS: &str = "agent-sandbox-system";

/// Kinds the embedded API server does not serve (it is not a general-purpose cluster). When it
/// starts serving one, this test fails until the kind is removed here, so that it is applied.
const NOT_SERVED_BY_EMBEDDED: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Deployment",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

fn parse_docs(yaml: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .map(|d| serde_yaml_ng::from_str::<Value>(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn render() -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .expect("kubectl must be installed (set KUBECTL to its path)");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(&String::from_utf8(out.stdout).unwrap())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the install has no {kind} {name}"))
}

/// Where two documents differ (numbers compared by value: `0.0` and `0` are the same).
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x.as_f64() != y.as_f64()).then_some(at),
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return Some(format!("{at} (keys {:?} vs {:?})", x.keys(), y.keys()));
            }
            x.iter().find_map(|(k, v)| match y.get(k) {
                Some(w) => first_difference(v, w, format!("{at}/{k}")),
                None => Some(format!("{at}/{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{at} (lengths {} vs {})", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}/{i}")))
        }
        _ => (a != b).then_some(at),
    }
}

fn rules(v: &Value) -> Value {
    v["rules"].clone()
}

#[test]
fn kustomize_renders_the_complete_install() {
    let docs = render();
    let kinds: BTreeSet<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("CustomResourceDefinition", "sandboxes.agents.x-k8s.io"),
        (
            "CustomResourceDefinition",
            "sandboxclaims.extensions.agents.x-k8s.io",
        ),
        (
            "CustomResourceDefinition",
            "sandboxtemplates.extensions.agents.x-k8s.io",
        ),
        (
            "CustomResourceDefinition",
            "sandboxwarmpools.extensions.agents.x-k8s.io",
        ),
        ("Namespace", NS),
        ("ServiceAccount", "agent-sandbox-controller"),
        ("ClusterRole", "agent-sandbox-controller"),
        ("ClusterRole", "agent-sandbox-controller-extensions"),
        ("ClusterRoleBinding", "agent-sandbox-controller"),
        ("ClusterRoleBinding", "agent-sandbox-controller-extensions"),
        ("Role", "agent-sandbox-controller"),
        ("RoleBinding", "agent-sandbox-controller"),
        ("Deployment", "agent-sandbox-controller"),
        ("Service", "agent-sandbox-controller"),
        ("Service", "agent-sandbox-webhook-service"),
        ("ServiceAccount", "sandbox-router"),
        ("ClusterRole", "sandbox-router"),
        ("ClusterRoleBinding", "sandbox-router"),
        ("Deployment", "sandbox-router"),
        ("Service", "sandbox-router-svc"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n.to_owned()))
    .collect();
    assert_eq!(kinds, expected);

    // Namespaced objects live in agent-sandbox-system.
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        let cluster_scoped = matches!(
            kind,
            "CustomResourceDefinition" | "Namespace" | "ClusterRole" | "ClusterRoleBinding"
        );
        assert_eq!(
            d["metadata"]["namespace"].as_str(),
            (!cluster_scoped).then_some(NS),
            "{kind} {}",
            d["metadata"]["name"]
        );
    }

    // The CRDs are the generated files, and they call the webhook Service.
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let name = d["metadata"]["name"].as_str().unwrap();
        let (_, group) = name.split_once('.').unwrap();
        let file = deploy_dir()
            .join("crds")
            .join(format!("{group}_{}.yaml", name.split('.').next().unwrap()));
        let on_disk = parse_docs(&fs_err::read_to_string(&file).unwrap());
        if let Some(at) = first_difference(&on_disk[0], d, String::new()) {
            panic!("{} differs from the render at {at}", file.display());
        }
        assert_eq!(
            d["spec"]["conversion"]["webhook"]["clientConfig"]["service"],
            json!({"name": "agent-sandbox-webhook-service", "namespace": NS, "path": "/convert"})
        );
    }

    // RBAC, verbatim upstream.
    let core = find(&docs, "ClusterRole", "agent-sandbox-controller");
    assert_eq!(
        rules(core),
        json!([
            {"apiGroups": [""], "resources": ["pods", "services", "persistentvolumeclaims"], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["agents.x-k8s.io"], "resources": ["sandboxes"], "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
            {"apiGroups": ["agents.x-k8s.io"], "resources": ["sandboxes/status", "sandboxes/finalizers"], "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "resourceNames": [
                "sandboxes.agents.x-k8s.io", "sandboxclaims.extensions.agents.x-k8s.io",
                "sandboxtemplates.extensions.agents.x-k8s.io", "sandboxwarmpools.extensions.agents.x-k8s.io"
            ], "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "get", "list", "patch", "update", "watch"]}
        ])
    );
    let crud = json!([
        "create", "delete", "get", "list", "patch", "update", "watch"
    ]);
    assert_eq!(
        rules(find(
            &docs,
            "ClusterRole",
            "agent-sandbox-controller-extensions"
        )),
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "patch", "update", "watch"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            {"apiGroups": ["agents.x-k8s.io"], "resources": ["sandboxes"], "verbs": crud},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": crud},
            {"apiGroups": ["extensions.agents.x-k8s.io"], "resources": ["sandboxclaims", "sandboxtemplates", "sandboxwarmpools"], "verbs": crud},
            {"apiGroups": ["extensions.agents.x-k8s.io"], "resources": [
                "sandboxclaims/status", "sandboxclaims/finalizers", "sandboxtemplates/finalizers",
                "sandboxwarmpools/status", "sandboxwarmpools/finalizers"
            ], "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": crud}
        ])
    );
    assert_eq!(
        rules(find(&docs, "Role", "agent-sandbox-controller")),
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["agent-sandbox-webhook-certs"], "verbs": ["get", "patch", "update"]}
        ])
    );
    assert_eq!(
        rules(find(&docs, "ClusterRole", "sandbox-router")),
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["agents.x-k8s.io"], "resources": ["sandboxes"], "verbs": ["get", "patch"]}
        ])
    );
    // Every binding names an existing role and service account.
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let role_kind = d["roleRef"]["kind"].as_str().unwrap();
        find(&docs, role_kind, d["roleRef"]["name"].as_str().unwrap());
        for s in d["subjects"].as_array().unwrap() {
            assert_eq!(s["kind"], "ServiceAccount");
            assert_eq!(s["namespace"], NS);
            find(&docs, "ServiceAccount", s["name"].as_str().unwrap());
        }
    }

    // The controller Deployment, as upstream names and exposes it.
    let ctl = find(&docs, "Deployment", "agent-sandbox-controller");
    assert_eq!(ctl["metadata"]["labels"]["app"], "agent-sandbox-controller");
    assert_eq!(ctl["spec"]["replicas"], 1);
    let pod = &ctl["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app"], "agent-sandbox-controller");
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        "agent-sandbox-controller"
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        json!(["controller", "--leader-elect=true", "--extensions"])
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
            {"name": "healthz", "containerPort": 8081, "protocol": "TCP"},
            {"name": "webhook", "containerPort": 9443, "protocol": "TCP"}
        ])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounts,
        [
            "/tmp/k8s-webhook-server/serving-certs",
            "/etc/sandbox-config"
        ]
    );

    // Services select the pods and name ports the containers have.
    let svc_port = |name: &str| {
        let s = find(&docs, "Service", name);
        (s["spec"]["selector"].clone(), s["spec"]["ports"][0].clone())
    };
    let (sel, port) = svc_port("agent-sandbox-controller");
    assert_eq!(sel, json!({"app": "agent-sandbox-controller"}));
    assert_eq!(
        (port["port"].clone(), port["targetPort"].clone()),
        (json!(8080), json!("metrics"))
    );
    let (sel, port) = svc_port("agent-sandbox-webhook-service");
    assert_eq!(sel, json!({"app": "agent-sandbox-controller"}));
    assert_eq!(
        (port["port"].clone(), port["targetPort"].clone()),
        (json!(443), json!("webhook"))
    );

    // The router, as the SDKs and the default NetworkPolicy expect it.
    let router = find(&docs, "Deployment", "sandbox-router");
    assert_eq!(router["metadata"]["labels"]["app"], "sandbox-router");
    let rpod = &router["spec"]["template"];
    assert_eq!(rpod["metadata"]["labels"]["app"], "sandbox-router");
    assert_eq!(rpod["spec"]["serviceAccountName"], "sandbox-router");
    let rc = &rpod["spec"]["containers"][0];
    assert_eq!(rc["args"][0], "router");
    assert_eq!(rc["ports"][0]["containerPort"], 8080);
    let (sel, port) = svc_port("sandbox-router-svc");
    assert_eq!(sel, json!({"app": "sandbox-router"}));
    assert_eq!(
        (port["port"].clone(), port["targetPort"].clone()),
        (json!(8080), json!("http"))
    );

    // The binary accepts the Deployments' arguments: it gets as far as looking for credentials
    // (exit 1) instead of rejecting a flag (exit 2).
    for args in [&c["args"], &rc["args"]] {
        let args: Vec<&str> = args
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let out = Command::new(BIN)
            .args(&args)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("HOME", "/nonexistent")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("KUBECONFIG") || err.contains("kubeconfig"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_api_server_accepts_the_install_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path());
    cfg.tcp_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.socket_path = None;
    let server = ApiServer::start(cfg).await.unwrap();
    let kc = server.kubeconfig_path().to_path_buf();
    let docs = render();

    let kc2 = kc.clone();
    let served: BTreeSet<String> = tokio::task::spawn_blocking(move || {
        let out = Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&kc2)
            .args(["api-resources", "--no-headers", "-o", "wide"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                // NAME [SHORTNAMES] APIVERSION NAMESPACED KIND VERBS...: KIND follows true/false.
                let cols: Vec<&str> = l.split_whitespace().collect();
                let i = cols.iter().position(|c| *c == "true" || *c == "false")?;
                cols.get(i + 1).map(|k| k.to_string())
            })
            .collect()
    })
    .await
    .unwrap();
    for kind in NOT_SERVED_BY_EMBEDDED {
        assert!(
            !served.contains(*kind),
            "the embedded API server now serves {kind}: remove it from NOT_SERVED_BY_EMBEDDED so that it is applied"
        );
    }

    // Everything it serves except the CRDs (built into it) goes through client-side apply.
    let to_apply: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            let k = d["kind"].as_str().unwrap();
            k != "CustomResourceDefinition" && !NOT_SERVED_BY_EMBEDDED.contains(&k)
        })
        .collect();
    let kinds: BTreeSet<&str> = to_apply
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["Namespace", "Service"]));
    let yaml: String = to_apply
        .iter()
        .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
        .collect();
    let kc2 = kc.clone();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&kc2)
            .args(["apply", "--server-side=false", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "namespace/agent-sandbox-system created",
        "service/agent-sandbox-controller created",
        "service/agent-sandbox-webhook-service created",
        "service/sandbox-router-svc created",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    // The CRDs the install ships are the ones the server serves.
    let client = server.client();
    let api: kube::Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = kube::Api::all(client);
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let name = d["metadata"]["name"].as_str().unwrap();
        let served = api.get(name).await.unwrap();
        let served = serde_json::to_value(&served.spec).unwrap();
        if let Some(at) =
            first_difference(&served["versions"], &d["spec"]["versions"], String::new())
        {
            panic!("the served CRD {name} differs from the install's at spec.versions{at}");
        }
    }
    server.shutdown().await;
}
