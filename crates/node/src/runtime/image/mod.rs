//! The image store: pull from registries (oci-client) or import OCI layout directories, verify
//! every blob against its digest, keep blobs and unpacked layers once per digest, and hand out
//! the read-only layer directories that sandbox overlays stack.
//!
//! Pull, in order: resolve the manifest (digest checked by the client against the registry's
//! header and any digest in the reference) → if the manifest digest is already recorded with
//! all layers unpacked, stop (cache hit) → fetch the config blob → for each layer not yet
//! unpacked: fetch the blob into a temporary file (digest checked while streaming), rename it
//! into `blobs/`, unpack it into a temporary directory converting whiteouts to overlay form
//! (`.wh.x` → a 0/0 character device `x`, `.wh..wh..opq` → `trusted.overlay.opaque=y`), rename
//! the directory into `layers/` → write the image record.
//!
//! `mod.rs` holds the store and its records; `pull.rs` pulls and imports images;
//! `layer.rs` unpacks a layer.

mod layer;
mod pull;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{NodeError, Result};
use crate::spec::PullPolicy;

use layer::unpack_layer;

/// A content descriptor (the subset of the OCI descriptor the store needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: i64,
    /// Annotations (index entries carry the tag in `org.opencontainers.image.ref.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// The runtime part of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `Env`.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `Entrypoint`.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// `User`.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    architecture: Option<String>,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Canonical reference (`registry/repository:tag`).
    pub reference: String,
    /// Digest of the manifest.
    pub manifest_digest: String,
    /// Digest of the config blob.
    pub config_digest: String,
    /// Runtime config.
    pub config: RunConfig,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// What an `ensure`/`pull` did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image.
    pub image: Image,
    /// Blobs downloaded in this call (0 on a cache hit).
    pub downloaded: usize,
    /// Layers unpacked in this call.
    pub unpacked: usize,
}

/// Registry access settings.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registries (`host:port`) that may be reached over plain HTTP in addition to loopback.
    pub insecure: Vec<String>,
    /// A docker `config.json` with `auths`.
    pub docker_config: Option<PathBuf>,
    /// Connect timeout.
    pub connect_timeout: Option<std::time::Duration>,
}

/// How far a running pull is (see [`ImageStore::pull_progress`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// Blobs to download.
    pub blobs_total: usize,
    /// Blobs downloaded.
    pub blobs_done: usize,
    /// Bytes to download.
    pub bytes_total: u64,
    /// Bytes downloaded.
    pub bytes_done: u64,
}

#[derive(Default)]
struct ProgressState {
    blobs_total: usize,
    bytes_total: u64,
    blobs_done: std::sync::atomic::AtomicUsize,
    bytes_done: Arc<std::sync::atomic::AtomicU64>,
}

/// Counts the bytes written through it (pull progress).
struct Counting<W> {
    inner: W,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.count
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Content-addressed image store under one directory.
pub struct ImageStore {
    root: PathBuf,
    registry: RegistryConfig,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    progress: Mutex<HashMap<String, Arc<ProgressState>>>,
}

/// Removes a pull's progress entry when the pull ends.
struct ProgressGuard<'a> {
    store: &'a ImageStore,
    key: String,
}

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        self.store
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

