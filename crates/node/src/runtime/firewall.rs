//! The node's NetworkPolicy enforcer: what it knows (pods with their labels and addresses, the
//! NetworkPolicies, the namespaces' labels) and the node's nftables tables, rebuilt from that
//! state and applied atomically with one `nft -f` (see [`crate::netpol`] for the rules).
//!
//! Order of events for a new sandbox: the agent records the Pod's metadata
//! ([`PolicyEnforcer::set_pod`]) → the engine's CNI ADD gives it an address (while the runtime
//! creates the container) → the engine calls the [`NetworkHook`] → the enforcer adds the
//! address and starts a rebuild that includes it, while the runtime creates and starts the
//! sandbox → the agent waits for that rebuild
//! ([`PolicyEnforcer::wait_applied`]) before it reports the Pod running. Until the rebuild is
//! in place the sandbox's address and bridge port are unknown to the ruleset, and the ruleset
//! drops every packet from or to an unknown address of the pod subnet (and every frame from an
//! unknown port that uses one), so no sandbox ever has more network than its policies give it:
//! at worst, none for the few milliseconds of the rebuild. Changes of policies, namespaces or
//! pod labels trigger a rebuild ([`PolicyEnforcer::sync`]); concurrent requests share one `nft`
//! run.
//!
//! When the host cannot enforce policies (no `nft` binary, no br_netfilter), pods that no policy
//! selects run normally and pods that a policy selects are refused with the reason: a sandbox
//! never runs with less isolation than its policy asks for.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cni::{Attachment, NetworkConfig};
use crate::engine::NetworkHook;
use crate::error::{NodeError, Result};
use crate::host;
use crate::netpol::{self, FirewallConfig, NamedPort, PodEndpoint, PolicyInputs};
use crate::spec::SandboxSpec;

/// What the enforcer needs of a Pod besides its address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMeta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
}

impl PodMeta {
    /// The policy-relevant part of a Pod.
    pub fn of(pod: &Pod) -> Self {
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port: p.container_port,
                })
            })
            .collect();
        PodMeta {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        }
    }
}

#[derive(Debug, Clone)]
struct Endpoint {
    ip: Ipv4Addr,
    host_veth: Option<String>,
    mac: Option<String>,
}

#[derive(Default)]
struct State {
    metas: HashMap<String, PodMeta>,
    endpoints: HashMap<String, Endpoint>,
    policies: BTreeMap<(String, String), NetworkPolicy>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

struct Applied {
    generation: u64,
    result: std::result::Result<(), String>,
    took: Option<Duration>,
    /// The ruleset in place (the last one `nft` accepted): a rebuild that compiles to the same
    /// script runs nothing. A label change that no policy selects on, a Pod without a policy
    /// leaving, or a second rebuild request for the same state cost no `nft` run.
    script: Option<String>,
}

/// The node's NetworkPolicy enforcer (see the module docs).
pub struct PolicyEnforcer {
    cfg: FirewallConfig,
    nft: std::result::Result<PathBuf, String>,
    state: Mutex<State>,
    requested: AtomicU64,
    applied: tokio::sync::Mutex<Applied>,
    closed: std::sync::atomic::AtomicBool,
    /// The generation that includes each sandbox's address.
    registered: Mutex<HashMap<String, u64>>,
    me: std::sync::Weak<PolicyEnforcer>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The default nftables table name of a node whose pods are on `bridge`.
pub fn table_name(bridge: &str) -> String {
    let b: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("agent_sandbox_{b}")
}

impl PolicyEnforcer {
    /// An enforcer for the node's bridge network. Checks that `nft` and br_netfilter exist;
    /// if not, [`PolicyEnforcer::available`] says why.
    pub fn new(net: &NetworkConfig) -> Result<Arc<Self>> {
        let (subnet, len) = crate::cni::parse_cidr(&net.subnet).ok_or_else(|| {
            NodeError::Config(format!("subnet {:?} is not an IPv4 CIDR", net.subnet))
        })?;
        let cfg = FirewallConfig {
            table: net
                .policy_table
                .clone()
                .unwrap_or_else(|| table_name(&net.bridge)),
            bridge: net.bridge.clone(),
            subnet: (subnet, len),
            gateway: net.gateway(),
            host_peer: net.host_peer.clone(),
        };
        let nft = match crate::runtime::find_binary("nft") {
            None => Err("nft is not installed (apt-get install nftables)".to_string()),
            Some(_) if !host::bridge_netfilter_available() => Err(
                "bridged traffic is not filtered: br_netfilter is not loaded (modprobe br_netfilter)"
                    .to_string(),
            ),
            Some(p) => Ok(p),
        };
        Ok(Arc::new_cyclic(|me| PolicyEnforcer {
            me: me.clone(),
            registered: Mutex::new(HashMap::new()),
            cfg,
            nft,
            state: Mutex::new(State::default()),
            requested: AtomicU64::new(0),
            applied: tokio::sync::Mutex::new(Applied {
                generation: 0,
                result: Ok(()),
                took: None,
                script: None,
            }),
            closed: Default::default(),
        }))
    }

