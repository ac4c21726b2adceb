//! What the mesh verifiers make of peer certificates, one property at a time: each case is a
//! certificate a mesh CA would not issue (or a valid one used where it does not belong), and
//! each must be refused with a reason that says why.

use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, Error};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::verify::{ClientVerifier, PeerIdentityError, ServerVerifier};
use crate::certs::TrustRoots;
use crate::identity::Identity;
use crate::store::CertStore;
use crate::testing::{DAY, TestCa, id};

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

/// The server side's verdict on a client certificate, for a server whose identity is `local`.
fn as_client(store: &CertStore, local: &Identity, pem: &str) -> Result<(), Error> {
    let chain = chain(pem);
    ClientVerifier::new(store.clone(), local.clone())
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

/// The client side's verdict on a server certificate, expecting `expected`.
fn as_server(store: &CertStore, expected: &Identity, pem: &str) -> Result<(), Error> {
    let chain = chain(pem);
    let verifier = ServerVerifier { store: store.clone(), expected: vec![expected.clone()] };
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now()).map(|_| ())
}

fn identity_error(e: &Error) -> Option<&PeerIdentityError> {
    match e {
        Error::InvalidCertificate(CertificateError::Other(o)) => o.0.downcast_ref(),
        _ => None,
    }
}

struct Setup {
    ca: TestCa,
    store: CertStore,
    server: Identity,
    client: Identity,
}

fn setup() -> Setup {
    let ca = TestCa::new("verify");
    let store = CertStore::new(ca.roots());
    Setup { ca, store, server: id("backend", "server"), client: id("default", "client") }
}

impl Setup {
    fn leaf(&self, uri: &str, edit: impl FnOnce(&mut CertificateParams)) -> String {
        self.ca.issue_pem_with(uri, edit).0
    }
}

#[test]
fn a_workload_certificate_is_accepted_both_ways() {
    let s = setup();
    let client = s.leaf(s.client.as_str(), |_| {});
    as_client(&s.store, &s.server, &client).unwrap();
    let server = s.leaf(s.server.as_str(), |_| {});
    as_server(&s.store, &s.server, &server).unwrap();
    // Other SAN types beside the one URI are allowed (X.509-SVID §2); the URI is the identity.
    let with_dns =
        s.leaf(s.client.as_str(), |p| p.subject_alt_names.push(SanType::DnsName("client".try_into().unwrap())));
    as_client(&s.store, &s.server, &with_dns).unwrap();
    // No extendedKeyUsage at all is allowed: it is only checked when present.
    let no_eku = s.leaf(s.client.as_str(), |p| p.extended_key_usages.clear());
    as_client(&s.store, &s.server, &no_eku).unwrap();
}

#[test]
fn identities_that_are_not_one_valid_spiffe_uri_are_refused() {
    let s = setup();
    let cases: Vec<(&str, String)> = vec![
        (
            "no SAN, identity only in the CN",
            s.leaf("spiffe://unused/ns/a/sa/b", |p| {
                p.subject_alt_names.clear();
                p.distinguished_name.push(rcgen::DnType::CommonName, s.client.as_str());
            }),
        ),
        (
            "a DNS SAN only",
            s.leaf("spiffe://unused/ns/a/sa/b", |p| {
                p.subject_alt_names = vec![SanType::DnsName("default.client".try_into().unwrap())];
            }),
        ),
        (
            "two URI SANs",
            s.leaf(s.client.as_str(), |p| {
                p.subject_alt_names
                    .push(SanType::URI("spiffe://cluster.local/ns/kube-system/sa/admin".try_into().unwrap()));
            }),
        ),
        ("an extra path segment", s.leaf("spiffe://cluster.local/ns/a/sa/b/extra", |_| {})),
        ("a query", s.leaf("spiffe://cluster.local/ns/a/sa/b?x", |_| {})),
        ("a fragment", s.leaf("spiffe://cluster.local/ns/a/sa/b#x", |_| {})),
        ("a port", s.leaf("spiffe://cluster.local:443/ns/a/sa/b", |_| {})),
        ("userinfo", s.leaf("spiffe://u@cluster.local/ns/a/sa/b", |_| {})),
        ("a dot-dot segment", s.leaf("spiffe://cluster.local/ns/../sa/b", |_| {})),
        ("an empty segment", s.leaf("spiffe://cluster.local/ns//sa/b", |_| {})),
        ("another scheme", s.leaf("https://cluster.local/ns/a/sa/b", |_| {})),
    ];
    for (what, pem) in &cases {
        for (side, verdict) in
            [("server", as_client(&s.store, &s.server, pem)), ("client", as_server(&s.store, &s.server, pem))]
        {
            let err = verdict.expect_err(what);
            assert!(
                matches!(identity_error(&err), Some(PeerIdentityError::NoIdentity(_))),
                "{side} side, {what}: refused for the wrong reason: {err}"
            );
        }
    }
}

