//! Building rustls contexts for mesh TLS.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::certs::WorkloadCert;
use crate::identity::Identity;
use crate::log_budget::LogBudget;
use crate::store::CertStore;

use super::verify::{ClientVerifier, ServerVerifier};
use super::{ALPN_H2, provider};

/// A client context that presents `cert` (not once it has expired: the handshake then fails)
/// and accepts a server only if it chains to the store's roots and proves one of `expected`.
///
/// Built per new connection: the expected identity belongs to the destination, and pooling
/// makes new connections rare next to new streams.
pub fn client_config(store: &CertStore, cert: Arc<WorkloadCert>, expected: Vec<Identity>) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the mesh provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier { store: store.clone(), expected }))
        .with_client_cert_resolver(Arc::new(FixedClientCert(cert)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    // Mesh peers are verified afresh on every connection; resumption would skip that.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// A server context that presents the store's current certificate for `identity` (looked up at
/// every handshake, so rotation needs no rebuild; refused once expired) and requires a mesh
/// client certificate of the same trust domain.
pub fn server_config(store: &CertStore, identity: Identity) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the mesh provider supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(ClientVerifier::new(store.clone(), identity.clone())))
        .with_cert_resolver(Arc::new(StoreServerCert { store: store.clone(), identity }));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Arc::new(cfg)
}

/// Whether our own `cert` may be presented now (see [`WorkloadCert::check_unexpired`]). When
/// not, the handshake fails here, with this log naming why, instead of at the peer.
fn presentable(cert: &WorkloadCert) -> bool {
    match cert.check_unexpired(SystemTime::now()) {
        Ok(()) => true,
        Err(expired) => {
            if let Some(skipped) = NO_CERT_LOG.admit() {
                tracing::warn!(
                    identity = %expired.identity,
                    not_after = %crate::certs::show_time(expired.not_after),
                    skipped,
                    "own certificate has expired; not presenting it, handshake refused"
                );
            }
            false
        }
    }
}

/// Lines a second about handshakes refused for want of a usable own certificate: each peer
/// connection can cause one, so the log keeps examples and cannot be flooded.
static NO_CERT_LOG: LogBudget = LogBudget::per_second(5);

#[derive(Debug)]
struct FixedClientCert(Arc<WorkloadCert>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        presentable(&self.0).then(|| self.0.certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct StoreServerCert {
    store: CertStore,
    identity: Identity,
}

impl ResolvesServerCert for StoreServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.store.get(&self.identity);
        if cert.is_none()
            && let Some(skipped) = NO_CERT_LOG.admit()
        {
            tracing::warn!(identity = %self.identity, skipped, "no certificate for local identity; refusing handshake");
        }
        cert.filter(|c| presentable(c)).map(|c| c.certified_key().clone())
    }
}
