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
