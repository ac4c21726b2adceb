//! `v1/Pod` → `istio.workload.Workload`.
//!
//! Every pod with an IP that has not finished is a workload, enrolled or not (as in Istio):
//! enrollment only sets `tunnel_protocol` to HBONE. Endpoints of a Service come from its
//! selector matching the pod's labels; a Service without a selector takes its endpoints from
//! EndpointSlices whose endpoints reference the pod (`targetRef`). The locality is the topology
//! labels of the pod's Node, as Istio reads them; a pod whose Node is unknown (or unlabelled)
//! has none. Istio sends no capacity for pods.
//!
//! # Pod lifecycle, as istiod's `podWorkloadBuilder` (pilot/pkg/serviceregistry/kube/controller/ambient/workloads.go)
//!
//! - **Finished** (`status.phase` `Succeeded` or `Failed`): not a workload (istiod's
//!   `kubeutil.CheckPodTerminal`). Its IP is free for another pod, and a finished pod never
//!   serves again. Every other phase is a workload, `Pending` included: a pod with an IP whose
//!   init containers still run is one (istio/istio#48854), as are `Unknown` (the node stopped
//!   reporting; the pod may still serve) and an unset phase (a directory's hand-written pod).
//! - **No IP yet**: not a workload (nothing to address). The IPs are `status.podIPs`, else
//!   `status.podIP`, as istiod's `getPodIPs` reads them; one that does not parse drops the pod,
//!   as in istiod (our sources reject such a pod first, so this does not happen here).
//! - **Being deleted** (`metadata.deletionTimestamp` set): still a workload, UNHEALTHY, whatever
//!   its `Ready` condition (istiod: `!IsPodReady(p) || p.DeletionTimestamp != nil`, after
//!   Kubernetes' EndpointSlice rule that a terminating endpoint is not ready). It stays known
//!   (its identity, its in-flight connections, `publishNotReadyAddresses` services) but new
//!   connections through a Service go elsewhere: no rollout 503s.
//! - **Not ready**: UNHEALTHY. Health is the pod's `Ready` condition only, as istiod's
//!   `IsPodReady` (`Ready` is `True`); container statuses are not read: kubelet already folds
//!   container readiness (and readiness gates) into `Ready`, and `ContainersReady` or
//!   `containerStatuses[].ready` would ignore readiness gates.
//! - **Host network** (`spec.hostNetwork`): a workload, sent with `network_mode: HOST_NETWORK`
//!   (istio/istio#52191, istio/ztunnel#1216): a Service may select it and must reach it, but its
//!   address is the node's, shared, so ztunnel must not look workloads up by it. It is never
//!   HBONE, whatever its labels: Istio's CNI cannot capture a host-network pod (redirection
//!   rules would go into the host's namespace), so it is never enrolled.

use std::collections::HashMap;
use std::net::IpAddr;

use proto::istio::workload::{
    Locality, NetworkMode, Port, PortList, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};

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

/// Whether the pod has finished (`Succeeded` or `Failed`): istiod's `CheckPodTerminal`.
pub fn finished(pod: &Pod) -> bool {
    matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// Whether the pod is a workload at all: not finished, and with an address (see the module
/// docs). Host-network pods are workloads.
pub fn is_workload(pod: &Pod) -> bool {
    !finished(pod) && addresses(pod).is_some_and(|a| !a.is_empty())
}

/// The pod's addresses as istiod reads them: `status.podIPs`, else `status.podIP`; `None` if
/// one does not parse (istiod then drops the pod).
pub fn addresses(pod: &Pod) -> Option<Vec<IpAddr>> {
    let listed: Vec<&str> = if pod.status.pod_ips.is_empty() {
        pod.status.pod_ip.iter().map(String::as_str).filter(|a| !a.is_empty()).collect()
    } else {
        pod.status.pod_ips.iter().map(|p| p.ip.as_str()).collect()
    };
    listed.into_iter().map(|a| a.parse::<IpAddr>().ok()).collect()
}

/// Whether the pod is being deleted: `metadata.deletionTimestamp` is set.
pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.as_deref().is_some_and(|t| !t.is_empty())
}

/// The workload's health: HEALTHY when `Ready` is `True` and the pod is not being deleted.
pub fn status(pod: &Pod) -> WorkloadStatus {
    if ready(pod) && !terminating(pod) { WorkloadStatus::Healthy } else { WorkloadStatus::Unhealthy }
}

/// Whether the pod's traffic is captured: its own label, else its namespace's; never on
/// the host network (Istio's CNI cannot capture it).
pub fn enrolled(model: &Model, pod: &Pod) -> bool {
    if pod.spec.host_network {
        return false;
    }
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

/// istiod's `IsPodReady`: the first `Ready` condition is `True`.
fn ready(pod: &Pod) -> bool {
    pod.status.conditions.iter().find(|c| c.type_ == "Ready").is_some_and(|c| c.status == "True")
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
    if finished(pod) {
        return None;
    }
    let addresses = addresses(pod).filter(|a| !a.is_empty())?;
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
    let network_mode = if pod.spec.host_network { NetworkMode::HostNetwork } else { NetworkMode::Standard };
    let workload = Workload {
        uid: cfg.pod_uid(&m.namespace, &m.name),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        addresses: addresses.into_iter().map(|ip| ip_bytes(ip).into()).collect(),
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
        status: status(pod) as i32,
        network_mode: network_mode as i32,
        cluster_id: cfg.cluster_id.clone(),
        locality: locality(model, pod),
        ..Default::default()
    };
    Some((workload, warnings))
}
