//! Who may connect to a workload that has a waypoint: resolution of the waypoint to identities,
//! the exemptions, and the denials.

use http::StatusCode;

use super::support::*;
use crate::state::{GatewayAddress, GatewayDestination, NetworkAddress, State, StateConfig, WaypointDenial, Workload};

const WP_KEY: &str = "shop/waypoint.shop.svc.cluster.local";

fn by_host() -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Hostname {
            namespace: "shop".into(),
            hostname: "waypoint.shop.svc.cluster.local".into(),
        },
        hbone_mtls_port: 15008,
    }
}

fn by_addr(addr: &str, network: &str) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress { network: network.into(), address: ip(addr) }),
        hbone_mtls_port: 15008,
    }
}

/// A waypoint pod of `shop/waypoint` (service account `waypoint`, or `sa`).
fn waypoint_pod(name: &str, sa: &str, addr: &str) -> Workload {
    let mut w = workload(name, "shop", sa, addr);
    w.services.insert(WP_KEY.into(), [(15008, 15008)].into_iter().collect());
    w
}

fn with_waypoint(name: &str, addr: &str, gw: GatewayAddress) -> Workload {
    let mut w = workload(name, "shop", name, addr);
    w.waypoint = Some(gw);
    w
}

/// `shop/waypoint` (VIP 10.96.0.9) with pods wp-0 (ready) and wp-1 (not ready, another service
/// account), plus `workloads`.
fn state(workloads: Vec<Workload>) -> State {
    let mut wp1 = waypoint_pod("wp-1", "waypoint-canary", "10.0.0.21");
    wp1.healthy = false;
    let mut all = vec![waypoint_pod("wp-0", "waypoint", "10.0.0.20"), wp1];
    all.extend(workloads);
    let svc = service("shop", "waypoint", "10.96.0.9", &[(15008, 15008)]);
    State::new(StateConfig::default(), all, vec![svc], vec![]).unwrap()
}

#[test]
fn a_hostname_waypoint_admits_only_its_pods_identities() {
    let s = state(vec![with_waypoint("web", "10.0.0.2", by_host())]);
    let gate = s.waypoint_gate(s.workload_by_uid("web").unwrap()).expect("web is behind its waypoint");
    assert_eq!(gate.name(), WP_KEY);
    // A pod that is not ready still holds the waypoint's identity: its connections stay valid.
    assert_eq!(gate.identities(), [id("shop", "waypoint"), id("shop", "waypoint-canary")]);
    assert_eq!(gate.admit(Some(&id("shop", "waypoint"))), Ok(()));
    assert_eq!(gate.admit(Some(&id("shop", "waypoint-canary"))), Ok(()));

    for peer in [Some(id("tools", "client")), Some(id("shop", "web")), None] {
        let denial = gate.admit(peer.as_ref()).unwrap_err();
        assert_eq!(denial, WaypointDenial::Bypassed { waypoint: WP_KEY }, "{peer:?}");
        assert_eq!(denial.reason(), "bypassed_waypoint");
        assert_eq!(denial.status(), StatusCode::UNAUTHORIZED);
        assert!(denial.to_string().starts_with(&format!("bypassed waypoint {WP_KEY}")), "{denial}");
    }
}

#[test]
fn address_waypoints_resolve_to_the_pod_or_the_services_pods() {
    let s = state(vec![
        with_waypoint("by-pod-ip", "10.0.0.2", by_addr("10.0.0.20", "")),
        with_waypoint("by-vip", "10.0.0.3", by_addr("10.96.0.9", "")),
    ]);
    let pod = s.waypoint_gate(s.workload_by_uid("by-pod-ip").unwrap()).unwrap();
    assert_eq!(pod.name(), "10.0.0.20:15008");
    assert_eq!(pod.identities(), [id("shop", "waypoint")], "an IP is that one workload");
    let vip = s.waypoint_gate(s.workload_by_uid("by-vip").unwrap()).unwrap();
    assert_eq!(vip.identities(), [id("shop", "waypoint"), id("shop", "waypoint-canary")]);
}

