//! The certificate store: current workload certificates by identity and the current trust roots.
//!
//! Handshakes read the store; rotation writes it. A swap affects only handshakes that start
//! after it: established connections keep the keys they negotiated with.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::certs::{CertError, LeafInfo, TrustRoots, WorkloadCert, show_time};
use crate::identity::Identity;

/// A certificate the store refused to install as `identity`'s own. The identity's previous
/// certificate, if it had one, is still the one presented.
#[derive(Debug, thiserror::Error)]
#[error("certificate for {identity} refused: {problem}")]
pub struct InsertError {
    /// The identity the certificate was requested for.
    pub identity: Identity,
    /// What is wrong with it.
    #[source]
    pub problem: OwnCertProblem,
}

impl InsertError {
    /// Every [`reason`](Self::reason), for exporters that list each one even at zero.
    pub const REASONS: [&'static str; 7] =
        ["malformed", "key_mismatch", "bad_spiffe_id", "not_leaf_svid", "wrong_identity", "not_yet_valid", "expired"];

    /// The metric label of the problem.
    pub fn reason(&self) -> &'static str {
        match &self.problem {
            OwnCertProblem::Unusable(CertError::Key(_) | CertError::KeyMismatch) => "key_mismatch",
            OwnCertProblem::Unusable(CertError::UriSanCount(_) | CertError::Identity(_)) => "bad_spiffe_id",
            OwnCertProblem::Unusable(CertError::NotLeafSvid(_)) => "not_leaf_svid",
            OwnCertProblem::Unusable(_) => "malformed",
            OwnCertProblem::WrongIdentity { .. } => "wrong_identity",
            OwnCertProblem::NotYetValid { .. } => "not_yet_valid",
            OwnCertProblem::Expired { .. } => "expired",
        }
    }
}

/// Why a certificate cannot be our own for the identity it was requested for: every peer would
/// refuse it, with nothing on our side saying why.
#[derive(Debug, thiserror::Error)]
pub enum OwnCertProblem {
    /// The material does not load, or the leaf breaks the rules peers check it against (one
    /// `spiffe://` URI SAN, a leaf SVID's key usage, not a CA), or the key is not the leaf's.
    #[error(transparent)]
    Unusable(CertError),
    /// The leaf's SPIFFE ID is another identity's.
    #[error("its SPIFFE ID is {found}")]
    WrongIdentity {
        /// The identity the leaf carries.
        found: Identity,
    },
    /// Its validity has not begun.
    #[error("not valid before {}", show_time(*.not_before))]
    NotYetValid {
        /// Start of validity.
        not_before: SystemTime,
    },
    /// Its validity has ended.
    #[error("expired at {}", show_time(*.not_after))]
    Expired {
        /// End of validity.
        not_after: SystemTime,
    },
}

/// `cert` as `requested`'s own whenever it is valid: its leaf, checked by the verifier's own
/// parse, carries exactly `requested` and is a leaf SVID. Returns the leaf as parsed.
/// For material loaded ahead of time (a certificate directory), where validity is checked when
/// the certificate is presented rather than when it is read.
pub fn check_own_leaf(requested: &Identity, cert: &WorkloadCert) -> Result<(), OwnCertProblem> {
    own_leaf(requested, cert).map(drop)
}

fn own_leaf(requested: &Identity, cert: &WorkloadCert) -> Result<LeafInfo, OwnCertProblem> {
    let leaf = cert.certified_key().cert.first().ok_or(OwnCertProblem::Unusable(CertError::NoCertificate))?;
    let leaf = LeafInfo::parse_peer(leaf).map_err(OwnCertProblem::Unusable)?;
    if leaf.identity != *requested {
        return Err(OwnCertProblem::WrongIdentity { found: leaf.identity });
    }
    Ok(leaf)
}

/// `cert` as `requested`'s own at `now`: [`check_own_leaf`], and valid at `now`, so a
/// certificate stored here is one peers take.
fn check_own(requested: &Identity, cert: &WorkloadCert, now: SystemTime) -> Result<(), OwnCertProblem> {
    let leaf = own_leaf(requested, cert)?;
    if now < leaf.not_before {
        return Err(OwnCertProblem::NotYetValid { not_before: leaf.not_before });
    }
    if leaf.not_after < now {
        return Err(OwnCertProblem::Expired { not_after: leaf.not_after });
    }
    Ok(())
}

