//! NetworkPolicy compilation: the `networking.k8s.io/v1` NetworkPolicies that select the Pods this
//! node runs, turned into one nftables ruleset (text for `nft -f`) that [`crate::firewall`]
//! applies atomically. Pure: no I/O, so every rule can be checked by unit tests.
//!
//! What the ruleset does, for the node's bridge network (pod subnet `S`, gateway `G` = the host):
//! - `table inet <name>`: hooks `forward` (pod ↔ pod and pod ↔ outside, bridged traffic reaches
//!   it through br_netfilter), `output` (host → pod) and `input` (pod → host). Each starts with
//!   `ct state established,related accept`, so replies of allowed connections always pass; then
//!   drops traffic from or to addresses of `S` that are no known pod, on this table's bridge
//!   (every address rule names it, so a table never judges another bridge's traffic even when
//!   the subnets are the same) (fail closed: a sandbox
//!   the enforcer has not seen yet has no network); then dispatches by pod address (verdict maps)
//!   to one chain per isolated pod and direction, whose rules `return` when a NetworkPolicy rule
//!   admits the packet and end in `drop`.
//! - `table bridge <name>`: anti-spoofing on the bridge ports: a sandbox can only send frames
//!   with its own MAC, IPv4 source and ARP sender address, and no IPv6 (the network is IPv4
//!   only; link-local IPv6 would otherwise bypass the policy). (Frames from ports of no known pod
//!   cannot be told apart from other bridges' ports without the kernel's bridge `meta`
//!   support, which this host lacks; the `inet` table's fail-closed rule covers their IPv4.)
//!
//! Semantics follow Kubernetes: a pod is isolated for a direction when a policy in its namespace
//! selects it and lists that direction in `policyTypes` (default: `Ingress`, plus `Egress` when
//! `egress` is set); an isolated pod accepts a packet when any rule of any selecting policy
//! admits it (peers: `ipBlock` with `except`, `podSelector`, `namespaceSelector`, both; ports:
//! numbered, ranges with `endPort`, named container ports; an empty `from`/`to`/`ports` means
//! all); an empty rule list admits nothing. Peer selectors resolve to the addresses of the pods
//! this node knows.
//!
//! The host is one peer: its traffic reaches a pod from the gateway address through `output`,
//! and a pod reaches it through `input`. For policy purposes the host has the address `G` (so an
//! `ipBlock` admits it when it contains `G`) and, when [`HostPeer`] is configured, the identity
//! of a pod (namespace, namespace labels, pod labels): `agent-sandbox up` runs the router in the
//! host process, so it gives the host the router's identity (`app: sandbox-router` in
//! `agent-sandbox-system`) and the default template policy admits the router and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// The label every namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A container port with a name (for named ports in policies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// `ports[].name`.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `containerPort`.
    pub port: i32,
}

/// A pod as the policy sees it: identity (namespace, labels), address and bridge port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    /// Pod UID (the sandbox id).
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name (for comments).
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Host side of the pod's veth pair (anti-spoofing); `None` if unknown.
    pub host_veth: Option<String>,
    /// The pod interface's MAC address; `None` if unknown.
    pub mac: Option<String>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
}

/// The identity the host has as a policy peer (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPeer {
    /// The namespace the host counts as being in.
    pub namespace: String,
    /// That namespace's labels (`kubernetes.io/metadata.name` is always added).
    pub namespace_labels: BTreeMap<String, String>,
    /// The pod labels the host counts as having.
    pub labels: BTreeMap<String, String>,
}

impl HostPeer {
    /// The router of `agent-sandbox up`: `app: sandbox-router` in `agent-sandbox-system`, what the
    /// SandboxTemplate controller's default policy admits.
    pub fn router() -> Self {
        HostPeer {
            namespace: "agent-sandbox-system".into(),
            namespace_labels: BTreeMap::new(),
            labels: BTreeMap::from([("app".into(), "sandbox-router".into())]),
        }
    }
}

/// Node facts the ruleset needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// nftables table name (both the `inet` and the `bridge` table), unique per node.
    pub table: String,
    /// The pod bridge.
    pub bridge: String,
    /// Pod subnet.
    pub subnet: (Ipv4Addr, u8),
    /// The bridge's own address (the host as seen from pods).
    pub gateway: Ipv4Addr,
    /// The host's identity as a peer, if it has one.
    pub host_peer: Option<HostPeer>,
}

