//! Wire-layout tests: bytes laid out by hand from the PUBLIC field numbers
//! (Istio's workload, authorization, ZDS and CA protos; Envoy's discovery
//! protos) must decode into the expected fields, and our encoder must emit
//! exactly those bytes. A wrong field number or wire type in our `.proto`
//! files makes these tests fail.
//!
//! Every tag byte below is written out by hand as `(field << 3) | wire_type`
//! in varint form, with wire type 0 for varints and 2 for length-delimited
//! fields; only the length prefixes are computed.

use std::collections::HashMap;

use prost::Message;
use prost::bytes::Bytes;
use proto::envoy::config::core::v3 as core;
use proto::envoy::service::discovery::v3 as discovery;
use proto::google::rpc;
use proto::istio::security;
use proto::istio::v1::auth;
use proto::istio::workload::{self as wl, zds};

/// A length-delimited field: the hand-written tag bytes, a varint length,
/// then the payload.
fn ld(tag: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = tag.to_vec();
    let mut len = payload.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(payload);
    out
}

/// Concatenates encoded fields into one message body.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Decodes `bytes` as `M`, then checks that re-encoding yields the same bytes.
fn decode_roundtrip<M: Message + Default>(bytes: &[u8]) -> M {
    let msg = M::decode(bytes).expect("hand-laid bytes must decode");
    assert_eq!(msg.encode_to_vec(), bytes, "our encoding differs from the hand-laid bytes");
    msg
}

// ---------------------------------------------------------------------------
// istio.workload
// ---------------------------------------------------------------------------

/// `istio.workload.NamespacedHostname { namespace = 1; hostname = 2 }`.
fn namespaced_hostname(namespace: &str, hostname: &str) -> Vec<u8> {
    cat(&[&ld(&[0x0a], namespace.as_bytes()), &ld(&[0x12], hostname.as_bytes())])
}

/// `15008` as a varint: 15008 = 117 * 128 + 32.
const VARINT_15008: [u8; 2] = [0xa0, 0x75];
/// `15088` as a varint: 15088 = 117 * 128 + 112.
const VARINT_15088: [u8; 2] = [0xf0, 0x75];
/// `8080` as a varint: 8080 = 63 * 128 + 16.
const VARINT_8080: [u8; 2] = [0x90, 0x3f];
/// `443` as a varint: 443 = 3 * 128 + 59.
const VARINT_443: [u8; 2] = [0xbb, 0x03];

/// fd00::7
const FD00_7: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
/// fd00::1
const FD00_1: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

const UID: &str = "Kubernetes//Pod/ns1/pod-a";
const SVC_KEY: &str = "ns1/svc-a.ns1.svc.cluster.local";

