//! Webhook certificate management for cluster mode (upstream-core §12.5): the Secret
//! `agent-sandbox-webhook-certs` shared by all replicas, a self-signed CA and serving certificate
//! when it does not exist yet, the serving pair written into the cert directory, and the
//! `caBundle` of this project's CRDs patched to trust that CA.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use agent_sandbox_api::crd;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::webhook::{self, TlsFiles};

/// The Secret holding the CA and serving pair (in `--webhook-namespace`).
pub const SECRET_NAME: &str = "agent-sandbox-webhook-certs";
/// Common name of the generated CA.
pub const CA_COMMON_NAME: &str = "agent-sandbox-conversion-webhook-ca";
/// Secret key of the CA certificate.
pub const CA_KEY: &str = "ca.crt";
/// Secret key of the serving certificate.
pub const CERT_KEY: &str = "tls.crt";
/// Secret key of the serving private key.
pub const TLS_KEY: &str = "tls.key";

/// Failures of the certificate bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Key or certificate generation failed.
    #[error("generating the webhook certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// The Secret exists but does not hold a usable CA and serving pair.
    #[error(
        "Secret {namespace}/{name} does not hold a usable webhook certificate: {message}; delete it to have a new one generated"
    )]
    InvalidSecret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A file in the cert directory could not be written.
    #[error(
        "writing {path}: {source}; make the webhook cert directory writable or pass --webhook-cert-dir"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An API call failed.
    #[error(
        "{action} {object}: {source}; check that the controller's service account has the RBAC rules of deploy/rbac"
    )]
    Api {
        /// What was attempted.
        action: &'static str,
        /// The object.
        object: String,
        /// The client error.
        source: kube::Error,
    },
}

/// A CA and the serving pair it signed, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookCerts {
    /// The CA certificate (what the CRDs' `caBundle` trusts).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving private key.
    pub key_pem: String,
}

/// Settings of the bootstrap.
#[derive(Clone, Debug)]
pub struct CertOptions {
    /// The webhook Service (`--webhook-service-name`).
    pub service_name: String,
    /// Its namespace and the Secret's (`--webhook-namespace`).
    pub namespace: String,
    /// Cluster DNS domain for the last SAN (`--cluster-domain`).
    pub cluster_domain: String,
    /// Where `tls.crt` and `tls.key` are written (`--webhook-cert-dir`).
    pub cert_dir: PathBuf,
}

/// The serving certificate's DNS names: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`,
/// `<svc>.<ns>.svc.<domain>`.
pub fn dns_names(service: &str, namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{cluster_domain}"),
    ]
}

/// Generates an ECDSA P-256 CA (serial 1, valid from an hour ago for a year) and a serving
/// certificate it signs (serial 2, CN `<svc>.<ns>.svc`, the [`dns_names`], server auth).
pub fn generate(
    service: &str,
    namespace: &str,
    cluster_domain: &str,
) -> Result<WebhookCerts, CertError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    let not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    ca.serial_number = Some(SerialNumber::from(1u64));
    ca.not_before = not_before;
    ca.not_after = not_after;
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;

    let mut srv = CertificateParams::new(dns_names(service, namespace, cluster_domain))?;
    srv.distinguished_name
        .push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    srv.serial_number = Some(SerialNumber::from(2u64));
    srv.not_before = not_before;
    srv.not_after = not_after;
    srv.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let srv_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = srv.signed_by(&srv_key, &issuer)?;
    Ok(WebhookCerts {
        ca_pem: issuer.pem(),
        cert_pem: cert.pem(),
        key_pem: srv_key.serialize_pem(),
    })
}

