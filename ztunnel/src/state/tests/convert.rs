//! Conversion from hand-built proto messages.

use std::collections::HashMap;

use proto::istio::security as pbs;
use proto::istio::workload as pbw;

use super::support::ip;
use crate::state::convert::{Address, ConvertError, Problem, ip_to_bytes, policy_fail_closed};
use crate::state::policy::StringMatch;
use crate::state::{
    Action, AppProtocol, GatewayAddress, GatewayDestination, NetworkMode, Policy, Scope, Service, TunnelProtocol,
    Workload,
};

fn pb_workload() -> pbw::Workload {
    pbw::Workload {
        uid: "Kubernetes//Pod/default/productpage-v1".into(),
        name: "productpage-v1".into(),
        namespace: "default".into(),
        addresses: vec![ip_to_bytes(ip("10.0.1.2")).into(), ip_to_bytes(ip("fd00::2")).into()],
        tunnel_protocol: pbw::TunnelProtocol::Hbone as i32,
        service_account: "bookinfo-productpage".into(),
        node: "node-a".into(),
        services: HashMap::from([(
            "default/productpage.default.svc.cluster.local".to_owned(),
            pbw::PortList {
                ports: vec![
                    pbw::Port { service_port: 9080, target_port: 9081, app_protocol: 0 },
                    pbw::Port { service_port: 9090, target_port: 0, app_protocol: 0 },
                ],
            },
        )]),
        authorization_policies: vec!["default/viewer".into()],
        waypoint: Some(pbw::GatewayAddress {
            destination: Some(pbw::gateway_address::Destination::Hostname(pbw::NamespacedHostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into(),
            })),
            hbone_mtls_port: 0,
        }),
        ..Default::default()
    }
}

fn workload_err(edit: impl FnOnce(&mut pbw::Workload)) -> ConvertError {
    let mut w = pb_workload();
    edit(&mut w);
    Workload::try_from(w).unwrap_err()
}

#[test]
fn workload_converts_with_defaults() {
    let w = Workload::try_from(pb_workload()).unwrap();
    assert_eq!(w.identity().as_str(), "spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
    assert_eq!(
        (w.namespace(), w.service_account(), w.trust_domain()),
        ("default", "bookinfo-productpage", "cluster.local")
    );
    assert_eq!(w.addresses, [ip("10.0.1.2"), ip("fd00::2")]);
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert!(w.healthy);
    let ports = &w.services["default/productpage.default.svc.cluster.local"];
    assert_eq!(
        ports.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        [(9080, 9081)],
        "target 0 is left to the service"
    );
    assert_eq!(
        w.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname {
                namespace: "default".into(),
                hostname: "waypoint.default.svc.cluster.local".into()
            },
            hbone_mtls_port: 15008
        })
    );
    let mut pb = pb_workload();
    pb.service_account.clear();
    pb.trust_domain = "example.org".into();
    pb.status = pbw::WorkloadStatus::Unhealthy as i32;
    let w = Workload::try_from(pb).unwrap();
    assert_eq!(w.identity().as_str(), "spiffe://example.org/ns/default/sa/default");
    assert!(!w.healthy);
}

#[test]
fn network_mode_converts() {
    let w = Workload::try_from(pb_workload()).unwrap();
    assert_eq!(w.network_mode, NetworkMode::Standard, "unset is STANDARD");
    assert!(!w.host_network());
    let mut pb = pb_workload();
    pb.network_mode = pbw::NetworkMode::HostNetwork as i32;
    pb.tunnel_protocol = pbw::TunnelProtocol::None as i32;
    let w = Workload::try_from(pb).unwrap();
    assert_eq!(w.network_mode, NetworkMode::HostNetwork);
    assert!(w.host_network());
    assert_eq!(w.protocol, TunnelProtocol::None);
    assert_eq!(w.addresses, [ip("10.0.1.2"), ip("fd00::2")], "the addresses are kept as sent");
}