/// What the compiler reads.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInputs<'a> {
    /// Pods with an address on this node.
    pub pods: &'a [PodEndpoint],
    /// All NetworkPolicies (every namespace).
    pub policies: &'a [NetworkPolicy],
    /// Namespace labels by namespace name (missing namespaces get only the name label).
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
}

/// The compiled ruleset.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The `nft -f` script (replaces both tables in one transaction).
    pub script: String,
    /// UIDs of pods isolated for ingress.
    pub ingress_isolated: BTreeSet<String>,
    /// UIDs of pods isolated for egress.
    pub egress_isolated: BTreeSet<String>,
}

/// Whether `sel` matches `labels` (apimachinery semantics: an empty selector matches all; an
/// unknown operator matches nothing).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Which directions a policy restricts (`policyTypes`, with Kubernetes defaulting).
pub fn policy_types(np: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &np.spec else {
        return (true, false);
    };
    match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.is_some()),
    }
}

/// Whether a policy selects a pod.
pub fn selects(np: &NetworkPolicy, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    if np.metadata.namespace.as_deref().unwrap_or("default") != namespace {
        return false;
    }
    let empty = LabelSelector::default();
    let sel = np
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.as_ref())
        .unwrap_or(&empty);
    selector_matches(sel, labels)
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    fn parse(s: &str) -> Option<Net> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        match a.parse::<IpAddr>().ok()? {
            IpAddr::V4(ip) => {
                let len = len.unwrap_or(32);
                (len <= 32).then_some(())?;
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Some(Net::V4(u32::from(ip) & m, len))
            }
            IpAddr::V6(ip) => {
                let len = len.unwrap_or(128);
                (len <= 128).then_some(())?;
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                Some(Net::V6(u128::from(ip) & m, len))
            }
        }
    }

    fn contains(&self, other: &Net) -> bool {
        match (*self, *other) {
            (Net::V4(a, l), Net::V4(b, m)) => {
                let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
                l <= m && (b & mask) == a
            }
            (Net::V6(a, l), Net::V6(b, m)) => {
                let mask = if l == 0 { 0 } else { u128::MAX << (128 - l) };
                l <= m && (b & mask) == a
            }
            _ => false,
        }
    }

    fn is_v4(&self) -> bool {
        matches!(self, Net::V4(..))
    }

    fn family(&self) -> &'static str {
        if self.is_v4() { "ip" } else { "ip6" }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Net::V4(a, l) => write!(f, "{}/{l}", Ipv4Addr::from(a)),
            Net::V6(a, l) => write!(f, "{}/{l}", std::net::Ipv6Addr::from(a)),
        }
    }
}

/// Drop prefixes covered by others (nftables refuses overlapping intervals in one set).
fn merge(mut nets: Vec<Net>) -> Vec<Net> {
    nets.sort();
    nets.dedup();
    let all = nets.clone();
    nets.retain(|n| !all.iter().any(|o| o != n && o.contains(n)));
    nets
}

/// Quote a string for an nft script (interface names, comments).
fn quote(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .take(120)
        .collect();
    format!("\"{clean}\"")
}

fn set_of<I: IntoIterator<Item = String>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().collect();
    if v.len() == 1 {
        v[0].clone()
    } else {
        format!("{{ {} }}", v.join(", "))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    /// The address field of the peer.
    fn peer_field(self) -> &'static str {
        match self {
            Dir::Ingress => "saddr",
            Dir::Egress => "daddr",
        }
    }
}

struct Compiler<'a> {
    cfg: &'a FirewallConfig,
    inp: PolicyInputs<'a>,
}

/// A rule's peers and ports, as borrowed from the policy.
type RuleRef<'p> = (
    Option<&'p Vec<NetworkPolicyPeer>>,
    Option<&'p Vec<NetworkPolicyPort>>,
);

/// One way a packet can match a rule: nft match expressions (empty = anything), for the
/// pod-to-pod/outside chain or for the host chain.
type Matches = Vec<String>;