    /// The firewall settings (table name, subnet, gateway, host identity).
    pub fn config(&self) -> &FirewallConfig {
        &self.cfg
    }

    /// `Err(reason)` when this host cannot enforce NetworkPolicies.
    pub fn available(&self) -> std::result::Result<(), String> {
        self.nft.as_ref().map(drop).map_err(Clone::clone)
    }

    /// Record (or update) a Pod's metadata; returns whether anything changed.
    pub fn set_pod(&self, uid: &str, meta: PodMeta) -> bool {
        let mut st = lock(&self.state);
        st.metas.insert(uid.to_string(), meta.clone()) != Some(meta)
    }

    /// Forget a Pod (its address too).
    pub fn remove_pod(&self, uid: &str) -> bool {
        let mut st = lock(&self.state);
        let a = st.metas.remove(uid).is_some();
        let b = st.endpoints.remove(uid).is_some();
        a || b
    }

    /// Record the address of a sandbox.
    pub fn set_endpoint(&self, uid: &str, att: &Attachment) {
        let ep = Endpoint {
            ip: att.ip,
            host_veth: att.host_interface(&self.cfg.bridge),
            mac: att.sandbox_mac(),
        };
        lock(&self.state).endpoints.insert(uid.to_string(), ep);
    }

    /// Forget the address of a sandbox (its network is gone).
    pub fn remove_endpoint(&self, uid: &str) -> bool {
        lock(&self.registered).remove(uid);
        lock(&self.state).endpoints.remove(uid).is_some()
    }

    /// Add or replace a NetworkPolicy; returns whether it changed.
    pub fn set_policy(&self, np: NetworkPolicy) -> bool {
        let key = policy_key(&np);
        let mut st = lock(&self.state);
        let old = st.policies.get(&key);
        if old.is_some_and(|o| o.spec == np.spec) {
            return false;
        }
        st.policies.insert(key, np);
        true
    }

    /// Remove a NetworkPolicy; returns whether it was known.
    pub fn remove_policy(&self, namespace: &str, name: &str) -> bool {
        lock(&self.state)
            .policies
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }

    /// Replace every NetworkPolicy (after a re-list).
    pub fn replace_policies(&self, all: Vec<NetworkPolicy>) {
        lock(&self.state).policies = all.into_iter().map(|np| (policy_key(&np), np)).collect();
    }

    /// Record a namespace's labels; returns whether they changed.
    pub fn set_namespace(&self, name: &str, labels: BTreeMap<String, String>) -> bool {
        lock(&self.state)
            .namespaces
            .insert(name.to_string(), labels.clone())
            != Some(labels)
    }

    /// Forget a namespace.
    pub fn remove_namespace(&self, name: &str) -> bool {
        lock(&self.state).namespaces.remove(name).is_some()
    }

    /// The first policy (`namespace/name`) that selects the Pod, if any.
    pub fn selecting_policy(&self, meta: &PodMeta) -> Option<String> {
        let st = lock(&self.state);
        let policies: Vec<NetworkPolicy> = st.policies.values().cloned().collect();
        netpol::any_policy_selects(&policies, &meta.namespace, &meta.labels)
    }

