//! The node proxy's view of the mesh: workloads, services and L4 authorization policies.
//!
//! A [`State`] is an immutable snapshot with the indexes the connection path needs (one hash
//! lookup per question, no allocation). Sources (the local YAML file in [`file`](mod@file), later xDS)
//! build a whole new snapshot on each change and publish it through a [`StateHandle`]; readers
//! keep whatever snapshot they loaded for the life of a connection.
//!
//! - [`workload`], [`service`], [`policy`]: the model.
//! - [`authorize`]: the decision for one connection ([`State::authorize`]).
//! - [`waypoint_gate`]: who may connect to a workload that has a waypoint ([`State::waypoint_gate`]).
//! - [`convert`]: validated conversion from the Istio protos.
//! - [`file`](mod@file): the YAML state file and its watcher.

#![forbid(unsafe_code)]

pub mod authorize;
pub mod convert;
pub mod file;
mod handle;
pub mod policy;
pub mod service;
pub mod waypoint_gate;
pub mod workload;
pub mod xds;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

pub use authorize::{ConnInfo, DryRunResult, PolicyRule, Reason, Verdict};
pub use handle::StateHandle;
pub use policy::{Action, Policy, Scope};
pub use service::{AppProtocol, Endpoint, LoadBalancing, LoadBalancingMode, LocalityScope, Service};
pub use waypoint_gate::{WaypointDenial, WaypointGate};
pub use workload::{
    GatewayAddress, GatewayDestination, Locality, NetworkAddress, NetworkMode, TunnelProtocol, Workload, WorkloadType,
};

use service::EndpointIndex;

/// Istio's default root namespace: policies there apply to the whole mesh.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Settings that shape how a snapshot is indexed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateConfig {
    /// The mesh root namespace: its policies without a workload selector apply to every workload.
    pub root_namespace: String,
    /// The network this proxy is on; only addresses on it are indexed for IP lookups.
    pub network: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(), network: String::new() }
    }
}

/// Why a set of objects does not form a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Two workloads share a uid.
    #[error("duplicate workload uid {0:?}")]
    DuplicateWorkload(String),
    /// Two services share `namespace/hostname`.
    #[error("duplicate service {0:?}")]
    DuplicateService(String),
    /// Two policies share `namespace/name`.
    #[error("duplicate authorization policy {0:?}")]
    DuplicatePolicy(String),
}

/// Object counts of a snapshot, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Workloads.
    pub workloads: usize,
    /// Services.
    pub services: usize,
    /// Authorization policies.
    pub policies: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} workloads, {} services, {} policies", self.workloads, self.services, self.policies)
    }
}

/// An immutable snapshot of the mesh, indexed for the connection path.
#[derive(Debug, Default)]
pub struct State {
    /// Set by [`StateHandle::store`].
    pub(super) version: u64,
    config: StateConfig,
    /// Sorted by uid (dumps are stable).
    workloads: Vec<Arc<Workload>>,
    workload_by_uid: HashMap<String, Arc<Workload>>,
    /// Workloads on this proxy's network by address; host-network workloads are left out (their
    /// address is their node's, see [`NetworkMode::HostNetwork`]).
    workload_by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// Sorted by `namespace/hostname`.
    services: Vec<Arc<Service>>,
    service_by_key: HashMap<String, Arc<Service>>,
    /// The same services by namespace, then hostname: looked up from borrowed parts.
    service_by_host: HashMap<String, HashMap<String, Arc<Service>>>,
    service_by_vip: HashMap<IpAddr, Arc<Service>>,
    endpoints: EndpointIndex,
    /// Sorted by `namespace/name`.
    policies: Vec<Arc<Policy>>,
    policy_by_key: HashMap<String, Arc<Policy>>,
    /// Policies for every workload: GLOBAL scope, and an unknown scope from the root namespace
    /// (a NAMESPACE policy of the root namespace applies to that namespace only).
    global_policies: Vec<Arc<Policy>>,
    /// Namespace-wide policies outside the root namespace, by namespace.
    namespace_policies: HashMap<String, Vec<Arc<Policy>>>,
    /// Fail-closed stand-ins for policies that workloads name but this snapshot lacks.
    missing_policies: HashMap<String, Arc<Policy>>,
    /// For each workload (by uid) that must be reached through a waypoint, who may connect.
    waypoint_gates: HashMap<String, Arc<WaypointGate>>,
    /// Inconsistencies tolerated while indexing (e.g. two workloads on one IP).
    warnings: Vec<String>,
}

