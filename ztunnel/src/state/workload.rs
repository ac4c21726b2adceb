//! Workloads (pods and other endpoints) as the node proxy sees them, and the gateway addresses
//! (waypoints, network gateways) they may point at.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hbone::Identity;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// Service port -> target port, for one service.
///
/// A `BTreeMap` rather than a hash map: these are a handful of entries, iteration order is stable
/// in dumps, and lookups stay allocation-free.
pub type PortMap = BTreeMap<u16, u16>;

/// How traffic reaches a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TunnelProtocol {
    /// Plain TCP: the workload is not in the mesh (or not captured).
    None,
    /// HBONE to the workload's node proxy on port 15008.
    Hbone,
}

/// How a workload's addresses are to be read (Istio's `NetworkMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NetworkMode {
    /// The addresses are the workload's own: an address identifies it on its network.
    #[default]
    Standard,
    /// A host-network pod: its address is its node's, shared with the node itself and every other
    /// host-network pod there, so it identifies nothing and is never used to look the workload up
    /// (istio/istio#52191, istio/ztunnel#1216). Such a pod is never captured, so never HBONE; it
    /// is reached as a Service's endpoint (node address, target port, plain TCP) or by uid.
    HostNetwork,
}

/// What kind of controller owns a workload (for telemetry labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadType {
    /// A Deployment (or anything not listed below).
    Deployment,
    /// A CronJob.
    Cronjob,
    /// A bare pod.
    Pod,
    /// A Job.
    Job,
}

/// An IP address qualified by the network it is reachable on (`""` is the local network).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct NetworkAddress {
    /// Network name; empty for the default network.
    pub network: String,
    /// The address.
    pub address: IpAddr,
}

/// Where a gateway (waypoint or network gateway) is found.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GatewayDestination {
    /// A service, resolved through the service index: `namespace/hostname`.
    Hostname {
        /// Namespace of the service.
        namespace: String,
        /// Hostname of the service.
        hostname: String,
    },
    /// A fixed address.
    Address(NetworkAddress),
}

/// A waypoint or network gateway, and the port its HBONE listener uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// Where the gateway is.
    pub destination: GatewayDestination,
    /// HBONE (mTLS) port of the gateway; 15008 unless configured.
    pub hbone_mtls_port: u16,
}

/// Where a workload runs (its node's topology labels); an empty part is unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Locality {
    /// Region (`topology.kubernetes.io/region`).
    pub region: String,
    /// Zone within the region (`topology.kubernetes.io/zone`).
    pub zone: String,
    /// Subzone within the zone (`topology.istio.io/subzone`).
    pub subzone: String,
}

/// Capacity of a workload whose control plane sets none.
pub const DEFAULT_CAPACITY: u32 = 1;

/// Default HBONE port of a gateway when its address leaves it unset.
pub const DEFAULT_HBONE_PORT: u16 = 15008;

/// One workload: an addressable endpoint with a mesh identity.
///
/// The namespace, service account and trust domain live in `identity` (always
/// `spiffe://<td>/ns/<namespace>/sa/<sa>`), so the identity used for TLS and policy is computed
/// once at conversion and never disagrees with the workload's own fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Unique ID (in Kubernetes `cluster/group/kind/namespace/name`).
    pub uid: String,
    /// Name (the pod name).
    pub name: String,
    /// The workload's SPIFFE identity; holds namespace, service account and trust domain.
    pub identity: Identity,
    /// Addresses of the workload; may be empty for workloads reached only through a gateway.
    pub addresses: Vec<IpAddr>,
    /// Node the workload runs on.
    pub node: String,
    /// Network the addresses belong to; empty for the default network.
    pub network: String,
    /// Whether the addresses are the workload's own or its node's (host network).
    pub network_mode: NetworkMode,
    /// How traffic reaches the workload.
    pub protocol: TunnelProtocol,
    /// Canonical service name (`service.istio.io/canonical-name`), for telemetry.
    pub canonical_name: String,
    /// Canonical revision, for telemetry.
    pub canonical_revision: String,
    /// Name of the owning controller (e.g. the Deployment), for telemetry.
    pub workload_name: String,
    /// Kind of the owning controller.
    pub workload_type: WorkloadType,
    /// Cluster the workload lives in.
    pub cluster_id: String,
    /// Waypoint that traffic to this workload must go through, if any.
    pub waypoint: Option<GatewayAddress>,
    /// Services this workload backs, keyed `namespace/hostname`, with its port mapping for each.
    pub services: BTreeMap<String, PortMap>,
    /// Policies selecting this workload by workload selector, as `namespace/name`.
    pub authorization_policies: Vec<String>,
    /// Whether the workload is ready to receive traffic.
    pub healthy: bool,
    /// Where the workload runs, for locality-aware endpoint choice.
    pub locality: Locality,
    /// Relative share of its services' connections ([`DEFAULT_CAPACITY`] unless set); 0 takes
    /// none.
    pub capacity: u32,
}

impl Workload {
    /// The workload's SPIFFE identity (cheap to clone).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The name Istio's metrics give the workload: its controller's (Deployment, ...) when
    /// known, else its own.
    pub fn metric_name(&self) -> &str {
        if self.workload_name.is_empty() { &self.name } else { &self.workload_name }
    }

    /// Whether the workload is a host-network pod, whose addresses are its node's (see
    /// [`NetworkMode::HostNetwork`]).
    pub fn host_network(&self) -> bool {
        self.network_mode == NetworkMode::HostNetwork
    }

    /// Kubernetes namespace of the workload.
    pub fn namespace(&self) -> &str {
        self.identity.namespace()
    }

    /// Service account the workload runs as.
    pub fn service_account(&self) -> &str {
        self.identity.service_account()
    }

    /// Trust domain of the workload's identity.
    pub fn trust_domain(&self) -> &str {
        self.identity.trust_domain()
    }
}

impl Serialize for Workload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Workload", 22)?;
        st.serialize_field("uid", &self.uid)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("namespace", self.namespace())?;
        st.serialize_field("serviceAccount", self.service_account())?;
        st.serialize_field("trustDomain", self.trust_domain())?;
        st.serialize_field("identity", self.identity.as_str())?;
        st.serialize_field("addresses", &self.addresses)?;
        st.serialize_field("node", &self.node)?;
        st.serialize_field("network", &self.network)?;
        st.serialize_field("networkMode", &self.network_mode)?;
        st.serialize_field("protocol", &self.protocol)?;
        st.serialize_field("canonicalName", &self.canonical_name)?;
        st.serialize_field("canonicalRevision", &self.canonical_revision)?;
        st.serialize_field("workloadName", &self.workload_name)?;
        st.serialize_field("workloadType", &self.workload_type)?;
        st.serialize_field("clusterId", &self.cluster_id)?;
        st.serialize_field("waypoint", &self.waypoint)?;
        st.serialize_field("services", &self.services)?;
        st.serialize_field("authorizationPolicies", &self.authorization_policies)?;
        st.serialize_field("healthy", &self.healthy)?;
        st.serialize_field("locality", &self.locality)?;
        st.serialize_field("capacity", &self.capacity)?;
        st.end()
    }
}
