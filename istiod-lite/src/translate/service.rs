//! `v1/Service` → `istio.workload.Service`.
//!
//! VIPs are `spec.clusterIPs` (the primary `spec.clusterIP` first; `None` for headless gives
//! none). Ports carry the numeric `targetPort`, or 0 when it is a name: each workload's
//! `services` entry resolves names against its own container ports, as Istio does. Each
//! port's application protocol is Istio's explicit protocol selection: `appProtocol`, else
//! the port name's `<protocol>[-<suffix>]` (see [`app_protocol`]). Load balancing is Istio's
//! reading of `internalTrafficPolicy`, `trafficDistribution` (or Istio's annotation, on the
//! Service, else on its Namespace) and `publishNotReadyAddresses` (see [`load_balancing`]).

use std::net::IpAddr;

use proto::istio::workload::load_balancing::{HealthPolicy, Mode, Scope};
use proto::istio::workload::{AppProtocol, LoadBalancing, NetworkAddress, Port, Service};

use super::MeshConfig;
use super::waypoint::{self, For, ip_bytes};
use crate::k8s::core::{self, IntOrString};
use crate::model::Model;

/// The xDS resource name of a service: `<namespace>/<hostname>`.
pub fn resource_name(cfg: &MeshConfig, namespace: &str, name: &str) -> String {
    format!("{namespace}/{}", cfg.hostname(namespace, name))
}

/// The service's VIPs, primary first, without duplicates.
pub fn vips(svc: &core::Service) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in svc.spec.cluster_ip.iter().chain(svc.spec.cluster_ips.iter()) {
        if let Ok(ip) = a.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// The protocol a service port declares: `appProtocol` when set (even to something unknown,
/// which then declares nothing: it takes precedence), else the port name up to its first
/// `-`. `http` is HTTP/1.1; `http2` and `kubernetes.io/h2c` HTTP/2; `grpc` and `grpc-web`
/// gRPC; `tcp` and the protocols Istio proxies as TCP (`mongo`, `mysql`, `redis`) TCP;
/// `https` and `tls` TLS. Case does not matter.
pub fn app_protocol(p: &core::ServicePort) -> AppProtocol {
    let declared = match (&p.app_protocol, &p.name) {
        (Some(a), _) => a.as_str(),
        (None, Some(n)) => n.split('-').next().unwrap_or_default(),
        (None, None) => return AppProtocol::Unknown,
    };
    match declared.to_ascii_lowercase().as_str() {
        "http" => AppProtocol::Http11,
        "http2" | "kubernetes.io/h2c" => AppProtocol::Http2,
        "grpc" | "grpc-web" => AppProtocol::Grpc,
        "tcp" | "mongo" | "mysql" | "redis" => AppProtocol::Tcp,
        "https" | "tls" => AppProtocol::Tls,
        _ => AppProtocol::Unknown,
    }
}

/// Istio's annotation for a traffic distribution, read where `spec.trafficDistribution` is
/// absent (or a value Istio does not know): on the Service, else on its Namespace.
pub const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";

/// A preference for nearby endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Distribution {
    /// `PreferSameZone`, or `PreferClose`, its older name.
    SameZone,
    /// `PreferSameNode`.
    SameNode,
}

fn distribution(value: &str, case_insensitive: bool) -> Option<Distribution> {
    let is = |known: &str| if case_insensitive { value.eq_ignore_ascii_case(known) } else { value == known };
    if is("PreferClose") || is("PreferSameZone") {
        Some(Distribution::SameZone)
    } else if is("PreferSameNode") {
        Some(Distribution::SameNode)
    } else {
        None
    }
}

