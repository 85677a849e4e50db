//! NetworkPolicy enforcement through the node agent, with real runtimes, CNI and nftables: the
//! template controller's default policy keeps a sandbox away from a private server (in a network
//! namespace this test makes) and from the host, while the host (the router) still reaches it;
//! without a policy both are reachable; sandbox-to-sandbox traffic flows only where a policy
//! admits it, policy updates apply to running pods, and replies of allowed connections pass.
//! Traffic goes only to addresses of namespaces this test created; every loop is bounded.
#![allow(clippy::print_stdout)]

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use agent_sandbox_node::HandlerKind;
use common::{AgentEnv, BridgeGuard, PrivateServer, have_cni, need, test_network};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const IMAGE: &str = "localhost/test/busybox:1";

/// The policy the SandboxTemplate controller writes when the template has none (see
/// crates/controller/src/template.rs), for pods labelled `tpl: secure`.
fn template_default_policy(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"tpl": "secure"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agent-sandbox-system"}},
                "podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}],
            "egress": [{"to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]}},
                {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}]}]
        }
    })
}

/// A shell loop that tries `tries` times to read `marker` from `target` (`ip port`) and prints
/// `<tag>-reached` or `<tag>-blocked`.
fn probe_script(tag: &str, target: &str, marker: &str, tries: u32) -> String {
    format!(
        "i=0; r={tag}-blocked; while [ $i -lt {tries} ]; do \
         if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {target} 2>/dev/null | grep -q {marker}; then r={tag}-reached; break; fi; \
         i=$((i+1)); sleep 0.2; done; echo $r; "
    )
}

fn pod(
    name: &str,
    labels: serde_json::Value,
    handler: HandlerKind,
    script: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"runtimeClassName": handler.name(), "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                "ports": [{"name": "http", "containerPort": 8080}],
                "command": ["/bin/sh", "-c", script]}]}
    })
}

fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Poll `addr` from the host until it answers with `marker` (true) or `tries` attempts failed.
async fn host_reaches(addr: SocketAddr, marker: &str, tries: u32) -> bool {
    for _ in 0..tries {
        if http_get(addr).is_ok_and(|b| b.contains(marker)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

const SERVE: &str =
    "mkdir -p /www && echo pong-$HOSTNAME > /www/index.html && exec httpd -f -p 8080 -h /www";

/// A TCP listener of the host on the bridge's own address, answering `host-service`.
fn host_service(gateway: Ipv4Addr) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind((gateway, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let t = std::thread::spawn(move || {
        // Bounded: 60 s.
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"host-service\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (addr, t)
}

async fn default_policy(kind: HandlerKind, salt: u32) {
    if need(Some(kind))
        || common::skip_unless(have_cni(), "containernetworking-plugins is not installed")
    {
        return;
    }
    let (net, n) = test_network(salt).expect("a free /24 under 10.100.0.0/16");
    let _bridge = BridgeGuard(net.bridge.clone());
    let gateway = net.gateway();
    let a = AgentEnv::new(&[kind], Some(net)).await;
    let enf = a.agent.enforcer().expect("an enforcer").clone();
    assert!(enf.available().is_ok(), "{:?}", enf.available());
    a.env.busybox(IMAGE).await;
    let private = PrivateServer::start(a.env.dir.path(), n, salt, "private-marker\n");
    let target = format!("{} {}", private.addr.ip(), private.addr.port());

    let nps: Api<NetworkPolicy> = Api::namespaced(a.client.clone(), "default");
    nps.create(
        &PostParams::default(),
        &serde_json::from_value(template_default_policy("tpl-network-policy")).unwrap(),
    )
    .await
    .unwrap();

    // The host listens on the bridge address only once the bridge exists: start the open pod
    // first, then the secure one, which also tries the host.
    let t0 = Instant::now();
    a.create_pod(pod(
        "open",
        json!({"role": "open"}),
        kind,
        &format!(
            "{} {SERVE}",
            probe_script("private", &target, "private-marker", 50)
        ),
    ))
    .await;
    let (open_uid, open_ip) = a.wait_running("default", "open").await;
    println!("open pod running after {:?}", t0.elapsed());
    let (host_addr, host_thread) = host_service(gateway);
    let host_target = format!("{} {}", host_addr.ip(), host_addr.port());
    a.create_pod(pod(
        "secure",
        json!({"tpl": "secure"}),
        kind,
        &format!(
            "{} {} {} {SERVE}",
            probe_script("private", &target, "private-marker", 4),
            probe_script("host", &host_target, "host-service", 4),
            probe_script("open", &format!("{open_ip} 8080"), "pong", 4),
        ),
    ))
    .await;
    let (secure_uid, secure_ip) = a.wait_running("default", "secure").await;
    let t = enf.last_apply_time().await.unwrap();
    println!("nft apply took {:.1} ms", t.as_secs_f64() * 1e3);

    // Without a policy: the private server is reachable.
    let log = a
        .wait_log(
            &open_uid,
            &["private-reached", "private-blocked"],
            Duration::from_secs(30),
        )
        .await;
    assert!(log.contains("private-reached"), "open pod: {log}");

    // Under the default policy: no private server, no host service, no other pod.
    let log = a
        .wait_log(
            &secure_uid,
            &["open-reached", "open-blocked"],
            Duration::from_secs(60),
        )
        .await;
    assert!(log.contains("private-blocked"), "secure pod: {log}");
    assert!(log.contains("host-blocked"), "secure pod: {log}");
    assert!(log.contains("open-blocked"), "secure pod: {log}");

    // The host (the router's identity) reaches both pods' servers.
    assert!(host_reaches(SocketAddr::from((secure_ip, 8080)), "pong-secure", 50).await);
    assert!(host_reaches(SocketAddr::from((open_ip, 8080)), "pong-open", 50).await);

    // Deleting the policy opens the secure pod: a new pod with the same labels now reaches
    // the private server (and the running one's chains are gone).
    nps.delete("tpl-network-policy", &Default::default())
        .await
        .unwrap();
    a.create_pod(pod(
        "secure2",
        json!({"tpl": "secure"}),
        kind,
        &format!(
            "{} exec sleep 600",
            probe_script("private", &target, "private-marker", 50)
        ),
    ))
    .await;
    let (uid2, _) = a.wait_running("default", "secure2").await;
    let log = a
        .wait_log(
            &uid2,
            &["private-reached", "private-blocked"],
            Duration::from_secs(30),
        )
        .await;
    assert!(
        log.contains("private-reached"),
        "after deleting the policy: {log}"
    );
    assert!(enf.compile().ingress_isolated.is_empty());
    drop(host_thread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_crun() {
    default_policy(HandlerKind::Crun, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_runsc() {
    default_policy(HandlerKind::Runsc, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_to_pod_where_allowed() {
    let kind = HandlerKind::Crun;
    if need(Some(kind))
        || common::skip_unless(have_cni(), "containernetworking-plugins is not installed")
    {
        return;
    }
    let (net, _) = test_network(13).expect("a free /24 under 10.100.0.0/16");
    let _bridge = BridgeGuard(net.bridge.clone());
    let a = AgentEnv::new(&[kind], Some(net)).await;
    a.env.busybox(IMAGE).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(a.client.clone(), "default");
    // srv: ingress only from role=a on the named port; a: no ingress, egress only to srv
    // (so its fetches work only if replies pass by conntrack).
    let srv_policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "srv", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"role": "srv"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "a"}}}], "ports": [{"port": "http"}]}]}
    });
    let a_policy = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "a", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"role": "a"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "srv"}}}], "ports": [{"port": 8080, "protocol": "TCP"}]}]}
    });
    for p in [srv_policy, a_policy] {
        nps.create(&PostParams::default(), &serde_json::from_value(p).unwrap())
            .await
            .unwrap();
    }
    a.create_pod(pod("srv", json!({"role": "srv"}), kind, SERVE))
        .await;
    let (_, srv_ip) = a.wait_running("default", "srv").await;
    let target = format!("{srv_ip} 8080");
    // Clients loop until stopped: each round prints reached/blocked.
    let client = |tag: &str| {
        format!(
            "while true; do {} sleep 0.3; done",
            probe_script(tag, &target, "pong-srv", 2)
        )
    };
    a.create_pod(pod("a", json!({"role": "a"}), kind, &client("a")))
        .await;
    a.create_pod(pod("c", json!({"role": "c"}), kind, &client("c")))
        .await;
    let (a_uid, _) = a.wait_running("default", "a").await;
    let (c_uid, _) = a.wait_running("default", "c").await;
    let log = a
        .wait_log(&a_uid, &["a-reached"], Duration::from_secs(30))
        .await;
    assert!(!log.contains("a-blocked"), "a: {log}");
    let log = a
        .wait_log(&c_uid, &["c-blocked", "c-reached"], Duration::from_secs(30))
        .await;
    assert!(
        log.contains("c-blocked") && !log.contains("c-reached"),
        "c: {log}"
    );

    // The host is the router, not role=a: srv refuses it.
    assert!(!host_reaches(SocketAddr::from((srv_ip, 8080)), "pong", 3).await);

    // Widening the policy applies to the running pods.
    nps.patch(
        "srv",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ingress": [{"from": [
            {"podSelector": {"matchLabels": {"role": "a"}}},
            {"podSelector": {"matchLabels": {"role": "c"}}}]}]}})),
    )
    .await
    .unwrap();
    a.wait_log(&c_uid, &["c-reached"], Duration::from_secs(30))
        .await;

    // Relabelling a pod out of the peer set closes it again.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(a.client.clone(), "default");
    pods.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"role": "c2"}}})),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = a.log(&c_uid).matches("c-blocked").count();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let after = a.log(&c_uid).matches("c-blocked").count();
        if after >= before + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c still reaches srv after relabelling"
        );
    }
}

