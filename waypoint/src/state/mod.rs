//! The waypoint's view of the mesh: services and workloads (ztunnel's [`MeshState`]), and the
//! waypoint resources compiled for the request path: route tables per (service, port), L7
//! policies per target, backend policies per service. A [`Snapshot`] is immutable; the xDS
//! source builds a new one on every change and swaps it in ([`SnapshotHandle`]).

pub mod route;
pub mod xds;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::mesh::waypoint::v1 as pb;
use serde::Serialize;
use tokio::sync::watch;
use ztunnel::state::{Service, State as MeshState, Workload};

use crate::authz::Policy;
use route::{CompiledRoute, Entry, RouteTable};

/// How endpoints of a service are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LoadBalancer {
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Hash of a request header.
    ConsistentHash,
}

/// A service's balancing and outlier settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendPolicy {
    /// Algorithm.
    pub load_balancer: LoadBalancer,
    /// Header hashed by [`LoadBalancer::ConsistentHash`] (lower case).
    #[serde(serialize_with = "ser_header_name")]
    pub hash_header: Option<http::HeaderName>,
    /// Consecutive failures that eject an endpoint.
    pub consecutive_errors: u32,
    /// Base ejection time.
    pub ejection: Duration,
}

impl Default for BackendPolicy {
    fn default() -> Self {
        BackendPolicy {
            load_balancer: LoadBalancer::LeastRequest,
            hash_header: None,
            consecutive_errors: 5,
            ejection: Duration::from_secs(30),
        }
    }
}

impl TryFrom<pb::BackendPolicy> for BackendPolicy {
    type Error = String;

    fn try_from(b: pb::BackendPolicy) -> Result<Self, String> {
        use pb::backend_policy::LoadBalancer as Lb;
        let at = |field: &str, why: String| format!("BackendPolicy {}: {field}: {why}", b.hostname);
        let load_balancer = match Lb::try_from(b.load_balancer) {
            Ok(Lb::LeastRequest) => LoadBalancer::LeastRequest,
            Ok(Lb::RoundRobin) => LoadBalancer::RoundRobin,
            Ok(Lb::Random) => LoadBalancer::Random,
            Ok(Lb::ConsistentHash) => LoadBalancer::ConsistentHash,
            Err(_) => return Err(at("load_balancer", format!("unknown value {}", b.load_balancer))),
        };
        let hash_header = match (load_balancer, b.hash_header.as_str()) {
            (LoadBalancer::ConsistentHash, "") => return Err(at("hash_header", "required for CONSISTENT_HASH".into())),
            (_, "") => None,
            (_, h) => Some(
                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| at("hash_header", format!("{h:?} is not a header name")))?,
            ),
        };
        let ejection = match &b.outlier_ejection {
            Some(d) if d.seconds < 0 || d.nanos < 0 => return Err(at("outlier_ejection", "negative".into())),
            Some(d) if d.seconds > 0 || d.nanos > 0 => Duration::new(d.seconds as u64, d.nanos as u32),
            _ => Duration::from_secs(30),
        };
        Ok(BackendPolicy {
            load_balancer,
            hash_header,
            consecutive_errors: if b.outlier_consecutive_errors == 0 { 5 } else { b.outlier_consecutive_errors },
            ejection,
        })
    }
}

fn ser_policy_map<S: serde::Serializer>(m: &HashMap<String, Vec<Arc<Policy>>>, s: S) -> Result<S::Ok, S::Error> {
    let sorted: std::collections::BTreeMap<&str, Vec<&Policy>> =
        m.iter().map(|(k, v)| (k.as_str(), v.iter().map(|p| &**p).collect())).collect();
    sorted.serialize(s)
}

fn ser_opt_arc<T: Serialize, S: serde::Serializer>(v: &Option<Arc<T>>, s: S) -> Result<S::Ok, S::Error> {
    v.as_deref().serialize(s)
}

fn ser_header_name<S: serde::Serializer>(h: &Option<http::HeaderName>, s: S) -> Result<S::Ok, S::Error> {
    h.as_ref().map(|h| h.as_str()).serialize(s)
}

/// An L7 policy with the targets it applies to.
#[derive(Debug, Serialize)]
pub struct TargetedPolicy {
    /// The compiled policy.
    #[serde(serialize_with = "route::ser_arc")]
    pub policy: Arc<Policy>,
    /// `namespace/name` of target Gateways.
    pub gateways: Vec<String>,
    /// Target service FQDNs.
    pub services: Vec<String>,
    /// Enforced on every request through the waypoint, because a target could not be
    /// resolved ([`Policy::unresolved_target`]).
    #[serde(serialize_with = "ser_opt_arc", skip_serializing_if = "Option::is_none")]
    pub everywhere: Option<Arc<Policy>>,
}

