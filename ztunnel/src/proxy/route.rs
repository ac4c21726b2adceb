//! Where an outbound connection goes, decided from the state alone.
//!
//! A destination that names a waypoint (the service's, else the chosen workload's) is sent to
//! that waypoint over HBONE, never around it: if the waypoint cannot be resolved the connection
//! is refused, because going direct would skip the waypoint's L7 policy. The two exceptions
//! keep traffic from looping: the waypoint's own connections, and connections to the waypoint's
//! own pods.
//!
//! A service's endpoint is chosen by [`State::pick_endpoint_for`] (declared port, health, this
//! proxy's network, locality preferences against the source, capacity) and dialled on its
//! address of the family the client used. An IPv4-mapped destination (`::ffff:a.b.c.d`) is
//! routed, and addressed, as its IPv4 address.
//!
//! Host-network workloads (`networkMode: HOST_NETWORK`) share their node's address, so, as in
//! Istio (istio/ztunnel#1216):
//! - a connection to that address is not to a mesh workload: it is never looked up as one
//!   ([`State::workload_by_ip`] does not know them) and goes out as plain passthrough with no
//!   destination workload, never through any pod's waypoint;
//! - as a Service's endpoint one is dialled at the node's address and the target port, as plain
//!   TCP (they are never HBONE: such a pod cannot be captured, and conversion refuses HBONE for
//!   one), with the pod as the destination workload. The Service's waypoint applies as for any
//!   service; the pod's own waypoint does not (see [`route`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::state::{GatewayAddress, GatewayDestination, LoadBalancingMode, Service, State, TunnelProtocol, Workload};

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
    /// Through HBONE to the waypoint the destination names.
    Waypoint {
        /// The waypoint pod chosen; its identity is the one the tunnel expects.
        waypoint: Arc<Workload>,
        /// The service the connection was addressed to, if any.
        service: Option<Arc<Service>>,
        /// The workload the connection was addressed to (workload-addressed traffic only).
        workload: Option<Arc<Workload>>,
        /// `:authority`: the original destination (service VIP and port, or pod IP and port).
        target: SocketAddr,
        /// Where the tunnel goes: the waypoint pod's address on its HBONE port.
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
    /// The destination names a waypoint that this snapshot cannot resolve to a running pod:
    /// refuse (fail closed) rather than skip the waypoint's policy.
    WaypointUnavailable {
        /// `namespace/name` of the service or workload that names the waypoint.
        destination: String,
        /// The waypoint as named (`namespace/hostname` or an address).
        waypoint: String,
        /// Why it could not be used.
        why: &'static str,
    },
}

/// Routes a connection to `dst` (the original destination) leaving a local pod, `src` (the
/// source workload, when known; used so a waypoint's own traffic is never sent back to it).
pub fn route(state: &State, src: Option<&Workload>, dst: SocketAddr, hbone_port: u16) -> Route {
    // One spelling per address: what the destination checks (policy, its own workload) and what
    // the access log shows must not depend on how the client wrote an IPv4 address.
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    if let Some(service) = state.service_by_vip(dst.ip()) {
        if let Some(gw) = &service.waypoint {
            let destination = || format!("{}/{}", service.namespace, service.name);
            match via_waypoint(state, gw, src, None, Some(service), dst, destination) {
                Ok(Some(r)) => return r,
                Ok(None) => {}
                Err(r) => return r,
            }
        }
        if service.load_balancing.mode == LoadBalancingMode::Passthrough {
            // The control plane asks for no endpoint choice: the address the client dialled.
            return Route::Passthrough { dst, workload: None, service: Some(service.clone()) };
        }
        let Some(ep) = state.pick_endpoint_for(src, service, dst.port()) else {
            return Route::NoEndpoint { service: service.clone() };
        };
        let target = SocketAddr::new(address_like(&ep.workload, dst.ip()), ep.port);
        // A host-network endpoint's own waypoint is not used: a workload's waypoint is for
        // traffic addressed to the workload, and a host-network pod has no address of its own
        // (the hop would carry the node's address as `:authority`, which the waypoint cannot
        // attribute to the pod any more than we can). Pod-addressed traffic to it never goes
        // to that waypoint either (below), and no ztunnel sits in front of it to refuse
        // connections that skipped the waypoint, so honouring it here would protect nothing.
        if let (None, Some(gw), false) = (&service.waypoint, &ep.workload.waypoint, ep.workload.host_network()) {
            // Reached through a service without a waypoint, to a workload with one: the
            // workload's waypoint still sees the connection, addressed to the pod.
            let destination = || format!("{}/{}", ep.workload.namespace(), ep.workload.name);
            match via_waypoint(state, gw, src, Some(&ep.workload), None, target, destination) {
                Ok(Some(r)) => return r,
                Ok(None) => {}
                Err(r) => return r,
            }
        }
        return to_workload(ep.workload, Some(service.clone()), target, hbone_port);
    }
    // A node's address (that of its host-network pods) finds nothing here: passthrough, as for
    // any destination outside the mesh, rather than an arbitrary pod on that node and its
    // waypoint.
    match state.workload_by_ip(dst.ip()) {
        Some(w) => {
            if let Some(gw) = &w.waypoint {
                let destination = || format!("{}/{}", w.namespace(), w.name);
                match via_waypoint(state, gw, src, Some(w), None, dst, destination) {
                    Ok(Some(r)) => return r,
                    Ok(None) => {}
                    Err(r) => return r,
                }
            }
            to_workload(w.clone(), None, dst, hbone_port)
        }
        None => Route::Passthrough { dst, workload: None, service: None },
    }
}

