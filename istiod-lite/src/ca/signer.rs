//! The mesh root and the signing of workload certificates from CSRs.
//!
//! The root is loaded from `<dir>/root-cert.pem` and `<dir>/root-key.pem`, or generated and
//! written there (key mode 0600) on first start, so restarts keep the mesh's trust.
//! Issued certificates carry exactly one URI SAN, the SPIFFE identity the caller was
//! authorized for, in the signer's trust domain: a CSR naming anything else is refused, and
//! nothing else it asks (subject, CA, key usages) is copied. The leaf has an empty subject and a
//! critical SAN, CA:FALSE, and lives the `ttl` asked (at most `max_ttl`: a longer one is refused,
//! as Istio's CA does) but never past the root; its notBefore is a
//! minute back for skewed clocks. Every certificate the root signs gets a serial number of its
//! own, drawn at random ([`CaSigner::sign_params`]).
//!
//! What a CSR must be: one PEM `CERTIFICATE REQUEST` block of at most [`MAX_CSR_PEM`] bytes,
//! holding exactly one request whose signature verifies with its own key (proof of
//! possession), that key being ECDSA P-256 signed with SHA-256, ECDSA P-384 signed with
//! SHA-384, RSA of 2048 to 8192 bits (PKCS #1 v1.5 with SHA-256/384/512), or Ed25519. The
//! certificate certifies the key as the CSR's own SubjectPublicKeyInfo describes it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hbone::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm, SubjectPublicKeyInfo,
};
use rustls_pki_types::pem::{PemObject, SectionKind};

use super::der;

/// The largest CSR accepted, in PEM bytes. An RSA-8192 request with a SAN is about 1.5 KiB.
pub const MAX_CSR_PEM: usize = 16 * 1024;
/// Longest workload certificate lifetime by default: Istio's `MAX_WORKLOAD_CERT_TTL` (90 days).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 86400);
/// Workload certificate lifetime when the request names none: Istio's `DEFAULT_WORKLOAD_CERT_TTL`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86400);
/// How far back a leaf's notBefore is set, for clocks that disagree across nodes.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The keys a CSR may carry, as every refusal of another lists them.
const ACCEPTED_KEYS: &str =
    "ECDSA P-256 with SHA-256, ECDSA P-384 with SHA-384, RSA of 2048 to 8192 bits (PKCS #1 v1.5), Ed25519";

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
    /// The identity is not of the mesh's trust domain.
    #[error("{identity} is not of this CA's trust domain {trust_domain}")]
    TrustDomain {
        /// What was to be signed.
        identity: Identity,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The requested validity is longer than this CA hands out.
    #[error(
        "validity_duration: {requested} s asked, but this CA issues for at most {max} s (--max-workload-cert-ttl-seconds)"
    )]
    TtlTooLong {
        /// What was asked, seconds.
        requested: u64,
        /// The longest this CA signs for, seconds.
        max: u64,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// The mesh CA: a root and its key.
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    /// When the root expires: no leaf outlives it.
    root_not_after: SystemTime,
    trust_domain: String,
    /// Longest validity handed out; a request for more is refused.
    pub max_ttl: Duration,
    /// Validity when the request does not say.
    pub default_ttl: Duration,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner")
            .field("trust_domain", &self.trust_domain)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
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
        let root_not_after = rustls_pki_types::CertificateDer::from_pem_slice(root_pem.as_bytes())
            .ok()
            .and_then(|der| der::not_after(&der))
            .ok_or_else(|| root("root-cert.pem: no readable notAfter".into()))?;
        Ok(CaSigner {
            issuer,
            root_pem,
            root_not_after,
            trust_domain: trust_domain.to_owned(),
            max_ttl: DEFAULT_MAX_TTL,
            default_ttl: DEFAULT_TTL,
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
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
        public_key: &impl PublicKeyData,
    ) -> Result<rcgen::Certificate, CaError> {
        params.serial_number = Some(random_serial()?);
        params.signed_by(public_key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))
    }

    /// Signs `csr_pem` for `identity` for `ttl` (the default when `None`); returns the chain,
    /// leaf first, in PEM. A `ttl` over `max_ttl` is refused rather than shortened: as with
    /// Istio's CA, a caller that asked for a lifetime must not find out at rotation time that it
    /// got a shorter one.
    pub fn sign(&self, csr_pem: &str, identity: &Identity, ttl: Option<Duration>) -> Result<Vec<String>, CaError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CaError::TrustDomain { identity: identity.clone(), trust_domain: self.trust_domain.clone() });
        }
        let (csr, key) = parse_csr(csr_pem)?;
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
        let ttl = ttl.unwrap_or(self.default_ttl);
        if ttl > self.max_ttl {
            return Err(CaError::TtlTooLong { requested: ttl.as_secs(), max: self.max_ttl.as_secs() });
        }
        let mut params = CertificateParams::default();
        // The SPIFFE ID is the name: an empty subject, which makes rcgen mark the SAN critical
        // (RFC 5280 §4.2.1.6), as in Istio's workload certificates.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(identity.as_str().try_into().map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ttl).min(self.root_not_after).into();
        let leaf = self.sign_params(params, &key)?;
        Ok(vec![leaf.pem(), self.root_pem.clone()])
    }
}