impl Compiler<'_> {
    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.inp.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
        l
    }

    fn host_ns_labels(&self, h: &HostPeer) -> BTreeMap<String, String> {
        let mut l = h.namespace_labels.clone();
        l.insert(NAMESPACE_NAME_LABEL.into(), h.namespace.clone());
        l
    }

    /// Pods a selector peer picks (policy in `policy_ns`).
    fn peer_pods(&self, peer: &NetworkPolicyPeer, policy_ns: &str) -> Vec<&PodEndpoint> {
        self.inp
            .pods
            .iter()
            .filter(|p| match &peer.namespace_selector {
                Some(ns) => selector_matches(ns, &self.ns_labels(&p.namespace)),
                None => p.namespace == policy_ns,
            })
            .filter(|p| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|s| selector_matches(s, &p.labels))
            })
            .collect()
    }

    /// Whether a selector peer picks the host.
    fn peer_is_host(&self, peer: &NetworkPolicyPeer, policy_ns: &str) -> bool {
        let Some(h) = &self.cfg.host_peer else {
            return false;
        };
        let ns_ok = match &peer.namespace_selector {
            Some(ns) => selector_matches(ns, &self.host_ns_labels(h)),
            None => h.namespace == policy_ns,
        };
        ns_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &h.labels))
    }

    /// `(matches for the pod chain, whether the host is covered)` of one peer. Named egress
    /// ports are resolved per peer pod by the caller, so selector peers also return the pods.
    fn peer(
        &self,
        peer: &NetworkPolicyPeer,
        policy_ns: &str,
        dir: Dir,
    ) -> (Matches, bool, Vec<&PodEndpoint>) {
        let field = dir.peer_field();
        if let Some(b) = &peer.ip_block {
            let Some(net) = Net::parse(&b.cidr) else {
                return (Vec::new(), false, Vec::new());
            };
            let excepts: Vec<Net> = merge(
                b.except
                    .iter()
                    .flatten()
                    .filter_map(|e| Net::parse(e))
                    .filter(|e| e.is_v4() == net.is_v4())
                    .collect(),
            );
            let fam = net.family();
            let mut m = format!("{fam} {field} {net}");
            if !excepts.is_empty() {
                let _ = write!(
                    m,
                    " {fam} {field} != {}",
                    set_of(excepts.iter().map(|e| e.to_string()))
                );
            }
            let gw = Net::V4(u32::from(self.cfg.gateway), 32);
            let host = net.contains(&gw) && !excepts.iter().any(|e| e.contains(&gw));
            return (vec![m], host, Vec::new());
        }
        let pods = self.peer_pods(peer, policy_ns);
        let m = if pods.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "ip {field} {}",
                set_of(pods.iter().map(|p| p.ip.to_string()))
            )]
        };
        (m, self.peer_is_host(peer, policy_ns), pods)
    }

    /// Port matches of a rule for a destination pod (named ports resolved on `dest`); `[""]`
    /// when the rule has no ports.
    fn ports(ports: Option<&Vec<NetworkPolicyPort>>, dest: Option<&PodEndpoint>) -> Vec<String> {
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            return vec![String::new()];
        };
        let mut out = Vec::new();
        for p in ports {
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                continue;
            }
            let number = match &p.port {
                None => {
                    out.push(format!("meta l4proto {proto}"));
                    continue;
                }
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => Some(n),
                    Err(_) => dest.and_then(|d| {
                        d.ports
                            .iter()
                            .find(|np| np.name == *s && np.protocol.eq_ignore_ascii_case(&proto))
                            .map(|np| np.port)
                    }),
                },
            };
            let Some(n) = number.filter(|n| (1..=65535).contains(n)) else {
                continue;
            };
            match p.end_port {
                Some(e) if e > n && e <= 65535 => out.push(format!("{proto} dport {n}-{e}")),
                _ => out.push(format!("{proto} dport {n}")),
            }
        }
        out
    }

    /// Rules (nft lines) of the chains of `pod` for `dir`: (pod chain, host chain).
    fn chain_rules(&self, pod: &PodEndpoint, dir: Dir) -> (Vec<String>, Vec<String>) {
        let verdict = "return";
        let mut rules = Vec::new();
        let mut host_rules = Vec::new();
        for np in self.inp.policies {
            if !selects(np, &pod.namespace, &pod.labels) {
                continue;
            }
            let (ing, egr) = policy_types(np);
            let ns = np.metadata.namespace.as_deref().unwrap_or("default");
            let spec = np.spec.as_ref();
            // (peers, ports) of each rule in this direction.
            let list: Vec<RuleRef<'_>> = match dir {
                Dir::Ingress if ing => spec
                    .and_then(|s| s.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect(),
                Dir::Egress if egr => spec
                    .and_then(|s| s.egress.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect(),
                _ => continue,
            };
            let comment = quote(&format!(
                "{ns}/{}",
                np.metadata.name.as_deref().unwrap_or("")
            ));
            for (peers, ports) in list {
                let peers: Vec<&NetworkPolicyPeer> = peers.into_iter().flatten().collect();
                if peers.is_empty() {
                    // Every peer, the host included.
                    // Egress named ports resolve on the destination pod, which an all-peers rule
                    // cannot name: only its numbered ports apply.
                    let pm = match dir {
                        Dir::Ingress => Self::ports(ports, Some(pod)),
                        Dir::Egress => Self::ports(ports, None),
                    };
                    for p in &pm {
                        rules.push(rule(&[p], verdict, &comment));
                        host_rules.push(rule(&[p], verdict, &comment));
                    }
                    continue;
                }
                for peer in peers {
                    let (matches, host, peer_pods) = self.peer(peer, ns, dir);
                    let named = has_named(ports);
                    if dir == Dir::Egress && named {
                        // Named ports are the destination pods' ports: resolve them (and the
                        // numbered ones) per selected pod; an ipBlock peer gets the numbered ones.
                        for dest in &peer_pods {
                            for p in Self::ports(ports, Some(dest)) {
                                rules.push(rule(
                                    &[&format!("ip daddr {}", dest.ip), &p],
                                    verdict,
                                    &comment,
                                ));
                            }
                        }
                        for p in Self::ports(ports, None) {
                            for m in &matches {
                                if peer_pods.is_empty() {
                                    rules.push(rule(&[m, &p], verdict, &comment));
                                }
                            }
                            if host {
                                host_rules.push(rule(&[&p], verdict, &comment));
                            }
                        }
                        continue;
                    }
                    let pm = match dir {
                        Dir::Ingress => Self::ports(ports, Some(pod)),
                        Dir::Egress => Self::ports(ports, None),
                    };
                    for p in &pm {
                        for m in &matches {
                            rules.push(rule(&[m, p], verdict, &comment));
                        }
                        if host {
                            host_rules.push(rule(&[p], verdict, &comment));
                        }
                    }
                }
            }
        }
        rules.dedup();
        host_rules.dedup();
        (rules, host_rules)
    }

    fn isolated(&self, pod: &PodEndpoint, dir: Dir) -> bool {
        self.inp.policies.iter().any(|np| {
            let (i, e) = policy_types(np);
            selects(np, &pod.namespace, &pod.labels)
                && match dir {
                    Dir::Ingress => i,
                    Dir::Egress => e,
                }
        })
    }

    fn compile(&self) -> Compiled {
        let t = &self.cfg.table;
        let (net, len) = self.cfg.subnet;
        let subnet = Net::parse(&format!("{net}/{len}"))
            .map(|n| n.to_string())
            .unwrap_or_else(|| format!("{net}/{len}"));
        let mut pods: Vec<&PodEndpoint> = self.inp.pods.iter().collect();
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        // One pod per address: a stale entry must never shadow the live one.
        let mut seen = BTreeSet::new();
        pods.retain(|p| seen.insert(p.ip));

        let mut out = String::new();
        let mut chains = String::new();
        let mut fwd_egress = Vec::new();
        let mut fwd_ingress = Vec::new();
        let mut out_ingress = Vec::new();
        let mut in_egress = Vec::new();
        let mut ingress_isolated = BTreeSet::new();
        let mut egress_isolated = BTreeSet::new();
        // Pods with the same rules share a chain: with the template's default policy every
        // sandbox of a template has identical chains, so the ruleset grows by map entries.
        let mut shared: BTreeMap<Vec<String>, String> = BTreeMap::new();
        let mut chain_for = |tag: &str, body: Vec<String>, chains: &mut String| -> String {
            let n = shared.len();
            shared
                .entry(body)
                .or_insert_with_key(|body| {
                    let name = format!("{tag}{n}");
                    let _ = writeln!(chains, "  chain {name} {{");
                    for r in body {
                        let _ = writeln!(chains, "    {r}");
                    }
                    let _ = writeln!(chains, "    counter drop");
                    let _ = writeln!(chains, "  }}");
                    name
                })
                .clone()
        };
        for pod in &pods {
            for dir in [Dir::Ingress, Dir::Egress] {
                if !self.isolated(pod, dir) {
                    continue;
                }
                let (tag, set) = match dir {
                    Dir::Ingress => ("in", &mut ingress_isolated),
                    Dir::Egress => ("out", &mut egress_isolated),
                };
                set.insert(pod.uid.clone());
                let (rules, host_rules) = self.chain_rules(pod, dir);
                // The direction is part of the key (an ingress and an egress chain with the
                // same rules differ in meaning only by where they are used).
                let mut key = vec![format!("# {tag}")];
                key.extend(rules);
                let mut host_key = vec![format!("# {tag}_host")];
                host_key.extend(host_rules);
                let c = chain_for(tag, key, &mut chains);
                let h = chain_for(&format!("{tag}_host"), host_key, &mut chains);
                match dir {
                    Dir::Ingress => {
                        fwd_ingress.push(format!("{} : jump {c}", pod.ip));
                        out_ingress.push(format!("{} : jump {h}", pod.ip));
                    }
                    Dir::Egress => {
                        fwd_egress.push(format!("{} : jump {c}", pod.ip));
                        in_egress.push(format!("{} : jump {h}", pod.ip));
                    }
                }
            }
        }
        let known: Vec<String> = pods.iter().map(|p| p.ip.to_string()).collect();
        // Every rule names this table's bridge: a packet from a sandbox comes in on it (`saddr`
        // rules), a packet to one goes out on it (`daddr` rules). So a table only ever judges
        // its own bridge's traffic, and one left by an earlier bridge with the same subnet
        // cannot drop another's.
        let bridge = &self.cfg.bridge;
        let on = |field: &str| -> String {
            if field == "saddr" {
                format!("iifname \"{bridge}\"")
            } else {
                format!("oifname \"{bridge}\"")
            }
        };
        let unknown = |field: &str, extra: &[String]| -> String {
            let mut allowed = known.clone();
            allowed.extend(extra.iter().cloned());
            let on = on(field);
            if allowed.is_empty() {
                format!("{on} ip {field} {subnet} counter drop")
            } else {
                format!(
                    "{on} ip {field} {subnet} ip {field} != {} counter drop",
                    set_of(allowed)
                )
            }
        };
        let vmap = |field: &str, entries: &[String]| -> Option<String> {
            (!entries.is_empty())
                .then(|| format!("{} ip {field} vmap {{ {} }}", on(field), entries.join(", ")))
        };
        let gw = self.cfg.gateway.to_string();

        let _ = writeln!(out, "table inet {t}\ndelete table inet {t}");
        let _ = writeln!(out, "table inet {t} {{");
        let _ = writeln!(
            out,
            "  comment \"agent-sandbox NetworkPolicy enforcement for bridge {}\"",
            self.cfg.bridge
        );
        // pod <-> pod and pod <-> outside.
        let _ = writeln!(
            out,
            "  chain forward {{\n    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(out, "    ct state established,related accept");
        let _ = writeln!(out, "    {}", unknown("saddr", &[]));
        let _ = writeln!(out, "    {}", unknown("daddr", &[]));
        for l in [vmap("saddr", &fwd_egress), vmap("daddr", &fwd_ingress)]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "    {l}");
        }
        let _ = writeln!(out, "  }}");
        // host -> pod.
        let _ = writeln!(
            out,
            "  chain output {{\n    type filter hook output priority filter; policy accept;"
        );
        let _ = writeln!(out, "    ct state established,related accept");
        let _ = writeln!(out, "    oifname \"lo\" accept");
        let _ = writeln!(
            out,
            "    {}",
            unknown("daddr", &[gw.clone(), broadcast(self.cfg.subnet)])
        );
        if let Some(l) = vmap("daddr", &out_ingress) {
            let _ = writeln!(out, "    {l}");
        }
        let _ = writeln!(out, "  }}");
        // pod -> host.
        let _ = writeln!(
            out,
            "  chain input {{\n    type filter hook input priority filter; policy accept;"
        );
        let _ = writeln!(out, "    ct state established,related accept");
        let _ = writeln!(out, "    iifname \"lo\" accept");
        let _ = writeln!(out, "    {}", unknown("saddr", &[gw]));
        if let Some(l) = vmap("saddr", &in_egress) {
            let _ = writeln!(out, "    {l}");
        }
        let _ = writeln!(out, "  }}");
        out.push_str(&chains);
        let _ = writeln!(out, "}}");

        // Anti-spoofing on the bridge ports: sets keyed by port name.
        let _ = writeln!(out, "table bridge {t}\ndelete table bridge {t}");
        let _ = writeln!(out, "table bridge {t} {{");
        let mut port_names = Vec::new();
        let mut port_macs = Vec::new();
        let mut port_ips = Vec::new();
        for pod in &pods {
            let Some(veth) = &pod.host_veth else {
                continue;
            };
            let v = quote(veth);
            port_names.push(v.clone());
            port_ips.push(format!("{v} . {}", pod.ip));
            if let Some(mac) = pod.mac.as_deref().filter(|m| is_mac(m)) {
                port_macs.push(format!("{v} . {mac}"));
            }
        }
        let set = |name: &str, ty: &str, elems: &[String]| -> String {
            if elems.is_empty() {
                format!("  set {name} {{ type {ty}; }}\n")
            } else {
                format!(
                    "  set {name} {{ type {ty}; elements = {{ {} }} }}\n",
                    elems.join(", ")
                )
            }
        };
        out.push_str(&set("ports", "ifname", &port_names));
        out.push_str(&set("port_ip", "ifname . ipv4_addr", &port_ips));
        out.push_str(&set("port_mac", "ifname . ether_addr", &port_macs));
        let _ = writeln!(
            out,
            "  chain prerouting {{\n    type filter hook prerouting priority filter; policy accept;"
        );
        // Fail closed: a port the ruleset does not know (a sandbox whose rules are not in yet)
        // cannot use the pod subnet's addresses.
        let _ = writeln!(
            out,
            "    iifname != @ports ether type ip ip saddr {subnet} counter drop"
        );
        let _ = writeln!(
            out,
            "    iifname != @ports ether type arp arp saddr ip {subnet} counter drop"
        );
        let _ = writeln!(out, "    iifname != @ports accept");
        if port_macs.len() == port_names.len() {
            let _ = writeln!(out, "    iifname . ether saddr != @port_mac counter drop");
        }
        let _ = writeln!(
            out,
            "    ether type ip iifname . ip saddr != @port_ip counter drop"
        );
        let _ = writeln!(
            out,
            "    ether type arp iifname . arp saddr ip != @port_ip counter drop"
        );
        let _ = writeln!(out, "    ether type ip6 counter drop");
        let _ = writeln!(out, "  }}");
        let _ = writeln!(out, "}}");
        Compiled {
            script: out,
            ingress_isolated,
            egress_isolated,
        }
    }
}

