//! TLS to the control plane (`https://` xDS and CA addresses): TLS 1.3, ALPN `h2`, istiod's
//! certificate verified against the mesh roots (`--ca-root-file`).
//!
//! The certificate must name the address's host (DNS name or IP), or the alternative hostname
//! when one is configured (`--alt-xds-hostname`/`--alt-ca-hostname`, as Istio's ztunnel does:
//! connect to an IP, check the service name `istiod.istio-system.svc`). A certificate that
//! chains to the roots but names neither is refused with an error naming what was expected and
//! what the certificate carries. No client certificate is sent: the CA authenticates ztunnel by
//! its bootstrap token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Why a control-plane TLS client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The address has no host.
    #[error("{0:?} has no host")]
    NoHost(String),
    /// A host or alternative hostname is not a valid server name.
    #[error("{name:?} is not a DNS name or IP address")]
    BadName {
        /// The name.
        name: String,
    },
    /// The roots cannot be used for verification.
    #[error("mesh roots unusable for verifying istiod: {0}")]
    Roots(String),
}

/// istiod's certificate chains to the mesh roots but names none of the expected names.
#[derive(thiserror::Error)]
#[error("istiod's certificate is not valid for {expected}; it names {presented}")]
pub struct NameMismatch {
    /// The names that were acceptable, joined with " or ".
    pub expected: String,
    /// The DNS/IP names the certificate carries.
    pub presented: String,
}

// rustls shows a custom certificate error with `Debug`: make that the readable message.
impl std::fmt::Debug for NameMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Connects to the control plane over TLS; a tonic connector
/// (`Endpoint::connect_with_connector`).
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    sni: ServerName<'static>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("sni", &self.sni).finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `address` (an `https://host:port` URI) verifying istiod against
    /// `roots`, accepting a certificate for the host or for `alt_hostname`.
    pub fn new(address: &str, alt_hostname: Option<&str>, roots: &hbone::TrustRoots) -> Result<Connector, SetupError> {
        let uri: Uri = address.parse().map_err(|_| SetupError::NoHost(address.to_owned()))?;
        let host = uri.host().ok_or_else(|| SetupError::NoHost(address.to_owned()))?;
        let name = |n: &str| {
            ServerName::try_from(n.trim_start_matches('[').trim_end_matches(']').to_owned())
                .map_err(|_| SetupError::BadName { name: n.to_owned() })
        };
        let sni = name(host)?;
        let mut names = vec![sni.clone()];
        if let Some(alt) = alt_hostname {
            names.push(name(alt)?);
        }
        let mut store = RootCertStore::empty();
        for r in roots.certificates() {
            store.add(r.clone()).map_err(|e| SetupError::Roots(e.to_string()))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), hbone::tls::provider().clone())
            .build()
            .map_err(|e| SetupError::Roots(e.to_string()))?;
        let mut cfg = ClientConfig::builder_with_provider(hbone::tls::provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the mesh provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IstiodVerifier { webpki, names }))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Connector { tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)), sni })
    }

    /// Opens a TCP connection to `uri`'s host and port and completes the TLS handshake.
    pub async fn connect(&self, uri: &Uri) -> std::io::Result<TlsStream<TcpStream>> {
        let host = uri.host().ok_or_else(|| std::io::Error::other("address has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        self.tls.connect(self.sni.clone(), tcp).await
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { me.connect(&uri).await.map(TokioIo::new) })
    }
}

#[derive(Debug)]
struct IstiodVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for IstiodVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut presented = Vec::new();
        for name in &self.names {
            match self.webpki.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
                Ok(v) => return Ok(v),
                Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                    presented: p,
                    ..
                })) => presented = p.iter().map(|n| readable_name(n)).collect(),
                Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {}
                Err(other) => return Err(other),
            }
        }
        let expected = self.names.iter().map(|n| n.to_str().into_owned()).collect::<Vec<_>>().join(" or ");
        let presented = if presented.is_empty() { "no DNS or IP names".to_owned() } else { presented.join(", ") };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NameMismatch {
            expected,
            presented,
        })))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `DnsName("istiod.istio-system.svc")` (as rustls lists a certificate's names) as
/// `DNS:istiod.istio-system.svc`.
fn readable_name(n: &str) -> String {
    let Some((kind, rest)) = n.split_once("(\"") else { return n.to_owned() };
    let value = rest.trim_end_matches("\")");
    let kind = match kind {
        "DnsName" => "DNS",
        "IpAddress" => "IP",
        "UniformResourceIdentifier" => "URI",
        other => other,
    };
    format!("{kind}:{value}")
}

/// The error and its sources in one line, for logs that must say why a connection failed.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}