fn workload_bytes() -> Vec<u8> {
    // GatewayAddress { address(2) = NetworkAddress { address(2) = 10.0.0.9 }, hbone_mtls_port(3) = 15008 }
    let waypoint = cat(&[&ld(&[0x12], &ld(&[0x12], &[10, 0, 0, 9])), &[0x18], &VARINT_15008]);
    // GatewayAddress { hostname(1) = NamespacedHostname, hbone_mtls_port(3) = 15008 }
    let network_gateway =
        cat(&[&ld(&[0x0a], &namespaced_hostname("istio-system", "eastwest.example")), &[0x18], &VARINT_15008]);
    // PortList { ports(1) = Port { service_port(1) = 80, target_port(2) = 8080 } }
    let port_list = ld(&[0x0a], &cat(&[&[0x08, 80, 0x10], &VARINT_8080]));
    // map entry { key(1), value(2) }
    let services_entry = cat(&[&ld(&[0x0a], SVC_KEY.as_bytes()), &ld(&[0x12], &port_list)]);
    // ApplicationTunnel { protocol(1) = PROXY(1), port(2) = 15088 }
    let app_tunnel = cat(&[&[0x08, 0x01, 0x10], &VARINT_15088]);
    // Locality { region(1), zone(2), subzone(3) }
    let locality = cat(&[&ld(&[0x0a], b"r1"), &ld(&[0x12], b"z1"), &ld(&[0x1a], b"s1")]);
    // Extension { name(1), config(2) = Any { type_url(1), value(2) } }
    let any = cat(&[&ld(&[0x0a], b"type.example/x"), &ld(&[0x12], &[1, 2])]);
    let extension = cat(&[&ld(&[0x0a], b"ext"), &ld(&[0x12], &any)]);

    cat(&[
        &ld(&[0x0a], b"pod-a"),               // name = 1
        &ld(&[0x12], b"ns1"),                 // namespace = 2
        &ld(&[0x1a], &[10, 0, 0, 7]),         // addresses = 3 (first)
        &ld(&[0x1a], &FD00_7),                // addresses = 3 (second)
        &ld(&[0x22], b"net1"),                // network = 4
        &[0x28, 0x01],                        // tunnel_protocol = 5: HBONE
        &ld(&[0x32], b"cluster.local"),       // trust_domain = 6
        &ld(&[0x3a], b"sa-a"),                // service_account = 7
        &ld(&[0x42], &waypoint),              // waypoint = 8
        &ld(&[0x4a], b"node-1"),              // node = 9
        &ld(&[0x52], b"app"),                 // canonical_name = 10
        &ld(&[0x5a], b"v1"),                  // canonical_revision = 11
        &[0x60, 0x02],                        // workload_type = 12: POD
        &ld(&[0x6a], b"app-deploy"),          // workload_name = 13
        &[0x70, 0x01],                        // native_tunnel = 14
        &ld(&[0x82, 0x01], b"ns1/pol"),       // authorization_policies = 16
        &[0x88, 0x01, 0x01],                  // status = 17: UNHEALTHY
        &ld(&[0x92, 0x01], b"Kubernetes"),    // cluster_id = 18
        &ld(&[0x9a, 0x01], &network_gateway), // network_gateway = 19
        &ld(&[0xa2, 0x01], UID.as_bytes()),   // uid = 20
        &ld(&[0xaa, 0x01], b"pod-a.example"), // hostname = 21
        &ld(&[0xb2, 0x01], &services_entry),  // services = 22
        &ld(&[0xba, 0x01], &app_tunnel),      // application_tunnel = 23
        &ld(&[0xc2, 0x01], &locality),        // locality = 24
        &[0xc8, 0x01, 0x01],                  // network_mode = 25: HOST_NETWORK
        &ld(&[0xd2, 0x01], &extension),       // extensions = 26
        &ld(&[0xda, 0x01], &[0x08, 0x03]),    // capacity = 27: UInt32Value { value(1) = 3 }
    ])
}

#[test]
fn address_with_workload() {
    // Address { workload(1) = Workload }
    let bytes = ld(&[0x0a], &workload_bytes());
    let addr: wl::Address = decode_roundtrip(&bytes);
    let Some(wl::address::Type::Workload(w)) = addr.r#type else {
        panic!("expected a workload, got {:?}", addr.r#type);
    };

    assert_eq!(w.uid, UID);
    assert_eq!(w.name, "pod-a");
    assert_eq!(w.namespace, "ns1");
    assert_eq!(w.addresses, vec![Bytes::from_static(&[10, 0, 0, 7]), Bytes::from_static(&FD00_7),]);
    assert_eq!(w.hostname, "pod-a.example");
    assert_eq!(w.network, "net1");
    assert_eq!(w.tunnel_protocol(), wl::TunnelProtocol::Hbone);
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.service_account, "sa-a");
    assert_eq!(w.node, "node-1");
    assert_eq!(w.canonical_name, "app");
    assert_eq!(w.canonical_revision, "v1");
    assert_eq!(w.workload_type(), wl::WorkloadType::Pod);
    assert_eq!(w.workload_name, "app-deploy");
    assert!(w.native_tunnel);
    assert_eq!(w.authorization_policies, vec!["ns1/pol".to_string()]);
    assert_eq!(w.status(), wl::WorkloadStatus::Unhealthy);
    assert_eq!(w.cluster_id, "Kubernetes");
    assert_eq!(w.network_mode(), wl::NetworkMode::HostNetwork);
    assert_eq!(w.capacity, Some(3));

    let waypoint = w.waypoint.as_ref().expect("waypoint");
    assert_eq!(waypoint.hbone_mtls_port, 15008);
    assert_eq!(
        waypoint.destination,
        Some(wl::gateway_address::Destination::Address(wl::NetworkAddress {
            network: String::new(),
            address: Bytes::from_static(&[10, 0, 0, 9]),
        }))
    );

    let gateway = w.network_gateway.as_ref().expect("network gateway");
    assert_eq!(gateway.hbone_mtls_port, 15008);
    assert_eq!(
        gateway.destination,
        Some(wl::gateway_address::Destination::Hostname(wl::NamespacedHostname {
            namespace: "istio-system".into(),
            hostname: "eastwest.example".into(),
        }))
    );

    assert_eq!(w.services.len(), 1);
    let ports = &w.services[SVC_KEY].ports;
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].service_port, 80);
    assert_eq!(ports[0].target_port, 8080);
    assert_eq!(ports[0].app_protocol(), wl::AppProtocol::Unknown);

    let tunnel = w.application_tunnel.as_ref().expect("application tunnel");
    assert_eq!(tunnel.protocol(), wl::application_tunnel::Protocol::Proxy);
    assert_eq!(tunnel.port, 15088);

    let locality = w.locality.as_ref().expect("locality");
    assert_eq!((locality.region.as_str(), locality.zone.as_str(), locality.subzone.as_str()), ("r1", "z1", "s1"));

    assert_eq!(w.extensions.len(), 1);
    assert_eq!(w.extensions[0].name, "ext");
    let config = w.extensions[0].config.as_ref().expect("extension config");
    assert_eq!(config.type_url, "type.example/x");
    assert_eq!(config.value, vec![1, 2]);
}

