//! Gateway API kinds: `Gateway` (waypoints are those of class `istio-waypoint`), `HTTPRoute`
//! and `GRPCRoute` (kept for the waypoint translation that comes later).

use serde::Deserialize;

use super::ObjectMeta;

/// `gateway.networking.k8s.io/v1` `Gateway`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Gateway {
    /// Metadata; label `istio.io/waypoint-for` says which traffic a waypoint takes.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: GatewaySpec,
    /// Status; the first IP address, if any, is the waypoint's address.
    #[serde(default)]
    pub status: GatewayStatus,
}

/// `Gateway.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// `istio-waypoint` for a waypoint.
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// `Gateway.spec.listeners[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Listener {
    /// Name.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol (`HBONE` for a waypoint).
    pub protocol: String,
}

/// `Gateway.status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct GatewayStatus {
    /// Addresses assigned to the Gateway.
    #[serde(default)]
    pub addresses: Vec<GatewayStatusAddress>,
}

/// `Gateway.status.addresses[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GatewayStatusAddress {
    /// `IPAddress` (default) or `Hostname`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The value.
    pub value: String,
}

/// `HTTPRoute` or `GRPCRoute`: parent references are read; the rest of the spec is kept as
/// written until route translation exists.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Route {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: RouteSpec,
}

/// `HTTPRoute.spec` / `GRPCRoute.spec`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Where the route attaches (a `Service` or a `Gateway`).
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, unparsed for now.
    #[serde(default)]
    pub rules: Vec<serde_yaml::Value>,
}

/// `spec.parentRefs[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group (`""` for core `Service`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Listener name.
    #[serde(default)]
    pub section_name: Option<String>,
}
