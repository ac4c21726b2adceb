//! Builders for test workloads, services and policies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hbone::Identity;

use crate::state::policy::{Group, Match, Rule};
use crate::state::workload::PortMap;
use crate::state::{Action, ConnInfo, NetworkMode, Policy, Scope, Service, TunnelProtocol, Workload, WorkloadType};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// A healthy HBONE workload `ns/name` with uid `name`, running as `sa`.
pub fn workload(name: &str, ns: &str, sa: &str, addr: &str) -> Workload {
    Workload {
        uid: name.to_owned(),
        name: name.to_owned(),
        identity: id(ns, sa),
        addresses: vec![ip(addr)],
        node: "node-a".to_owned(),
        network: String::new(),
        network_mode: NetworkMode::Standard,
        protocol: TunnelProtocol::Hbone,
        canonical_name: name.to_owned(),
        canonical_revision: "v1".to_owned(),
        workload_name: name.to_owned(),
        workload_type: WorkloadType::Deployment,
        cluster_id: "Kubernetes".to_owned(),
        waypoint: None,
        services: BTreeMap::new(),
        authorization_policies: Vec::new(),
        healthy: true,
        locality: Default::default(),
        capacity: 1,
    }
}

pub fn service(ns: &str, name: &str, vip: &str, ports: &[(u16, u16)]) -> Service {
    Service {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        vips: vec![crate::state::NetworkAddress { network: String::new(), address: ip(vip) }],
        ports: ports.iter().copied().collect::<PortMap>(),
        app_protocols: BTreeMap::new(),
        subject_alt_names: Vec::new(),
        waypoint: None,
        load_balancing: Default::default(),
    }
}

pub fn policy(ns: &str, name: &str, scope: Scope, action: Action, groups: Vec<Group>) -> Policy {
    Policy { name: name.to_owned(), namespace: ns.to_owned(), scope, action, dry_run: false, groups, unusable: None }
}

/// One group with one rule whose alternatives are `matches`.
pub fn group(matches: Vec<Match>) -> Group {
    Group { rules: vec![Rule { matches }] }
}

/// A connection from `src` (plaintext when `None`) at `src_ip` to `dst` on its first address.
pub fn conn<'a>(src: Option<&'a Identity>, src_ip: &str, dst: &'a Workload, port: u16) -> ConnInfo<'a> {
    ConnInfo { src_identity: src, src_ip: ip(src_ip), dst_workload: dst, dst_ip: dst.addresses[0], dst_port: port }
}
