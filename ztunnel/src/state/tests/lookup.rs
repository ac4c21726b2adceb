//! Lookups, endpoint picking, the handle and the config dump.

use std::collections::HashMap;
use std::time::Duration;

use super::support::*;
use crate::state::{NetworkMode, State, StateConfig, StateError, StateHandle, TunnelProtocol, Workload};

const SVC_KEY: &str = "default/reviews.default.svc.cluster.local";

/// A backend of `default/reviews` whose own port map is `ports`.
fn backend(name: &str, addr: &str, ports: &[(u16, u16)]) -> Workload {
    let mut w = workload(name, "default", "reviews", addr);
    w.services.insert(SVC_KEY.into(), ports.iter().copied().collect());
    w
}

#[test]
fn lookups_by_ip_uid_vip_and_key() {
    let a = workload("a", "default", "a", "10.0.0.2");
    let mut v6 = workload("v6", "default", "a", "fd00::2");
    v6.addresses.push(ip("10.0.0.6"));
    let mut remote = workload("remote", "default", "a", "10.0.0.3");
    remote.network = "west".into();
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    let s = State::new(StateConfig::default(), vec![a, v6, remote], vec![svc.clone()], vec![]).unwrap();

    assert_eq!(s.workload_by_ip(ip("10.0.0.2")).unwrap().uid, "a");
    assert_eq!(s.workload_by_ip(ip("::ffff:10.0.0.2")).unwrap().uid, "a", "v4-mapped finds the v4 entry");
    assert_eq!(s.workload_by_ip(ip("fd00::2")).unwrap().uid, "v6");
    assert_eq!(s.workload_by_ip(ip("10.0.0.6")).unwrap().uid, "v6");
    assert!(s.workload_by_ip(ip("10.0.0.3")).is_none(), "other networks are not indexed by IP");
    assert_eq!(s.workload_by_uid("remote").unwrap().network, "west");
    assert!(s.workload_by_uid("nope").is_none());
    assert_eq!(**s.service_by_vip(ip("10.96.0.10")).unwrap(), svc);
    assert!(s.service_by_vip(ip("10.96.0.11")).is_none());
    assert_eq!(s.service_by_key(SVC_KEY).unwrap().name, "reviews");
    assert_eq!(s.counts().to_string(), "3 workloads, 1 services, 0 policies");
    assert_eq!(s.workloads().map(|w| w.uid.as_str()).collect::<Vec<_>>(), ["a", "remote", "v6"]);

    // A workload on the configured network is indexed instead.
    let config = StateConfig { network: "west".into(), ..Default::default() };
    let mut remote = workload("remote", "default", "a", "10.0.0.3");
    remote.network = "west".into();
    let s = State::new(config, vec![remote], vec![], vec![]).unwrap();
    assert_eq!(s.workload_by_ip(ip("10.0.0.3")).unwrap().uid, "remote");
}

#[test]
fn duplicates_are_errors_and_shared_addresses_warnings() {
    let a = workload("a", "default", "a", "10.0.0.2");
    let err = State::new(StateConfig::default(), vec![a.clone(), a.clone()], vec![], vec![]).unwrap_err();
    assert_eq!(err, StateError::DuplicateWorkload("a".into()));
    let svc = service("default", "reviews", "10.96.0.10", &[]);
    let err = State::new(StateConfig::default(), vec![], vec![svc.clone(), svc], vec![]).unwrap_err();
    assert_eq!(err.to_string(), format!("duplicate service {SVC_KEY:?}"));

    let b = workload("b", "default", "b", "10.0.0.2");
    let s = State::new(StateConfig::default(), vec![b, a], vec![], vec![]).unwrap();
    assert_eq!(s.workload_by_ip(ip("10.0.0.2")).unwrap().uid, "a", "lower uid wins");
    assert_eq!(s.warnings(), ["address 10.0.0.2 of workload b is also a's"]);
}

#[test]
fn endpoints_are_healthy_backends_with_mapped_ports() {
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080), (90, 0)]);
    let mapped = backend("mapped", "10.0.0.2", &[(80, 9080), (90, 9090)]);
    let mut sick = backend("sick", "10.0.0.3", &[]);
    sick.healthy = false;
    let unrelated = workload("unrelated", "default", "x", "10.0.0.4");
    let s = State::new(StateConfig::default(), vec![mapped, sick, unrelated], vec![svc.clone()], vec![]).unwrap();
    assert_eq!(s.endpoint_count(&svc), 1);
    for _ in 0..5 {
        let e = s.pick_endpoint(&svc, 80).unwrap();
        assert_eq!((e.workload.uid.as_str(), e.port), ("mapped", 9080), "the workload's own mapping wins");
    }
    assert_eq!(s.pick_endpoint(&svc, 90).unwrap().port, 9090, "named port resolved by the workload");

    // Without a workload mapping: the service's target port, else the port itself.
    let plain = backend("plain", "10.0.0.5", &[]);
    let s = State::new(StateConfig::default(), vec![plain], vec![svc.clone()], vec![]).unwrap();
    assert_eq!(s.pick_endpoint(&svc, 80).unwrap().port, 8080);
    assert!(s.pick_endpoint(&svc, 90).is_none(), "a named port the workload does not resolve");

    // No healthy endpoint: nothing.
    let mut sick = backend("sick", "10.0.0.3", &[]);
    sick.healthy = false;
    let s = State::new(StateConfig::default(), vec![sick], vec![svc.clone()], vec![]).unwrap();
    assert!(s.pick_endpoint(&svc, 80).is_none());
    assert_eq!(s.endpoint_count(&svc), 0);
}

