//! The certificate store: current workload certificates by identity and the current trust roots.
//!
//! Handshakes read the store; rotation writes it. A swap affects only handshakes that start
//! after it: established connections keep the keys they negotiated with.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::certs::{TrustRoots, WorkloadCert};
use crate::identity::Identity;

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

    /// Installs (or replaces) the certificate for the identity it carries; returns the previous one.
    pub fn insert(&self, cert: WorkloadCert) -> Option<Arc<WorkloadCert>> {
        let id = cert.identity().clone();
        let previous = self.inner.certs.write().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::new(cert));
        self.inner.inserted.notify_waiters();
        previous
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
    use crate::testing::{DAY, TestCa, id};

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
