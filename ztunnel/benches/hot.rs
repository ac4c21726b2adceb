//! The per-connection decisions on ztunnel's hot path, against a cluster-sized snapshot:
//! 10,000 workloads in 100 namespaces, 1,000 services of 10 endpoints each, and two
//! namespace-wide policies per namespace plus a mesh-wide one (201 in all).
//!
//! - `lookup/*`: the outbound route for a service VIP (service, endpoint choice, waypoint
//!   check) and for a pod address, and the inbound workload lookup by address;
//! - `authorize/*`: L4 policy evaluation for a connection that is allowed and one that is
//!   denied (every policy consulted);
//! - `recheck/*`: a new state checked against 10,000 open inbound connections (what every
//!   push costs; a new connection waits for one shard of it at most).
//!
//! Absolute times depend on the machine; compare runs on the same one.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{Criterion, criterion_group, criterion_main};
use hbone::Identity;
use ztunnel::proxy::route::{Route, route};
use ztunnel::state::policy::{Group, Match, Rule, StringMatch};
use ztunnel::state::{
    Action, ConnInfo, NetworkAddress, NetworkMode, Policy, Scope, Service, State, StateConfig, TunnelProtocol,
    Workload, WorkloadType,
};

const NAMESPACES: u32 = 100;
const SERVICES_PER_NAMESPACE: u32 = 10;
const ENDPOINTS_PER_SERVICE: u32 = 10;

fn pod_ip(ns: u32, svc: u32, ep: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, ns as u8, svc as u8, ep as u8 + 1))
}

fn vip(ns: u32, svc: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 20, ns as u8, svc as u8 + 1))
}

fn identity(ns: u32, sa: &str) -> Identity {
    Identity::new("cluster.local", &format!("ns-{ns}"), sa).unwrap()
}

fn workload(ns: u32, svc: u32, ep: u32) -> Workload {
    let name = format!("app-{svc}-{ep}");
    let hostname = format!("app-{svc}.ns-{ns}.svc.cluster.local");
    Workload {
        uid: format!("Kubernetes//Pod/ns-{ns}/{name}"),
        name: name.clone(),
        identity: identity(ns, &format!("app-{svc}")),
        addresses: vec![pod_ip(ns, svc, ep)],
        node: format!("node-{}", ep % 4),
        network: String::new(),
        network_mode: NetworkMode::Standard,
        protocol: TunnelProtocol::Hbone,
        canonical_name: format!("app-{svc}"),
        canonical_revision: "v1".into(),
        workload_name: format!("app-{svc}"),
        workload_type: WorkloadType::Deployment,
        cluster_id: "Kubernetes".into(),
        waypoint: None,
        services: BTreeMap::from([(format!("ns-{ns}/{hostname}"), BTreeMap::from([(80, 8080)]))]),
        authorization_policies: Vec::new(),
        healthy: true,
        locality: Default::default(),
        capacity: 1,
    }
}

fn service(ns: u32, svc: u32) -> Service {
    Service {
        name: format!("app-{svc}"),
        namespace: format!("ns-{ns}"),
        hostname: format!("app-{svc}.ns-{ns}.svc.cluster.local"),
        vips: vec![NetworkAddress { network: String::new(), address: vip(ns, svc) }],
        ports: BTreeMap::from([(80, 8080)]),
        app_protocols: BTreeMap::new(),
        subject_alt_names: Vec::new(),
        waypoint: None,
        load_balancing: Default::default(),
    }
}

fn policy(namespace: String, name: &str, action: Action, m: Match) -> Policy {
    Policy {
        name: name.into(),
        namespace,
        scope: Scope::Namespace,
        action,
        dry_run: false,
        groups: vec![Group { rules: vec![Rule { matches: vec![m] }] }],
        unusable: None,
    }
}

fn snapshot() -> State {
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    let mut policies = Vec::new();
    for ns in 0..NAMESPACES {
        for svc in 0..SERVICES_PER_NAMESPACE {
            services.push(service(ns, svc));
            workloads.extend((0..ENDPOINTS_PER_SERVICE).map(|ep| workload(ns, svc, ep)));
        }
        // Its own namespace and the frontends may connect, on the service port only; nobody
        // may reach the debug port.
        let allow = Match {
            namespaces: vec![StringMatch::Exact(format!("ns-{ns}")), StringMatch::Exact("frontend".into())],
            destination_ports: vec![8080],
            ..Match::default()
        };
        policies.push(policy(format!("ns-{ns}"), "allow-own-and-frontend", Action::Allow, allow));
        let deny = Match { destination_ports: vec![9090], ..Match::default() };
        policies.push(policy(format!("ns-{ns}"), "deny-debug", Action::Deny, deny));
    }
    let mesh_wide = Match { principals: vec![StringMatch::Suffix("/sa/banned".into())], ..Match::default() };
    policies.push(policy("istio-system".into(), "deny-banned", Action::Deny, mesh_wide));
    State::new(StateConfig::default(), workloads, services, policies).unwrap()
}