#[test]
fn picking_spreads_over_all_endpoints() {
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    let backends = (1..=3).map(|i| backend(&format!("r{i}"), &format!("10.0.0.{i}"), &[])).collect();
    let s = State::new(StateConfig::default(), backends, vec![svc.clone()], vec![]).unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *seen.entry(s.pick_endpoint(&svc, 80).unwrap().workload.uid.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 100), "round robin is even: {seen:?}");

    // An endpoint that cannot serve the port is skipped without breaking the rotation.
    let svc = service("default", "reviews", "10.96.0.10", &[(90, 0)]);
    let backends = vec![
        backend("r1", "10.0.0.1", &[(90, 9001)]),
        backend("r2", "10.0.0.2", &[]),
        backend("r3", "10.0.0.3", &[(90, 9003)]),
    ];
    let s = State::new(StateConfig::default(), backends, vec![svc.clone()], vec![]).unwrap();
    let ports: Vec<u16> = (0..4).map(|_| s.pick_endpoint(&svc, 90).unwrap().port).collect();
    assert!(ports.contains(&9001) && ports.contains(&9003), "{ports:?}");
}

#[test]
fn a_port_the_service_does_not_declare_has_no_endpoint() {
    // Istio: a service port the Service does not list is not routed (no upstream), even when an
    // endpoint's own port map names it; connecting to the same port on a pod would reach a port
    // the service never exposed.
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    let s = State::new(
        StateConfig::default(),
        vec![backend("plain", "10.0.0.5", &[]), backend("mapped", "10.0.0.6", &[(7000, 7001)])],
        vec![svc.clone()],
        vec![],
    )
    .unwrap();
    for _ in 0..4 {
        assert_eq!(s.pick_endpoint(&svc, 7000), None);
    }
    assert!(s.endpoints(&svc, 7000).is_empty());
    assert_eq!(s.endpoints(&svc, 80).len(), 2);
}

#[test]
fn endpoints_on_another_network_are_never_picked() {
    // Reaching them needs the network's gateway (not implemented): never dial them directly.
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    let mut far = backend("far", "10.0.0.9", &[]);
    far.network = "west".into();
    let s = State::new(StateConfig::default(), vec![far.clone()], vec![svc.clone()], vec![]).unwrap();
    assert_eq!(s.pick_endpoint(&svc, 80), None);
    assert!(s.endpoints(&svc, 80).is_empty());
    assert_eq!(s.endpoint_count(&svc), 0);

    // On the proxy's own network it is local.
    let config = StateConfig { network: "west".into(), ..Default::default() };
    let s = State::new(config, vec![far], vec![svc.clone()], vec![]).unwrap();
    assert_eq!(s.pick_endpoint(&svc, 80).unwrap().workload.uid, "far");
}

#[test]
fn round_robin_stays_even_when_an_endpoint_cannot_serve_the_port() {
    let svc = service("default", "reviews", "10.96.0.10", &[(90, 0)]);
    let backends = vec![
        backend("r1", "10.0.0.1", &[(90, 9001)]),
        backend("r2", "10.0.0.2", &[]),
        backend("r3", "10.0.0.3", &[(90, 9003)]),
    ];
    let s = State::new(StateConfig::default(), backends, vec![svc.clone()], vec![]).unwrap();
    let mut seen: HashMap<u16, usize> = HashMap::new();
    for _ in 0..300 {
        *seen.entry(s.pick_endpoint(&svc, 90).unwrap().port).or_default() += 1;
    }
    assert_eq!(seen, HashMap::from([(9001, 150), (9003, 150)]));
}

#[test]
fn a_new_snapshot_does_not_restart_the_rotation_at_the_same_endpoint() {
    // Snapshots are rebuilt on every change anywhere in the mesh; if each one started at the
    // lowest uid, a busy mesh would send most connections to that one endpoint.
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let backends = (1..=3).map(|i| backend(&format!("r{i}"), &format!("10.0.0.{i}"), &[])).collect();
        let s = State::new(StateConfig::default(), backends, vec![svc.clone()], vec![]).unwrap();
        *seen.entry(s.pick_endpoint(&svc, 80).unwrap().workload.uid.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "first picks of 60 snapshots: {seen:?}");
}

