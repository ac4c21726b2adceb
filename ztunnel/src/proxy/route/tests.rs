//! Route selection: direct, passthrough, and through waypoints (never around them).

use super::*;
use crate::state::{StateConfig, file};

/// `web` (service 10.96.0.5:80 -> 8080) behind whatever `svc_waypoint` names; `db` a pod with
/// `pod_waypoint`; `wp` the waypoint pod (10.0.9.9) behind Service `wp` (10.96.0.99:15008).
fn state(svc_waypoint: &str, pod_waypoint: &str, wp_status: &str) -> State {
    let yaml = format!(
        r#"
workloads:
- name: web
  namespace: shop
  serviceAccount: web
  addresses: ["10.0.0.5"]
  protocol: HBONE
  services: {{"shop/web.shop.svc.cluster.local": {{80: 8080}}}}
- name: legacy
  namespace: shop
  addresses: ["10.0.0.6"]
- name: db
  namespace: shop
  serviceAccount: db
  addresses: ["10.0.0.7"]
  protocol: HBONE
{pod_waypoint}
- name: wp
  namespace: shop
  serviceAccount: wp
  addresses: ["10.0.9.9"]
  status: {wp_status}
  services: {{"shop/wp.shop.svc.cluster.local": {{15008: 15008}}}}
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  addresses: ["10.96.0.5"]
  ports: [{{servicePort: 80, targetPort: 8080}}]
{svc_waypoint}
- name: wp
  namespace: shop
  hostname: wp.shop.svc.cluster.local
  addresses: ["10.96.0.99"]
  ports: [{{servicePort: 15008, targetPort: 15008}}]
"#
    );
    file::parse(&yaml, StateConfig::default()).unwrap()
}

