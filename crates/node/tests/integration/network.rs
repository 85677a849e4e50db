//! CNI bridge networking: each sandbox gets its own namespace and a pod IP on a test-made
//! bridge; the host (through the bridge) and another sandbox reach a server in it; the
//! sandbox sees only its own interfaces; removal leaves no veth, namespace or IPAM reservation.
//! Traffic goes only to addresses of namespaces this test created; every loop is bounded.
#![allow(clippy::print_stdout)]

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use agent_sandbox_node::cni::{self, NetworkConfig};
use agent_sandbox_node::{HandlerKind, SandboxSpec};
use common::{BridgeGuard, Env, assert_no_leaks, need, test_network};

const IMAGE: &str = "localhost/test/busybox:1";

fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

async fn networking(kind: HandlerKind, salt: u32) {
    if need(Some(kind)) {
        return;
    }
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        common::skip_unless(false, "containernetworking-plugins is not installed");
        return;
    }
    let (net, _) = test_network(salt).expect("a free /24 under 10.100.0.0/16");
    let _bridge = BridgeGuard(net.bridge.clone());
    let env = Env::new(&[kind], Some(net.clone())).await;
    env.busybox(IMAGE).await;
    let e = env.engine();

    let mut server = SandboxSpec::new("srv", IMAGE);
    server.handler = Some(kind.name().into());
    server.hostname = Some("srv".into());
    server.main.command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "mkdir -p /www && echo pong-from-srv > /www/index.html && ip -o -4 addr > /tmp/addrs; cat /tmp/addrs; cat /etc/hosts; exec httpd -f -p 8080 -h /www".into(),
    ]);
    let h = e.create(server).await.unwrap();
    let ip = h.pod_ip.expect("a pod IP");
    let subnet = cni::parse_cidr(&net.subnet).unwrap();
    assert!(cni::overlaps(subnet, (ip, 32)), "{ip} in {}", net.subnet);
    e.start("srv").await.unwrap();

    // The host reaches the server through the bridge (bounded retries).
    let addr = SocketAddr::from((ip, 8080));
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        match http_get(addr) {
            Ok(b) if b.contains("pong-from-srv") => break b,
            other => {
                assert!(Instant::now() < deadline, "server not reachable: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(body.contains("200"), "{body}");

    // The sandbox sees only loopback and its own address.
    let log = fs_err::read_to_string(e.log_path("srv")).unwrap();
    let words: Vec<&str> = log.split_whitespace().collect();
    let addrs: Vec<Ipv4Addr> = words
        .windows(2)
        .filter(|w| w[0] == "inet")
        .filter_map(|w| w[1].split('/').next()?.parse().ok())
        .collect();
    assert!(addrs.contains(&ip), "{log}");
    assert!(
        addrs.iter().all(|a| a.is_loopback() || *a == ip),
        "host addresses visible: {log}"
    );
    // The container was created while the address was being assigned; its /etc/hosts (a bind
    // mount of the sandbox's file, rewritten in place) has it.
    assert!(log.contains(&format!("{ip}\tsrv")), "{log}");

    // Another sandbox reaches it by pod IP.
    let mut client = SandboxSpec::new("cli", IMAGE);
    client.handler = Some(kind.name().into());
    client.main.command = Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "i=0; while [ $i -lt 30 ]; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 8080 | grep pong && exit 0; i=$((i+1)); sleep 0.2; done; exit 1"
        ),
    ]);
    let h2 = e.create(client).await.unwrap();
    assert_ne!(h2.pod_ip, Some(ip));
    e.start("cli").await.unwrap();
    let code = e.wait("cli", Duration::from_secs(30)).await.unwrap();
    let out = fs_err::read_to_string(e.log_path("cli")).unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("pong-from-srv"), "{out}");

    let cni = e.network().unwrap();
    assert_eq!(cni.reserved_addresses().len(), 2);
    e.remove("cli").await.unwrap();
    e.remove("srv").await.unwrap();
    assert!(
        cni.reserved_addresses().is_empty(),
        "IPAM reservations leaked"
    );
    let brif: Vec<_> = fs_err::read_dir(format!("/sys/class/net/{}/brif", net.bridge))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(brif.is_empty(), "veths left on the bridge: {brif:?}");
    assert!(
        http_get(addr).is_err(),
        "server still reachable after removal"
    );
    assert_no_leaks(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_network_default_handler() {
    let kind = common::default_kind();
    networking(kind, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_network_runsc() {
    networking(HandlerKind::Runsc, 2).await;
}

/// CNI ADD runs in the background while the runtime creates the container: when it fails,
/// `create` fails, and a container start after `prepare` fails and removes the sandbox; both
/// leave no namespace, mount, cgroup, directory or IPAM reservation behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_network_attachment_leaves_nothing() {
    let kind = common::default_kind();
    if need(Some(kind)) {
        return;
    }
    if !Path::new("/usr/lib/cni/host-local").is_file() {
        common::skip_unless(false, "containernetworking-plugins is not installed");
        return;
    }
    // A plugin directory whose `bridge` refuses ADD (after a delay, so that the runtime's
    // create is under way meanwhile) and accepts DEL.
    let plugins = tempfile::tempdir().unwrap();
    let bridge = plugins.path().join("bridge");
    fs_err::write(
        &bridge,
        "#!/bin/sh\ncat > /dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then sleep 0.2; \
         echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no address for you\"}'; exit 1; fi\nexit 0\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&bridge, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::symlink("/usr/lib/cni/host-local", plugins.path().join("host-local"))
        .unwrap();
    let (mut net, _) = test_network(3).expect("a free /24 under 10.100.0.0/16");
    net.plugin_dir = plugins.path().to_path_buf();
    let env = Env::new(&[kind], Some(net)).await;
    env.busybox(IMAGE).await;
    let e = env.engine();
    let spec = |id: &str| {
        let mut s = SandboxSpec::new(id, IMAGE);
        s.handler = Some(kind.name().into());
        s.main.command = Some(vec!["/bin/sleep".into(), "100".into()]);
        s
    };

    let err = e.create(spec("one")).await.unwrap_err();
    assert!(err.to_string().contains("no address for you"), "{err}");
    assert!(!e.contains("one"));
    assert_no_leaks(&env);

    e.prepare(spec("two")).await.unwrap();
    let err = e.create_container("two", "main", true).await.unwrap_err();
    assert!(err.to_string().contains("no address for you"), "{err}");
    assert!(
        !e.contains("two"),
        "a sandbox without its network is removed"
    );
    assert!(e.network().unwrap().reserved_addresses().is_empty());
    assert_no_leaks(&env);
}

#[test]
fn subnet_colliding_with_a_host_route_is_refused() {
    // The host's default-route interface network is always a collision (routes on the
    // configured bridge itself are not: they are the network's own).
    let bridge = NetworkConfig::default().bridge;
    let Some((dev, dst, len)) = cni::host_routes()
        .into_iter()
        .find(|(d, _, l)| *l > 0 && *d != bridge)
    else {
        common::skip_unless(false, "no non-default IPv4 route on this host");
        return;
    };
    let cfg = NetworkConfig {
        subnet: format!("{dst}/{len}"),
        ..NetworkConfig::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains(&dev), "{err}");
}