/// Where a policy applies, after resolving the root namespace and unknown scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    Global,
    Namespace,
    Selector,
}

fn placement(p: &Policy, root_namespace: &str) -> Placement {
    match p.scope {
        Scope::Global => Placement::Global,
        Scope::WorkloadSelector => Placement::Selector,
        // The control plane sends a root-namespace policy without a selector as GLOBAL; one it
        // sends as NAMESPACE is for the workloads of that namespace only.
        Scope::Namespace => Placement::Namespace,
        // A scope this build does not know is taken at its widest, like the policy itself is
        // taken fail-closed: one that can only deny.
        Scope::Unknown(_) if p.namespace == root_namespace => Placement::Global,
        Scope::Unknown(_) => Placement::Namespace,
    }
}

fn missing_policy(key: &str) -> Policy {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    Policy::new_unusable(
        ns,
        name,
        Scope::WorkloadSelector,
        Action::Deny,
        "selects this workload but is not known (yet)",
    )
}

impl State {
    /// An empty snapshot (allows everything, knows nothing).
    pub fn empty() -> State {
        State::default()
    }

    /// Builds and indexes a snapshot.
    ///
    /// Duplicate uids or keys are errors; two workloads (or services) on one address are not
    /// (that happens transiently while a pod IP is reused): the lower uid (key) wins and a warning
    /// is kept in [`State::warnings`]. Host-network workloads are not indexed by address at all
    /// (so never warned about): they share their node's.
    pub fn new(
        config: StateConfig,
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Policy>,
    ) -> Result<State, StateError> {
        let mut s = State { config, ..State::default() };

        let mut workloads: Vec<Arc<Workload>> = workloads.into_iter().map(Arc::new).collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        for w in &workloads {
            if s.workload_by_uid.insert(w.uid.clone(), w.clone()).is_some() {
                return Err(StateError::DuplicateWorkload(w.uid.clone()));
            }
            // As Istio's ztunnel (istio/ztunnel#1216): a host-network pod's address is its node's,
            // shared with the node and every other host-network pod there, so a connection to or
            // from it cannot be told apart from one to or from any of them. Indexing it would
            // pin the node's address on an arbitrary pod (wrong telemetry, the wrong pod's
            // waypoint, a warning per extra pod); it stays reachable by uid and as an endpoint.
            if w.network != s.config.network || w.host_network() {
                continue;
            }
            for ip in &w.addresses {
                match s.workload_by_ip.entry(ip.to_canonical()) {
                    Entry::Vacant(e) => {
                        e.insert(w.clone());
                    }
                    Entry::Occupied(e) => {
                        s.warnings.push(format!("address {ip} of workload {} is also {}'s", w.uid, e.get().uid))
                    }
                }
            }
        }

        let mut services: Vec<(String, Arc<Service>)> = services.into_iter().map(|x| (x.key(), Arc::new(x))).collect();
        services.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, svc) in &services {
            if s.service_by_key.insert(key.clone(), svc.clone()).is_some() {
                return Err(StateError::DuplicateService(key.clone()));
            }
            let by_host = s.service_by_host.entry(svc.namespace.clone()).or_default();
            by_host.insert(svc.hostname.clone(), svc.clone());
            for vip in svc.vips.iter().filter(|v| v.network == s.config.network) {
                match s.service_by_vip.entry(vip.address.to_canonical()) {
                    Entry::Vacant(e) => {
                        e.insert(svc.clone());
                    }
                    Entry::Occupied(e) => s.warnings.push(format!(
                        "address {} of service {key} is also {}/{}'s",
                        vip.address,
                        e.get().namespace,
                        e.get().hostname
                    )),
                }
            }
        }
        s.services = services.into_iter().map(|(_, svc)| svc).collect();
        s.endpoints = EndpointIndex::build(workloads.iter(), &s.config.network);
        s.waypoint_gates = waypoint_gate::build(&s, &workloads);

