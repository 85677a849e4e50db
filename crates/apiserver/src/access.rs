//! Credentials and access files in the data directory: the self-signed CA and serving
//! certificate (generated on first start), the bearer token (0600), and the kubeconfig.

use base64::Engine;
use fs_err as fs;
use fs_err::os::unix::fs::OpenOptionsExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors preparing credentials.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Reading or writing a file failed.
    #[error("{0}; check that the data directory is writable by this user")]
    Io(#[from] std::io::Error),
    /// Certificate generation failed.
    #[error("generating the API server certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A stored certificate or key is unreadable.
    #[error("{path}: {msg}; delete the file to have it regenerated")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// TLS configuration failed.
    #[error("configuring TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The credentials of one server.
pub struct Credentials {
    /// CA certificate (PEM).
    pub ca_pem: String,
    /// Serving certificate chain.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Serving key.
    pub key: PrivateKeyDer<'static>,
    /// Bearer token.
    pub token: String,
}

/// Writes `path` so that a crash or a power loss leaves either the old file or the whole new
/// one: a temporary file beside it, fsynced, renamed over it, then the directory fsynced.
fn write_durable(path: &Path, data: &[u8], mode: u32) -> Result<(), AccessError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), AccessError> {
    write_durable(path, data, 0o600)
}

/// Loads or creates the CA, serving certificate and token in `dir`.
pub fn load_or_create(dir: &Path) -> Result<Credentials, AccessError> {
    let (ca_crt, srv_crt, srv_key, token_p) = (
        dir.join("ca.crt"),
        dir.join("apiserver.crt"),
        dir.join("apiserver.key"),
        dir.join("token"),
    );
    if !(ca_crt.exists() && srv_crt.exists() && srv_key.exists()) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "agent-sandbox-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let ca_key = KeyPair::generate()?;
        let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;
        let mut srv = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        srv.distinguished_name
            .push(DnType::CommonName, "agent-sandbox-apiserver");
        srv.not_after = rcgen::date_time_ymd(2099, 1, 1);
        srv.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let srv_kp = KeyPair::generate()?;
        let cert = srv.signed_by(&srv_kp, &issuer)?;
        // Each file whole and on disk, the CA last: the three existing means all are complete.
        write_private(&srv_key, srv_kp.serialize_pem().as_bytes())?;
        write_durable(&srv_crt, cert.pem().as_bytes(), 0o644)?;
        write_durable(&ca_crt, issuer.pem().as_bytes(), 0o644)?;
    }
    if !token_p.exists() {
        let t = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        write_private(&token_p, t.as_bytes())?;
    }
    let ca_pem = fs::read_to_string(&ca_crt)?;
    let pem_err = |path: &Path, msg: String| AccessError::Pem {
        path: path.to_path_buf(),
        msg,
    };
    let srv_pem = fs::read(&srv_crt)?;
    let cert_chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&srv_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&srv_crt, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&fs::read(&srv_key)?)
        .map_err(|e| pem_err(&srv_key, e.to_string()))?;
    let token = fs::read_to_string(&token_p)?.trim().to_string();
    Ok(Credentials {
        ca_pem,
        cert_chain,
        key,
        token,
    })
}

/// A TLS acceptor (HTTP/2 and HTTP/1.1 by ALPN) for the credentials.
pub fn acceptor(c: &Credentials) -> Result<tokio_rustls::TlsAcceptor, AccessError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(c.cert_chain.clone(), c.key.clone_key())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Renders a kubeconfig for `server` (e.g. `https://127.0.0.1:6443`).
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str, namespace: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: agent-sandbox\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: agent-sandbox\n  user:\n    token: {token}\ncontexts:\n- name: agent-sandbox\n  context:\n    cluster: agent-sandbox\n    user: agent-sandbox\n    namespace: {namespace}\ncurrent-context: agent-sandbox\npreferences: {{}}\n"
    )
}

/// Writes the kubeconfig with mode 0600 (it holds the token).
pub fn write_kubeconfig(path: &Path, contents: &str) -> Result<(), AccessError> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    write_private(path, contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_written_whole_and_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_eq!(first.token, second.token);
        assert_eq!(first.ca_pem, second.ca_pem);
        let mode = |f: &str| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode("apiserver.key"), mode("token")), (0o600, 0o600));
        assert_eq!((mode("ca.crt"), mode("apiserver.crt")), (0o644, 0o644));
        // No temporary file is left beside them.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        // Rewriting replaces the file whole.
        write_kubeconfig(&dir.path().join("kc"), "one").unwrap();
        write_kubeconfig(&dir.path().join("kc"), "two").unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("kc")).unwrap(), "two");
    }
}
