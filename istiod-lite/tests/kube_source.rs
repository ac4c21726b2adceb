//! The Kubernetes API source against a mock API server serving recorded list and watch
//! responses (`tests/fixtures/kube/`) over real HTTP on loopback, through a real kube client.

mod kube_support;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::StatusCode;
use istiod_lite::source::dir::Loader;
use istiod_lite::source::kube::{self as kube_source, KubeError, KubeStatus, WATCHED};
use istiod_lite::{Delta, Kind, MeshConfig, Object, ObjectKey, Translator};
use kube_support::{MockApi, Source, WAIT, fixtures};
use proto::istio::security::Action;
use proto::istio::workload::{TunnelProtocol, WorkloadStatus};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use support::*;

const PODS: &str = "/api/v1/pods";
const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const CATALOG_K2X9P: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p";

/// Waits until every kind that lists has its watch open (events pushed after that reach it).
async fn watches_open(mock: &MockApi, n: usize) {
    mock.wait_seen(&format!("{n} watches"), WAIT, |seen| seen.iter().filter(|s| s.is_watch()).count() >= n).await;
}

fn names(d: &Delta, type_url: &str) -> (Vec<String>, Vec<String>) {
    let r = d.of(type_url);
    let mut up: Vec<String> = r.upserts.into_iter().map(|(n, _)| n).collect();
    let mut rm = r.removals;
    up.sort();
    rm.sort();
    (up, rm)
}