/// The cost of one atomic rebuild with many pods under the default policy (printed), with a
/// generous bound; the table is on an unrouted subnet and a bridge that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_cost_with_many_pods() {
    if common::skip_unless(common::is_root(), "needs root")
        || common::skip_unless(
            agent_sandbox_node::runtime::find_binary("nft").is_some(),
            "nft is not installed",
        )
    {
        return;
    }
    use agent_sandbox_node::cni::{Attachment, NetworkConfig};
    use agent_sandbox_node::firewall::{PodMeta, PolicyEnforcer};
    let net = NetworkConfig {
        bridge: format!("asns{}", std::process::id() % 100_000_000),
        subnet: "10.102.0.0/16".into(),
        policy_table: Some(format!("asbx_scale_{}", std::process::id())),
        ..NetworkConfig::default()
    };
    let enf = PolicyEnforcer::new(&net).unwrap();
    enf.set_policy(serde_json::from_value(template_default_policy("tpl")).unwrap());
    let mut report = Vec::new();
    for n in [1u32, 100, 500] {
        for i in 0..n {
            let uid = format!("pod-{i}");
            let mut labels = std::collections::BTreeMap::new();
            labels.insert("tpl".to_string(), "secure".to_string());
            enf.set_pod(
                &uid,
                PodMeta {
                    namespace: "default".into(),
                    name: uid.clone(),
                    labels,
                    ports: vec![],
                },
            );
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 102, 0, 2)) + i);
            let result = json!({"interfaces": [
                {"name": net.bridge},
                {"name": format!("vsc{i}"), "mac": "0a:00:00:00:00:01"},
                {"name": "eth0", "mac": "0a:58:0a:66:00:02", "sandbox": "/x"}]});
            enf.set_endpoint(&uid, &Attachment { ip, result });
        }
        let t = Instant::now();
        enf.sync().await.unwrap();
        let took = t.elapsed();
        report.push(format!(
            "{n} pods: {} bytes, {:.1} ms",
            enf.compile().script.len(),
            took.as_secs_f64() * 1e3
        ));
        assert!(took < Duration::from_secs(10), "{report:?}");
    }
    enf.remove_tables().await.unwrap();
    println!("nft rebuild: {}", report.join("; "));
}

