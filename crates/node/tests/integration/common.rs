//! Shared test support: images built from local packages (busybox-static) as OCI layers and
//! layouts, a local `docker-registry` on a loopback port, and an engine guard that removes
//! every sandbox (mounts, netns, cgroups) even when a test fails.
#![allow(dead_code, unreachable_pub, clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sandbox_node::cni::NetworkConfig;
use agent_sandbox_node::{EngineConfig, HandlerKind, SandboxEngine};
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";

/// True (and says why) when the test must be skipped because something is truly absent. The
/// reason goes straight to stderr, past the test harness's capture, so a run without root
/// shows which tests did not run instead of passing silently; with
/// `AGENT_SANDBOX_REQUIRE_PRIVILEGED_TESTS=1` a skip fails the test instead.
pub fn skip_unless(cond: bool, why: &str) -> bool {
    if !cond {
        let test = std::thread::current()
            .name()
            .unwrap_or("a node integration test")
            .to_string();
        assert!(
            std::env::var_os("AGENT_SANDBOX_REQUIRE_PRIVILEGED_TESTS").is_none(),
            "{test} cannot run: {why}"
        );
        let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    }
    !cond
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn have_busybox() -> bool {
    Path::new(BUSYBOX).is_file()
}

/// Skip unless root with the given runtime installed and busybox-static present.
/// The handler the tests use by default: crun when installed (the node's own default here),
/// else runc.
pub fn default_kind() -> HandlerKind {
    [HandlerKind::Crun, HandlerKind::Runc]
        .into_iter()
        .find(|k| agent_sandbox_node::runtime::find_binary(k.name()).is_some())
        .unwrap_or(HandlerKind::Runc)
}

pub fn need(handler: Option<HandlerKind>) -> bool {
    if skip_unless(is_root(), "needs root") {
        return true;
    }
    if skip_unless(
        have_busybox(),
        "busybox-static (/bin/busybox) is not installed",
    ) {
        return true;
    }
    if let Some(h) = handler
        && skip_unless(
            agent_sandbox_node::runtime::find_binary(h.name()).is_some(),
            &format!("{} is not installed", h.name()),
        )
    {
        return true;
    }
    false
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn tar_header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// A layer under construction (uncompressed tar in memory).
pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let h = tar_header(path, tar::EntryType::Directory, mode, 0);
        self.b.append(&h, std::io::empty()).unwrap();
        self
    }
    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let h = tar_header(path, tar::EntryType::Regular, mode, data.len() as u64);
        self.b.append(&h, data).unwrap();
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = tar_header(path, tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    /// gzip-compressed layer bytes.
    pub fn gzip(self) -> Vec<u8> {
        let raw = self.b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap()
    }
}

/// The busybox base layer: /bin/busybox with applet links, /etc/passwd and /etc/group, /tmp.
pub fn busybox_layer() -> Vec<u8> {
    let bb = fs_err::read(BUSYBOX).unwrap();
    let out = Command::new(BUSYBOX).arg("--list").output().unwrap();
    let applets = String::from_utf8_lossy(&out.stdout).to_string();
    let mut l = LayerBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, &bb)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\nagent:x:1000:\n")
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .dir("home/agent", 0o755)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("dev", 0o755)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755);
    for a in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        l = l.symlink(&format!("bin/{a}"), "/bin/busybox");
    }
    l.gzip()
}

/// An image: layers (gzip) plus a config.
pub struct TestImage {
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
}

