//! `meshctl explain`: the path a connection would take and the verdict it would get, computed
//! by the same code the mesh runs: the model is translated as for xDS, converted as ztunnel
//! converts it, routed as ztunnel routes, and admitted as the destination's ztunnel admits
//! (its waypoint gate, then its evaluator). A waypoint's own policies are named, not evaluated:
//! they may decide on the request, which a connection does not have.
//! `tests/explain_differential.rs` holds explain to what the proxies do.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use ztunnel::proxy::route::{Route, route};
use ztunnel::state::convert::{self, Address};
use ztunnel::state::{ConnInfo, GatewayAddress, GatewayDestination, State, StateConfig, TunnelProtocol, Workload};

use crate::translator::Translator;

/// Why a question cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// No pod of that name.
    #[error("no pod {0}")]
    NoSource(String),
    /// Neither a pod nor a service of that name.
    #[error("no pod or service {0}")]
    NoDestination(String),
    /// The service has no such port, or none at all.
    #[error("service {service} has no port {port}")]
    NoPort {
        /// The service.
        service: String,
        /// The port asked for.
        port: u16,
    },
    /// A destination pod without an address cannot be reached.
    #[error("pod {0} has no address")]
    NoAddress(String),
    /// The translated resources do not form a state (a bug, or a broken config).
    #[error("translated resources do not convert: {0}")]
    State(String),
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `namespace/name` of the source pod.
    pub source: String,
    /// The source's identity, or `None` when it is not in the mesh (plaintext).
    pub source_identity: Option<String>,
    /// What was asked for, `namespace/name` of a pod or service.
    pub destination: String,
    /// The service, if the destination is one.
    pub service: Option<String>,
    /// The workload the connection lands on.
    pub endpoint: String,
    /// Address and port on that workload.
    pub endpoint_addr: SocketAddr,
    /// Its identity.
    pub destination_identity: String,
    /// `hbone` (mTLS tunnel), `hbone via waypoint <ns>/<pod> (<identity>)` (the destination
    /// names a waypoint: the tunnel goes to it, and it forwards under its own identity),
    /// `plaintext-to-mesh` (captured on arrival, authorized without an identity) or
    /// `passthrough` (neither end in the mesh: no policy applies).
    pub path: String,
    /// `namespace/name` of the waypoint pod the connection goes through, if any.
    pub waypoint: Option<String>,
    /// Whether the bytes travel inside mutual TLS.
    pub mtls: bool,
    /// Whether ztunnel would allow the connection. Through a waypoint, the waypoint's own
    /// policies ([`Explanation::waypoint_policies`]) come first and may still refuse it.
    pub allowed: bool,
    /// The verdict as the proxy logs it.
    pub verdict: String,
    /// `namespace/name` of the deciding policy, if one decided.
    pub policy: Option<String>,
    /// Index of the deciding rule in it.
    pub rule: Option<usize>,
    /// `namespace/name` of the policies the waypoint applies to this connection (targeting
    /// the waypoint, or the service addressed), sorted. They are not evaluated here: they
    /// may decide on the request (method, path, headers), which a connection does not have.
    pub waypoint_policies: Vec<String>,
}

/// The policies the waypoint applies to traffic it handles for `service` (FQDN, when the
/// connection is addressed to one) as the Gateway `gateway` (`namespace/name`).
fn waypoint_policies(t: &Translator, gateway: Option<&str>, service: Option<&str>) -> Vec<String> {
    use proto::mesh::waypoint::v1::target::Kind;
    let mut out: Vec<String> = t
        .l7_policies()
        .values()
        .filter(|p| {
            p.targets.iter().any(|target| match &target.kind {
                Some(Kind::Gateway(g)) => Some(g.as_str()) == gateway,
                Some(Kind::Service(h)) => Some(h.as_str()) == service,
                None => false,
            })
        })
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    out.sort();
    out
}

