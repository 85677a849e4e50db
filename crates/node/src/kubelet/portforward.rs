//! Port-forward into a sandbox: a TCP connection to `localhost:<port>` made inside the
//! sandbox's network namespace, as a container runtime dials it for kubelet — so a server that
//! listens on the Pod's loopback only is reachable too. (runsc runs here with the host network
//! stack of that namespace, so the same holds under gVisor.)

use crate::engine::SandboxEngine;
use k8s_openapi::api::core::v1::Pod;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;

/// How long a connection to the Pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the sandbox of `pod` runs on this node, so its ports can be forwarded.
pub fn check(engine: &SandboxEngine, pod: &Pod) -> Result<(), String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if engine.contains(uid) && engine.netns_path(uid).exists() {
        return Ok(());
    }
    Err(format!(
        "unable to forward ports of pod {}/{}: it has no running sandbox on this node (phase {}); wait until it is Running",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending"),
    ))
}

/// Connects to `port` on the loopback of sandbox `id`'s network namespace: IPv4 first, then
/// IPv6; the error names both attempts, as containerd's does.
pub async fn connect(engine: &SandboxEngine, id: &str, port: u16) -> Result<TcpStream, String> {
    if !engine.contains(id) {
        return Err(format!("sandbox {id} is not running on this node"));
    }
    let netns = engine.netns_path(id);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let e4 = match crate::host::tcp_connect_in_netns(&netns, v4, CONNECT_TIMEOUT).await {
        Ok(s) => return finish(s),
        Err(e) => e,
    };
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let e6 = match crate::host::tcp_connect_in_netns(&netns, v6, CONNECT_TIMEOUT).await {
        Ok(s) => return finish(s),
        Err(e) => e,
    };
    Err(format!(
        "failed to connect to localhost:{port} inside namespace {:?}, IPv4: dial tcp4 {v4}: {e4} IPv6 dial tcp6 {v6}: {e6}",
        netns.display().to_string()
    ))
}

fn finish(s: TcpStream) -> Result<TcpStream, String> {
    let _ = s.set_nodelay(true);
    Ok(s)
}