#[test]
fn workload_errors_name_object_and_field() {
    let cases: Vec<(ConvertError, &str, &str)> = vec![
        (workload_err(|w| w.addresses[1] = vec![1, 2, 3].into()), "addresses[1]", "address has 3 bytes"),
        (workload_err(|w| w.uid.clear()), "uid", "is required"),
        (workload_err(|w| w.service_account = "a/b".into()), "serviceAccount", "path must be /ns/<namespace>/sa/"),
        (
            workload_err(|w| w.trust_domain = "Bad.Domain".into()),
            "trustDomain",
            "not a valid identity part: identity \"spiffe://Bad.Domain/",
        ),
        (workload_err(|w| w.tunnel_protocol = 7), "tunnelProtocol", "unknown enum value 7"),
        (workload_err(|w| w.tunnel_protocol = 2), "tunnelProtocol", "LEGACY_ISTIO_MTLS is not supported"),
        (workload_err(|w| w.status = 5), "status", "unknown enum value 5"),
        (workload_err(|w| w.network_mode = 9), "networkMode", "unknown enum value 9"),
        (
            workload_err(|w| w.network_mode = pbw::NetworkMode::HostNetwork as i32),
            "tunnelProtocol",
            "HBONE for a host-network workload is not supported",
        ),
        (
            workload_err(|w| {
                w.services.values_mut().next().unwrap().ports[0].service_port = 70000;
            }),
            "services[\"default/productpage.default.svc.cluster.local\"].ports[0].servicePort",
            "port 70000 is out of range",
        ),
        (
            workload_err(|w| {
                w.services.insert("no-namespace".into(), Default::default());
            }),
            "services[\"no-namespace\"]",
            "not of the form namespace/name",
        ),
        (workload_err(|w| w.authorization_policies.push("x".into())), "authorizationPolicies[1]", "namespace/name"),
        (workload_err(|w| w.waypoint.as_mut().unwrap().destination = None), "waypoint.destination", "is required"),
        (
            workload_err(|w| w.waypoint.as_mut().unwrap().hbone_mtls_port = 1 << 20),
            "waypoint.hboneMtlsPort",
            "out of range",
        ),
    ];
    for (err, field, text) in cases {
        assert_eq!(err.field, field, "{err}");
        assert_eq!(err.object, "workload default/productpage-v1", "{err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("workload default/productpage-v1: field `{field}`: ")), "{shown}");
        assert!(shown.contains(text), "{shown}");
    }
    let err = workload_err(|w| w.namespace = "Bad Namespace".into());
    assert_eq!(err.field, "namespace");
    assert!(matches!(err.problem, Problem::Identity(_)));
}

#[test]
fn service_and_address_convert() {
    let pb = pbw::Service {
        name: "reviews".into(),
        namespace: "default".into(),
        hostname: "reviews.default.svc.cluster.local".into(),
        addresses: vec![pbw::NetworkAddress { network: String::new(), address: ip_to_bytes(ip("10.96.0.10")).into() }],
        ports: vec![pbw::Port { service_port: 9080, target_port: 0, app_protocol: 0 }],
        waypoint: Some(pbw::GatewayAddress {
            destination: Some(pbw::gateway_address::Destination::Address(pbw::NetworkAddress {
                network: "n".into(),
                address: ip_to_bytes(ip("10.0.9.9")).into(),
            })),
            hbone_mtls_port: 15009,
        }),
        ..Default::default()
    };
    let s = Service::try_from(pb.clone()).unwrap();
    assert_eq!(s.key(), "default/reviews.default.svc.cluster.local");
    assert_eq!(s.vips[0].address, ip("10.96.0.10"));
    assert_eq!(s.ports.get(&9080), Some(&0));
    assert_eq!(s.waypoint.as_ref().unwrap().hbone_mtls_port, 15009);
    assert_eq!(s.app_protocol(9080), None, "UNKNOWN is undeclared");

    // Declared protocols are kept per service port; a value this build does not know counts
    // as undeclared.
    let mut declared = pb.clone();
    declared.ports = vec![
        pbw::Port { service_port: 80, target_port: 8080, app_protocol: pbw::AppProtocol::Http11 as i32 },
        pbw::Port { service_port: 81, target_port: 8081, app_protocol: pbw::AppProtocol::Http2 as i32 },
        pbw::Port { service_port: 82, target_port: 8082, app_protocol: pbw::AppProtocol::Grpc as i32 },
        pbw::Port { service_port: 83, target_port: 8083, app_protocol: 99 },
    ];
    let s = Service::try_from(declared).unwrap();
    assert_eq!(s.app_protocol(80), Some(AppProtocol::Http11));
    assert_eq!(s.app_protocol(81), Some(AppProtocol::Http2));
    assert_eq!(s.app_protocol(82), Some(AppProtocol::Grpc));
    assert_eq!(s.app_protocol(83), None);
    assert_eq!(s.ports.get(&83), Some(&8083));

    let mut bad = pb.clone();
    bad.addresses[0].address = vec![0; 5].into();
    let err = Service::try_from(bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service default/reviews.default.svc.cluster.local: field `addresses[0].address`: address has 5 bytes; want 4 (IPv4) or 16 (IPv6)"
    );
    let mut bad = pb.clone();
    bad.hostname.clear();
    assert_eq!(Service::try_from(bad).unwrap_err().field, "hostname");
    let mut bad = pb.clone();
    bad.ports[0].service_port = 0;
    assert_eq!(Service::try_from(bad).unwrap_err().field, "ports[0].servicePort");

    let a = Address::try_from(pbw::Address { r#type: Some(pbw::address::Type::Service(pb.clone())) }).unwrap();
    assert!(matches!(a, Address::Service(s) if s.name == "reviews"));
    let a = Address::try_from(pbw::Address { r#type: Some(pbw::address::Type::Workload(pb_workload())) }).unwrap();
    assert!(matches!(a, Address::Workload(w) if w.name == "productpage-v1"));
    let err = Address::try_from(pbw::Address { r#type: None }).unwrap_err();
    assert_eq!((err.field.as_str(), err.problem), ("type", Problem::Missing));

    // As a resource, named as Istio names it, or refused naming both names.
    let svc = || pbw::Address { r#type: Some(pbw::address::Type::Service(pb.clone())) };
    let wl = || pbw::Address { r#type: Some(pbw::address::Type::Workload(pb_workload())) };
    let uid = pb_workload().uid;
    assert!(Address::from_resource("default/reviews.default.svc.cluster.local", svc()).is_ok());
    assert!(Address::from_resource(&uid, wl()).is_ok());
    let err = Address::from_resource("default/reviews", svc()).unwrap_err();
    assert_eq!(err.field, "namespace/hostname");
    assert_eq!(err.problem, Problem::ResourceName("default/reviews.default.svc.cluster.local".into()));
    let err = Address::from_resource("Kubernetes//Pod/default/old-name", wl()).unwrap_err();
    assert!(err.to_string().starts_with("address resource \"Kubernetes//Pod/default/old-name\": field `uid`"), "{err}");
    assert_eq!((err.field.as_str(), err.problem), ("uid", Problem::ResourceName(uid)));
}

fn pb_policy(m: pbs::Match) -> pbs::Authorization {
    pbs::Authorization {
        name: "viewer".into(),
        namespace: "default".into(),
        scope: pbs::Scope::WorkloadSelector as i32,
        action: pbs::Action::Allow as i32,
        groups: vec![pbs::Group { rules: vec![pbs::Rules { matches: vec![pbs::Match::default(), m] }] }],
        dry_run: true,
    }
}

fn sm(t: pbs::string_match::MatchType) -> pbs::StringMatch {
    pbs::StringMatch { match_type: Some(t) }
}

#[test]
fn policy_converts() {
    use pbs::string_match::MatchType;
    let m = pbs::Match {
        principals: vec![sm(MatchType::Exact("cluster.local/ns/a/sa/b".into())), sm(MatchType::Presence(()))],
        not_namespaces: vec![sm(MatchType::Prefix("kube-".into())), sm(MatchType::Suffix("-test".into()))],
        source_ips: vec![pbs::Address { address: vec![10, 1, 2, 3].into(), length: 8 }],
        destination_ports: vec![80, 443],
        service_accounts: vec![pbs::ServiceAccountMatch { namespace: "a".into(), service_account: "b".into() }],
        ..Default::default()
    };
    let p = Policy::try_from(pb_policy(m)).unwrap();
    assert_eq!(
        (p.scope, p.action, p.dry_run, p.unusable.is_none()),
        (Scope::WorkloadSelector, Action::Allow, true, true)
    );
    let got = &p.groups[0].rules[0].matches[1];
    assert_eq!(got.principals, [StringMatch::Exact("cluster.local/ns/a/sa/b".into()), StringMatch::Presence]);
    assert_eq!(got.not_namespaces, [StringMatch::Prefix("kube-".into()), StringMatch::Suffix("-test".into())]);
    assert_eq!(got.source_ips[0].to_string(), "10.0.0.0/8");
    assert_eq!(got.destination_ports, [80, 443]);
    assert_eq!(got.service_accounts[0].service_account, "b");
}

#[test]
fn policy_errors_name_fields_and_fail_closed_keeps_them() {
    let at = "groups[0].rules[0].matches[1]";
    let cases: Vec<(pbs::Match, String, &str)> = vec![
        (
            pbs::Match { principals: vec![pbs::StringMatch { match_type: None }], ..Default::default() },
            format!("{at}.principals[0]"),
            "is required",
        ),
        (
            pbs::Match {
                not_source_ips: vec![pbs::Address { address: vec![10, 0, 0, 0].into(), length: 33 }],
                ..Default::default()
            },
            format!("{at}.notSourceIps[0].length"),
            "invalid CIDR",
        ),
        (
            pbs::Match {
                destination_ips: vec![pbs::Address { address: vec![10, 0, 0].into(), length: 8 }],
                ..Default::default()
            },
            format!("{at}.destinationIps[0].address"),
            "address has 3 bytes",
        ),
        (
            pbs::Match { not_destination_ports: vec![0], ..Default::default() },
            format!("{at}.notDestinationPorts[0]"),
            "port 0",
        ),
        (
            pbs::Match {
                service_accounts: vec![pbs::ServiceAccountMatch {
                    namespace: String::new(),
                    service_account: "b".into(),
                }],
                ..Default::default()
            },
            format!("{at}.serviceAccounts[0].namespace"),
            "is required",
        ),
    ];
    for (m, field, text) in cases {
        let err = Policy::try_from(pb_policy(m.clone())).unwrap_err();
        assert_eq!(err.field, field);
        assert!(
            err.to_string().starts_with(&format!("authorization default/viewer: field `{field}`: {text}")),
            "{err}"
        );
        let kept = policy_fail_closed(pb_policy(m)).unwrap();
        assert!(kept.groups.is_empty());
        assert!(kept.unusable.as_deref().unwrap().contains(&field), "{:?}", kept.unusable);
        assert!(kept.dry_run, "dry-run survives");
    }
    let mut p = pb_policy(Default::default());
    p.scope = 3;
    assert_eq!(
        Policy::try_from(p).unwrap_err().to_string(),
        "authorization default/viewer: field `scope`: unknown enum value 3"
    );
    let mut p = pb_policy(Default::default());
    p.name.clear();
    assert_eq!(policy_fail_closed(p).unwrap_err().field, "name", "a nameless policy cannot be kept");
}