/// Shared, swappable certificates and roots. Clones share the same contents.
#[derive(Clone, Debug)]
pub struct CertStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    roots: RwLock<Arc<TrustRoots>>,
    certs: RwLock<HashMap<Identity, Arc<WorkloadCert>>>,
    /// Woken by every insert, for handshakes waiting on a certificate still being issued.
    inserted: Notify,
}

impl CertStore {
    /// A store trusting `roots`, holding no workload certificates yet.
    pub fn new(roots: TrustRoots) -> Self {
        CertStore {
            inner: Arc::new(Inner {
                roots: RwLock::new(Arc::new(roots)),
                certs: RwLock::default(),
                inserted: Notify::new(),
            }),
        }
    }

    /// The roots handshakes verify against right now.
    pub fn roots(&self) -> Arc<TrustRoots> {
        self.inner.roots.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the trust roots for handshakes that start from now on.
    pub fn set_roots(&self, roots: TrustRoots) {
        *self.inner.roots.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(roots);
    }

    /// The current certificate for `id`, if the store has one.
    pub fn get(&self, id: &Identity) -> Option<Arc<WorkloadCert>> {
        self.inner.certs.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    /// Installs (or replaces) the certificate for the identity it carries, unchecked; returns
    /// the previous one. Certificates from a CA go through [`insert_for`](Self::insert_for).
    pub fn insert(&self, cert: WorkloadCert) -> Option<Arc<WorkloadCert>> {
        let id = cert.identity().clone();
        let previous = self.inner.certs.write().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::new(cert));
        self.inner.inserted.notify_waiters();
        previous
    }

    /// Installs `cert` as `requested`'s certificate if peers would take it as that: the leaf
    /// carries exactly `requested` as its one SPIFFE ID, is a leaf SVID (key usage, not a CA),
    /// and is valid now. Otherwise nothing changes (the previous certificate, if any, stays)
    /// and the error names the identity and the problem. Returns the previous certificate.
    pub fn insert_for(
        &self,
        requested: &Identity,
        cert: WorkloadCert,
    ) -> Result<Option<Arc<WorkloadCert>>, InsertError> {
        check_own(requested, &cert, SystemTime::now())
            .map_err(|problem| InsertError { identity: requested.clone(), problem })?;
        Ok(self.insert(cert))
    }

    /// [`insert_for`](Self::insert_for) from a PEM chain (leaf first) and PEM private key, as a
    /// CA's answer comes: material that does not load, or a key that is not the leaf's, is
    /// refused the same way.
    pub fn insert_pem(
        &self,
        requested: &Identity,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Option<Arc<WorkloadCert>>, InsertError> {
        let cert = WorkloadCert::from_pem(chain_pem, key_pem)
            .map_err(|e| InsertError { identity: requested.clone(), problem: OwnCertProblem::Unusable(e) })?;
        self.insert_for(requested, cert)
    }

    /// The certificate for `id`, waiting up to `limit` for one to be inserted. A pod's
    /// listeners come up while its first certificate is still being issued; a handshake in
    /// that window waits for it instead of failing. `None` once `limit` has passed without one.
    pub async fn wait_for(&self, id: &Identity, limit: Duration) -> Option<Arc<WorkloadCert>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the look-up, so an insert between the two is not missed.
            let inserted = self.inner.inserted.notified();
            if let Some(cert) = self.get(id) {
                return Some(cert);
            }
            if tokio::time::timeout_at(deadline, inserted).await.is_err() {
                return self.get(id);
            }
        }
    }

    /// Forgets the certificate of `id` (the workload left this node).
    pub fn remove(&self, id: &Identity) -> Option<Arc<WorkloadCert>> {
        self.inner.certs.write().unwrap_or_else(PoisonError::into_inner).remove(id)
    }