impl TestImage {
    pub fn new(layers: Vec<Vec<u8>>, cmd: &[&str], env: &[&str]) -> Self {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| {
                let mut d = flate2::read::GzDecoder::new(&l[..]);
                let mut raw = Vec::new();
                std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
                sha256(&raw)
            })
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": env, "Cmd": cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        TestImage {
            layers,
            config: serde_json::to_vec(&config).unwrap(),
        }
    }

    /// busybox with `sh` as command.
    pub fn busybox() -> Self {
        Self::new(
            vec![busybox_layer()],
            &["/bin/sh"],
            &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        )
    }

    fn manifest(&self) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(l), "size": l.len()
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&self.config), "size": self.config.len()},
            "layers": layers,
        }))
        .unwrap()
    }

    /// Write an OCI image layout with one manifest tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> String {
        let blobs = dir.join("blobs/sha256");
        fs_err::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let d = sha256(data);
            fs_err::write(blobs.join(d.trim_start_matches("sha256:")), data).unwrap();
            d
        };
        for l in &self.layers {
            put(l);
        }
        put(&self.config);
        let m = self.manifest();
        let md = put(&m);
        fs_err::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs_err::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": md, "size": m.len(),
                    "annotations": {"org.opencontainers.image.ref.name": tag}}]
            }))
            .unwrap(),
        )
        .unwrap();
        md
    }

    /// Push to a registry with oci-client (plain HTTP, loopback).
    pub async fn push(&self, reference: &str) -> String {
        self.push_as(reference, &oci_client::secrets::RegistryAuth::Anonymous)
            .await
    }

    /// [`Self::push`] with credentials.
    pub async fn push_as(
        &self,
        reference: &str,
        auth: &oci_client::secrets::RegistryAuth,
    ) -> String {
        use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
        let r: oci_client::Reference = reference.parse().unwrap();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let layers: Vec<ImageLayer> = self
            .layers
            .iter()
            .map(|l| ImageLayer::oci_v1_gzip(l.clone(), None))
            .collect();
        let config = Config::oci_v1(self.config.clone(), None);
        let manifest: oci_client::manifest::OciImageManifest =
            serde_json::from_slice(&self.manifest()).unwrap();
        client
            .push(&r, &layers, config, auth, Some(manifest))
            .await
            .unwrap();
        // The client re-serialises the manifest: ask the registry for the digest it stored.
        client.fetch_manifest_digest(&r, auth).await.unwrap()
    }
}

/// A Debian `docker-registry` on a free loopback port, killed on drop.
pub struct Registry {
    pub addr: String,
    pub storage: tempfile::TempDir,
    child: Child,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn binary() -> Option<PathBuf> {
        agent_sandbox_node::runtime::find_binary("docker-registry")
    }

    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// A registry that wants HTTP basic auth of `user:password` (`htpasswd` with the bcrypt
    /// hash of the password).
    pub fn start_with_auth(user: &str, bcrypt_hash: &str) -> Registry {
        Self::start_with(Some(format!("{user}:{bcrypt_hash}\n")))
    }

    fn start_with(htpasswd: Option<String>) -> Registry {
        let storage = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = storage.path().join("config.yml");
        let auth = match htpasswd {
            Some(lines) => {
                let path = storage.path().join("htpasswd");
                fs_err::write(&path, lines).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        fs_err::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                storage.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(Self::binary().unwrap())
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            addr,
            storage,
            child,
        }
    }

    /// Path of a blob's data file in the registry's filesystem storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test environment: temp dirs and an engine; on drop removes every sandbox left.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub engine: Option<Arc<SandboxEngine>>,
    pub config: EngineConfig,
}

impl Env {
    pub fn config(dir: &Path) -> EngineConfig {
        let mut c = EngineConfig::new(dir.join("root"), dir.join("run"));
        // Unique per directory (tests of one binary run in parallel) and the same for every
        // process that opens it (the recovery test's child).
        let tag: String = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        c.cgroup_parent = format!("agent-sandbox-test-{tag}");
        c
    }

    pub async fn new(handlers: &[HandlerKind], network: Option<NetworkConfig>) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("asbx-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut config = Self::config(dir.path());
        config.handlers = handlers.to_vec();
        config.network = network;
        let engine = Arc::new(SandboxEngine::new(config.clone()).await.unwrap());
        Env {
            dir,
            engine: Some(engine),
            config,
        }
    }

    pub fn engine(&self) -> &SandboxEngine {
        self.engine.as_ref().unwrap()
    }

