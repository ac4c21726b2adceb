//! The waypoint sample manifests translate into exactly the expected `mesh.waypoint.v1`
//! resources, route status and (for ztunnel) waypoint addresses.

use std::path::Path;

use istiod_lite::source::dir::Loader;
use istiod_lite::{Kind, MeshConfig, Object, ObjectKey, Translator};
use prost_types::Duration;
use proto::mesh::waypoint::v1::*;
use proto::{WAYPOINT_BACKEND_TYPE_URL, WAYPOINT_POLICY_TYPE_URL, WAYPOINT_ROUTE_TYPE_URL};

fn load() -> (Translator, istiod_lite::Delta) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/waypoint-samples");
    let snap = Loader::new(dir).load().unwrap();
    assert!(snap.errors.is_empty(), "sample errors: {:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    let delta = t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    (t, delta)
}

fn svc(name: &str) -> String {
    format!("{name}.bank.svc.cluster.local")
}

fn backend(name: &str, port: u32, weight: u32, filters: Vec<Filter>) -> Backend {
    Backend { hostname: svc(name), port, weight, filters }
}

fn path(t: MatchType, v: &str) -> Option<PathMatch> {
    Some(PathMatch { r#type: t as i32, value: v.into() })
}

fn ms(n: i32) -> Option<Duration> {
    Some(Duration { seconds: i64::from(n / 1000), nanos: (n % 1000) * 1_000_000 })
}

fn expected_http_route() -> Route {
    Route {
        namespace: "bank".into(),
        name: "accounts".into(),
        kind: route::Kind::Http as i32,
        parents: vec![ParentService { hostname: svc("accounts"), port: 80 }],
        hostnames: vec![],
        rules: vec![
            Rule {
                name: "beta-users".into(),
                matches: vec![Match {
                    path: path(MatchType::PathPrefix, "/api"),
                    headers: vec![HeaderMatch {
                        name: "x-beta".into(),
                        r#type: MatchType::Exact as i32,
                        value: "true".into(),
                    }],
                    query_params: vec![],
                    method: "GET".into(),
                    grpc: None,
                }],
                filters: vec![],
                backends: vec![backend("accounts-v2", 80, 1, vec![])],
                timeouts: None,
                retry: None,
                index: Some(0),
            },
            Rule {
                name: "old-paths".into(),
                matches: vec![Match { path: path(MatchType::RegularExpression, "/v0/.*"), ..Default::default() }],
                filters: vec![Filter {
                    kind: Some(filter::Kind::RequestRedirect(RequestRedirect {
                        scheme: String::new(),
                        hostname: String::new(),
                        path: Some(PathModifier { kind: Some(path_modifier::Kind::ReplaceFullPath("/api".into())) }),
                        port: 0,
                        status_code: 302,
                    })),
                }],
                backends: vec![],
                timeouts: None,
                retry: None,
                index: Some(1),
            },
            Rule {
                name: "split".into(),
                matches: vec![Match { path: path(MatchType::PathPrefix, "/"), ..Default::default() }],
                filters: vec![],
                backends: vec![
                    backend("accounts-v1", 80, 90, vec![]),
                    backend(
                        "accounts-v2",
                        80,
                        10,
                        vec![Filter {
                            kind: Some(filter::Kind::RequestHeaderModifier(HeaderModifier {
                                set: vec![Header { name: "x-canary".into(), value: "yes".into() }],
                                add: vec![],
                                remove: vec![],
                            })),
                        }],
                    ),
                ],
                timeouts: Some(Timeouts { request: ms(10_000), backend_request: ms(2_000) }),
                retry: Some(Retry { attempts: 3, codes: vec![503], backoff: ms(100) }),
                index: Some(2),
            },
        ],
        creation_timestamp: 1_767_323_045,
    }
}

fn expected_grpc_route() -> Route {
    Route {
        namespace: "bank".into(),
        name: "ledger".into(),
        kind: route::Kind::Grpc as i32,
        parents: vec![ParentService { hostname: svc("ledger"), port: 0 }],
        hostnames: vec![],
        rules: vec![Rule {
            name: String::new(),
            matches: vec![Match {
                grpc: Some(GrpcMethodMatch {
                    r#type: MatchType::Exact as i32,
                    service: "bank.Ledger".into(),
                    method: "Balance".into(),
                }),
                ..Default::default()
            }],
            filters: vec![Filter {
                kind: Some(filter::Kind::RequestMirror(RequestMirror {
                    backend: Some(backend("accounts", 80, 1, vec![])),
                    percent: 25,
                })),
            }],
            backends: vec![backend("ledger", 9000, 1, vec![])],
            timeouts: None,
            retry: None,
            index: Some(0),
        }],
        creation_timestamp: 0,
    }
}

#[test]
fn waypoint_samples_translate_to_the_expected_resources() {
    let (t, delta) = load();
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());

    let routes: Vec<&String> = t.routes().keys().collect();
    assert_eq!(routes, ["bank/GRPCRoute/ledger", "bank/HTTPRoute/accounts"]);
    assert_eq!(t.routes()["bank/HTTPRoute/accounts"], expected_http_route());
    assert_eq!(t.routes()["bank/GRPCRoute/ledger"], expected_grpc_route());

    let policies: Vec<&String> = t.l7_policies().keys().collect();
    assert_eq!(policies, ["bank/ledger-readers", "bank/no-admin"]);
    assert_eq!(
        t.l7_policies()["bank/no-admin"],
        L7Policy {
            namespace: "bank".into(),
            name: "no-admin".into(),
            targets: vec![Target { kind: Some(target::Kind::Gateway("bank/waypoint".into())) }],
            action: l7_policy::Action::Deny as i32,
            rules: vec![PolicyRule {
                from: vec![Source { not_namespaces: vec!["ops".into()], ..Default::default() }],
                to: vec![Operation { paths: vec!["/admin*".into()], ..Default::default() }],
                when: vec![],
            }],
        }
    );
    assert_eq!(
        t.l7_policies()["bank/ledger-readers"],
        L7Policy {
            namespace: "bank".into(),
            name: "ledger-readers".into(),
            targets: vec![Target { kind: Some(target::Kind::Service(svc("ledger"))) }],
            action: l7_policy::Action::Allow as i32,
            rules: vec![PolicyRule {
                from: vec![Source {
                    principals: vec!["cluster.local/ns/bank/sa/accounts".into()],
                    ..Default::default()
                }],
                to: vec![Operation {
                    methods: vec!["GET".into(), "POST".into()],
                    paths: vec!["/bank.Ledger/Balance".into()],
                    ..Default::default()
                }],
                when: vec![Condition {
                    key: "request.headers[x-tenant]".into(),
                    values: vec!["gold".into()],
                    not_values: vec![],
                }],
            }],
        }
    );
    // Policies for waypoints never reach ztunnel.
    assert!(t.authorizations().is_empty(), "{:?}", t.authorizations().keys());

    let backends: Vec<&String> = t.backend_policies().keys().collect();
    assert_eq!(backends, [&svc("accounts")]);
    assert_eq!(
        t.backend_policies()[&svc("accounts")],
        BackendPolicy {
            hostname: svc("accounts"),
            load_balancer: backend_policy::LoadBalancer::ConsistentHash as i32,
            hash_header: "x-user".into(),
            outlier_consecutive_errors: 3,
            outlier_ejection: Some(Duration { seconds: 10, nanos: 0 }),
        }
    );

    // The first push carries every resource of the three types.
    for (type_url, n) in [(WAYPOINT_ROUTE_TYPE_URL, 2), (WAYPOINT_POLICY_TYPE_URL, 2), (WAYPOINT_BACKEND_TYPE_URL, 1)] {
        let d = delta.of(type_url);
        assert_eq!(d.upserts.len(), n, "{type_url}");
        assert!(d.upserts.iter().all(|(_, any)| any.type_url == type_url));
        assert_eq!(t.snapshot(type_url).len(), n);
    }

    for (kind, name) in [(Kind::HttpRoute, "accounts"), (Kind::GrpcRoute, "ledger")] {
        let status = &t.route_status()[&ObjectKey::new(kind, "bank", name)];
        assert_eq!(status.len(), 1);
        let conds: Vec<(&str, bool, &str)> =
            status[0].conditions.iter().map(|c| (c.type_, c.status, c.reason)).collect();
        assert_eq!(conds, [("Accepted", true, "Accepted"), ("ResolvedRefs", true, "ResolvedRefs")], "{name}");
    }
}

fn service_of(t: &Translator, name: &str) -> proto::istio::workload::Service {
    match &t.addresses()[name].r#type {
        Some(proto::istio::workload::address::Type::Service(s)) => s.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn workload_of(t: &Translator, name: &str) -> proto::istio::workload::Workload {
    match &t.addresses()[name].r#type {
        Some(proto::istio::workload::address::Type::Workload(w)) => w.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn the_waypoint_gets_a_synthesized_service_that_services_point_at() {
    use proto::istio::workload::gateway_address::Destination;
    let (t, _) = load();
    // The waypoint's own Service, synthesized in file mode, with the waypoint pod behind it.
    let wp = service_of(&t, "bank/waypoint.bank.svc.cluster.local");
    assert_eq!(wp.hostname, svc("waypoint"));
    assert_eq!(wp.ports.iter().map(|p| (p.service_port, p.target_port)).collect::<Vec<_>>(), [(15008, 15008)]);
    assert!(wp.waypoint.is_none(), "the waypoint's service must not point at itself");
    let pod = workload_of(&t, "Kubernetes//Pod/bank/waypoint-0");
    assert!(pod.services.contains_key("bank/waypoint.bank.svc.cluster.local"), "{:?}", pod.services);
    assert!(pod.waypoint.is_none());
    // The services of the namespace are sent through it, by hostname (no status address).
    let accounts = service_of(&t, "bank/accounts.bank.svc.cluster.local");
    let gw = accounts.waypoint.expect("accounts uses the waypoint");
    assert_eq!(gw.hbone_mtls_port, 15008);
    match gw.destination {
        Some(Destination::Hostname(h)) => {
            assert_eq!((h.namespace.as_str(), h.hostname.as_str()), ("bank", "waypoint.bank.svc.cluster.local"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn explain_names_the_waypoint_on_the_path() {
    let (t, _) = load();
    let e = istiod_lite::explain::explain(&t, "bank/accounts-v1-0", "bank/ledger", Some(9000)).unwrap();
    assert_eq!(e.waypoint.as_deref(), Some("bank/waypoint-0"));
    assert_eq!(e.path, "hbone via waypoint bank/waypoint-0 (spiffe://cluster.local/ns/bank/sa/waypoint)");
    assert!(e.mtls && e.allowed, "{e:?}");
    // The waypoint's own traffic goes direct.
    let e = istiod_lite::explain::explain(&t, "bank/waypoint-0", "bank/ledger", Some(9000)).unwrap();
    assert_eq!(e.waypoint, None, "{e:?}");
}
