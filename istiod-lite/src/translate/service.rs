//! `v1/Service` → `istio.workload.Service`.
//!
//! VIPs are `spec.clusterIPs` (the primary `spec.clusterIP` first; `None` for headless gives
//! none). Ports carry the numeric `targetPort`, or 0 when it is a name: each workload's
//! `services` entry resolves names against its own container ports, as Istio does. Each
//! port's application protocol is Istio's explicit protocol selection: `appProtocol`, else
//! the port name's `<protocol>[-<suffix>]` (see [`app_protocol`]).

use std::net::IpAddr;

use proto::istio::workload::{AppProtocol, NetworkAddress, Port, Service};

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

/// Translates a service; the second value is a warning (a dangling waypoint label).
pub fn translate(cfg: &MeshConfig, model: &Model, svc: &core::Service) -> (Service, Option<String>) {
    let m = &svc.metadata;
    // A Service named like the waypoint it would use is that waypoint's own: never itself.
    let own = Some(m.name.as_str());
    let (waypoint, warning) = match waypoint::resolve(cfg, model, &m.namespace, &m.labels, For::Service, own) {
        Ok(w) => (w, None),
        Err(w) => (None, Some(w)),
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
        ..Default::default()
    };
    (service, warning)
}
