//! Services (a hostname with virtual IPs and ports) and the choice of an endpoint behind one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::workload::{GatewayAddress, NetworkAddress, PortMap, Workload};

/// A service: a hostname, its virtual IPs and its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Fully qualified hostname, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: String,
    /// Virtual IPs, each on a network.
    pub vips: Vec<NetworkAddress>,
    /// Service port -> target port. A target port of 0 means a named target port: each
    /// endpoint's own port map says which number it is.
    pub ports: PortMap,
    /// Service port -> the application protocol declared for it (`appProtocol` or the port
    /// name's prefix); ports without a declared protocol are absent.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub app_protocols: BTreeMap<u16, AppProtocol>,
    /// Identities the endpoints may present besides their own (e.g. for VMs or gateways).
    pub subject_alt_names: Vec<String>,
    /// Waypoint that traffic to this service must go through, if any.
    pub waypoint: Option<GatewayAddress>,
}

/// The application protocol of a service port, as declared (Istio's explicit protocol
/// selection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AppProtocol {
    /// HTTP/1.1.
    Http11,
    /// HTTP/2 (prior knowledge, `h2c`).
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP.
    Tcp,
    /// TLS.
    Tls,
}

impl Service {
    /// The protocol declared for `service_port`, if any.
    pub fn app_protocol(&self, service_port: u16) -> Option<AppProtocol> {
        self.app_protocols.get(&service_port).copied()
    }

    /// `namespace/hostname`, the key workloads use to name the services they back.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// A chosen backend: the workload and the port to connect to on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The workload.
    pub workload: Arc<Workload>,
    /// Target port on the workload.
    pub port: u16,
}

/// The healthy backends of one service.
#[derive(Debug)]
struct EndpointSet {
    /// `namespace/hostname`, kept so lookups into each workload's port maps need no formatting.
    key: String,
    /// Healthy workloads with at least one address, sorted by uid so snapshots are reproducible.
    workloads: Vec<Arc<Workload>>,
    /// Round-robin cursor; per snapshot, so a new snapshot restarts the rotation.
    next: AtomicUsize,
}

/// Healthy endpoints per service, keyed namespace -> hostname so a lookup from a [`Service`]
/// borrows its two strings instead of formatting a key.
#[derive(Debug, Default)]
pub(super) struct EndpointIndex {
    by_namespace: HashMap<String, HashMap<String, EndpointSet>>,
}

impl EndpointIndex {
    /// Indexes every healthy, addressable workload under each service it lists.
    pub(super) fn build<'a>(workloads: impl Iterator<Item = &'a Arc<Workload>>) -> Self {
        let mut by_namespace: HashMap<String, HashMap<String, EndpointSet>> = HashMap::new();
        for w in workloads.filter(|w| w.healthy && !w.addresses.is_empty()) {
            for key in w.services.keys() {
                // Keys were validated as `namespace/hostname` at conversion; skip anything else.
                let Some((ns, host)) = key.split_once('/') else { continue };
                let set = by_namespace.entry(ns.to_owned()).or_default().entry(host.to_owned()).or_insert_with(|| {
                    EndpointSet { key: key.clone(), workloads: Vec::new(), next: AtomicUsize::new(0) }
                });
                set.workloads.push(w.clone());
            }
        }
        for set in by_namespace.values_mut().flat_map(|m| m.values_mut()) {
            set.workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        }
        EndpointIndex { by_namespace }
    }

    /// Number of healthy endpoints of a service.
    pub(super) fn count(&self, svc: &Service) -> usize {
        self.set(svc).map_or(0, |s| s.workloads.len())
    }

    fn set(&self, svc: &Service) -> Option<&EndpointSet> {
        self.by_namespace.get(svc.namespace.as_str())?.get(svc.hostname.as_str())
    }

    /// Every healthy endpoint of `svc` whose target port for `service_port` resolves.
    pub(super) fn all(&self, svc: &Service, service_port: u16) -> Vec<Endpoint> {
        let Some(set) = self.set(svc) else { return Vec::new() };
        set.workloads
            .iter()
            .filter_map(|w| {
                target_port(w, &set.key, svc, service_port).map(|port| Endpoint { workload: w.clone(), port })
            })
            .collect()
    }

    /// Picks a healthy endpoint of `svc` for `service_port`, rotating round robin.
    ///
    /// Round robin (an atomic cursor per service) rather than random: it spreads evenly even over
    /// few connections, costs one relaxed atomic add, and makes tests deterministic. Endpoints
    /// whose target port cannot be resolved are skipped, so the scan is at most one lap.
    pub(super) fn pick(&self, svc: &Service, service_port: u16) -> Option<Endpoint> {
        let set = self.set(svc)?;
        let n = set.workloads.len();
        if n == 0 {
            return None;
        }
        let start = set.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let w = &set.workloads[(start + i) % n];
            target_port(w, &set.key, svc, service_port).map(|port| Endpoint { workload: w.clone(), port })
        })
    }
}

/// The port to use on `w` for `service_port` of `svc`: the workload's own mapping for that
/// service, else the service's target port, else the service port itself when the service does
/// not declare the port. `None` when the service declares a named target port (0) that the
/// workload does not resolve.
fn target_port(w: &Workload, key: &str, svc: &Service, service_port: u16) -> Option<u16> {
    if let Some(&p) = w.services.get(key).and_then(|m| m.get(&service_port)).filter(|&&p| p != 0) {
        return Some(p);
    }
    match svc.ports.get(&service_port) {
        Some(0) => None,
        Some(&p) => Some(p),
        None => Some(service_port),
    }
}
