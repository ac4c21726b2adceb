//! A change recomputes only what depends on it, and the delta holds exactly what changed.

mod support;

use istiod_lite::k8s::core::Condition;
use istiod_lite::source::dir::Loader;
use istiod_lite::source::parse_file;
use istiod_lite::{Change, Kind, MeshConfig, Object, ObjectKey, Translator};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use support::*;

const CATALOG_A: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p";
const CATALOG_B: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-q7m4w";

fn loaded() -> Translator {
    let snap = Loader::new(samples_dir()).load().unwrap();
    assert!(snap.errors.is_empty());
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    t
}

fn object(yaml: &str) -> Object {
    let mut p = parse_file(std::path::Path::new("change.yaml"), yaml);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    p.objects.remove(0).object
}

fn names(d: &istiod_lite::ResourceDelta) -> Vec<&str> {
    let mut v: Vec<&str> = d.upserts.iter().map(|(n, _)| n.as_str()).collect();
    v.sort();
    v
}

fn catalog_pod(t: &Translator) -> istiod_lite::k8s::core::Pod {
    t.model().pods[&("shop".to_string(), "catalog-7d4b9c6f5-k2x9p".to_string())].clone()
}

#[test]
fn one_pod_change_yields_exactly_that_workload() {
    let mut t = loaded();
    let mut pod = catalog_pod(&t);
    pod.status.conditions = vec![Condition { type_: "Ready".into(), status: "False".into() }];
    let delta = t.apply(Change::Upsert(Object::Pod(pod)));
    assert_eq!(delta.types.keys().copied().collect::<Vec<_>>(), [ADDRESS_TYPE_URL]);
    let addrs = delta.of(ADDRESS_TYPE_URL);
    assert_eq!(names(&addrs), [CATALOG_A]);
    assert!(addrs.removals.is_empty());
    let w = decode_workload(&addrs.upserts[0].1);
    assert_eq!(w.status, proto::istio::workload::WorkloadStatus::Unhealthy as i32);
    // The stored state matches what was sent.
    assert_eq!(t.snapshot(ADDRESS_TYPE_URL).len(), 5);
}

#[test]
fn reapplying_the_same_object_changes_nothing() {
    let mut t = loaded();
    let pod = catalog_pod(&t);
    assert!(t.apply(Change::Upsert(Object::Pod(pod))).is_empty());
    // A field translation ignores changes the model but no resource.
    let mut pod = catalog_pod(&t);
    pod.spec.containers[0]
        .ports
        .push(istiod_lite::k8s::core::ContainerPort { name: Some("debug".into()), container_port: 5005 });
    assert!(t.apply(Change::Upsert(Object::Pod(pod))).is_empty());
}

#[test]
fn pod_deletion_is_one_removal() {
    let mut t = loaded();
    let delta = t.apply(Change::Delete(ObjectKey::new(Kind::Pod, "tools", "debug")));
    assert_eq!(delta.types.len(), 1);
    let addrs = delta.of(ADDRESS_TYPE_URL);
    assert!(addrs.upserts.is_empty());
    assert_eq!(addrs.removals, ["Kubernetes//Pod/tools/debug"]);
}

#[test]
fn service_change_updates_it_and_the_workloads_whose_map_changed() {
    let mut t = loaded();
    let mut svc = t.model().services[&("shop".to_string(), "catalog".to_string())].clone();
    svc.spec.ports.pop();
    let delta = t.apply(Change::Upsert(Object::Service(svc)));
    let addrs = delta.of(ADDRESS_TYPE_URL);
    assert_eq!(names(&addrs), [CATALOG_A, CATALOG_B, "shop/catalog.shop.svc.cluster.local"]);
    assert!(delta.of(AUTHORIZATION_TYPE_URL).is_empty());

    let delta = t.apply(Change::Delete(ObjectKey::new(Kind::Service, "shop", "catalog")));
    let addrs = delta.of(ADDRESS_TYPE_URL);
    assert_eq!(addrs.removals, ["shop/catalog.shop.svc.cluster.local"]);
    assert_eq!(names(&addrs), [CATALOG_A, CATALOG_B]);
    assert!(decode_workload(&addrs.upserts[0].1).services.is_empty());
}