#[test]
fn address_with_service() {
    // NetworkAddress { network(1), address(2) }
    let vip4 = cat(&[&ld(&[0x0a], b"net1"), &ld(&[0x12], &[10, 96, 0, 1])]);
    let vip6 = ld(&[0x12], &FD00_1);
    // Port { service_port(1) = 80, target_port(2) = 8080, app_protocol(3) = HTTP2 }
    let http = cat(&[&[0x08, 80, 0x10], &VARINT_8080, &[0x18, 0x02]]);
    // Port { service_port(1) = 443 } (target_port 0: same as service port)
    let https = cat(&[&[0x08], &VARINT_443]);
    // GatewayAddress { hostname(1) = NamespacedHostname, hbone_mtls_port(3) = 15008 }
    let waypoint =
        cat(&[&ld(&[0x0a], &namespaced_hostname("ns1", "waypoint.ns1.svc.cluster.local")), &[0x18], &VARINT_15008]);
    // LoadBalancing { routing_preference(1) = packed [NETWORK, REGION], mode(2) = FAILOVER,
    //                 health_policy(3) = ALLOW_ALL, dns_connect_strategy(4) = FIRST_HEALTHY_RACE }
    let lb = cat(&[&ld(&[0x0a], &[6, 1]), &[0x10, 0x02, 0x18, 0x01, 0x20, 0x01]]);

    let service = cat(&[
        &ld(&[0x0a], b"svc-a"),                                // name = 1
        &ld(&[0x12], b"ns1"),                                  // namespace = 2
        &ld(&[0x1a], b"svc-a.ns1.svc.cluster.local"),          // hostname = 3
        &ld(&[0x22], &vip4),                                   // addresses = 4
        &ld(&[0x22], &vip6),                                   // addresses = 4
        &ld(&[0x2a], &http),                                   // ports = 5
        &ld(&[0x2a], &https),                                  // ports = 5
        &ld(&[0x32], b"spiffe://cluster.local/ns/ns1/sa/svc"), // subject_alt_names = 6
        &ld(&[0x3a], &waypoint),                               // waypoint = 7
        &ld(&[0x42], &lb),                                     // load_balancing = 8
        &[0x48, 0x03],                                         // ip_families = 9: DUAL
        &ld(&[0x52], &ld(&[0x0a], b"e")),                      // extensions = 10: { name(1) }
        &[0x58, 0x01],                                         // canonical = 11
        &[0x60, 0x01],                                         // ingress_use_waypoint = 12
    ]);
    // Address { service(2) = Service }
    let bytes = ld(&[0x12], &service);
    let addr: wl::Address = decode_roundtrip(&bytes);
    let Some(wl::address::Type::Service(s)) = addr.r#type else {
        panic!("expected a service, got {:?}", addr.r#type);
    };

    assert_eq!(s.name, "svc-a");
    assert_eq!(s.namespace, "ns1");
    assert_eq!(s.hostname, "svc-a.ns1.svc.cluster.local");
    assert_eq!(
        s.addresses,
        vec![
            wl::NetworkAddress { network: "net1".into(), address: Bytes::from_static(&[10, 96, 0, 1]) },
            wl::NetworkAddress { network: String::new(), address: Bytes::from_static(&FD00_1) },
        ]
    );
    assert_eq!(s.ports.len(), 2);
    assert_eq!((s.ports[0].service_port, s.ports[0].target_port), (80, 8080));
    assert_eq!(s.ports[0].app_protocol(), wl::AppProtocol::Http2);
    assert_eq!((s.ports[1].service_port, s.ports[1].target_port), (443, 0));
    assert_eq!(s.subject_alt_names, vec!["spiffe://cluster.local/ns/ns1/sa/svc".to_string()]);

    let waypoint = s.waypoint.as_ref().expect("waypoint");
    assert_eq!(waypoint.hbone_mtls_port, 15008);
    assert_eq!(
        waypoint.destination,
        Some(wl::gateway_address::Destination::Hostname(wl::NamespacedHostname {
            namespace: "ns1".into(),
            hostname: "waypoint.ns1.svc.cluster.local".into(),
        }))
    );

    let lb = s.load_balancing.as_ref().expect("load balancing");
    assert_eq!(
        lb.routing_preference().collect::<Vec<_>>(),
        vec![wl::load_balancing::Scope::Network, wl::load_balancing::Scope::Region]
    );
    assert_eq!(lb.mode(), wl::load_balancing::Mode::Failover);
    assert_eq!(lb.health_policy(), wl::load_balancing::HealthPolicy::AllowAll);
    assert_eq!(lb.dns_connect_strategy(), wl::load_balancing::DnsConnectStrategy::FirstHealthyRace);

    assert_eq!(s.ip_families(), wl::IpFamilies::Dual);
    assert_eq!(s.extensions.len(), 1);
    assert_eq!(s.extensions[0].name, "e");
    assert!(s.extensions[0].config.is_none());
    assert!(s.canonical);
    assert!(s.ingress_use_waypoint);
}