/// A restart of the agent (and engine object) re-syncs the firewall: the re-adopted secure pod
/// still cannot reach the private server, and the host (router) still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_resynced_after_an_agent_restart() {
    let kind = HandlerKind::Crun;
    if need(Some(kind))
        || common::skip_unless(have_cni(), "containernetworking-plugins is not installed")
    {
        return;
    }
    let (net, n) = test_network(14).expect("a free /24 under 10.100.0.0/16");
    let _bridge = BridgeGuard(net.bridge.clone());
    let mut a = AgentEnv::new(&[kind], Some(net)).await;
    a.env.busybox(IMAGE).await;
    let private = PrivateServer::start(a.env.dir.path(), n, 14, "private-marker\n");
    let target = format!("{} {}", private.addr.ip(), private.addr.port());
    let nps: Api<NetworkPolicy> = Api::namespaced(a.client.clone(), "default");
    nps.create(
        &PostParams::default(),
        &serde_json::from_value(template_default_policy("tpl-network-policy")).unwrap(),
    )
    .await
    .unwrap();
    // The pod probes the private server in rounds, serving meanwhile.
    let script = format!(
        "mkdir -p /www && echo pong-$HOSTNAME > /www/index.html && httpd -p 8080 -h /www; \
         while true; do {} sleep 0.3; done",
        probe_script("private", &target, "private-marker", 1)
    );
    a.create_pod(pod("secure", json!({"tpl": "secure"}), kind, &script))
        .await;
    let (uid, ip) = a.wait_running("default", "secure").await;
    a.wait_log(&uid, &["private-blocked"], Duration::from_secs(30))
        .await;
    assert!(host_reaches(SocketAddr::from((ip, 8080)), "pong-secure", 50).await);

    a.restart_agent().await;
    let enf = a.agent.enforcer().unwrap().clone();
    assert!(
        enf.compile().egress_isolated.contains(&uid),
        "the new agent knows the policy and the pod"
    );
    let before = a.log(&uid).matches("private-blocked").count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = a.log(&uid);
    assert!(
        log.matches("private-blocked").count() > before && !log.contains("private-reached"),
        "{log}"
    );
    assert!(host_reaches(SocketAddr::from((ip, 8080)), "pong-secure", 50).await);
}

/// Before its first ruleset, a node removes the tables stopped instances left for bridges that
/// are gone when they name its pod subnet (they would drop its traffic); a table naming another
/// subnet, or of a bridge that exists (a running instance's), stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tables_of_gone_bridges_naming_the_subnet_are_removed() {
    if common::skip_unless(common::is_root(), "needs root")
        || common::skip_unless(
            agent_sandbox_node::runtime::find_binary("nft").is_some(),
            "nft is not installed",
        )
    {
        return;
    }
    use agent_sandbox_node::cni::NetworkConfig;
    use agent_sandbox_node::firewall::PolicyEnforcer;
    let id = std::process::id() % 100_000;
    let nft = |script: String| {
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "{script}");
    };
    let table = |name: &str, subnet: &str| {
        format!(
            "table inet {name} {{\n chain output {{\n  type filter hook output priority filter; policy accept;\n  ip daddr {subnet} drop\n }}\n}}\n"
        )
    };
    let gone = format!("agent_sandbox_asgone{id}");
    let other = format!("agent_sandbox_asother{id}");
    // `lo` exists: its table stands for a running instance.
    let live = "agent_sandbox_lo".to_string();
    nft(table(&gone, "10.105.0.0/16"));
    nft(table(&other, "10.106.0.0/16"));
    nft(table(&live, "10.105.0.0/16"));
    let net = NetworkConfig {
        bridge: format!("asst{id}"),
        subnet: "10.105.0.0/16".into(),
        policy_table: Some(format!("asbx_stale_{id}")),
        ..NetworkConfig::default()
    };
    let enf = PolicyEnforcer::new(&net).unwrap();
    enf.sync().await.unwrap();
    let tables = String::from_utf8(
        std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for t in [&other, &live] {
        nft(format!("delete table inet {t}\n"));
    }
    enf.remove_tables().await.unwrap();
    assert!(!tables.contains(&gone), "{tables}");
    assert!(
        tables.contains(&other) && tables.contains(&live),
        "{tables}"
    );
}