/// Compiles the policy and resolves its targets; never an error. A target without a kind is
/// not NACKed with the push: a NACK keeps the previous policies, so every other policy of the
/// push would be dropped with it (a new DENY never applied) and this one would fail open. The
/// policy is placed failing closed on every request instead, since that target may be any.
impl TryFrom<pb::L7Policy> for TargetedPolicy {
    type Error = crate::authz::PolicyError;

    fn try_from(p: pb::L7Policy) -> Result<Self, Self::Error> {
        let mut gateways = Vec::new();
        let mut services = Vec::new();
        let mut unresolved = None;
        for (i, t) in p.targets.iter().enumerate() {
            match &t.kind {
                Some(pb::target::Kind::Gateway(g)) => gateways.push(g.clone()),
                Some(pb::target::Kind::Service(s)) => services.push(s.to_ascii_lowercase()),
                None => {
                    unresolved.get_or_insert(i);
                }
            }
        }
        let policy = Arc::new(Policy::try_from(p)?);
        let everywhere = unresolved.map(|i| {
            let why = crate::authz::PolicyError {
                policy: policy.key.to_string(),
                field: format!("targets[{i}]"),
                problem: "target without a kind".into(),
            };
            tracing::warn!(
                policy = %policy.key,
                action = ?policy.action,
                error = %why,
                "L7 policy has a target the waypoint cannot resolve; enforcing it fail-closed on every request \
                 (DENY: its rules deny everywhere; ALLOW: allows nothing)"
            );
            Arc::new(policy.unresolved_target(&why))
        });
        Ok(TargetedPolicy { policy, gateways, services, everywhere })
    }
}

/// Who this waypoint is, for finding its own workload in the mesh state: the source whose
/// locality a service's load balancing (STRICT, FAILOVER) is applied against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Own {
    /// This waypoint's Gateway, `namespace/name`.
    pub gateway: String,
    /// The waypoint's identity.
    pub identity: Option<hbone::Identity>,
    /// The node the waypoint runs on.
    pub node: String,
    /// The waypoint pod's IP, when configured.
    pub ip: Option<IpAddr>,
    /// The network the waypoint is on (empty: the default one).
    pub network: String,
}

impl Own {
    /// Only the Gateway known (tests): the waypoint's own workload is never found, so locality
    /// preferences see an unknown source.
    pub fn gateway(gateway: impl Into<String>) -> Own {
        Own { gateway: gateway.into(), ..Own::default() }
    }

    /// The waypoint's own workload in `mesh`: the one at its IP when that runs as its identity,
    /// else one running as its identity on its node (replicas on one node share its locality).
    /// `None` when neither is there: the waypoint then prefers nothing (FAILOVER treats every
    /// locality alike, STRICT admits no endpoint).
    pub fn find(&self, mesh: &MeshState) -> Option<Arc<Workload>> {
        let id = self.identity.as_ref()?;
        if let Some(w) = self.ip.and_then(|ip| mesh.workload_by_ip(ip)).filter(|w| w.identity == *id) {
            return Some(w.clone());
        }
        if self.node.is_empty() {
            return None;
        }
        let network = &mesh.config().network;
        mesh.workloads().find(|w| w.identity == *id && w.node == self.node && w.network == *network).cloned()
    }
}

/// One immutable view, indexed for the request path.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// Workloads and services.
    #[serde(skip)]
    pub mesh: MeshState,
    /// Routes per `(service hostname, port)`; port 0 holds routes for every port.
    #[serde(serialize_with = "ser_routes")]
    routes: HashMap<String, HashMap<u16, RouteTable>>,
    /// Policies targeting this waypoint's Gateway.
    #[serde(serialize_with = "route::ser_arcs")]
    gateway_policies: Vec<Arc<Policy>>,
    /// Policies targeting a service, by FQDN.
    #[serde(serialize_with = "ser_policy_map")]
    service_policies: HashMap<String, Vec<Arc<Policy>>>,
    /// Backend policies by service FQDN.
    backends: HashMap<String, BackendPolicy>,
    /// Services by FQDN.
    #[serde(skip)]
    services_by_host: HashMap<String, Arc<Service>>,
    /// Policies applying here that are not enforced as sent (see [`Policy::invalid`]).
    #[serde(skip)]
    policies_stand_in: usize,
    /// The waypoint's own workload (see [`Own::find`]), found once per snapshot.
    #[serde(rename = "sourceWorkload", serialize_with = "ser_source")]
    source: Option<Arc<Workload>>,
}