#[test]
fn workload_skips_unknown_and_reserved_fields() {
    // A newer control plane may send fields we do not declare; decoding must
    // skip them. Field 15 (reserved, formerly virtual_ips) and field 99.
    let bytes = cat(&[
        &ld(&[0x7a], b"ignored"),           // 15, length-delimited
        &[0x98, 0x06, 0x01],                // 99, varint
        &ld(&[0xa2, 0x01], UID.as_bytes()), // uid = 20
    ]);
    let w = wl::Workload::decode(bytes.as_slice()).unwrap();
    assert_eq!(w.uid, UID);
    assert_eq!(w, wl::Workload { uid: UID.into(), ..Default::default() });
}

// ---------------------------------------------------------------------------
// istio.security
// ---------------------------------------------------------------------------

/// `istio.security.Address { address = 1; length = 2 }`.
fn cidr(address: &[u8], length: u8) -> Vec<u8> {
    cat(&[&ld(&[0x0a], address), &[0x10, length]])
}

#[test]
fn authorization_with_group_rules_and_matches() {
    let fd00: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // StringMatch oneof: exact(1), prefix(2), suffix(3), presence(4) = Empty
    let exact_ns2 = ld(&[0x0a], b"ns2");
    let prefix_kube = ld(&[0x12], b"kube-");
    let suffix_sa = ld(&[0x1a], b"/sa/client");
    let exact_principal = ld(&[0x0a], b"spiffe://cluster.local/ns/ns2/sa/client");
    let presence = ld(&[0x22], &[]);
    // ServiceAccountMatch { namespace(1), service_account(2) }
    let sa_client = cat(&[&ld(&[0x0a], b"ns2"), &ld(&[0x12], b"client")]);
    let sa_bad = cat(&[&ld(&[0x0a], b"ns3"), &ld(&[0x12], b"bad")]);

    let matched = cat(&[
        &ld(&[0x0a], &exact_ns2),                  // namespaces = 1
        &ld(&[0x12], &prefix_kube),                // not_namespaces = 2
        &ld(&[0x1a], &exact_principal),            // principals = 3
        &ld(&[0x1a], &suffix_sa),                  // principals = 3
        &ld(&[0x22], &presence),                   // not_principals = 4
        &ld(&[0x2a], &cidr(&[10, 1, 0, 0], 16)),   // source_ips = 5
        &ld(&[0x32], &cidr(&[10, 1, 2, 3], 32)),   // not_source_ips = 6
        &ld(&[0x3a], &cidr(&fd00, 8)),             // destination_ips = 7
        &ld(&[0x42], &cidr(&[10, 2, 0, 1], 32)),   // not_destination_ips = 8
        &ld(&[0x4a], &cat(&[&[80], &VARINT_443])), // destination_ports = 9, packed
        &ld(&[0x52], &VARINT_8080),                // not_destination_ports = 10, packed
        &ld(&[0x5a], &sa_client),                  // service_accounts = 11
        &ld(&[0x62], &sa_bad),                     // not_service_accounts = 12
    ]);
    // Rules { matches(2) }, Group { rules(1) }
    let rules = ld(&[0x12], &matched);
    let group = ld(&[0x0a], &rules);

    let bytes = cat(&[
        &ld(&[0x0a], b"deny-foo"), // name = 1
        &ld(&[0x12], b"ns1"),      // namespace = 2
        &[0x18, 0x01],             // scope = 3: NAMESPACE
        &[0x20, 0x01],             // action = 4: DENY
        &ld(&[0x2a], &group),      // groups = 5
        &[0x30, 0x01],             // dry_run = 6
    ]);
    let authz: security::Authorization = decode_roundtrip(&bytes);

    assert_eq!(authz.name, "deny-foo");
    assert_eq!(authz.namespace, "ns1");
    assert_eq!(authz.scope(), security::Scope::Namespace);
    assert_eq!(authz.action(), security::Action::Deny);
    assert!(authz.dry_run);
    assert_eq!(authz.groups.len(), 1);
    assert_eq!(authz.groups[0].rules.len(), 1);
    assert_eq!(authz.groups[0].rules[0].matches.len(), 1);
    let m = &authz.groups[0].rules[0].matches[0];

    use security::string_match::MatchType;
    let sm = |t: MatchType| security::StringMatch { match_type: Some(t) };
    assert_eq!(m.namespaces, vec![sm(MatchType::Exact("ns2".into()))]);
    assert_eq!(m.not_namespaces, vec![sm(MatchType::Prefix("kube-".into()))]);
    assert_eq!(
        m.principals,
        vec![
            sm(MatchType::Exact("spiffe://cluster.local/ns/ns2/sa/client".into())),
            sm(MatchType::Suffix("/sa/client".into())),
        ]
    );
    assert_eq!(m.not_principals, vec![sm(MatchType::Presence(()))]);

    let addr = |a: &[u8], length: u32| security::Address { address: Bytes::copy_from_slice(a), length };
    assert_eq!(m.source_ips, vec![addr(&[10, 1, 0, 0], 16)]);
    assert_eq!(m.not_source_ips, vec![addr(&[10, 1, 2, 3], 32)]);
    assert_eq!(m.destination_ips, vec![addr(&fd00, 8)]);
    assert_eq!(m.not_destination_ips, vec![addr(&[10, 2, 0, 1], 32)]);
    assert_eq!(m.destination_ports, vec![80, 443]);
    assert_eq!(m.not_destination_ports, vec![8080]);
    assert_eq!(
        m.service_accounts,
        vec![security::ServiceAccountMatch { namespace: "ns2".into(), service_account: "client".into() }]
    );
    assert_eq!(
        m.not_service_accounts,
        vec![security::ServiceAccountMatch { namespace: "ns3".into(), service_account: "bad".into() }]
    );
}

