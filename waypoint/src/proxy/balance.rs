//! Endpoint choice: the service's backend policy (least request by default: the better of two
//! random picks by in-flight requests; round robin; random; consistent hash on a header,
//! by rendezvous hashing so that an endpoint leaving only moves its own keys) over the
//! endpoints not ejected by passive outlier detection.
//!
//! Outlier detection: `consecutive_errors` 5xx answers or connect failures in a row eject an
//! endpoint for `ejection × 2^(previous ejections)`; the last endpoint not ejected is never
//! ejected, and when every endpoint is ejected all are used again.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rand::Rng;
use tokio::time::Instant;
use ztunnel::state::Endpoint;

use crate::state::{BackendPolicy, LoadBalancer};

/// Live statistics of one endpoint (kept across snapshots).
#[derive(Debug, Default)]
pub struct EndpointStats {
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since the balancer's epoch until which the endpoint is ejected.
    ejected_until: AtomicU64,
}

impl EndpointStats {
    /// Requests currently sent to the endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An endpoint picked for one try.
#[derive(Debug)]
pub struct Picked {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its address (`ip:target port`).
    pub addr: SocketAddr,
    /// Its statistics.
    pub stats: Arc<EndpointStats>,
    /// In-flight guard.
    pub guard: InFlight,
}

/// Endpoint selection and outlier state shared by all requests.
#[derive(Debug)]
pub struct Balancer {
    epoch: Instant,
    stats: RwLock<HashMap<SocketAddr, Arc<EndpointStats>>>,
    cursors: Mutex<HashMap<String, usize>>,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer { epoch: Instant::now(), stats: RwLock::default(), cursors: Mutex::default() }
    }
}

/// The address of an endpoint: its first IP and target port.
pub fn endpoint_addr(e: &Endpoint) -> Option<SocketAddr> {
    e.workload.addresses.first().map(|ip| SocketAddr::new(*ip, e.port))
}

impl Balancer {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The statistics of `addr`.
    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        if let Some(s) = self.stats.read().unwrap_or_else(PoisonError::into_inner).get(&addr) {
            return s.clone();
        }
        self.stats.write().unwrap_or_else(PoisonError::into_inner).entry(addr).or_default().clone()
    }

    fn ejected(&self, s: &EndpointStats, now: u64) -> bool {
        s.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Picks an endpoint of `service` among `endpoints`, avoiding `avoid` (a previous try)
    /// when there is another choice.
    pub fn pick(
        &self,
        service: &str,
        endpoints: &[Endpoint],
        policy: &BackendPolicy,
        hash_value: Option<&[u8]>,
        avoid: Option<SocketAddr>,
    ) -> Option<Picked> {
        let now = self.now_ms();
        let all: Vec<(&Endpoint, SocketAddr, Arc<EndpointStats>)> =
            endpoints.iter().filter_map(|e| endpoint_addr(e).map(|a| (e, a, self.stats(a)))).collect();
        if all.is_empty() {
            return None;
        }
        let mut healthy: Vec<&(&Endpoint, SocketAddr, Arc<EndpointStats>)> =
            all.iter().filter(|(_, _, s)| !self.ejected(s, now)).collect();
        if healthy.is_empty() {
            healthy = all.iter().collect();
        }
        if healthy.len() > 1
            && let Some(avoid) = avoid
        {
            healthy.retain(|(_, a, _)| *a != avoid);
        }
        let n = healthy.len();
        let i = match policy.load_balancer {
            LoadBalancer::LeastRequest if n > 1 => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                if healthy[b].2.in_flight() < healthy[a].2.in_flight() { b } else { a }
            }
            LoadBalancer::LeastRequest => 0,
            LoadBalancer::RoundRobin => {
                let mut c = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
                let cur = c.entry(service.to_owned()).or_insert(0);
                *cur = cur.wrapping_add(1);
                *cur % n
            }
            LoadBalancer::Random => rand::rng().random_range(0..n),
            LoadBalancer::ConsistentHash => match hash_value {
                Some(v) => (0..n)
                    .max_by_key(|&i| {
                        let mut h = std::hash::DefaultHasher::new();
                        v.hash(&mut h);
                        healthy[i].1.hash(&mut h);
                        h.finish()
                    })
                    .unwrap_or(0),
                None => rand::rng().random_range(0..n),
            },
        };
        let (e, addr, stats) = healthy[i];
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked { endpoint: (*e).clone(), addr: *addr, stats: stats.clone(), guard: InFlight(stats.clone()) })
    }

    /// Records the outcome of a try: `failed` for a 5xx or connect failure. `endpoints` is
    /// the service's endpoint list (to never eject the last one).
    pub fn outcome(&self, picked: &Picked, failed: bool, policy: &BackendPolicy, endpoints: &[Endpoint]) {
        let s = &picked.stats;
        if !failed {
            s.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.consecutive_errors {
            return;
        }
        let now = self.now_ms();
        let others_available = endpoints
            .iter()
            .filter_map(endpoint_addr)
            .filter(|a| *a != picked.addr)
            .any(|a| !self.ejected(&self.stats(a), now));
        if !others_available {
            return;
        }
        let times = s.ejections.fetch_add(1, Ordering::Relaxed).min(10);
        let millis = policy.ejection.as_millis() as u64 * (1u64 << times);
        s.ejected_until.store(now + millis, Ordering::Relaxed);
        s.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(endpoint = %picked.addr, ejection_ms = millis, failures = n, "endpoint ejected");
    }
}
