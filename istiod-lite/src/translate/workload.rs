//! `v1/Pod` → `istio.workload.Workload`.
//!
//! Every pod with an IP that is not on the host network and has not finished is a workload,
//! enrolled or not (as in Istio): enrollment only sets `tunnel_protocol` to HBONE. Endpoints
//! of a Service come from its selector matching the pod's labels; a Service without a selector
//! takes its endpoints from EndpointSlices whose endpoints reference the pod (`targetRef`).
//! The locality is the topology labels of the pod's Node, as Istio reads them; a pod whose
//! Node is unknown (or unlabelled) has none. Istio sends no capacity for pods.

use std::collections::HashMap;
use std::net::IpAddr;

use proto::istio::workload::{Locality, Port, PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType};

use super::waypoint::{self, For, ip_bytes};
use super::{DATAPLANE_MODE_LABEL, MeshConfig, authz, peer_authn};
use crate::k8s::core::{IntOrString, Pod, Service};
use crate::k8s::selects;
use crate::model::{Model, in_namespace};

/// Label Kubernetes puts on a Service's EndpointSlices.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label on a ReplicaSet's pods: the ReplicaSet's name is `<deployment>-<hash>`.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Label on a waypoint's own pods.
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Node label: the region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label: the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Node label (Istio's): the subzone.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// Whether the pod is a workload at all.
pub fn is_workload(pod: &Pod) -> bool {
    let done = matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed"));
    !done && !pod.spec.host_network && !addresses(pod).is_empty()
}

/// `status.podIPs`, else `status.podIP`, without duplicates.
pub fn addresses(pod: &Pod) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for a in pod.status.pod_ip.iter().chain(pod.status.pod_ips.iter().map(|p| &p.ip)) {
        if let Ok(ip) = a.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Whether the pod's traffic is captured: its own label, else its namespace's.
pub fn enrolled(model: &Model, pod: &Pod) -> bool {
    match pod.metadata.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("ambient") => true,
        Some(_) => false,
        None => model
            .namespaces
            .get(&pod.metadata.namespace)
            .and_then(|n| n.metadata.labels.get(DATAPLANE_MODE_LABEL))
            .is_some_and(|v| v == "ambient"),
    }
}

/// Istio's canonical service name and revision.
pub fn canonical(pod: &Pod, workload_name: &str) -> (String, String) {
    let l = &pod.metadata.labels;
    let first = |keys: &[&str]| keys.iter().find_map(|k| l.get(*k)).cloned();
    let name = first(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
        .unwrap_or_else(|| workload_name.to_owned());
    let rev = first(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
        .unwrap_or_else(|| "latest".to_owned());
    (name, rev)
}

/// The controller behind the pod: a Deployment (through its ReplicaSet), a Job, else the pod.
pub fn workload_name_and_type(pod: &Pod) -> (String, WorkloadType) {
    let hash = pod.metadata.labels.get(POD_TEMPLATE_HASH_LABEL);
    for o in &pod.metadata.owner_references {
        match o.kind.as_str() {
            "ReplicaSet" => {
                if let Some(dep) = hash.and_then(|h| o.name.strip_suffix(h.as_str())).and_then(|d| d.strip_suffix('-'))
                {
                    return (dep.to_owned(), WorkloadType::Deployment);
                }
            }
            "Job" => return (o.name.clone(), WorkloadType::Job),
            _ => {}
        }
    }
    (pod.metadata.name.clone(), WorkloadType::Pod)
}

/// The locality of the pod's node; `None` when the node is unknown or has no topology label.
pub fn locality(model: &Model, pod: &Pod) -> Option<Locality> {
    let labels = &model.nodes.get(&pod.spec.node_name)?.metadata.labels;
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let l = Locality { region: get(REGION_LABEL), zone: get(ZONE_LABEL), subzone: get(SUBZONE_LABEL) };
    (l != Locality::default()).then_some(l)
}

fn ready(pod: &Pod) -> bool {
    pod.status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

fn named_port(pod: &Pod, name: &str) -> Option<u32> {
    pod.spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| u32::from(p.container_port))
}

/// The pod's ports for one service; named target ports the pod lacks are left out.
fn port_list(pod: &Pod, svc: &Service) -> PortList {
    let ports = svc
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            let target_port = match &p.target_port {
                None => u32::from(p.port),
                Some(IntOrString::Int(n)) => u32::from(*n),
                Some(IntOrString::String(name)) => named_port(pod, name)?,
            };
            Some(Port { service_port: u32::from(p.port), target_port, app_protocol: 0 })
        })
        .collect();
    PortList { ports }
}

/// The pod's ports for a selector-less service, from the EndpointSlices that list the pod.
fn slice_port_list(model: &Model, pod: &Pod, svc: &Service) -> Option<PortList> {
    let ns = &pod.metadata.namespace;
    let mut ports = Vec::new();
    let mut found = false;
    for (_, slice) in in_namespace(&model.endpoint_slices, ns) {
        if slice.metadata.labels.get(SERVICE_NAME_LABEL) != Some(&svc.metadata.name) {
            continue;
        }
        let lists_pod = slice.endpoints.iter().any(|e| {
            e.target_ref.as_ref().is_some_and(|r| {
                r.kind == "Pod" && r.name == pod.metadata.name && (r.namespace.is_empty() || r.namespace == *ns)
            })
        });
        if !lists_pod {
            continue;
        }
        found = true;
        for sp in &svc.spec.ports {
            let target = slice.ports.iter().find(|p| p.name == sp.name).and_then(|p| p.port);
            if let Some(t) = target
                && !ports.iter().any(|p: &Port| p.service_port == u32::from(sp.port))
            {
                ports.push(Port { service_port: u32::from(sp.port), target_port: u32::from(t), app_protocol: 0 });
            }
        }
    }
    found.then_some(PortList { ports })
}

/// Translates a pod; `None` if it is not a workload. The second value lists warnings.
pub fn translate(cfg: &MeshConfig, model: &Model, pod: &Pod) -> Option<(Workload, Vec<String>)> {
    if !is_workload(pod) {
        return None;
    }
    let m = &pod.metadata;
    let mut warnings = Vec::new();
    let mut services = HashMap::new();
    for ((_, _), svc) in in_namespace(&model.services, &m.namespace) {
        let list = match &svc.spec.selector {
            Some(sel) if !sel.is_empty() => selects(sel, &m.labels).then(|| port_list(pod, svc)),
            _ => slice_port_list(model, pod, svc),
        };
        if let Some(list) = list {
            services.insert(format!("{}/{}", m.namespace, cfg.hostname(&m.namespace, &svc.metadata.name)), list);
        }
    }
    let own_gateway = m.labels.get(GATEWAY_NAME_LABEL).map(String::as_str);
    let waypoint = match waypoint::resolve(cfg, model, &m.namespace, &m.labels, For::Workload, own_gateway) {
        Ok(w) => w,
        Err(w) => {
            warnings.push(w);
            None
        }
    };
    let mut authorization_policies = authz::selected(cfg, model, &m.namespace, &m.labels);
    authorization_policies.extend(peer_authn::workload_policies(cfg, model, &m.namespace, &m.labels));
    let (workload_name, workload_type) = workload_name_and_type(pod);
    let (canonical_name, canonical_revision) = canonical(pod, &workload_name);
    let tunnel = if enrolled(model, pod) { TunnelProtocol::Hbone } else { TunnelProtocol::None };
    let status = if ready(pod) { WorkloadStatus::Healthy } else { WorkloadStatus::Unhealthy };
    let workload = Workload {
        uid: cfg.pod_uid(&m.namespace, &m.name),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        addresses: addresses(pod).into_iter().map(|ip| ip_bytes(ip).into()).collect(),
        tunnel_protocol: tunnel as i32,
        trust_domain: if cfg.trust_domain == "cluster.local" { String::new() } else { cfg.trust_domain.clone() },
        service_account: pod.spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
        waypoint,
        node: pod.spec.node_name.clone(),
        canonical_name,
        canonical_revision,
        workload_type: workload_type as i32,
        workload_name,
        services,
        authorization_policies,
        status: status as i32,
        cluster_id: cfg.cluster_id.clone(),
        locality: locality(model, pod),
        ..Default::default()
    };
    Some((workload, warnings))
}
