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
    /// How an endpoint is chosen (locality, health); the default when the control plane sets
    /// nothing.
    #[serde(skip_serializing_if = "LoadBalancing::is_default")]
    pub load_balancing: LoadBalancing,
}

/// Endpoint choice for a service (Istio's `Service.load_balancing`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// How `routing_preference` is applied.
    pub mode: LoadBalancingMode,
    /// Locality scopes, most important first: an endpoint's rank is how many of them, in order,
    /// it shares with the client before the first it does not.
    pub routing_preference: Vec<LocalityScope>,
    /// Whether unhealthy endpoints may be chosen too (`health_policy: ALLOW_ALL`, e.g. for
    /// `publishNotReadyAddresses`).
    pub allow_unhealthy: bool,
}

impl LoadBalancing {
    fn is_default(&self) -> bool {
        *self == LoadBalancing::default()
    }

    /// Whether the routing preferences decide anything: STRICT or FAILOVER with at least one
    /// scope.
    pub fn ranked(&self) -> bool {
        matches!(self.mode, LoadBalancingMode::Strict | LoadBalancingMode::Failover)
            && !self.routing_preference.is_empty()
    }

    /// Istio's rank of endpoint `ep` for a client `src`: how many preferred scopes, in order, the
    /// two share before the first they do not. 0 for an unknown client (it shares nothing
    /// anyone can tell), and whatever the mode.
    pub fn rank(&self, src: Option<&Workload>, ep: &Workload) -> usize {
        match src {
            Some(src) => self.routing_preference.iter().take_while(|scope| scope.shared(src, ep)).count(),
            None => 0,
        }
    }

    /// Whether `ep` may serve `src` at all under these preferences: under STRICT only an endpoint
    /// sharing every preferred scope with a known client (fail closed); otherwise any.
    pub fn admits(&self, src: Option<&Workload>, ep: &Workload) -> bool {
        self.mode != LoadBalancingMode::Strict
            || !self.ranked()
            || (src.is_some() && self.rank(src, ep) == self.routing_preference.len())
    }
}

/// How a service's routing preferences are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancingMode {
    /// Preferences are ignored: every endpoint is eligible.
    #[default]
    Standard,
    /// Only endpoints sharing every preferred scope with the client; none other, ever (e.g.
    /// `internalTrafficPolicy: Local` is STRICT on NODE).
    Strict,
    /// The endpoints of the highest rank present, falling back scope by scope.
    Failover,
    /// No endpoint is chosen: the connection goes to the address the client dialled.
    Passthrough,
}

/// A locality dimension an endpoint can share with the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LocalityScope {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same subzone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
    /// Same network.
    Network,
    /// A scope this build does not know (or UNSPECIFIED): never shared, so STRICT on it has no
    /// endpoint rather than ignoring the requirement.
    Unknown(i32),
}

