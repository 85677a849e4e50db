//! Pulling an image from a registry (with the node's and a Pod's credentials) and importing
//! one from an OCI layout directory: manifests, configs and blobs by digest, then layers.

use super::*;

impl ImageStore {
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
