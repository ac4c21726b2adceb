//! Translation of each field and each Istio rule, one behaviour per test.

use std::path::Path;

use proto::istio::security::{
    Action, Address as IpMatch, Authorization, Group, Match, Rules, Scope, ServiceAccountMatch,
};
use proto::istio::security::{StringMatch, string_match::MatchType};
use proto::istio::workload::gateway_address::Destination;
use proto::istio::workload::{
    NamespacedHostname, NetworkAddress, NetworkMode, Port, TunnelProtocol, WorkloadStatus, WorkloadType,
};

use super::*;
use crate::k8s::core::Pod;
use crate::k8s::security::AuthorizationPolicy;
use crate::model::Model;
use crate::source::parse_file;

fn model(yaml: &str) -> Model {
    let parsed = parse_file(Path::new("test.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut m = Model::default();
    for o in parsed.objects {
        m.upsert(o.object);
    }
    m
}

fn cfg() -> MeshConfig {
    MeshConfig::default()
}

fn policy(m: &Model, ns: &str, name: &str) -> AuthorizationPolicy {
    m.authorization_policies[&(ns.to_owned(), name.to_owned())].clone()
}

fn pod<'a>(m: &'a Model, ns: &str, name: &str) -> &'a Pod {
    &m.pods[&(ns.to_owned(), name.to_owned())]
}

fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

fn exact(s: &str) -> StringMatch {
    StringMatch { match_type: Some(MatchType::Exact(s.into())) }
}

fn m_ports(p: &[u32]) -> Rules {
    Rules { matches: vec![Match { destination_ports: p.to_vec(), ..Default::default() }] }
}

fn presence() -> StringMatch {
    StringMatch { match_type: Some(MatchType::Presence(())) }
}

// ---- AuthorizationPolicy ----

#[test]
fn scope_follows_selector_and_root_namespace() {
    let m = model(
        &[
            ap("shop", "sel", "  selector:\n    matchLabels: {app: a}\n  rules: [{}]\n"),
            ap("shop", "ns", "  rules: [{}]\n"),
            ap("istio-system", "mesh", "  rules: [{}]\n"),
            ap("istio-system", "mesh-sel", "  selector:\n    matchLabels: {app: a}\n  rules: [{}]\n"),
        ]
        .concat(),
    );
    let scope = |ns, n| authz::translate(&cfg(), &policy(&m, ns, n)).authorization.unwrap().scope;
    assert_eq!(scope("shop", "sel"), Scope::WorkloadSelector as i32);
    assert_eq!(scope("shop", "ns"), Scope::Namespace as i32);
    assert_eq!(scope("istio-system", "mesh"), Scope::Global as i32);
    assert_eq!(scope("istio-system", "mesh-sel"), Scope::WorkloadSelector as i32);
}

#[test]
fn empty_rule_matches_everything_and_no_rules_match_nothing() {
    let m = model(&[ap("shop", "all", "  rules: [{}]\n"), ap("shop", "none", "  action: ALLOW\n")].concat());
    let all = authz::translate(&cfg(), &policy(&m, "shop", "all")).authorization.unwrap();
    assert_eq!(all.groups, vec![Group { rules: vec![] }]);
    let none = authz::translate(&cfg(), &policy(&m, "shop", "none")).authorization.unwrap();
    assert!(none.groups.is_empty());
    assert_eq!(none.action, Action::Allow as i32);
}