#[test]
fn a_leaf_that_is_a_ca_is_refused() {
    let s = setup();
    let pem = s.leaf(s.client.as_str(), |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    });
    for err in [as_client(&s.store, &s.server, &pem).unwrap_err(), as_server(&s.store, &s.client, &pem).unwrap_err()] {
        assert!(err.to_string().contains("CaUsedAsEndEntity"), "{err}");
    }
}

#[test]
fn a_leaf_whose_key_usage_is_not_a_leaf_svids_is_refused() {
    let s = setup();
    let cases: Vec<(&str, Vec<KeyUsagePurpose>)> = vec![
        ("no keyUsage extension", vec![]),
        ("keyUsage without digitalSignature", vec![KeyUsagePurpose::KeyEncipherment]),
        ("keyCertSign on a leaf", vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]),
        ("cRLSign on a leaf", vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]),
    ];
    for (what, usages) in cases {
        let client = s.leaf(s.client.as_str(), |p| p.key_usages = usages.clone());
        let server = s.leaf(s.server.as_str(), |p| p.key_usages = usages);
        for (side, verdict) in
            [("server", as_client(&s.store, &s.server, &client)), ("client", as_server(&s.store, &s.server, &server))]
        {
            let err = verdict.expect_err(what);
            assert!(
                matches!(identity_error(&err), Some(PeerIdentityError::NotLeafSvid(_))),
                "{side} side, {what}: refused for the wrong reason: {err}"
            );
        }
    }
}

#[test]
fn extended_key_usage_must_allow_the_side_the_certificate_is_used_on() {
    let s = setup();
    let server_only = s.leaf(s.client.as_str(), |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
    let err = as_client(&s.store, &s.server, &server_only).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(CertificateError::InvalidPurpose)), "{err}");
    let client_only = s.leaf(s.server.as_str(), |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let err = as_server(&s.store, &s.server, &client_only).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(CertificateError::InvalidPurpose)), "{err}");
}

#[test]
fn validity_is_checked_against_the_clock() {
    let s = setup();
    let now = SystemTime::now();
    let expired = s.leaf(s.client.as_str(), |p| {
        p.not_before = (now - 2 * DAY).into();
        p.not_after = (now - Duration::from_secs(60)).into();
    });
    let future = s.leaf(s.client.as_str(), |p| {
        p.not_before = (now + Duration::from_secs(3600)).into();
        p.not_after = (now + DAY).into();
    });
    let err = as_client(&s.store, &s.server, &expired).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(CertificateError::Expired)), "{err}");
    let err = as_client(&s.store, &s.server, &future).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(CertificateError::NotValidYet)), "{err}");
    let err = as_server(&s.store, &s.client, &expired).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(CertificateError::Expired)), "{err}");
}

#[test]
fn the_client_refuses_a_valid_certificate_of_another_identity() {
    let s = setup();
    let other = s.leaf(id("backend", "other").as_str(), |_| {});
    let err = as_server(&s.store, &s.server, &other).unwrap_err();
    assert!(matches!(identity_error(&err), Some(PeerIdentityError::Mismatch { .. })), "{err}");
    // Same namespace and service account in another trust domain is another identity.
    let foreign_td = s.leaf(Identity::new("other.domain", "backend", "server").unwrap().as_str(), |_| {});
    let err = as_server(&s.store, &s.server, &foreign_td).unwrap_err();
    assert!(matches!(identity_error(&err), Some(PeerIdentityError::Mismatch { .. })), "{err}");
}

#[test]
fn the_server_refuses_a_client_of_another_trust_domain_signed_by_the_same_root() {
    let s = setup();
    let foreign = Identity::new("other.domain", "default", "client").unwrap();
    let pem = s.leaf(foreign.as_str(), |_| {});
    let err = as_client(&s.store, &s.server, &pem).unwrap_err();
    assert!(
        matches!(identity_error(&err), Some(PeerIdentityError::ForeignTrustDomain { .. })),
        "refused for the wrong reason: {err}"
    );
    assert!(err.to_string().contains("other.domain"), "{err}");
    // A server in that trust domain takes it.
    let local = Identity::new("other.domain", "backend", "server").unwrap();
    as_client(&s.store, &local, &pem).unwrap();
}

#[test]
fn a_chain_to_another_root_is_refused_until_that_root_is_trusted() {
    let s = setup();
    let next = TestCa::new("next root");
    let pem = next.issue_pem_with(s.client.as_str(), |_| {}).0;
    let err = as_client(&s.store, &s.server, &pem).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(CertificateError::UnknownIssuer)), "{err}");
    // Root rotation: with both roots, both old and new leaves verify.
    s.store.set_roots(s.ca.roots().merged(&next.roots()));
    as_client(&s.store, &s.server, &pem).unwrap();
    as_client(&s.store, &s.server, &s.leaf(s.client.as_str(), |_| {})).unwrap();
    // Old root removed: its leaves are refused by new handshakes.
    s.store.set_roots(next.roots());
    let err = as_client(&s.store, &s.server, &s.leaf(s.client.as_str(), |_| {})).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(CertificateError::UnknownIssuer)), "{err}");
    let _: &TrustRoots = &s.store.roots();
}

