//! Pod networking through CNI plugin binaries (bridge + host-local IPAM), spoken with
//! the CNI protocol: `CNI_*` environment variables and the network config as JSON on stdin.
//!
//! ADD, in order: (`lo` is already up: [`crate::host::create_netns`] does it without a plugin)
//! → `bridge` ADD (creates the bridge if needed, a veth pair into the namespace, an address
//! from host-local IPAM, the default route) → with `hostPort`s, `portmap` ADD chained on the
//! bridge result (DNAT from the host ports, through iptables) → the result is cached in the
//! sandbox record. DEL, in reverse: `portmap` DEL, then `bridge` DEL with the cached result
//! (removes the veth, releases the IPAM reservation; works even if the namespace is already
//! gone). The network namespace itself is made and removed by [`crate::host`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{NodeError, Result};
use crate::host::{self, Host};
use crate::netpol::HostPeer;
use crate::spec::HostPort;

/// Bridge network settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// CNI network name.
    pub name: String,
    /// Linux bridge name (at most 15 bytes).
    pub bridge: String,
    /// IPv4 subnet in CIDR form; must not overlap the host's other routes.
    pub subnet: String,
    /// Directory with the plugin binaries.
    pub plugin_dir: PathBuf,
    /// Masquerade traffic leaving the subnet (needs iptables).
    pub ip_masq: bool,
    /// nftables table for NetworkPolicy enforcement; `None`: `agent_sandbox_<bridge>`.
    pub policy_table: Option<String>,
    /// The identity the host has as a NetworkPolicy peer (see [`crate::netpol`]); the default
    /// is the router's, because `agent-sandbox up` runs the router on the host.
    pub host_peer: Option<HostPeer>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            name: "agent-sandbox".into(),
            bridge: "asbx0".into(),
            subnet: "10.88.0.0/16".into(),
            plugin_dir: PathBuf::from("/usr/lib/cni"),
            ip_masq: false,
            policy_table: None,
            host_peer: Some(HostPeer::router()),
        }
    }
}

/// Parse `a.b.c.d/len`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/')?;
    let len: u8 = l.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((a.parse().ok()?, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// Whether two CIDRs overlap.
pub fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    (u32::from(a.0) & m) == (u32::from(b.0) & m)
}

/// IPv4 routes of the host as (interface, destination, prefix length), from /proc/net/route.
pub fn host_routes() -> Vec<(String, Ipv4Addr, u8)> {
    let Ok(data) = fs_err::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    data.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let m = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The kernel prints the network-order address as a native integer.
            Some((
                f[0].to_string(),
                Ipv4Addr::from(dst.to_ne_bytes()),
                m.count_ones() as u8,
            ))
        })
        .collect()
}

impl NetworkConfig {
    /// The bridge's own address: the first address of the subnet, as host-local assigns it.
    pub fn gateway(&self) -> Ipv4Addr {
        parse_cidr(&self.subnet)
            .map(|(a, len)| {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Ipv4Addr::from((u32::from(a) & m) + 1)
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// Check names, the subnet, that it does not collide with a host route (other than our
    /// bridge's own) and that the plugins exist.
    pub fn validate(&self) -> Result<()> {
        let cfg = |m: String| NodeError::Config(m);
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return Err(cfg(format!(
                "bridge name {:?} must be 1-15 bytes",
                self.bridge
            )));
        }
        let net = parse_cidr(&self.subnet)
            .ok_or_else(|| cfg(format!("subnet {:?} is not an IPv4 CIDR", self.subnet)))?;
        if net.1 > 30 {
            return Err(cfg(format!("subnet {} is too small", self.subnet)));
        }
        for (dev, dst, len) in host_routes() {
            if dev == self.bridge || len == 0 {
                continue;
            }
            if overlaps(net, (dst, len)) {
                return Err(cfg(format!(
                    "sandbox subnet {} overlaps the host route {dst}/{len} on {dev}; configure another subnet",
                    self.subnet
                )));
            }
        }
        for p in ["bridge", "host-local"] {
            if !self.plugin_dir.join(p).is_file() {
                return Err(cfg(format!(
                    "CNI plugin {} is missing; install containernetworking-plugins or set plugin_dir",
                    self.plugin_dir.join(p).display()
                )));
            }
        }
        Ok(())
    }

    fn portmap_conf(&self, ports: &[HostPort], prev: &Value) -> Value {
        let mappings: Vec<Value> = ports
            .iter()
            .map(|p| {
                json!({"hostPort": p.host_port, "containerPort": p.container_port,
                       "protocol": p.protocol, "hostIP": p.host_ip})
            })
            .collect();
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "snat": true,
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": prev,
        })
    }