#[test]
fn namespace_wide_policy_changes_only_the_policy() {
    let mut t = loaded();
    let delta = t.apply(Change::Upsert(object(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-legacy\n  namespace: shop\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [legacy, old]\n",
    )));
    assert!(delta.of(ADDRESS_TYPE_URL).is_empty());
    assert_eq!(names(&delta.of(AUTHORIZATION_TYPE_URL)), ["shop/deny-legacy"]);
}

#[test]
fn selector_policy_changes_the_policy_and_the_workloads_it_selects() {
    let mut t = loaded();
    let delta = t.apply(Change::Upsert(object(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: curl-lockdown\n  namespace: tools\nspec:\n  selector:\n    matchLabels: {app: curl}\n",
    )));
    assert_eq!(names(&delta.of(AUTHORIZATION_TYPE_URL)), ["tools/curl-lockdown"]);
    let addrs = delta.of(ADDRESS_TYPE_URL);
    assert_eq!(names(&addrs), ["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn"]);
    assert_eq!(decode_workload(&addrs.upserts[0].1).authorization_policies, ["tools/curl-lockdown"]);

    let delta = t.apply(Change::Delete(ObjectKey::new(Kind::AuthorizationPolicy, "tools", "curl-lockdown")));
    assert_eq!(delta.of(AUTHORIZATION_TYPE_URL).removals, ["tools/curl-lockdown"]);
    assert_eq!(names(&delta.of(ADDRESS_TYPE_URL)), ["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn"]);
}

#[test]
fn removing_the_last_peer_authentication_removes_the_static_policy() {
    let mut t = loaded();
    let delta = t.apply(Change::Delete(ObjectKey::new(Kind::PeerAuthentication, "shop", "default")));
    assert_eq!(delta.of(AUTHORIZATION_TYPE_URL).removals, ["istio-system/istio_converted_static_strict"]);
    let addrs = delta.of(ADDRESS_TYPE_URL);
    assert_eq!(names(&addrs), [CATALOG_A, CATALOG_B]);
    for (_, any) in &addrs.upserts {
        assert_eq!(decode_workload(any).authorization_policies, ["shop/catalog-allow-curl"]);
    }
}

#[test]
fn namespace_unenrollment_changes_its_workloads_only() {
    let mut t = loaded();
    let delta = t.apply(Change::Upsert(object("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tools\n")));
    let addrs = delta.of(ADDRESS_TYPE_URL);
    // `debug` had opted out already: unchanged, so not sent.
    assert_eq!(names(&addrs), ["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn"]);
    assert_eq!(
        decode_workload(&addrs.upserts[0].1).tunnel_protocol,
        proto::istio::workload::TunnelProtocol::None as i32
    );
}

#[test]
fn waypoint_gateway_appearing_updates_what_uses_it() {
    let mut t = loaded();
    let mut ns = t.model().namespaces["shop"].clone();
    ns.metadata.labels.insert("istio.io/use-waypoint".into(), "waypoint".into());
    // The label names a Gateway that does not exist yet: a warning, nothing changes.
    assert!(t.apply(Change::Upsert(Object::Namespace(ns))).is_empty());
    assert_eq!(t.warnings().len(), 3, "{:?}", t.warnings());
    let delta = t.apply(Change::Upsert(object(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: shop\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {name: mesh, port: 15008, protocol: HBONE}\n",
    )));
    assert_eq!(names(&delta.of(ADDRESS_TYPE_URL)), ["shop/catalog.shop.svc.cluster.local"]);
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

#[test]
fn replace_all_removes_what_is_gone() {
    let mut t = loaded();
    let keep: Vec<Object> = Loader::new(samples_dir())
        .load()
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.object)
        .filter(|o| !matches!(o, Object::AuthorizationPolicy(_) | Object::PeerAuthentication(_)))
        .collect();
    let delta = t.replace_all(keep);
    let mut removed = delta.of(AUTHORIZATION_TYPE_URL).removals;
    removed.sort();
    assert_eq!(removed, ["istio-system/istio_converted_static_strict", "shop/catalog-allow-curl", "shop/deny-legacy"]);
    assert_eq!(names(&delta.of(ADDRESS_TYPE_URL)), [CATALOG_A, CATALOG_B]);
    assert!(t.authorizations().is_empty());
}