/// `Service.load_balancing` as Istio computes it, and a warning for each value ignored.
///
/// - `internalTrafficPolicy: Local`: only endpoints on the client's node (STRICT, NODE).
/// - Otherwise `trafficDistribution` (exact values), else Istio's annotation
///   [`TRAFFIC_DISTRIBUTION_ANNOTATION`] (any case): `PreferClose` and `PreferSameZone` fail
///   over NETWORK, REGION, ZONE; `PreferSameNode` over NETWORK, REGION, ZONE, SUBZONE, NODE.
///   A field value Istio does not know leaves the annotation to decide, as in Istio.
/// - A Service without the annotation (or with it empty) inherits its Namespace's, as Istio
///   does since istio/istio#58701 (merged February 2026; documented on istio.io under
///   "Traffic Distribution": `spec.trafficDistribution` > Service annotation > Namespace
///   annotation > none). A Service annotation with a value Istio does not know is still the
///   Service's own setting: warned, ignored, and the Namespace's is not read in its place
///   (istiod reads the Namespace's only for a Service without one).
/// - `publishNotReadyAddresses: true` adds the ALLOW_ALL health policy: unready endpoints
///   (workloads sent UNHEALTHY) are used too.
///
/// Unknown values are ignored, never a reason to drop the Service: the API server accepts
/// only known ones, and a newer API server may know more.
pub fn load_balancing(svc: &core::Service, ns: Option<&core::Namespace>) -> (Option<LoadBalancing>, Vec<String>) {
    let spec = &svc.spec;
    let mut warnings = Vec::new();
    let mut lb = match spec.internal_traffic_policy.as_deref() {
        Some("Local") => Some(LoadBalancing {
            routing_preference: vec![Scope::Node as i32],
            mode: Mode::Strict as i32,
            ..Default::default()
        }),
        Some(other) => {
            if other != "Cluster" {
                warnings.push(format!(
                    "spec.internalTrafficPolicy: unknown value {other:?} (known: Cluster, Local); ignored"
                ));
            }
            None
        }
        None => None,
    };
    let from_field = spec.traffic_distribution.as_deref().and_then(|v| {
        let d = distribution(v, false);
        if d.is_none() {
            warnings.push(format!(
                "spec.trafficDistribution: unknown value {v:?} (known: PreferClose, PreferSameZone, PreferSameNode); ignored"
            ));
        }
        d
    });
    let chosen = from_field.or_else(|| {
        let annotation = |meta: &crate::k8s::ObjectMeta| {
            meta.annotations.get(TRAFFIC_DISTRIBUTION_ANNOTATION).filter(|v| !v.is_empty()).cloned()
        };
        let (v, whose) = match annotation(&svc.metadata) {
            Some(v) => (v, String::new()),
            None => {
                let ns = ns?;
                (annotation(&ns.metadata)?, format!("Namespace {} ", ns.metadata.name))
            }
        };
        let d = distribution(&v, true);
        if d.is_none() {
            warnings.push(format!(
                "{whose}metadata.annotations[{TRAFFIC_DISTRIBUTION_ANNOTATION}]: unknown value {v:?} (known: PreferClose, PreferSameZone, PreferSameNode); ignored"
            ));
        }
        d
    });
    if lb.is_none()
        && let Some(d) = chosen
    {
        let scopes: &[Scope] = match d {
            Distribution::SameZone => &[Scope::Network, Scope::Region, Scope::Zone],
            Distribution::SameNode => &[Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node],
        };
        lb = Some(LoadBalancing {
            routing_preference: scopes.iter().map(|s| *s as i32).collect(),
            mode: Mode::Failover as i32,
            ..Default::default()
        });
    }
    if spec.publish_not_ready_addresses {
        lb.get_or_insert_with(LoadBalancing::default).health_policy = HealthPolicy::AllowAll as i32;
    }
    (lb, warnings)
}

/// Translates a service; the second value lists warnings (a dangling waypoint label, a
/// load-balancing setting ignored).
pub fn translate(cfg: &MeshConfig, model: &Model, svc: &core::Service) -> (Service, Vec<String>) {
    let m = &svc.metadata;
    // A Service named like the waypoint it would use is that waypoint's own: never itself.
    let own = Some(m.name.as_str());
    let mut warnings = Vec::new();
    let waypoint = match waypoint::resolve(cfg, model, &m.namespace, &m.labels, For::Service, own) {
        Ok(w) => w,
        Err(w) => {
            warnings.push(w);
            None
        }
    };
    let ports = svc
        .spec
        .ports
        .iter()
        .map(|p| Port {
            service_port: u32::from(p.port),
            target_port: match &p.target_port {
                None => u32::from(p.port),
                Some(IntOrString::Int(n)) => u32::from(*n),
                Some(IntOrString::String(_)) => 0,
            },
            app_protocol: app_protocol(p) as i32,
        })
        .collect();
    let (load_balancing, lb_warnings) = load_balancing(svc, model.namespaces.get(&m.namespace));
    warnings.extend(lb_warnings);
    let service = Service {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        hostname: cfg.hostname(&m.namespace, &m.name),
        addresses: vips(svc)
            .into_iter()
            .map(|ip| NetworkAddress { network: String::new(), address: ip_bytes(ip).into() })
            .collect(),
        ports,
        waypoint,
        load_balancing,
        ..Default::default()
    };
    (service, warnings)
}