    /// Compile the current state.
    pub fn compile(&self) -> netpol::Compiled {
        let st = lock(&self.state);
        let mut pods: Vec<PodEndpoint> = st
            .endpoints
            .iter()
            .map(|(uid, ep)| {
                let meta = st.metas.get(uid).cloned().unwrap_or_default();
                PodEndpoint {
                    uid: uid.clone(),
                    namespace: meta.namespace,
                    name: meta.name,
                    labels: meta.labels,
                    ip: ep.ip,
                    host_veth: ep.host_veth.clone(),
                    mac: ep.mac.clone(),
                    ports: meta.ports,
                }
            })
            .collect();
        // One order for one state, so that the same state compiles to the same script.
        pods.sort_unstable_by(|a, b| a.uid.cmp(&b.uid));
        let policies: Vec<NetworkPolicy> = st.policies.values().cloned().collect();
        netpol::compile(
            &self.cfg,
            PolicyInputs {
                pods: &pods,
                policies: &policies,
                namespaces: &st.namespaces,
            },
        )
    }

    /// How long the last `nft` run took.
    pub async fn last_apply_time(&self) -> Option<Duration> {
        self.applied.lock().await.took
    }

    /// Rebuild and apply the ruleset from the current state. Requests made while another
    /// rebuild runs are served by the next one, which includes all of them.
    pub async fn sync(&self) -> Result<()> {
        let mine = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.apply_at_least(mine).await
    }

    /// Wait until a ruleset that includes the sandbox's address is in place (rebuilding if
    /// needed); its error if that rebuild failed.
    pub async fn wait_applied(&self, uid: &str) -> Result<()> {
        let Some(generation) = lock(&self.registered).get(uid).copied() else {
            return Ok(());
        };
        self.apply_at_least(generation).await
    }

    /// Before this node's first ruleset: removes the tables that stopped instances left for
    /// bridges that are gone and that name this node's pod subnet (their drop rules would
    /// drop this node's traffic).
    async fn remove_stale_tables(&self, nft: &std::path::Path) {
        let (net, len) = self.cfg.subnet;
        let removed = host::nft_remove_stale_tables(
            nft,
            &self.cfg.table,
            "agent_sandbox_",
            table_name,
            &format!("{net}/{len}"),
        )
        .await;
        for t in removed {
            tracing::warn!(target: "node::firewall", table = %t, subnet = %format!("{net}/{len}"),
                "removed the nftables table of a bridge that is gone: it named this node's pod subnet and would drop its traffic");
        }
    }

    async fn apply_at_least(&self, mine: u64) -> Result<()> {
        let mut applied = self.applied.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        if applied.generation >= mine {
            return applied
                .result
                .clone()
                .map_err(|message| NodeError::Firewall {
                    table: self.cfg.table.clone(),
                    message,
                });
        }
        let target = self.requested.load(Ordering::SeqCst);
        let res = match &self.nft {
            Err(reason) => Err(NodeError::Firewall {
                table: self.cfg.table.clone(),
                message: reason.clone(),
            }),
            Ok(nft) => 'apply: {
                let compiled = self.compile();
                if applied.script.as_deref() == Some(compiled.script.as_str()) {
                    break 'apply Ok(());
                }
                if applied.script.is_none() {
                    self.remove_stale_tables(nft).await;
                }
                let t = Instant::now();
                host::enable_bridge_netfilter(&self.cfg.bridge);
                let r = host::nft_apply(nft, &compiled.script).await;
                applied.took = Some(t.elapsed());
                tracing::debug!(target: "node::firewall", table = %self.cfg.table, took_ms = t.elapsed().as_secs_f64() * 1e3,
                    ingress_isolated = compiled.ingress_isolated.len(), egress_isolated = compiled.egress_isolated.len(), "applied ruleset");
                applied.script = r.is_ok().then_some(compiled.script);
                r.map_err(|message| NodeError::Firewall {
                    table: self.cfg.table.clone(),
                    message,
                })
            }
        };
        applied.generation = target;
        applied.result = res.as_ref().map(drop).map_err(|e| e.to_string());
        res
    }

