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

    /// Make sure `image` is available according to `policy`.
    pub async fn ensure(&self, image: &str, policy: PullPolicy) -> Result<PullReport> {
        self.ensure_with(image, policy, &PullSecrets::default())
            .await
    }

    /// [`ImageStore::ensure`] with a Pod's registry credentials, tried before the node's own.
    pub async fn ensure_with(
        &self,
        image: &str,
        policy: PullPolicy,
        secrets: &PullSecrets,
    ) -> Result<PullReport> {
        match policy {
            PullPolicy::Never => match self.get(image)? {
                Some(image) => Ok(PullReport {
                    image,
                    downloaded: 0,
                    unpacked: 0,
                }),
                None => Err(NodeError::ImageNotPresent {
                    image: image.to_string(),
                }),
            },
            PullPolicy::IfNotPresent => match self.get(image)? {
                Some(image) => Ok(PullReport {
                    image,
                    downloaded: 0,
                    unpacked: 0,
                }),
                None => self.pull_with(image, secrets).await,
            },
            PullPolicy::Always => self.pull_with(image, secrets).await,
        }
    }

    /// The credentials for `registry`: the Pod's secrets in order, then the node's docker
    /// config file, else anonymous.
    fn auth_for(&self, registry: &str, secrets: &PullSecrets) -> Result<RegistryAuth> {
        for (source, auths) in &secrets.0 {
            if let Some(auth) = auth_in(auths, registry, source)? {
                return Ok(auth);
            }
        }
        let Some(path) = &self.registry.docker_config else {
            return Ok(RegistryAuth::Anonymous);
        };
        let data = fs_err::read(path)?;
        let v: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| NodeError::json(path, e))?;
        let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
            return Ok(RegistryAuth::Anonymous);
        };
        Ok(auth_in(auths, registry, &path.display().to_string())?
            .unwrap_or(RegistryAuth::Anonymous))
    }

    fn client_for(&self, registry: &str) -> oci_client::Client {
        let mut http = self.registry.insecure.clone();
        if is_loopback_registry(registry) {
            http.push(registry.to_string());
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(http),
            connect_timeout: Some(
                self.registry
                    .connect_timeout
                    .unwrap_or(std::time::Duration::from_secs(10)),
            ),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..Default::default()
        };
        oci_client::Client::new(config)
    }

    fn map_pull_error(
        image: &str,
        what: &str,
        e: oci_client::errors::OciDistributionError,
    ) -> NodeError {
        use oci_client::errors::{DigestError, OciDistributionError as E};
        match e {
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                NodeError::DigestMismatch {
                    image: image.into(),
                    what: what.into(),
                    expected,
                    actual,
                }
            }
            E::RequestError(re) => {
                let mut msg = re.to_string();
                let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&re);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                NodeError::Pull {
                    image: image.into(),
                    reason: format!(
                        "registry unreachable while fetching {what}: {msg}; check the registry address and that it is running"
                    ),
                }
            }
            other => NodeError::Pull {
                image: image.into(),
                reason: format!("fetching {what}: {other}"),
            },
        }
    }

    /// Pull `image` from its registry (blobs already in the store are not downloaded again).
    pub async fn pull(&self, image: &str) -> Result<PullReport> {
        self.pull_with(image, &PullSecrets::default()).await
    }

    /// [`ImageStore::pull`] with a Pod's registry credentials, tried before the node's own.
    pub async fn pull_with(&self, image: &str, secrets: &PullSecrets) -> Result<PullReport> {
        let reference = parse_reference(image)?;
        let canonical = reference.whole();
        let lock = self.lock_for(&canonical);
        let _guard = lock.lock().await;
        let registry = reference.resolve_registry().to_string();
        let auth = self.auth_for(&registry, secrets)?;
        let client = self.client_for(&registry);
        let (manifest, manifest_digest) = client
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(|e| Self::map_pull_error(image, "manifest", e))?;

        if let Some(existing) = self.get(image)?
            && existing.manifest_digest == manifest_digest
        {
            return Ok(PullReport {
                image: existing,
                downloaded: 0,
                unpacked: 0,
            });
        }

        let mut downloaded = 0;
        let config_desc = Descriptor {
            media_type: manifest.config.media_type.clone(),
            digest: manifest.config.digest.clone(),
            size: manifest.config.size,
            annotations: None,
        };
        let layers: Vec<Descriptor> = manifest
            .layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
                annotations: None,
            })
            .collect();
        let missing: Vec<&Descriptor> = std::iter::once(&config_desc)
            .chain(layers.iter())
            .filter(|d| {
                let is_layer = d.digest != config_desc.digest;
                let have = self.blob_path(&d.digest).is_some_and(|p| p.exists())
                    || (is_layer && self.layer_dir(&d.digest).is_dir());
                !have
            })
            .collect();
        let state = Arc::new(ProgressState {
            blobs_total: missing.len(),
            bytes_total: missing.iter().map(|d| d.size.max(0) as u64).sum(),
            ..ProgressState::default()
        });
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(canonical.clone(), Arc::clone(&state));
        let _progress = ProgressGuard {
            store: self,
            key: canonical.clone(),
        };
        for d in std::iter::once(&config_desc).chain(layers.iter()) {
            let path = self
                .blob_path(&d.digest)
                .ok_or_else(|| NodeError::BadImage {
                    image: image.into(),
                    reason: format!("unsupported digest {:?} (only sha256)", d.digest),
                })?;
            let is_layer = d.digest != config_desc.digest;
            if path.exists() || (is_layer && self.layer_dir(&d.digest).is_dir()) {
                continue;
            }
            let tmp = self.tmp_path("blob");
            let file = tokio::fs::File::create(&tmp).await.map_err(|e| {
                NodeError::Io(std::io::Error::new(
                    e.kind(),
                    format!("create {}: {e}", tmp.display()),
                ))
            })?;
            let oci_desc = oci_client::manifest::OciDescriptor {
                media_type: d.media_type.clone(),
                digest: d.digest.clone(),
                size: d.size,
                ..Default::default()
            };
            let what = if is_layer {
                format!("layer {}", d.digest)
            } else {
                format!("config {}", d.digest)
            };
            let file = Counting {
                inner: file,
                count: Arc::clone(&state.bytes_done),
            };
            if let Err(e) = client.pull_blob(&reference, &oci_desc, file).await {
                let _ = fs_err::remove_file(&tmp);
                return Err(Self::map_pull_error(image, &what, e));
            }
            fs_err::rename(&tmp, &path)?;
            downloaded += 1;
            state
                .blobs_done
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let img = self
            .finish_import(image, &canonical, manifest_digest, config_desc, layers)
            .await?;
        Ok(PullReport {
            unpacked: img.1,
            image: img.0,
            downloaded,
        })
    }

    /// Unpack missing layers and record the image. Returns the image and the unpack count.
    async fn finish_import(
        &self,
        image: &str,
        canonical: &str,
        manifest_digest: String,
        config_desc: Descriptor,
        layers: Vec<Descriptor>,
    ) -> Result<(Image, usize)> {
        let config_path =
            self.blob_path(&config_desc.digest)
                .ok_or_else(|| NodeError::BadImage {
                    image: image.into(),
                    reason: format!("bad config digest {:?}", config_desc.digest),
                })?;
        let config_bytes = fs_err::read(&config_path)?;
        let actual = sha256_hex(&config_bytes);
        if actual != config_desc.digest {
            let _ = fs_err::remove_file(&config_path);
            return Err(NodeError::DigestMismatch {
                image: image.into(),
                what: "config".into(),
                expected: config_desc.digest,
                actual,
            });
        }
        let cfg: ConfigDoc =
            serde_json::from_slice(&config_bytes).map_err(|e| NodeError::json(&config_path, e))?;
        if let Some(arch) = cfg.architecture.as_deref()
            && arch != "amd64"
            && std::env::consts::ARCH == "x86_64"
        {
            return Err(NodeError::BadImage {
                image: image.into(),
                reason: format!("image architecture {arch} cannot run on amd64"),
            });
        }
        let mut unpacked = 0;
        for l in &layers {
            if self.unpack(image, l).await? {
                unpacked += 1;
            }
        }
        let img = Image {
            reference: canonical.to_string(),
            manifest_digest,
            config_digest: config_desc.digest,
            config: cfg.config.unwrap_or_default(),
            layers,
        };
        self.save(&img)?;
        Ok((img, unpacked))
    }

    /// Unpack one layer blob into its directory unless already there. Returns true if unpacked.
    async fn unpack(&self, image: &str, layer: &Descriptor) -> Result<bool> {
        let dst = self.layer_dir(&layer.digest);
        if dst.is_dir() {
            return Ok(false);
        }
        let lock = self.lock_for(&layer.digest);
        let _g = lock.lock().await;
        if dst.is_dir() {
            return Ok(false);
        }
        let blob = self
            .blob_path(&layer.digest)
            .ok_or_else(|| NodeError::BadImage {
                image: image.into(),
                reason: format!("bad layer digest {:?}", layer.digest),
            })?;
        let tmp = self.tmp_path("layer");
        let image_s = image.to_string();
        let layer_c = layer.clone();
        let tmp_c = tmp.clone();
        let res = tokio::task::spawn_blocking(move || {
            unpack_layer(&image_s, &blob, &layer_c.media_type, &tmp_c)
        })
        .await
        .map_err(|e| NodeError::Config(format!("unpack task failed: {e}")))?;
        if let Err(e) = res {
            let _ = fs_err::remove_dir_all(&tmp);
            return Err(e);
        }
        fs_err::rename(&tmp, &dst)?;
        // The compressed blob is no longer needed once unpacked.
        if let Some(b) = self.blob_path(&layer.digest) {
            let _ = fs_err::remove_file(b);
        }
        Ok(true)
    }

    /// Import an image from an OCI image layout directory (`oci-layout`, `index.json`,
    /// `blobs/`). `tag` selects the index entry by `org.opencontainers.image.ref.name`
    /// (the only entry when `None`); the image is recorded under `as_reference`.
    pub async fn import_oci_layout(
        &self,
        dir: &Path,
        tag: Option<&str>,
        as_reference: &str,
    ) -> Result<PullReport> {
        let reference = parse_reference(as_reference)?;
        let canonical = reference.whole();
        let bad = |reason: String| NodeError::BadImage {
            image: format!("{} (OCI layout {})", as_reference, dir.display()),
            reason,
        };
        let index_path = dir.join("index.json");
        let index: ManifestDoc = serde_json::from_slice(&fs_err::read(&index_path)?)
            .map_err(|e| NodeError::json(&index_path, e))?;
        let pick = |m: &[Descriptor]| -> Option<Descriptor> {
            match tag {
                Some(t) => m
                    .iter()
                    .find(|d| {
                        d.annotations
                            .as_ref()
                            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                            .is_some_and(|n| n == t)
                    })
                    .cloned(),
                None if m.len() == 1 => m.first().cloned(),
                None => None,
            }
        };
        let mut desc = pick(&index.manifests).ok_or_else(|| {
            bad(format!(
                "no manifest {} in index.json",
                tag.map(|t| format!("tagged {t:?}"))
                    .unwrap_or_else(|| "(the index has several; name a tag)".into())
            ))
        })?;
        let read_blob = |d: &Descriptor| -> Result<Vec<u8>> {
            let hex = hex_of(&d.digest)
                .ok_or_else(|| bad(format!("unsupported digest {:?}", d.digest)))?;
            let data = fs_err::read(dir.join("blobs/sha256").join(hex))?;
            let actual = sha256_hex(&data);
            if actual != d.digest {
                return Err(NodeError::DigestMismatch {
                    image: format!("{} (OCI layout {})", as_reference, dir.display()),
                    what: format!("blob {}", d.digest),
                    expected: d.digest.clone(),
                    actual,
                });
            }
            Ok(data)
        };
        let mut manifest: ManifestDoc;
        loop {
            let data = read_blob(&desc)?;
            manifest = serde_json::from_slice(&data).map_err(|e| {
                NodeError::json(format!("{} manifest {}", dir.display(), desc.digest), e)
            })?;
            let is_index = !manifest.manifests.is_empty()
                || manifest
                    .media_type
                    .as_deref()
                    .is_some_and(|m| m.contains("index") || m.contains("manifest.list"));
            if !is_index {
                break;
            }
            desc = manifest
                .manifests
                .iter()
                .find(|m| m.annotations.is_none() || m.media_type.contains("manifest"))
                .cloned()
                .ok_or_else(|| bad("nested index without a manifest".into()))?;
        }
        let config = manifest
            .config
            .clone()
            .ok_or_else(|| bad("manifest has no config".into()))?;
        let lock = self.lock_for(&canonical);
        let _guard = lock.lock().await;
        let mut downloaded = 0;
        for d in std::iter::once(&config).chain(manifest.layers.iter()) {
            let dst = self
                .blob_path(&d.digest)
                .ok_or_else(|| bad(format!("unsupported digest {:?}", d.digest)))?;
            let is_layer = d.digest != config.digest;
            if dst.exists() || (is_layer && self.layer_dir(&d.digest).is_dir()) {
                continue;
            }
            let hex = hex_of(&d.digest).unwrap_or_default();
            let src = dir.join("blobs/sha256").join(hex);
            let tmp = self.tmp_path("blob");
            fs_err::copy(&src, &tmp)?;
            let actual = sha256_file(&tmp)?;
            if actual != d.digest {
                let _ = fs_err::remove_file(&tmp);
                return Err(NodeError::DigestMismatch {
                    image: format!("{} (OCI layout {})", as_reference, dir.display()),
                    what: format!("blob {}", d.digest),
                    expected: d.digest.clone(),
                    actual,
                });
            }
            fs_err::rename(&tmp, &dst)?;
            downloaded += 1;
        }
        let (image, unpacked) = self
            .finish_import(
                as_reference,
                &canonical,
                desc.digest.clone(),
                config,
                manifest.layers,
            )
            .await?;
        Ok(PullReport {
            image,
            downloaded,
            unpacked,
        })
    }
}