fn dir_translator() -> Translator {
    let snap = Loader::new(samples_dir()).load().unwrap();
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_gives_the_directory_sources_resources_for_the_same_cluster() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::start(&mock);
    let status = src.ready().await;
    assert_eq!(status.synced.len(), WATCHED.len(), "{status:#?}");
    assert!(status.rejected.is_empty() && status.failing.is_empty() && status.reports == 0, "{status:#?}");

    // The fixtures are the sample manifests as an API server returns them, plus what every
    // cluster has (the `kubernetes` Service, system namespaces, EndpointSlices) and a waypoint
    // nobody uses: the same Istio resources, plus the API server's own Service.
    {
        let t = src.translator.lock().unwrap();
        let expected = dir_translator();
        let mut addresses = t.addresses().clone();
        let api_server = addresses.remove("default/kubernetes.default.svc.cluster.local").expect("kubernetes service");
        assert_eq!(&addresses, expected.addresses());
        assert_eq!(t.authorizations(), expected.authorizations());
        let Some(proto::istio::workload::address::Type::Service(svc)) = api_server.r#type else {
            panic!("not a service")
        };
        assert_eq!(svc.addresses[0].address, vec![10, 96, 0, 1]);
        assert_eq!((svc.ports[0].service_port, svc.ports[0].target_port), (443, 6443));
        // Checked here too, so a fault shared by both sources cannot hide.
        let Some(proto::istio::workload::address::Type::Workload(w)) = &t.addresses()[CATALOG_K2X9P].r#type else {
            panic!("not a workload")
        };
        assert_eq!(
            (w.addresses[0].as_ref(), w.node.as_str(), w.service_account.as_str(), w.tunnel_protocol),
            (&[10u8, 244, 1, 10][..], "node-a", "catalog", TunnelProtocol::Hbone as i32)
        );
        assert!(t.model().gateways.contains_key(&("shop".to_owned(), "waypoint".to_owned())));
        assert!(t.model().http_routes.contains_key(&("shop".to_owned(), "catalog-v1".to_owned())));
        assert_eq!(t.model().namespaces.len(), 5);
        assert_eq!(t.model().endpoint_slices.len(), 2);
    }

    // The deltas sent add up to the whole state, nothing removed.
    let mut sent: BTreeMap<String, prost_types::Any> = BTreeMap::new();
    for d in src.drain() {
        assert!(d.of(ADDRESS_TYPE_URL).removals.is_empty() && d.of(AUTHORIZATION_TYPE_URL).removals.is_empty());
        for ty in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
            sent.extend(d.of(ty).upserts);
        }
    }
    let mut now: Vec<String> = {
        let t = src.translator.lock().unwrap();
        t.addresses().keys().chain(t.authorizations().keys()).cloned().collect()
    };
    now.sort();
    assert_eq!(sent.keys().cloned().collect::<Vec<_>>(), now);

    // Each watch resumes from its list's resourceVersion, with bookmarks, as a client must.
    watches_open(&mock, WATCHED.len()).await;
    for s in mock.seen().iter().filter(|s| s.is_watch()) {
        assert_eq!(s.query.get("resourceVersion").map(String::as_str), Some("48213"), "{s:?}");
        assert_eq!(s.query.get("allowWatchBookmarks").map(String::as_str), Some("true"), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_pod_yields_exactly_that_pods_workload() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::start(&mock);
    src.ready().await;
    watches_open(&mock, WATCHED.len()).await;
    src.drain();
    let events = src.status.borrow().events;

    // A BOOKMARK, then the pod failing its readiness probe.
    mock.push_watch(PODS, "watch/pods-bookmark-then-catalog-not-ready.jsonl");
    let d = src.next_delta().await;
    assert_eq!(names(&d, ADDRESS_TYPE_URL), (vec![CATALOG_K2X9P.to_owned()], vec![]));
    assert!(d.of(AUTHORIZATION_TYPE_URL).is_empty(), "{d:#?}");
    let w = decode_workload(&d.of(ADDRESS_TYPE_URL).upserts[0].1);
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32);
    src.no_delta().await;
    // The bookmark was no event for the model.
    assert_eq!(src.status.borrow().events, events + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_policy_is_removed() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::start(&mock);
    src.ready().await;
    watches_open(&mock, WATCHED.len()).await;
    src.drain();

    mock.push_watch(POLICIES, "watch/authorizationpolicy-deny-legacy-deleted.jsonl");
    let d = src.next_delta().await;
    assert_eq!(names(&d, AUTHORIZATION_TYPE_URL), (vec![], vec!["shop/deny-legacy".to_owned()]));
    // A namespace-wide policy is not listed on workloads: nothing else changes.
    assert!(d.of(ADDRESS_TYPE_URL).is_empty(), "{d:#?}");
    assert!(!src.translator.lock().unwrap().authorizations().contains_key("shop/deny-legacy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_policy_is_reported_the_rest_applies_and_a_fix_replaces_its_stand_in() {
    let mock = MockApi::start().await;
    mock.list(POLICIES, "list/authorizationpolicies-with-malformed.json").cluster();
    let mut src = Source::start(&mock);
    let status = src.ready().await;
    let key = ObjectKey::new(Kind::AuthorizationPolicy, "shop", "metrics-scrape");
    assert_eq!(status.rejected.keys().collect::<Vec<_>>(), [&key]);
    let report = status.rejected[&key].to_string();
    assert_eq!(
        report,
        "AuthorizationPolicy shop/metrics-scrape (resourceVersion 48240): \
         spec.rules[0].to[0].operation.ports[0]: \"metrics\" is not a port (1-65535)"
    );

    // The same object in a file gets the same error from the directory source.
    let list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("list/authorizationpolicies-with-malformed.json")).unwrap(),
    )
    .unwrap();
    let doc = serde_json::to_string_pretty(&list["items"][2]).unwrap();
    let parsed = istiod_lite::source::parse_file(std::path::Path::new("policy.yaml"), &doc);
    assert_eq!(parsed.errors.len(), 1);
    assert_eq!(parsed.errors[0].error.to_string(), status.rejected[&key].error.to_string());

    // Everything else applies; the bad policy, never valid, is enforced fail-closed: a DENY of
    // everything for the workloads it selects, as the directory source does.
    {
        let t = src.translator.lock().unwrap();
        let authz = t.authorizations();
        assert!(authz.contains_key("shop/catalog-allow-curl") && authz.contains_key("shop/deny-legacy"));
        assert_eq!(authz["shop/metrics-scrape"].action, Action::Deny as i32);
        assert!(t.addresses().contains_key(CATALOG_K2X9P));
        assert_eq!(t.model().pods.len(), 4);
    }
    watches_open(&mock, WATCHED.len()).await;
    src.drain();

    // Fixed: the real policy replaces the stand-in and the report clears.
    mock.push_watch(POLICIES, "watch/authorizationpolicy-metrics-scrape-fixed.jsonl");
    let d = src.next_delta().await;
    let up = d.of(AUTHORIZATION_TYPE_URL).upserts;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].0, "shop/metrics-scrape");
    assert_eq!(decode_authz(&up[0].1).action, Action::Allow as i32);
    let status = src.wait("the report to clear", |s| s.rejected.is_empty()).await;
    assert_eq!(status.reports, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_gateway_api_is_reported_once_per_kind_and_the_rest_works() {
    let mock = MockApi::start().await;
    // Not installed at first, then installed; the routes never are.
    mock.not_installed(GATEWAYS).not_installed(HTTP_ROUTES).not_installed(GRPC_ROUTES).cluster();
    let mut src = Source::start(&mock);
    let status = src.ready().await;
    for k in [Kind::Namespace, Kind::Pod, Kind::Service, Kind::EndpointSlice, Kind::AuthorizationPolicy] {
        assert!(status.synced.contains(&k), "{k:?} not synced: {status:#?}");
    }
    let not_installed =
        |s: &KubeStatus, k: Kind| matches!(s.failing.get(&k).map(|e| &**e), Some(KubeError::NotInstalled { .. }));
    assert!(not_installed(&status, Kind::HttpRoute) && not_installed(&status, Kind::GrpcRoute), "{status:#?}");
    assert!(src.translator.lock().unwrap().addresses().contains_key(CATALOG_K2X9P));
    assert!(mock.lists(HTTP_ROUTES).is_empty(), "listed what discovery says is not served");

    // Retries do not repeat the report; the Gateway CRD appearing is picked up.
    let group = "/apis/gateway.networking.k8s.io";
    mock.wait_seen("discovery asked again", WAIT, |seen| seen.iter().filter(|s| s.path == group).count() >= 8).await;
    mock.install(GATEWAYS);
    let status = src.wait("Gateway synced once installed", |s| s.synced.contains(&Kind::Gateway)).await;
    assert!(!status.failing.contains_key(&Kind::Gateway));
    assert!(src.translator.lock().unwrap().model().gateways.contains_key(&("shop".to_owned(), "waypoint".to_owned())));
    assert_eq!(mock.lists(GATEWAYS).len(), 1);
    let status = src.status.borrow().clone();
    assert_eq!(status.reports, 3, "{status:#?}");
    assert_eq!(
        status.failing[&Kind::HttpRoute].to_string(),
        "gateway.networking.k8s.io/v1 HTTPRoute is not served by the API server (CRD not installed?); watching for it"
    );

    // And the other kinds keep working.
    watches_open(&mock, 8).await;
    src.drain();
    mock.push_watch(PODS, "watch/pods-bookmark-then-catalog-not-ready.jsonl");
    let d = src.next_delta().await;
    assert_eq!(names(&d, ADDRESS_TYPE_URL), (vec![CATALOG_K2X9P.to_owned()], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_an_expired_watch_drops_objects_deleted_meanwhile() {
    let mock = MockApi::start().await;
    // The second pods list, after the watch expires, no longer has the curl pod.
    mock.list(PODS, "list/pods.json").list(PODS, "list/pods-after-curl-deleted.json").cluster();
    let mut src = Source::start(&mock);
    src.ready().await;
    watches_open(&mock, WATCHED.len()).await;
    src.drain();

    mock.push_watch(PODS, "watch/pods-expired.jsonl");
    let d = src.next_delta().await;
    assert_eq!(names(&d, ADDRESS_TYPE_URL), (vec![], vec!["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn".to_owned()]));
    assert!(d.of(AUTHORIZATION_TYPE_URL).is_empty());
    let status = src.status.borrow().clone();
    assert_eq!((status.reports, status.failing.len()), (0, 0), "an expired watch is no problem: {status:#?}");
    mock.wait_seen("the pods watch resumed", WAIT, |seen| {
        seen.iter().filter(|s| s.path == PODS && s.is_watch()).count() >= 2
    })
    .await;
    let pod_watches = mock.watches(PODS);
    assert_eq!((pod_watches.len(), mock.lists(PODS).len()), (2, 2));
    assert_eq!(pod_watches[1].query.get("resourceVersion").map(String::as_str), Some("48790"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_lite_with_source_kube_reads_the_cluster_through_a_kubeconfig() {
    use clap::Parser;
    let mock = MockApi::start().await;
    mock.cluster();
    let dir = TempDir::new("kube-serve");
    let kubeconfig = dir.write("kubeconfig", &mock.kubeconfig());
    let tokens = dir.write("tokens.yaml", "node-a: 0123456789abcdef0123\n");
    std::fs::create_dir(dir.path().join("ca")).unwrap();
    let cfg = istiod_lite::config::Config::try_parse_from([
        "istiod-lite".as_ref(),
        "--source".as_ref(),
        "kube".as_ref(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--ca-dir".as_ref(),
        dir.path().join("ca").as_os_str(),
        "--bootstrap-tokens".as_ref(),
        tokens.as_os_str(),
        "--plaintext-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
    ])
    .unwrap();
    let running = istiod_lite::serve::start(&cfg).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !running.translator.lock().unwrap().addresses().contains_key(CATALOG_K2X9P) {
        assert!(tokio::time::Instant::now() < deadline, "the cluster never reached the translator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.lists(PODS).len(), 1);
    let authz: Vec<String> = running.translator.lock().unwrap().authorizations().keys().cloned().collect();
    assert_eq!(authz, dir_translator().authorizations().keys().cloned().collect::<Vec<_>>());
}

/// Every kind synced except `kind`, which is failing.
fn all_but(s: &KubeStatus, kind: Kind) -> bool {
    s.failing.contains_key(&kind) && WATCHED.iter().all(|w| w.kind == kind || s.synced.contains(&w.kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_in_kind_not_found_is_a_failure_not_a_missing_crd() {
    // Pods answer 404: no CRD is missing, the server is not an API server we can use (a
    // wrong path prefix, a proxy). Serving without pods would be serving an empty mesh.
    let mock = MockApi::start().await;
    mock.respond(PODS, StatusCode::NOT_FOUND, "status/not-found.json").cluster();
    let mut src = Source::start(&mock);
    let status = src.wait("all but pods synced, pods failing", |s| all_but(s, Kind::Pod)).await;
    assert!(!status.ready(), "ready without pods: {status:#?}");
    let KubeError::Watch { kind: "Pod", .. } = &*status.failing[&Kind::Pod] else {
        panic!("not a failing watch: {:#?}", status.failing[&Kind::Pod])
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_it_may_not_read_is_reported_once_and_keeps_the_model_incomplete() {
    let mock = MockApi::start().await;
    mock.respond(POLICIES, StatusCode::FORBIDDEN, "status/forbidden-authorizationpolicies.json").cluster();
    let mut src = Source::start(&mock);
    src.wait("all but policies synced", |s| all_but(s, Kind::AuthorizationPolicy)).await;
    mock.wait_seen("policies retried", WAIT, |seen| {
        seen.iter().filter(|s| s.path == POLICIES && !s.is_watch()).count() >= 3
    })
    .await;
    let status = src.status.borrow().clone();
    // Workloads without their policies would fail open: the model is not complete.
    assert!(!status.ready(), "{status:#?}");
    assert_eq!(status.reports, 1, "{status:#?}");
    let report = status.failing[&Kind::AuthorizationPolicy].to_string();
    assert!(
        report.starts_with("watching AuthorizationPolicy: ") && report.contains("cannot list resource"),
        "{report}"
    );
}

#[tokio::test]
async fn a_request_whose_connection_goes_silent_times_out() {
    let dir = TempDir::new("kube-timeout");
    let kubeconfig = dir.write(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
         current-context: c\nusers:\n- name: u\n  user: {}\n",
    );
    let config = kube_source::config(Some(&kubeconfig)).await.unwrap();
    // A list on a dead connection must fail (and be retried), not hang its kind for ever.
    assert_eq!(config.read_timeout, Some(kube_source::READ_TIMEOUT));
    assert!(kube_source::READ_TIMEOUT > Duration::from_secs(290), "would cut quiet watches");
}
