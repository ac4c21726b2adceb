//! `istio.io/use-waypoint` → the `GatewayAddress` of a waypoint `Gateway`.
//!
//! The object's own label wins over its namespace's; `none` on the object opts it out. The
//! target must be a `Gateway` of class `istio-waypoint` whose `istio.io/waypoint-for` label
//! (default `service`) covers the traffic type: services use `service`/`all` waypoints,
//! workloads `workload`/`all` ones, as Istio does. A label naming no waypoint gives no waypoint
//! and a warning (Istio behaves the same: traffic then goes direct).

use std::net::IpAddr;

use proto::istio::workload::{GatewayAddress, NamespacedHostname, NetworkAddress, gateway_address::Destination};

use super::{MeshConfig, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL, WAYPOINT_CLASS, WAYPOINT_FOR_LABEL};
use crate::k8s::Labels;
use crate::model::Model;

/// The HBONE port of a waypoint when its Gateway lists no `HBONE` listener.
pub const DEFAULT_HBONE_PORT: u32 = 15008;

/// Which traffic the waypoint is asked to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum For {
    /// Traffic addressed to a service.
    Service,
    /// Traffic addressed to a workload directly.
    Workload,
}

/// Resolves the waypoint of an object with `labels` in `namespace`. `Err` carries a warning.
pub fn resolve(
    cfg: &MeshConfig,
    model: &Model,
    namespace: &str,
    labels: &Labels,
    traffic: For,
    own_gateway: Option<&str>,
) -> Result<Option<GatewayAddress>, String> {
    let ns_labels = model.namespaces.get(namespace).map(|n| &n.metadata.labels);
    let (name, wp_ns, from) = match labels.get(USE_WAYPOINT_LABEL) {
        Some(n) => (n.as_str(), labels.get(USE_WAYPOINT_NAMESPACE_LABEL), "its"),
        None => match ns_labels.and_then(|l| l.get(USE_WAYPOINT_LABEL)) {
            Some(n) => (n.as_str(), ns_labels.and_then(|l| l.get(USE_WAYPOINT_NAMESPACE_LABEL)), "its namespace's"),
            None => return Ok(None),
        },
    };
    if name == "none" || name.is_empty() {
        return Ok(None);
    }
    let wp_ns = wp_ns.map(String::as_str).unwrap_or(namespace);
    if wp_ns == namespace && own_gateway == Some(name) {
        // A waypoint's own pods do not send their traffic through themselves.
        return Ok(None);
    }
    let Some(gw) = model.gateways.get(&(wp_ns.to_owned(), name.to_owned())) else {
        return Err(format!(
            "{from} label {USE_WAYPOINT_LABEL}={name} names no Gateway {wp_ns}/{name}; no waypoint used"
        ));
    };
    if gw.spec.gateway_class_name != WAYPOINT_CLASS {
        return Err(format!(
            "{from} label {USE_WAYPOINT_LABEL}={name}: Gateway {wp_ns}/{name} has class {:?}, not {WAYPOINT_CLASS}; no waypoint used",
            gw.spec.gateway_class_name
        ));
    }
    let waypoint_for = gw.metadata.labels.get(WAYPOINT_FOR_LABEL).map(String::as_str).unwrap_or("service");
    let covers = match traffic {
        For::Service => matches!(waypoint_for, "service" | "all"),
        For::Workload => matches!(waypoint_for, "workload" | "all"),
    };
    if !covers {
        return Ok(None);
    }
    let hbone_mtls_port = gw
        .spec
        .listeners
        .iter()
        .find(|l| l.protocol == "HBONE")
        .map(|l| u32::from(l.port))
        .unwrap_or(DEFAULT_HBONE_PORT);
    let ip = gw
        .status
        .addresses
        .iter()
        .find(|a| a.type_.as_deref().is_none_or(|t| t == "IPAddress"))
        .and_then(|a| a.value.parse::<IpAddr>().ok());
    let destination = match ip {
        Some(ip) => Destination::Address(NetworkAddress { network: String::new(), address: ip_bytes(ip).into() }),
        None => Destination::Hostname(NamespacedHostname {
            namespace: wp_ns.to_owned(),
            hostname: cfg.hostname(wp_ns, name),
        }),
    };
    Ok(Some(GatewayAddress { destination: Some(destination), hbone_mtls_port }))
}

/// 4 bytes for IPv4, 16 for IPv6.
pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
