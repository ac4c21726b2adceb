//! Workload certificates (leaf + chain + key, with the identity they carry) and mesh trust roots.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::identity::{Identity, IdentityError};
use crate::tls::provider;

/// Why certificate material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// PEM text held no certificate.
    #[error("no certificate found in PEM input")]
    NoCertificate,
    /// PEM text could not be decoded.
    #[error("malformed PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The private key is unusable (unsupported algorithm or corrupt).
    #[error("private key rejected: {0}")]
    Key(#[source] rustls::Error),
    /// The private key does not belong to the leaf certificate.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    /// The DER of a certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// The leaf has no `spiffe://` URI SAN, or more than one URI SAN.
    #[error("certificate must carry exactly one URI SAN; found {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a valid mesh identity.
    #[error("certificate URI SAN: {0}")]
    Identity(#[from] IdentityError),
    /// The certificate is not shaped like a leaf X.509-SVID (spec §4.3, §5.2): what is wrong.
    #[error("certificate is not a leaf SVID: {0}")]
    NotLeafSvid(&'static str),
    /// A trust root cannot be used as a trust anchor.
    #[error("trust root rejected: {0}")]
    Anchor(String),
}

/// A workload's certificate chain and private key, ready for TLS, with the identity it proves.
#[derive(Debug)]
pub struct WorkloadCert {
    identity: Identity,
    not_before: SystemTime,
    not_after: SystemTime,
    key: Arc<CertifiedKey>,
}

impl WorkloadCert {
    /// Builds from a PEM chain (leaf first, then intermediates) and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)?;
        Self::from_der(chain, key)
    }

    /// Builds from a DER chain (leaf first) and a DER private key.
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let info = LeafInfo::parse(leaf)?;
        let signer = provider().key_provider.load_private_key(key).map_err(CertError::Key)?;
        let certified = CertifiedKey::new(chain, signer);
        certified.keys_match().map_err(|_| CertError::KeyMismatch)?;
        Ok(WorkloadCert {
            identity: info.identity,
            not_before: info.not_before,
            not_after: info.not_after,
            key: Arc::new(certified),
        })
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Time left until expiry (zero when already expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// Whether this certificate, as our own, may still be presented at `now`. An expired one
    /// may not: its key may already be retired, and a peer with a slow clock would still take
    /// it. Both ends of the handshake and the pool (before it dials) ask this, so they agree.
    pub fn check_unexpired(&self, now: SystemTime) -> Result<(), OwnCertExpired> {
        if self.not_after < now {
            return Err(OwnCertExpired { identity: self.identity.clone(), not_after: self.not_after });
        }
        Ok(())
    }

    /// The chain and signing key in the form rustls presents.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

/// Our own certificate's validity has ended: it is not presented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("own certificate for {identity} expired at {}", show_time(*.not_after))]
pub struct OwnCertExpired {
    /// Whose certificate.
    pub identity: Identity,
    /// When its validity ended.
    pub not_after: SystemTime,
}

/// A certificate time as X.509 tools print it (UTC), for errors and logs.
pub(crate) fn show_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    match x509_parser::time::ASN1Time::from_timestamp(secs) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{secs} s after the Unix epoch"),
    }
}

/// What the mesh needs from a leaf certificate.
pub(crate) struct LeafInfo {
    pub(crate) identity: Identity,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl LeafInfo {
    /// Parses a leaf certificate and extracts its one SPIFFE URI SAN and validity.
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
        Self::from_cert(&cert)
    }

    /// Like [`parse`](Self::parse), for a peer's leaf: also refuses a certificate that is not a
    /// leaf SVID by its key usage and basic constraints (X.509-SVID §4.3, §5.2), so a signing
    /// certificate or one whose key may not sign handshakes never authenticates a peer.
    pub(crate) fn parse_peer(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
        check_leaf_svid(&cert)?;
        Self::from_cert(&cert)
    }

    fn from_cert(cert: &X509Certificate<'_>) -> Result<Self, CertError> {
        let mut uris = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(|e| CertError::Parse(e.to_string()))? {
            uris.extend(san.value.general_names.iter().filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            }));
        }
        let [uri] = uris[..] else {
            return Err(CertError::UriSanCount(uris.len()));
        };
        let to_time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 { UNIX_EPOCH + Duration::from_secs(secs as u64) } else { UNIX_EPOCH }
        };
        Ok(LeafInfo {
            identity: uri.parse()?,
            not_before: to_time(cert.validity().not_before),
            not_after: to_time(cert.validity().not_after),
        })
    }
}

/// Key usage and basic constraints of a leaf SVID: keyUsage present with digitalSignature and
/// without keyCertSign or cRLSign, and not a CA.
fn check_leaf_svid(cert: &X509Certificate<'_>) -> Result<(), CertError> {
    let parse = |e: x509_parser::error::X509Error| CertError::Parse(e.to_string());
    let usage = cert.key_usage().map_err(parse)?.ok_or(CertError::NotLeafSvid("no keyUsage extension"))?.value;
    if !usage.digital_signature() {
        return Err(CertError::NotLeafSvid("keyUsage lacks digitalSignature"));
    }
    if usage.key_cert_sign() || usage.crl_sign() {
        return Err(CertError::NotLeafSvid("keyUsage allows keyCertSign or cRLSign"));
    }
    if cert.basic_constraints().map_err(parse)?.is_some_and(|bc| bc.value.ca) {
        return Err(CertError::NotLeafSvid("basicConstraints cA is true"));
    }
    Ok(())
}

/// The set of CA certificates the mesh trusts. Holding several lets old and new roots overlap
/// during a root rotation.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustRoots {
    /// Loads every certificate in a PEM bundle as a root.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
        Self::from_der(certs)
    }

    /// Uses the given DER certificates as roots.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        if certs.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()).map_err(|e| CertError::Anchor(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustRoots { certs, anchors })
    }

    /// These roots plus `other`'s, for an overlap during root rotation.
    pub fn merged(&self, other: &TrustRoots) -> TrustRoots {
        let mut out = self.clone();
        for (c, a) in other.certs.iter().zip(&other.anchors) {
            if !out.certs.contains(c) {
                out.certs.push(c.clone());
                out.anchors.push(a.clone());
            }
        }
        out
    }

    /// The roots as DER certificates.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}