#[test]
fn from_fields_translate_with_istio_wildcards() {
    let m = model(&ap(
        "shop",
        "p",
        "  rules:\n  - from:\n    - source:\n        principals: [\"*\", \"*/sa/curl\", \"cluster.local/ns/tools/*\", \"cluster.local/ns/a/sa/b\"]\n        notNamespaces: [legacy]\n        ipBlocks: [10.1.0.0/16, \"fd00::1\"]\n        notIpBlocks: [10.1.2.3]\n        serviceAccounts: [tools/curl, web]\n        notServiceAccounts: [x/y]\n    - source:\n        namespaces: [tools]\n",
    ));
    let a = authz::translate(&cfg(), &policy(&m, "shop", "p")).authorization.unwrap();
    let sm = |t| StringMatch { match_type: Some(t) };
    assert_eq!(
        a.groups,
        vec![Group {
            rules: vec![Rules {
                matches: vec![
                    Match {
                        principals: vec![
                            presence(),
                            sm(MatchType::Suffix("/sa/curl".into())),
                            sm(MatchType::Prefix("cluster.local/ns/tools/".into())),
                            exact("cluster.local/ns/a/sa/b"),
                        ],
                        not_namespaces: vec![exact("legacy")],
                        source_ips: vec![
                            IpMatch { address: vec![10, 1, 0, 0].into(), length: 16 },
                            IpMatch {
                                address: "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec().into(),
                                length: 128
                            },
                        ],
                        not_source_ips: vec![IpMatch { address: vec![10, 1, 2, 3].into(), length: 32 }],
                        service_accounts: vec![
                            ServiceAccountMatch { namespace: "tools".into(), service_account: "curl".into() },
                            ServiceAccountMatch { namespace: "shop".into(), service_account: "web".into() },
                        ],
                        not_service_accounts: vec![ServiceAccountMatch {
                            namespace: "x".into(),
                            service_account: "y".into()
                        }],
                        ..Default::default()
                    },
                    Match { namespaces: vec![exact("tools")], ..Default::default() },
                ]
            }]
        }]
    );
}

#[test]
fn to_and_when_become_rules_in_istio_order() {
    let m = model(&ap(
        "shop",
        "p",
        "  rules:\n  - to:\n    - operation:\n        ports: [\"80\", 443]\n        notPorts: [\"81\"]\n    from:\n    - source:\n        namespaces: [tools]\n    when:\n    - key: source.ip\n      values: [10.0.0.0/8]\n      notValues: [10.9.0.0/16]\n    - key: destination.port\n      values: [\"8080\"]\n    - key: source.principal\n      notValues: [\"cluster.local/ns/x/sa/y\"]\n    - key: destination.ip\n      values: [10.96.0.1]\n    - key: source.namespace\n      values: [tools]\n",
    ));
    let a = authz::translate(&cfg(), &policy(&m, "shop", "p"));
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    let r = &a.authorization.unwrap().groups[0].rules;
    assert_eq!(r.len(), 7);
    assert_eq!(
        r[0],
        Rules {
            matches: vec![Match {
                destination_ports: vec![80, 443],
                not_destination_ports: vec![81],
                ..Default::default()
            }]
        }
    );
    assert_eq!(r[1], Rules { matches: vec![Match { namespaces: vec![exact("tools")], ..Default::default() }] });
    assert_eq!(
        r[2].matches[0],
        Match {
            source_ips: vec![IpMatch { address: vec![10, 0, 0, 0].into(), length: 8 }],
            not_source_ips: vec![IpMatch { address: vec![10, 9, 0, 0].into(), length: 16 }],
            ..Default::default()
        }
    );
    assert_eq!(r[3], m_ports(&[8080]));
    assert_eq!(r[4].matches[0], Match { not_principals: vec![exact("cluster.local/ns/x/sa/y")], ..Default::default() });
    assert_eq!(
        r[5].matches[0],
        Match {
            destination_ips: vec![IpMatch { address: vec![10, 96, 0, 1].into(), length: 32 }],
            ..Default::default()
        }
    );
    assert_eq!(r[6].matches[0], Match { namespaces: vec![exact("tools")], ..Default::default() });
}

#[test]
fn allow_drops_rules_with_http_attributes_and_keeps_the_others() {
    let m = model(&ap(
        "shop",
        "p",
        "  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        ports: [\"8080\"]\n  - to:\n    - operation:\n        ports: [\"9090\"]\n  - from:\n    - source:\n        requestPrincipals: [\"*\"]\n  - when:\n    - key: request.headers[x-token]\n      values: [abc]\n",
    ));
    let out = authz::translate(&cfg(), &policy(&m, "shop", "p"));
    let a = out.authorization.unwrap();
    // Only the L4 rule remains: the others would have allowed more than ztunnel can check.
    assert_eq!(a.groups, vec![Group { rules: vec![m_ports(&[9090])] }]);
    assert_eq!(out.warnings.len(), 1);
    let w = &out.warnings[0];
    for f in ["methods", "requestPrincipals", "request.headers[x-token]", "ALLOW", "left out"] {
        assert!(w.contains(f), "{w}");
    }
}

