//! The waypoint picks endpoints by Istio's rules for the service (`load_balancing` against the
//! waypoint's own workload, declared ports, the local network), and balances by its own policy
//! over what those rules leave.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use proto::istio::workload as pbw;
use proto::mesh::waypoint::v1 as pb;
use support::*;

use pbw::load_balancing::{Mode, Scope};

fn lb(mode: Mode, scopes: &[Scope]) -> pbw::LoadBalancing {
    pbw::LoadBalancing {
        mode: mode as i32,
        routing_preference: scopes.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    }
}

/// Who answered `n` requests for `/`.
async fn answered(c: &mut Client, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.get("/").await;
        let who = if r.status == 200 { r.backend().to_owned() } else { format!("status {}", r.status.as_u16()) };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

fn no_endpoint_metric(service: &str, reason: &str) -> String {
    format!("waypoint_no_endpoint_total{{service=\"{}\",reason=\"{reason}\"}} 1", host(service))
}

/// Waits until the waypoint has found its own workload.
async fn until_it_knows_itself(w: &World) {
    w.until("the waypoint's own workload", |s| s.source().is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sends_only_to_the_waypoints_node_and_never_elsewhere() {
    let w = World::new([6, 1]).await;
    let local = w.backend("local").await;
    let remote = w.backend("remote").await;
    w.place("local", Placement::new(WAYPOINT_NODE, "z1"));
    w.place("remote", Placement::new("node-x", "z1"));
    // Istio's translation of `internalTrafficPolicy: Local`.
    w.service_balanced("api", 1, &[&local, &remote], lb(Mode::Strict, &[Scope::Node]));
    w.until_endpoints("api", 2).await;
    w.settle().await;

    // The waypoint's own workload is not known yet: STRICT cannot be satisfied, so nothing is
    // dialled (fail closed), and the answer says why.
    let mut c = w.h1(w.vip(1)).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(w.metrics().contains(&no_endpoint_metric("api", "strict_source_unknown")), "{}", w.metrics());
    assert_eq!(local.behaviour.seen.load(Ordering::Relaxed) + remote.behaviour.seen.load(Ordering::Relaxed), 0);

    w.waypoint_at(&Placement::new(WAYPOINT_NODE, "z1"));
    until_it_knows_itself(&w).await;
    let mut c = w.h2(w.vip(1)).await;
    assert_eq!(answered(&mut c, 20).await, HashMap::from([("local".into(), 20)]));

    // The node's endpoint failing is no reason to leave the node: STRICT never falls over.
    local.behaviour.fail.store(true, Ordering::Relaxed);
    let seen = answered(&mut c, 10).await;
    assert_eq!(seen, HashMap::from([("status 500".into(), 10)]), "{seen:?}");
    assert_eq!(remote.behaviour.seen.load(Ordering::Relaxed), 0, "the other node's endpoint is never dialled");

    // Moved to a node with no endpoint: none qualifies.
    w.waypoint_at(&Placement::new("node-y", "z1"));
    w.until("the waypoint on node-y", |s| s.source().is_some_and(|me| me.node == "node-y")).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(w.metrics().contains(&no_endpoint_metric("api", "strict_locality")), "{}", w.metrics());
    assert_eq!(remote.behaviour.seen.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_prefers_the_waypoints_zone_and_falls_over_when_it_is_ejected_or_gone() {
    let w = World::new([6, 2]).await;
    let near = w.backend("near").await;
    let far = w.backend("far").await;
    // The closest of all, but on another network: never dialled (no network gateway).
    let remote = w.backend("remote").await;
    w.place("near", Placement::new("node-n", "z1"));
    w.place("far", Placement::new("node-f", "z2"));
    w.place("remote", Placement::new(WAYPOINT_NODE, "z1").on_network("west"));
    w.waypoint_at(&Placement::new(WAYPOINT_NODE, "z1"));
    // Istio's translation of `trafficDistribution: PreferClose`.
    let prefer_close = lb(Mode::Failover, &[Scope::Network, Scope::Region, Scope::Zone]);
    w.service_balanced("api", 1, &[&near, &far, &remote], prefer_close.clone());
    w.backend_policy(&pb::BackendPolicy {
        hostname: host("api"),
        load_balancer: pb::backend_policy::LoadBalancer::RoundRobin as i32,
        outlier_consecutive_errors: 1,
        outlier_ejection: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        ..Default::default()
    });
    w.until_endpoints("api", 2).await;
    until_it_knows_itself(&w).await;
    w.settle().await;

    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(answered(&mut c, 20).await, HashMap::from([("near".into(), 20)]), "the zone's endpoint only");

    // The zone's endpoint fails once and is ejected: the next rank takes over.
    near.behaviour.fail.store(true, Ordering::Relaxed);
    let seen = answered(&mut c, 11).await;
    assert_eq!(seen, HashMap::from([("status 500".into(), 1), ("far".into(), 10)]), "{seen:?}");

    // Gone from the zone (not ready): the next rank too, with a fresh balancer state.
    w.service_balanced("api", 1, &[&far, &remote], prefer_close);
    w.until_endpoints("api", 1).await;
    assert_eq!(answered(&mut c, 5).await, HashMap::from([("far".into(), 5)]));
    assert_eq!(remote.behaviour.seen.load(Ordering::Relaxed), 0, "another network's endpoint is never dialled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_without_its_own_workload_treats_every_locality_alike() {
    let w = World::new([6, 3]).await;
    let near = w.backend("near").await;
    let far = w.backend("far").await;
    w.place("near", Placement::new(WAYPOINT_NODE, "z1"));
    w.place("far", Placement::new("node-f", "z2"));
    w.service_balanced("api", 1, &[&near, &far], lb(Mode::Failover, &[Scope::Region, Scope::Zone, Scope::Node]));
    w.backend_policy(&pb::BackendPolicy {
        hostname: host("api"),
        load_balancer: pb::backend_policy::LoadBalancer::RoundRobin as i32,
        ..Default::default()
    });
    w.until_endpoints("api", 2).await;
    w.settle().await;
    assert!(w.state.load().source().is_none());

    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(answered(&mut c, 10).await, HashMap::from([("near".into(), 5), ("far".into(), 5)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_the_service_does_not_declare_has_no_endpoint() {
    let w = World::new([6, 4]).await;
    let a = w.backend("a").await;
    w.service("api", 1, &[&a]);
    w.until_endpoints("api", 1).await;
    w.settle().await;

    let mut c = w.h1_to(SocketAddr::new(w.vip(1), 81)).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(w.metrics().contains(&no_endpoint_metric("api", "port_not_declared")), "{}", w.metrics());
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 0, "the endpoint's own port map is not enough");

    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/").await.status, 200, "the declared port is served");
}
