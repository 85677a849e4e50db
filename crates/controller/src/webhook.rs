//! The CRD conversion webhook of cluster mode (upstream-core §12.4): HTTPS `POST /convert`
//! answering `ConversionReview`s (`apiextensions.k8s.io/v1` and `v1beta1`) with the api crate's
//! lossless conversion, serving a certificate and key from a directory and picking up new ones
//! when the files change (cert-manager, a re-mounted Secret).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_sandbox_api::conversion;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kube::core::conversion::ConversionReview;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

/// The path the CRDs' `clientConfig.service.path` names.
pub const PATH: &str = "/convert";
/// Upstream's `--webhook-port`.
pub const DEFAULT_PORT: u16 = 9443;
/// Upstream's `--webhook-cert-dir`.
pub const DEFAULT_CERT_DIR: &str = "/tmp/k8s-webhook-server/serving-certs";
/// File name of the serving certificate in the cert directory.
pub const CERT_NAME: &str = "tls.crt";
/// File name of the serving key in the cert directory.
pub const KEY_NAME: &str = "tls.key";
/// The combined certificate-and-key file accepted when the default names are absent.
pub const COMBINED_NAME: &str = "cert.pem";
/// Largest ConversionReview accepted (a list conversion carries many objects).
pub const MAX_BODY: usize = 64 << 20;
/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Failures of the webhook server.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A certificate or key file could not be read.
    #[error(
        "reading webhook {what} {path}: {source}; mount the serving certificate there, or run with --manage-webhook-certs=true"
    )]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key file is not usable PEM.
    #[error("webhook {what} {path} is not a usable PEM file: {message}")]
    Pem {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The listener could not be bound.
    #[error(
        "listening on {addr} for the conversion webhook: {source}; pass --webhook-port to choose another port"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the serving certificate and key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `dir/cert_name` and `dir/key_name`; when both are the default names and absent but
    /// `dir/cert.pem` exists, that combined file is used for both (upstream's fallback).
    pub fn in_dir(dir: &Path, cert_name: &str, key_name: &str) -> Self {
        let (cert, key) = (dir.join(cert_name), dir.join(key_name));
        let combined = dir.join(COMBINED_NAME);
        if cert_name == CERT_NAME
            && key_name == KEY_NAME
            && !cert.exists()
            && !key.exists()
            && combined.exists()
        {
            return Self {
                cert: combined.clone(),
                key: combined,
            };
        }
        Self { cert, key }
    }

    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), WebhookError> {
        Ok((
            read_file("certificate", &self.cert)?,
            read_file("key", &self.key)?,
        ))
    }

    fn modified(&self) -> Stamp {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(&self.cert), m(&self.key))
    }

    /// Loads and checks the pair.
    pub fn load(&self) -> Result<CertifiedKey, WebhookError> {
        let (cert_pem, key_pem) = self.read()?;
        let pem_err = |what, path: &Path, message: String| WebhookError::Pem {
            what,
            path: path.to_path_buf(),
            message,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err("certificate", &self.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(
                "certificate",
                &self.cert,
                "it holds no CERTIFICATE block".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| pem_err("key", &self.key, e.to_string()))?;
        CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| pem_err("key", &self.key, e.to_string()))
    }
}

/// Modification times of the certificate and key files.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

// The error names the path itself.
#[allow(clippy::disallowed_methods)]
fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(path).map_err(|source| WebhookError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Serves the current certificate; [`Self::reload_if_changed`] swaps in new files.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl ReloadingCert {
    /// Loads the files once (an error here is fatal for the caller).
    pub fn new(files: TlsFiles) -> Result<Self, WebhookError> {
        let stamp = files.modified();
        let key = files.load()?;
        Ok(Self {
            files,
            current: RwLock::new((Arc::new(key), stamp)),
        })
    }

    /// Reloads when a file's modification time changed; a broken new pair is logged and the old
    /// one kept. Returns whether a new pair is in use.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = self.files.modified();
        if stamp == self.current.read().1 {
            return false;
        }
        match self.files.load() {
            Ok(key) => {
                *self.current.write() = (Arc::new(key), stamp);
                tracing::info!(cert = %self.files.cert.display(), "reloaded the webhook serving certificate");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the previous webhook serving certificate");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().0.clone())
    }
}

/// The HTTP routes: `POST /convert`.
pub fn router() -> Router {
    Router::new()
        .route(PATH, post(convert))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn convert(body: Bytes) -> Response {
    match serde_json::from_slice::<ConversionReview>(&body) {
        Ok(review) => {
            let out = conversion::review(review);
            match serde_json::to_vec(&out) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding the ConversionReview response: {e}"),
                )
                    .into_response(),
            }
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!(
                "the request body is not an apiextensions.k8s.io ConversionReview: {e}; send a ConversionReview (v1 or v1beta1) with a request"
            ),
        )
            .into_response(),
    }
}

/// A bound webhook server.
pub struct WebhookServer {
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
}

impl WebhookServer {
    /// Loads the certificate (failing if it is unusable) and binds `addr`.
    pub async fn bind(addr: SocketAddr, files: TlsFiles) -> Result<Self, WebhookError> {
        let cert = Arc::new(ReloadingCert::new(files)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WebhookError::Listen { addr, source })?;
        Ok(Self { listener, cert })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = match rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b
                .with_no_client_auth()
                .with_cert_resolver(self.cert.clone()),
            Err(e) => {
                tracing::error!(error = %e, "the TLS provider offers no protocol version; the webhook is not served");
                return;
            }
        };
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let app = router();
        let reloader = {
            let cert = self.cert.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RELOAD_INTERVAL).await;
                    cert.reload_if_changed();
                }
            })
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                r = self.listener.accept() => {
                    let Ok((stream, _)) = r else { continue };
                    let _ = stream.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                    tokio::spawn(async move {
                        let tls = match acceptor.accept(stream).await {
                            Ok(tls) => tls,
                            Err(e) => {
                                tracing::debug!(error = %e, "webhook TLS handshake failed");
                                return;
                            }
                        };
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
                () = &mut shutdown => break,
            }
        }
        reloader.abort();
    }
}