#[test]
fn allow_with_only_http_rules_allows_nothing() {
    let m = model(&ap("shop", "p", "  rules:\n  - to:\n    - operation:\n        paths: [/admin]\n"));
    let a = authz::translate(&cfg(), &policy(&m, "shop", "p")).authorization.unwrap();
    assert_eq!(a.action, Action::Allow as i32);
    assert!(a.groups.is_empty(), "an ALLOW policy with no group matches nothing: deny all");
}

#[test]
fn deny_ignores_http_attributes_and_keeps_the_rest_of_the_rule() {
    let m = model(&ap(
        "shop",
        "p",
        "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [POST]\n        ports: [\"8080\"]\n  - to:\n    - operation:\n        hosts: [a.example]\n  - when:\n    - key: request.auth.claims[group]\n      values: [admin]\n",
    ));
    let out = authz::translate(&cfg(), &policy(&m, "shop", "p"));
    let a = out.authorization.unwrap();
    assert_eq!(a.action, Action::Deny as i32);
    assert_eq!(
        a.groups,
        vec![
            // Any POST on 8080 becomes any connection on 8080.
            Group { rules: vec![m_ports(&[8080])] },
            // Any request to a.example becomes any connection at all.
            Group { rules: vec![Rules { matches: vec![Match::default()] }] },
            Group { rules: vec![Rules { matches: vec![Match::default()] }] },
        ]
    );
    assert!(out.warnings[0].contains("DENY") && out.warnings[0].contains("hosts"), "{:?}", out.warnings);
}

#[test]
fn audit_is_not_sent_and_custom_fails_closed_as_deny() {
    let m = model(
        &[
            ap("shop", "audit", "  action: AUDIT\n  rules: [{}]\n"),
            ap("shop", "custom", "  action: CUSTOM\n  provider:\n    name: ext-authz\n  rules:\n  - to:\n    - operation:\n        paths: [/admin]\n        ports: [\"8080\"]\n"),
        ]
        .concat(),
    );
    let audit = authz::translate(&cfg(), &policy(&m, "shop", "audit"));
    assert!(audit.authorization.is_none());
    assert!(audit.warnings[0].contains("AUDIT"));
    let custom = authz::translate(&cfg(), &policy(&m, "shop", "custom"));
    let a = custom.authorization.unwrap();
    assert_eq!(a.action, Action::Deny as i32);
    assert_eq!(a.groups, vec![Group { rules: vec![m_ports(&[8080])] }]);
    assert!(custom.warnings[0].contains("CUSTOM"));
}

#[test]
fn target_refs_policies_are_for_waypoints() {
    let m = model(&ap(
        "shop",
        "p",
        "  targetRefs:\n  - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: waypoint\n  rules: [{}]\n",
    ));
    let out = authz::translate(&cfg(), &policy(&m, "shop", "p"));
    assert!(out.authorization.is_none(), "a waypoint policy must not reach ztunnel");
    assert!(out.warnings.is_empty());
    let l7 = l7_policy::translate(&cfg(), &m, &policy(&m, "shop", "p"));
    let p = l7.policy.expect("an L7 policy for the waypoint");
    assert_eq!(p.targets.len(), 1);
    assert_eq!(p.rules.len(), 1);
}

#[test]
fn workloads_list_selector_policies_of_their_namespace_and_the_root() {
    let m = model(
        &[
            ap("shop", "a", "  selector:\n    matchLabels: {app: web}\n"),
            ap("shop", "b", "  selector:\n    matchLabels: {app: web, tier: x}\n"),
            ap("shop", "ns-wide", "  rules: [{}]\n"),
            ap("tools", "other-ns", "  selector:\n    matchLabels: {app: web}\n"),
            ap("istio-system", "mesh", "  selector:\n    matchLabels: {app: web}\n"),
            ap("shop", "audit", "  action: AUDIT\n  selector:\n    matchLabels: {app: web}\n"),
        ]
        .concat(),
    );
    let labels = [("app".to_string(), "web".to_string())].into();
    assert_eq!(authz::selected(&cfg(), &m, "shop", &labels), ["istio-system/mesh", "shop/a"]);
}

// ---- PeerAuthentication ----

fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

fn web_labels() -> crate::k8s::Labels {
    [("app".to_string(), "web".to_string())].into()
}

const STATIC: &str = "istio-system/istio_converted_static_strict";