    /// Import the busybox image from an OCI layout as `reference`.
    pub async fn busybox(&self, reference: &str) {
        let layout = self.dir.path().join("layout-busybox");
        if !layout.exists() {
            TestImage::busybox().write_layout(&layout, "test");
        }
        self.engine()
            .images()
            .import_oci_layout(&layout, Some("test"), reference)
            .await
            .unwrap();
    }

    /// Drop the engine object and open a new one on the same directories.
    pub async fn reopen(&mut self) {
        self.engine = None;
        self.engine = Some(Arc::new(
            SandboxEngine::new(self.config.clone()).await.unwrap(),
        ));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        cleanup(
            engine,
            self.dir.path().to_path_buf(),
            self.config.cgroup_parent.clone(),
            None,
        );
    }
}

/// Remove every sandbox of `engine` (re-adopting any left on disk), then leftover mounts under
/// `root`, the cgroup parent and, if given, the firewall tables. Runs on its own thread.
pub fn cleanup(
    engine: Arc<SandboxEngine>,
    root: PathBuf,
    cgroup_parent: String,
    enforcer: Option<Arc<agent_sandbox_node::firewall::PolicyEnforcer>>,
) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = engine.recover().await;
            for id in engine.list() {
                if let Err(e) = engine.remove(&id).await {
                    eprintln!("cleanup of sandbox {id} failed: {e}");
                }
            }
            if let Some(enf) = enforcer
                && let Err(e) = enf.remove_tables().await
            {
                eprintln!("removing the firewall tables failed: {e}");
            }
        });
        for m in agent_sandbox_node::host::mounts_under(&root).iter().rev() {
            let _ = agent_sandbox_node::host::unmount(m);
        }
        let _ = agent_sandbox_node::host::remove_cgroup(&format!("/{cgroup_parent}"));
    })
    .join();
}

