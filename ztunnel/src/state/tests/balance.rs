//! Endpoint choice by a service's load balancing (locality, health policy, passthrough) and by
//! capacity, from the proto fields through to the pick.

use std::collections::HashMap;

use proto::istio::workload as pbw;

use super::support::*;
use crate::state::{LoadBalancing, LoadBalancingMode, Locality, LocalityScope, Service, State, StateConfig, Workload};

const SVC_KEY: &str = "default/reviews.default.svc.cluster.local";

/// A backend of `default/reviews` on `node`, in `zone` of region `r1`.
fn backend(name: &str, addr: &str, node: &str, zone: &str) -> Workload {
    let mut w = workload(name, "default", "reviews", addr);
    w.services.insert(SVC_KEY.into(), Default::default());
    w.node = node.into();
    w.locality = Locality { region: "r1".into(), zone: zone.into(), subzone: String::new() };
    w
}

fn client(node: &str, zone: &str) -> Workload {
    let mut w = workload("client", "default", "client", "10.0.1.1");
    w.node = node.into();
    w.locality = Locality { region: "r1".into(), zone: zone.into(), subzone: String::new() };
    w
}

fn reviews(mode: LoadBalancingMode, prefs: &[LocalityScope]) -> Service {
    let mut svc = service("default", "reviews", "10.96.0.10", &[(80, 8080)]);
    svc.load_balancing = LoadBalancing { mode, routing_preference: prefs.to_vec(), allow_unhealthy: false };
    svc
}

/// Who `src` reaches in `n` picks.
fn picks(s: &State, src: Option<&Workload>, svc: &Service, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        if let Some(e) = s.pick_endpoint_for(src, svc, 80) {
            *seen.entry(e.workload.uid.clone()).or_default() += 1;
        }
    }
    seen
}

#[test]
fn strict_keeps_to_the_clients_node_and_never_falls_over() {
    // Istio's translation of `internalTrafficPolicy: Local`.
    let svc = reviews(LoadBalancingMode::Strict, &[LocalityScope::Node]);
    let here = client("node-a", "z1");
    let s = State::new(
        StateConfig::default(),
        vec![backend("local", "10.0.0.1", "node-a", "z1"), backend("other", "10.0.0.2", "node-b", "z1")],
        vec![svc.clone()],
        vec![],
    )
    .unwrap();
    assert_eq!(picks(&s, Some(&here), &svc, 20), HashMap::from([("local".into(), 20)]));
    assert!(s.pick_endpoint_for(Some(&client("node-c", "z1")), &svc, 80).is_none(), "no endpoint on the node: none");
    // A client the state does not know cannot be placed: fail closed.
    assert!(s.pick_endpoint(&svc, 80).is_none());

    // Every scope must be shared.
    let svc = reviews(LoadBalancingMode::Strict, &[LocalityScope::Region, LocalityScope::Zone]);
    let s = State::new(
        StateConfig::default(),
        vec![backend("z1", "10.0.0.1", "node-b", "z1"), backend("z2", "10.0.0.2", "node-a", "z2")],
        vec![svc.clone()],
        vec![],
    )
    .unwrap();
    assert_eq!(picks(&s, Some(&here), &svc, 10), HashMap::from([("z1".into(), 10)]));
    assert!(s.pick_endpoint_for(Some(&client("node-a", "z3")), &svc, 80).is_none());
}

#[test]
fn failover_prefers_the_closest_rank_present_and_falls_back_in_order() {
    let svc = reviews(LoadBalancingMode::Failover, &[LocalityScope::Region, LocalityScope::Zone, LocalityScope::Node]);
    let mut far = backend("far", "10.0.0.3", "node-x", "z9");
    far.locality.region = "r2".into();
    let all = vec![
        backend("same-node", "10.0.0.1", "node-a", "z1"),
        backend("same-zone", "10.0.0.2", "node-b", "z1"),
        backend("same-region", "10.0.0.4", "node-c", "z2"),
        far.clone(),
    ];
    let s = State::new(StateConfig::default(), all.clone(), vec![svc.clone()], vec![]).unwrap();
    let here = client("node-a", "z1");
    assert_eq!(picks(&s, Some(&here), &svc, 10), HashMap::from([("same-node".into(), 10)]));
    assert_eq!(
        picks(&s, Some(&client("node-x", "z1")), &svc, 10),
        HashMap::from([("same-node".into(), 5), ("same-zone".into(), 5)]),
        "the zone's endpoints before the region's"
    );

    // The closer ones unhealthy: the next rank, then the next.
    let mut sick = all.clone();
    sick[0].healthy = false;
    sick[1].healthy = false;
    let s = State::new(StateConfig::default(), sick.clone(), vec![svc.clone()], vec![]).unwrap();
    assert_eq!(picks(&s, Some(&here), &svc, 10), HashMap::from([("same-region".into(), 10)]));
    sick[2].healthy = false;
    let s = State::new(StateConfig::default(), sick, vec![svc.clone()], vec![]).unwrap();
    assert_eq!(picks(&s, Some(&here), &svc, 10), HashMap::from([("far".into(), 10)]));

    // Standard mode ignores preferences.
    let svc = reviews(LoadBalancingMode::Standard, &[LocalityScope::Node]);
    let s = State::new(StateConfig::default(), all, vec![svc.clone()], vec![]).unwrap();
    assert_eq!(picks(&s, Some(&here), &svc, 40).len(), 4);
}