fn hex_of(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parse an image reference into its canonical form.
pub fn parse_reference(image: &str) -> Result<Reference> {
    image
        .parse::<Reference>()
        .map_err(|e| NodeError::InvalidReference {
            image: image.to_string(),
            reason: e.to_string(),
        })
}

impl ImageStore {
    /// Open (create) a store under `root`.
    pub fn open(root: impl Into<PathBuf>, registry: RegistryConfig) -> Result<Self> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "refs", "tmp"] {
            fs_err::create_dir_all(root.join(d))?;
        }
        Ok(ImageStore {
            root,
            registry,
            locks: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
        })
    }

    /// Progress of the pull of `image` running now, if any.
    pub fn pull_progress(&self, image: &str) -> Option<PullProgress> {
        let key = parse_reference(image).ok()?.whole();
        let m = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let p = m.get(&key)?;
        Some(PullProgress {
            blobs_total: p.blobs_total,
            blobs_done: p.blobs_done.load(std::sync::atomic::Ordering::Relaxed),
            bytes_total: p.bytes_total,
            bytes_done: p.bytes_done.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        hex_of(digest).map(|h| self.root.join("blobs/sha256").join(h))
    }

    /// Directory holding the unpacked layer with this (compressed) digest.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(hex_of(digest).unwrap_or("invalid"))
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        let h = format!("{:x}", Sha256::digest(reference.as_bytes()));
        self.root.join("refs").join(format!("{}.json", &h[..32]))
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(key.to_string()).or_default().clone()
    }

    /// The recorded image for a reference, if its layers are all unpacked.
    pub fn get(&self, image: &str) -> Result<Option<Image>> {
        let r = parse_reference(image)?;
        let path = self.ref_path(&r.whole());
        let Ok(data) = fs_err::read(&path) else {
            return Ok(None);
        };
        let img: Image = serde_json::from_slice(&data).map_err(|e| NodeError::json(&path, e))?;
        if img
            .layers
            .iter()
            .all(|l| self.layer_dir(&l.digest).is_dir())
        {
            Ok(Some(img))
        } else {
            Ok(None)
        }
    }

    /// Every recorded image whose layers are all unpacked, sorted by reference.
    pub fn list(&self) -> Result<Vec<Image>> {
        let mut images = Vec::new();
        for entry in fs_err::read_dir(self.root.join("refs"))? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let img: Image = serde_json::from_slice(&fs_err::read(&path)?)
                .map_err(|e| NodeError::json(&path, e))?;
            if img
                .layers
                .iter()
                .all(|l| self.layer_dir(&l.digest).is_dir())
            {
                images.push(img);
            }
        }
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(images)
    }

    /// Layer directories for an overlay `lowerdir`, topmost first.
    pub fn lower_dirs(&self, img: &Image) -> Vec<PathBuf> {
        img.layers
            .iter()
            .rev()
            .map(|l| self.layer_dir(&l.digest))
            .collect()
    }

    fn save(&self, img: &Image) -> Result<()> {
        let path = self.ref_path(&img.reference);
        let tmp = self.tmp_path("ref");
        fs_err::write(
            &tmp,
            serde_json::to_vec_pretty(img).map_err(|e| NodeError::json(&path, e))?,
        )?;
        fs_err::rename(&tmp, &path)?;
        Ok(())
    }
}

#[cfg(test)]
impl ImageStore {
    /// Record `reference` as a pulled image of one layer holding `files` (path, content,
    /// mode) with `cmd` as its command: an image for unit tests, without a registry.
    pub(crate) fn insert_for_tests(
        &self,
        reference: &str,
        files: &[(&str, &[u8], u32)],
        cmd: &[&str],
    ) -> Result<Image> {
        use std::os::unix::fs::PermissionsExt;
        let reference = parse_reference(reference)?.whole();
        let digest = sha256_hex(reference.as_bytes());
        let dir = self.layer_dir(&digest);
        fs_err::create_dir_all(&dir)?;
        for (path, data, mode) in files {
            let p = dir.join(path.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                fs_err::create_dir_all(parent)?;
            }
            fs_err::write(&p, data)?;
            fs_err::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        }
        let img = Image {
            reference,
            manifest_digest: digest.clone(),
            config_digest: digest.clone(),
            config: RunConfig {
                cmd: Some(cmd.iter().map(|c| c.to_string()).collect()),
                ..RunConfig::default()
            },
            layers: vec![Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest,
                size: 0,
                annotations: None,
            }],
        };
        self.save(&img)?;
        Ok(img)
    }
}

/// Registry credentials a Pod brings (the docker configs of its `imagePullSecrets`), each with
/// where it came from (for messages), tried in order before the node's own.
#[derive(Debug, Clone, Default)]
pub struct PullSecrets(pub Vec<(String, serde_json::Map<String, serde_json::Value>)>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("registry.example:5000"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
    }

    #[test]
    fn digest_hex() {
        assert!(hex_of("sha256:abc").is_none());
        let d = sha256_hex(b"x");
        assert!(hex_of(&d).is_some());
    }
}