const BY_HOSTNAME: &str = "  waypoint: {hostname: {namespace: shop, hostname: wp.shop.svc.cluster.local}}";
const BY_POD_IP: &str = "  waypoint: {address: \"10.0.9.9\"}";
const BY_VIP: &str = "  waypoint: {address: \"10.96.0.99\"}";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn routes_by_destination_kind() {
    let s = state("", "", "HEALTHY");
    match route(&s, None, addr("10.96.0.5:80"), 15008) {
        Route::Hbone { target, peer, service, .. } => {
            assert_eq!(target, addr("10.0.0.5:8080"));
            assert_eq!(peer, addr("10.0.0.5:15008"));
            assert!(service.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(route(&s, None, addr("10.0.0.5:9000"), 15008), Route::Hbone { .. }));
    assert!(matches!(route(&s, None, addr("10.0.0.6:80"), 15008), Route::Passthrough { workload: Some(_), .. }));
    assert!(matches!(route(&s, None, addr("192.0.2.1:443"), 15008), Route::Passthrough { workload: None, .. }));
}

#[test]
fn a_service_with_a_waypoint_goes_to_the_waypoint_pod_with_the_vip_as_authority() {
    for how in [BY_HOSTNAME, BY_POD_IP, BY_VIP] {
        let s = state(how, "", "HEALTHY");
        match route(&s, None, addr("10.96.0.5:80"), 15008) {
            Route::Waypoint { waypoint, service, workload, target, peer } => {
                assert_eq!(waypoint.name, "wp", "{how}");
                assert_eq!(waypoint.identity().as_str(), "spiffe://cluster.local/ns/shop/sa/wp");
                assert_eq!(service.unwrap().name, "web");
                assert!(workload.is_none());
                assert_eq!(target, addr("10.96.0.5:80"), "{how}: authority is the service VIP:port");
                assert_eq!(peer, addr("10.0.9.9:15008"), "{how}");
            }
            other => panic!("{how}: {other:?}"),
        }
    }
}

#[test]
fn a_pod_with_a_waypoint_goes_to_the_waypoint_with_the_pod_address_as_authority() {
    let s = state("", BY_HOSTNAME, "HEALTHY");
    match route(&s, None, addr("10.0.0.7:5432"), 15008) {
        Route::Waypoint { waypoint, workload, service, target, peer } => {
            assert_eq!(waypoint.name, "wp");
            assert_eq!(workload.unwrap().name, "db");
            assert!(service.is_none());
            assert_eq!(target, addr("10.0.0.7:5432"));
            assert_eq!(peer, addr("10.0.9.9:15008"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_waypoints_own_traffic_goes_direct() {
    let s = state(BY_HOSTNAME, BY_POD_IP, "HEALTHY");
    let wp = s.workload_by_ip("10.0.9.9".parse().unwrap()).unwrap().clone();
    match route(&s, Some(&wp), addr("10.96.0.5:80"), 15008) {
        Route::Hbone { workload, target, .. } => {
            assert_eq!(workload.name, "web");
            assert_eq!(target, addr("10.0.0.5:8080"));
        }
        other => panic!("the waypoint's connection looped: {other:?}"),
    }
    assert!(matches!(route(&s, Some(&wp), addr("10.0.0.7:5432"), 15008), Route::Hbone { .. }));
    // Anyone else still goes through it.
    let web = s.workload_by_ip("10.0.0.5".parse().unwrap()).unwrap().clone();
    assert!(matches!(route(&s, Some(&web), addr("10.0.0.7:5432"), 15008), Route::Waypoint { .. }));
}

#[test]
fn the_waypoints_own_pods_and_service_are_not_redirected_to_it() {
    // As if a namespace-wide use-waypoint label landed on the waypoint's pod and service too.
    let yaml = r#"
workloads:
- name: wp
  namespace: shop
  serviceAccount: wp
  addresses: ["10.0.9.9"]
  waypoint: {address: "10.0.9.9"}
  services: {"shop/wp.shop.svc.cluster.local": {15008: 15008}}
services:
- name: wp
  namespace: shop
  hostname: wp.shop.svc.cluster.local
  addresses: ["10.96.0.99"]
  ports: [{servicePort: 15008, targetPort: 15008}]
  waypoint: {address: "10.96.0.99"}
"#;
    let s = file::parse(yaml, StateConfig::default()).unwrap();
    for dst in ["10.0.9.9:15008", "10.96.0.99:15008"] {
        assert!(matches!(route(&s, None, addr(dst), 15008), Route::Passthrough { .. }), "{dst}");
    }
}

#[test]
fn an_unresolvable_waypoint_refuses_and_never_bypasses() {
    let cases = [
        ("  waypoint: {hostname: {namespace: shop, hostname: nope.shop.svc.cluster.local}}", "HEALTHY", "not known"),
        ("  waypoint: {address: \"10.0.99.1\"}", "HEALTHY", "no workload or service"),
        (BY_POD_IP, "UNHEALTHY", "not ready"),
        // Unhealthy pods are not endpoints, so the service has none.
        (BY_HOSTNAME, "UNHEALTHY", "no healthy endpoint"),
        ("  waypoint: {address: {network: far, address: \"10.0.9.9\"}}", "HEALTHY", "another network"),
    ];
    for (how, status, expect) in cases {
        let s = state(how, "", status);
        match route(&s, None, addr("10.96.0.5:80"), 15008) {
            Route::WaypointUnavailable { destination, why, .. } => {
                assert_eq!(destination, "shop/web");
                assert!(why.contains(expect), "{how}: {why}");
            }
            other => panic!("{how}/{status}: traffic for a service with a waypoint went {other:?}"),
        }
    }
}

#[test]
fn a_workload_waypoint_is_honoured_behind_a_service_without_one() {
    let yaml = r#"
workloads:
- name: web
  namespace: shop
  addresses: ["10.0.0.5"]
  protocol: HBONE
  services: {"shop/web.shop.svc.cluster.local": {80: 8080}}
  waypoint: {address: "10.0.9.9"}
- name: wp
  namespace: shop
  serviceAccount: wp
  addresses: ["10.0.9.9"]
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  addresses: ["10.96.0.5"]
  ports: [{servicePort: 80, targetPort: 8080}]
"#;
    let s = file::parse(yaml, StateConfig::default()).unwrap();
    match route(&s, None, addr("10.96.0.5:80"), 15008) {
        Route::Waypoint { target, peer, workload, .. } => {
            assert_eq!(target, addr("10.0.0.5:8080"));
            assert_eq!(peer, addr("10.0.9.9:15008"));
            assert_eq!(workload.unwrap().name, "web");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_service_port_the_service_does_not_declare_is_refused() {
    let s = state("", "", "HEALTHY");
    match route(&s, None, addr("10.96.0.5:7000"), 15008) {
        Route::NoEndpoint { service } => assert_eq!(service.name, "web"),
        other => panic!("undeclared service port went {other:?}"),
    }
}

/// `web` is dual-stack behind a dual-stack service; `far` backs `remote` from another network.
const DUAL_STACK: &str = r#"
workloads:
- name: web
  namespace: shop
  addresses: ["10.0.0.5", "fd00::5"]
  protocol: HBONE
  services: {"shop/web.shop.svc.cluster.local": {80: 8080}}
- name: far
  namespace: shop
  addresses: ["10.0.0.8"]
  network: west
  protocol: HBONE
  services: {"shop/remote.shop.svc.cluster.local": {80: 8080}}
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  addresses: ["10.96.0.5", "fd00:96::5"]
  ports: [{servicePort: 80, targetPort: 8080}]
- name: remote
  namespace: shop
  hostname: remote.shop.svc.cluster.local
  addresses: ["10.96.0.8"]
  ports: [{servicePort: 80, targetPort: 8080}]
"#;

#[test]
fn a_dual_stack_endpoint_is_dialled_in_the_family_the_client_used() {
    let s = file::parse(DUAL_STACK, StateConfig::default()).unwrap();
    for (dst, target, peer) in
        [("[fd00:96::5]:80", "[fd00::5]:8080", "[fd00::5]:15008"), ("10.96.0.5:80", "10.0.0.5:8080", "10.0.0.5:15008")]
    {
        match route(&s, None, addr(dst), 15008) {
            Route::Hbone { target: t, peer: p, .. } => assert_eq!((t, p), (addr(target), addr(peer)), "{dst}"),
            other => panic!("{dst}: {other:?}"),
        }
    }
    // Dialled by pod address, the address dialled is the one used.
    match route(&s, None, addr("[fd00::5]:9000"), 15008) {
        Route::Hbone { target, peer, .. } => {
            assert_eq!((target, peer), (addr("[fd00::5]:9000"), addr("[fd00::5]:15008")))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ipv4_mapped_destinations_route_as_their_ipv4_address() {
    let s = state("", "", "HEALTHY");
    // The same decision and the same addresses as for the IPv4 form: the peer and :authority
    // the destination checks policy against are never the mapped spelling.
    match route(&s, None, addr("[::ffff:10.0.0.5]:9000"), 15008) {
        Route::Hbone { workload, target, peer, .. } => {
            assert_eq!(workload.name, "web");
            assert_eq!((target, peer), (addr("10.0.0.5:9000"), addr("10.0.0.5:15008")));
        }
        other => panic!("{other:?}"),
    }
    match route(&s, None, addr("[::ffff:10.96.0.5]:80"), 15008) {
        Route::Hbone { target, .. } => assert_eq!(target, addr("10.0.0.5:8080")),
        other => panic!("{other:?}"),
    }
    let s = state("", BY_HOSTNAME, "HEALTHY");
    match route(&s, None, addr("[::ffff:10.0.0.7]:5432"), 15008) {
        Route::Waypoint { target, .. } => assert_eq!(target, addr("10.0.0.7:5432")),
        other => panic!("{other:?}"),
    }
    match route(&s, None, addr("[::ffff:192.0.2.1]:443"), 15008) {
        Route::Passthrough { dst, workload: None, .. } => assert_eq!(dst, addr("192.0.2.1:443")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_service_whose_only_endpoint_is_on_another_network_is_refused_not_dialled() {
    let s = file::parse(DUAL_STACK, StateConfig::default()).unwrap();
    match route(&s, None, addr("10.96.0.8:80"), 15008) {
        Route::NoEndpoint { service } => assert_eq!(service.name, "remote"),
        other => panic!("dialled a workload on another network directly: {other:?}"),
    }
}

#[test]
fn strict_locality_is_applied_against_the_source_and_passthrough_mode_keeps_the_vip() {
    use crate::state::{LoadBalancing, LocalityScope};
    let base = state("", "", "HEALTHY");
    let mut web = (**base.workload_by_ip("10.0.0.5".parse().unwrap()).unwrap()).clone();
    web.node = "node-b".into();
    let mut svc = (**base.service_by_vip("10.96.0.5".parse().unwrap()).unwrap()).clone();
    svc.load_balancing = LoadBalancing {
        mode: LoadBalancingMode::Strict,
        routing_preference: vec![LocalityScope::Node],
        allow_unhealthy: false,
    };
    let mut src = (**base.workload_by_ip("10.0.0.7".parse().unwrap()).unwrap()).clone();
    src.node = "node-a".into();
    let s = State::new(StateConfig::default(), vec![web.clone(), src.clone()], vec![svc.clone()], vec![]).unwrap();
    assert!(
        matches!(route(&s, Some(&src), addr("10.96.0.5:80"), 15008), Route::NoEndpoint { .. }),
        "STRICT node: the only endpoint is on another node"
    );
    src.node = "node-b".into();
    assert!(matches!(route(&s, Some(&src), addr("10.96.0.5:80"), 15008), Route::Hbone { .. }));

    svc.load_balancing.mode = LoadBalancingMode::Passthrough;
    let s = State::new(StateConfig::default(), vec![web], vec![svc], vec![]).unwrap();
    match route(&s, Some(&src), addr("10.96.0.5:80"), 15008) {
        Route::Passthrough { dst, workload: None, service: Some(svc) } => {
            assert_eq!((dst, svc.name.as_str()), (addr("10.96.0.5:80"), "web"));
        }
        other => panic!("{other:?}"),
    }
}

/// Istio's ztunnel host-network case: two host-network pods on node 10.1.0.1, `agent` behind
/// service `agent` (10.96.0.30:80 -> 8080) and put behind waypoint `wp` by a use-waypoint
/// label, `other` not behind any service; `agent-wp` the same with a service waypoint.
const HOST_NETWORK: &str = r#"
workloads:
- name: agent
  namespace: shop
  addresses: ["10.1.0.1"]
  networkMode: HOST_NETWORK
  services: {"shop/agent.shop.svc.cluster.local": {80: 8080}}
  waypoint: {hostname: {namespace: shop, hostname: wp.shop.svc.cluster.local}}
- name: other
  namespace: shop
  addresses: ["10.1.0.1"]
  networkMode: HOST_NETWORK
  waypoint: {hostname: {namespace: shop, hostname: wp.shop.svc.cluster.local}}
- name: wp
  namespace: shop
  serviceAccount: wp
  addresses: ["10.0.9.9"]
  services: {"shop/wp.shop.svc.cluster.local": {15008: 15008}}
services:
- name: agent
  namespace: shop
  hostname: agent.shop.svc.cluster.local
  addresses: ["10.96.0.30"]
  ports: [{servicePort: 80, targetPort: 8080}]
- name: agent-wp
  namespace: shop
  hostname: agent-wp.shop.svc.cluster.local
  addresses: ["10.96.0.31"]
  ports: [{servicePort: 80, targetPort: 8080}]
  waypoint: {hostname: {namespace: shop, hostname: wp.shop.svc.cluster.local}}
- name: wp
  namespace: shop
  hostname: wp.shop.svc.cluster.local
  addresses: ["10.96.0.99"]
  ports: [{servicePort: 15008, targetPort: 15008}]
"#;

#[test]
fn a_service_reaches_a_host_network_endpoint_at_the_node_address_over_plain_tcp() {
    let s = file::parse(HOST_NETWORK, StateConfig::default()).unwrap();
    match route(&s, None, addr("10.96.0.30:80"), 15008) {
        Route::Passthrough { dst, workload: Some(w), service: Some(svc) } => {
            assert_eq!(dst, addr("10.1.0.1:8080"), "node address, target port");
            assert_eq!(w.name, "agent", "the endpoint chosen, not another pod on its node");
            assert_eq!(svc.name, "agent");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_node_address_is_not_a_mesh_workload_and_goes_direct() {
    // istio/ztunnel#1216: dialling the node's address is passthrough with no destination
    // workload, not an arbitrary host-network pod there (nor that pod's waypoint).
    let s = file::parse(HOST_NETWORK, StateConfig::default()).unwrap();
    for (dst, expect) in [
        ("10.1.0.1:8080", "10.1.0.1:8080"),
        ("10.1.0.1:22", "10.1.0.1:22"),
        ("[::ffff:10.1.0.1]:8080", "10.1.0.1:8080"),
    ] {
        match route(&s, None, addr(dst), 15008) {
            Route::Passthrough { dst: d, workload: None, service: None } => assert_eq!(d, addr(expect), "{dst}"),
            other => panic!("{dst}: {other:?}"),
        }
    }
}

#[test]
fn a_host_network_endpoints_own_waypoint_is_not_used_but_its_services_is() {
    let s = file::parse(HOST_NETWORK, StateConfig::default()).unwrap();
    // The pod's waypoint would see the node's address as :authority, which names no workload.
    assert!(matches!(route(&s, None, addr("10.96.0.30:80"), 15008), Route::Passthrough { workload: Some(_), .. }));
    // A service's waypoint applies whatever its endpoints are.
    match route(&s, None, addr("10.96.0.31:80"), 15008) {
        Route::Waypoint { waypoint, target, .. } => {
            assert_eq!(waypoint.name, "wp");
            assert_eq!(target, addr("10.96.0.31:80"));
        }
        other => panic!("{other:?}"),
    }
}