#[test]
fn effective_mode_is_workload_then_namespace_then_mesh() {
    let mesh_strict = pa("istio-system", "default", "  mtls: {mode: STRICT}\n");
    let m = model(&[mesh_strict.clone(), pa("tools", "default", "  mtls: {mode: PERMISSIVE}\n")].concat());
    assert_eq!(peer_authn::workload_policies(&cfg(), &m, "shop", &web_labels()), [STATIC]);
    assert!(peer_authn::workload_policies(&cfg(), &m, "tools", &web_labels()).is_empty());

    let m = model(
        &[
            pa("shop", "default", "  mtls: {mode: STRICT}\n"),
            pa("shop", "web", "  selector:\n    matchLabels: {app: web}\n  mtls: {mode: PERMISSIVE}\n"),
        ]
        .concat(),
    );
    assert!(peer_authn::workload_policies(&cfg(), &m, "shop", &web_labels()).is_empty());
    let other = [("app".to_string(), "db".to_string())].into();
    assert_eq!(peer_authn::workload_policies(&cfg(), &m, "shop", &other), [STATIC]);

    // UNSET at the namespace inherits the mesh's STRICT.
    let m = model(&[mesh_strict, pa("shop", "default", "  mtls: {mode: UNSET}\n")].concat());
    assert_eq!(peer_authn::workload_policies(&cfg(), &m, "shop", &web_labels()), [STATIC]);
    assert!(m.peer_authentications.values().all(|p| peer_authn::convert(&cfg(), &m, p).is_none()));
}

#[test]
fn strict_with_a_permissive_port_becomes_a_converted_policy() {
    let m = model(&pa(
        "shop",
        "web",
        "  selector:\n    matchLabels: {app: web}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n",
    ));
    assert_eq!(
        peer_authn::workload_policies(&cfg(), &m, "shop", &web_labels()),
        ["shop/converted_peer_authentication_web"]
    );
    let a = peer_authn::convert(&cfg(), &m, &m.peer_authentications[&("shop".into(), "web".into())]).unwrap();
    assert_eq!(
        a,
        Authorization {
            name: "converted_peer_authentication_web".into(),
            namespace: "shop".into(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            groups: vec![Group {
                rules: vec![
                    Rules { matches: vec![Match { not_principals: vec![presence()], ..Default::default() }] },
                    Rules { matches: vec![Match { not_destination_ports: vec![8080], ..Default::default() }] },
                ]
            }],
            dry_run: false,
        }
    );
}

#[test]
fn strict_ports_under_a_permissive_mode_are_one_group_each() {
    let m = model(&pa(
        "shop",
        "web",
        "  selector:\n    matchLabels: {app: web}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    \"9000\": {mode: STRICT}\n    443: {mode: STRICT}\n",
    ));
    assert_eq!(
        peer_authn::workload_policies(&cfg(), &m, "shop", &web_labels()),
        ["shop/converted_peer_authentication_web"]
    );
    let a = peer_authn::convert(&cfg(), &m, &m.peer_authentications[&("shop".into(), "web".into())]).unwrap();
    let port_group = |p| Group {
        rules: vec![Rules {
            matches: vec![Match { not_principals: vec![presence()], destination_ports: vec![p], ..Default::default() }],
        }],
    };
    assert_eq!(a.groups, vec![port_group(443), port_group(9000)]);
}

#[test]
fn unset_mode_under_a_strict_namespace_merges_the_strictness() {
    let m = model(
        &[
            pa("shop", "default", "  mtls: {mode: STRICT}\n"),
            pa(
                "shop",
                "web",
                "  selector:\n    matchLabels: {app: web}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
            ),
        ]
        .concat(),
    );
    assert_eq!(
        peer_authn::workload_policies(&cfg(), &m, "shop", &web_labels()),
        ["shop/converted_peer_authentication_web"]
    );
    let a = peer_authn::convert(&cfg(), &m, &m.peer_authentications[&("shop".into(), "web".into())]).unwrap();
    assert_eq!(
        a.groups,
        vec![Group {
            rules: vec![
                Rules { matches: vec![Match { not_destination_ports: vec![8080], ..Default::default() }] },
                Rules { matches: vec![Match { not_principals: vec![presence()], ..Default::default() }] },
            ]
        }]
    );
}

#[test]
fn oldest_namespace_policy_wins() {
    let m = model(
        &[
            pa("shop", "b-new", "  mtls: {mode: PERMISSIVE}\n")
                .replace("  namespace: shop\n", "  namespace: shop\n  creationTimestamp: \"2024-05-01T00:00:00Z\"\n"),
            pa("shop", "a-old", "  mtls: {mode: STRICT}\n")
                .replace("  namespace: shop\n", "  namespace: shop\n  creationTimestamp: \"2023-01-01T00:00:00Z\"\n"),
        ]
        .concat(),
    );
    assert_eq!(peer_authn::workload_policies(&cfg(), &m, "shop", &web_labels()), [STATIC]);
}

// ---- Workloads and services ----

const NS: &str =
    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n";

fn pod_yaml(name: &str, extra_labels: &str, spec: &str, status: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    app: web\n{extra_labels}spec:\n  nodeName: n1\n{spec}status:\n  podIP: 10.0.0.5\n{status}"
    )
}

