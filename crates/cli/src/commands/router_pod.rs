//! The embedded router as upstream deploys it: Service `sandbox-router-svc` (port 8080,
//! selector `app: sandbox-router`) and a mirror Pod of the router that this process runs (a
//! static Pod in kubelet's terms), so `kubectl port-forward svc/sandbox-router-svc` —
//! upstream SDKs' default connection — reaches it. Upstream's Python SDK looks for them in
//! namespace `agent-sandbox-system`, its Go client (through the Service's EndpointSlices) in
//! the sandbox's own namespace, so both are published in `agent-sandbox-system` and in
//! `default`, the quick start's namespace. Also the node's port-forward provider, which serves
//! the mirror Pods' port in process.
//!
//! A connection that arrives through the API server's port-forward was authenticated and
//! authorized by the API server, so it enters the router without the router's bearer token;
//! the router's own listener still requires the token.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use agent_sandbox_apiserver::{PodPortForward, Tunnel};
use agent_sandbox_node::SandboxEngine;
use agent_sandbox_node::agent::MIRROR_ANNOTATION;
use agent_sandbox_router::server::{self as router_server, Router};
use anyhow::Context;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The namespace upstream deploys the router into.
pub(crate) const NAMESPACE: &str = "agent-sandbox-system";
/// The namespaces the router is published in: upstream's, and the quick start's (where
/// upstream's Go client looks for it, beside the sandboxes).
pub(crate) const NAMESPACES: [&str; 2] = [NAMESPACE, "default"];
/// The router's Service, as upstream's SDKs name it.
pub(crate) const SERVICE: &str = "sandbox-router-svc";
/// The router's port in its Pod and Service.
pub(crate) const PORT: u16 = 8080;
/// The label that selects the router's Pods.
const APP: (&str, &str) = ("app", "sandbox-router");

/// The mirror Pod's name: a static Pod's name followed by its node's, as kubelet names them.
pub(crate) fn pod_name(node: &str) -> String {
    format!("sandbox-router-{node}")
}

/// Creates (or brings up to date), in each of [`NAMESPACES`], the namespace, the Service and
/// the router's mirror Pod with a Running, Ready status.
pub(crate) async fn publish(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    for namespace in NAMESPACES {
        publish_in(client, node, namespace).await?;
    }
    Ok(())
}

async fn publish_in(client: &kube::Client, node: &str, namespace: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    ensure(
        &namespaces,
        namespace,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
    )
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    ensure(
        &services,
        SERVICE,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": namespace, "labels": {APP.0: APP.1}},
            "spec": {
                "selector": {APP.0: APP.1},
                "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}],
            },
        }),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = pod_name(node);
    ensure(
        &pods,
        &name,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": namespace, "labels": {APP.0: APP.1},
                "annotations": {
                    MIRROR_ANNOTATION: "agent-sandbox-up",
                    "kubernetes.io/config.source": "file",
                },
            },
            "spec": {
                "nodeName": node,
                "hostNetwork": true,
                "containers": [{
                    "name": "router",
                    "image": "agent-sandbox (embedded)",
                    "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
                }],
            },
        }),
    )
    .await?;
    let now = agent_sandbox_apiserver::api::now();
    let host_ip = agent_sandbox_node::refs::HOST_IP;
    let conditions: Vec<Value> = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .iter()
    .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
    .collect();
    let status = json!({"status": {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": host_ip, "podIPs": [{"ip": host_ip}],
        "startTime": now,
        "containerStatuses": [{
            "name": "router", "ready": true, "started": true, "restartCount": 0,
            "image": "agent-sandbox (embedded)", "imageID": "",
            "state": {"running": {"startedAt": now}},
        }],
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("setting the status of Pod {namespace}/{name}"))?;
    Ok(())
}

/// Creates `object`, or merges it into the existing one.
async fn ensure<K>(api: &Api<K>, name: &str, object: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let typed: K = serde_json::from_value(object.clone())?;
    match api.create(&PostParams::default(), &typed).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&object))
                .await
                .with_context(|| format!("updating {kind} {name}"))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating {kind} {name}")),
    }
}

/// `pods/portforward` on this node: the router's mirror Pod is served in process, every other
/// Pod by the sandbox engine (when this process runs a node).
pub(crate) struct NodePortForward {
    pub(crate) engine: Option<Arc<SandboxEngine>>,
    pub(crate) router: Arc<Router>,
}

fn is_router(pod: &Value) -> bool {
    NAMESPACES
        .iter()
        .any(|ns| pod["metadata"]["namespace"] == *ns)
        && pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_string()
        && pod["metadata"]["labels"][APP.0] == APP.1
}

impl PodPortForward for NodePortForward {
    fn check(&self, pod: &Value) -> Result<(), String> {
        if is_router(pod) {
            return Ok(());
        }
        let Some(engine) = &self.engine else {
            return Err("this API server runs no node (agent-sandbox up --no-node): only the router's Pod can be port-forwarded".into());
        };
        let pod: Pod = serde_json::from_value(pod.clone()).map_err(|e| e.to_string())?;
        agent_sandbox_node::portforward::check(engine, &pod)
    }

    fn connect(
        &self,
        pod: &Value,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn Tunnel>, String>> {
        if is_router(pod) {
            let router = Arc::clone(&self.router);
            return Box::pin(async move {
                if port != PORT {
                    return Err(format!(
                        "failed to connect to localhost:{port}: connection refused (the router listens on {PORT})"
                    ));
                }
                let (ours, theirs) = tokio::io::duplex(256 * 1024);
                let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                tokio::spawn(router_server::serve_connection(router, theirs, peer, true));
                Ok(Box::new(ours) as Box<dyn Tunnel>)
            });
        }
        let engine = self.engine.clone();
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Box::pin(async move {
            let engine = engine.ok_or("this API server runs no node")?;
            let s = agent_sandbox_node::portforward::connect(&engine, &uid, port).await?;
            Ok(Box::new(s) as Box<dyn Tunnel>)
        })
    }
}