/// The Gateway (`namespace/name`) a waypoint address names: its Service is the Gateway's.
fn gateway_of(state: &State, w: &GatewayAddress) -> Option<String> {
    match &w.destination {
        GatewayDestination::Hostname { namespace, hostname } => {
            state.service_by_host(namespace, hostname).map(|s| format!("{}/{}", s.namespace, s.name))
        }
        GatewayDestination::Address(a) => {
            // A waypoint named by address: the Service with that VIP.
            state.service_by_vip(a.address).map(|s| format!("{}/{}", s.namespace, s.name))
        }
    }
}

/// Builds ztunnel's view of the mesh from the translator's current resources.
pub fn state_of(t: &Translator) -> Result<State, ExplainError> {
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    for (name, a) in t.addresses() {
        match Address::try_from(a.clone()).map_err(|e| ExplainError::State(format!("{name}: {e}")))? {
            Address::Workload(w) => workloads.push(w),
            Address::Service(s) => services.push(s),
        }
    }
    let policies = t
        .authorizations()
        .iter()
        .map(|(name, a)| {
            convert::policy_fail_closed(a.clone()).map_err(|e| ExplainError::State(format!("{name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let cfg = StateConfig { root_namespace: t.config().root_namespace.clone(), ..StateConfig::default() };
    State::new(cfg, workloads, services, policies).map_err(|e| ExplainError::State(e.to_string()))
}

fn pod<'a>(state: &'a State, key: &str) -> Option<&'a Arc<Workload>> {
    let (ns, name) = key.split_once('/')?;
    state.workloads().find(|w| w.namespace() == ns && w.name == name)
}

/// Explains a connection from pod `source` (`ns/name`) to `destination` (`ns/name` of a pod or
/// a service) on `port` (a service's first port when omitted for a service).
pub fn explain(
    t: &Translator,
    source: &str,
    destination: &str,
    port: Option<u16>,
) -> Result<Explanation, ExplainError> {
    let state = state_of(t)?;
    let src = pod(&state, source).ok_or_else(|| ExplainError::NoSource(source.to_owned()))?.clone();
    let src_in_mesh = src.protocol == TunnelProtocol::Hbone;
    // `dialed`: the address the application dials (the service VIP on the service port, or
    // the pod), which the source's ztunnel routes.
    let (dst, dst_addr, service, dialed) = match pod(&state, destination) {
        Some(w) => {
            let ip = *w.addresses.first().ok_or_else(|| ExplainError::NoAddress(destination.to_owned()))?;
            let addr = SocketAddr::new(ip, port.unwrap_or(80));
            (w.clone(), addr, None, Some(addr))
        }
        None => {
            let (ns, name) =
                destination.split_once('/').ok_or_else(|| ExplainError::NoDestination(destination.into()))?;
            let svc = state
                .services()
                .find(|s| s.namespace == ns && s.name == name)
                .ok_or_else(|| ExplainError::NoDestination(destination.to_owned()))?
                .clone();
            let service_port = match port {
                Some(p) => p,
                None => {
                    *svc.ports.keys().next().ok_or(ExplainError::NoPort { service: destination.into(), port: 0 })?
                }
            };
            // As the source's ztunnel picks: the service's locality rules apply against the
            // source (a STRICT service has no endpoint for an unknown client).
            let ep = state
                .pick_endpoint_for(Some(&src), &svc, service_port)
                .ok_or_else(|| ExplainError::NoPort { service: destination.to_owned(), port: service_port })?;
            let ip = *ep.workload.addresses.first().ok_or_else(|| ExplainError::NoAddress(destination.to_owned()))?;
            let vip = svc.vips.first().map(|v| SocketAddr::new(v.address, service_port));
            (ep.workload, SocketAddr::new(ip, ep.port), Some(svc.hostname.clone()), vip)
        }
    };
    let dst_in_mesh = dst.protocol == TunnelProtocol::Hbone;
    let src_identity = src_in_mesh.then(|| src.identity().clone());
    let mut path = match (src_in_mesh, dst_in_mesh) {
        (true, true) => "hbone",
        (_, true) => "plaintext-to-mesh",
        (_, false) => "passthrough",
    }
    .to_owned();
    // Only captured sources go through ztunnel's routing, waypoints included.
    let mut l7 = Vec::new();
    let via = match dialed.filter(|_| src_in_mesh) {
        Some(d) => match route(&state, Some(&src), d, 15008) {
            Route::Waypoint { waypoint, service: svc, workload, .. } => {
                // The waypoint the destination names: the service's when it was addressed,
                // else the workload's (as the source's ztunnel chose it).
                let named = match (&svc, &workload) {
                    (Some(s), _) => s.waypoint.as_ref(),
                    (None, Some(w)) => w.waypoint.as_ref(),
                    (None, None) => None,
                };
                let gateway = named.and_then(|g| gateway_of(&state, g));
                l7 = waypoint_policies(t, gateway.as_deref(), svc.as_ref().map(|s| s.hostname.as_str()));
                Some(Ok(waypoint))
            }
            Route::WaypointUnavailable { waypoint, why, .. } => {
                Some(Err(format!("waypoint {waypoint} is unusable: {why}")))
            }
            _ => None,
        },
        None => None,
    };
    let waypoint = match &via {
        Some(Ok(w)) => {
            path = format!("hbone via waypoint {}/{} ({})", w.namespace(), w.name, w.identity());
            Some(format!("{}/{}", w.namespace(), w.name))
        }
        _ => None,
    };
    let (allowed, verdict, policy, rule) = if let Some(Err(why)) = via {
        (false, format!("denied: {why}; ztunnel refuses rather than bypass it"), None, None)
    } else if dst_in_mesh {
        let src_ip = *src.addresses.first().ok_or_else(|| ExplainError::NoAddress(source.to_owned()))?;
        // Through a waypoint, the destination's ztunnel sees the waypoint as the peer; its L7
        // policy (not evaluated here) comes first.
        let (peer_identity, peer_ip) = match &via {
            Some(Ok(w)) => (Some(w.identity().clone()), w.addresses.first().copied().unwrap_or(src_ip)),
            _ => (src_identity.clone(), src_ip),
        };
        // As the destination's ztunnel: a workload behind a waypoint admits only that
        // waypoint, before any policy (a plaintext client, or one routed around it, is refused
        // whatever the policies say).
        if let Some(Err(denial)) = state.waypoint_gate(&dst).map(|g| g.admit(peer_identity.as_ref())) {
            (false, format!("denied: {denial}"), None, None)
        } else {
            let v = state.authorize(&ConnInfo {
                src_identity: peer_identity.as_ref(),
                src_ip: peer_ip,
                dst_workload: &dst,
                dst_ip: dst_addr.ip(),
                dst_port: dst_addr.port(),
            });
            let policy = v.decided_by.as_ref().map(|r| format!("{}/{}", r.namespace(), r.name()));
            let rule = v.decided_by.as_ref().and_then(|r| r.group);
            (v.allowed, v.to_string(), policy, rule)
        }
    } else {
        (true, "allowed: destination is not in the mesh; no policy applies".to_owned(), None, None)
    };
    let verdict = match (allowed, l7.is_empty()) {
        (true, false) => format!(
            "{verdict}; the waypoint first applies {} (not evaluated here: {} may decide on the request)",
            l7.join(", "),
            if l7.len() == 1 { "it" } else { "they" }
        ),
        _ => verdict,
    };
    let mtls = path.starts_with("hbone");
    Ok(Explanation {
        source: source.to_owned(),
        source_identity: src_identity.map(|i| i.to_string()),
        destination: destination.to_owned(),
        service,
        endpoint: format!("{}/{}", dst.namespace(), dst.name),
        endpoint_addr: dst_addr,
        destination_identity: dst.identity().to_string(),
        path,
        waypoint,
        mtls,
        allowed,
        verdict,
        policy,
        rule,
        waypoint_policies: l7,
    })
}