/// Reads a CSR (see the module's doc for what is accepted): its requested parameters, and its
/// key as its SubjectPublicKeyInfo says (rcgen's own answer names the key after the CSR's
/// signature algorithm, which for ECDSA need not be the key's curve).
fn parse_csr(pem: &str) -> Result<(CertificateSigningRequestParams, SubjectPublicKeyInfo), CaError> {
    let bad = |why: String| CaError::Csr(why);
    if pem.len() > MAX_CSR_PEM {
        return Err(bad(format!("too large: {} bytes, at most {MAX_CSR_PEM}", pem.len())));
    }
    let blocks = pem.matches("-----BEGIN ").count();
    if blocks != 1 {
        return Err(bad(format!("expected one PEM block, found {blocks}")));
    }
    let der = match <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok((SectionKind::Csr, der))) => der,
        Some(Ok((kind, _))) => return Err(bad(format!("expected a CERTIFICATE REQUEST block, found {kind:?}"))),
        Some(Err(e)) => return Err(bad(format!("PEM: {e}"))),
        None => return Err(bad("expected one PEM block labelled CERTIFICATE REQUEST".into())),
    };
    let spki = der::csr_spki(&der).map_err(|e| match e {
        der::CsrShape::Trailing => bad("trailing bytes after the request in its PEM block".into()),
        der::CsrShape::Malformed => bad("not a PKCS #10 certification request".into()),
    })?;
    // The key first: a refused key gets its own reason, not a failed signature check.
    let key = SubjectPublicKeyInfo::from_der(spki)
        .map_err(|_| bad(format!("unsupported public key; accepted: {ACCEPTED_KEYS}")))?;
    let key_alg = key.algorithm();
    if is_rsa(key_alg) {
        let bits = der::rsa_modulus_bits(key.der_bytes()).ok_or_else(|| bad("unreadable RSA public key".into()))?;
        if !(2048..=8192).contains(&bits) {
            return Err(bad(format!("RSA key of {bits} bits; accepted: {ACCEPTED_KEYS}")));
        }
    } else if ![&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519].contains(&key_alg)
    {
        return Err(bad(format!("unsupported public key; accepted: {ACCEPTED_KEYS}")));
    }
    let csr = CertificateSigningRequestParams::from_der(&der.as_slice().into()).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            bad("its signature does not verify with its own key (no proof of possession)".into())
        }
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            bad(format!("unsupported signature algorithm; accepted: {ACCEPTED_KEYS}"))
        }
        e => bad(e.to_string()),
    })?;
    // rcgen names the signature algorithm; an ECDSA one must hash as the key's curve asks.
    let sig_alg = csr.public_key.algorithm();
    if !is_rsa(key_alg) && sig_alg != key_alg {
        return Err(bad(format!(
            "a {} key signed with {}; accepted: {ACCEPTED_KEYS}",
            key_name(key_alg),
            hash_name(sig_alg)
        )));
    }
    Ok((csr, key))
}

fn is_rsa(alg: &SignatureAlgorithm) -> bool {
    [&rcgen::PKCS_RSA_SHA256, &rcgen::PKCS_RSA_SHA384, &rcgen::PKCS_RSA_SHA512].contains(&alg)
}

fn key_name(alg: &SignatureAlgorithm) -> &'static str {
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256"
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384"
    } else if alg == &rcgen::PKCS_ED25519 {
        "Ed25519"
    } else {
        "RSA"
    }
}

fn hash_name(alg: &SignatureAlgorithm) -> &'static str {
    // rcgen's names end with the hash (`PKCS_ECDSA_P521_SHA384`); its `Debug` is all it says.
    let name = format!("{alg:?}");
    ["SHA256", "SHA384", "SHA512"]
        .into_iter()
        .zip(["SHA-256", "SHA-384", "SHA-512"])
        .find_map(|(suffix, hash)| name.ends_with(suffix).then_some(hash))
        .unwrap_or("another algorithm")
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(contents).map_err(io(path))
}

#[cfg(test)]
mod tests;
