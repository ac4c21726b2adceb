//! The sample manifests translate into exactly the expected Istio resources.

mod support;

use std::collections::HashMap;

use istiod_lite::source::dir::Loader;
use istiod_lite::{MeshConfig, Object, Translator};
use proto::istio::security::{Action, Authorization, Group, Match, Rules, Scope, StringMatch, string_match::MatchType};
use proto::istio::workload::{
    AppProtocol, NetworkAddress, Port, PortList, Service, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use support::*;

fn exact(s: &str) -> StringMatch {
    StringMatch { match_type: Some(MatchType::Exact(s.into())) }
}

fn catalog_pod(name: &str, node: &str, ip: [u8; 4]) -> Workload {
    Workload {
        uid: format!("Kubernetes//Pod/shop/{name}"),
        name: name.into(),
        namespace: "shop".into(),
        addresses: vec![ip.to_vec().into()],
        tunnel_protocol: TunnelProtocol::Hbone as i32,
        service_account: "catalog".into(),
        node: node.into(),
        canonical_name: "catalog".into(),
        canonical_revision: "v1".into(),
        workload_type: WorkloadType::Deployment as i32,
        workload_name: "catalog".into(),
        services: HashMap::from([(
            "shop/catalog.shop.svc.cluster.local".to_string(),
            PortList {
                ports: vec![
                    Port { service_port: 80, target_port: 8080, app_protocol: 0 },
                    Port { service_port: 9090, target_port: 9090, app_protocol: 0 },
                ],
            },
        )]),
        // As Istio orders them: selected policies sorted, then the peer-authentication ones.
        authorization_policies: vec![
            "shop/catalog-allow-curl".into(),
            "istio-system/istio_converted_static_strict".into(),
        ],
        status: WorkloadStatus::Healthy as i32,
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

#[test]
fn samples_translate_to_the_expected_resources() {
    let snap = Loader::new(samples_dir()).load().unwrap();
    assert!(snap.errors.is_empty(), "sample errors: {:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    let delta = t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());

    let addrs: HashMap<String, prost_types::Any> = delta.of(ADDRESS_TYPE_URL).upserts.into_iter().collect();
    let mut names: Vec<&String> = addrs.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p",
            "Kubernetes//Pod/shop/catalog-7d4b9c6f5-q7m4w",
            "Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn",
            "Kubernetes//Pod/tools/debug",
            "shop/catalog.shop.svc.cluster.local",
        ]
    );
    assert_eq!(
        decode_workload(&addrs["Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p"]),
        catalog_pod("catalog-7d4b9c6f5-k2x9p", "node-a", [10, 244, 1, 10])
    );
    assert_eq!(
        decode_workload(&addrs["Kubernetes//Pod/shop/catalog-7d4b9c6f5-q7m4w"]),
        catalog_pod("catalog-7d4b9c6f5-q7m4w", "node-b", [10, 244, 2, 10])
    );
    assert_eq!(
        decode_workload(&addrs["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn"]),
        Workload {
            uid: "Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn".into(),
            name: "curl-5f8d9b7c4-zt6vn".into(),
            namespace: "tools".into(),
            addresses: vec![vec![10, 244, 1, 20].into()],
            tunnel_protocol: TunnelProtocol::Hbone as i32,
            service_account: "curl".into(),
            node: "node-a".into(),
            canonical_name: "curl".into(),
            canonical_revision: "latest".into(),
            workload_type: WorkloadType::Deployment as i32,
            workload_name: "curl".into(),
            status: WorkloadStatus::Healthy as i32,
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        }
    );
    assert_eq!(
        decode_workload(&addrs["Kubernetes//Pod/tools/debug"]),
        Workload {
            uid: "Kubernetes//Pod/tools/debug".into(),
            name: "debug".into(),
            namespace: "tools".into(),
            addresses: vec![vec![10, 244, 2, 30].into()],
            tunnel_protocol: TunnelProtocol::None as i32,
            service_account: "default".into(),
            node: "node-b".into(),
            canonical_name: "debug".into(),
            canonical_revision: "latest".into(),
            workload_type: WorkloadType::Pod as i32,
            workload_name: "debug".into(),
            status: WorkloadStatus::Unhealthy as i32,
            cluster_id: "Kubernetes".into(),
            ..Default::default()
        }
    );
    assert_eq!(
        decode_service(&addrs["shop/catalog.shop.svc.cluster.local"]),
        Service {
            name: "catalog".into(),
            namespace: "shop".into(),
            hostname: "catalog.shop.svc.cluster.local".into(),
            addresses: vec![NetworkAddress { network: String::new(), address: vec![10, 96, 0, 20].into() }],
            ports: vec![
                // Port 80 is named `http`: declared HTTP/1.1 (Istio's explicit protocol selection).
                Port { service_port: 80, target_port: 0, app_protocol: AppProtocol::Http11 as i32 },
                Port { service_port: 9090, target_port: 9090, app_protocol: 0 },
            ],
            ..Default::default()
        }
    );

    let auths: HashMap<String, prost_types::Any> = delta.of(AUTHORIZATION_TYPE_URL).upserts.into_iter().collect();
    let mut names: Vec<&String> = auths.keys().collect();
    names.sort();
    assert_eq!(names, ["istio-system/istio_converted_static_strict", "shop/catalog-allow-curl", "shop/deny-legacy"]);
    assert_eq!(
        decode_authz(&auths["shop/catalog-allow-curl"]),
        Authorization {
            name: "catalog-allow-curl".into(),
            namespace: "shop".into(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Allow as i32,
            groups: vec![Group {
                rules: vec![
                    Rules { matches: vec![Match { destination_ports: vec![8080], ..Default::default() }] },
                    Rules {
                        matches: vec![Match {
                            principals: vec![exact("cluster.local/ns/tools/sa/curl")],
                            ..Default::default()
                        }]
                    },
                ]
            }],
            dry_run: false,
        }
    );
    assert_eq!(
        decode_authz(&auths["shop/deny-legacy"]),
        Authorization {
            name: "deny-legacy".into(),
            namespace: "shop".into(),
            scope: Scope::Namespace as i32,
            action: Action::Deny as i32,
            groups: vec![Group {
                rules: vec![Rules { matches: vec![Match { namespaces: vec![exact("legacy")], ..Default::default() }] }]
            }],
            dry_run: false,
        }
    );
    assert_eq!(
        decode_authz(&auths["istio-system/istio_converted_static_strict"]),
        Authorization {
            name: "istio_converted_static_strict".into(),
            namespace: "istio-system".into(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            groups: vec![Group {
                rules: vec![Rules {
                    matches: vec![Match {
                        not_principals: vec![StringMatch { match_type: Some(MatchType::Presence(())) }],
                        ..Default::default()
                    }]
                }]
            }],
            dry_run: false,
        }
    );
    // The snapshot a new subscriber gets is the same set.
    assert_eq!(t.snapshot(ADDRESS_TYPE_URL).len(), 5);
    assert_eq!(t.snapshot(AUTHORIZATION_TYPE_URL).len(), 3);
}