#[test]
fn an_unknown_scope_is_shared_by_no_endpoint() {
    let svc = reviews(LoadBalancingMode::Strict, &[LocalityScope::Unknown(42)]);
    let s =
        State::new(StateConfig::default(), vec![backend("a", "10.0.0.1", "node-a", "z1")], vec![svc.clone()], vec![])
            .unwrap();
    assert!(s.pick_endpoint_for(Some(&client("node-a", "z1")), &svc, 80).is_none());
}

#[test]
fn capacity_weights_the_rotation_and_zero_takes_nothing() {
    let svc = reviews(LoadBalancingMode::Standard, &[]);
    let mut big = backend("big", "10.0.0.1", "node-a", "z1");
    big.capacity = 3;
    let mut drained = backend("drained", "10.0.0.3", "node-a", "z1");
    drained.capacity = 0;
    let s = State::new(
        StateConfig::default(),
        vec![big, backend("small", "10.0.0.2", "node-a", "z1"), drained.clone()],
        vec![svc.clone()],
        vec![],
    )
    .unwrap();
    assert_eq!(picks(&s, None, &svc, 400), HashMap::from([("big".into(), 300), ("small".into(), 100)]));

    let s = State::new(StateConfig::default(), vec![drained], vec![svc.clone()], vec![]).unwrap();
    assert!(s.pick_endpoint(&svc, 80).is_none());
}

#[test]
fn unhealthy_endpoints_only_when_the_service_allows_them() {
    let mut svc = reviews(LoadBalancingMode::Standard, &[]);
    let mut sick = backend("sick", "10.0.0.1", "node-a", "z1");
    sick.healthy = false;
    let s = State::new(StateConfig::default(), vec![sick.clone()], vec![svc.clone()], vec![]).unwrap();
    assert!(s.pick_endpoint(&svc, 80).is_none(), "all unhealthy: no endpoint, not a random one");
    assert!(s.endpoints(&svc, 80).is_empty());

    svc.load_balancing.allow_unhealthy = true;
    let s = State::new(StateConfig::default(), vec![sick], vec![svc.clone()], vec![]).unwrap();
    assert_eq!(s.pick_endpoint(&svc, 80).unwrap().workload.uid, "sick");
    assert_eq!(s.endpoints(&svc, 80).len(), 1);
    assert_eq!(s.endpoint_count(&svc), 0, "the count is of healthy endpoints");
}

fn pb_service(lb: Option<pbw::LoadBalancing>) -> pbw::Service {
    pbw::Service {
        name: "reviews".into(),
        namespace: "default".into(),
        hostname: "reviews.default.svc.cluster.local".into(),
        load_balancing: lb,
        ..Default::default()
    }
}

#[test]
fn load_balancing_converts_and_fails_closed_on_what_it_does_not_know() {
    use pbw::load_balancing::{HealthPolicy, Mode, Scope};
    let lb = |mode: i32, prefs: Vec<i32>, health: i32| {
        Service::try_from(pb_service(Some(pbw::LoadBalancing {
            routing_preference: prefs,
            mode,
            health_policy: health,
            dns_connect_strategy: 0,
        })))
        .unwrap()
        .load_balancing
    };
    assert_eq!(Service::try_from(pb_service(None)).unwrap().load_balancing, LoadBalancing::default());
    assert_eq!(
        lb(Mode::Strict as i32, vec![Scope::Node as i32], 0),
        LoadBalancing {
            mode: LoadBalancingMode::Strict,
            routing_preference: vec![LocalityScope::Node],
            allow_unhealthy: false
        }
    );
    let all = [Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node, Scope::Cluster, Scope::Network];
    let got = lb(Mode::Failover as i32, all.iter().map(|&s| s as i32).collect(), HealthPolicy::AllowAll as i32);
    assert_eq!(got.mode, LoadBalancingMode::Failover);
    assert!(got.allow_unhealthy);
    assert_eq!(
        got.routing_preference,
        [
            LocalityScope::Region,
            LocalityScope::Zone,
            LocalityScope::Subzone,
            LocalityScope::Node,
            LocalityScope::Cluster,
            LocalityScope::Network
        ]
    );
    assert_eq!(lb(Mode::Passthrough as i32, vec![], 0).mode, LoadBalancingMode::Passthrough);
    assert_eq!(lb(0, vec![Scope::Node as i32], 0).mode, LoadBalancingMode::Standard);
    // Unknown values narrow, never widen.
    assert_eq!(lb(99, vec![], 0).mode, LoadBalancingMode::Strict, "an unknown mode is STRICT");
    assert_eq!(lb(1, vec![0, 77], 0).routing_preference, [LocalityScope::Unknown(0), LocalityScope::Unknown(77)]);
    assert!(!lb(0, vec![], 9).allow_unhealthy, "an unknown health policy keeps healthy only");
}