fn ser_source<S: serde::Serializer>(w: &Option<Arc<Workload>>, s: S) -> Result<S::Ok, S::Error> {
    w.as_ref().map(|w| w.uid.as_str()).serialize(s)
}

fn ser_routes<S: serde::Serializer>(r: &HashMap<String, HashMap<u16, RouteTable>>, s: S) -> Result<S::Ok, S::Error> {
    let sorted: std::collections::BTreeMap<String, &[Entry]> =
        r.iter().flat_map(|(h, m)| m.iter().map(move |(p, t)| (format!("{h}:{p}"), &t[..]))).collect();
    sorted.serialize(s)
}

static DEFAULT_BACKEND: std::sync::LazyLock<BackendPolicy> = std::sync::LazyLock::new(BackendPolicy::default);

impl Snapshot {
    /// Indexes everything; `own` says who this waypoint is (its Gateway, and how to find its
    /// own workload).
    pub fn new(
        mesh: MeshState,
        routes: &[Arc<CompiledRoute>],
        policies: &[Arc<TargetedPolicy>],
        backends: Vec<(String, BackendPolicy)>,
        own: &Own,
    ) -> Snapshot {
        let gateway = own.gateway.as_str();
        let source = own.find(&mesh);
        let services_by_host: HashMap<String, Arc<Service>> =
            mesh.services().map(|s| (s.hostname.to_ascii_lowercase(), s.clone())).collect();
        let mut tables: HashMap<(String, u16), Vec<Entry>> = HashMap::new();
        for r in routes {
            for (host, port) in &r.parents {
                let mut keys = vec![(host.clone(), *port)];
                if *port == 0
                    && let Some(svc) = services_by_host.get(host)
                {
                    keys.extend(svc.ports.keys().map(|p| (host.clone(), *p)));
                }
                for k in keys {
                    tables.entry(k).or_default().extend(r.entries());
                }
            }
        }
        // Port-specific tables also hold the every-port routes (already added above for
        // declared ports); sort each by precedence.
        let mut routes: HashMap<String, HashMap<u16, RouteTable>> = HashMap::new();
        for ((host, port), mut v) in tables {
            route::sort(&mut v);
            routes.entry(host).or_default().insert(port, RouteTable::from(v));
        }
        let mut gateway_policies = Vec::new();
        let mut service_policies: HashMap<String, Vec<Arc<Policy>>> = HashMap::new();
        let mut policies_stand_in = 0;
        for p in policies {
            let here = p.gateways.iter().any(|g| g == gateway);
            if here {
                gateway_policies.push(p.policy.clone());
            }
            for s in &p.services {
                service_policies.entry(s.clone()).or_default().push(p.policy.clone());
            }
            if let Some(e) = &p.everywhere {
                gateway_policies.push(e.clone());
            }
            let applies = here || !p.services.is_empty() || p.everywhere.is_some();
            if applies && (p.policy.invalid.is_some() || p.everywhere.is_some()) {
                policies_stand_in += 1;
            }
        }
        Snapshot {
            mesh,
            routes,
            gateway_policies,
            service_policies,
            backends: backends.into_iter().map(|(h, b)| (h.to_ascii_lowercase(), b)).collect(),
            services_by_host,
            policies_stand_in,
            source,
        }
    }

    /// The waypoint's own workload, when the mesh state has it: the source of its connections
    /// for a service's locality preferences.
    pub fn source(&self) -> Option<&Workload> {
        self.source.as_deref()
    }

    /// How many of the policies applying here are not enforced as sent but in a fail-closed
    /// form: ones that cannot be compiled, or with a target that cannot be resolved.
    pub fn policies_stand_in(&self) -> usize {
        self.policies_stand_in
    }

    /// The route table for a service port (falling back to the every-port table).
    pub fn routes(&self, host: &str, port: u16) -> Option<&RouteTable> {
        let ports = match self.routes.get(host) {
            Some(p) => p,
            // Hostnames are lower case in Kubernetes; tolerate others without allocating
            // on the common path.
            None => self.routes.get(&host.to_ascii_lowercase())?,
        };
        ports.get(&port).or_else(|| ports.get(&0))
    }

