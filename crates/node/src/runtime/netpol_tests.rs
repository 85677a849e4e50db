//! Unit tests of the NetworkPolicy compiler.

use super::*;
use serde_json::json;

fn np(v: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(v).unwrap()
}

fn pod(uid: &str, ns: &str, ip: &str, labels: &[(&str, &str)]) -> PodEndpoint {
    PodEndpoint {
        uid: uid.into(),
        namespace: ns.into(),
        name: uid.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ip: ip.parse().unwrap(),
        host_veth: Some(format!("veth{uid}")),
        mac: Some("0a:58:0a:64:00:02".into()),
        ports: vec![NamedPort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 8080,
        }],
    }
}

fn cfg() -> FirewallConfig {
    FirewallConfig {
        table: "t".into(),
        bridge: "br0".into(),
        subnet: ("10.100.0.0".parse().unwrap(), 24),
        gateway: "10.100.0.1".parse().unwrap(),
        host_peer: Some(HostPeer::router()),
    }
}

fn default_policy() -> NetworkPolicy {
    np(json!({
        "metadata": {"name": "tpl-network-policy", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"tpl": "x"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "agent-sandbox-system"}},
                                    "podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]}},
                               {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7", "fe80::/10"]}}]}]}
    }))
}

/// The body of the chain that `base` (forward/output/input) jumps to for `ip` by `field`;
/// `which` is `in`, `in_host`, `out` or `out_host`.
fn pod_chain<'a>(script: &'a str, ip: &str, which: &str) -> &'a str {
    let (base, field) = match which {
        "in" => ("forward", "daddr"),
        "out" => ("forward", "saddr"),
        "in_host" => ("output", "daddr"),
        _ => ("input", "saddr"),
    };
    let b = chain(script, base);
    let line = b
        .lines()
        .find(|l| l.contains(&format!("ip {field} vmap")))
        .unwrap_or_else(|| panic!("no {field} map in {base}:\n{script}"));
    let key = format!("{ip} : jump ");
    let i = line
        .find(&key)
        .unwrap_or_else(|| panic!("{ip} not in {line}"));
    let name: String = line[i + key.len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    chain(script, &name)
}

fn chain<'a>(script: &'a str, name: &str) -> &'a str {
    let start = script
        .find(&format!("chain {name} {{"))
        .unwrap_or_else(|| panic!("no chain {name} in\n{script}"));
    let rest = &script[start..];
    &rest[..rest.find("\n  }").unwrap()]
}

#[test]
fn selectors() {
    let l: BTreeMap<String, String> = [("a".to_string(), "1".to_string())].into();
    let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
    assert!(selector_matches(&sel(json!({})), &l));
    assert!(selector_matches(
        &sel(json!({"matchLabels": {"a": "1"}})),
        &l
    ));
    assert!(!selector_matches(
        &sel(json!({"matchLabels": {"a": "2"}})),
        &l
    ));
    assert!(selector_matches(
        &sel(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]})),
        &l
    ));
    assert!(!selector_matches(
        &sel(json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]})),
        &l
    ));
    assert!(selector_matches(
        &sel(json!({"matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]})),
        &l
    ));
    assert!(!selector_matches(
        &sel(json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]})),
        &l
    ));
}

#[test]
fn default_template_policy() {
    let pods = [
        pod("a", "default", "10.100.0.2", &[("tpl", "x")]),
        pod("b", "default", "10.100.0.3", &[]),
    ];
    let policies = [default_policy()];
    let ns = BTreeMap::new();
    let c = compile(
        &cfg(),
        PolicyInputs {
            pods: &pods,
            policies: &policies,
            namespaces: &ns,
        },
    );
    let s = &c.script;
    assert_eq!(c.ingress_isolated, BTreeSet::from(["a".to_string()]));
    assert_eq!(c.egress_isolated, BTreeSet::from(["a".to_string()]));
    // Only the host (as the router) may connect in; no pod matches the router selector.
    let ing = pod_chain(s, "10.100.0.2", "in");
    assert!(!ing.contains("return"), "{ing}");
    let ing_host = pod_chain(s, "10.100.0.2", "in_host");
    assert!(ing_host.contains("return comment"), "{ing_host}");
    // Egress: public addresses only; the host (10.100.0.1, private) is not reachable.
    let egr = pod_chain(s, "10.100.0.2", "out");
    assert!(
        egr.contains("ip daddr 0.0.0.0/0 ip daddr != { 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 } return"),
        "{egr}"
    );
    assert!(egr.contains("ip6 daddr ::/0 ip6 daddr != { fc00::/7, fe80::/10 } return"));
    assert!(!pod_chain(s, "10.100.0.2", "out_host").contains("return"));
    // Pod b is not isolated.
    assert!(!s.contains("10.100.0.3 : jump"));
    assert!(s.contains("iifname \"br0\" ip saddr vmap { 10.100.0.2 : jump out"));
    // Fail closed for unknown pod addresses.
    assert!(s.contains(
        "iifname \"br0\" ip saddr 10.100.0.0/24 ip saddr != { 10.100.0.2, 10.100.0.3 } counter drop"
    ));
    // Every address rule of the inet table names the bridge (a packet from a sandbox comes in on
    // it, one to a sandbox goes out on it): a table left by another bridge with the same subnet
    // never judges this one's traffic.
    let inet = s.split("table bridge").next().unwrap();
    for line in inet.lines().filter(|l| {
        l.trim_start().starts_with("ip saddr") || l.trim_start().starts_with("ip daddr")
    }) {
        assert!(
            !line.contains("counter drop") && !line.contains("vmap"),
            "an address rule without the bridge: {line}"
        );
    }
    assert!(s.contains("oifname \"br0\" ip daddr 10.100.0.0/24 ip daddr != {"));
    // Anti-spoofing for both ports.
    assert!(s.contains("\"vetha\" . 10.100.0.2, \"vethb\" . 10.100.0.3"));
}