#[test]
fn named_target_ports_resolve_per_pod_or_leave_the_port_out() {
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.1\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: admin, port: 81, targetPort: admin}\n  - {name: raw, port: 90}\n";
    let with_http =
        pod_yaml("a", "", "  containers:\n  - name: c\n    ports:\n    - {name: http, containerPort: 8080}\n", "");
    let m = model(&[NS, svc, &with_http].concat());
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "a")).unwrap();
    assert_eq!(
        w.services["shop/web.shop.svc.cluster.local"].ports,
        vec![
            Port { service_port: 80, target_port: 8080, app_protocol: 0 },
            Port { service_port: 90, target_port: 90, app_protocol: 0 }
        ]
    );
    let (s, _) = service::translate(&cfg(), &m, &m.services[&("shop".into(), "web".into())]);
    assert_eq!(
        s.ports.iter().map(|p| (p.service_port, p.target_port)).collect::<Vec<_>>(),
        [(80, 0), (81, 0), (90, 90)]
    );
}

#[test]
fn enrollment_status_and_addresses() {
    let plain_ns = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
    let dual = pod_yaml(
        "dual",
        "    istio.io/dataplane-mode: ambient\n",
        "",
        "  podIPs:\n  - ip: 10.0.0.5\n  - ip: fd00::5\n  conditions:\n  - {type: Ready, status: \"True\"}\n",
    );
    let m = model(&[plain_ns, &dual].concat());
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "dual")).unwrap();
    assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone as i32, "the pod's own label enrolls it");
    assert_eq!(w.addresses.len(), 2);
    assert_eq!(w.addresses[0].len(), 4);
    assert_eq!(w.addresses[1].len(), 16);
    assert_eq!(w.status, WorkloadStatus::Healthy as i32);

    let out = pod_yaml("out", "    istio.io/dataplane-mode: none\n", "", "");
    let m = model(&[NS, &out].concat());
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "out")).unwrap();
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32, "none opts out of an ambient namespace");
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32, "no Ready condition");

    let done = pod_yaml("done", "", "", "  phase: Succeeded\n");
    let failed = pod_yaml("failed", "", "", "  phase: Failed\n");
    let m = model(&[NS, &done, &failed].concat());
    assert!(workload::translate(&cfg(), &m, pod(&m, "shop", "done")).is_none());
    assert!(workload::translate(&cfg(), &m, pod(&m, "shop", "failed")).is_none());
}

#[test]
fn a_host_network_pod_is_a_workload_sent_as_such_and_never_hbone() {
    // istiod (istio#52191) builds host-network pods as workloads with HOST_NETWORK, so that
    // Services selecting them reach them; ztunnel does not look workloads up by that shared
    // address. Istio's CNI never captures them: no HBONE, whatever the labels say.
    let host = pod_yaml("host", "    istio.io/dataplane-mode: ambient\n", "  hostNetwork: true\n", "");
    let m = model(&[NS, &host].concat());
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "host")).expect("a workload");
    assert_eq!(w.network_mode, NetworkMode::HostNetwork as i32);
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32);
    assert!(!workload::enrolled(&m, pod(&m, "shop", "host")));
}