/// The route through waypoint `gw`: `Ok(None)` when the waypoint must not be used for this
/// connection (it is the source, or the destination is the waypoint itself), `Err` when it
/// cannot be resolved.
fn via_waypoint(
    state: &State,
    gw: &GatewayAddress,
    src: Option<&Workload>,
    workload: Option<&Arc<Workload>>,
    service: Option<&Arc<Service>>,
    target: SocketAddr,
    destination: impl Fn() -> String,
) -> Result<Option<Route>, Route> {
    let unavailable = |why| Route::WaypointUnavailable { destination: destination(), waypoint: describe(gw), why };
    // Loop guards come first: a waypoint forwarding to its backends, or traffic to a waypoint
    // pod, must go direct whatever the pick below would be.
    if src.is_some_and(|s| is_waypoint(state, gw, s)) || workload.is_some_and(|w| is_waypoint(state, gw, w)) {
        return Ok(None);
    }
    if service.is_some_and(|svc| is_waypoint_service(gw, svc)) {
        return Ok(None);
    }
    let (waypoint, port) = match &gw.destination {
        GatewayDestination::Address(a) if a.network != state.config().network => {
            return Err(unavailable("waypoint address is on another network"));
        }
        GatewayDestination::Address(a) => match state.workload_by_ip(a.address) {
            Some(w) => (w.clone(), gw.hbone_mtls_port),
            // The address may be the waypoint Service's VIP rather than a pod's.
            None => match state.service_by_vip(a.address) {
                Some(svc) => match state.pick_endpoint_for(src, svc, gw.hbone_mtls_port) {
                    Some(ep) => (ep.workload, ep.port),
                    None => return Err(unavailable("waypoint service has no healthy endpoint")),
                },
                None => return Err(unavailable("no workload or service has the waypoint's address")),
            },
        },
        GatewayDestination::Hostname { namespace, hostname } => {
            let Some(svc) = state.service_by_host(namespace, hostname) else {
                return Err(unavailable("waypoint service is not known"));
            };
            match state.pick_endpoint_for(src, svc, gw.hbone_mtls_port) {
                Some(ep) => (ep.workload, ep.port),
                None => return Err(unavailable("waypoint service has no healthy endpoint")),
            }
        }
    };
    if src.is_some_and(|s| s.uid == waypoint.uid) || workload.is_some_and(|w| w.uid == waypoint.uid) {
        return Ok(None);
    }
    if !waypoint.healthy {
        return Err(unavailable("waypoint pod is not ready"));
    }
    if waypoint.addresses.is_empty() {
        return Err(unavailable("waypoint pod has no address"));
    }
    let peer = SocketAddr::new(address_like(&waypoint, target.ip()), port);
    Ok(Some(Route::Waypoint { waypoint, service: service.cloned(), workload: workload.cloned(), target, peer }))
}

/// Whether `w` is (one of the pods of) the waypoint `gw` names.
fn is_waypoint(state: &State, gw: &GatewayAddress, w: &Workload) -> bool {
    match &gw.destination {
        GatewayDestination::Address(a) => {
            w.addresses.contains(&a.address)
                || state.service_by_vip(a.address).is_some_and(|svc| backs(w, &svc.namespace, &svc.hostname))
        }
        GatewayDestination::Hostname { namespace, hostname } => backs(w, namespace, hostname),
    }
}

/// Whether `svc` is the waypoint's own Service (a namespace-wide use-waypoint label also
/// lands on it).
fn is_waypoint_service(gw: &GatewayAddress, svc: &Service) -> bool {
    match &gw.destination {
        GatewayDestination::Address(a) => svc.vips.iter().any(|v| v.address == a.address),
        GatewayDestination::Hostname { namespace, hostname } => {
            svc.namespace == *namespace && svc.hostname == *hostname
        }
    }
}

/// Whether `w` backs the service `namespace/hostname` (keys are `namespace/hostname`).
fn backs(w: &Workload, namespace: &str, hostname: &str) -> bool {
    w.services.keys().any(|k| k.split_once('/') == Some((namespace, hostname)))
}

fn describe(gw: &GatewayAddress) -> String {
    match &gw.destination {
        GatewayDestination::Address(a) => format!("{}:{}", a.address, gw.hbone_mtls_port),
        GatewayDestination::Hostname { namespace, hostname } => format!("{namespace}/{hostname}"),
    }
}

/// The address of `w` (which has at least one) to dial for a connection addressed to `like`:
/// the first of the same family (Istio prefers the family of the original request, so a client
/// that dialled an IPv6 VIP reaches a dual-stack pod over IPv6), else the first.
fn address_like(w: &Workload, like: IpAddr) -> IpAddr {
    let first = w.addresses.first().copied().unwrap_or(like);
    w.addresses.iter().copied().find(|a| a.is_ipv6() == like.is_ipv6()).unwrap_or(first)
}

/// The route to a chosen workload: HBONE when it is in the mesh, else plain TCP (host-network
/// workloads always: conversion never lets one be HBONE).
fn to_workload(workload: Arc<Workload>, service: Option<Arc<Service>>, target: SocketAddr, hbone_port: u16) -> Route {
    if workload.protocol == TunnelProtocol::Hbone {
        let peer = SocketAddr::new(target.ip(), hbone_port);
        Route::Hbone { workload, service, target, peer }
    } else {
        Route::Passthrough { dst: target, workload: Some(workload), service }
    }
}

#[cfg(test)]
mod tests;