#[test]
fn without_host_identity_the_router_selector_admits_nothing() {
    let pods = [pod("a", "default", "10.100.0.2", &[("tpl", "x")])];
    let policies = [default_policy()];
    let mut c = cfg();
    c.host_peer = None;
    let ns = BTreeMap::new();
    let out = compile(
        &c,
        PolicyInputs {
            pods: &pods,
            policies: &policies,
            namespaces: &ns,
        },
    );
    assert!(!pod_chain(&out.script, "10.100.0.2", "in_host").contains("return"));
}

#[test]
fn pod_selector_ports_and_named_ports() {
    let pods = [
        pod("srv", "ns1", "10.100.0.2", &[("role", "srv")]),
        pod("a", "ns1", "10.100.0.3", &[("role", "a")]),
        pod("c", "ns2", "10.100.0.4", &[("role", "a")]),
    ];
    let policies = [np(json!({
        "metadata": {"name": "p", "namespace": "ns1"},
        "spec": {"podSelector": {"matchLabels": {"role": "srv"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "a"}}}], "ports": [{"port": "http"}, {"port": 9000, "endPort": 9010, "protocol": "UDP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}
            ]}
    }))];
    let ns = BTreeMap::from([(
        "ns2".to_string(),
        BTreeMap::from([("team".to_string(), "x".to_string())]),
    )]);
    let c = compile(
        &cfg(),
        PolicyInputs {
            pods: &pods,
            policies: &policies,
            namespaces: &ns,
        },
    );
    let ing = pod_chain(&c.script, "10.100.0.2", "in");
    assert!(
        ing.contains("ip saddr 10.100.0.3 tcp dport 8080 return"),
        "{ing}"
    );
    assert!(ing.contains("ip saddr 10.100.0.3 udp dport 9000-9010 return"));
    assert!(ing.contains("ip saddr 10.100.0.4 return"), "{ing}");
    assert!(!ing.contains("10.100.0.2"));
    assert!(c.egress_isolated.is_empty());
}

#[test]
fn empty_rules_deny_and_empty_peers_allow() {
    let pods = [pod("a", "default", "10.100.0.2", &[])];
    let deny = [np(json!({
        "metadata": {"name": "deny", "namespace": "default"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    }))];
    let ns = BTreeMap::new();
    let c = compile(
        &cfg(),
        PolicyInputs {
            pods: &pods,
            policies: &deny,
            namespaces: &ns,
        },
    );
    for ch in ["in", "in_host", "out", "out_host"] {
        assert!(
            !pod_chain(&c.script, "10.100.0.2", ch).contains("return"),
            "{ch}"
        );
    }
    let allow = [np(json!({
        "metadata": {"name": "allow", "namespace": "default"},
        "spec": {"podSelector": {}, "ingress": [{}], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}
    }))];
    let c = compile(
        &cfg(),
        PolicyInputs {
            pods: &pods,
            policies: &allow,
            namespaces: &ns,
        },
    );
    assert!(pod_chain(&c.script, "10.100.0.2", "in").contains("    return comment"));
    assert!(pod_chain(&c.script, "10.100.0.2", "in_host").contains("    return comment"));
    assert!(pod_chain(&c.script, "10.100.0.2", "out").contains("udp dport 53 return"));
    assert!(pod_chain(&c.script, "10.100.0.2", "out_host").contains("udp dport 53 return"));
}

#[test]
fn ip_block_containing_the_gateway_admits_the_host() {
    let pods = [pod("a", "default", "10.100.0.2", &[])];
    let policies = [np(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.100.0.1/32"}}], "ports": [{"port": 53}]}]}
    }))];
    let ns = BTreeMap::new();
    let c = compile(
        &cfg(),
        PolicyInputs {
            pods: &pods,
            policies: &policies,
            namespaces: &ns,
        },
    );
    assert!(pod_chain(&c.script, "10.100.0.2", "out_host").contains("tcp dport 53 return"));
    assert!(
        pod_chain(&c.script, "10.100.0.2", "out")
            .contains("ip daddr 10.100.0.1/32 tcp dport 53 return")
    );
    assert!(c.ingress_isolated.is_empty());
}

#[test]
fn pods_with_the_same_rules_share_chains() {
    let pods: Vec<PodEndpoint> = (0..50)
        .map(|i| {
            pod(
                &format!("p{i}"),
                "default",
                &format!("10.100.0.{}", i + 2),
                &[("tpl", "x")],
            )
        })
        .collect();
    let policies = [default_policy()];
    let ns = BTreeMap::new();
    let c = compile(
        &cfg(),
        PolicyInputs {
            pods: &pods,
            policies: &policies,
            namespaces: &ns,
        },
    );
    assert_eq!(c.ingress_isolated.len(), 50);
    assert_eq!(c.script.matches("  chain ").count(), 3 + 4 + 1);
}

#[test]
fn cidr_helpers() {
    assert_eq!(Net::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
    let m = merge(vec![
        Net::parse("10.0.0.0/8").unwrap(),
        Net::parse("10.1.0.0/16").unwrap(),
        Net::parse("10.0.0.0/8").unwrap(),
    ]);
    assert_eq!(m, vec![Net::parse("10.0.0.0/8").unwrap()]);
    assert_eq!(
        broadcast(("10.100.0.0".parse().unwrap(), 24)),
        "10.100.0.255"
    );
    assert!(quote("a\"b").contains("ab"));
}
