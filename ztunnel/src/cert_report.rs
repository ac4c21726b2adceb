//! What ztunnel's admin `/certs` lists: each workload certificate it holds (identity, serial,
//! validity, time left, the fingerprint of the root it chains to), the roots it trusts, and
//! the certificate fetches that failed since start, by reason (a CA answer the store refused
//! among them). Never private keys: only the public certificates are read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hbone::CertStore;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};

/// SHA-256 of `data`, lowercase hex, through the mesh's crypto provider.
pub fn sha256_hex(data: &[u8]) -> String {
    let hash = hbone::tls::provider()
        .cipher_suites
        .iter()
        .find_map(|s| match s {
            rustls::SupportedCipherSuite::Tls13(t)
                if t.common.hash_provider.algorithm() == rustls::crypto::hash::HashAlgorithm::SHA256 =>
            {
                Some(t.common.hash_provider)
            }
            _ => None,
        })
        .expect("the mesh provider has a SHA-256 TLS 1.3 suite");
    hash.hash(data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A serial number as the integer it is, lowercase hex, as `openssl x509 -serial` prints it:
/// DER puts a 0x00 before a first byte with its top bit set to keep the INTEGER positive, and
/// that byte is not part of the number (nor of what the CA's logs show).
fn serial_hex(der_integer: &[u8]) -> String {
    let first = der_integer.iter().position(|&b| b != 0).unwrap_or(der_integer.len().saturating_sub(1));
    der_integer[first..].iter().map(|b| format!("{b:02x}")).collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// A certificate's names: subject and issuer as DER (for matching a chain's top to the root
/// that issued it), and the subject as text.
struct Names {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    subject_text: String,
}

fn names(der: &CertificateDer<'_>) -> Option<Names> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(Names {
        subject: c.subject().as_raw().to_vec(),
        issuer: c.issuer().as_raw().to_vec(),
        subject_text: c.subject().to_string(),
    })
}

/// The `/certs` document for `store` at `now`.
pub fn certs_json(store: &CertStore, now: SystemTime) -> Value {
    let roots = store.roots();
    let roots: Vec<(String, Option<Names>)> = roots.certificates().iter().map(|r| (sha256_hex(r), names(r))).collect();
    let certificates: Vec<Value> = store
        .snapshot()
        .iter()
        .map(|c| {
            let chain = &c.certified_key().cert;
            let leaf = chain.first().and_then(|d| X509Certificate::from_der(d).ok().map(|(_, x)| x));
            let serial = leaf.as_ref().map(|l| serial_hex(l.raw_serial()));
            // The root: the chain's top if it signed itself, else the trusted root that issued it.
            let root = chain.last().and_then(|top| {
                let top_names = names(top)?;
                if chain.len() > 1 && top_names.subject == top_names.issuer {
                    return Some(sha256_hex(top));
                }
                roots
                    .iter()
                    .find(|(_, n)| n.as_ref().is_some_and(|n| n.subject == top_names.issuer))
                    .map(|(f, _)| f.clone())
            });
            json!({
                "identity": c.identity().to_string(),
                "serial": serial,
                "notBefore": unix(c.not_before()),
                "notAfter": unix(c.not_after()),
                "expiresInSeconds": c.remaining(now).as_secs(),
                "chainLength": chain.len(),
                "rootFingerprintSha256": root,
            })
        })
        .collect();
    let failures: serde_json::Map<String, Value> =
        crate::ca_client::fetch_failures().map(|(reason, n)| (reason.to_owned(), json!(n))).collect();
    json!({
        "certificates": certificates,
        "fetchFailures": failures,
        "roots": roots
            .iter()
            .map(|(f, n)| json!({"fingerprintSha256": f, "subject": n.as_ref().map(|n| n.subject_text.clone())}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_failures_are_listed_by_reason() {
        let store = CertStore::new(hbone::testing::TestCa::new("report").roots());
        let doc = certs_json(&store, SystemTime::now());
        for reason in crate::ca_client::FETCH_FAILURE_REASONS {
            assert!(doc["fetchFailures"][reason].is_u64(), "{reason}: {doc}");
        }
    }

    #[test]
    fn serials_print_without_der_sign_padding() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_hex(&[0x7f, 0x00]), "7f00");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "");
    }
}
