//! istiod-lite's own serving certificate and the TLS listener of port 15012.
//!
//! The certificate is issued from the mesh root, so proxies that trust the mesh roots (ztunnel's
//! `--ca-root-file`) can verify it without any other trust store. Like Istio's istiod
//! certificate it carries DNS names (`istiod.istio-system.svc`, which clients check by default,
//! plus `istiod-lite` and any `--tls-san`); it also carries istiod's SPIFFE identity
//! (`spiffe://<td>/ns/istio-system/sa/istiod`) as its one URI SAN, for clients that verify
//! identities rather than names. It is renewed at half its life; every handshake reads the
//! current one, so renewal needs no restart and drops no connection.
//!
//! The certificate is signed through the CA's own [`crate::ca::CaSigner`], so it always chains
//! to the root the CA issues from. Clients are not asked for certificates: proxies
//! authenticate to the CA with their bootstrap tokens or, in Kubernetes, their service-account
//! tokens, as with Istio's 15012.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// DNS names every serving certificate carries: the name Istio clients check by default, and
/// our own.
pub const DEFAULT_DNS_NAMES: [&str; 2] = ["istiod.istio-system.svc", "istiod-lite"];

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The mesh root cannot sign or its certificate is unusable.
    #[error("mesh root: {0}")]
    Root(#[source] crate::ca::CaError),
    /// A `--tls-san` entry is neither an IP address nor a DNS name.
    #[error("--tls-san {name:?}: {why}")]
    San {
        /// The entry.
        name: String,
        /// Why it is refused.
        why: String,
    },
    /// Issuing or loading the certificate failed.
    #[error("issuing the serving certificate: {0}")]
    Issue(String),
}

/// What the serving certificate says and how long it lives.
#[derive(Debug, Clone)]
pub struct ServingCertSpec {
    /// The SPIFFE identity (one URI SAN).
    pub identity: hbone::Identity,
    /// DNS names and IP addresses, beyond [`DEFAULT_DNS_NAMES`].
    pub extra_names: Vec<String>,
    /// Validity of each certificate; renewed at half of it.
    pub ttl: Duration,
}

/// The current serving certificate, swapped on renewal; shared by every handshake.
#[derive(Debug, Clone)]
pub struct ServingCert {
    inner: Arc<Inner>,
}

struct Inner {
    signer: Arc<crate::ca::CaSigner>,
    root_der: CertificateDer<'static>,
    spec: ServingCertSpec,
    current: RwLock<Current>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").field("spec", &self.spec).finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl ServingCert {
    /// Issues the first certificate through the mesh CA's `signer` (the same root and key the
    /// CA signs workload certificates with).
    pub fn issue(signer: Arc<crate::ca::CaSigner>, spec: ServingCertSpec) -> Result<ServingCert, TlsError> {
        let root_der = signer.root_der();
        for name in &spec.extra_names {
            san(name)?;
        }
        let first = make(&signer, &root_der, &spec)?;
        Ok(ServingCert { inner: Arc::new(Inner { signer, root_der, spec, current: RwLock::new(first) }) })
    }

    /// Issues a fresh certificate and serves it from the next handshake on.
    pub fn renew(&self) -> Result<(), TlsError> {
        let next = make(&self.inner.signer, &self.inner.root_der, &self.inner.spec)?;
        *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The end of validity of the current certificate.
    pub fn not_after(&self) -> SystemTime {
        self.read().not_after
    }

    /// The current chain (leaf, root), DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.read().key.cert.clone()
    }

    fn read(&self) -> Current {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Renews the certificate at about half its remaining life, forever; a failed renewal is
    /// retried every few seconds while the current certificate is still served.
    pub async fn renew_forever(self) {
        loop {
            let left = self.not_after().duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(left / 2).await;
            while let Err(e) = self.renew() {
                tracing::error!(error = %e, "renewing istiod's serving certificate failed; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            tracing::info!(not_after = ?self.not_after(), "renewed istiod's serving certificate");
        }
    }

    /// A TLS 1.3 server context (ALPN `h2`, mesh cipher suites) presenting the current
    /// certificate at every handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut cfg = ServerConfig::builder_with_provider(hbone::tls::provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the mesh provider supports TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.inner.current.read().unwrap_or_else(|p| p.into_inner()).key.clone())
    }
}

fn san(name: &str) -> Result<SanType, TlsError> {
    let bad = |why: String| TlsError::San { name: name.to_owned(), why };
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(name.try_into().map_err(|e: rcgen::Error| bad(e.to_string()))?)),
    }
}

/// A fresh key and certificate; its serial number is drawn by the signer, like every other
/// certificate of the mesh root ([`crate::ca::signer::random_serial`]).
fn make(
    signer: &crate::ca::CaSigner,
    root: &CertificateDer<'static>,
    spec: &ServingCertSpec,
) -> Result<Current, TlsError> {
    let err = |e: rcgen::Error| TlsError::Issue(e.to_string());
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "istiod-lite");
    params.subject_alt_names = DEFAULT_DNS_NAMES
        .iter()
        .map(|n| san(n))
        .chain(spec.extra_names.iter().map(|n| san(n)))
        .collect::<Result<Vec<_>, _>>()?;
    params.subject_alt_names.push(SanType::URI(spec.identity.as_str().try_into().map_err(err)?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    let not_after = now + spec.ttl;
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = not_after.into();
    let leaf = signer.sign_params(params, &key).map_err(TlsError::Root)?;
    let signer = hbone::tls::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Issue(e.to_owned()))?)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let key = Arc::new(CertifiedKey::new(vec![leaf.der().clone(), root.clone()], signer));
    Ok(Current { key, not_after })
}

/// An accepted TLS connection, with the TCP peer for tonic (`Request::remote_addr`).
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes their TLS handshakes concurrently (a
/// slow or silent client holds up no one); yields the established ones for tonic's
/// `serve_with_incoming`. Failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl tokio_stream::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // The server dropping the stream (its task aborted) closes the listener too.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the TLS port failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConn { stream, info })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
