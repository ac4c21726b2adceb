//! Locality-aware load balancing as Istio's istiod sends it over WDS: `Service.load_balancing`
//! from `internalTrafficPolicy`, `trafficDistribution` (and Istio's annotation) and
//! `publishNotReadyAddresses`, the annotation inherited from the Service's Namespace where the
//! Service has none; `Workload.locality` from the topology labels of the pod's Node,
//! read from a directory and from the Kubernetes API.

mod kube_support;
mod support;

use std::path::Path;

use istiod_lite::source::dir::Loader;
use istiod_lite::source::parse_file;
use istiod_lite::{Change, Kind, MeshConfig, Object, ObjectKey, Translator};
use kube_support::{MockApi, Source};
use proto::ADDRESS_TYPE_URL;
use proto::istio::workload::load_balancing::{HealthPolicy, Mode, Scope};
use proto::istio::workload::{LoadBalancing, Locality, Service, Workload, WorkloadStatus, address};
use support::*;

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n";

fn translator(yaml: &str) -> Translator {
    let parsed = parse_file(Path::new("test.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(parsed.objects.into_iter().map(|o| o.object).collect());
    t
}

/// A Service `shop/<name>` with extra `spec` lines (indented two spaces) and annotations.
fn svc(name: &str, annotations: &str, spec: &str) -> String {
    let annotations = if annotations.is_empty() { String::new() } else { format!("  annotations:\n{annotations}") };
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n{annotations}spec:\n  clusterIP: 10.96.0.10\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n{spec}"
    )
}

fn pod(name: &str, node: &str, ready: bool) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: web}}\nspec:\n  nodeName: {node}\nstatus:\n  phase: Running\n  podIP: 10.244.1.{}\n  conditions: [{{type: Ready, status: \"{}\"}}]\n",
        name.len(),
        if ready { "True" } else { "False" }
    )
}

fn node(name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n{labels}"
    )
}

fn service(t: &Translator, name: &str) -> Service {
    match &t.addresses()[&format!("shop/{name}.shop.svc.cluster.local")].r#type {
        Some(address::Type::Service(s)) => s.clone(),
        other => panic!("not a service: {other:?}"),
    }
}

fn workload(t: &Translator, pod: &str) -> Workload {
    match &t.addresses()[&format!("Kubernetes//Pod/shop/{pod}")].r#type {
        Some(address::Type::Workload(w)) => w.clone(),
        other => panic!("not a workload: {other:?}"),
    }
}

fn lb(t: &Translator, name: &str) -> Option<LoadBalancing> {
    service(t, name).load_balancing
}

fn warnings_of(t: &Translator, name: &str) -> Vec<String> {
    let key = ObjectKey::new(Kind::Service, "shop", name);
    t.warnings().into_iter().filter(|w| w.object == key).map(|w| w.message).collect()
}

fn failover(scopes: &[Scope]) -> Option<LoadBalancing> {
    Some(LoadBalancing {
        routing_preference: scopes.iter().map(|s| *s as i32).collect(),
        mode: Mode::Failover as i32,
        ..Default::default()
    })
}

fn same_zone() -> Option<LoadBalancing> {
    failover(&[Scope::Network, Scope::Region, Scope::Zone])
}

fn same_node() -> Option<LoadBalancing> {
    failover(&[Scope::Network, Scope::Region, Scope::Zone, Scope::Subzone, Scope::Node])
}

fn node_local() -> Option<LoadBalancing> {
    Some(LoadBalancing {
        routing_preference: vec![Scope::Node as i32],
        mode: Mode::Strict as i32,
        ..Default::default()
    })
}

