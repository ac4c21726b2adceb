//! Properties of reading what users apply (a file of Kubernetes YAML, as the directory source
//! reads it and as `kubectl apply` would send it) and what the CA signs (a workload's CSR),
//! checked on arbitrary bytes: the same checks for the libFuzzer targets in `fuzz/` and for
//! the tests below, which replay the committed corpus (`fuzz/corpus/<target>/`) and seeded
//! mutations of it (see `hbone::fuzzing`). Feature `fuzzing` (or this crate's own tests).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use hbone::Identity;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ca::signer::CaSigner;

use crate::model::{Kind, Object, ObjectKey};
use crate::source::dir::{Loader, Snapshot};
use crate::source::parse_file;
use crate::translate::MeshConfig;
use crate::translator::Translator;

/// One file of YAML: every document is accounted for (an object, an error naming where it
/// is, or a kind we skip); every rejected security object that could be named gets its
/// fail-closed stand-in; loaded by the directory source, a name no document gave validly is
/// held as one of its stand-ins, and a stand-in `AuthorizationPolicy` selecting workloads
/// reaches the xDS resources; and translating whatever was loaded never panics.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = parse_file(Path::new("fuzz.yaml"), text);
    assert_eq!(
        parsed.objects.len() + parsed.errors.len() + parsed.ignored.len(),
        crate::source::document_count(text),
        "every document is read, refused or skipped"
    );
    for e in &parsed.errors {
        assert!(e.location.document >= 1, "{e}");
        let Some(key) = &e.object else { continue };
        if matches!(key.kind, Kind::AuthorizationPolicy | Kind::PeerAuthentication) {
            assert!(
                parsed.fail_closed.iter().any(|s| s.object.key() == *key),
                "rejected {key:?} has no fail-closed stand-in: {e}"
            );
        }
    }
    // The same text through the directory source itself, not a copy of its rules.
    let snapshot = load_as_directory(text);
    let valid: BTreeSet<ObjectKey> = parsed.objects.iter().map(|o| o.object.key()).collect();
    let mut translator = Translator::new(MeshConfig::default());
    translator.replace_all(snapshot.objects.iter().map(|o| o.object.clone()).collect());
    for key in parsed.fail_closed.iter().map(|s| s.object.key()).filter(|k| !valid.contains(k)) {
        let held = snapshot.objects.iter().find(|o| o.object.key() == key);
        let held = held.unwrap_or_else(|| panic!("{key:?} was never valid and no stand-in is held"));
        assert!(
            parsed.fail_closed.iter().any(|s| s.object == held.object),
            "{key:?} was never valid but is held as something other than its stand-in"
        );
        if let Object::AuthorizationPolicy(p) = &held.object
            && p.spec.target_refs.is_empty()
        {
            let name = format!("{}/{}", key.namespace, key.name);
            assert!(translator.authorizations().contains_key(&name), "stand-in {name} is not enforced");
        }
    }
    for type_url in [proto::ADDRESS_TYPE_URL, proto::AUTHORIZATION_TYPE_URL] {
        let _ = translator.snapshot(type_url);
    }
}

/// `text` as the only file of a fresh directory, loaded by [`Loader`]; the directory is gone
/// again when this returns.
fn load_as_directory(text: &str) -> Snapshot {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("istiod-lite-fuzz-config-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    let loaded = std::fs::write(dir.join("fuzz.yaml"), text)
        .map_err(|e| e.to_string())
        .and_then(|()| Loader::new(&dir).load().map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
    loaded.expect("loading the scratch directory")
}

/// The identity every `csr` input asks to be signed for (as if the caller's token proved it).
const CSR_IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/web";

/// A CSR in PEM, as a workload sends it to `CreateCertificate`: the CA signs it only when its
/// SANs are none or exactly the authorized identity, and what it issues proves exactly that
/// identity to the mesh's verifiers, whatever else the request asked for.
pub fn csr(data: &[u8]) {
    static CA: OnceLock<CaSigner> = OnceLock::new();
    let ca = CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("istiod-lite-fuzz-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CaSigner::load_or_generate(&dir, "cluster.local").expect("a CA in a fresh directory");
        // The signer holds its root in memory; the files (a private key among them) go.
        let _ = std::fs::remove_dir_all(&dir);
        ca
    });
    let Ok(pem) = std::str::from_utf8(data) else { return };
    let id: Identity = CSR_IDENTITY.parse().expect("a valid identity");
    let Ok(chain) = ca.sign(pem, &id, None) else { return };
    let asked = rcgen::CertificateSigningRequestParams::from_pem(pem).expect("a signed CSR parses");
    let only_id = |san: &rcgen::SanType| matches!(san, rcgen::SanType::URI(u) if u.as_str() == CSR_IDENTITY);
    assert!(asked.params.subject_alt_names.iter().all(only_id), "signed a CSR asking for more: {pem:?}");
    let leaf = CertificateDer::from_pem_slice(chain[0].as_bytes()).expect("the CA issues PEM");
    assert_eq!(hbone::fuzzing::leaf_identity(&leaf), Some(id), "issued for {pem:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbone::fuzzing::replay;

    #[test]
    fn config_files() {
        let tokens: &[&[u8]] = &[
            b"\n---\n",
            b"kind: AuthorizationPolicy\n",
            b"apiVersion: security.istio.io/v1\n",
            b"  action: DENY\n",
            b"spec:\n",
            b"metadata:\n  name: x\n  namespace: y\n",
            b"  rules:\n  - to:\n    - operation:\n        ports: [\"8080\"]\n",
            b": ",
            b"- ",
            b"  ",
            b"{",
            b"[",
            b"&a ",
            b"*a",
            b"!!str ",
        ];
        replay("config_file", Vec::new(), tokens, 3_000, config_file);
    }

    #[test]
    fn csrs() {
        let tokens: &[&[u8]] = &[
            b"\n",
            b"-----BEGIN CERTIFICATE REQUEST-----\n",
            b"-----END CERTIFICATE REQUEST-----\n",
            b"A",
            b"/",
            b"+",
            b"=",
        ];
        replay("csr", Vec::new(), tokens, 2_000, csr);
    }
}