        let mut policies: Vec<(String, Arc<Policy>)> = policies.into_iter().map(|p| (p.key(), Arc::new(p))).collect();
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, p) in &policies {
            if s.policy_by_key.insert(key.clone(), p.clone()).is_some() {
                return Err(StateError::DuplicatePolicy(key.clone()));
            }
            match placement(p, &s.config.root_namespace) {
                Placement::Global => s.global_policies.push(p.clone()),
                Placement::Namespace => s.namespace_policies.entry(p.namespace.clone()).or_default().push(p.clone()),
                Placement::Selector => {}
            }
        }
        s.policies = policies.into_iter().map(|(_, p)| p).collect();

        for key in workloads.iter().flat_map(|w| w.authorization_policies.iter()) {
            if !s.policy_by_key.contains_key(key) && !s.missing_policies.contains_key(key) {
                s.warnings.push(format!("authorization policy {key} is named by a workload but not defined"));
                s.missing_policies.insert(key.clone(), Arc::new(missing_policy(key)));
            }
        }
        s.workloads = workloads;
        Ok(s)
    }

    /// Version assigned by [`StateHandle::store`]; 0 for a snapshot never stored.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The settings the snapshot was indexed with.
    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    /// Object counts.
    pub fn counts(&self) -> Counts {
        Counts { workloads: self.workloads.len(), services: self.services.len(), policies: self.policies.len() }
    }

    /// Inconsistencies tolerated while indexing.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The workload with this address on the local network. Never a host-network workload: a
    /// node's address names no workload (as in Istio), so traffic to it is not a mesh
    /// workload's and traffic from it has no known source workload.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workload_by_ip.get(&ip.to_canonical())
    }

    /// The workload with this uid.
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workload_by_uid.get(uid)
    }

    /// The service with this virtual IP on the local network.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_vip.get(&ip.to_canonical())
    }

    /// The service with this `namespace/hostname`.
    pub fn service_by_key(&self, key: &str) -> Option<&Arc<Service>> {
        self.service_by_key.get(key)
    }

    /// The service `hostname` in `namespace`; like [`State::service_by_key`] without formatting
    /// the key.
    pub fn service_by_host(&self, namespace: &str, hostname: &str) -> Option<&Arc<Service>> {
        self.service_by_host.get(namespace)?.get(hostname)
    }

    /// Who may connect to `w` (a workload of this snapshot): `None` when anyone may, as far as
    /// the waypoint is concerned (no waypoint, or `w` is one of its waypoint's own pods);
    /// otherwise only the waypoint. One map lookup, no allocation.
    pub fn waypoint_gate(&self, w: &Workload) -> Option<&WaypointGate> {
        self.waypoint_gates.get(w.uid.as_str()).map(Arc::as_ref)
    }

    /// The policy with this `namespace/name`.
    pub fn policy_by_key(&self, key: &str) -> Option<&Arc<Policy>> {
        self.policy_by_key.get(key)
    }

    /// All workloads, by uid.
    pub fn workloads(&self) -> impl ExactSizeIterator<Item = &Arc<Workload>> {
        self.workloads.iter()
    }

    /// All services, by `namespace/hostname`.
    pub fn services(&self) -> impl ExactSizeIterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    /// All policies, by `namespace/name`.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &Arc<Policy>> {
        self.policies.iter()
    }

    /// An endpoint of `svc` for a connection to `service_port` from an unknown client: as
    /// [`State::pick_endpoint_for`] without a source, so a service whose load balancing is
    /// STRICT has none.
    pub fn pick_endpoint(&self, svc: &Service, service_port: u16) -> Option<Endpoint> {
        self.endpoints.pick(svc, service_port, None)
    }

    /// An endpoint of `svc` for a connection from `src` to `service_port`: healthy (unless the
    /// service allows otherwise), on this proxy's network, with the service's locality
    /// preferences applied against `src`, weighted round robin by capacity. `None` when the
    /// service does not declare the port or no endpoint qualifies (see [`service`]).
    pub fn pick_endpoint_for(&self, src: Option<&Workload>, svc: &Service, service_port: u16) -> Option<Endpoint> {
        self.endpoints.pick(svc, service_port, src)
    }

    /// Every usable endpoint of `svc` for `service_port` (healthy unless the service allows
    /// otherwise, on this proxy's network, the port declared and resolved), in uid order,
    /// whatever the client's locality (for proxies that balance by their own policy, like the
    /// waypoint).
    pub fn endpoints(&self, svc: &Service, service_port: u16) -> Vec<Endpoint> {
        self.endpoints.all(svc, service_port)
    }

    /// The endpoints of `svc` for `service_port` that a client `src` may be sent to (for proxies
    /// that balance by their own policy, like the waypoint): usable as for
    /// [`State::endpoints`], with a capacity above 0, and, when the service's load balancing is
    /// STRICT, sharing every preferred scope with `src` (none when `src` is unknown). In uid
    /// order; FAILOVER's preference is for the caller to apply with [`LoadBalancing::rank`].
    pub fn endpoints_for(&self, src: Option<&Workload>, svc: &Service, service_port: u16) -> Vec<Endpoint> {
        self.endpoints.admitted(svc, service_port, src)
    }

    /// Number of healthy endpoints of `svc`.
    pub fn endpoint_count(&self, svc: &Service) -> usize {
        self.endpoints.count(svc)
    }

    /// The selector-scoped policies `w` names, with their names. A name that resolves to a
    /// policy of another scope is skipped: that policy applies by its scope or not at all. `None`
    /// when a name is in neither this snapshot's policies nor its stand-ins (`w` comes from
    /// another snapshot).
    fn selected<'a>(&'a self, w: &'a Workload) -> impl Iterator<Item = (&'a str, Option<&'a Arc<Policy>>)> + 'a {
        w.authorization_policies.iter().filter_map(move |key| match self.policy_by_key.get(key.as_str()) {
            Some(p) if placement(p, &self.config.root_namespace) == Placement::Selector => {
                Some((key.as_str(), Some(p)))
            }
            Some(_) => None,
            None => Some((key.as_str(), self.missing_policies.get(key.as_str()))),
        })
    }

    /// Fail-closed stand-ins for names `w` lists that this snapshot has never seen; empty (no
    /// allocation) in the normal case.
    fn strays(&self, w: &Workload) -> Vec<Arc<Policy>> {
        if self.selected(w).all(|(_, p)| p.is_some()) {
            return Vec::new();
        }
        self.selected(w).filter(|(_, p)| p.is_none()).map(|(key, _)| Arc::new(missing_policy(key))).collect()
    }

    /// The policies that apply to `w`, in evaluation order: global, namespace, selected.
    pub fn policies_for(&self, w: &Workload) -> Vec<Arc<Policy>> {
        let by_ns = self.namespace_policies.get(w.namespace()).into_iter().flatten();
        let sel = self.selected(w).filter_map(|(_, p)| p);
        self.global_policies.iter().chain(by_ns).chain(sel).cloned().chain(self.strays(w)).collect()
    }

    /// Decides whether a connection may proceed; see [`authorize`].
    pub fn authorize(&self, c: &ConnInfo<'_>) -> Verdict {
        let w = c.dst_workload;
        let by_ns = self.namespace_policies.get(w.namespace()).into_iter().flatten();
        let sel = self.selected(w).filter_map(|(_, p)| p);
        let strays = self.strays(w);
        authorize::decide(self.global_policies.iter().chain(by_ns).chain(sel).chain(strays.iter()), c)
    }
}

/// Serializes shared objects by value (serde's `rc` feature is not enabled workspace-wide).
fn ser_arcs<T: Serialize, S: serde::Serializer>(v: &&[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| &**x))
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Dump<'a> {
            version: u64,
            config: &'a StateConfig,
            #[serde(serialize_with = "ser_arcs")]
            workloads: &'a [Arc<Workload>],
            #[serde(serialize_with = "ser_arcs")]
            services: &'a [Arc<Service>],
            #[serde(serialize_with = "ser_arcs")]
            policies: &'a [Arc<Policy>],
            warnings: &'a [String],
        }
        Dump {
            version: self.version,
            config: &self.config,
            workloads: &self.workloads,
            services: &self.services,
            policies: &self.policies,
            warnings: &self.warnings,
        }
        .serialize(s)
    }
}