#[test]
fn a_waypoint_that_does_not_resolve_refuses_everyone() {
    let unknown_host = GatewayAddress {
        destination: GatewayDestination::Hostname { namespace: "shop".into(), hostname: "gone.shop.svc".into() },
        hbone_mtls_port: 15008,
    };
    let mut empty_svc = by_host();
    empty_svc.destination =
        GatewayDestination::Hostname { namespace: "shop".into(), hostname: "empty.shop.svc.cluster.local".into() };
    let cases = [
        ("unknown-host", unknown_host, "waypoint service is not known"),
        ("unknown-addr", by_addr("10.0.0.99", ""), "no workload or service has the waypoint's address"),
        ("remote", by_addr("10.0.0.20", "west"), "waypoint address is on another network"),
        ("no-pods", empty_svc, "waypoint service has no pods"),
    ];
    let workloads =
        cases.iter().enumerate().map(|(i, (n, gw, _))| with_waypoint(n, &format!("10.0.1.{i}"), gw.clone()));
    let mut s = state(workloads.collect());
    // `empty` exists but nothing backs it.
    let mut services: Vec<_> = s.services().map(|x| (**x).clone()).collect();
    services.push(service("shop", "empty", "10.96.0.10", &[]));
    s = State::new(StateConfig::default(), s.workloads().map(|w| (**w).clone()).collect(), services, vec![]).unwrap();
    for (name, _, why) in cases {
        let gate = s.waypoint_gate(s.workload_by_uid(name).unwrap()).expect(name);
        assert!(gate.identities().is_empty(), "{name}");
        let denial = gate.admit(Some(&id("shop", "waypoint"))).unwrap_err();
        assert!(matches!(denial, WaypointDenial::Unresolved { why: w, .. } if w == why), "{name}: {denial:?}");
        assert_eq!(denial.reason(), "waypoint_unresolved");
        assert_eq!(denial.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(gate.admit(None).is_err(), "{name}");
    }
}

#[test]
fn not_gated_without_a_waypoint_of_its_own_or_when_it_is_the_waypoint() {
    // The waypoint's own pod, under a namespace-wide label naming that same waypoint.
    let mut wp_self = waypoint_pod("wp-2", "waypoint", "10.0.0.22");
    wp_self.waypoint = Some(by_host());
    let plain = workload("plain", "shop", "plain", "10.0.0.4");
    // Behind a Service that has a waypoint, without one of its own: Istio lets pod-addressed
    // traffic to it through, so the destination does not gate it.
    let mut svc_only = workload("svc-only", "shop", "svc-only", "10.0.0.5");
    svc_only.services.insert("shop/reviews.shop.svc.cluster.local".into(), Default::default());
    let mut reviews = service("shop", "reviews", "10.96.0.11", &[(80, 8080)]);
    reviews.waypoint = Some(by_host());
    let s = state(vec![wp_self, plain, svc_only]);
    let mut services: Vec<_> = s.services().map(|x| (**x).clone()).collect();
    services.push(reviews);
    let s =
        State::new(StateConfig::default(), s.workloads().map(|w| (**w).clone()).collect(), services, vec![]).unwrap();
    for name in ["wp-2", "plain", "svc-only", "wp-0"] {
        assert!(s.waypoint_gate(s.workload_by_uid(name).unwrap()).is_none(), "{name} must not be gated");
    }
}

#[test]
fn workloads_behind_one_waypoint_share_one_resolution() {
    let s = state(vec![with_waypoint("a", "10.0.0.2", by_host()), with_waypoint("b", "10.0.0.3", by_host())]);
    let a = s.waypoint_gate(s.workload_by_uid("a").unwrap()).unwrap();
    let b = s.waypoint_gate(s.workload_by_uid("b").unwrap()).unwrap();
    assert!(std::ptr::eq(a, b), "resolved once per GatewayAddress, not per workload");
}

#[test]
fn services_are_found_by_namespace_and_hostname() {
    let s = state(vec![]);
    assert_eq!(s.service_by_host("shop", "waypoint.shop.svc.cluster.local").unwrap().name, "waypoint");
    assert!(s.service_by_host("tools", "waypoint.shop.svc.cluster.local").is_none());
    assert!(s.service_by_host("shop", "waypoint").is_none());
}
