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
}

/// Routes a connection to `dst` (the original destination) leaving a local pod.
pub fn route(state: &State, dst: SocketAddr, hbone_port: u16) -> Route {
    if let Some(service) = state.service_by_vip(dst.ip()) {
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
    if workload.protocol == TunnelProtocol::Hbone {
        let peer = SocketAddr::new(target.ip(), hbone_port);
        Route::Hbone { workload, service, target, peer }
    } else {
        Route::Passthrough { dst: target, workload: Some(workload), service }
    }
}
