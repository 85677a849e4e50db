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

/// True (and prints why) when the test must be skipped because something is truly absent.
pub fn skip_unless(cond: bool, why: &str) -> bool {
    if !cond {
        println!("SKIP: {why}");
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
            .push(
                &r,
                &layers,
                config,
                &oci_client::secrets::RegistryAuth::Anonymous,
                Some(manifest),
            )
            .await
            .unwrap();
        // The client re-serialises the manifest: ask the registry for the digest it stored.
        client
            .fetch_manifest_digest(&r, &oci_client::secrets::RegistryAuth::Anonymous)
            .await
            .unwrap()
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
        let storage = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = storage.path().join("config.yml");
        fs_err::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
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
        let root = self.dir.path().to_path_buf();
        let cgroup_parent = self.config.cgroup_parent.clone();
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
            });
            for m in agent_sandbox_node::host::mounts_under(&root).iter().rev() {
                let _ = agent_sandbox_node::host::unmount(m);
            }
            let _ = agent_sandbox_node::host::remove_cgroup(&format!("/{cgroup_parent}"));
        })
        .join();
    }
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
