//! The signer: what a CSR may ask, what it gets, and what the root persists. CSRs under
//! `testdata/` were made with OpenSSL 3 (keys and hashes rcgen cannot produce); their one SAN
//! is `spiffe://cluster.local/ns/shop/sa/web`.

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

    // Up to the longest lifetime is granted; longer is refused, not shortened.
    let (req, key) = csr(None);
    let chain = ca.sign(&req, &id, Some(ca.max_ttl)).unwrap();
    let cert = hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    assert!(cert.remaining(SystemTime::now()) <= ca.max_ttl);
    let e = ca.sign(&req, &id, Some(ca.max_ttl + Duration::from_secs(1))).unwrap_err();
    assert!(matches!(e, CaError::TtlTooLong { requested, max } if requested == max + 1), "{e}");
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

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn web() -> Identity {
    WEB.parse().unwrap()
}

fn signer(name: &str) -> (CaSigner, PathBuf) {
    let dir = tmpdir(name);
    (CaSigner::load_or_generate(&dir, "cluster.local").unwrap(), dir)
}

fn refusal(r: Result<Vec<String>, CaError>) -> String {
    match r {
        Err(e @ CaError::Csr(_)) => e.to_string(),
        other => panic!("expected a CSR refusal, got {other:?}"),
    }
}

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

/// What an issued leaf says, read by hand from its DER (independently of rcgen): its subject's
/// content octets and its extensions as (OID content octets, critical, value).
struct Leaf {
    subject: Vec<u8>,
    extensions: Vec<(Vec<u8>, bool, Vec<u8>)>,
}

const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

impl Leaf {
    fn parse(pem: &str) -> Leaf {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert, _) = tlv(&der);
        let (_, tbs, _) = tlv(cert);
        // version, serial, signature, issuer, validity, subject, spki, [3] extensions
        let mut rest = tbs;
        let mut fields = Vec::new();
        while !rest.is_empty() {
            let (tag, content, next) = tlv(rest);
            fields.push((tag, content));
            rest = next;
        }
        let (_, subject) = fields[5];
        let (tag, exts) = *fields.last().unwrap();
        assert_eq!(tag, 0xa3, "extensions last");
        let (_, mut exts, _) = tlv(exts);
        let mut extensions = Vec::new();
        while !exts.is_empty() {
            let (_, ext, next) = tlv(exts);
            let (_, oid, mut r) = tlv(ext);
            let mut critical = false;
            if r[0] == 0x01 {
                let (_, b, n) = tlv(r);
                critical = b == [0xff];
                r = n;
            }
            let (_, value, _) = tlv(r);
            extensions.push((oid.to_vec(), critical, value.to_vec()));
            exts = next;
        }
        Leaf { subject: subject.to_vec(), extensions }
    }

    fn extension(&self, oid: &[u8]) -> Option<(bool, &[u8])> {
        self.extensions.iter().find(|(o, _, _)| o == oid).map(|(_, c, v)| (*c, v.as_slice()))
    }
}