    /// Every identity with a certificate, with the certificate, for admin dumps.
    pub fn snapshot(&self) -> Vec<Arc<WorkloadCert>> {
        let mut v: Vec<_> = self.inner.certs.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        v.sort_by(|a, b| a.identity().cmp(b.identity()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};
    use crate::testing::{DAY, TestCa, id};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_certificate_peers_would_refuse_is_not_installed_and_the_previous_one_stays() {
        let ca = TestCa::new("store");
        let store = CertStore::new(ca.roots());
        let web = id("shop", "web");
        let db = id("shop", "db");
        store.insert_for(&web, ca.issue(&web, DAY)).expect("a workload certificate is installed");
        let installed = store.get(&web).unwrap();
        let now = SystemTime::now();
        let usages = |u: Vec<KeyUsagePurpose>| move |p: &mut CertificateParams| p.key_usages = u;
        let (good_chain, _) = ca.issue_pem(&web, now - HOUR, now + DAY);
        let (_, other_key) = ca.issue_pem(&web, now - HOUR, now + DAY);
        let cases: Vec<(&str, (String, String), &str, &str)> = vec![
            ("another identity's", ca.issue_pem(&db, now - HOUR, now + DAY), "wrong_identity", db.as_str()),
            (
                "a CA",
                ca.issue_pem_with(web.as_str(), |p| {
                    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                }),
                "not_leaf_svid",
                "basicConstraints cA",
            ),
            (
                "one that may sign certificates",
                ca.issue_pem_with(
                    web.as_str(),
                    usages(vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]),
                ),
                "not_leaf_svid",
                "keyCertSign",
            ),
            (
                "one that may not sign handshakes",
                ca.issue_pem_with(web.as_str(), usages(vec![KeyUsagePurpose::KeyEncipherment])),
                "not_leaf_svid",
                "digitalSignature",
            ),
            ("one without keyUsage", ca.issue_pem_with(web.as_str(), usages(vec![])), "not_leaf_svid", "keyUsage"),
            (
                "one whose SAN is not a mesh identity",
                ca.issue_pem_with(&format!("{web}/extra"), |_| {}),
                "bad_spiffe_id",
                "/ns/<namespace>/sa/<service account>",
            ),
            ("an expired one", ca.issue_pem(&web, now - 2 * DAY, now - HOUR), "expired", "expired at"),
            ("one not valid yet", ca.issue_pem(&web, now + HOUR, now + DAY), "not_yet_valid", "not valid before"),
            ("one with another key", (good_chain, other_key), "key_mismatch", "private key does not match"),
            ("bytes that are not PEM", ("garbage".into(), "garbage".into()), "malformed", "malformed PEM"),
        ];
        for (what, (chain, key), reason, names) in cases {
            let err = store.insert_pem(&web, chain.as_bytes(), key.as_bytes()).expect_err(what);
            assert_eq!(err.identity, web, "{what}");
            assert_eq!(err.reason(), reason, "{what}: {err}");
            assert!(InsertError::REASONS.contains(&err.reason()), "{what}: {} is listed", err.reason());
            let text = err.to_string();
            assert!(text.contains(web.as_str()) && text.contains(names), "{what}: {text}");
            let kept = store.get(&web).expect("still a certificate");
            assert!(Arc::ptr_eq(&kept, &installed), "{what}: the previous certificate stays");
        }
        assert!(store.get(&db).is_none(), "another identity's certificate is not filed under it either");

        // The same material for the identity it names is installed, replacing the previous one.
        let (chain, key) = ca.issue_pem(&db, now - HOUR, now + DAY);
        assert!(store.insert_pem(&db, chain.as_bytes(), key.as_bytes()).unwrap().is_none());
        let renewed = ca.issue(&web, DAY);
        let previous = store.insert_for(&web, renewed).unwrap().expect("the previous certificate");
        assert!(Arc::ptr_eq(&previous, &installed));
        assert!(!Arc::ptr_eq(&store.get(&web).unwrap(), &installed));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_returns_a_certificate_inserted_while_waiting() {
        let ca = TestCa::new("store");
        let store = CertStore::new(ca.roots());
        let web = id("shop", "web");
        let waiting = tokio::spawn({
            let (store, web) = (store.clone(), web.clone());
            async move { store.wait_for(&web, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another identity's certificate does not end the wait.
        store.insert(ca.issue(&id("shop", "other"), DAY));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "only web's certificate ends the wait");
        store.insert(ca.issue(&web, DAY));
        let got = waiting.await.unwrap().expect("web's certificate, inserted while waiting");
        assert_eq!(got.identity(), &web);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_gives_up_at_its_limit() {
        let ca = TestCa::new("store");
        let store = CertStore::new(ca.roots());
        let started = tokio::time::Instant::now();
        assert!(store.wait_for(&id("shop", "web"), Duration::from_secs(2)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
