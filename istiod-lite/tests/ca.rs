//! The CA's decisions, called as a gRPC service would be: who gets which certificate, and
//! what every refusal says; and the serial numbers of what the mesh root signs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hbone::Identity;
use istiod_lite::ca::{CaService, CaSigner, IMPERSONATED_IDENTITY, NodeTokens};
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use tonic::{Code, Request};

fn service(dir: &std::path::Path) -> CaService<impl istiod_lite::ca::Placement> {
    let signer = Arc::new(CaSigner::load_or_generate(dir, "cluster.local").unwrap());
    let tokens = NodeTokens::from(HashMap::from([("token-of-node-a-0123456789".to_owned(), "node-a".to_owned())]));
    let placement =
        |id: &Identity, node: &str| node == "node-a" && id.as_str() == "spiffe://cluster.local/ns/shop/sa/web";
    CaService::new(signer, tokens, Arc::new(placement))
}

fn csr(san: &str) -> String {
    csr_with(&rcgen::KeyPair::generate().unwrap(), san)
}

fn csr_with(key: &rcgen::KeyPair, san: &str) -> String {
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
    p.serialize_request(key).unwrap().pem().unwrap()
}

/// The serialNumber INTEGER of a DER certificate (Certificate → TBSCertificate → `[0]` version
/// → serialNumber), its content octets as encoded, read by hand, independently of the code
/// under test.
fn serial_of_der(der: &[u8]) -> Vec<u8> {
    /// (tag, content, rest) of the DER element at the start of `b`.
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] & 0x80 == 0 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (b[2..2 + n].iter().fold(0usize, |acc, x| (acc << 8) | *x as usize), 2 + n)
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, cert, _) = tlv(der);
    let (_, tbs, _) = tlv(cert);
    let (tag, _version, rest) = tlv(tbs);
    assert_eq!(tag, 0xa0, "v3 certificate with an explicit version");
    let (tag, serial, _) = tlv(rest);
    assert_eq!(tag, 0x02, "serialNumber is an INTEGER");
    serial.to_vec()
}