#[test]
fn a_plain_service_sends_no_load_balancing() {
    let t =
        translator(&[NS, &svc("plain", "", ""), &svc("cluster", "", "  internalTrafficPolicy: Cluster\n")].concat());
    assert_eq!(lb(&t, "plain"), None);
    assert_eq!(lb(&t, "cluster"), None);
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

#[test]
fn internal_traffic_policy_local_keeps_traffic_on_the_clients_node() {
    let t = translator(&[NS, &svc("local", "", "  internalTrafficPolicy: Local\n")].concat());
    assert_eq!(lb(&t, "local"), node_local());
}

#[test]
fn traffic_distribution_prefers_the_same_zone_then_region_then_network() {
    let t = translator(
        &[
            NS,
            &svc("close", "", "  trafficDistribution: PreferClose\n"),
            &svc("zone", "", "  trafficDistribution: PreferSameZone\n"),
            &svc("node", "", "  trafficDistribution: PreferSameNode\n"),
        ]
        .concat(),
    );
    // `PreferClose` is `PreferSameZone` (Kubernetes 1.33 renamed it): the subzone is not a scope.
    assert_eq!(lb(&t, "close"), same_zone());
    assert_eq!(lb(&t, "zone"), same_zone());
    assert_eq!(lb(&t, "node"), same_node());
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

#[test]
fn istios_annotation_works_where_the_field_is_absent_in_any_case() {
    let a = |v: &str| format!("    networking.istio.io/traffic-distribution: {v}\n");
    let t = translator(
        &[
            NS,
            &svc("close", &a("PreferClose"), ""),
            &svc("lower", &a("preferclose"), ""),
            &svc("node", &a("PreferSameNode"), ""),
            // The field, when it names a known value, wins over the annotation.
            &svc("field-wins", &a("PreferSameNode"), "  trafficDistribution: PreferClose\n"),
        ]
        .concat(),
    );
    assert_eq!(lb(&t, "close"), same_zone());
    assert_eq!(lb(&t, "lower"), same_zone());
    assert_eq!(lb(&t, "node"), same_node());
    assert_eq!(lb(&t, "field-wins"), same_zone());
}

#[test]
fn internal_traffic_policy_local_wins_over_traffic_distribution() {
    let t = translator(
        &[
            NS,
            &svc("both", "", "  internalTrafficPolicy: Local\n  trafficDistribution: PreferClose\n"),
            &svc(
                "annotated",
                "    networking.istio.io/traffic-distribution: PreferClose\n",
                "  internalTrafficPolicy: Local\n",
            ),
        ]
        .concat(),
    );
    assert_eq!(lb(&t, "both"), node_local());
    assert_eq!(lb(&t, "annotated"), node_local());
}

#[test]
fn publish_not_ready_addresses_allows_unready_endpoints_which_are_sent_unhealthy() {
    let t = translator(
        &[
            NS,
            &svc("all", "", "  publishNotReadyAddresses: true\n"),
            &svc("local-all", "", "  internalTrafficPolicy: Local\n  publishNotReadyAddresses: true\n"),
            &svc("close-all", "", "  trafficDistribution: PreferClose\n  publishNotReadyAddresses: true\n"),
            &pod("starting", "node-a", false),
        ]
        .concat(),
    );
    let allow_all = HealthPolicy::AllowAll as i32;
    assert_eq!(lb(&t, "all"), Some(LoadBalancing { health_policy: allow_all, ..Default::default() }));
    assert_eq!(lb(&t, "local-all"), node_local().map(|l| LoadBalancing { health_policy: allow_all, ..l }));
    assert_eq!(lb(&t, "close-all"), same_zone().map(|l| LoadBalancing { health_policy: allow_all, ..l }));
    // The pod that is not ready is still a workload, an endpoint of the services, marked
    // unhealthy: ztunnel picks it only for the services that allow all.
    let w = workload(&t, "starting");
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32);
    assert!(w.services.contains_key("shop/all.shop.svc.cluster.local"), "{:?}", w.services.keys());
}

#[test]
fn unknown_values_are_ignored_with_a_warning_naming_the_service_and_the_field() {
    let t = translator(
        &[
            NS,
            &svc("new-td", "", "  trafficDistribution: SomethingNew\n"),
            &svc("new-itp", "", "  internalTrafficPolicy: Sideways\n"),
            &svc("new-annotation", "    networking.istio.io/traffic-distribution: Anywhere\n", ""),
            // As in Istio, an unknown field value leaves the annotation to decide.
            &svc(
                "falls-back",
                "    networking.istio.io/traffic-distribution: PreferClose\n",
                "  trafficDistribution: SomethingNew\n",
            ),
        ]
        .concat(),
    );
    for name in ["new-td", "new-itp", "new-annotation"] {
        assert_eq!(lb(&t, name), None, "{name}");
    }
    assert_eq!(lb(&t, "falls-back"), same_zone());
    let one = |name: &str| {
        let ws = warnings_of(&t, name);
        assert_eq!(ws.len(), 1, "{name}: {ws:?}");
        ws[0].clone()
    };
    let w = one("new-td");
    assert!(w.contains("spec.trafficDistribution") && w.contains("SomethingNew"), "{w}");
    let w = one("new-itp");
    assert!(w.contains("spec.internalTrafficPolicy") && w.contains("Sideways"), "{w}");
    let w = one("new-annotation");
    assert!(w.contains("networking.istio.io/traffic-distribution") && w.contains("Anywhere"), "{w}");
    let w = one("falls-back");
    assert!(w.contains("spec.trafficDistribution"), "{w}");
}

// ---- Inherited from the Namespace (istio/istio#58701) ----

/// Namespace `shop` with Istio's traffic-distribution annotation set to `value`.
fn annotated_ns(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    networking.istio.io/traffic-distribution: {value}\n---\n"
    )
}

