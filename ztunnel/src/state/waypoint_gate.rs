//! The destination's half of "never around the waypoint": which peers may open a connection to
//! a workload whose Address names a waypoint.
//!
//! Source ztunnels send such traffic to the waypoint (see `proxy/route.rs`), but nothing makes a
//! client use a well-behaved source: a pod outside the mesh dialling the pod IP, or a crafted
//! HBONE CONNECT straight to the destination's 15008, would otherwise skip the waypoint's L7
//! policy. So the destination admits only the waypoint's own mTLS-verified identity.
//!
//! Each snapshot resolves every workload's waypoint once (`build`), deduplicated per
//! `GatewayAddress`, so the connection path does one map lookup and a few identity comparisons,
//! with no allocation.
//!
//! Decisions (and why):
//! - Only the workload's own `waypoint` counts. A Service's waypoint does not protect the pods
//!   behind it: Istio lets pod-addressed traffic to such pods through, and the destination
//!   cannot tell a connection addressed to the Service from one addressed to the pod (HBONE's
//!   authority is the pod address either way, once a source has picked the endpoint).
//! - A waypoint's own pods are never gated by their waypoint: they are how it is reached.
//! - Plaintext (no identity) never passes, also from non-mesh clients: the waypoint's policy is
//!   written against identities that a plaintext client does not have, and sending it to the
//!   waypoint on the client's behalf would lend it the destination's identity.
//! - Nothing is exempt for being on the same node: a node hosts pods of every tenant, and the
//!   local path is HBONE with identities like any other.
//! - A waypoint that does not resolve (unknown service or address, no pods, another network)
//!   denies everything: without its identity nobody can be shown to have come through it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use hbone::Identity;
use http::StatusCode;

use super::State;
use super::workload::{GatewayAddress, GatewayDestination, Workload};

/// The waypoint a workload must be reached through, resolved to the identities its pods present.
#[derive(Debug, PartialEq, Eq)]
pub struct WaypointGate {
    /// The waypoint as named: `namespace/hostname`, or `address:port`.
    name: String,
    /// The waypoint's identities (sorted, distinct), or why it could not be resolved.
    resolved: Result<Vec<Identity>, &'static str>,
}

/// Why a connection to a waypoint-protected workload is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaypointDenial<'a> {
    /// The peer is not the waypoint (or has no verified identity at all).
    Bypassed {
        /// The waypoint, as named.
        waypoint: &'a str,
    },
    /// The waypoint cannot be resolved, so no peer can be shown to be it.
    Unresolved {
        /// The waypoint, as named.
        waypoint: &'a str,
        /// Why it could not be resolved.
        why: &'static str,
    },
}

impl WaypointDenial<'_> {
    /// The `reason` label of `ztunnel_connections_denied_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            WaypointDenial::Bypassed { .. } => "bypassed_waypoint",
            WaypointDenial::Unresolved { .. } => "waypoint_unresolved",
        }
    }

    /// The HBONE answer: 401 like any policy denial for a peer that is not the waypoint; 503 when
    /// the destination's own view of its waypoint is incomplete (a retry may succeed later).
    pub fn status(&self) -> StatusCode {
        match self {
            WaypointDenial::Bypassed { .. } => StatusCode::UNAUTHORIZED,
            WaypointDenial::Unresolved { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl fmt::Display for WaypointDenial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaypointDenial::Bypassed { waypoint } => {
                write!(f, "bypassed waypoint {waypoint}: only the waypoint may connect to this workload")
            }
            WaypointDenial::Unresolved { waypoint, why } => {
                write!(f, "waypoint {waypoint} of this workload cannot be resolved ({why}): refusing every peer")
            }
        }
    }
}

impl WaypointGate {
    /// The waypoint as named: `namespace/hostname`, or `address:port`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The identities the waypoint's pods present; empty when it could not be resolved.
    pub fn identities(&self) -> &[Identity] {
        self.resolved.as_deref().unwrap_or(&[])
    }

    /// Admits `peer` (the mTLS-verified identity; `None` for plaintext) only if it is the
    /// waypoint's. Allocation-free.
    pub fn admit(&self, peer: Option<&Identity>) -> Result<(), WaypointDenial<'_>> {
        match &self.resolved {
            Err(why) => Err(WaypointDenial::Unresolved { waypoint: &self.name, why }),
            Ok(ids) if peer.is_some_and(|p| ids.contains(p)) => Ok(()),
            Ok(_) => Err(WaypointDenial::Bypassed { waypoint: &self.name }),
        }
    }
}

/// A waypoint resolved once per snapshot: the gate, and the uids of its pods (exempt from it).
struct Resolution {
    gate: Arc<WaypointGate>,
    members: Vec<String>,
}

/// The gate of every workload that names a waypoint it is not itself part of, by uid.
///
/// `state` must already have its workload, service and VIP indexes; `workloads` are all of the
/// snapshot's workloads.
pub(super) fn build(state: &State, workloads: &[Arc<Workload>]) -> HashMap<String, Arc<WaypointGate>> {
    let mut gates = HashMap::new();
    if workloads.iter().all(|w| w.waypoint.is_none()) {
        return gates;
    }
    // Every workload of each service, ready or not: a waypoint pod that is not ready still holds
    // the waypoint's identity, and its in-flight connections must keep working.
    let mut by_service: HashMap<&str, Vec<&Arc<Workload>>> = HashMap::new();
    for w in workloads {
        for key in w.services.keys() {
            by_service.entry(key.as_str()).or_default().push(w);
        }
    }
    let mut resolved: HashMap<&GatewayAddress, Resolution> = HashMap::new();
    for w in workloads {
        let Some(gw) = &w.waypoint else { continue };
        let r = resolved.entry(gw).or_insert_with(|| resolve(state, &by_service, gw));
        if !r.members.contains(&w.uid) {
            gates.insert(w.uid.clone(), r.gate.clone());
        }
    }
    gates
}

fn resolve(state: &State, by_service: &HashMap<&str, Vec<&Arc<Workload>>>, gw: &GatewayAddress) -> Resolution {
    let name = match &gw.destination {
        GatewayDestination::Address(a) => format!("{}:{}", a.address, gw.hbone_mtls_port),
        GatewayDestination::Hostname { namespace, hostname } => format!("{namespace}/{hostname}"),
    };
    let members: Result<Vec<&Arc<Workload>>, &'static str> = match &gw.destination {
        GatewayDestination::Address(a) if a.network != state.config().network => {
            Err("waypoint address is on another network")
        }
        GatewayDestination::Address(a) => match state.workload_by_ip(a.address) {
            Some(w) => Ok(vec![w]),
            None => match state.service_by_vip(a.address) {
                Some(svc) => Ok(by_service.get(svc.key().as_str()).cloned().unwrap_or_default()),
                None => Err("no workload or service has the waypoint's address"),
            },
        },
        GatewayDestination::Hostname { namespace, hostname } => match state.service_by_host(namespace, hostname) {
            Some(_) => Ok(by_service.get(name.as_str()).cloned().unwrap_or_default()),
            None => Err("waypoint service is not known"),
        },
    };
    let members = members.and_then(|m| if m.is_empty() { Err("waypoint service has no pods") } else { Ok(m) });
    let (resolved, members) = match members {
        Ok(m) => {
            let mut ids: Vec<Identity> = m.iter().map(|w| w.identity().clone()).collect();
            ids.sort();
            ids.dedup();
            (Ok(ids), m.iter().map(|w| w.uid.clone()).collect())
        }
        Err(why) => (Err(why), Vec::new()),
    };
    Resolution { gate: Arc::new(WaypointGate { name, resolved }), members }
}
