//! File mode has no controller to create a waypoint's Service: for each waypoint `Gateway`
//! without a Service of its name, one is synthesized (as the Kubernetes-mode deployment would
//! create it), so the waypoint's address (`<name>.<ns>.svc...`) resolves to its pods.

use crate::k8s::core::{IntOrString, Service, ServicePort, ServiceSpec};
use crate::k8s::{Labels, ObjectMeta};
use crate::model::{Kind, Object, ObjectKey};
use crate::translate::WAYPOINT_CLASS;

use super::Located;

/// The label a waypoint's pods carry (Gateway API's), selecting them for its Service.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Services for the waypoint Gateways in `objects` that have none, located at their Gateway.
pub fn synthesize<L: std::borrow::Borrow<Located>>(objects: &[L]) -> Vec<Located> {
    let objects = || objects.iter().map(|o| o.borrow());
    let has_service =
        |ns: &str, name: &str| objects().any(|o| o.object.key() == ObjectKey::new(Kind::Service, ns, name));
    let mut out = Vec::new();
    for o in objects() {
        let Object::Gateway(gw) = &o.object else { continue };
        let (ns, name) = (gw.metadata.namespace.as_str(), gw.metadata.name.as_str());
        if gw.spec.gateway_class_name != WAYPOINT_CLASS || has_service(ns, name) {
            continue;
        }
        // The address a controller would have written to status; else no VIP (clients reach
        // the waypoint by hostname, through its endpoints).
        let vip = gw
            .status
            .addresses
            .iter()
            .find(|a| a.type_.as_deref().is_none_or(|t| t == "IPAddress"))
            .filter(|a| a.value.parse::<std::net::IpAddr>().is_ok())
            .map(|a| a.value.clone());
        let port = gw.spec.listeners.iter().find(|l| l.protocol == "HBONE").map_or(15008, |l| l.port);
        let svc = Service {
            metadata: ObjectMeta { name: name.to_owned(), namespace: ns.to_owned(), ..Default::default() },
            spec: ServiceSpec {
                cluster_ip: vip.clone(),
                cluster_ips: vip.into_iter().collect(),
                ports: vec![ServicePort {
                    name: Some("mesh".into()),
                    port,
                    target_port: Some(IntOrString::Int(port)),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                }],
                selector: Some(Labels::from([(GATEWAY_NAME_LABEL.to_owned(), name.to_owned())])),
                ..Default::default()
            },
        };
        out.push(Located { location: o.location.clone(), object: Object::Service(svc) });
    }
    out
}