#[test]
fn health_is_ready_and_not_being_deleted() {
    let ready = "  conditions:\n  - {type: Ready, status: \"True\"}\n";
    let deleting = pod_yaml("deleting", "", "", ready)
        .replace("  namespace: shop\n", "  namespace: shop\n  deletionTimestamp: \"2026-11-03T11:20:00Z\"\n");
    // The kubelet folds container readiness into `Ready`; istiod reads `Ready` only, so a
    // container status saying otherwise does not count (nor does `ContainersReady`, which
    // ignores readiness gates).
    let ready_containers_not = pod_yaml(
        "gated",
        "",
        "",
        "  conditions:\n  - {type: ContainersReady, status: \"False\"}\n  - {type: Ready, status: \"True\"}\n  containerStatuses:\n  - {name: c, ready: false}\n",
    );
    let not_ready = pod_yaml("starting", "", "", "  conditions:\n  - {type: Ready, status: \"False\"}\n");
    let m = model(&[NS, &deleting, &ready_containers_not, &not_ready].concat());
    let status = |name| workload::translate(&cfg(), &m, pod(&m, "shop", name)).unwrap().0.status;
    assert_eq!(status("deleting"), WorkloadStatus::Unhealthy as i32);
    assert_eq!(status("gated"), WorkloadStatus::Healthy as i32);
    assert_eq!(status("starting"), WorkloadStatus::Unhealthy as i32);
}

#[test]
fn addresses_are_pod_ips_else_pod_ip_and_without_one_no_workload() {
    // As istiod's getPodIPs: `podIPs` when listed (it holds `podIP` first), else `podIP`.
    let listed =
        pod_yaml("listed", "", "", "  podIPs:\n  - ip: 10.0.0.6\n").replace("podIP: 10.0.0.5", "podIP: 10.0.0.6");
    let no_ip = pod_yaml("no-ip", "", "", "").replace("  podIP: 10.0.0.5\n", "  phase: Pending\n");
    let m = model(&[NS, &listed, &no_ip].concat());
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "listed")).unwrap();
    assert_eq!(w.addresses, vec![bytes::Bytes::from(vec![10, 0, 0, 6])]);
    assert!(workload::translate(&cfg(), &m, pod(&m, "shop", "no-ip")).is_none());
}

#[test]
fn canonical_names_and_controller() {
    let job = pod_yaml(
        "batch-x1",
        "    app.kubernetes.io/name: reporter\n    service.istio.io/canonical-revision: r7\n",
        "",
        "",
    )
    .replace("  labels:\n", "  ownerReferences:\n  - {kind: Job, name: batch}\n  labels:\n");
    let m = model(&[NS, &job].concat());
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "batch-x1")).unwrap();
    assert_eq!((w.workload_name.as_str(), w.workload_type), ("batch", WorkloadType::Job as i32));
    // app.kubernetes.io/name wins over app.
    assert_eq!((w.canonical_name.as_str(), w.canonical_revision.as_str()), ("reporter", "r7"));
}

#[test]
fn service_ports_declare_their_protocol_by_app_protocol_else_by_name() {
    use proto::istio::workload::AppProtocol as P;
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.1\n  selector: {app: web}\n  ports:\n  - {name: http-web, port: 80}\n  - {name: GRPC, port: 81}\n  - {name: http2, port: 82}\n  - {name: web, port: 83, appProtocol: kubernetes.io/h2c}\n  - {name: http, port: 84, appProtocol: tcp}\n  - {name: tls-x, port: 85}\n  - {name: httpx, port: 86}\n  - {port: 87}\n  - {name: grpc, port: 88, appProtocol: example.com/custom}\n  - {name: grpc-web, port: 89}\n";
    let m = model(&[NS, svc].concat());
    let (s, _) = service::translate(&cfg(), &m, &m.services[&("shop".into(), "web".into())]);
    let got: Vec<(u32, P)> = s.ports.iter().map(|p| (p.service_port, p.app_protocol())).collect();
    assert_eq!(
        got,
        [
            (80, P::Http11),
            (81, P::Grpc),
            (82, P::Http2),
            (83, P::Http2),
            // appProtocol wins over the name.
            (84, P::Tcp),
            (85, P::Tls),
            // A prefix is a whole word before `-`.
            (86, P::Unknown),
            (87, P::Unknown),
            // An appProtocol we do not know declares nothing, even over a known name.
            (88, P::Unknown),
            (89, P::Grpc),
        ]
    );
}

