//! Pure translation of the [`Model`](crate::model::Model) into Istio's xDS resources:
//! [`workload`] and [`service`] give `istio.workload.Address`, [`authz`] and [`peer_authn`] give
//! `istio.security.Authorization`, [`waypoint`] resolves `istio.io/use-waypoint`; for
//! waypoints, [`route`] gives `mesh.waypoint.v1.Route` (with Gateway API route status),
//! [`l7_policy`] `mesh.waypoint.v1.L7Policy`, [`backend_policy`] `mesh.waypoint.v1.BackendPolicy`.

pub mod authz;
pub mod backend_policy;
pub mod l7_policy;
pub mod peer_authn;
pub mod route;
pub mod service;
pub mod waypoint;
pub mod workload;

#[cfg(test)]
mod tests;

/// Mesh-wide settings translation depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Istio's root namespace: policies there apply mesh-wide.
    pub root_namespace: String,
    /// DNS suffix of service hostnames (`<svc>.<ns>.svc.<suffix>`).
    pub domain_suffix: String,
    /// SPIFFE trust domain; `Workload.trust_domain` stays empty for `cluster.local`, as Istio sends it.
    pub trust_domain: String,
    /// Cluster name, the first part of workload uids (`<cluster>//Pod/<ns>/<name>`).
    pub cluster_id: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: "istio-system".into(),
            domain_suffix: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        }
    }
}

impl MeshConfig {
    /// `<name>.<namespace>.svc.<suffix>`.
    pub fn hostname(&self, namespace: &str, name: &str) -> String {
        format!("{name}.{namespace}.svc.{}", self.domain_suffix)
    }

    /// The workload uid of a pod: `<cluster>//Pod/<namespace>/<name>`.
    pub fn pod_uid(&self, namespace: &str, name: &str) -> String {
        format!("{}//Pod/{namespace}/{name}", self.cluster_id)
    }
}

/// Label that enrolls a namespace or pod (`ambient`), or opts a pod out (`none`).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Label naming the waypoint of a namespace, service or pod (`none` opts out).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Label naming the namespace of that waypoint (default: the object's own).
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Label on a waypoint `Gateway`: which traffic it takes (`service` by default, `workload`, `all`, `none`).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// The `gatewayClassName` of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