#[test]
fn authorization_ports_decode_unpacked_too() {
    // Senders may emit repeated scalars unpacked: one varint tag per value.
    let matched = cat(&[
        &[0x48, 80], // destination_ports = 9, varint
        &[0x48],
        &VARINT_443, // destination_ports = 9, varint
        &[0x50],
        &VARINT_8080, // not_destination_ports = 10, varint
    ]);
    let m = security::Match::decode(matched.as_slice()).unwrap();
    assert_eq!(m.destination_ports, vec![80, 443]);
    assert_eq!(m.not_destination_ports, vec![8080]);
}

// ---------------------------------------------------------------------------
// envoy.service.discovery.v3
// ---------------------------------------------------------------------------

/// `google.protobuf.Struct { fields(1) = { key: Value { string_value(3) } } }` with one entry.
fn struct_with_string(key: &str, value: &str) -> Vec<u8> {
    let value_msg = ld(&[0x1a], value.as_bytes());
    ld(&[0x0a], &cat(&[&ld(&[0x0a], key.as_bytes()), &ld(&[0x12], &value_msg)]))
}

const NODE_ID: &str = "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local";

#[test]
fn delta_discovery_request() {
    // Locality { region(1), zone(2), sub_zone(3) }
    let locality = cat(&[&ld(&[0x0a], b"r1"), &ld(&[0x12], b"z1"), &ld(&[0x1a], b"s1")]);
    let node = cat(&[
        &ld(&[0x0a], NODE_ID.as_bytes()),                               // id = 1
        &ld(&[0x12], b"Kubernetes"),                                    // cluster = 2
        &ld(&[0x1a], &struct_with_string("NAMESPACE", "istio-system")), // metadata = 3
        &ld(&[0x22], &locality),                                        // locality = 4
        &ld(&[0x32], b"ztunnel"),                                       // user_agent_name = 6
        &ld(&[0x3a], b"1.0"),                                           // user_agent_version = 7
        &ld(&[0x52], b"envoy.lb.does_not_support_overprovisioning"),    // client_features = 10
    ]);
    // Status { code(1) = 3, message(2) }
    let status = cat(&[&[0x08, 0x03], &ld(&[0x12], b"bad resource")]);
    // map<string, string> entry { key(1), value(2) }
    let initial = cat(&[&ld(&[0x0a], UID.as_bytes()), &ld(&[0x12], b"v7")]);
    // ResourceLocator { name(1), dynamic_parameters(2) = { "k": "v" } }
    let locator = cat(&[&ld(&[0x0a], b"loc"), &ld(&[0x12], &cat(&[&ld(&[0x0a], b"k"), &ld(&[0x12], b"v")]))]);

    let bytes = cat(&[
        &ld(&[0x0a], &node),                              // node = 1
        &ld(&[0x12], proto::ADDRESS_TYPE_URL.as_bytes()), // type_url = 2
        &ld(&[0x1a], b"*"),                               // resource_names_subscribe = 3
        &ld(&[0x22], b"old"),                             // resource_names_unsubscribe = 4
        &ld(&[0x2a], &initial),                           // initial_resource_versions = 5
        &ld(&[0x32], b"nonce-1"),                         // response_nonce = 6
        &ld(&[0x3a], &status),                            // error_detail = 7
        &ld(&[0x42], &locator),                           // resource_locators_subscribe = 8
        &ld(&[0x4a], &ld(&[0x0a], b"gone")),              // resource_locators_unsubscribe = 9
    ]);
    let req: discovery::DeltaDiscoveryRequest = decode_roundtrip(&bytes);

    let node = req.node.as_ref().expect("node");
    assert_eq!(node.id, NODE_ID);
    assert_eq!(node.cluster, "Kubernetes");
    let metadata = node.metadata.as_ref().expect("metadata");
    assert_eq!(metadata.fields["NAMESPACE"].kind, Some(prost_types::value::Kind::StringValue("istio-system".into())));
    assert_eq!(node.locality, Some(core::Locality { region: "r1".into(), zone: "z1".into(), sub_zone: "s1".into() }));
    assert_eq!(node.user_agent_name, "ztunnel");
    assert_eq!(node.user_agent_version_type, Some(core::node::UserAgentVersionType::UserAgentVersion("1.0".into())));
    assert_eq!(node.client_features, vec!["envoy.lb.does_not_support_overprovisioning".to_string()]);

    assert_eq!(req.type_url, "type.googleapis.com/istio.workload.Address");
    assert_eq!(req.resource_names_subscribe, vec!["*".to_string()]);
    assert_eq!(req.resource_names_unsubscribe, vec!["old".to_string()]);
    assert_eq!(req.initial_resource_versions, HashMap::from([(UID.to_string(), "v7".to_string())]));
    assert_eq!(req.response_nonce, "nonce-1");
    assert_eq!(req.error_detail, Some(rpc::Status { code: 3, message: "bad resource".into(), details: vec![] }));
    assert_eq!(req.resource_locators_subscribe.len(), 1);
    assert_eq!(req.resource_locators_subscribe[0].name, "loc");
    assert_eq!(req.resource_locators_subscribe[0].dynamic_parameters["k"], "v");
    assert_eq!(req.resource_locators_unsubscribe[0].name, "gone");
}