#[test]
fn a_service_without_a_setting_inherits_its_namespaces_annotation() {
    let a = |v: &str| format!("    networking.istio.io/traffic-distribution: {v}\n");
    let t = translator(
        &[
            annotated_ns("PreferSameNode").as_str(),
            &svc("plain", "", ""),
            // Precedence: field, then the Service's annotation, then the Namespace's.
            &svc("own-annotation", &a("PreferClose"), ""),
            &svc("own-field", "", "  trafficDistribution: PreferSameZone\n"),
            &svc("node-local", "", "  internalTrafficPolicy: Local\n"),
            &svc("all", "", "  publishNotReadyAddresses: true\n"),
            // The Service's own value, unknown to Istio, is still its own: not the Namespace's.
            &svc("own-unknown", &a("Anywhere"), ""),
        ]
        .concat(),
    );
    assert_eq!(lb(&t, "plain"), same_node());
    assert_eq!(lb(&t, "own-annotation"), same_zone());
    assert_eq!(lb(&t, "own-field"), same_zone());
    assert_eq!(lb(&t, "node-local"), node_local());
    let allow_all = HealthPolicy::AllowAll as i32;
    assert_eq!(lb(&t, "all"), same_node().map(|l| LoadBalancing { health_policy: allow_all, ..l }));
    assert_eq!(lb(&t, "own-unknown"), None);
    assert_eq!(warnings_of(&t, "own-unknown").len(), 1);
    assert!(warnings_of(&t, "plain").is_empty());
}

#[test]
fn an_unknown_namespace_value_is_ignored_with_a_warning_naming_the_namespace() {
    let t = translator(&[annotated_ns("Sideways").as_str(), &svc("plain", "", "")].concat());
    assert_eq!(lb(&t, "plain"), None);
    let ws = warnings_of(&t, "plain");
    assert_eq!(ws.len(), 1, "{ws:?}");
    assert!(ws[0].contains("Namespace shop") && ws[0].contains("Sideways"), "{}", ws[0]);
}

#[test]
fn annotating_the_namespace_updates_the_services_that_inherit_it() {
    let mut t = translator(
        &[NS, &svc("plain", "", ""), &svc("own", "    networking.istio.io/traffic-distribution: PreferSameNode\n", "")]
            .concat(),
    );
    assert_eq!(lb(&t, "plain"), None);
    let parsed = parse_file(Path::new("ns.yaml"), &annotated_ns("PreferSameZone"));
    let ns = parsed.objects.into_iter().next().unwrap().object;
    let d = t.apply(Change::Upsert(ns)).of(ADDRESS_TYPE_URL);
    let names: Vec<&str> = d.upserts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["shop/plain.shop.svc.cluster.local"], "only the inheriting Service changes");
    assert_eq!(decode_service(&d.upserts[0].1).load_balancing, same_zone());

    // The annotation removed: back to no preference.
    let parsed = parse_file(Path::new("ns.yaml"), NS);
    let d = t.apply(Change::Upsert(parsed.objects.into_iter().next().unwrap().object)).of(ADDRESS_TYPE_URL);
    assert_eq!(d.upserts.len(), 1, "{d:#?}");
    assert_eq!(decode_service(&d.upserts[0].1).load_balancing, None);
}