    /// Policies applying to requests for `service` (FQDN), gateway-wide first.
    pub fn policies_for<'a>(&'a self, service: Option<&str>) -> impl Iterator<Item = &'a Policy> + Clone {
        let svc = service.and_then(|s| self.service_policies.get(s)).map(|v| &v[..]).unwrap_or(&[]);
        self.gateway_policies.iter().chain(svc.iter()).map(|p| &**p)
    }

    /// The backend policy of a service (defaults when none).
    pub fn backend_policy(&self, host: &str) -> &BackendPolicy {
        self.backends.get(host).unwrap_or(&DEFAULT_BACKEND)
    }

    /// A service by FQDN.
    pub fn service_by_host(&self, host: &str) -> Option<&Arc<Service>> {
        self.services_by_host.get(host)
    }

    /// A service by VIP.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.mesh.service_by_vip(ip)
    }
}

/// The current snapshot, swapped atomically; readers keep theirs for a request.
#[derive(Clone, Debug)]
pub struct SnapshotHandle {
    current: Arc<ArcSwap<Snapshot>>,
    version: Arc<watch::Sender<u64>>,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        SnapshotHandle {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            version: Arc::new(watch::channel(0).0),
        }
    }
}

impl SnapshotHandle {
    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a new snapshot; returns its version.
    pub fn store(&self, s: Snapshot) -> u64 {
        self.current.store(Arc::new(s));
        let mut v = 0;
        self.version.send_modify(|x| {
            *x += 1;
            v = *x;
        });
        v
    }

    /// Number of snapshots stored so far (0: none yet).
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ztunnel::state::{StateConfig, TunnelProtocol, WorkloadType};

    use super::*;

    fn workload(uid: &str, sa: &str, ip: &str, node: &str) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            identity: hbone::Identity::new("cluster.local", "shop", sa).unwrap(),
            addresses: vec![ip.parse().unwrap()],
            node: node.into(),
            network: String::new(),
            network_mode: ztunnel::state::NetworkMode::Standard,
            protocol: TunnelProtocol::Hbone,
            canonical_name: sa.into(),
            canonical_revision: "latest".into(),
            workload_name: sa.into(),
            workload_type: WorkloadType::Deployment,
            cluster_id: "Kubernetes".into(),
            waypoint: None,
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            healthy: true,
            locality: Default::default(),
            capacity: 1,
        }
    }

    fn own(ip: Option<&str>, node: &str) -> Own {
        Own {
            gateway: "shop/wp".into(),
            identity: Some(hbone::Identity::new("cluster.local", "shop", "wp").unwrap()),
            node: node.into(),
            ip: ip.map(|i| i.parse().unwrap()),
            network: String::new(),
        }
    }

    fn found(o: &Own, mesh: &MeshState) -> Option<String> {
        o.find(mesh).map(|w| w.uid.clone())
    }

    #[test]
    fn the_waypoint_finds_its_own_workload_by_ip_else_by_identity_on_its_node() {
        let mesh = MeshState::new(
            StateConfig::default(),
            vec![
                workload("wp-1", "wp", "10.0.0.1", "node-a"),
                workload("wp-2", "wp", "10.0.0.2", "node-b"),
                workload("app", "app", "10.0.0.3", "node-a"),
            ],
            Vec::new(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(found(&own(Some("10.0.0.2"), "node-a"), &mesh).as_deref(), Some("wp-2"), "the IP decides");
        assert_eq!(found(&own(None, "node-b"), &mesh).as_deref(), Some("wp-2"));
        assert_eq!(found(&own(None, "node-a"), &mesh).as_deref(), Some("wp-1"));
        // Another identity at the IP is not the waypoint: its node decides.
        assert_eq!(found(&own(Some("10.0.0.3"), "node-a"), &mesh).as_deref(), Some("wp-1"));
        assert_eq!(found(&own(Some("10.0.0.9"), "node-c"), &mesh), None);
        assert_eq!(found(&own(None, "node-c"), &mesh), None);
        assert_eq!(found(&Own::gateway("shop/wp"), &mesh), None, "no identity: no source");

        let snap = Snapshot::new(mesh, &[], &[], Vec::new(), &own(None, "node-b"));
        assert_eq!(snap.source().map(|w| w.uid.as_str()), Some("wp-2"));
        let dump = serde_json::to_value(&snap).unwrap();
        assert_eq!(dump["sourceWorkload"], "wp-2");
    }
}
