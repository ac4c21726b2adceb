//! Objects as a real API server sends them, through the Kubernetes source against the mock
//! API server: shapes the API server produces that are still valid, objects that are not,
//! and what the model keeps of each.

mod kube_support;
mod support;

use istiod_lite::{Kind, ObjectKey};
use kube_support::{MockApi, Source};
use proto::ADDRESS_TYPE_URL;

const PODS: &str = "/api/v1/pods";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PEER_AUTHNS: &str = "/apis/security.istio.io/v1/peerauthentications";
const CATALOG_K2X9P: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p";

fn nn(ns: &str, name: &str) -> (String, String) {
    (ns.to_owned(), name.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_slice_of_a_service_scaled_to_zero_is_empty_not_rejected() {
    // The API server sends the slice of a Service without endpoints with `"endpoints": null`
    // and `"ports": null` (Go nil slices without omitempty): a valid, empty slice.
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;
    let events = src.status.borrow().events;
    mock.push_watch(SLICES, "watch/endpointslice-catalog-scaled-to-zero.jsonl");
    let status = src.wait("the slice's event applied", |s| s.events > events).await;
    assert!(status.rejected.is_empty(), "{:#?}", status.rejected);
    let t = src.translator.lock().unwrap();
    let slice = &t.model().endpoint_slices[&nn("shop", "catalog-x8k2q")];
    assert!(slice.endpoints.is_empty() && slice.ports.is_empty(), "{slice:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_authentication_with_an_unknown_field_is_named_enforced_strict_and_the_rest_goes_on() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;
    mock.push_watch(PEER_AUTHNS, "watch/peerauthentication-curl-unknown-field.jsonl");
    let key = ObjectKey::new(Kind::PeerAuthentication, "tools", "curl-mtls");
    let status = src.wait("the bad PeerAuthentication reported", |s| s.rejected.contains_key(&key)).await;
    let report = status.rejected[&key].to_string();
    assert!(
        report.starts_with("PeerAuthentication tools/curl-mtls (resourceVersion 48391): spec.mtls")
            && report.contains("unknown field `enforce`"),
        "{report}"
    );
    {
        // Never valid: its fail-closed stand-in (STRICT, same selector) is in force, not
        // the PERMISSIVE it asked for.
        let t = src.translator.lock().unwrap();
        let pa = &t.model().peer_authentications[&nn("tools", "curl-mtls")];
        let mode = pa.spec.mtls.as_ref().map(|m| m.mode);
        assert_eq!(mode, Some(istiod_lite::k8s::security::MtlsMode::Strict), "{pa:#?}");
        assert_eq!(pa.spec.selector.as_ref().unwrap().match_labels["app"], "curl");
    }
    // The other watches go on.
    src.drain();
    mock.push_watch(PODS, "watch/pods-bookmark-then-catalog-not-ready.jsonl");
    let d = src.next_address_delta().await;
    assert_eq!(d.of(ADDRESS_TYPE_URL).upserts[0].0, CATALOG_K2X9P);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_nodes_and_slices_are_kept_without_what_nothing_reads() {
    // Annotations of pods, nodes and EndpointSlices are read by nothing (those of Services
    // and Namespaces are); with managedFields they are most of a pod's metadata.
    let mock = MockApi::start().await;
    mock.cluster();
    let src = Source::synced(&mock).await;
    let t = src.translator.lock().unwrap();
    let m = t.model();
    let pod = &m.pods[&nn("shop", "catalog-7d4b9c6f5-k2x9p")];
    assert!(pod.metadata.annotations.is_empty(), "{:?}", pod.metadata.annotations);
    assert_eq!(pod.metadata.labels["app"], "catalog", "labels are read");
    assert!(m.nodes["node-a"].metadata.annotations.is_empty());
    assert!(m.endpoint_slices[&nn("shop", "catalog-x8k2q")].metadata.annotations.is_empty());
}