fn lookups(c: &mut Criterion) {
    let state = snapshot();
    let src = state.workload_by_ip(pod_ip(3, 4, 5)).unwrap().clone();
    // The verdicts timed: a VIP resolves through its service to an endpoint's target port, a
    // pod address to that pod.
    let via_vip = route(&state, Some(&src), SocketAddr::new(vip(77, 7), 80), 15008);
    assert!(matches!(via_vip, Route::Hbone { service: Some(_), target, .. } if target.port() == 8080), "{via_vip:?}");
    let to_pod = route(&state, Some(&src), SocketAddr::new(pod_ip(77, 7, 7), 8080), 15008);
    assert!(
        matches!(&to_pod, Route::Hbone { workload, .. } if workload.addresses[0] == pod_ip(77, 7, 7)),
        "{to_pod:?}"
    );
    assert!(state.workload_by_ip(pod_ip(42, 3, 9)).is_some());
    let mut g = c.benchmark_group("lookup");
    g.bench_function("outbound route to a service VIP", |b| {
        b.iter(|| route(&state, Some(&src), black_box(SocketAddr::new(vip(77, 7), 80)), 15008))
    });
    g.bench_function("outbound route to a pod address", |b| {
        b.iter(|| route(&state, Some(&src), black_box(SocketAddr::new(pod_ip(77, 7, 7), 8080)), 15008))
    });
    g.bench_function("inbound workload by address", |b| b.iter(|| state.workload_by_ip(black_box(pod_ip(42, 3, 9)))));
    g.finish();
}

fn authorization(c: &mut Criterion) {
    let state = snapshot();
    let dst = state.workload_by_ip(pod_ip(42, 3, 9)).unwrap().clone();
    let caller = identity(42, "app-1");
    let outsider = identity(7, "app-1");
    let conn = |src| ConnInfo {
        src_identity: Some(src),
        src_ip: pod_ip(42, 1, 1),
        dst_workload: &dst,
        dst_ip: dst.addresses[0],
        dst_port: 8080,
    };
    let (allowed, denied) = (conn(&caller), conn(&outsider));
    assert!(state.authorize(&allowed).allowed);
    assert!(!state.authorize(&denied).allowed);
    let mut g = c.benchmark_group("authorize");
    g.bench_function("allowed: own namespace", |b| b.iter(|| state.authorize(black_box(&allowed))));
    g.bench_function("denied: no ALLOW matches", |b| b.iter(|| state.authorize(black_box(&denied))));
    g.finish();
}

fn recheck(c: &mut Criterion) {
    let state = snapshot();
    let handle = ztunnel::state::StateHandle::new(snapshot());
    let version = handle.version();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ztunnel::metrics::Metrics::register(&mut registry);
    let admitted = ztunnel::proxy::admitted::Admitted::default();
    let callers: Vec<Identity> = (0..NAMESPACES).map(|ns| identity(ns, "app-1")).collect();
    let mut held = Vec::new();
    for ns in 0..NAMESPACES {
        for i in 0..100 {
            let dst = state.workload_by_ip(pod_ip(ns, i % SERVICES_PER_NAMESPACE, i / SERVICES_PER_NAMESPACE)).unwrap();
            let d = ztunnel::proxy::admitted::Decided {
                src_identity: Some(&callers[ns as usize]),
                src_ip: pod_ip(ns, 1, 1),
                dst,
                dst_ip: dst.addresses[0],
                dst_port: 8080,
                version,
            };
            held.push(admitted.admit(d, &handle).expect("allowed"));
        }
    }
    assert_eq!(admitted.len(), 10_000);
    assert_eq!(admitted.recheck(&state, &metrics), 0, "the same state keeps every connection");
    let mut g = c.benchmark_group("recheck");
    g.bench_function("10,000 open connections, none refused", |b| {
        b.iter(|| admitted.recheck(black_box(&state), &metrics))
    });
    g.finish();
    drop(held);
}

criterion_group!(benches, lookups, authorization, recheck);
criterion_main!(benches);