impl LocalityScope {
    /// Whether `src` and `ep` are in the same place for this scope (an unknown scope is never
    /// shared).
    pub fn shared(self, src: &Workload, ep: &Workload) -> bool {
        match self {
            LocalityScope::Region => src.locality.region == ep.locality.region,
            LocalityScope::Zone => src.locality.zone == ep.locality.zone,
            LocalityScope::Subzone => src.locality.subzone == ep.locality.subzone,
            LocalityScope::Node => src.node == ep.node,
            LocalityScope::Cluster => src.cluster_id == ep.cluster_id,
            LocalityScope::Network => src.network == ep.network,
            LocalityScope::Unknown(_) => false,
        }
    }
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

/// The backends of one service reachable from this proxy.
#[derive(Debug)]
struct EndpointSet {
    /// `namespace/hostname`, kept so lookups into each workload's port maps need no formatting.
    key: String,
    /// Workloads with an address on this proxy's network, healthy or not (a service may allow
    /// unhealthy ones), sorted by uid so the rotation order is reproducible.
    workloads: Vec<Arc<Workload>>,
    /// Round-robin cursor. Each snapshot starts it at a random place: snapshots are rebuilt on
    /// every change in the mesh, and starting each at the first endpoint would send the first
    /// connections of every snapshot to the same one.
    next: AtomicUsize,
}

/// Endpoints per service, keyed namespace -> hostname so a lookup from a [`Service`] borrows its
/// two strings instead of formatting a key.
#[derive(Debug, Default)]
pub(super) struct EndpointIndex {
    by_namespace: HashMap<String, HashMap<String, EndpointSet>>,
}

impl EndpointIndex {
    /// Indexes every workload with an address on `network` under each service it lists.
    ///
    /// Workloads on other networks are left out: reaching them takes their network's gateway
    /// (double HBONE), which this proxy does not implement, and dialling their addresses on the
    /// local network would reach whatever holds them here.
    pub(super) fn build<'a>(workloads: impl Iterator<Item = &'a Arc<Workload>>, network: &str) -> Self {
        let mut by_namespace: HashMap<String, HashMap<String, EndpointSet>> = HashMap::new();
        for w in workloads.filter(|w| w.network == network && !w.addresses.is_empty()) {
            for key in w.services.keys() {
                // Keys were validated as `namespace/hostname` at conversion; skip anything else.
                let Some((ns, host)) = key.split_once('/') else { continue };
                let set = by_namespace.entry(ns.to_owned()).or_default().entry(host.to_owned()).or_insert_with(|| {
                    EndpointSet {
                        key: key.clone(),
                        workloads: Vec::new(),
                        next: AtomicUsize::new(rand::random::<u32>() as usize),
                    }
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
        self.set(svc).map_or(0, |s| s.workloads.iter().filter(|w| w.healthy).count())
    }

    fn set(&self, svc: &Service) -> Option<&EndpointSet> {
        self.by_namespace.get(svc.namespace.as_str())?.get(svc.hostname.as_str())
    }

    /// Every usable endpoint of `svc` for `service_port` (healthy unless the service allows
    /// otherwise, target port resolved), whatever the client's locality.
    pub(super) fn all(&self, svc: &Service, service_port: u16) -> Vec<Endpoint> {
        let Some(set) = self.set(svc) else { return Vec::new() };
        set.workloads.iter().filter_map(|w| usable(w, &set.key, svc, service_port)).collect()
    }

    /// Every usable endpoint of `svc` for `service_port` that `src` may reach under the service's
    /// preferences ([`LoadBalancing::admits`]: STRICT keeps only those sharing every preferred
    /// scope), with a capacity above 0, in uid order. FAILOVER's ranking is left to the caller
    /// ([`LoadBalancing::rank`]), which may know more about the endpoints (e.g. which it ejected).
    pub(super) fn admitted(&self, svc: &Service, service_port: u16, src: Option<&Workload>) -> Vec<Endpoint> {
        let Some(set) = self.set(svc) else { return Vec::new() };
        let lb = &svc.load_balancing;
        set.workloads
            .iter()
            .filter(|w| w.capacity > 0 && lb.admits(src, w))
            .filter_map(|w| usable(w, &set.key, svc, service_port))
            .collect()
    }

    /// Picks an endpoint of `svc` for a connection from `src` to `service_port`.
    ///
    /// Eligible: usable (see [`EndpointIndex::all`]), with a capacity above 0, and, when the
    /// service has routing preferences, of the best rank present (FAILOVER) or sharing every
    /// preferred scope with `src` (STRICT; nothing when `src` is unknown). Among those, weighted
    /// round robin by capacity over the uid order: one relaxed atomic add and a scan, an even
    /// spread even over few connections, and exact shares in tests (each lap of the cursor gives
    /// every endpoint its capacity in picks). Rank is Istio's: the number of preferred scopes,
    /// in order, shared before the first that is not.
    pub(super) fn pick(&self, svc: &Service, service_port: u16, src: Option<&Workload>) -> Option<Endpoint> {
        let set = self.set(svc)?;
        let lb = &svc.load_balancing;
        let rank = |w: &Workload| lb.rank(src, w);
        // Borrowed, not cloned: one pick scans the set up to twice, and only the chosen
        // workload's reference count is touched. STRICT is the same filter the waypoint's
        // endpoint list uses ([`LoadBalancing::admits`]).
        let eligible = || {
            set.workloads
                .iter()
                .filter(|w| w.capacity > 0 && lb.admits(src, w))
                .filter_map(|w| Some((w, port_for(w, &set.key, svc, service_port)?)))
        };
        let want = match lb.mode {
            LoadBalancingMode::Failover if lb.ranked() => Some(eligible().map(|(w, _)| rank(w)).max()?),
            _ => None,
        };
        let candidates = || eligible().filter(|(w, _)| want.is_none_or(|r| rank(w) == r));
        let total: u64 = candidates().map(|(w, _)| u64::from(w.capacity)).sum();
        if total == 0 {
            return None;
        }
        let mut k = set.next.fetch_add(1, Ordering::Relaxed) as u64 % total;
        let (w, port) = candidates().find(|(w, _)| {
            let c = u64::from(w.capacity);
            if k < c {
                return true;
            }
            k -= c;
            false
        })?;
        Some(Endpoint { workload: w.clone(), port })
    }
}

/// The port `w` serves `service_port` of `svc` on, when it may serve it: healthy (or the service
/// allows unhealthy endpoints), and with a target port.
fn port_for(w: &Workload, key: &str, svc: &Service, service_port: u16) -> Option<u16> {
    if !w.healthy && !svc.load_balancing.allow_unhealthy {
        return None;
    }
    target_port(w, key, svc, service_port)
}

/// `w` as an endpoint of `svc` for `service_port`, when it may serve it (see [`port_for`]).
fn usable(w: &Arc<Workload>, key: &str, svc: &Service, service_port: u16) -> Option<Endpoint> {
    port_for(w, key, svc, service_port).map(|port| Endpoint { workload: w.clone(), port })
}

/// The port to use on `w` for `service_port` of `svc`: the workload's own mapping for that
/// service, else the service's target port. `None` when the service does not declare the port
/// (as in Istio: a port the Service does not list is not routed, even if an endpoint maps it), or
/// declares a named target port (0) that the workload does not resolve.
fn target_port(w: &Workload, key: &str, svc: &Service, service_port: u16) -> Option<u16> {
    let declared = *svc.ports.get(&service_port)?;
    if let Some(&p) = w.services.get(key).and_then(|m| m.get(&service_port)).filter(|&&p| p != 0) {
        return Some(p);
    }
    (declared != 0).then_some(declared)
}