#[test]
fn a_directory_namespace_annotation_reaches_its_services() {
    let dir = TempDir::new("ns-traffic-distribution");
    std::fs::write(dir.path().join("app.yaml"), [annotated_ns("PreferClose").as_str(), &svc("plain", "", "")].concat())
        .unwrap();
    let snap = Loader::new(dir.path().to_owned()).load().unwrap();
    assert!(snap.errors.is_empty() && snap.ignored.is_empty(), "{:?} {:?}", snap.errors, snap.ignored);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    assert_eq!(lb(&t, "plain"), same_zone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_annotated_through_the_api_sets_its_services_load_balancing() {
    const CATALOG: &str = "shop/catalog.shop.svc.cluster.local";
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;
    let lb_of = |key: &str| match &src.translator.lock().unwrap().addresses()[key].r#type {
        Some(address::Type::Service(s)) => s.load_balancing.clone(),
        other => panic!("not a service: {other:?}"),
    };
    assert_eq!(lb_of(CATALOG), None);

    mock.push_watch("/api/v1/namespaces", "watch/namespace-shop-prefer-same-zone.jsonl");
    let d = loop {
        let d = src.next_delta().await.of(ADDRESS_TYPE_URL);
        if d.upserts.iter().any(|(n, _)| n == CATALOG) {
            break d;
        }
    };
    let up = d.upserts.iter().find(|(n, _)| n == CATALOG).unwrap();
    assert_eq!(decode_service(&up.1).load_balancing, same_zone());
}

// ---- Workload locality ----

const REGION: &str = "    topology.kubernetes.io/region: europe-west4\n";
const ZONE_A: &str = "    topology.kubernetes.io/zone: europe-west4-a\n";
const SUBZONE: &str = "    topology.istio.io/subzone: rack-1\n";

fn locality(region: &str, zone: &str, subzone: &str) -> Option<Locality> {
    Some(Locality { region: region.into(), zone: zone.into(), subzone: subzone.into() })
}

#[test]
fn locality_comes_from_the_labels_of_the_pods_node_read_from_a_directory() {
    let dir = TempDir::new("locality");
    std::fs::write(
        dir.path().join("nodes.yaml"),
        [node("node-a", &[REGION, ZONE_A, SUBZONE].concat()), node("node-b", ZONE_A), node("node-plain", "")].concat(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.yaml"),
        [
            NS,
            &pod("on-a", "node-a", true),
            &pod("on-b", "node-b", true),
            &pod("plain", "node-plain", true),
            &pod("nowhere", "node-gone", true),
        ]
        .concat(),
    )
    .unwrap();
    let snap = Loader::new(dir.path().to_owned()).load().unwrap();
    assert!(snap.errors.is_empty() && snap.ignored.is_empty(), "{:?} {:?}", snap.errors, snap.ignored);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    assert_eq!(t.model().nodes.len(), 3);

    assert_eq!(workload(&t, "on-a").locality, locality("europe-west4", "europe-west4-a", "rack-1"));
    assert_eq!(workload(&t, "on-b").locality, locality("", "europe-west4-a", ""));
    // No topology labels, or no Node at all: no locality, and nothing to warn about.
    assert_eq!(workload(&t, "plain").locality, None);
    assert_eq!(workload(&t, "nowhere").locality, None);
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
    // Istio sends no capacity for pods (only a WorkloadEntry's weight): ztunnel takes 1.
    assert_eq!(workload(&t, "on-a").capacity, None);
}

#[test]
fn a_node_change_updates_only_the_workloads_on_it() {
    let mut t = translator(
        &[
            NS,
            &node("node-a", REGION),
            &node("node-b", REGION),
            &pod("on-a", "node-a", true),
            &pod("on-b", "node-b", true),
        ]
        .concat(),
    );
    let parsed = parse_file(Path::new("node.yaml"), &node("node-a", &[REGION, ZONE_A].concat()));
    let relabelled = parsed.objects.into_iter().next().unwrap().object;
    let d = t.apply(Change::Upsert(relabelled)).of(ADDRESS_TYPE_URL);
    let names: Vec<&str> = d.upserts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Kubernetes//Pod/shop/on-a"]);
    assert_eq!(decode_workload(&d.upserts[0].1).locality, locality("europe-west4", "europe-west4-a", ""));

    // Deleted, the node leaves its pods without a locality (they keep their `nodeName`).
    let d = t.apply(Change::Delete(ObjectKey::new(Kind::Node, "", "node-a"))).of(ADDRESS_TYPE_URL);
    assert_eq!(d.upserts.len(), 1);
    assert_eq!(decode_workload(&d.upserts[0].1).locality, None);
    assert_eq!(workload(&t, "on-b").locality, locality("europe-west4", "", ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_watched_from_the_api_give_locality_and_follow_relabelling() {
    const CATALOG_K2X9P: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p";
    let mock = MockApi::start().await;
    mock.list("/api/v1/nodes", "list/nodes-zoned.json").cluster();
    let mut src = Source::synced(&mock).await;
    let ready = src.status.borrow().clone();
    assert!(ready.synced.contains(&Kind::Node), "{ready:#?}");

    let locality_of = |uid: &str| match &src.translator.lock().unwrap().addresses()[uid].r#type {
        Some(address::Type::Workload(w)) => (w.node.clone(), w.locality.clone()),
        other => panic!("not a workload: {other:?}"),
    };
    assert_eq!(locality_of(CATALOG_K2X9P), ("node-a".to_owned(), locality("europe-west4", "europe-west4-a", "rack-1")));

    // node-a moves to another zone (and loses its subzone): its workloads, and only they, change.
    mock.push_watch("/api/v1/nodes", "watch/node-a-relabelled.jsonl");
    let d = src.next_delta().await.of(ADDRESS_TYPE_URL);
    assert!(d.removals.is_empty() && !d.upserts.is_empty(), "{d:#?}");
    assert!(d.upserts.iter().any(|(n, _)| n == CATALOG_K2X9P), "{d:#?}");
    for (name, any) in &d.upserts {
        let w = decode_workload(any);
        assert_eq!(
            (w.node.as_str(), &w.locality),
            ("node-a", &locality("europe-west4", "europe-west4-c", "")),
            "{name}"
        );
    }
}