#[test]
fn delta_discovery_response_carries_an_address() {
    let address = ld(&[0x0a], &workload_bytes());
    // Any { type_url(1), value(2) }
    let any = cat(&[&ld(&[0x0a], proto::ADDRESS_TYPE_URL.as_bytes()), &ld(&[0x12], &address)]);
    let resource = cat(&[
        &ld(&[0x0a], b"v1"),            // version = 1
        &ld(&[0x12], &any),             // resource = 2
        &ld(&[0x1a], UID.as_bytes()),   // name = 3
        &ld(&[0x22], b"net1/10.0.0.7"), // aliases = 4
        &ld(&[0x32], &[0x08, 30]),      // ttl = 6: Duration { seconds(1) = 30 }
        &ld(&[0x3a], &[0x08, 0x01]),    // cache_control = 7: { do_not_cache(1) }
    ]);
    let bytes = cat(&[
        &ld(&[0x0a], b"2024-01-01T00:00:00Z/1"),          // system_version_info = 1
        &ld(&[0x12], &resource),                          // resources = 2
        &ld(&[0x22], proto::ADDRESS_TYPE_URL.as_bytes()), // type_url = 4
        &ld(&[0x2a], b"nonce-2"),                         // nonce = 5
        &ld(&[0x32], b"Kubernetes//Pod/ns1/old"),         // removed_resources = 6
        &ld(&[0x3a], &ld(&[0x0a], b"istiod-1")),          // control_plane = 7: { identifier(1) }
        &ld(&[0x42], &ld(&[0x0a], b"svc-gone")),          // removed_resource_names = 8: { name(1) }
    ]);
    let resp: discovery::DeltaDiscoveryResponse = decode_roundtrip(&bytes);

    assert_eq!(resp.system_version_info, "2024-01-01T00:00:00Z/1");
    assert_eq!(resp.type_url, proto::ADDRESS_TYPE_URL);
    assert_eq!(resp.nonce, "nonce-2");
    assert_eq!(resp.removed_resources, vec!["Kubernetes//Pod/ns1/old".to_string()]);
    assert_eq!(resp.control_plane.as_ref().map(|c| c.identifier.as_str()), Some("istiod-1"));
    assert_eq!(resp.removed_resource_names[0].name, "svc-gone");

    assert_eq!(resp.resources.len(), 1);
    let r = &resp.resources[0];
    assert_eq!(r.version, "v1");
    assert_eq!(r.name, UID);
    assert_eq!(r.aliases, vec!["net1/10.0.0.7".to_string()]);
    assert_eq!(r.ttl, Some(prost_types::Duration { seconds: 30, nanos: 0 }));
    assert!(r.cache_control.as_ref().is_some_and(|c| c.do_not_cache));
    let any = r.resource.as_ref().expect("resource");
    assert_eq!(any.type_url, proto::ADDRESS_TYPE_URL);
    let addr = any.to_msg::<wl::Address>().expect("Any holds an Address");
    let Some(wl::address::Type::Workload(w)) = addr.r#type else { panic!("expected a workload") };
    assert_eq!(w.uid, UID);
}

