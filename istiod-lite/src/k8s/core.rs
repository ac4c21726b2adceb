//! Core Kubernetes kinds: `Namespace`, `Node`, `Pod`, `Service`, `EndpointSlice` (fields we use only).

use serde::Deserialize;

use super::ObjectMeta;

/// `v1/Namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    /// Metadata; the labels enroll the namespace and pick its waypoint.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// `v1/Node` (cluster-scoped): its topology labels give the locality of the pods on it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Node {
    /// Metadata; labels `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` and
    /// `topology.istio.io/subzone` place the node.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// `v1/Pod`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Pod {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: PodSpec,
    /// Status.
    #[serde(default)]
    pub status: PodStatus,
}

/// `Pod.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The node the pod runs on (set by hand in file mode: there is no scheduler).
    #[serde(default)]
    pub node_name: String,
    /// Service account; Kubernetes' default is `default`.
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// A pod on the host network shares its node's IP: it is a workload (a Service may
    /// select it) sent with `network_mode: HOST_NETWORK`, never captured, so never HBONE.
    #[serde(default)]
    pub host_network: bool,
    /// Containers, for their named ports.
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// `Pod.spec.containers[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Declared ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// `Pod.spec.containers[].ports[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Name that a Service `targetPort` may refer to.
    #[serde(default)]
    pub name: Option<String>,
    /// The port number.
    pub container_port: u16,
}

/// `Pod.status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Primary IP.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// All IPs (dual stack).
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    /// Conditions; `Ready` (with no `deletionTimestamp`) decides the workload's health.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// `Pod.status.podIPs[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// `Pod.status.conditions[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
}

/// `v1/Service`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Service {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// `Service.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// The primary VIP, or `None` for a headless service.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// All VIPs (dual stack), the primary first.
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Pods selected as endpoints; absent means endpoints come from EndpointSlices.
    #[serde(default)]
    pub selector: Option<super::Labels>,
    /// `Cluster` (default) or `Local`: in-cluster traffic stays on the client's node.
    #[serde(default)]
    pub internal_traffic_policy: Option<String>,
    /// `PreferClose` (an alias of `PreferSameZone`), `PreferSameZone`, `PreferSameNode`:
    /// prefer nearby endpoints, spilling over to farther ones.
    #[serde(default)]
    pub traffic_distribution: Option<String>,
    /// Endpoints are used whether ready or not.
    #[serde(default)]
    pub publish_not_ready_addresses: bool,
}

/// `Service.spec.ports[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// The service port.
    pub port: u16,
    /// The pod port: a number or a container port name; absent means `port` (as the API
    /// server defaults it).
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    /// `TCP` (default), `UDP`, `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The application protocol (`http`, `http2`, `grpc`, `kubernetes.io/h2c`, ...).
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// A Kubernetes `IntOrString`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(u16),
    /// A name.
    String(String),
}

/// `discovery.k8s.io/v1` `EndpointSlice`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Metadata; label `kubernetes.io/service-name` names the Service.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: String,
    /// Endpoints (`null` when there are none).
    #[serde(default, deserialize_with = "super::null_as_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Ports of every endpoint (`null` when there are none).
    #[serde(default, deserialize_with = "super::null_as_empty")]
    pub ports: Vec<EndpointPort>,
}

/// `EndpointSlice.endpoints[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The object behind the endpoint (a Pod, usually).
    #[serde(default)]
    pub target_ref: Option<ObjectReference>,
}

/// `EndpointSlice.endpoints[].targetRef`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ObjectReference {
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
}

/// `EndpointSlice.ports[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EndpointPort {
    /// The Service port name this port serves.
    #[serde(default)]
    pub name: Option<String>,
    /// The endpoint's port.
    #[serde(default)]
    pub port: Option<u16>,
}