    fn bridge_conf(&self, ipam_dir: &Path) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": self.ip_masq,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            }
        })
    }
}

/// The CNI driver for one node.
#[derive(Debug, Clone)]
pub struct Cni {
    config: NetworkConfig,
    ipam_dir: PathBuf,
    /// Runs the plugins.
    host: Arc<dyn Host>,
}

/// Result of a successful ADD.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// The bridge plugin's raw result (needed for DEL).
    pub result: Value,
}

impl Attachment {
    /// The host side of the sandbox's veth pair, from the plugin result.
    pub fn host_interface(&self, bridge: &str) -> Option<String> {
        self.interfaces()
            .find(|i| {
                i.get("sandbox").is_none() && i.get("name").and_then(Value::as_str) != Some(bridge)
            })
            .and_then(|i| Some(i.get("name")?.as_str()?.to_string()))
    }

    /// The MAC address of the sandbox's interface, from the plugin result.
    pub fn sandbox_mac(&self) -> Option<String> {
        self.interfaces()
            .find(|i| {
                i.get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
            .and_then(|i| Some(i.get("mac")?.as_str()?.to_ascii_lowercase()))
    }

    fn interfaces(&self) -> impl Iterator<Item = &Value> {
        self.result
            .get("interfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }
}

const TIMEOUT: Duration = Duration::from_secs(20);
const CNI_VERSION: &str = "1.0.0";

impl Cni {
    /// A driver keeping IPAM state under `state_dir`.
    pub fn new(config: NetworkConfig, state_dir: &Path) -> Result<Self> {
        Self::with_host(config, state_dir, Arc::new(host::SystemHost))
    }

    /// [`Cni::new`] with the plugins run through `host`.
    pub fn with_host(config: NetworkConfig, state_dir: &Path, host: Arc<dyn Host>) -> Result<Self> {
        config.validate()?;
        let ipam_dir = state_dir.join("ipam");
        fs_err::create_dir_all(&ipam_dir)?;
        Ok(Cni {
            config,
            ipam_dir,
            host,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    async fn invoke(
        &self,
        sandbox: &str,
        plugin: &str,
        command: &'static str,
        netns: &Path,
        conf: &Value,
    ) -> Result<Value> {
        let mut cmd = host::command(&self.config.plugin_dir.join(plugin));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", sandbox)
            .env("CNI_NETNS", netns)
            .env(
                "CNI_IFNAME",
                if plugin == "loopback" { "lo" } else { "eth0" },
            )
            .env("CNI_PATH", &self.config.plugin_dir);
        let input = serde_json::to_vec(conf).map_err(|e| NodeError::json("CNI config", e))?;
        let out = self.host.run(cmd, Some(&input), TIMEOUT).await?;
        if out.code != 0 {
            let msg = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    let m = v.get("msg")?.as_str()?.to_string();
                    let d = v.get("details").and_then(|d| d.as_str()).unwrap_or("");
                    Some(if d.is_empty() { m } else { format!("{m}: {d}") })
                })
                .unwrap_or_else(|| out.message());
            return Err(NodeError::Cni {
                sandbox: sandbox.into(),
                plugin: plugin.into(),
                command,
                message: msg,
            });
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| NodeError::json(format!("CNI {plugin} result"), e))
    }

    /// ADD: attach the namespace at `netns`, map `host_ports` to it, and return its address.
    pub async fn add(
        &self,
        sandbox: &str,
        netns: &Path,
        host_ports: &[HostPort],
    ) -> Result<Attachment> {
        // `lo` is already up: host::create_netns does it without a plugin exec.
        let conf = self.config.bridge_conf(&self.ipam_dir);
        let result = match self.invoke(sandbox, "bridge", "ADD", netns, &conf).await {
            Ok(r) => r,
            Err(e) => {
                // Release whatever the failed ADD reserved.
                let _ = self.invoke(sandbox, "bridge", "DEL", netns, &conf).await;
                return Err(e);
            }
        };
        let ip = result
            .get("ips")
            .and_then(|ips| ips.as_array())
            .and_then(|ips| ips.first())
            .and_then(|ip| ip.get("address"))
            .and_then(|a| a.as_str())
            .and_then(parse_cidr)
            .map(|(a, _)| a);
        let Some(ip) = ip else {
            let _ = self.invoke(sandbox, "bridge", "DEL", netns, &conf).await;
            return Err(NodeError::Cni {
                sandbox: sandbox.into(),
                plugin: "bridge".into(),
                command: "ADD",
                message: format!("no IPv4 address in result {result}"),
            });
        };
        if !host_ports.is_empty() {
            if !self.config.plugin_dir.join("portmap").is_file() {
                let _ = self.del(sandbox, netns, Some(&result), &[]).await;
                return Err(NodeError::Cni {
                    sandbox: sandbox.into(),
                    plugin: "portmap".into(),
                    command: "ADD",
                    message: format!(
                        "{} is missing; install containernetworking-plugins",
                        self.config.plugin_dir.join("portmap").display()
                    ),
                });
            }
            let pm = self.config.portmap_conf(host_ports, &result);
            if let Err(e) = self.invoke(sandbox, "portmap", "ADD", netns, &pm).await {
                let _ = self.del(sandbox, netns, Some(&result), host_ports).await;
                return Err(e);
            }
        }
        Ok(Attachment { ip, result })
    }

    /// DEL: unmap the host ports, detach and release the address. Safe to repeat; tolerates
    /// a missing namespace.
    pub async fn del(
        &self,
        sandbox: &str,
        netns: &Path,
        prev: Option<&Value>,
        host_ports: &[HostPort],
    ) -> Result<()> {
        let ns: &Path = if netns.exists() { netns } else { Path::new("") };
        let mut first = None;
        if !host_ports.is_empty() {
            let pm = self
                .config
                .portmap_conf(host_ports, prev.unwrap_or(&Value::Null));
            if let Err(e) = self.invoke(sandbox, "portmap", "DEL", ns, &pm).await {
                first = Some(e);
            }
        }
        let mut conf = self.config.bridge_conf(&self.ipam_dir);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        self.invoke(sandbox, "bridge", "DEL", ns, &conf).await?;
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Addresses currently reserved in IPAM (for leak checks).
    pub fn reserved_addresses(&self) -> Vec<String> {
        let dir = self.ipam_dir.join(&self.config.name);
        let Ok(rd) = fs_err::read_dir(&dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::host::RecordingHost;

    #[test]
    fn cidr_overlap() {
        let a = parse_cidr("10.88.0.0/16").unwrap();
        assert!(overlaps(a, parse_cidr("10.88.5.0/24").unwrap()));
        assert!(overlaps(a, parse_cidr("10.0.0.0/8").unwrap()));
        assert!(!overlaps(a, parse_cidr("192.0.2.0/24").unwrap()));
    }

    #[test]
    fn reads_host_routes() {
        // Every Linux host has at least a loopback-less route table file; parsing must not panic.
        let _ = host_routes();
    }

    /// A driver whose plugins (empty files in `dir`) run through `host`, on a documentation
    /// subnet that no host route covers.
    fn driver(host: &Arc<RecordingHost>, dir: &Path) -> Cni {
        for p in ["bridge", "host-local", "portmap"] {
            fs_err::write(dir.join(p), "").unwrap();
        }
        let routes = host_routes();
        let subnet = ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"]
            .into_iter()
            .find(|s| {
                let net = parse_cidr(s).unwrap();
                !routes
                    .iter()
                    .any(|(_, dst, len)| *len > 0 && overlaps(net, (*dst, *len)))
            })
            .expect("a documentation subnet free of host routes");
        let config = NetworkConfig {
            subnet: subnet.into(),
            plugin_dir: dir.to_path_buf(),
            ..NetworkConfig::default()
        };
        Cni::with_host(config, dir, Arc::clone(host) as Arc<dyn crate::host::Host>).unwrap()
    }

    fn ran(host: &RecordingHost) -> Vec<(String, String)> {
        host.programs("CNI_COMMAND")
            .into_iter()
            .map(|(p, c)| (p, c.unwrap_or_default()))
            .collect()
    }

    fn step(plugin: &str, command: &str) -> (String, String) {
        (plugin.to_string(), command.to_string())
    }

    #[tokio::test]
    async fn add_gives_the_bridge_plugins_address() {
        let d = tempfile::tempdir().unwrap();
        let host = Arc::new(RecordingHost::new());
        let cni = driver(&host, d.path());
        host.script_program(
            "bridge",
            Some(("CNI_COMMAND", "ADD")),
            0,
            r#"{"ips": [{"address": "198.51.100.7/24"}]}"#,
            "",
        );
        let att = cni
            .add("s1", Path::new("/run/netns/s1"), &[])
            .await
            .unwrap();
        assert_eq!(att.ip, Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(ran(&host), [step("bridge", "ADD")]);
    }

    #[tokio::test]
    async fn a_failed_or_addressless_add_is_released() {
        let d = tempfile::tempdir().unwrap();
        let host = Arc::new(RecordingHost::new());
        let cni = driver(&host, d.path());
        host.script_program(
            "bridge",
            Some(("CNI_COMMAND", "ADD")),
            1,
            r#"{"msg": "no IP addresses available", "details": "range full"}"#,
            "",
        );
        let err = cni.add("s1", Path::new("/ns"), &[]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            NodeError::Cni {
                sandbox: "s1".into(),
                plugin: "bridge".into(),
                command: "ADD",
                message: "no IP addresses available: range full".into(),
            }
            .to_string()
        );
        assert_eq!(ran(&host), [step("bridge", "ADD"), step("bridge", "DEL")]);

        let host = Arc::new(RecordingHost::new());
        let cni = driver(&host, d.path());
        host.script_program(
            "bridge",
            Some(("CNI_COMMAND", "ADD")),
            0,
            r#"{"ips": []}"#,
            "",
        );
        assert!(cni.add("s1", Path::new("/ns"), &[]).await.is_err());
        assert_eq!(ran(&host), [step("bridge", "ADD"), step("bridge", "DEL")]);
    }

    #[tokio::test]
    async fn host_ports_are_mapped_after_the_address_and_unmapped_before_its_release() {
        let d = tempfile::tempdir().unwrap();
        let host = Arc::new(RecordingHost::new());
        let cni = driver(&host, d.path());
        host.script_program(
            "bridge",
            Some(("CNI_COMMAND", "ADD")),
            0,
            r#"{"ips": [{"address": "198.51.100.8/24"}]}"#,
            "",
        );
        let ports = [HostPort {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }];
        let att = cni.add("s1", Path::new("/ns"), &ports).await.unwrap();
        cni.del("s1", Path::new("/ns"), Some(&att.result), &ports)
            .await
            .unwrap();
        assert_eq!(
            ran(&host),
            [
                step("bridge", "ADD"),
                step("portmap", "ADD"),
                step("portmap", "DEL"),
                step("bridge", "DEL"),
            ]
        );
    }
}
