//! The model: every source's objects, by kind and `namespace/name`, in one place.

use std::collections::BTreeMap;
use std::fmt;

use crate::k8s::core::{EndpointSlice, Namespace, Node, Pod, Service};
use crate::k8s::gateway::{Gateway, ReferenceGrant, Route};
use crate::k8s::security::{AuthorizationPolicy, PeerAuthentication};

/// The kinds the model holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1/Namespace` (cluster-scoped: its key's namespace is empty).
    Namespace,
    /// `v1/Node` (cluster-scoped, like a namespace).
    Node,
    /// `v1/Pod`.
    Pod,
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1` `EndpointSlice`.
    EndpointSlice,
    /// `security.istio.io` `AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `security.istio.io` `PeerAuthentication`.
    PeerAuthentication,
    /// `gateway.networking.k8s.io` `Gateway`.
    Gateway,
    /// `gateway.networking.k8s.io` `HTTPRoute`.
    HttpRoute,
    /// `gateway.networking.k8s.io` `GRPCRoute`.
    GrpcRoute,
    /// `gateway.networking.k8s.io` `ReferenceGrant`.
    ReferenceGrant,
}

impl Kind {
    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
        }
    }
}

/// Which object: kind, namespace (empty for namespaces and nodes) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey { kind, namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// One object of any kind the model holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A node.
    Node(Node),
    /// A pod.
    Pod(Pod),
    /// A service.
    Service(Service),
    /// An endpoint slice.
    EndpointSlice(EndpointSlice),
    /// An authorization policy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A peer authentication.
    PeerAuthentication(PeerAuthentication),
    /// A Gateway API gateway.
    Gateway(Gateway),
    /// An HTTP route.
    HttpRoute(Route),
    /// A gRPC route.
    GrpcRoute(Route),
    /// A reference grant.
    ReferenceGrant(ReferenceGrant),
}

impl Object {
    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let (kind, m) = match self {
            Object::Namespace(o) => (Kind::Namespace, &o.metadata),
            Object::Node(o) => (Kind::Node, &o.metadata),
            Object::Pod(o) => (Kind::Pod, &o.metadata),
            Object::Service(o) => (Kind::Service, &o.metadata),
            Object::EndpointSlice(o) => (Kind::EndpointSlice, &o.metadata),
            Object::AuthorizationPolicy(o) => (Kind::AuthorizationPolicy, &o.metadata),
            Object::PeerAuthentication(o) => (Kind::PeerAuthentication, &o.metadata),
            Object::Gateway(o) => (Kind::Gateway, &o.metadata),
            Object::HttpRoute(o) => (Kind::HttpRoute, &o.metadata),
            Object::GrpcRoute(o) => (Kind::GrpcRoute, &o.metadata),
            Object::ReferenceGrant(o) => (Kind::ReferenceGrant, &o.metadata),
        };
        ObjectKey::new(kind, m.namespace.clone(), m.name.clone())
    }
}

/// `(namespace, name)`: map keys, so one namespace's objects are one range.
pub type NsName = (String, String);

/// Every object, by kind.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Pods.
    pub pods: BTreeMap<NsName, Pod>,
    /// Services.
    pub services: BTreeMap<NsName, Service>,
    /// Endpoint slices.
    pub endpoint_slices: BTreeMap<NsName, EndpointSlice>,
    /// Authorization policies.
    pub authorization_policies: BTreeMap<NsName, AuthorizationPolicy>,
    /// Peer authentications.
    pub peer_authentications: BTreeMap<NsName, PeerAuthentication>,
    /// Gateways.
    pub gateways: BTreeMap<NsName, Gateway>,
    /// HTTP routes.
    pub http_routes: BTreeMap<NsName, Route>,
    /// gRPC routes.
    pub grpc_routes: BTreeMap<NsName, Route>,
    /// Reference grants.
    pub reference_grants: BTreeMap<NsName, ReferenceGrant>,
}

