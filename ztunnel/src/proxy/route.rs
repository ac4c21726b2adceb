//! Where an outbound connection goes, decided from the state alone.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::state::{Service, State, TunnelProtocol, Workload};

/// The outbound decision for one connection.
#[derive(Debug)]
pub enum Route {
    /// Through HBONE to a mesh workload.
    Hbone {
        /// The chosen destination workload.
        workload: Arc<Workload>,
        /// The service it was reached through, if any.
        service: Option<Arc<Service>>,
        /// `:authority`: the workload's address and target port.
        target: SocketAddr,
        /// Where the tunnel goes: the workload's address on the HBONE port.
        peer: SocketAddr,
    },
    /// Plain TCP to a destination the mesh does not manage (or a workload not in the mesh).
    Passthrough {
        /// Where to connect.
        dst: SocketAddr,
        /// The workload at that address, when known but not enrolled.
        workload: Option<Arc<Workload>>,
        /// The service it was reached through, if any.
        service: Option<Arc<Service>>,
    },
    /// A service with no usable endpoint for the port: refuse rather than guess.
    NoEndpoint {
        /// The service.
        service: Arc<Service>,
    },
    /// The destination must be reached through a waypoint, and this ztunnel does not send
    /// traffic to waypoints yet: going direct would skip the waypoint's L7 policy, so refuse.
    WaypointRequired {
        /// `namespace/name` of the service or workload that names the waypoint.
        destination: String,
    },
}

/// Routes a connection to `dst` (the original destination) leaving a local pod.
pub fn route(state: &State, dst: SocketAddr, hbone_port: u16) -> Route {
    if let Some(service) = state.service_by_vip(dst.ip()) {
        if service.waypoint.is_some() {
            return Route::WaypointRequired { destination: format!("{}/{}", service.namespace, service.name) };
        }
        let Some(ep) = state.pick_endpoint(service, dst.port()) else {
            return Route::NoEndpoint { service: service.clone() };
        };
        let ip = ep.workload.addresses.first().copied().unwrap_or(dst.ip());
        return to_workload(ep.workload, Some(service.clone()), SocketAddr::new(ip, ep.port), hbone_port);
    }
    match state.workload_by_ip(dst.ip()) {
        Some(w) => to_workload(w.clone(), None, dst, hbone_port),
        None => Route::Passthrough { dst, workload: None, service: None },
    }
}

fn to_workload(workload: Arc<Workload>, service: Option<Arc<Service>>, target: SocketAddr, hbone_port: u16) -> Route {
    if workload.waypoint.is_some() {
        return Route::WaypointRequired { destination: format!("{}/{}", workload.namespace(), workload.name) };
    }
    if workload.protocol == TunnelProtocol::Hbone {
        let peer = SocketAddr::new(target.ip(), hbone_port);
        Route::Hbone { workload, service, target, peer }
    } else {
        Route::Passthrough { dst: target, workload: Some(workload), service }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StateConfig, file};

    fn state(waypoint: &str) -> State {
        let yaml = format!(
            r#"
workloads:
- name: web
  namespace: shop
  addresses: ["10.0.0.5"]
  protocol: HBONE
  services: {{"shop/web.shop.svc.cluster.local": {{80: 8080}}}}
- name: legacy
  namespace: shop
  addresses: ["10.0.0.6"]
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  addresses: ["10.96.0.5"]
  ports: [{{servicePort: 80, targetPort: 8080}}]
{waypoint}
"#
        );
        file::parse(&yaml, StateConfig::default()).unwrap()
    }

    #[test]
    fn routes_by_destination_kind() {
        let s = state("");
        match route(&s, "10.96.0.5:80".parse().unwrap(), 15008) {
            Route::Hbone { target, peer, service, .. } => {
                assert_eq!(target, "10.0.0.5:8080".parse().unwrap());
                assert_eq!(peer, "10.0.0.5:15008".parse().unwrap());
                assert!(service.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(route(&s, "10.0.0.5:9000".parse().unwrap(), 15008), Route::Hbone { .. }));
        assert!(matches!(
            route(&s, "10.0.0.6:80".parse().unwrap(), 15008),
            Route::Passthrough { workload: Some(_), .. }
        ));
        assert!(matches!(
            route(&s, "192.0.2.1:443".parse().unwrap(), 15008),
            Route::Passthrough { workload: None, .. }
        ));
    }

    #[test]
    fn a_waypoint_is_never_bypassed() {
        let s = state("  waypoint: {address: \"10.0.9.9\"}");
        match route(&s, "10.96.0.5:80".parse().unwrap(), 15008) {
            Route::WaypointRequired { destination } => assert_eq!(destination, "shop/web"),
            other => panic!("traffic for a service with a waypoint went {other:?}"),
        }
    }
}
