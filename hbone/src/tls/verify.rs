//! Certificate verification for mesh peers: the chain must lead to a current mesh root, and
//! the peer's identity is the one SPIFFE URI SAN of its leaf.
//!
//! Roots are read from the [`CertStore`] at each handshake, so a root rotation applies to new
//! connections without rebuilding TLS contexts.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certs::{CertError, LeafInfo};
use crate::identity::Identity;
use crate::store::CertStore;

use super::provider;

/// Why a peer's certificate does not prove an acceptable identity.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerIdentityError {
    /// The server proved a valid mesh identity, but not one the client expected there.
    #[error("peer identity {got} is not the expected {expected}")]
    Mismatch {
        /// What the client expected for this destination (any one of these).
        expected: ExpectedList,
        /// What the certificate says.
        got: Identity,
    },
    /// The certificate chains to a mesh root but carries no usable SPIFFE identity.
    #[error("peer certificate carries no usable identity: {0}")]
    NoIdentity(String),
    /// The certificate chains to a mesh root but is not a leaf SVID (X.509-SVID §4.3, §5.2):
    /// its key usage does not allow signing handshakes, or allows signing certificates.
    #[error("peer certificate is not a leaf SVID: {0}")]
    NotLeafSvid(&'static str),
    /// The client proved an identity of another trust domain than the server's own. Trust
    /// domains are not aliased: sharing a root does not make two trust domains one.
    #[error("peer identity {got} is not in the local trust domain {}", local.trust_domain())]
    ForeignTrustDomain {
        /// What the certificate says.
        got: Identity,
        /// The server's own identity, whose trust domain the peer's must be.
        local: Identity,
    },
}

/// A printable list of acceptable identities.
#[derive(Debug, Clone)]
pub struct ExpectedList(pub Vec<Identity>);

impl std::fmt::Display for ExpectedList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            std::fmt::Display::fmt(id, f)?;
        }
        Ok(())
    }
}

fn other(e: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn map_webpki(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertRevoked => CertificateError::Revoked,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// Verifies `end_entity` (with the peer's `intermediates`) against the store's current roots
/// for the given usage and returns the identity it proves.
fn verify_chain(
    store: &CertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<Identity, rustls::Error> {
    let roots = store.roots();
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
    cert.verify_for_usage(
        provider().signature_verification_algorithms.all,
        roots.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(map_webpki)?;
    match LeafInfo::parse_peer(end_entity) {
        Ok(leaf) => Ok(leaf.identity),
        Err(CertError::NotLeafSvid(why)) => Err(other(PeerIdentityError::NotLeafSvid(why))),
        Err(e) => Err(other(PeerIdentityError::NoIdentity(e.to_string()))),
    }
}

/// Returns the verified identity of the peer of an established mesh TLS session.
///
/// Parses the leaf again, once per connection: rustls's verifiers can only return a data-less
/// assertion, and the server's verifier is shared by every connection of its context, so what
/// it parsed could reach this connection only through a lock or a context built per
/// connection, each dearer than the parse. The verifier refused anything but a leaf SVID with
/// exactly one SPIFFE ID, so this parse finds the identity it checked.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, PeerIdentityError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| PeerIdentityError::NoIdentity("peer sent no certificate".into()))?;
    LeafInfo::parse(leaf).map(|l| l.identity).map_err(|e| PeerIdentityError::NoIdentity(e.to_string()))
}

/// Mesh TLS is 1.3 only; a 1.2 handshake cannot reach signature checks.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
}

/// TLS 1.3 handshake signatures, with the mesh provider's algorithms (both verifiers).
fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
}

fn schemes() -> Vec<SignatureScheme> {
    provider().signature_verification_algorithms.supported_schemes()
}

/// Client side: the server must chain to a mesh root and prove one of the expected identities.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) store: CertStore,
    pub(crate) expected: Vec<Identity>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = verify_chain(&self.store, end_entity, intermediates, now, webpki::KeyUsage::server_auth())?;
        if self.expected.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(other(PeerIdentityError::Mismatch { expected: ExpectedList(self.expected.clone()), got }))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// Server side: a client certificate is mandatory and must chain to a mesh root and carry a
/// SPIFFE identity in the server's own trust domain; which identities may do what is policy's
/// business, not TLS's.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    store: CertStore,
    /// The server's own identity: a client must be in its trust domain.
    local: Identity,
}

impl ClientVerifier {
    pub(crate) fn new(store: CertStore, local: Identity) -> Self {
        ClientVerifier { store, local }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got = verify_chain(&self.store, end_entity, intermediates, now, webpki::KeyUsage::client_auth())?;
        if got.trust_domain() != self.local.trust_domain() {
            return Err(other(PeerIdentityError::ForeignTrustDomain { got, local: self.local.clone() }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}
