//! Workload certificates from files, for offline use until the CA hands them out.
//!
//! Layout of the directory (what a dev CA writes):
//!
//! ```text
//! <dir>/root-cert.pem                          mesh roots (one or more certificates)
//! <dir>/<namespace>/<service account>/cert-chain.pem   leaf first, then intermediates
//! <dir>/<namespace>/<service account>/key.pem
//! ```
//!
//! The directory is re-read when anything in it changes; a bad file is reported and the
//! certificates already loaded stay in use.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hbone::{CertError, CertStore, Identity, TrustRoots, WorkloadCert};

/// Why the certificate directory could not be (fully) loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertDirError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds unusable certificate material.
    #[error("{path}: {source}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: CertError,
    },
    /// The certificate is not one peers would take as its identity's (not a leaf SVID, ...).
    #[error("{path}: {source}")]
    NotOwn {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: hbone::store::OwnCertProblem,
    },
    /// The certificate in `<ns>/<sa>/` is for another identity.
    #[error("{path}: certificate is for {found}, but its directory says {expected}")]
    WrongIdentity {
        /// The file.
        path: PathBuf,
        /// From the directory names.
        expected: String,
        /// From the certificate.
        found: Identity,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertDirError + '_ {
    move |source| CertDirError::Io { path: path.to_owned(), source }
}

/// Reads the roots and every workload certificate under `dir`.
pub fn read_dir(dir: &Path, trust_domain: &str) -> Result<(TrustRoots, Vec<WorkloadCert>), Vec<CertDirError>> {
    let mut errors = Vec::new();
    let root_path = dir.join("root-cert.pem");
    let roots = std::fs::read(&root_path)
        .map_err(io_err(&root_path))
        .and_then(|pem| TrustRoots::from_pem(&pem).map_err(|source| CertDirError::Cert { path: root_path, source }));
    let mut certs = Vec::new();
    let namespaces = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) => return Err(vec![io_err(dir)(e)]),
    };
    for ns in namespaces.flatten().filter(|e| e.path().is_dir()) {
        let Ok(accounts) = std::fs::read_dir(ns.path()) else { continue };
        for sa in accounts.flatten().filter(|e| e.path().is_dir()) {
            match read_one(
                &sa.path(),
                trust_domain,
                &ns.file_name().to_string_lossy(),
                &sa.file_name().to_string_lossy(),
            ) {
                Ok(c) => certs.push(c),
                Err(e) => errors.push(e),
            }
        }
    }
    match roots {
        Ok(r) if errors.is_empty() => Ok((r, certs)),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.insert(0, e);
            Err(errors)
        }
    }
}

fn read_one(dir: &Path, td: &str, ns: &str, sa: &str) -> Result<WorkloadCert, CertDirError> {
    let chain_path = dir.join("cert-chain.pem");
    let key_path = dir.join("key.pem");
    let chain = std::fs::read(&chain_path).map_err(io_err(&chain_path))?;
    let key = std::fs::read(&key_path).map_err(io_err(&key_path))?;
    let cert = WorkloadCert::from_pem(&chain, &key)
        .map_err(|source| CertDirError::Cert { path: chain_path.clone(), source })?;
    let expected = format!("spiffe://{td}/ns/{ns}/sa/{sa}");
    if cert.identity().as_str() != expected {
        return Err(CertDirError::WrongIdentity { path: chain_path, expected, found: cert.identity().clone() });
    }
    // The rules peers check a leaf against, so that a bad file is named here and not only in
    // the peers' logs as an alert. Validity is not among them: a file that has expired is not
    // presented (the TLS resolvers check), and one stale directory must not block reloading
    // the others.
    hbone::store::check_own_leaf(cert.identity(), &cert)
        .map_err(|source| CertDirError::NotOwn { path: chain_path, source })?;
    Ok(cert)
}

/// Loads `dir` into `store` (replacing roots, adding and replacing certificates, removing
/// those whose files are gone). On any error nothing changes and the errors are returned.
pub fn load_into(store: &CertStore, dir: &Path, trust_domain: &str) -> Result<usize, Vec<CertDirError>> {
    let (roots, certs) = read_dir(dir, trust_domain)?;
    store.set_roots(roots);
    let keep: HashSet<Identity> = certs.iter().map(|c| c.identity().clone()).collect();
    for old in store.snapshot() {
        if !keep.contains(old.identity()) {
            store.remove(old.identity());
        }
    }
    let n = certs.len();
    for c in certs {
        store.insert(c);
    }
    Ok(n)
}