#[test]
fn bytes_that_are_not_a_certificate_are_refused_without_panicking() {
    let s = setup();
    let good = chain(&s.leaf(s.client.as_str(), |_| {})).remove(0);
    let verifier = ClientVerifier::new(s.store.clone(), s.server.clone());
    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0x30], vec![0x30, 0x80], vec![0xff; 64]];
    // Every truncation and a flipped byte at many offsets of a real certificate.
    for cut in (0..good.len()).step_by(7) {
        inputs.push(good[..cut].to_vec());
        let mut flipped = good.to_vec();
        flipped[cut] ^= 0x41;
        inputs.push(flipped);
    }
    for der in inputs {
        let der = CertificateDer::from(der);
        assert!(verifier.verify_client_cert(&der, &[], UnixTime::now()).is_err());
    }
}

/// A handshake over an in-memory pipe between a client presenting `client_cert` and a server
/// presenting what `server_store` holds for `server`; both sides' results.
async fn handshake(
    client_store: &CertStore,
    client_cert: std::sync::Arc<crate::certs::WorkloadCert>,
    server_store: &CertStore,
    server: &Identity,
) -> (Result<(), std::io::Error>, Result<(), std::io::Error>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (c, s) = tokio::io::duplex(64 * 1024);
    let client_cfg = super::client_config(client_store, client_cert, vec![server.clone()]);
    let server_cfg = super::server_config(server_store, server.clone());
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let client = async {
        // In TLS 1.3 the server judges the client's certificate after the client is done:
        // read until the server's verdict arrives (an alert) or it closes.
        let mut tls = tokio_rustls::TlsConnector::from(client_cfg).connect(name, c).await?;
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await.map(|_| ())
    };
    let server = async {
        let mut tls = tokio_rustls::TlsAcceptor::from(server_cfg).accept(s).await?;
        tls.write_all(b"x").await?;
        tls.flush().await
    };
    tokio::join!(client, server)
}

fn rustls_error(e: &std::io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}

#[tokio::test]
async fn an_expired_own_certificate_is_not_presented() {
    let s = setup();
    let now = SystemTime::now();
    let client_cert = std::sync::Arc::new(s.ca.issue(&s.client, DAY));
    s.store.insert(s.ca.issue(&s.server, DAY));
    let (client, server) = handshake(&s.store, client_cert.clone(), &s.store, &s.server).await;
    client.unwrap();
    server.unwrap();

    // The server's own certificate has expired: it refuses to answer rather than present it.
    let expired_store = CertStore::new(s.ca.roots());
    expired_store.insert(s.ca.issue_between(&s.server, now - 2 * DAY, now - Duration::from_secs(1)));
    let (client, server) = handshake(&s.store, client_cert, &expired_store, &s.server).await;
    let server = server.unwrap_err();
    assert!(
        matches!(rustls_error(&server), Some(Error::General(_))),
        "the server refuses for want of a usable certificate: {server:?}"
    );
    let client = client.unwrap_err();
    assert!(
        !matches!(rustls_error(&client), Some(Error::InvalidCertificate(_))),
        "the client was never shown the expired certificate: {client:?}"
    );

    // The client's own certificate has expired: it presents none, and the server refuses.
    let expired_client =
        std::sync::Arc::new(s.ca.issue_between(&s.client, now - 2 * DAY, now - Duration::from_secs(1)));
    let (_, server) = handshake(&s.store, expired_client, &s.store, &s.server).await;
    let server = server.unwrap_err();
    assert!(
        matches!(rustls_error(&server), Some(Error::NoCertificatesPresented)),
        "the server was shown no certificate: {server:?}"
    );
}

#[test]
fn a_second_subject_alt_name_extension_is_refused() {
    let s = setup();
    // GeneralNames ::= SEQUENCE { uniformResourceIdentifier [6] IA5String }
    let uri = b"spiffe://cluster.local/ns/kube-system/sa/admin";
    let mut der = vec![0x30, uri.len() as u8 + 2, 0x86, uri.len() as u8];
    der.extend_from_slice(uri);
    let san_oid = [2, 5, 29, 17];
    let pem = s.leaf(s.client.as_str(), |p| {
        p.custom_extensions.push(rcgen::CustomExtension::from_oid_content(&san_oid, der.clone()))
    });
    let server_pem = s
        .leaf(s.server.as_str(), |p| p.custom_extensions.push(rcgen::CustomExtension::from_oid_content(&san_oid, der)));
    let err = as_client(&s.store, &s.server, &pem).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(_)), "{err}");
    let err = as_server(&s.store, &s.server, &server_pem).unwrap_err();
    assert!(matches!(err, Error::InvalidCertificate(_)), "{err}");
}
