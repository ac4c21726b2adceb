//! Incremental translation: applies one change to the model, recomputes only the resources
//! that depend on it, and returns what changed per type URL, for the xDS server to push.
//!
//! Dependencies: a pod → its workload; a service → itself and the workloads of its namespace
//! (their `services` maps); an EndpointSlice → the workloads of its namespace; a node → the
//! workloads of the pods on it (their locality); a namespace →
//! its workloads and services; an AuthorizationPolicy → itself and the workloads it may select
//! (its namespace, or all for the root namespace); a PeerAuthentication → the converted policies
//! and workloads of its namespace (all for the root namespace) and the static STRICT policy;
//! a Gateway → every workload and service (waypoint labels may point across namespaces), every
//! route and every waypoint policy. For waypoints: a route → itself (a GRPCRoute also → the
//! HTTPRoutes of its namespace, whose Service ports it may take); a Service → its backend
//! policy and its namespace's routes (parents and backends resolve against Services of the
//! route's namespace only); a namespace → its routes (whether their parents use a waypoint);
//! an AuthorizationPolicy → its L7 policy.
//! Recomputed resources equal to what was sent are left out of the delta.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_types::Any;
use proto::istio::security::Authorization;
use proto::istio::workload::{Address, address};
use proto::mesh::waypoint::v1::{BackendPolicy, L7Policy, Route};
use proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, WAYPOINT_BACKEND_TYPE_URL, WAYPOINT_POLICY_TYPE_URL,
    WAYPOINT_ROUTE_TYPE_URL,
};

use crate::error::Warning;
use crate::model::{Kind, Model, NsName, Object, ObjectKey, in_namespace};
use crate::translate::route::ParentStatus;
use crate::translate::{MeshConfig, authz, backend_policy, l7_policy, peer_authn, route, service, workload};

/// One change to the model.
// A change lives only until it is moved into the model: boxing would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Change {
    /// Create or replace an object.
    Upsert(Object),
    /// Delete an object.
    Delete(ObjectKey),
}

/// What changed for one type URL.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceDelta {
    /// Resources created or changed: name and encoded resource.
    pub upserts: Vec<(String, Any)>,
    /// Names of resources removed.
    pub removals: Vec<String>,
}

impl ResourceDelta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// What changed, per type URL ([`ADDRESS_TYPE_URL`], [`AUTHORIZATION_TYPE_URL`] and the three
/// waypoint types); types with no change are absent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// Changes by type URL.
    pub types: BTreeMap<&'static str, ResourceDelta>,
}

impl Delta {
    /// The changes of one type (empty if none).
    pub fn of(&self, type_url: &str) -> ResourceDelta {
        self.types.get(type_url).cloned().unwrap_or_default()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.types.values().all(ResourceDelta::is_empty)
    }
}

/// The model and the resources last computed from it.
#[derive(Debug, Default)]
pub struct Translator {
    cfg: MeshConfig,
    model: Model,
    addresses: BTreeMap<String, Address>,
    authorizations: BTreeMap<String, Authorization>,
    routes: BTreeMap<String, Route>,
    l7_policies: BTreeMap<String, L7Policy>,
    backend_policies: BTreeMap<String, BackendPolicy>,
    route_status: BTreeMap<ObjectKey, Vec<ParentStatus>>,
    warnings: BTreeMap<ObjectKey, Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    Pod(NsName),
    Service(NsName),
    Policy(NsName),
    PeerAuthns(String),
    StaticStrict,
    /// `grpc`, namespace/name.
    Route(bool, NsName),
    L7Policy(NsName),
    Backend(NsName),
}

fn encode<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.to_owned(), value: m.encode_to_vec() }
}

impl Translator {
    /// An empty translator.
    pub fn new(cfg: MeshConfig) -> Translator {
        Translator { cfg, ..Default::default() }
    }

    /// The mesh settings.
    pub fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    /// The current model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Every current `istio.workload.Address`, by resource name.
    pub fn addresses(&self) -> &BTreeMap<String, Address> {
        &self.addresses
    }

    /// Every current `istio.security.Authorization`, by resource name.
    pub fn authorizations(&self) -> &BTreeMap<String, Authorization> {
        &self.authorizations
    }