/// A cheap fingerprint of the directory tree: paths, sizes, modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
        }
    }
    out.sort();
    out
}

/// Reloads `dir` into `store` whenever its files change, until the task is dropped.
pub async fn watch(store: CertStore, dir: PathBuf, trust_domain: String, every: Duration) {
    let mut last = fingerprint(&dir);
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        last = now;
        match load_into(&store, &dir, &trust_domain) {
            Ok(n) => tracing::info!(dir = %dir.display(), certificates = n, "certificates reloaded"),
            Err(errors) => {
                for e in errors {
                    tracing::error!(error = %e, "certificate directory not reloaded; keeping the previous certificates");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbone::testing::{DAY, TestCa, id};

    fn write(dir: &Path, ca: &TestCa, ns: &str, sa: &str) {
        let d = dir.join(ns).join(sa);
        std::fs::create_dir_all(&d).unwrap();
        let now = SystemTime::now();
        let (chain, key) = ca.issue_pem(&id(ns, sa), now - Duration::from_secs(60), now + DAY);
        std::fs::write(d.join("cert-chain.pem"), chain).unwrap();
        std::fs::write(d.join("key.pem"), key).unwrap();
    }

    #[test]
    fn loads_roots_and_workload_certificates() {
        let tmp = std::env::temp_dir().join(format!("ztunnel-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let ca = TestCa::new("dev");
        std::fs::write(tmp.join("root-cert.pem"), ca.root_pem()).unwrap();
        write(&tmp, &ca, "default", "sleep");
        write(&tmp, &ca, "backend", "httpbin");
        let store = CertStore::new(TestCa::new("other").roots());
        assert_eq!(load_into(&store, &tmp, "cluster.local").unwrap(), 2);
        assert!(store.get(&id("default", "sleep")).is_some());
        assert_eq!(store.roots().certificates().len(), 1);

        // A certificate filed under the wrong identity is refused, naming the file.
        let wrong = tmp.join("default").join("other");
        std::fs::create_dir_all(&wrong).unwrap();
        std::fs::copy(tmp.join("default/sleep/cert-chain.pem"), wrong.join("cert-chain.pem")).unwrap();
        std::fs::copy(tmp.join("default/sleep/key.pem"), wrong.join("key.pem")).unwrap();
        let errors = load_into(&store, &tmp, "cluster.local").unwrap_err();
        assert!(errors[0].to_string().contains("default/other/cert-chain.pem"), "{}", errors[0]);
        assert!(errors[0].to_string().contains("spiffe://cluster.local/ns/default/sa/other"));
        // Nothing changed in the store.
        assert!(store.get(&id("backend", "httpbin")).is_some());

        // A certificate that may sign others is no leaf SVID: refused, naming the file and why.
        let signer = tmp.join("default").join("signer");
        std::fs::create_dir_all(&signer).unwrap();
        let (chain, key) = ca.issue_pem_with("spiffe://cluster.local/ns/default/sa/signer", |p| {
            p.key_usages.push(rcgen::KeyUsagePurpose::KeyCertSign);
        });
        std::fs::write(signer.join("cert-chain.pem"), chain).unwrap();
        std::fs::write(signer.join("key.pem"), key).unwrap();
        let errors = load_into(&store, &tmp, "cluster.local").unwrap_err();
        let e = errors.iter().map(ToString::to_string).find(|e| e.contains("default/signer")).unwrap();
        assert!(e.contains("keyCertSign"), "{e}");
        assert!(store.get(&id("default", "signer")).is_none());
        std::fs::remove_dir_all(&signer).unwrap();

        // Removing a workload's files removes its certificate on the next load.
        std::fs::remove_dir_all(&wrong).unwrap();
        std::fs::remove_dir_all(tmp.join("backend")).unwrap();
        assert_eq!(load_into(&store, &tmp, "cluster.local").unwrap(), 1);
        assert!(store.get(&id("backend", "httpbin")).is_none());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