#[test]
fn selectorless_services_take_endpoints_from_slices() {
    let yaml = [
        NS,
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.9\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n",
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: ext-abc\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: ext\naddressType: IPv4\nendpoints:\n- addresses: [10.0.0.5]\n  targetRef: {kind: Pod, name: a, namespace: shop}\nports:\n- {name: http, port: 8080, protocol: TCP}\n",
        &pod_yaml("a", "", "", ""),
        &pod_yaml("b", "", "", ""),
    ]
    .concat();
    let m = model(&yaml);
    let (a, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "a")).unwrap();
    assert_eq!(
        a.services["shop/ext.shop.svc.cluster.local"].ports,
        vec![Port { service_port: 80, target_port: 8080, app_protocol: 0 }]
    );
    let (b, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "b")).unwrap();
    assert!(b.services.is_empty());
}

fn gateway(name: &str, waypoint_for: Option<&str>, status_ip: Option<&str>) -> String {
    let labels = waypoint_for.map(|f| format!("  labels:\n    istio.io/waypoint-for: {f}\n")).unwrap_or_default();
    let status = status_ip
        .map(|ip| format!("status:\n  addresses:\n  - {{type: IPAddress, value: {ip}}}\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: shop\n{labels}spec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {{name: mesh, port: 15008, protocol: HBONE}}\n{status}"
    )
}

#[test]
fn namespace_waypoint_applies_to_services_and_to_workloads_only_when_it_takes_them() {
    let ns = format!("{NS}    istio.io/use-waypoint: wp\n");
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.1\n  selector: {app: web}\n  ports: [{port: 80}]\n";
    let m = model(&[ns.as_str(), svc, &gateway("wp", None, None), &pod_yaml("a", "", "", "")].concat());
    let (s, warn) = service::translate(&cfg(), &m, &m.services[&("shop".into(), "web".into())]);
    assert!(warn.is_empty());
    let wp = s.waypoint.unwrap();
    assert_eq!(wp.hbone_mtls_port, 15008);
    assert_eq!(
        wp.destination,
        Some(Destination::Hostname(NamespacedHostname {
            namespace: "shop".into(),
            hostname: "wp.shop.svc.cluster.local".into()
        }))
    );
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "a")).unwrap();
    assert!(w.waypoint.is_none(), "a service waypoint does not take workload-addressed traffic");

    let m =
        model(&[ns.as_str(), svc, &gateway("wp", Some("all"), Some("10.96.5.5")), &pod_yaml("a", "", "", "")].concat());
    let (w, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "a")).unwrap();
    assert_eq!(
        w.waypoint.unwrap().destination,
        Some(Destination::Address(NetworkAddress { network: String::new(), address: vec![10, 96, 5, 5].into() }))
    );
    let opted_out = pod_yaml("b", "    istio.io/use-waypoint: none\n", "", "");
    let m = model(&[ns.as_str(), &gateway("wp", Some("all"), None), &opted_out].concat());
    assert!(workload::translate(&cfg(), &m, pod(&m, "shop", "b")).unwrap().0.waypoint.is_none());
}

#[test]
fn a_missing_waypoint_is_a_warning() {
    let p = pod_yaml("a", "    istio.io/use-waypoint: nowhere\n", "", "");
    let m = model(&[NS, &p].concat());
    let (w, warnings) = workload::translate(&cfg(), &m, pod(&m, "shop", "a")).unwrap();
    assert!(w.waypoint.is_none());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("Gateway shop/nowhere"), "{warnings:?}");
}

#[test]
fn a_pod_label_sends_that_pod_to_a_workload_waypoint() {
    let labelled = pod_yaml("a", "    istio.io/use-waypoint: wp\n", "", "");
    let plain = pod_yaml("b", "", "", "");
    let m = model(&[NS, &gateway("wp", Some("workload"), Some("10.96.5.6")), &labelled, &plain].concat());
    let (a, warnings) = workload::translate(&cfg(), &m, pod(&m, "shop", "a")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let wp = a.waypoint.expect("the labelled pod names its waypoint");
    assert_eq!(wp.hbone_mtls_port, 15008);
    assert_eq!(
        wp.destination,
        Some(Destination::Address(NetworkAddress { network: String::new(), address: vec![10, 96, 5, 6].into() }))
    );
    let (b, _) = workload::translate(&cfg(), &m, pod(&m, "shop", "b")).unwrap();
    assert!(b.waypoint.is_none(), "only the labelled pod: the namespace has no waypoint");
}