fn has_named(ports: Option<&Vec<NetworkPolicyPort>>) -> bool {
    ports
        .into_iter()
        .flatten()
        .any(|p| matches!(&p.port, Some(IntOrString::String(s)) if s.parse::<i32>().is_err()))
}

fn rule(matches: &[&str], verdict: &str, comment: &str) -> String {
    let m: Vec<&str> = matches.iter().copied().filter(|m| !m.is_empty()).collect();
    if m.is_empty() {
        format!("{verdict} comment {comment}")
    } else {
        format!("{} {verdict} comment {comment}", m.join(" "))
    }
}

fn broadcast((net, len): (Ipv4Addr, u8)) -> String {
    let host = if len >= 32 { 0 } else { u32::MAX >> len };
    Ipv4Addr::from(u32::from(net) | host).to_string()
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Compile the ruleset for the node (see the module docs).
pub fn compile(cfg: &FirewallConfig, inputs: PolicyInputs<'_>) -> Compiled {
    Compiler { cfg, inp: inputs }.compile()
}

/// Whether any policy selects the pod (in any direction).
pub fn any_policy_selects(
    policies: &[NetworkPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    policies
        .iter()
        .find(|np| selects(np, namespace, labels))
        .map(|np| {
            format!(
                "{}/{}",
                np.metadata.namespace.as_deref().unwrap_or("default"),
                np.metadata.name.as_deref().unwrap_or("")
            )
        })
}

#[cfg(test)]
#[path = "netpol_tests.rs"]
mod tests;