impl WebhookCerts {
    /// Checks that the CA and certificate are PEM certificates and the key is a PEM private key
    /// that matches the certificate.
    pub fn validate(&self) -> Result<(), String> {
        let certs = |what: &str, pem: &str| -> Result<Vec<CertificateDer<'static>>, String> {
            let v: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{what}: {e}"))?;
            if v.is_empty() {
                return Err(format!("{what} holds no CERTIFICATE block"));
            }
            Ok(v)
        };
        certs(CA_KEY, &self.ca_pem)?;
        let chain = certs(CERT_KEY, &self.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("{TLS_KEY}: {e}"))?;
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
            .map_err(|e| format!("{TLS_KEY} does not fit {CERT_KEY}: {e}"))?;
        Ok(())
    }

    /// Reads and validates the three PEM entries of the Secret.
    pub fn from_secret(secret: &Secret) -> Result<Self, CertError> {
        let invalid = |message: String| CertError::InvalidSecret {
            namespace: secret.namespace().unwrap_or_default(),
            name: secret.name_any(),
            message,
        };
        let field = |key: &str| -> Result<String, CertError> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.clone())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|s| s.clone().into_bytes())
                })
                .ok_or_else(|| invalid(format!("it has no {key:?} entry")))?;
            String::from_utf8(bytes).map_err(|_| invalid(format!("{key:?} is not PEM text")))
        };
        let certs = Self {
            ca_pem: field(CA_KEY)?,
            cert_pem: field(CERT_KEY)?,
            key_pem: field(TLS_KEY)?,
        };
        certs.validate().map_err(invalid)?;
        Ok(certs)
    }

    /// The Opaque Secret holding these certificates.
    pub fn to_secret(&self, name: &str, namespace: &str) -> Secret {
        let data = BTreeMap::from([
            (
                CA_KEY.to_owned(),
                ByteString(self.ca_pem.clone().into_bytes()),
            ),
            (
                CERT_KEY.to_owned(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                TLS_KEY.to_owned(),
                ByteString(self.key_pem.clone().into_bytes()),
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Writes `tls.crt` and `tls.key` (mode 0600, each replaced atomically) into `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<TlsFiles, CertError> {
        let werr = |path: &Path, source| CertError::Write {
            path: path.to_path_buf(),
            source,
        };
        fs_err::create_dir_all(dir).map_err(|e| werr(dir, e))?;
        let files = TlsFiles {
            cert: dir.join(webhook::CERT_NAME),
            key: dir.join(webhook::KEY_NAME),
        };
        write_private(&files.cert, self.cert_pem.as_bytes()).map_err(|e| werr(&files.cert, e))?;
        write_private(&files.key, self.key_pem.as_bytes()).map_err(|e| werr(&files.key, e))?;
        Ok(files)
    }
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = fs_err::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    fs_err::rename(&tmp, path)
}

/// Reads the shared Secret, or generates certificates and creates it; when another replica
/// created it first (AlreadyExists), that one is read and used.
pub async fn ensure_secret(client: Client, opts: &CertOptions) -> Result<WebhookCerts, CertError> {
    let api: Api<Secret> = Api::namespaced(client, &opts.namespace);
    let object = format!("Secret {}/{SECRET_NAME}", opts.namespace);
    let api_err = |action, source| CertError::Api {
        action,
        object: object.clone(),
        source,
    };
    if let Some(secret) = api
        .get_opt(SECRET_NAME)
        .await
        .map_err(|e| api_err("reading", e))?
    {
        tracing::info!(secret = %object, "using the existing webhook certificates");
        return WebhookCerts::from_secret(&secret);
    }
    let certs = generate(&opts.service_name, &opts.namespace, &opts.cluster_domain)?;
    match api
        .create(
            &PostParams::default(),
            &certs.to_secret(SECRET_NAME, &opts.namespace),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(secret = %object, "generated a self-signed CA and webhook serving certificate");
            Ok(certs)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            // Another replica won the race: use its certificates.
            let secret = api
                .get(SECRET_NAME)
                .await
                .map_err(|e| api_err("reading", e))?;
            WebhookCerts::from_secret(&secret)
        }
        Err(e) => Err(api_err("creating", e)),
    }
}

/// The names of the CRDs that convert through the webhook (upstream's four; this project's own
/// kinds have one version and no conversion, and the controller's RBAC does not name them).
pub fn crd_names() -> Vec<String> {
    crd::all()
        .iter()
        .filter(|c| {
            c.spec
                .conversion
                .as_ref()
                .is_some_and(|c| c.strategy == "Webhook")
        })
        .map(ResourceExt::name_any)
        .collect()
}

/// The merge patch that points `crd`'s conversion webhook at the service and trusts `ca_pem`;
/// `None` when the CRD does not use webhook conversion (it is left alone).
pub fn ca_bundle_patch(
    crd: &CustomResourceDefinition,
    service: &str,
    namespace: &str,
    ca_pem: &str,
) -> Option<Value> {
    let conversion = crd.spec.conversion.as_ref()?;
    if conversion.strategy != "Webhook" {
        return None;
    }
    let ca_bundle = serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec())).ok()?;
    let mut webhook = json!({
        "clientConfig": {
            "service": {"name": service, "namespace": namespace, "path": webhook::PATH},
            "caBundle": ca_bundle,
        }
    });
    if conversion
        .webhook
        .as_ref()
        .is_none_or(|w| w.conversion_review_versions.is_empty())
    {
        webhook["conversionReviewVersions"] = json!(["v1", "v1beta1"]);
    }
    Some(json!({"spec": {"conversion": {"webhook": webhook}}}))
}

/// Patches the `caBundle` of this project's CRDs that use webhook conversion; missing CRDs are
/// skipped. Returns the names of the CRDs patched.
pub async fn patch_crds(
    client: Client,
    service: &str,
    namespace: &str,
    ca_pem: &str,
) -> Result<Vec<String>, CertError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut patched = Vec::new();
    for name in crd_names() {
        let api_err = |action, source| CertError::Api {
            action,
            object: format!("CustomResourceDefinition {name}"),
            source,
        };
        let Some(current) = api
            .get_opt(&name)
            .await
            .map_err(|e| api_err("reading", e))?
        else {
            tracing::info!(crd = %name, "CRD not installed; not patching its caBundle");
            continue;
        };
        let Some(patch) = ca_bundle_patch(&current, service, namespace, ca_pem) else {
            tracing::info!(crd = %name, "CRD does not use webhook conversion; leaving it alone");
            continue;
        };
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err("patching the caBundle of", e))?;
        patched.push(name);
    }
    Ok(patched)
}

/// The whole of §12.5: the Secret (read or created), the serving pair in the cert directory and
/// the CRDs' `caBundle`. Returns the certificates and where the pair was written.
pub async fn bootstrap(
    client: Client,
    opts: &CertOptions,
) -> Result<(WebhookCerts, TlsFiles), CertError> {
    let certs = ensure_secret(client.clone(), opts).await?;
    let files = certs.write_to(&opts.cert_dir)?;
    let patched = patch_crds(client, &opts.service_name, &opts.namespace, &certs.ca_pem).await?;
    tracing::info!(crds = ?patched, cert_dir = %opts.cert_dir.display(), "webhook certificates in place");
    Ok((certs, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_webhook_converted_crds_get_a_ca_bundle() {
        let names = crd_names();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with("agent-sandbox-rs.github.io")),
            "this project's own kinds convert nothing: {names:?}"
        );
    }

    #[test]
    fn generated_certificates_validate_and_round_trip_through_a_secret() {
        let c = generate("svc", "ns", "cluster.local").unwrap();
        c.validate().unwrap();
        assert!(c.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let s = c.to_secret(SECRET_NAME, "ns");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(WebhookCerts::from_secret(&s).unwrap(), c);
    }

    #[test]
    fn a_secret_with_a_mismatched_key_is_rejected() {
        let a = generate("svc", "ns", "cluster.local").unwrap();
        let b = generate("svc", "ns", "cluster.local").unwrap();
        let mixed = WebhookCerts {
            key_pem: b.key_pem,
            ..a
        };
        let err = WebhookCerts::from_secret(&mixed.to_secret(SECRET_NAME, "ns")).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let mut s = mixed.to_secret(SECRET_NAME, "ns");
        s.data.as_mut().unwrap().remove(CA_KEY);
        let err = WebhookCerts::from_secret(&s).unwrap_err().to_string();
        assert!(
            err.contains("no \"ca.crt\" entry") && err.contains("ns/agent-sandbox-webhook-certs")
        );
    }

    #[test]
    fn dns_names_match_upstream() {
        assert_eq!(
            dns_names(
                "agent-sandbox-webhook-service",
                "agent-sandbox-system",
                "cluster.local"
            ),
            [
                "agent-sandbox-webhook-service",
                "agent-sandbox-webhook-service.agent-sandbox-system",
                "agent-sandbox-webhook-service.agent-sandbox-system.svc",
                "agent-sandbox-webhook-service.agent-sandbox-system.svc.cluster.local",
            ]
        );
    }

    #[test]
    fn patch_sets_service_and_ca_bundle_only_for_webhook_crds() {
        let crd = crd::sandbox();
        let p = ca_bundle_patch(&crd, "hook", "sys", "PEM").unwrap();
        assert_eq!(
            p,
            json!({"spec": {"conversion": {"webhook": {"clientConfig": {
                "service": {"name": "hook", "namespace": "sys", "path": "/convert"},
                "caBundle": "UEVN"
            }}}}})
        );
        let mut none = crd.clone();
        none.spec.conversion.as_mut().unwrap().strategy = "None".into();
        none.spec.conversion.as_mut().unwrap().webhook = None;
        assert!(ca_bundle_patch(&none, "hook", "sys", "PEM").is_none());
        let mut empty = crd;
        empty
            .spec
            .conversion
            .as_mut()
            .unwrap()
            .webhook
            .as_mut()
            .unwrap()
            .conversion_review_versions
            .clear();
        let p = ca_bundle_patch(&empty, "hook", "sys", "PEM").unwrap();
        assert_eq!(
            p["spec"]["conversion"]["webhook"]["conversionReviewVersions"],
            json!(["v1", "v1beta1"])
        );
    }

    #[test]
    fn files_are_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = generate("svc", "ns", "cluster.local").unwrap();
        let files = c.write_to(&dir.path().join("certs")).unwrap();
        for p in [&files.cert, &files.key] {
            let mode = fs_err::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        files.load().unwrap();
    }
}