fn serial_of_pem(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    serial_of_der(&rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
}

/// RFC 5280 §4.1.2.2: a serial number is a positive INTEGER of at most 20 octets; this CA's
/// are 128 random bits with the top bit clear, so no more than 16 octets and never the same
/// for two certificates.
fn assert_well_formed_serial(serial: &[u8]) {
    assert!(!serial.is_empty() && serial.len() <= 16, "serial {serial:02x?}: 1 to 16 octets");
    assert_eq!(serial[0] & 0x80, 0, "serial {serial:02x?} is negative");
    assert!(serial.iter().any(|b| *b != 0), "serial {serial:02x?} is zero");
}

fn request(token: Option<&str>, impersonate: Option<&str>, csr: String) -> Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(id.to_owned())) },
        )]
        .into_iter()
        .collect(),
    });
    let mut r = Request::new(IstioCertificateRequest { csr, validity_duration: 3600, metadata });
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test]
async fn grants_and_refusals() {
    let dir = std::env::temp_dir().join(format!("istiod-ca-svc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = service(&dir);
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let token = Some("token-of-node-a-0123456789");

    let ok = ca.create_certificate(request(token, Some(web), csr(web))).await.unwrap().into_inner();
    assert_eq!(ok.cert_chain.len(), 2, "leaf and root");

    let cases: Vec<(&str, Request<IstioCertificateRequest>, Code, &str)> = vec![
        ("no token", request(None, Some(web), csr(web)), Code::Unauthenticated, "no bearer token"),
        ("unknown token", request(Some("guess"), Some(web), csr(web)), Code::Unauthenticated, "unknown token"),
        ("no identity named", request(token, None, csr(web)), Code::InvalidArgument, IMPERSONATED_IDENTITY),
        ("malformed identity", request(token, Some("spiffe://x/y"), csr(web)), Code::InvalidArgument, "path"),
        (
            "pod on another node",
            request(token, Some("spiffe://cluster.local/ns/shop/sa/admin"), csr(web)),
            Code::PermissionDenied,
            "node-a",
        ),
        (
            "identity mismatch",
            request(token, Some(web), csr("spiffe://cluster.local/ns/shop/sa/admin")),
            Code::PermissionDenied,
            "sa/admin",
        ),
        ("malformed CSR", request(token, Some(web), "not a CSR".into()), Code::InvalidArgument, "malformed CSR"),
    ];
    for (what, req, code, says) in cases {
        let status = ca.create_certificate(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {:?} should mention {says:?}", status.message());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `validity_duration` is the caller's to choose within bounds: none (zero or negative) is the
/// default lifetime, as in Istio, up to the longest is granted as asked, and more than the
/// longest is refused naming the field (Istio's CA refuses too), never shortened in silence
/// and never an overflow.
#[tokio::test]
async fn requested_validity_is_bounded() {
    let dir = std::env::temp_dir().join(format!("istiod-ca-validity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = Arc::new(CaSigner::load_or_generate(&dir, "cluster.local").unwrap());
    let (default_ttl, max_ttl) = (signer.default_ttl, signer.max_ttl);
    assert_eq!(max_ttl, Duration::from_secs(90 * 86400), "Istio's MAX_WORKLOAD_CERT_TTL");
    let token = "token-of-node-a-0123456789";
    let tokens = NodeTokens::from(HashMap::from([(token.to_owned(), "node-a".to_owned())]));
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let placement = move |id: &Identity, node: &str| node == "node-a" && id.as_str() == web;
    let ca = CaService::new(signer, tokens, Arc::new(placement));
    let longest = max_ttl.as_secs() as i64;
    for (asked, lives) in [
        (600, Duration::from_secs(600)),
        (0, default_ttl),
        (-1, default_ttl),
        (i64::MIN, default_ttl),
        (longest, max_ttl),
    ] {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut req = request(Some(token), Some(web), csr_with(&key, web));
        req.get_mut().validity_duration = asked;
        let chain = ca.create_certificate(req).await.unwrap_or_else(|s| panic!("{asked}: {s:?}")).into_inner();
        let cert = hbone::WorkloadCert::from_pem(chain.cert_chain.join("").as_bytes(), key.serialize_pem().as_bytes())
            .unwrap();
        let left = cert.remaining(std::time::SystemTime::now());
        // A minute of slack for the time the test takes, far less than any two lifetimes differ.
        assert!(
            left <= lives && left + Duration::from_secs(60) > lives,
            "{asked} s asked: lives {left:?}, not {lives:?}"
        );
    }
    for asked in [longest + 1, i64::MAX] {
        let mut req = request(Some(token), Some(web), csr(web));
        req.get_mut().validity_duration = asked;
        let status = ca.create_certificate(req).await.expect_err("longer than the longest");
        assert_eq!(status.code(), Code::InvalidArgument, "{asked}: {status:?}");
        assert!(
            status.message().contains("validity_duration") && status.message().contains(&format!("{longest} s")),
            "{asked}: {:?} names the field and the bound",
            status.message()
        );
        assert_eq!(istiod_lite::ca::Refusal::of(&status), Some("ttl_too_long"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// RFC 5280 §4.1.2.2: the serial number "MUST be unique for each certificate issued by a given
/// CA". Workload certificates get random serials (as with Istio's CA, 128 random bits), so two
/// certificates differ in serial even when they certify the same key, and nobody can predict
/// one from a CSR.
#[tokio::test]
async fn workload_certificates_have_unique_serials() {
    let dir = std::env::temp_dir().join(format!("istiod-ca-serial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = Arc::new(CaSigner::load_or_generate(&dir, "cluster.local").unwrap());
    let token = "token-of-node-a-0123456789";
    let tokens = NodeTokens::from(HashMap::from([(token.to_owned(), "node-a".to_owned())]));
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let api = "spiffe://cluster.local/ns/shop/sa/api";
    let placement = move |id: &Identity, node: &str| node == "node-a" && (id.as_str() == web || id.as_str() == api);
    let ca = CaService::new(signer.clone(), tokens, Arc::new(placement));

    // One key, two identities; one key and identity, twice.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut serials = vec![serial_of_pem(signer.root_pem())];
    for id in [web, api, api] {
        let issued = ca.create_certificate(request(Some(token), Some(id), csr_with(&key, id))).await.unwrap();
        serials.push(serial_of_pem(&issued.into_inner().cert_chain[0]));
    }
    let mut unique = serials.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), serials.len(), "the root and three certificates share serials: {serials:02x?}");
    for s in &serials {
        assert_well_formed_serial(s);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// RFC 5280 §4.1.2.2 again, for istiod-lite's own serving certificate: the root persists in
/// `--ca-dir` across restarts, so the serial must be unique across processes too (a counter
/// restarting at 1 would repeat), and across renewals within one.
#[test]
fn serving_certificates_have_unique_serials_across_restarts() {
    let dir = std::env::temp_dir().join(format!("istiod-ca-serving-serial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = || istiod_lite::tls::ServingCertSpec {
        identity: Identity::new("cluster.local", "istio-system", "istiod").unwrap(),
        extra_names: Vec::new(),
        ttl: Duration::from_secs(3600),
    };
    // Two starts of istiod-lite over the same CA directory, the second renewing once.
    let start = || {
        let signer = Arc::new(CaSigner::load_or_generate(&dir, "cluster.local").unwrap());
        istiod_lite::tls::ServingCert::issue(signer, spec()).unwrap()
    };
    let first = start();
    let second = start();
    assert_eq!(first.chain()[1], second.chain()[1], "the same root");
    let before_renewal = second.chain()[0].clone();
    second.renew().unwrap();
    let serials: Vec<Vec<u8>> =
        [&first.chain()[0], &before_renewal, &second.chain()[0]].iter().map(|der| serial_of_der(der)).collect();
    assert_ne!(serials[0], serials[1], "the serving certificates of two starts share a serial");
    assert_ne!(serials[1], serials[2], "a renewed serving certificate keeps the serial");
    assert_ne!(serials[0], serials[2]);
    for s in &serials {
        assert_well_formed_serial(s);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