#[tokio::test]
async fn handle_swaps_snapshots_with_versions() {
    let h = StateHandle::default();
    assert_eq!((h.version(), h.load().counts().workloads), (0, 0));
    let mut rx = h.subscribe();
    let clone = h.clone();
    let held = h.snapshot();
    let s =
        State::new(StateConfig::default(), vec![workload("a", "default", "a", "10.0.0.2")], vec![], vec![]).unwrap();
    assert_eq!(clone.store(s), 1);
    tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
    assert_eq!(*rx.borrow(), 1);
    assert_eq!(h.version(), 1);
    assert_eq!(h.load().version(), 1);
    assert!(h.load().workload_by_ip(ip("10.0.0.2")).is_some());
    assert_eq!(held.counts().workloads, 0, "a held snapshot does not change under its reader");
    assert_eq!(h.store(State::empty()), 2);
}

#[test]
fn dump_is_json_with_every_object() {
    let mut a = backend("a", "10.0.0.2", &[(80, 9080)]);
    a.authorization_policies.push("default/p".into());
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    let p = policy("default", "p", crate::state::Scope::WorkloadSelector, crate::state::Action::Allow, vec![]);
    let s = State::new(StateConfig::default(), vec![a], vec![svc], vec![p]).unwrap();
    let v = serde_json::to_value(&s).unwrap();
    let w = &v["workloads"][0];
    assert_eq!(w["identity"], "spiffe://cluster.local/ns/default/sa/reviews");
    assert_eq!(w["namespace"], "default");
    assert_eq!(w["serviceAccount"], "reviews");
    assert_eq!(w["protocol"], "HBONE");
    assert_eq!(w["addresses"][0], "10.0.0.2");
    assert_eq!(w["services"][SVC_KEY]["80"], 9080);
    assert_eq!(v["services"][0]["vips"][0]["address"], "10.96.0.10");
    assert_eq!(v["services"][0]["ports"]["80"], 8080);
    assert_eq!(v["policies"][0]["scope"], "WORKLOAD_SELECTOR");
    assert_eq!(v["policies"][0]["action"], "ALLOW");
    assert_eq!(v["policies"][0]["unusable"], serde_json::Value::Null);
    assert_eq!(v["config"]["rootNamespace"], "istio-system");
}

/// Two host-network pods on node 10.1.0.1 (its address is theirs), one of them behind
/// `default/reviews`, and an ordinary pod.
fn host_network_state() -> (State, crate::state::Service) {
    let svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    let mut agent = backend("agent", "10.1.0.1", &[]);
    agent.network_mode = NetworkMode::HostNetwork;
    agent.protocol = TunnelProtocol::None;
    let mut exporter = workload("exporter", "monitoring", "exporter", "10.1.0.1");
    exporter.network_mode = NetworkMode::HostNetwork;
    exporter.protocol = TunnelProtocol::None;
    let pod = workload("pod", "default", "pod", "10.0.0.2");
    let s = State::new(StateConfig::default(), vec![exporter, agent, pod], vec![svc.clone()], vec![]).unwrap();
    (s, svc)
}

#[test]
fn host_network_workloads_are_not_found_by_their_nodes_address() {
    // istio/ztunnel#1216: the node's address is shared by the node and all its host-network
    // pods; looking it up would name an arbitrary one of them.
    let (s, _) = host_network_state();
    assert!(s.workload_by_ip(ip("10.1.0.1")).is_none());
    assert!(s.workload_by_ip(ip("::ffff:10.1.0.1")).is_none());
    assert!(s.warnings().is_empty(), "sharing the node's address is not a conflict: {:?}", s.warnings());
    // Still known by uid, and still in the snapshot.
    assert!(s.workload_by_uid("agent").unwrap().host_network());
    assert!(s.workload_by_uid("exporter").unwrap().host_network());
    assert!(!s.workload_by_uid("pod").unwrap().host_network());
    assert_eq!(s.counts().workloads, 3);
    assert_eq!(s.workload_by_ip(ip("10.0.0.2")).unwrap().uid, "pod", "ordinary pods are unaffected");
}

#[test]
fn host_network_workloads_remain_service_endpoints_at_the_nodes_address() {
    let (s, svc) = host_network_state();
    assert_eq!(s.endpoint_count(&svc), 1);
    for _ in 0..3 {
        let ep = s.pick_endpoint(&svc, 80).unwrap();
        assert_eq!((ep.workload.uid.as_str(), ep.workload.addresses[0], ep.port), ("agent", ip("10.1.0.1"), 8080));
    }
    assert_eq!(s.endpoints(&svc, 80).len(), 1);
}

#[test]
fn dump_shows_the_network_mode() {
    let (s, _) = host_network_state();
    let v = serde_json::to_value(&s).unwrap();
    let mode =
        |uid: &str| v["workloads"].as_array().unwrap().iter().find(|w| w["uid"] == uid).unwrap()["networkMode"].clone();
    assert_eq!(mode("agent"), "HOST_NETWORK");
    assert_eq!(mode("pod"), "STANDARD");
}