/// The known gap: an ECDSA signature's hash must be the one of the key's curve (P-256 with
/// SHA-256, P-384 with SHA-384). rcgen takes the certificate's key algorithm from the CSR's
/// *signature* algorithm, so a P-256 key signed with SHA-384 came back certified as a P-384
/// key: an unusable certificate, issued without complaint.
#[test]
fn ecdsa_csr_with_the_other_curves_hash_is_refused() {
    let (ca, dir) = signer("ecdsa-mismatch");
    for (csr, says) in [
        (include_str!("../testdata/p256_sha384.csr.pem"), ["P-256", "SHA-384"]),
        (include_str!("../testdata/p384_sha256.csr.pem"), ["P-384", "SHA-256"]),
    ] {
        let e = refusal(ca.sign(csr, &web(), None));
        assert!(says.iter().all(|s| e.contains(s)), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// RSA keys under 2048 bits are refused, saying so (not as a bad signature); so are curves and
/// signature algorithms the CA does not take.
#[test]
fn short_rsa_keys_and_unsupported_curves_are_refused_saying_why() {
    let (ca, dir) = signer("weak-keys");
    let e = refusal(ca.sign(include_str!("../testdata/rsa1024.csr.pem"), &web(), None));
    assert!(e.contains("1024") && e.contains("2048"), "{e}");
    let e = refusal(ca.sign(include_str!("../testdata/p521.csr.pem"), &web(), None));
    assert!(e.contains("P-256") && e.contains("RSA"), "the accepted keys are listed: {e}");
    // RSASSA-PSS signatures verify, but rcgen cannot name them: refused, listing what is taken.
    let e = refusal(ca.sign(include_str!("../testdata/rsa_pss.csr.pem"), &web(), None));
    assert!(e.contains("signature algorithm") && e.contains("PKCS #1 v1.5"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each accepted key type yields a certificate that works with the CSR's key.
#[test]
fn accepted_keys_get_usable_certificates() {
    let (ca, dir) = signer("key-types");
    let cases = [
        (include_str!("../testdata/p384_sha384.csr.pem"), include_str!("../testdata/p384.key.pem")),
        (include_str!("../testdata/rsa2048.csr.pem"), include_str!("../testdata/rsa2048.key.pem")),
    ];
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(WEB.try_into().unwrap())];
    let (ed_csr, ed_key) = (p.serialize_request(&ed25519).unwrap().pem().unwrap(), ed25519.serialize_pem());
    let cases = cases.into_iter().chain([(ed_csr.as_str(), ed_key.as_str())]);
    for (i, (csr, key)) in cases.enumerate() {
        let chain = ca.sign(csr, &web(), None).unwrap_or_else(|e| panic!("case {i}: {e}"));
        let cert = hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), key.as_bytes())
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(cert.identity(), &web());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CSR asking to be a CA, for keyCertSign and for a subject of its choosing gets none of
/// it: the leaf has an empty subject (its SAN, then critical, is its name, as Istio's), says
/// CA:FALSE, and may sign only TLS handshakes.
#[test]
fn what_the_csr_asks_beyond_its_identity_is_not_copied() {
    let (ca, dir) = signer("not-copied");
    let chain = ca.sign(include_str!("../testdata/ca_true.csr.pem"), &web(), None).unwrap();
    let leaf = Leaf::parse(&chain[0]);
    assert!(leaf.subject.is_empty(), "subject {:02x?}", leaf.subject);
    let (critical, _) = leaf.extension(OID_SAN).expect("a SAN");
    assert!(critical, "an empty subject makes the SAN critical (RFC 5280 §4.2.1.6)");
    let (_, bc) = leaf.extension(OID_BASIC_CONSTRAINTS).expect("basicConstraints");
    assert_eq!(bc, [0x30, 0x00], "CA:FALSE");
    let (_, ku) = leaf.extension(OID_KEY_USAGE).expect("keyUsage");
    assert_eq!(ku[3] & 0x06, 0, "no keyCertSign nor cRLSign: {ku:02x?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Extra names are refused, not dropped nor copied; the same URI twice is one identity.
#[test]
fn extra_names_are_refused() {
    let (ca, dir) = signer("extra-names");
    let key = KeyPair::generate().unwrap();
    let with = |sans: Vec<SanType>| {
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.serialize_request(&key).unwrap().pem().unwrap()
    };
    let uri = || SanType::URI(WEB.try_into().unwrap());
    for (what, sans) in [
        ("a DNS name", vec![uri(), SanType::DnsName("web.shop.svc".try_into().unwrap())]),
        ("an IP", vec![uri(), SanType::IpAddress([10, 0, 0, 1].into())]),
        ("another URI", vec![uri(), SanType::URI("spiffe://cluster.local/ns/shop/sa/admin".try_into().unwrap())]),
    ] {
        assert!(matches!(ca.sign(&with(sans), &web(), None), Err(CaError::IdentityMismatch { .. })), "{what}");
    }
    let chain = ca.sign(&with(vec![uri(), uri()]), &web(), None).unwrap();
    let cert = hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    assert_eq!(cert.identity(), &web());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One CSR, bounded, in one PEM block labelled as a CSR, with nothing after its DER: anything
/// else is ambiguous about what is being signed.
#[test]
fn csr_pem_must_be_one_bounded_block() {
    let (ca, dir) = signer("pem");
    let (one, _) = csr(Some(WEB));
    let (other, _) = csr(Some("spiffe://cluster.local/ns/shop/sa/admin"));
    let two = format!("{one}{other}");
    let e = refusal(ca.sign(&two, &web(), None));
    assert!(e.contains("one"), "two CSRs: {e}");
    let with_root = format!("{one}{}", ca.root_pem());
    let e = refusal(ca.sign(&with_root, &web(), None));
    assert!(e.contains("one"), "a CSR and a certificate: {e}");
    let relabelled = one.replace("CERTIFICATE REQUEST", "CERTIFICATE");
    refusal(ca.sign(&relabelled, &web(), None));
    let padded = format!("{}{one}", "x".repeat(64 * 1024));
    let e = refusal(ca.sign(&padded, &web(), None));
    assert!(e.contains("too large"), "{e}");

    // The DER of the CSR, then stray bytes, in one block.
    use rustls_pki_types::pem::PemObject;
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(one.as_bytes()).unwrap().to_vec();
    der.extend_from_slice(&[0x05, 0x00]);
    let trailing = pem_block("CERTIFICATE REQUEST", &der);
    let e = refusal(ca.sign(&trailing, &web(), None));
    assert!(e.contains("trailing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn pem_block(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in der.chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            s.push(if i <= c.len() { B64[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    let body: Vec<&str> = s.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
}

/// Certificates of another trust domain are never signed, whoever authorized them.
#[test]
fn other_trust_domains_are_refused() {
    let (ca, dir) = signer("trust-domain");
    let evil = Identity::new("evil.example", "shop", "web").unwrap();
    let (req, _) = csr(None);
    let e = ca.sign(&req, &evil, None).expect_err("another trust domain").to_string();
    assert!(e.contains("evil.example") && e.contains("cluster.local"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A leaf never outlives its root, and its notBefore is a little in the past for skewed clocks.
#[test]
fn validity_is_clamped_to_the_root_and_backdated() {
    let dir = tmpdir("short-root");
    std::fs::create_dir_all(&dir).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    let root_not_after = now + Duration::from_secs(7200);
    p.not_after = root_not_after.into();
    std::fs::write(dir.join("root-cert.pem"), p.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(dir.join("root-key.pem"), key.serialize_pem()).unwrap();
    let ca = CaSigner::load_or_generate(&dir, "cluster.local").unwrap();

    let (req, leaf_key) = csr(None);
    let chain = ca.sign(&req, &web(), Some(Duration::from_secs(86400))).unwrap();
    let cert = hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), leaf_key.serialize_pem().as_bytes()).unwrap();
    assert!(cert.not_after() <= root_not_after, "the leaf outlives its root");
    let skew = now.duration_since(cert.not_before()).unwrap();
    assert!(skew >= Duration::from_secs(30) && skew <= Duration::from_secs(600), "backdated by {skew:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