/// Leak check after all sandboxes of an env were removed.
pub fn assert_no_leaks(env: &Env) {
    let root = env.dir.path();
    let mounts = agent_sandbox_node::host::mounts_under(root);
    assert!(mounts.is_empty(), "leaked mounts: {mounts:?}");
    let netns: Vec<_> = fs_err::read_dir(root.join("run/netns"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(netns.is_empty(), "leaked netns: {netns:?}");
    let parent = format!("/{}", env.config.cgroup_parent);
    for ctrl in ["memory", "pids", "cpu", "freezer", "devices"] {
        let d = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(parent.trim_start_matches('/'));
        if d.is_dir() {
            let kids: Vec<_> = fs_err::read_dir(&d)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect();
            assert!(kids.is_empty(), "leaked cgroups: {kids:?}");
        }
    }
    let sandboxes: Vec<_> = fs_err::read_dir(root.join("root/sandboxes"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(sandboxes.is_empty(), "leaked sandbox dirs: {sandboxes:?}");
}

/// A bridge network of its own for one test: bridge `asnt<pid><salt>`, a /24 in 10.100.0.0/16
/// (third octet from the pid and salt) that collides with no host route, and its own
/// nftables table name. `n` is the third octet, for companion subnets (10.101.n.0/24...).
pub fn test_network(salt: u32) -> Option<(NetworkConfig, u8)> {
    let routes = agent_sandbox_node::cni::host_routes();
    let pid = std::process::id();
    for i in 0..250u32 {
        let third = ((pid + salt * 37 + i) % 250 + 1) as u8;
        let subnet = format!("10.100.{third}.0/24");
        let net = agent_sandbox_node::cni::parse_cidr(&subnet).unwrap();
        let private = agent_sandbox_node::cni::parse_cidr(&format!("10.101.{third}.0/24")).unwrap();
        if routes.iter().all(|(_, dst, len)| {
            *len == 0
                || (!agent_sandbox_node::cni::overlaps(net, (*dst, *len))
                    && !agent_sandbox_node::cni::overlaps(private, (*dst, *len)))
        }) {
            return Some((
                NetworkConfig {
                    name: format!("asbx-test-{pid}-{salt}"),
                    bridge: format!("asnt{}", (pid * 10 + salt) % 100_000_000),
                    subnet,
                    policy_table: Some(format!("asbx_test_{pid}_{salt}")),
                    ..NetworkConfig::default()
                },
                third,
            ));
        }
    }
    None
}

/// Deletes a bridge (and with it nothing else) on drop.
pub struct BridgeGuard(pub String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

pub fn have_cni() -> bool {
    Path::new("/usr/lib/cni/bridge").is_file()
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?} failed");
}

/// A TCP server in a network namespace the test makes, on a private address (10.101.n.2)
/// routed from the host through a veth pair (10.101.n.1 on the host side). Every connection
/// gets `marker` and is closed. Stopped and removed on drop.
pub struct PrivateServer {
    pub addr: std::net::SocketAddr,
    netns: PathBuf,
    host_if: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PrivateServer {
    pub fn start(dir: &Path, n: u8, salt: u32, marker: &str) -> PrivateServer {
        let netns = dir.join(format!("private-{salt}.netns"));
        agent_sandbox_node::host::create_netns(&netns).unwrap();
        let pid = std::process::id();
        let host_if = format!("aspv{}", (pid * 10 + salt) % 100_000_000);
        let ns_if = format!("{host_if}p");
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", netns.to_str().unwrap()]);
        ip(&["addr", "add", &format!("10.101.{n}.1/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let ns_arg = format!("--net={}", netns.display());
        for args in [
            vec!["addr", "add", &format!("10.101.{n}.2/30"), "dev", &ns_if],
            vec!["link", "set", &ns_if, "up"],
            vec!["route", "add", "default", "via", &format!("10.101.{n}.1")],
        ] {
            let mut full = vec![ns_arg.as_str(), "ip"];
            full.extend(args.iter().map(|a| -> &str { a }));
            let st = Command::new("nsenter").args(&full).status().unwrap();
            assert!(st.success(), "nsenter {full:?} failed");
        }
        let addr: std::net::SocketAddr = format!("10.101.{n}.2:8080").parse().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (netns, stop, marker) = (netns.clone(), Arc::clone(&stop), marker.to_string());
            std::thread::spawn(move || {
                let f = fs_err::File::open(&netns).unwrap();
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let l = TcpListener::bind(addr).unwrap();
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                // Bounded: at most ten minutes, checking the stop flag every 10 ms.
                for _ in 0..60_000 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(marker.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        PrivateServer {
            addr,
            netns,
            host_if,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = agent_sandbox_node::host::remove_netns(&self.netns);
    }
}

/// The embedded API server, a sandbox engine and a node agent driving it: Pods created through
/// the API run as sandboxes. Drop removes the sandboxes and the firewall tables.
pub struct AgentEnv {
    pub env: Env,
    pub server: agent_sandbox_apiserver::RunningApiServer,
    pub client: kube::Client,
    pub agent: Arc<agent_sandbox_node::agent::NodeAgent>,
    config: agent_sandbox_node::agent::AgentConfig,
    task: tokio::task::JoinHandle<()>,
    _api_dir: tempfile::TempDir,
}

pub const NODE: &str = "test-node";

impl AgentEnv {
    pub async fn new(handlers: &[HandlerKind], network: Option<NetworkConfig>) -> AgentEnv {
        Self::with_config(handlers, network, Default::default()).await
    }

    pub async fn with_config(
        handlers: &[HandlerKind],
        network: Option<NetworkConfig>,
        config: agent_sandbox_node::agent::AgentConfig,
    ) -> AgentEnv {
        let env = Env::new(handlers, network).await;
        let api_dir = tempfile::Builder::new()
            .prefix("asbx-api-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut cfg = agent_sandbox_apiserver::Config::new(api_dir.path());
        cfg.tcp_addr = None;
        cfg.node_name = NODE.into();
        // The node's tests are about the node: no fsync per API write (the API server's own
        // tests cover durability), so their timing does not depend on the disk's.
        cfg.durability = agent_sandbox_apiserver::Durability::ProcessCrash;
        let server = agent_sandbox_apiserver::ApiServer::start(cfg)
            .await
            .unwrap();
        let client = server.client();
        let agent = agent_sandbox_node::agent::NodeAgent::with_config(
            client.clone(),
            Arc::clone(env.engine.as_ref().unwrap()),
            NODE,
            config.clone(),
        );
        agent.register().await.unwrap();
        agent.recover().await.unwrap();
        let task = tokio::spawn(Arc::clone(&agent).run());
        AgentEnv {
            env,
            server,
            client,
            agent,
            config,
            task,
            _api_dir: api_dir,
        }
    }

    pub fn engine(&self) -> &SandboxEngine {
        self.env.engine()
    }

    /// Stop the agent, drop the engine object, and start both again on the same directories
    /// and API server (what a restart of `agent-sandbox up` does to the node).
    pub async fn restart_agent(&mut self) {
        self.agent.stop();
        self.task.abort();
        assert!(self.agent.wait_idle_blocking(Duration::from_secs(60)));
        self.env.reopen().await;
        self.agent = agent_sandbox_node::agent::NodeAgent::with_config(
            self.client.clone(),
            Arc::clone(self.env.engine.as_ref().unwrap()),
            NODE,
            self.config.clone(),
        );
        self.agent.register().await.unwrap();
        self.agent.recover().await.unwrap();
        self.task = tokio::spawn(Arc::clone(&self.agent).run());
    }

    pub async fn create_pod(&self, pod: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client.clone(), &ns);
        api.create(&Default::default(), &pod).await.unwrap()
    }

    /// Poll the Pod until `pred` holds (bounded by `timeout`); panics with the last status.
    pub async fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&k8s_openapi::api::core::v1::Pod) -> bool,
    ) -> k8s_openapi::api::core::v1::Pod {
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.client.clone(), ns);
        let deadline = Instant::now() + timeout;
        loop {
            let pod = api.get_opt(name).await.unwrap();
            if let Some(p) = &pod
                && pred(p)
            {
                return p.clone();
            }
            assert!(
                Instant::now() < deadline,
                "pod {ns}/{name} did not reach the expected state within {timeout:?}: {:?}",
                pod.and_then(|p| p.status)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the Pod runs with a pod IP; returns (uid, ip).
    pub async fn wait_running(&self, ns: &str, name: &str) -> (String, std::net::Ipv4Addr) {
        let p = self
            .wait_pod(ns, name, Duration::from_secs(60), |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
            })
            .await;
        let ip = p.status.unwrap().pod_ip.unwrap().parse().unwrap();
        (p.metadata.uid.unwrap(), ip)
    }

    /// Reasons (with notes) of the events about the Pod `uid` in namespace `default`.
    pub async fn events_of(&self, uid: &str) -> Vec<(String, String)> {
        let api: kube::Api<k8s_openapi::api::events::v1::Event> =
            kube::Api::namespaced(self.client.clone(), "default");
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// The container log of a Pod's sandbox.
    pub fn log(&self, uid: &str) -> String {
        fs_err::read_to_string(self.engine().log_path(uid)).unwrap_or_default()
    }

    /// Poll a Pod's log until it contains one of `needles` (bounded); returns the log.
    pub async fn wait_log(&self, uid: &str, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log(uid);
            if needles.iter().any(|n| log.contains(n)) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log of {uid} has none of {needles:?} after {timeout:?}: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for AgentEnv {
    fn drop(&mut self) {
        self.agent.stop();
        self.task.abort();
        if !self.agent.wait_idle_blocking(Duration::from_secs(60)) {
            eprintln!("the node agent was still busy after 60 s");
        }
        let Some(engine) = self.env.engine.take() else {
            return;
        };
        cleanup(
            engine,
            self.env.dir.path().to_path_buf(),
            self.env.config.cgroup_parent.clone(),
            self.agent.enforcer().cloned(),
        );
    }
}
