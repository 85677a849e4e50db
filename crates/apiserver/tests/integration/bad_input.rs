//! Bad input over the unix socket (raw HTTP/1.1): each answer carries the status code and
//! `Status` body kube-apiserver gives, and the store is left unchanged.

use crate::common;

use serde_json::{Value, json};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Resp {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn http(
    sock: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    ct: &str,
    body: &[u8],
) -> Resp {
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let (mut r, mut w) = s.split();
    let write = async {
        let _ = w.write_all(head.as_bytes()).await;
        let _ = w.write_all(body).await;
    };
    let mut buf = vec![];
    let read = r.read_to_end(&mut buf);
    let (_, res) = tokio::join!(write, read);
    let _ = res;
    let text_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&buf[..text_end]).into_owned();
    let mut lines = head.lines();
    let code: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = buf[text_end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        let mut out = vec![];
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    Resp {
        code,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_kubernetes_status_and_leaves_store_unchanged() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let t = Some(tok.as_str());
    let j = "application/json";
    let pods = "/api/v1/namespaces/default/pods";
    let good = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ok"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
    let r = http(&sock, "POST", pods, t, j, good.to_string().as_bytes()).await;
    assert_eq!(r.code, 201);
    let rv_before = ts.server.store().current_rv();

    // No token, wrong token: 401 Unauthorized Status.
    for token in [None, Some("wrong")] {
        let r = http(&sock, "GET", pods, token, j, b"").await;
        assert_eq!(r.code, 401);
        assert_eq!(
            r.json(),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
        );
    }
    let r = http(&sock, "POST", pods, None, j, good.to_string().as_bytes()).await;
    assert_eq!(r.code, 401);
    // A body in an encoding the server does not speak (kubectl sends protobuf for built-ins):
    // 415 naming what is accepted, not a JSON parse error.
    let pb = "application/vnd.kubernetes.protobuf";
    let r = http(&sock, "POST", pods, t, pb, b"k8s\x00\x0a\x09").await;
    assert_eq!(r.code, 415);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("accepted media types include: application/json"),
        "{:?}",
        r.json()
    );
    assert_eq!(http(&sock, "GET", "/healthz", None, j, b"").await.code, 200);
    // The token and the kubeconfig holding it are private to the user.
    use std::os::unix::fs::PermissionsExt;
    for f in [
        ts.dir.path().join("pki/token"),
        ts.server.kubeconfig_path().to_path_buf(),
        ts.dir.path().join("pki/apiserver.key"),
    ] {
        let mode = fs_err::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    // Invalid names.
    let mut bad = good.clone();
    bad["metadata"]["name"] = json!("Bad_Name");
    let r = http(&sock, "POST", pods, t, j, bad.to_string().as_bytes()).await;
    assert_eq!(r.code, 422);
    let s = r.json();
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["kind"], "Pod");
    assert_eq!(s["details"]["name"], "Bad_Name");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueInvalid");
    assert_eq!(
        s["message"],
        "Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}});
    let r = http(
        &sock,
        "POST",
        "/api/v1/namespaces",
        t,
        j,
        ns.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 422);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("RFC 1123 label")
    );
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}});
    let r = http(
        &sock,
        "POST",
        "/api/v1/namespaces/default/services",
        t,
        j,
        svc.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 422);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("DNS-1035 label")
    );
    let noname =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": []}});
    let r = http(&sock, "POST", pods, t, j, noname.to_string().as_bytes()).await;
    assert_eq!(r.code, 422);
    assert_eq!(
        r.json()["details"]["causes"][0]["reason"],
        "FieldValueRequired"
    );

    // Unknown fields: Strict → 400, default (Warn) → warning header and the field dropped.
    let mut unk = good.clone();
    unk["metadata"]["name"] = json!("unk");
    unk["spec"]["foo"] = json!(1);
    let r = http(
        &sock,
        "POST",
        &format!("{pods}?fieldValidation=Strict"),
        t,
        j,
        unk.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 400);
    assert_eq!(r.json()["reason"], "BadRequest");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("strict decoding error: unknown field \"spec.foo\""),
        "{}",
        r.json()
    );
    assert_eq!(ts.server.store().current_rv(), rv_before);
    let r = http(
        &sock,
        "POST",
        &format!("{pods}?dryRun=All"),
        t,
        j,
        unk.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 201);
    assert_eq!(
        r.header("warning"),
        Some("299 - \"unknown field \\\"spec.foo\\\"\"")
    );
    assert!(r.json()["spec"].get("foo").is_none());

    // A 20 MiB object: 413.
    let mut big = good.clone();
    big["metadata"]["name"] = json!("big");
    big["metadata"]["annotations"] = json!({"x": "a".repeat(20 * 1024 * 1024)});
    let r = http(&sock, "POST", pods, t, j, big.to_string().as_bytes()).await;
    assert_eq!(r.code, 413);
    assert_eq!(r.json()["reason"], "RequestEntityTooLarge");
    assert_eq!(
        r.json()["message"],
        "Request entity too large: limit is 3145728"
    );

    // Malformed JSON: 400.
    let r = http(&sock, "POST", pods, t, j, b"{\"apiVersion\": \"v1\", ").await;
    assert_eq!(r.code, 400);
    assert_eq!(r.json()["reason"], "BadRequest");
    assert_eq!(r.json()["kind"], "Status");

    // Patch on a missing object: 404 with details.
    let r = http(
        &sock,
        "PATCH",
        &format!("{pods}/missing"),
        t,
        "application/merge-patch+json",
        b"{}",
    )
    .await;
    assert_eq!(r.code, 404);
    let s = r.json();
    assert_eq!(s["reason"], "NotFound");
    assert_eq!(s["message"], "pods \"missing\" not found");
    assert_eq!(s["details"], json!({"name": "missing", "kind": "pods"}));
    let r = http(
        &sock,
        "PATCH",
        &format!("{pods}/ok"),
        t,
        "text/plain",
        b"{}",
    )
    .await;
    assert_eq!(r.code, 415);
    let r = http(
        &sock,
        "PATCH",
        &format!("{pods}/ok"),
        t,
        "application/apply-patch+yaml",
        b"{}",
    )
    .await;
    assert_eq!(r.code, 415);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");

    // Watch with a bogus resourceVersion: kube-apiserver answers 500 with this message.
    let r = http(
        &sock,
        "GET",
        &format!("{pods}?watch=1&resourceVersion=abc"),
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(r.code, 500);
    assert_eq!(
        r.json()["message"],
        "resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax"
    );
    // A list with a bogus resourceVersion: 400 with this message (kube-apiserver 1.36).
    let r = http(
        &sock,
        "GET",
        &format!("{pods}?resourceVersion=abc"),
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(r.code, 400);
    assert_eq!(r.json()["reason"], "BadRequest");
    assert_eq!(
        r.json()["message"],
        "invalid resource version: resourceVersion: Invalid value: \"abc\": strconv.ParseUint: parsing \"abc\": invalid syntax"
    );
    // Bad selectors: 400.
    let r = http(
        &sock,
        "GET",
        &format!("{pods}?labelSelector=a%20b%3Dc"),
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(r.code, 400);
    // Stale update: 409 Conflict.
    let mut stale = good.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let r = http(
        &sock,
        "PUT",
        &format!("{pods}/ok"),
        t,
        j,
        stale.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 409);
    assert_eq!(r.json()["details"], json!({"name": "ok", "kind": "pods"}));
    // Name mismatch: 400.
    let r = http(
        &sock,
        "PUT",
        &format!("{pods}/other"),
        t,
        j,
        good.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 400);
    // Unknown resource: 404.
    let r = http(&sock, "GET", "/api/v1/serviceaccounts", t, j, b"").await;
    assert_eq!(r.code, 404);
    // Delete of a missing object: 404.
    let r = http(&sock, "DELETE", &format!("{pods}/missing"), t, j, b"").await;
    assert_eq!(r.code, 404);

    assert_eq!(
        ts.server.store().current_rv(),
        rv_before,
        "bad input must not change the store"
    );
    let r = http(&sock, "GET", pods, t, j, b"").await;
    let list = r.json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_over_256_kib_are_refused_as_kube_apiserver_refuses_them() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let t = Some(tok.as_str());
    let j = "application/json";
    let path = "/apis/agents.x-k8s.io/v1beta1/namespaces/default/sandboxes";
    let sandbox = |bytes: usize| {
        json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "big", "annotations": {"example.com/blob": "x".repeat(bytes)}},
            "spec": {"podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}})
    };
    let rv_before = ts.server.store().current_rv();
    let r = http(
        &sock,
        "POST",
        path,
        t,
        j,
        sandbox(300 * 1024).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 422, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["reason"], "Invalid");
    assert_eq!(
        v["message"],
        "Sandbox.agents.x-k8s.io \"big\" is invalid: metadata.annotations: Too long: must have at most 262144 bytes"
    );
    assert_eq!(v["details"]["causes"][0]["reason"], "FieldValueTooLong");
    assert_eq!(
        ts.server.store().current_rv(),
        rv_before,
        "nothing was written"
    );
    // Just under the limit (the key counts too) is accepted.
    let r = http(
        &sock,
        "POST",
        path,
        t,
        j,
        sandbox(256 * 1024 - 100).to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// The schema rules of the embedded Kubernetes types apply as in kube-apiserver: a malformed
/// Quantity is refused with the pattern it fails, and defaults (a port's protocol) are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_are_checked_and_kubernetes_defaults_written() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let t = Some(tok.as_str());
    let j = "application/json";
    let path = "/apis/agents.x-k8s.io/v1beta1/namespaces/default/sandboxes";
    let sandbox = |name: &str, container: Value| {
        json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": name},
            "spec": {"podTemplate": {"spec": {"containers": [container]}}}})
    };
    let rv_before = ts.server.store().current_rv();
    let bad = sandbox(
        "lots",
        json!({"name": "c", "image": "busybox:1", "resources": {"limits": {"cpu": "lots"}}}),
    );
    let r = http(&sock, "POST", path, t, j, bad.to_string().as_bytes()).await;
    assert_eq!(r.code, 422, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let field = "spec.podTemplate.spec.containers[0].resources.limits.cpu";
    let pattern = agent_sandbox_api::crd::QUANTITY_PATTERN;
    assert_eq!(v["reason"], "Invalid");
    assert_eq!(
        v["message"],
        format!(
            "Sandbox.agents.x-k8s.io \"lots\" is invalid: {field}: Invalid value: \"lots\": {field} in body should match '{pattern}'"
        )
    );
    assert_eq!(v["details"]["causes"][0]["reason"], "FieldValueInvalid");
    assert_eq!(v["details"]["causes"][0]["field"], field);
    assert_eq!(
        ts.server.store().current_rv(),
        rv_before,
        "nothing was written"
    );

    let good = sandbox(
        "ported",
        json!({"name": "c", "image": "busybox:1", "ports": [{"containerPort": 8080}],
            "resources": {"limits": {"cpu": 2, "memory": "64Mi"}}}),
    );
    let r = http(&sock, "POST", path, t, j, good.to_string().as_bytes()).await;
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    let created = r.json();
    let container = &created["spec"]["podTemplate"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["protocol"], "TCP");
    assert_eq!(container["resources"]["limits"]["cpu"], 2);
    let r = http(&sock, "GET", &format!("{path}/ported"), t, j, b"").await;
    assert_eq!(r.code, 200);
    assert_eq!(
        r.json()["spec"]["podTemplate"]["spec"]["containers"][0]["ports"][0]["protocol"],
        "TCP",
        "the default is stored"
    );
}

/// Query parameters of list, watch, get, delete and patch, read as kube-apiserver reads them:
/// booleans true unless absent, `0` or `false` (any case); integers with Go's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_are_parsed_as_kube_apiserver_parses_them() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let t = Some(tok.as_str());
    let j = "application/json";
    let cms = "/api/v1/namespaces/default/configmaps";
    for name in ["a", "b", "c"] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
        let r = http(&sock, "POST", cms, t, j, cm.to_string().as_bytes()).await;
        assert_eq!(r.code, 201);
    }
    let is_watch = |r: &Resp| {
        let body = String::from_utf8_lossy(&r.body);
        r.code == 200
            && body
                .lines()
                .next()
                .is_some_and(|l| l.contains("\"type\":\"ADDED\""))
    };
    let is_list = |r: &Resp| r.code == 200 && r.json()["kind"] == "ConfigMapList";
    // (query, a watch?) for the collection; a watch ends after its timeoutSeconds.
    let table: &[(&str, bool)] = &[
        ("watch=true", true),
        ("watch=True", true),
        ("watch=TRUE", true),
        ("watch=1", true),
        ("watch=t", true),
        ("watch=yes", true),
        ("watch=", true),
        ("watch=false", false),
        ("watch=False", false),
        ("watch=0", false),
        ("watch=false&watch=true", false),
        ("", false),
    ];
    for (q, watch) in table {
        let path = format!("{cms}?{q}&timeoutSeconds=1");
        let r = http(&sock, "GET", &path, t, j, b"").await;
        if *watch {
            assert!(is_watch(&r), "{q}: {}", String::from_utf8_lossy(&r.body));
        } else {
            assert!(is_list(&r), "{q}: {}", String::from_utf8_lossy(&r.body));
        }
    }
    // The single-object form of watch (GET .../name?watch=...).
    let r = http(
        &sock,
        "GET",
        &format!("{cms}/a?watch=True&timeoutSeconds=1"),
        t,
        j,
        b"",
    )
    .await;
    assert!(is_watch(&r), "{}", String::from_utf8_lossy(&r.body));
    let r = http(&sock, "GET", &format!("{cms}/a?watch=0"), t, j, b"").await;
    assert_eq!(
        (r.code, r.json()["kind"].as_str()),
        (200, Some("ConfigMap"))
    );
    // Integers: Go's strconv messages, 400 BadRequest; the store is unchanged.
    let rv_before = ts.server.store().current_rv();
    for (method, path, message) in [
        (
            "GET",
            format!("{cms}?limit=abc"),
            r#"strconv.ParseInt: parsing "abc": invalid syntax"#,
        ),
        (
            "GET",
            format!("{cms}?limit=1.5"),
            r#"strconv.ParseInt: parsing "1.5": invalid syntax"#,
        ),
        (
            "GET",
            format!("{cms}?watch=1&timeoutSeconds=soon"),
            r#"strconv.ParseInt: parsing "soon": invalid syntax"#,
        ),
        (
            "DELETE",
            format!("{cms}/a?gracePeriodSeconds=x"),
            r#"strconv.ParseInt: parsing "x": invalid syntax"#,
        ),
        (
            "DELETE",
            format!("{cms}?gracePeriodSeconds=99999999999999999999"),
            r#"strconv.ParseInt: parsing "99999999999999999999": value out of range"#,
        ),
    ] {
        let r = http(&sock, method, &path, t, j, b"").await;
        assert_eq!(
            r.code,
            400,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(
            (v["reason"].as_str(), v["message"].as_str()),
            (Some("BadRequest"), Some(message))
        );
    }
    assert_eq!(
        ts.server.store().current_rv(),
        rv_before,
        "nothing was written"
    );
    // A good limit pages; a patch with dryRun and a delete with a good grace period work.
    let r = http(&sock, "GET", &format!("{cms}?limit=2"), t, j, b"").await;
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 2);
    assert!(r.json()["metadata"]["continue"].is_string());
    let r = http(
        &sock,
        "PATCH",
        &format!("{cms}/b?dryRun=All"),
        t,
        "application/merge-patch+json",
        br#"{"data":{"k":"v"}}"#,
    )
    .await;
    assert_eq!((r.code, r.json()["data"]["k"].as_str()), (200, Some("v")));
    assert_eq!(
        ts.server.store().current_rv(),
        rv_before,
        "a dry run writes nothing"
    );
    let r = http(
        &sock,
        "DELETE",
        &format!("{cms}/c?gracePeriodSeconds=0"),
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(r.code, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Paths are read decoded, as kube-apiserver reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_paths_name_the_decoded_objects() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let t = Some(tok.as_str());
    let j = "application/json";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "probe", "namespace": "default"}});
    let r = http(
        &sock,
        "POST",
        "/api/v1/namespaces/de%66ault/configmaps",
        t,
        j,
        cm.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = http(
        &sock,
        "GET",
        "/api/v1/namespaces/de%66ault/configmaps/pro%62e",
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(
        (r.code, r.json()["metadata"]["name"].as_str()),
        (200, Some("probe"))
    );
    let r = http(
        &sock,
        "GET",
        "/api/v1/namespaces/default/configmaps/pro%20be",
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(r.code, 404);
    assert_eq!(r.json()["message"], "configmaps \"pro be\" not found");
}

/// List and watch options as kube-apiserver validates them (`ValidateListOptions`, the
/// storage's continue-token and resourceVersion checks, `labels.Parse`, the field label
/// conversion), with its codes and messages; set-based selectors and paging work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_options_are_validated_as_kube_apiserver_validates_them() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let t = Some(tok.as_str());
    let j = "application/json";
    let cms = "/api/v1/namespaces/default/configmaps";
    for (name, env) in [("a", "dev"), ("b", "prod"), ("c", "test")] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"env": env}}});
        let r = http(&sock, "POST", cms, t, j, cm.to_string().as_bytes()).await;
        assert_eq!(r.code, 201);
    }
    let invalid = |m: &str| format!("ListOptions.meta.k8s.io \"\" is invalid: {m}");
    let cases: Vec<(&str, u16, String)> = vec![
        (
            "resourceVersionMatch=Exact",
            422,
            invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"),
        ),
        (
            "resourceVersion=0&resourceVersionMatch=Exact",
            422,
            invalid("resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""),
        ),
        (
            "resourceVersion=1&resourceVersionMatch=Foo",
            422,
            invalid("resourceVersionMatch: Unsupported value: \"Foo\": supported values: \"Exact\", \"NotOlderThan\", \"\""),
        ),
        (
            "resourceVersionMatch=Foo",
            422,
            invalid("[resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided, resourceVersionMatch: Unsupported value: \"Foo\": supported values: \"Exact\", \"NotOlderThan\", \"\"]"),
        ),
        (
            "sendInitialEvents=true",
            422,
            invalid("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"),
        ),
        (
            "watch=1&resourceVersionMatch=NotOlderThan",
            422,
            invalid("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"),
        ),
        (
            "watch=1&sendInitialEvents=true",
            422,
            invalid("resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"),
        ),
        (
            "continue=abc!",
            400,
            "invalid continue token: continue key is not valid: illegal base64 data at input byte 3".into(),
        ),
        (
            "continue=eHl6",
            400,
            "invalid continue token: continue key is not valid: invalid character 'x' looking for beginning of value".into(),
        ),
        (
            "labelSelector=a%20b%3Dc",
            400,
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt".into(),
        ),
        (
            "labelSelector=env%20in%20(a,b",
            400,
            "unable to parse requirement: found '', expected: ',' or ')'".into(),
        ),
        (
            "fieldSelector=spec.foo%3D1",
            400,
            "\"spec.foo\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"".into(),
        ),
        (
            "fieldSelector=metadata.name",
            400,
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'".into(),
        ),
    ];
    for (q, code, message) in &cases {
        let r = http(&sock, "GET", &format!("{cms}?{q}"), t, j, b"").await;
        let v = r.json();
        assert_eq!(
            (r.code, v["message"].as_str()),
            (*code, Some(message.as_str())),
            "{q}"
        );
    }
    // Set-based selectors select.
    let names = |r: &Resp| -> Vec<String> {
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = http(
        &sock,
        "GET",
        &format!("{cms}?labelSelector=env%20in%20(dev,test)"),
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(names(&r), ["a", "c"]);
    let r = http(
        &sock,
        "GET",
        &format!("{cms}?labelSelector=env%20notin%20(dev),env"),
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(names(&r), ["b", "c"]);
    let r = http(
        &sock,
        "GET",
        &format!("{cms}?labelSelector=!env"),
        t,
        j,
        b"",
    )
    .await;
    assert!(names(&r).is_empty());
    // Paging: every object once, then no token; a token with a resourceVersion is refused.
    let mut seen = vec![];
    let mut next = String::new();
    for _ in 0..5 {
        let r = http(
            &sock,
            "GET",
            &format!("{cms}?limit=1&continue={next}"),
            t,
            j,
            b"",
        )
        .await;
        assert_eq!(r.code, 200, "{}", String::from_utf8_lossy(&r.body));
        seen.extend(names(&r));
        match r.json()["metadata"]["continue"].as_str() {
            Some(c) => next = c.to_string(),
            None => break,
        }
        let again = http(
            &sock,
            "GET",
            &format!("{cms}?limit=1&continue={next}&resourceVersion=5"),
            t,
            j,
            b"",
        )
        .await;
        assert_eq!(
            (again.code, again.json()["message"].as_str()),
            (
                400,
                Some("specifying resource version is not allowed when using continue")
            )
        );
    }
    assert_eq!(seen, ["a", "b", "c"]);
}

/// Answers compared side by side with kube-apiserver 1.36 (see docs/cluster.md): deletes,
/// their preconditions and finalizers, `metadata.generation` per kind, Pod status IPs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_kube_apiserver_side_by_side() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let t = Some(tok.as_str());
    let j = "application/json";
    let merge = "application/merge-patch+json";
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = |name: &str| {
        json!({"metadata": {"name": name, "labels": {"tier": "x"}}, "data": {"k": "v"}}).to_string()
    };
    for name in ["a", "b", "c", "d"] {
        let r = http(&sock, "POST", cms, t, j, cm(name).as_bytes()).await;
        assert_eq!(r.code, 201);
        // ConfigMaps have no generation.
        assert_eq!(r.json()["metadata"].get("generation"), None, "{name}");
    }

    // A delete that removes the object at once answers a Status naming it.
    let r = http(&sock, "DELETE", &format!("{cms}/a"), t, j, b"").await;
    assert_eq!(r.code, 200);
    let uid = r.json()["details"]["uid"].clone();
    assert!(uid.is_string());
    assert_eq!(
        r.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": "a", "kind": "configmaps", "uid": uid}})
    );

    // Preconditions that do not hold: 409 with the kind in the message and the details.
    let wrong = json!({"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}});
    let r = http(
        &sock,
        "DELETE",
        &format!("{cms}/b"),
        t,
        j,
        wrong.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 409);
    let got = r.json();
    let msg = got["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Operation cannot be fulfilled on ConfigMap \"b\": the UID in the precondition (00000000-0000-0000-0000-000000000000) does not match the UID in record ("),
        "{msg}"
    );
    assert!(
        msg.ends_with("). The object might have been deleted and then recreated"),
        "{msg}"
    );
    assert_eq!(got["details"]["kind"], "ConfigMap");
    let wrong = json!({"preconditions": {"resourceVersion": "1"}});
    let r = http(
        &sock,
        "DELETE",
        &format!("{cms}/b"),
        t,
        j,
        wrong.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 409);
    let got = r.json();
    let msg = got["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Operation cannot be fulfilled on ConfigMap \"b\": the ResourceVersion in the precondition (1) does not match the ResourceVersion in record ("),
        "{msg}"
    );

    // A finalizer keeps the object (the answer is the object); none may be added meanwhile,
    // said with Go's %#v of the new ones.
    let hold = json!({"metadata": {"finalizers": ["example.com/hold"]}});
    let r = http(
        &sock,
        "PATCH",
        &format!("{cms}/b"),
        t,
        merge,
        hold.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 200);
    let r = http(&sock, "DELETE", &format!("{cms}/b"), t, j, b"").await;
    assert_eq!(r.code, 200);
    assert_eq!(r.json()["kind"], "ConfigMap");
    let more = json!({"metadata": {"finalizers": ["example.com/hold", "example.com/z", "example.com/more"]}});
    let r = http(
        &sock,
        "PATCH",
        &format!("{cms}/b"),
        t,
        merge,
        more.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 422);
    assert_eq!(
        r.json()["message"],
        "ConfigMap \"b\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"example.com/more\", \"example.com/z\"}"
    );
    let release = json!({"metadata": {"finalizers": null}});
    let r = http(
        &sock,
        "PATCH",
        &format!("{cms}/b"),
        t,
        merge,
        release.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 200);

    // deletecollection answers the objects as listed.
    let r = http(
        &sock,
        "DELETE",
        &format!("{cms}?labelSelector=tier"),
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(r.code, 200);
    let names: Vec<Value> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("c"), json!("d")]);

    // Pods keep a generation; a status with podIP gets podIPs as kube-apiserver converts it.
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
    let r = http(&sock, "POST", pods, t, j, pod.to_string().as_bytes()).await;
    assert_eq!(r.code, 201);
    assert_eq!(r.json()["metadata"]["generation"], 1);
    let st = json!({"status": {"podIP": "10.1.2.3"}});
    let r = http(
        &sock,
        "PATCH",
        &format!("{pods}/p/status"),
        t,
        merge,
        st.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.code, 200);
    assert_eq!(r.json()["status"]["podIPs"], json!([{"ip": "10.1.2.3"}]));
    assert_eq!(r.json()["metadata"]["generation"], 1);
    // An events.k8s.io Event read as a core Event: an empty source, as kube-apiserver serves it.
    let ev = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "R", "note": "n", "type": "Normal", "action": "A", "reportingController": "x/y",
        "reportingInstance": "i", "eventTime": "2026-01-01T00:00:00.000000Z"});
    let evs = "/apis/events.k8s.io/v1/namespaces/default/events";
    let r = http(&sock, "POST", evs, t, j, ev.to_string().as_bytes()).await;
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = http(
        &sock,
        "GET",
        "/api/v1/namespaces/default/events/e",
        t,
        j,
        b"",
    )
    .await;
    assert_eq!(r.json()["source"], json!({}));
    assert_eq!(r.json()["reportingComponent"], "x/y");
    // A custom resource of the wrong kind: 422 with the kind as the invalid field.
    let sbs = "/apis/agents.x-k8s.io/v1beta1/namespaces/default/sandboxes";
    let other = json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Other", "metadata": {"name": "x"}});
    let r = http(&sock, "POST", sbs, t, j, other.to_string().as_bytes()).await;
    assert_eq!(r.code, 422);
    assert_eq!(
        r.json()["message"],
        "Other.agents.x-k8s.io \"x\" is invalid: kind: Invalid value: \"Other\": must be Sandbox"
    );
    assert_eq!(r.json()["details"]["causes"][0]["field"], "kind");
    // A graceful delete raises the generation once.
    for _ in 0..2 {
        let r = http(&sock, "DELETE", &format!("{pods}/p"), t, j, b"").await;
        assert_eq!(r.code, 200);
        assert_eq!(r.json()["metadata"]["generation"], 2);
    }
}

/// A core/v1 Event about an object of another namespace is refused as kube-apiserver 1.36
/// refuses it (checked against it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_about_another_namespace_is_refused() {
    let ts = common::start().await;
    let sock = ts.server.socket_path().unwrap().to_path_buf();
    let tok = ts.server.token().to_string();
    let event = |ns: &str| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": format!("ev-{ns}")},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": ns},
            "reason": "R", "message": "m", "type": "Normal"})
        .to_string()
    };
    let path = "/api/v1/namespaces/default/events";
    let r = http(
        &sock,
        "POST",
        path,
        Some(&tok),
        "application/json",
        event("other").as_bytes(),
    )
    .await;
    assert_eq!(
        (r.code, r.json()["message"].as_str()),
        (
            422,
            Some(
                "Event \"ev-other\" is invalid: involvedObject.namespace: Invalid value: \"other\": does not match event.namespace"
            )
        )
    );
    let r = http(
        &sock,
        "POST",
        path,
        Some(&tok),
        "application/json",
        event("default").as_bytes(),
    )
    .await;
    assert_eq!(r.code, 201, "{}", String::from_utf8_lossy(&r.body));
}