#[test]
fn service_names_match_the_public_apis() {
    assert_eq!(
        discovery::aggregated_discovery_service_server::SERVICE_NAME,
        "envoy.service.discovery.v3.AggregatedDiscoveryService"
    );
    assert_eq!(auth::istio_certificate_service_server::SERVICE_NAME, "istio.v1.auth.IstioCertificateService");
}

// ---------------------------------------------------------------------------
// istio.workload.zds
// ---------------------------------------------------------------------------

#[test]
fn zds_messages() {
    let hello: zds::ZdsHello = decode_roundtrip(&[0x08, 0x01]); // version = 1: V1
    assert_eq!(hello.version(), zds::Version::V1);

    // WorkloadInfo { name(1), namespace(2), service_account(3), windows_namespace(5) = { id(1), guid(2) } }
    let info = cat(&[
        &ld(&[0x0a], b"pod-a"),
        &ld(&[0x12], b"ns1"),
        &ld(&[0x1a], b"sa-a"),
        &ld(&[0x2a], &cat(&[&[0x08, 0x07], &ld(&[0x12], b"guid")])),
    ]);
    // AddWorkload { uid(1), workload_info(2) }
    let add = cat(&[&ld(&[0x0a], b"uid-1"), &ld(&[0x12], &info)]);
    let req: zds::WorkloadRequest = decode_roundtrip(&ld(&[0x0a], &add)); // add = 1
    let Some(zds::workload_request::Payload::Add(add)) = req.payload else { panic!("expected add") };
    assert_eq!(add.uid, "uid-1");
    assert_eq!(
        add.workload_info,
        Some(zds::WorkloadInfo {
            name: "pod-a".into(),
            namespace: "ns1".into(),
            service_account: "sa-a".into(),
            windows_namespace: Some(zds::WindowsNamespace { id: 7, guid: "guid".into() }),
        })
    );

    // DelWorkload { uid(2) }: note the uid is field 2 here.
    let req: zds::WorkloadRequest = decode_roundtrip(&ld(&[0x12], &ld(&[0x12], b"uid-1"))); // del = 2
    assert_eq!(req.payload, Some(zds::workload_request::Payload::Del(zds::DelWorkload { uid: "uid-1".into() })));

    let req: zds::WorkloadRequest = decode_roundtrip(&[0x1a, 0x00]); // snapshot_sent = 3
    assert_eq!(req.payload, Some(zds::workload_request::Payload::SnapshotSent(zds::SnapshotSent {})));

    // KeepWorkload { uid(1) }
    let req: zds::WorkloadRequest = decode_roundtrip(&ld(&[0x2a], &ld(&[0x0a], b"uid-2"))); // keep = 5
    assert_eq!(req.payload, Some(zds::workload_request::Payload::Keep(zds::KeepWorkload { uid: "uid-2".into() })));

    // WorkloadResponse { ack(1) = Ack { error(1) } }
    let resp: zds::WorkloadResponse = decode_roundtrip(&ld(&[0x0a], &ld(&[0x0a], b"boom")));
    assert_eq!(resp.payload, Some(zds::workload_response::Payload::Ack(zds::Ack { error: "boom".into() })));
    let ok: zds::WorkloadResponse = decode_roundtrip(&[0x0a, 0x00]);
    assert_eq!(ok.payload, Some(zds::workload_response::Payload::Ack(zds::Ack::default())));
}

