//! The mesh root and the signing of workload certificates from CSRs.
//!
//! The root is loaded from `<dir>/root-cert.pem` and `<dir>/root-key.pem`, or generated and
//! written there (key mode 0600) on first start, so restarts keep the mesh's trust.
//! Issued certificates carry exactly one URI SAN, the SPIFFE identity the caller was
//! authorized for: whatever else the CSR asks for is ignored, never copied. Every certificate
//! the root signs gets a serial number of its own, drawn at random ([`CaSigner::sign_params`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hbone::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Why the CA could not start or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A root file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The root certificate or key is unusable.
    #[error("root CA in {path}: {why}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The CSR does not parse or its signature does not verify.
    #[error("malformed CSR: {0}")]
    Csr(String),
    /// The CSR asks for an identity other than the one the caller may have.
    #[error("CSR asks for {requested}, but the caller is authorized for {authorized}")]
    IdentityMismatch {
        /// What the CSR's SANs say.
        requested: String,
        /// What the caller may have.
        authorized: Identity,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// The mesh CA: a root and its key.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    /// Longest validity handed out, whatever is asked.
    pub max_ttl: Duration,
    /// Validity when the request does not say.
    pub default_ttl: Duration,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner").field("max_ttl", &self.max_ttl).finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_owned(), source }
}

/// A serial number for a certificate of the mesh CA: 128 random bits from the CSPRNG of the
/// TLS provider (aws-lc-rs), top bit cleared. RFC 5280 §4.1.2.2 requires serials unique per CA,
/// positive and at most 20 octets; random ones stay unique across restarts (the root persists
/// in its directory, a counter would not) and cannot be predicted, as with Istio's CA
/// (`genSerialNum`, 128 random bits). Cleared, the top bit keeps the DER INTEGER positive in
/// 16 octets; two serials collide with probability about n²/2¹²⁸.
pub(crate) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    hbone::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|e| CaError::Sign(format!("drawing a serial number: {e:?}")))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

impl CaSigner {
    /// Loads the root from `dir`, or generates one there if neither file exists.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let cert_path = dir.join("root-cert.pem");
        let key_path = dir.join("root-key.pem");
        let root = |why: String| CaError::Root { path: dir.to_owned(), why };
        let (issuer, root_pem) = if cert_path.exists() || key_path.exists() {
            let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&key).map_err(|e| root(format!("root-key.pem: {e}")))?;
            let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| root(format!("root-cert.pem: {e}")))?;
            (issuer, cert)
        } else {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let key = KeyPair::generate().map_err(|e| root(e.to_string()))?;
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.distinguished_name.push(DnType::OrganizationName, trust_domain);
            params.distinguished_name.push(DnType::CommonName, "istiod-lite mesh root");
            let now = SystemTime::now();
            params.not_before = (now - Duration::from_secs(3600)).into();
            params.not_after = (now + Duration::from_secs(10 * 365 * 86400)).into();
            params.serial_number = Some(random_serial()?);
            let cert = params.self_signed(&key).map_err(|e| root(e.to_string()))?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            tracing::info!(dir = %dir.display(), "generated a new mesh root");
            (Issuer::new(params, key), cert.pem())
        };
        Ok(CaSigner {
            issuer,
            root_pem,
            max_ttl: Duration::from_secs(7 * 86400),
            default_ttl: Duration::from_secs(86400),
        })
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> rustls_pki_types::CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(self.root_pem.as_bytes())
            .expect("the root PEM parsed when the signer was made")
            .into_owned()
    }

    /// Signs a certificate described by `params` for `public_key` with the root (for
    /// istiod-lite's own serving certificate; workload certificates go through [`Self::sign`]).
    /// The serial number is always a fresh random one (128 bits, see `random_serial`): any in
    /// `params` is replaced.
    pub fn sign_params(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<rcgen::Certificate, CaError> {
        params.serial_number = Some(random_serial()?);
        params.signed_by(public_key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))
    }

    /// Signs `csr_pem` for `identity` for `ttl` (capped); returns the chain, leaf first, in PEM.
    pub fn sign(&self, csr_pem: &str, identity: &Identity, ttl: Option<Duration>) -> Result<Vec<String>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::Csr(e.to_string()))?;
        // A CSR may name no SAN (the CA decides) or exactly this identity; anything else is
        // a caller asking for what it was not authorized for.
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(u) => u.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            if requested != identity.as_str() {
                return Err(CaError::IdentityMismatch { requested, authorized: identity.clone() });
            }
        }
        let ttl = ttl.unwrap_or(self.default_ttl).min(self.max_ttl);
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::URI(identity.as_str().try_into().map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        // A little slack for clocks that disagree across nodes.
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + ttl).into();
        let leaf = self.sign_params(params, &csr.public_key)?;
        Ok(vec![leaf.pem(), self.root_pem.clone()])
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(contents).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("istiod-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn csr(san: Option<&str>) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        if let Some(s) = san {
            p.subject_alt_names = vec![SanType::URI(s.try_into().unwrap())];
        }
        (p.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    #[test]
    fn signs_for_the_authorized_identity_only() {
        let dir = tmpdir("sign");
        let ca = CaSigner::load_or_generate(&dir, "cluster.local").unwrap();
        let id = Identity::new("cluster.local", "shop", "web").unwrap();
        let (req, key) = csr(Some(id.as_str()));
        let chain = ca.sign(&req, &id, Some(Duration::from_secs(3600))).unwrap();
        // The result is a usable workload certificate for that identity, chaining to the root.
        let cert = hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(cert.identity(), &id);
        let left = cert.remaining(SystemTime::now());
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{left:?}");
        assert!(hbone::TrustRoots::from_pem(ca.root_pem().as_bytes()).is_ok());

        // No SAN in the CSR: the CA decides.
        let (req, _) = csr(None);
        assert!(ca.sign(&req, &id, None).is_ok());

        // Another identity in the CSR: refused, naming both.
        let (req, _) = csr(Some("spiffe://cluster.local/ns/shop/sa/admin"));
        let e = ca.sign(&req, &id, None).unwrap_err().to_string();
        assert!(e.contains("sa/admin") && e.contains("sa/web"), "{e}");

        // Garbage: refused.
        assert!(matches!(
            ca.sign("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", &id, None),
            Err(CaError::Csr(_))
        ));

        // TTL is capped.
        let (req, key) = csr(None);
        let chain = ca.sign(&req, &id, Some(Duration::from_secs(365 * 86400))).unwrap();
        let cert = hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        assert!(cert.remaining(SystemTime::now()) <= ca.max_ttl);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_persists_across_restarts() {
        let dir = tmpdir("persist");
        let first = CaSigner::load_or_generate(&dir, "cluster.local").unwrap();
        let second = CaSigner::load_or_generate(&dir, "cluster.local").unwrap();
        assert_eq!(first.root_pem(), second.root_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("root-key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(dir.join("root-key.pem"), "not a key").unwrap();
        let e = CaSigner::load_or_generate(&dir, "cluster.local").unwrap_err().to_string();
        assert!(e.contains("root-key.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