/// Unpack one layer tar (optionally gzip-compressed) into `dst`, converting whiteouts.
fn unpack_layer(image: &str, blob: &Path, media_type: &str, dst: &Path) -> Result<()> {
    fs_err::create_dir_all(dst)?;
    let bad = |reason: String| NodeError::BadImage {
        image: image.into(),
        reason,
    };
    if media_type.contains("zstd") {
        return Err(bad(format!(
            "layer media type {media_type} (zstd) is not supported; push gzip or uncompressed layers"
        )));
    }
    let mut f = fs_err::File::open(blob)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    drop(f);
    let file = fs_err::File::open(blob)?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("reading layer {}: {e}", blob.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading layer {}: {e}", blob.display())))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad path in layer: {e}")))?
            .into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(bad(format!(
                        "layer entry {} escapes the root",
                        path.display()
                    )));
                }
            }
        }
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = dst.join(rel.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            fs_err::create_dir_all(&parent)?;
            crate::sys::lsetxattr(&parent, "trusted.overlay.opaque", b"y")
                .map_err(|e| bad(format!("marking {} opaque: {e}", parent.display())))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            fs_err::create_dir_all(&parent)?;
            let target = parent.join(hidden);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| NodeError::sys("create whiteout", &target, e))?;
            continue;
        }
        let ok = entry.unpack_in(dst).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            bad(format!("unpacking {}: {msg}", path.display()))
        })?;
        if !ok {
            return Err(bad(format!(
                "layer entry {} escapes the root",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Registry credentials a Pod brings (the docker configs of its `imagePullSecrets`), each with
/// where it came from (for messages), tried in order before the node's own.
#[derive(Debug, Clone, Default)]
pub struct PullSecrets(pub Vec<(String, serde_json::Map<String, serde_json::Value>)>);

/// A docker config's `auths` entry for `registry` (by host, with or without scheme; Docker Hub's
/// legacy key too), from `source` (named in errors).
fn auth_in(
    auths: &serde_json::Map<String, serde_json::Value>,
    registry: &str,
    source: &str,
) -> Result<Option<RegistryAuth>> {
    let candidates = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        if registry == "docker.io" || registry == "index.docker.io" {
            "https://index.docker.io/v1/".to_string()
        } else {
            String::new()
        },
    ];
    for c in candidates.iter().filter(|c| !c.is_empty()) {
        let Some(entry) = auths.get(c) else { continue };
        if let Some(tok) = entry.get("registrytoken").and_then(|t| t.as_str()) {
            return Ok(Some(RegistryAuth::Bearer(tok.to_string())));
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|t| t.as_str()),
            entry.get("password").and_then(|t| t.as_str()),
        ) {
            return Ok(Some(RegistryAuth::Basic(u.into(), p.into())));
        }
        if let Some(a) = entry.get("auth").and_then(|t| t.as_str()) {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|e| {
                    NodeError::Config(format!("{source}: auths.{c}.auth is not base64: {e}"))
                })?;
            let s = String::from_utf8_lossy(&raw);
            let (u, p) = s.split_once(':').ok_or_else(|| {
                NodeError::Config(format!("{source}: auths.{c}.auth is not user:password"))
            })?;
            return Ok(Some(RegistryAuth::Basic(u.into(), p.into())));
        }
    }
    Ok(None)
}

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