// ---------------------------------------------------------------------------
// istio.v1.auth
// ---------------------------------------------------------------------------

#[test]
fn ca_request_and_response() {
    const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
    const SPIFFE: &str = "spiffe://cluster.local/ns/ns1/sa/sa-a";
    let bytes = cat(&[
        &ld(&[0x0a], CSR.as_bytes()),                                      // csr = 1
        &[0x18, 0x80, 0xa3, 0x05],                                         // validity_duration = 3: 86400
        &ld(&[0x22], &struct_with_string("ImpersonatedIdentity", SPIFFE)), // metadata = 4
    ]);
    let req: auth::IstioCertificateRequest = decode_roundtrip(&bytes);
    assert_eq!(req.csr, CSR);
    assert_eq!(req.validity_duration, 86_400);
    let metadata = req.metadata.as_ref().expect("metadata");
    assert_eq!(
        metadata.fields["ImpersonatedIdentity"].kind,
        Some(prost_types::value::Kind::StringValue(SPIFFE.into()))
    );

    let bytes = cat(&[
        &ld(&[0x0a], b"LEAF"),               // cert_chain = 1
        &ld(&[0x0a], b"INTERMEDIATE"),       // cert_chain = 1
        &ld(&[0x12], &ld(&[0x0a], b"ROOT")), // root_cert = 2: Roots { ca_cert(1) }
    ]);
    let resp: auth::IstioCertificateResponse = decode_roundtrip(&bytes);
    assert_eq!(resp.cert_chain, vec!["LEAF".to_string(), "INTERMEDIATE".to_string()]);
    assert_eq!(resp.root_cert, Some(auth::Roots { ca_cert: vec!["ROOT".into()] }));
}