#[test]
fn locality_and_capacity_convert() {
    let mut w = pbw::Workload {
        uid: "u".into(),
        name: "a".into(),
        namespace: "default".into(),
        locality: Some(pbw::Locality { region: "r".into(), zone: "z".into(), subzone: "s".into() }),
        ..Default::default()
    };
    let got = Workload::try_from(w.clone()).unwrap();
    assert_eq!(got.locality, Locality { region: "r".into(), zone: "z".into(), subzone: "s".into() });
    assert_eq!(got.capacity, 1, "unset capacity is 1");
    w.capacity = Some(0);
    w.locality = None;
    let got = Workload::try_from(w).unwrap();
    assert_eq!((got.capacity, got.locality), (0, Locality::default()));
}

/// The uids of `State::endpoints_for`, in order.
fn admitted(s: &State, src: Option<&Workload>, svc: &Service, port: u16) -> Vec<String> {
    s.endpoints_for(src, svc, port).into_iter().map(|e| e.workload.uid.clone()).collect()
}

#[test]
fn endpoints_for_a_balancing_proxy_follow_the_same_rules_as_a_pick() {
    let here = client("node-a", "z1");
    let mut drained = backend("drained", "10.0.0.3", "node-a", "z1");
    drained.capacity = 0;
    let mut elsewhere = backend("elsewhere", "10.0.0.4", "node-a", "z1");
    elsewhere.network = "other".into();
    let all = vec![
        backend("local", "10.0.0.1", "node-a", "z1"),
        backend("remote", "10.0.0.2", "node-b", "z2"),
        drained,
        elsewhere,
    ];

    // STRICT keeps the client's node only, and nothing for an unknown client.
    let strict = reviews(LoadBalancingMode::Strict, &[LocalityScope::Node]);
    let s = State::new(StateConfig::default(), all.clone(), vec![strict.clone()], vec![]).unwrap();
    assert_eq!(admitted(&s, Some(&here), &strict, 80), ["local"]);
    assert!(admitted(&s, None, &strict, 80).is_empty(), "fail closed");
    assert!(admitted(&s, Some(&here), &strict, 81).is_empty(), "an undeclared port has no endpoint");

    // FAILOVER and STANDARD keep every usable endpoint (the caller ranks them): never one on
    // another network or without capacity.
    for mode in [LoadBalancingMode::Failover, LoadBalancingMode::Standard] {
        let svc = reviews(mode, &[LocalityScope::Zone]);
        let s = State::new(StateConfig::default(), all.clone(), vec![svc.clone()], vec![]).unwrap();
        assert_eq!(admitted(&s, Some(&here), &svc, 80), ["local", "remote"], "{mode:?}");
        assert_eq!(admitted(&s, None, &svc, 80), ["local", "remote"], "{mode:?}");
    }
}

#[test]
fn rank_counts_the_scopes_shared_in_order() {
    let lb = |mode, prefs: &[LocalityScope]| LoadBalancing {
        mode,
        routing_preference: prefs.to_vec(),
        allow_unhealthy: false,
    };
    let here = client("node-a", "z1");
    let same_zone = backend("b", "10.0.0.2", "node-b", "z1");
    let mut other_region = backend("c", "10.0.0.3", "node-a", "z1");
    other_region.locality.region = "r2".into();
    let f = lb(LoadBalancingMode::Failover, &[LocalityScope::Region, LocalityScope::Zone, LocalityScope::Node]);
    assert!(f.ranked());
    assert_eq!(f.rank(Some(&here), &here), 3);
    assert_eq!(f.rank(Some(&here), &same_zone), 2);
    assert_eq!(f.rank(Some(&here), &other_region), 0, "the first scope not shared ends the count");
    assert_eq!(f.rank(None, &same_zone), 0);
    assert!(f.admits(None, &same_zone), "FAILOVER admits everything");

    let s = lb(LoadBalancingMode::Strict, &[LocalityScope::Zone, LocalityScope::Unknown(99)]);
    assert!(!s.admits(Some(&here), &same_zone), "an unknown scope is never shared");
    assert!(!lb(LoadBalancingMode::Strict, &[LocalityScope::Node]).admits(None, &here));
    assert!(!lb(LoadBalancingMode::Strict, &[]).ranked());
    assert!(lb(LoadBalancingMode::Strict, &[]).admits(None, &here), "no preference: nothing to require");
    assert!(!lb(LoadBalancingMode::Passthrough, &[LocalityScope::Node]).ranked());
}
