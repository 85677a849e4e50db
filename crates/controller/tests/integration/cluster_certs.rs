//! The webhook certificate bootstrap's Secret protocol (upstream-core §12.5) against a small fake
//! of the Secrets and CRD endpoints (the embedded API server does not take writes of CRD specs,
//! which the bootstrap patches): create when absent, reuse when present, take the winner's pair after losing the
//! creation race, refuse a broken Secret, and patch only the CRDs that exist and use webhook
//! conversion.

use std::collections::BTreeMap;
use std::sync::Arc;

use agent_sandbox_controller::certs::{self, CertOptions, SECRET_NAME, WebhookCerts};
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};

const NS: &str = "agent-sandbox-system";

/// In-memory Secrets and CRDs; `race` makes the next Secret create fail with AlreadyExists
/// after storing `race`'s Secret (another replica won).
#[derive(Clone, Default)]
struct Fake {
    secrets: Arc<Mutex<BTreeMap<String, Value>>>,
    crds: Arc<Mutex<BTreeMap<String, Value>>>,
    race: Arc<Mutex<Option<Value>>>,
    patches: Arc<Mutex<Vec<(String, Value)>>>,
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}),
    )
}

impl Fake {
    async fn handle(self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = body.collect_bytes().await.unwrap();
        let path = parts.uri.path().to_owned();
        let secrets = format!("/api/v1/namespaces/{NS}/secrets");
        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/";
        if let Some(name) = path.strip_prefix(&format!("{secrets}/")) {
            return match self.secrets.lock().get(name) {
                Some(s) if parts.method == Method::GET => json_response(StatusCode::OK, s),
                _ => status(404, "NotFound", &format!("secrets {name:?} not found")),
            };
        }
        if path == secrets && parts.method == Method::POST {
            let obj: Value = serde_json::from_slice(&body).unwrap();
            let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
            if let Some(winner) = self.race.lock().take() {
                self.secrets.lock().insert(name.clone(), winner);
                return status(
                    409,
                    "AlreadyExists",
                    &format!("secrets {name:?} already exists"),
                );
            }
            self.secrets.lock().insert(name, obj.clone());
            return json_response(StatusCode::CREATED, &obj);
        }
        if let Some(name) = path.strip_prefix(crds) {
            let mut crds = self.crds.lock();
            let Some(crd) = crds.get_mut(name) else {
                return status(
                    404,
                    "NotFound",
                    &format!("customresourcedefinitions {name:?} not found"),
                );
            };
            if parts.method == Method::PATCH {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                self.patches.lock().push((name.to_owned(), patch.clone()));
                merge(crd, &patch);
            }
            return json_response(StatusCode::OK, crd);
        }
        status(
            404,
            "NotFound",
            &format!("{} {path} is not served by this fake", parts.method),
        )
    }
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl tower::Service<Request<Body>> for Fake {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { Ok(me.handle(req).await) })
    }
}

fn opts(dir: &std::path::Path) -> CertOptions {
    CertOptions {
        service_name: "agent-sandbox-webhook-service".into(),
        namespace: NS.into(),
        cluster_domain: "cluster.local".into(),
        cert_dir: dir.to_path_buf(),
    }
}

fn client(fake: &Fake) -> kube::Client {
    kube::Client::new(fake.clone(), "default")
}

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn the_first_replica_creates_the_secret_and_the_next_reuses_it() {
    install_provider();
    let fake = Fake::default();
    let dir = tempfile::tempdir().unwrap();
    let (first, files) = certs::bootstrap(client(&fake), &opts(dir.path()))
        .await
        .unwrap();
    let stored: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(fake.secrets.lock()[SECRET_NAME].clone()).unwrap();
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    assert_eq!(WebhookCerts::from_secret(&stored).unwrap(), first);
    assert_eq!(fs_err::read_to_string(&files.cert).unwrap(), first.cert_pem);
    assert_eq!(fs_err::read_to_string(&files.key).unwrap(), first.key_pem);

    // A second replica (or a restart) loads the same pair instead of generating one.
    let dir2 = tempfile::tempdir().unwrap();
    let (second, _) = certs::bootstrap(client(&fake), &opts(dir2.path()))
        .await
        .unwrap();
    assert_eq!(second, first);
}

#[tokio::test]
async fn the_loser_of_the_creation_race_uses_the_winners_pair() {
    install_provider();
    let fake = Fake::default();
    let winner = certs::generate("agent-sandbox-webhook-service", NS, "cluster.local").unwrap();
    *fake.race.lock() = Some(serde_json::to_value(winner.to_secret(SECRET_NAME, NS)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (got, files) = certs::bootstrap(client(&fake), &opts(dir.path()))
        .await
        .unwrap();
    assert_eq!(got, winner);
    assert_eq!(
        fs_err::read_to_string(&files.cert).unwrap(),
        winner.cert_pem
    );
}

#[tokio::test]
async fn a_broken_secret_is_refused_with_what_to_do() {
    install_provider();
    let fake = Fake::default();
    let mut broken = certs::generate("agent-sandbox-webhook-service", NS, "cluster.local")
        .unwrap()
        .to_secret(SECRET_NAME, NS);
    broken.data.as_mut().unwrap().insert(
        "tls.key".into(),
        k8s_openapi::ByteString(b"garbage".to_vec()),
    );
    fake.secrets
        .lock()
        .insert(SECRET_NAME.into(), serde_json::to_value(broken).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let err = certs::bootstrap(client(&fake), &opts(dir.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("agent-sandbox-system/agent-sandbox-webhook-certs")
            && err.contains("tls.key")
            && err.contains("delete it"),
        "{err}"
    );
}

#[tokio::test]
async fn only_installed_crds_with_webhook_conversion_are_patched() {
    install_provider();
    let fake = Fake::default();
    {
        let mut crds = fake.crds.lock();
        let sandbox = serde_json::to_value(agent_sandbox_api::crd::sandbox()).unwrap();
        crds.insert("sandboxes.agents.x-k8s.io".into(), sandbox);
        let mut claim = serde_json::to_value(agent_sandbox_api::crd::sandbox_claim()).unwrap();
        claim["spec"]["conversion"] = json!({"strategy": "None"});
        crds.insert("sandboxclaims.extensions.agents.x-k8s.io".into(), claim);
        // An unrelated CRD is never touched (it is not even read).
        crds.insert(
            "widgets.example.com".into(),
            json!({"spec": {"conversion": {"strategy": "Webhook"}}}),
        );
    }
    let ca = certs::generate("svc", NS, "cluster.local").unwrap().ca_pem;
    let patched = certs::patch_crds(client(&fake), "agent-sandbox-webhook-service", NS, &ca)
        .await
        .unwrap();
    assert_eq!(patched, ["sandboxes.agents.x-k8s.io"]);
    let patches = fake.patches.lock().clone();
    assert_eq!(patches.len(), 1);
    let crd = fake.crds.lock()["sandboxes.agents.x-k8s.io"].clone();
    let cc = &crd["spec"]["conversion"]["webhook"]["clientConfig"];
    assert_eq!(
        cc["service"],
        json!({"name": "agent-sandbox-webhook-service", "namespace": NS, "path": "/convert"})
    );
    let bundle: k8s_openapi::ByteString = serde_json::from_value(cc["caBundle"].clone()).unwrap();
    assert_eq!(String::from_utf8(bundle.0).unwrap(), ca);
    assert_eq!(
        crd["spec"]["conversion"]["webhook"]["conversionReviewVersions"],
        json!(["v1", "v1beta1"])
    );
}
