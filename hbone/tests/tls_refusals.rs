//! What the inbound HBONE port (15008) does with peers that are not mesh workloads: each is
//! refused during the handshake with a reason the proxies count and log, no stream reaches the
//! handler, and the server keeps serving.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::Identity;
use hbone::tunnel::client::ConnectTarget;
use hbone::tunnel::server::ServeError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const SECOND: Duration = Duration::from_secs(1);

/// A client that takes any server: the tests are about what the server does.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        hbone::tls::provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 handshake to `server` presenting `cert` (PEM chain and key), or no certificate.
async fn handshake_presenting(server: &TestServer, cert: Option<(String, String)>) {
    let builder = rustls::ClientConfig::builder_with_provider(hbone::tls::provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut cfg = match cert {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    // In TLS 1.3 the client may finish before the server has judged its certificate; what
    // counts is the server's verdict.
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await {
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(5 * SECOND, tls.read_to_end(&mut sink)).await;
    }
}

/// A ClientHello offering only TLS 1.2: legacy version 1.2, no supported_versions extension.
fn tls12_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2f, 0xc0, 0x2b]); // two ECDHE AES-GCM suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature_algorithms
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d, // supported_groups: x25519
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
    ];
    body.extend_from_slice(&[0, extensions.len() as u8]);
    body.extend_from_slice(extensions);
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

async fn refusal(server: &mut TestServer) -> ServeError {
    server.next_outcome(5 * SECOND).await.expect_err("the connection is refused")
}

fn assert_tls_refusal(err: &ServeError, what: &str, reason: &str) {
    assert_eq!(err.refusal_reason(), Some("hbone_tls_failed"), "{what}: counted as a TLS refusal: {err}");
    let text = err.to_string();
    assert!(text.contains(reason), "{what}: the error names the reason ({reason}): {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_mesh_peers_are_refused_with_a_reason_and_the_server_keeps_serving() {
    let mesh = Mesh::new();
    let (tx, mut streams) = mpsc::unbounded_channel();
    let mut server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;

    // Not TLS at all.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_tls_refusal(&refusal(&mut server).await, "plaintext HTTP", "TLS handshake");

    // A client that speaks TLS 1.2 only.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&tls12_client_hello()).await.unwrap();
    assert_tls_refusal(&refusal(&mut server).await, "TLS 1.2 only", "incompatible");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SECOND, tcp.read_to_end(&mut answer)).await;
    assert_eq!(answer.first(), Some(&0x15), "the TLS 1.2 client gets an alert: {answer:?}");

    // TLS 1.3 without a client certificate.
    handshake_presenting(&server, None).await;
    assert_tls_refusal(&refusal(&mut server).await, "no client certificate", "no certificates");

    // Mesh-rooted certificates that do not carry one valid identity of this trust domain.
    let uri_only = |uri: &'static str| mesh.ca.issue_pem_with(uri, |_| {});
    let cases: Vec<(&str, (String, String), &str)> = vec![
        (
            "no SAN",
            mesh.ca.issue_pem_with("spiffe://unused/ns/a/sa/b", |p| p.subject_alt_names.clear()),
            "NoIdentity(\"certificate must carry exactly one URI SAN; found 0\")",
        ),
        (
            "two URI SANs",
            mesh.ca.issue_pem_with(mesh.client.as_str(), |p| {
                p.subject_alt_names.push(rcgen::SanType::URI("spiffe://cluster.local/ns/b/sa/c".try_into().unwrap()))
            }),
            "NoIdentity(\"certificate must carry exactly one URI SAN; found 2\")",
        ),
        (
            "an extra path segment",
            uri_only("spiffe://cluster.local/ns/a/sa/b/extra"),
            "must be /ns/<namespace>/sa/<service account>",
        ),
        (
            "another trust domain",
            uri_only("spiffe://other.domain/ns/default/sa/client"),
            "ForeignTrustDomain { got: Identity(spiffe://other.domain/ns/default/sa/client)",
        ),
        (
            "a leaf without digitalSignature",
            mesh.ca
                .issue_pem_with(mesh.client.as_str(), |p| p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment]),
            "NotLeafSvid(\"keyUsage lacks digitalSignature\")",
        ),
        (
            "an expired certificate",
            {
                let now = SystemTime::now();
                mesh.ca.issue_pem(&mesh.client, now - 2 * DAY, now - DAY)
            },
            "Expired",
        ),
        ("another CA", TestCa::new("foreign").issue_pem_with(mesh.client.as_str(), |_| {}), "UnknownIssuer"),
    ];
    for (what, cert, reason) in cases {
        handshake_presenting(&server, Some(cert)).await;
        assert_tls_refusal(&refusal(&mut server).await, what, reason);
    }
    assert!(streams.try_recv().is_err(), "no refused peer reached the handler");

    // A mesh workload still gets through, and is seen as the identity of its URI SAN.
    let backend = echo_backend().await;
    let stream = mesh.pool().connect(&mesh.key(server.addr), &ConnectTarget::new(backend, None)).await.unwrap();
    drop(stream);
    let seen = streams.recv().await.unwrap();
    assert_eq!(seen.peer, mesh.client);
    let _: Identity = seen.peer;
}
