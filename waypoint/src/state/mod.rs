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
use ztunnel::state::{Service, State as MeshState};

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
}

fn ser_routes<S: serde::Serializer>(r: &HashMap<String, HashMap<u16, RouteTable>>, s: S) -> Result<S::Ok, S::Error> {
    let sorted: std::collections::BTreeMap<String, &[Entry]> =
        r.iter().flat_map(|(h, m)| m.iter().map(move |(p, t)| (format!("{h}:{p}"), &t[..]))).collect();
    sorted.serialize(s)
}

static DEFAULT_BACKEND: std::sync::LazyLock<BackendPolicy> = std::sync::LazyLock::new(BackendPolicy::default);

impl Snapshot {
    /// Indexes everything; `gateway` is this waypoint's `namespace/name`.
    pub fn new(
        mesh: MeshState,
        routes: &[Arc<CompiledRoute>],
        policies: &[Arc<TargetedPolicy>],
        backends: Vec<(String, BackendPolicy)>,
        gateway: &str,
    ) -> Snapshot {
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
        }
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
