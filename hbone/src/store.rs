//! The certificate store: current workload certificates by identity and the current trust roots.
//!
//! Handshakes read the store; rotation writes it. A swap affects only handshakes that start
//! after it: established connections keep the keys they negotiated with.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

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
}

impl CertStore {
    /// A store trusting `roots`, holding no workload certificates yet.
    pub fn new(roots: TrustRoots) -> Self {
        CertStore { inner: Arc::new(Inner { roots: RwLock::new(Arc::new(roots)), certs: RwLock::default() }) }
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
        self.inner.certs.write().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::new(cert))
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