/// The entries of one namespace in a map keyed by [`NsName`].
pub fn in_namespace<'a, T>(map: &'a BTreeMap<NsName, T>, ns: &str) -> impl Iterator<Item = (&'a NsName, &'a T)> + 'a {
    let start = (ns.to_owned(), String::new());
    let ns = ns.to_owned();
    map.range(start..).take_while(move |((n, _), _)| *n == ns)
}

impl Model {
    /// Inserts or replaces an object; returns whether it changed.
    pub fn upsert(&mut self, object: Object) -> bool {
        let k = object.key();
        let nn = (k.namespace, k.name);
        fn put<T: PartialEq>(m: &mut BTreeMap<NsName, T>, k: NsName, v: T) -> bool {
            if m.get(&k) == Some(&v) {
                return false;
            }
            m.insert(k, v);
            true
        }
        match object {
            Object::Namespace(o) => {
                if self.namespaces.get(&nn.1) == Some(&o) {
                    return false;
                }
                self.namespaces.insert(nn.1, o);
                true
            }
            Object::Node(o) => {
                if self.nodes.get(&nn.1) == Some(&o) {
                    return false;
                }
                self.nodes.insert(nn.1, o);
                true
            }
            Object::Pod(o) => put(&mut self.pods, nn, o),
            Object::Service(o) => put(&mut self.services, nn, o),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, nn, o),
            Object::AuthorizationPolicy(o) => put(&mut self.authorization_policies, nn, o),
            Object::PeerAuthentication(o) => put(&mut self.peer_authentications, nn, o),
            Object::Gateway(o) => put(&mut self.gateways, nn, o),
            Object::HttpRoute(o) => put(&mut self.http_routes, nn, o),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, nn, o),
            Object::ReferenceGrant(o) => put(&mut self.reference_grants, nn, o),
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let nn = (key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::Node => self.nodes.remove(&key.name).is_some(),
            Kind::Pod => self.pods.remove(&nn).is_some(),
            Kind::Service => self.services.remove(&nn).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(&nn).is_some(),
            Kind::AuthorizationPolicy => self.authorization_policies.remove(&nn).is_some(),
            Kind::PeerAuthentication => self.peer_authentications.remove(&nn).is_some(),
            Kind::Gateway => self.gateways.remove(&nn).is_some(),
            Kind::HttpRoute => self.http_routes.remove(&nn).is_some(),
            Kind::GrpcRoute => self.grpc_routes.remove(&nn).is_some(),
            Kind::ReferenceGrant => self.reference_grants.remove(&nn).is_some(),
        }
    }

    /// Every object's key.
    pub fn keys(&self) -> Vec<ObjectKey> {
        let mut out: Vec<ObjectKey> =
            self.namespaces.keys().map(|n| ObjectKey::new(Kind::Namespace, "", n.clone())).collect();
        out.extend(self.nodes.keys().map(|n| ObjectKey::new(Kind::Node, "", n.clone())));
        fn add<T>(out: &mut Vec<ObjectKey>, kind: Kind, m: &BTreeMap<NsName, T>) {
            out.extend(m.keys().map(|(ns, n)| ObjectKey::new(kind, ns.clone(), n.clone())));
        }
        add(&mut out, Kind::Pod, &self.pods);
        add(&mut out, Kind::Service, &self.services);
        add(&mut out, Kind::EndpointSlice, &self.endpoint_slices);
        add(&mut out, Kind::AuthorizationPolicy, &self.authorization_policies);
        add(&mut out, Kind::PeerAuthentication, &self.peer_authentications);
        add(&mut out, Kind::Gateway, &self.gateways);
        add(&mut out, Kind::HttpRoute, &self.http_routes);
        add(&mut out, Kind::GrpcRoute, &self.grpc_routes);
        add(&mut out, Kind::ReferenceGrant, &self.reference_grants);
        out
    }

    /// Whether a ReferenceGrant in `namespace` lets a `from_kind` (`HTTPRoute`, `GRPCRoute`)
    /// in `from_namespace` send traffic to the Service `namespace/name`.
    pub fn service_reference_permitted(
        &self,
        from_kind: &str,
        from_namespace: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        in_namespace(&self.reference_grants, namespace).any(|(_, g)| g.permits_service(from_kind, from_namespace, name))
    }
}