    /// Delete the node's tables (clean shutdown, tests) and apply nothing afterwards. Missing
    /// tables are fine.
    pub async fn remove_tables(&self) -> Result<()> {
        let Ok(nft) = &self.nft else {
            return Ok(());
        };
        // Taken so that no rebuild runs concurrently or after.
        let _applied = self.applied.lock().await;
        self.closed.store(true, Ordering::SeqCst);
        let t = &self.cfg.table;
        let script = format!(
            "table inet {t}\ndelete table inet {t}\ntable bridge {t}\ndelete table bridge {t}\n"
        );
        host::nft_apply(nft, &script)
            .await
            .map_err(|message| NodeError::Firewall {
                table: t.clone(),
                message,
            })
    }
}

fn policy_key(np: &NetworkPolicy) -> (String, String) {
    (
        np.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        np.metadata.name.clone().unwrap_or_default(),
    )
}

impl NetworkHook for PolicyEnforcer {
    fn attached<'a>(
        &'a self,
        spec: &'a SandboxSpec,
        attachment: &'a Attachment,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.set_endpoint(&spec.id, attachment);
            if let Err(reason) = self.available() {
                let meta = lock(&self.state).metas.get(&spec.id).cloned();
                if let Some(policy) = meta.as_ref().and_then(|m| self.selecting_policy(m)) {
                    self.remove_endpoint(&spec.id);
                    return Err(NodeError::Unsupported {
                        sandbox: spec.display_name(),
                        field: format!("NetworkPolicy {policy}"),
                        reason: format!(
                            "the policy selects this pod but this node cannot enforce NetworkPolicies: {reason}"
                        ),
                    });
                }
                return Ok(());
            }
            // Rebuild while the runtime starts the sandbox: until the new ruleset is in, its
            // address and port are unknown and dropped. The agent waits for it.
            let generation = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
            lock(&self.registered).insert(spec.id.clone(), generation);
            if let Some(me) = self.me.upgrade() {
                tokio::spawn(async move {
                    if let Err(e) = me.apply_at_least(generation).await {
                        tracing::error!(target: "node::firewall", error = %e, "applying the ruleset for a new sandbox failed");
                    }
                });
            }
            Ok(())
        })
    }

    fn detached<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.remove_endpoint(id)
                && self.available().is_ok()
                && let Err(e) = self.sync().await
            {
                tracing::warn!(target: "node::firewall", sandbox = %id, error = %e, "updating the firewall after a sandbox left failed");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(ip: [u8; 4]) -> Attachment {
        Attachment {
            ip: Ipv4Addr::from(ip),
            result: serde_json::json!({}),
        }
    }

    fn meta(name: &str, team: &str) -> PodMeta {
        PodMeta {
            namespace: "default".into(),
            name: name.into(),
            labels: [("team".to_string(), team.to_string())].into(),
            ports: vec![],
        }
    }

    fn enforcer() -> Arc<PolicyEnforcer> {
        PolicyEnforcer::new(&NetworkConfig::default()).expect("the default network config")
    }

    /// The enforcer skips `nft` when a rebuild compiles to the script in place, so one state
    /// must give one script however it was reached.
    #[test]
    fn one_state_compiles_to_one_script() {
        let (a, b) = (enforcer(), enforcer());
        for (uid, ip) in [
            ("u1", [10, 88, 0, 2]),
            ("u2", [10, 88, 0, 3]),
            ("u3", [10, 88, 0, 4]),
        ] {
            a.set_pod(uid, meta(uid, "x"));
            a.set_endpoint(uid, &attachment(ip));
        }
        for (uid, ip) in [
            ("u3", [10, 88, 0, 4]),
            ("u1", [10, 88, 0, 2]),
            ("u2", [10, 88, 0, 3]),
        ] {
            b.set_pod(uid, meta(uid, "x"));
            b.set_endpoint(uid, &attachment(ip));
        }
        assert_eq!(a.compile().script, b.compile().script);
    }

    /// Without a policy that selects on labels, a label change leaves the ruleset as it is (an
    /// adopted sandbox's Pod gets new labels at every warm claim); with one, it changes it.
    #[test]
    fn a_label_change_rebuilds_only_what_a_policy_selects_on() {
        let e = enforcer();
        e.set_pod("u1", meta("p1", "x"));
        e.set_endpoint("u1", &attachment([10, 88, 0, 2]));
        let before = e.compile().script;
        assert!(e.set_pod("u1", meta("p1", "y")), "the labels changed");
        assert_eq!(e.compile().script, before);

        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "only-x", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"team": "x"}}, "policyTypes": ["Ingress"]}
        }))
        .expect("a NetworkPolicy");
        e.set_policy(np);
        let selected_y = e.compile().script;
        e.set_pod("u1", meta("p1", "x"));
        assert_ne!(e.compile().script, selected_y);
    }
}