    /// Every current `mesh.waypoint.v1.Route`, by resource name.
    pub fn routes(&self) -> &BTreeMap<String, Route> {
        &self.routes
    }

    /// Every current `mesh.waypoint.v1.L7Policy`, by resource name.
    pub fn l7_policies(&self) -> &BTreeMap<String, L7Policy> {
        &self.l7_policies
    }

    /// Every current `mesh.waypoint.v1.BackendPolicy`, by service hostname.
    pub fn backend_policies(&self) -> &BTreeMap<String, BackendPolicy> {
        &self.backend_policies
    }

    /// Gateway API status of every route (`status.parents`), by route.
    pub fn route_status(&self) -> &BTreeMap<ObjectKey, Vec<ParentStatus>> {
        &self.route_status
    }

    /// Every current resource of a type URL, encoded, by name (for a new subscriber).
    pub fn snapshot(&self, type_url: &str) -> Vec<(String, Any)> {
        fn all<M: Message>(type_url: &str, m: &BTreeMap<String, M>) -> Vec<(String, Any)> {
            m.iter().map(|(n, r)| (n.clone(), encode(type_url, r))).collect()
        }
        match type_url {
            WAYPOINT_ROUTE_TYPE_URL => all(type_url, &self.routes),
            WAYPOINT_POLICY_TYPE_URL => all(type_url, &self.l7_policies),
            WAYPOINT_BACKEND_TYPE_URL => all(type_url, &self.backend_policies),
            ADDRESS_TYPE_URL => self.addresses.iter().map(|(n, a)| (n.clone(), encode(ADDRESS_TYPE_URL, a))).collect(),
            AUTHORIZATION_TYPE_URL => {
                self.authorizations.iter().map(|(n, a)| (n.clone(), encode(AUTHORIZATION_TYPE_URL, a))).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Current translation warnings (L7 rules left out, dangling waypoints, ...).
    pub fn warnings(&self) -> Vec<Warning> {
        self.warnings
            .iter()
            .flat_map(|(k, ws)| ws.iter().map(|m| Warning { object: k.clone(), message: m.clone() }))
            .collect()
    }

    /// Applies one change.
    pub fn apply(&mut self, change: Change) -> Delta {
        self.apply_all([change])
    }

    /// Applies several changes, then recomputes what any of them affects, once.
    pub fn apply_all(&mut self, changes: impl IntoIterator<Item = Change>) -> Delta {
        let mut dirty = BTreeSet::new();
        for change in changes {
            let (key, changed) = match change {
                Change::Upsert(o) => (o.key(), self.model.upsert(o)),
                Change::Delete(k) => {
                    let changed = self.model.remove(&k);
                    (k, changed)
                }
            };
            // Dependents are looked up in the model after the change; what the object used to
            // affect is covered too: its dependents are found by namespace, not by content.
            if changed {
                dirty.extend(self.dependents(&key));
            }
        }
        self.recompute(dirty)
    }

    /// Makes the model exactly `objects`: upserts them and deletes every object not among them.
    pub fn replace_all(&mut self, objects: Vec<Object>) -> Delta {
        let keep: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
        let gone: Vec<Change> =
            self.model.keys().into_iter().filter(|k| !keep.contains(k)).map(Change::Delete).collect();
        self.apply_all(gone.into_iter().chain(objects.into_iter().map(Change::Upsert)))
    }

    fn pods_in(&self, ns: Option<&str>, out: &mut BTreeSet<Dirty>) {
        let pods: Box<dyn Iterator<Item = &NsName>> = match ns {
            Some(ns) => Box::new(in_namespace(&self.model.pods, ns).map(|(k, _)| k)),
            None => Box::new(self.model.pods.keys()),
        };
        out.extend(pods.cloned().map(Dirty::Pod));
        // Workloads already sent whose pods are gone are handled by their own Delete.
    }

    /// The routes in other namespaces with a backend (or mirror) in `ns`: the ones a
    /// ReferenceGrant in `ns` may let through. Found from the routes, not from the grants, so
    /// a grant that was just deleted still finds the routes it used to let through.
    fn routes_into(&self, ns: &str, out: &mut BTreeSet<Dirty>) {
        for (grpc, map) in [(false, &self.model.http_routes), (true, &self.model.grpc_routes)] {
            for (key, r) in map {
                if key.0 != ns && r.spec.rules.iter().any(|rule| rule.refers_to_namespace(ns)) {
                    out.insert(Dirty::Route(grpc, key.clone()));
                }
            }
        }
    }

    /// The routes of `ns` (all with `None`). Routes resolve parents in their own namespace,
    /// and backends elsewhere only through a ReferenceGrant there ([`Self::routes_into`]), so
    /// a Service or Namespace change touches its namespace's routes and, when the namespace
    /// grants references, the routes pointing into it.
    fn routes_in(&self, ns: Option<&str>, out: &mut BTreeSet<Dirty>) {
        for (grpc, map) in [(false, &self.model.http_routes), (true, &self.model.grpc_routes)] {
            let keys: Box<dyn Iterator<Item = &NsName>> = match ns {
                Some(ns) => Box::new(in_namespace(map, ns).map(|(k, _)| k)),
                None => Box::new(map.keys()),
            };
            out.extend(keys.cloned().map(|k| Dirty::Route(grpc, k)));
        }
        // Routes already sent whose objects are gone are handled by their own Delete.
    }

    fn dependents(&self, key: &ObjectKey) -> BTreeSet<Dirty> {
        let mut d = BTreeSet::new();
        let nn = (key.namespace.clone(), key.name.clone());
        let root = self.cfg.root_namespace.as_str();
        match key.kind {
            Kind::Pod => {
                d.insert(Dirty::Pod(nn));
            }
            Kind::Service => {
                d.insert(Dirty::Service(nn.clone()));
                d.insert(Dirty::Backend(nn));
                self.pods_in(Some(&key.namespace), &mut d);
                self.routes_in(Some(&key.namespace), &mut d);
                // Without a grant here, references from elsewhere are refused whatever the
                // Service: no need to look at other namespaces' routes.
                if in_namespace(&self.model.reference_grants, &key.namespace).next().is_some() {
                    self.routes_into(&key.namespace, &mut d);
                }
            }
            Kind::EndpointSlice => self.pods_in(Some(&key.namespace), &mut d),
            // Found by the pods' `nodeName`, so a deleted node still finds them.
            Kind::Node => d.extend(
                self.model
                    .pods
                    .iter()
                    .filter(|(_, p)| p.spec.node_name == key.name)
                    .map(|(k, _)| Dirty::Pod(k.clone())),
            ),
            Kind::Namespace => {
                self.pods_in(Some(&key.name), &mut d);
                self.routes_in(Some(&key.name), &mut d);
                d.extend(in_namespace(&self.model.services, &key.name).map(|(k, _)| Dirty::Service(k.clone())));
            }
            Kind::AuthorizationPolicy => {
                d.insert(Dirty::Policy(nn.clone()));
                d.insert(Dirty::L7Policy(nn));
                self.pods_in((key.namespace != root).then_some(key.namespace.as_str()), &mut d);
            }
            Kind::PeerAuthentication => {
                d.insert(Dirty::StaticStrict);
                if key.namespace == root {
                    let all: BTreeSet<String> =
                        self.model.peer_authentications.keys().map(|(ns, _)| ns.clone()).collect();
                    d.extend(all.into_iter().map(Dirty::PeerAuthns));
                    self.pods_in(None, &mut d);
                } else {
                    d.insert(Dirty::PeerAuthns(key.namespace.clone()));
                    self.pods_in(Some(&key.namespace), &mut d);
                }
            }
            Kind::Gateway => {
                self.pods_in(None, &mut d);
                d.extend(self.model.services.keys().cloned().map(Dirty::Service));
                self.routes_in(None, &mut d);
                d.extend(self.model.authorization_policies.keys().cloned().map(Dirty::L7Policy));
            }
            Kind::HttpRoute => {
                d.insert(Dirty::Route(false, nn));
            }
            Kind::GrpcRoute => {
                d.insert(Dirty::Route(true, nn));
                // A GRPCRoute takes the Service ports it binds from the HTTPRoutes of its
                // namespace (route types conflict only on Services of the routes' namespace).
                d.extend(
                    in_namespace(&self.model.http_routes, &key.namespace).map(|(k, _)| Dirty::Route(false, k.clone())),
                );
            }
            Kind::ReferenceGrant => self.routes_into(&key.namespace, &mut d),
        }
        d
    }

    fn set_warnings(&mut self, key: ObjectKey, ws: Vec<String>) {
        for w in &ws {
            tracing::warn!(object = %key, "{w}");
        }
        if ws.is_empty() {
            self.warnings.remove(&key);
        } else {
            self.warnings.insert(key, ws);
        }
    }

    fn put_address(&mut self, d: &mut ResourceDelta, name: String, new: Option<Address>) {
        match new {
            Some(a) if self.addresses.get(&name) != Some(&a) => {
                d.upserts.push((name.clone(), encode(ADDRESS_TYPE_URL, &a)));
                self.addresses.insert(name, a);
            }
            None if self.addresses.remove(&name).is_some() => d.removals.push(name),
            _ => {}
        }
    }

    fn put_authz(&mut self, d: &mut ResourceDelta, name: String, new: Option<Authorization>) {
        match new {
            Some(a) if self.authorizations.get(&name) != Some(&a) => {
                d.upserts.push((name.clone(), encode(AUTHORIZATION_TYPE_URL, &a)));
                self.authorizations.insert(name, a);
            }
            None if self.authorizations.remove(&name).is_some() => d.removals.push(name),
            _ => {}
        }
    }

    fn recompute(&mut self, dirty: BTreeSet<Dirty>) -> Delta {
        let mut addr = ResourceDelta::default();
        let mut auth = ResourceDelta::default();
        let mut routes = ResourceDelta::default();
        let mut l7 = ResourceDelta::default();
        let mut backends = ResourceDelta::default();
        let cfg = self.cfg.clone();
        for item in dirty {
            match item {
                Dirty::Pod((ns, name)) => {
                    let key = ObjectKey::new(Kind::Pod, ns.clone(), name.clone());
                    let out = self
                        .model
                        .pods
                        .get(&(ns.clone(), name.clone()))
                        .and_then(|p| workload::translate(&cfg, &self.model, p));
                    let (w, ws) = match out {
                        Some((w, ws)) => (Some(Address { r#type: Some(address::Type::Workload(w)) }), ws),
                        None => (None, Vec::new()),
                    };
                    self.set_warnings(key, ws);
                    self.put_address(&mut addr, cfg.pod_uid(&ns, &name), w);
                }
                Dirty::Service((ns, name)) => {
                    let key = ObjectKey::new(Kind::Service, ns.clone(), name.clone());
                    let out = self
                        .model
                        .services
                        .get(&(ns.clone(), name.clone()))
                        .map(|s| service::translate(&cfg, &self.model, s));
                    let (s, ws) = match out {
                        Some((s, ws)) => (Some(Address { r#type: Some(address::Type::Service(s)) }), ws),
                        None => (None, Vec::new()),
                    };
                    self.set_warnings(key, ws);
                    self.put_address(&mut addr, service::resource_name(&cfg, &ns, &name), s);
                }
                Dirty::Policy((ns, name)) => {
                    let key = ObjectKey::new(Kind::AuthorizationPolicy, ns.clone(), name.clone());
                    let out = self
                        .model
                        .authorization_policies
                        .get(&(ns.clone(), name.clone()))
                        .map(|p| authz::translate(&cfg, p))
                        .unwrap_or_default();
                    self.set_warnings(key, out.warnings);
                    self.put_authz(&mut auth, format!("{ns}/{name}"), out.authorization);
                }
                Dirty::PeerAuthns(ns) => {
                    let prefix = format!("{ns}/{}", peer_authn::CONVERTED_PREFIX);
                    let mut names: BTreeSet<String> =
                        self.authorizations.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                    let mut new = BTreeMap::new();
                    for (_, pa) in in_namespace(&self.model.peer_authentications, &ns) {
                        if let Some(a) = peer_authn::convert(&cfg, &self.model, pa) {
                            new.insert(format!("{ns}/{}", a.name), a);
                        }
                    }
                    names.extend(new.keys().cloned());
                    for n in names {
                        let a = new.remove(&n);
                        self.put_authz(&mut auth, n, a);
                    }
                }
                Dirty::StaticStrict => {
                    let a = (!self.model.peer_authentications.is_empty()).then(|| peer_authn::static_strict(&cfg));
                    let name = format!("{}/{}", cfg.root_namespace, peer_authn::STATIC_STRICT_NAME);
                    self.put_authz(&mut auth, name, a);
                }
                Dirty::Route(grpc, (ns, name)) => {
                    let kind = if grpc { Kind::GrpcRoute } else { Kind::HttpRoute };
                    let key = ObjectKey::new(kind, ns.clone(), name.clone());
                    let map = if grpc { &self.model.grpc_routes } else { &self.model.http_routes };
                    let out =
                        map.get(&(ns.clone(), name.clone())).map(|r| route::translate(&cfg, &self.model, grpc, r));
                    let (r, ws) = match out {
                        Some(o) => {
                            self.route_status.insert(key.clone(), o.parents);
                            (o.route, o.warnings)
                        }
                        None => {
                            self.route_status.remove(&key);
                            (None, Vec::new())
                        }
                    };
                    // Routes share the object key space with policies only by kind: no clash.
                    self.set_warnings(key, ws);
                    put(
                        &mut self.routes,
                        WAYPOINT_ROUTE_TYPE_URL,
                        &mut routes,
                        route::resource_name(&ns, grpc, &name),
                        r,
                    );
                }
                Dirty::L7Policy((ns, name)) => {
                    let policy = self.model.authorization_policies.get(&(ns.clone(), name.clone()));
                    let out = policy.map(|p| l7_policy::translate(&cfg, &self.model, p)).unwrap_or_default();
                    // A policy is either ztunnel's (its warnings come from `authz`) or the
                    // waypoints' (from here), never both: each side owns the warnings of its own.
                    if policy.is_some_and(l7_policy::is_waypoint_policy) {
                        let key = ObjectKey::new(Kind::AuthorizationPolicy, ns.clone(), name.clone());
                        self.set_warnings(key, out.warnings);
                    }
                    put(&mut self.l7_policies, WAYPOINT_POLICY_TYPE_URL, &mut l7, format!("{ns}/{name}"), out.policy);
                }
                Dirty::Backend((ns, name)) => {
                    let hostname = cfg.hostname(&ns, &name);
                    // Bad annotations were refused when the Service was read.
                    let p = self.model.services.get(&(ns.clone(), name.clone())).and_then(|s| {
                        backend_policy::from_annotations(&hostname, &s.metadata.annotations).ok().flatten()
                    });
                    put(&mut self.backend_policies, WAYPOINT_BACKEND_TYPE_URL, &mut backends, hostname, p);
                }
            }
        }
        let mut delta = Delta::default();
        if !addr.is_empty() {
            delta.types.insert(ADDRESS_TYPE_URL, addr);
        }
        if !auth.is_empty() {
            delta.types.insert(AUTHORIZATION_TYPE_URL, auth);
        }
        for (type_url, d) in
            [(WAYPOINT_ROUTE_TYPE_URL, routes), (WAYPOINT_POLICY_TYPE_URL, l7), (WAYPOINT_BACKEND_TYPE_URL, backends)]
        {
            if !d.is_empty() {
                delta.types.insert(type_url, d);
            }
        }
        delta
    }
}

/// Stores `new` under `name` in `map`, recording the change (if any) in `d`.
fn put<M: Message + PartialEq>(
    map: &mut BTreeMap<String, M>,
    type_url: &str,
    d: &mut ResourceDelta,
    name: String,
    new: Option<M>,
) {
    match new {
        Some(m) if map.get(&name) != Some(&m) => {
            d.upserts.push((name.clone(), encode(type_url, &m)));
            map.insert(name, m);
        }
        None if map.remove(&name).is_some() => d.removals.push(name),
        _ => {}
    }
}
