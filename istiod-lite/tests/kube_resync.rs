//! The Kubernetes source across watch interruptions, against the mock API server over real
//! HTTP on loopback: watches that end, watches the server no longer serves (410 Gone), an
//! API server that goes away and comes back. The model after each must be the cluster's, with
//! no ghost of an object deleted meanwhile, and the proxies must never be sent an empty mesh.

mod kube_support;
mod support;

use std::time::Duration;

use istiod_lite::Delta;
use istiod_lite::source::kube::WATCHED;
use kube_support::{MockApi, Source, WAIT};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

const PODS: &str = "/api/v1/pods";
const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const CURL: &str = "Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn";
const NEW_CATALOG: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-r5n8x";

fn names(d: &Delta, type_url: &str) -> (Vec<String>, Vec<String>) {
    let r = d.of(type_url);
    let mut up: Vec<String> = r.upserts.into_iter().map(|(n, _)| n).collect();
    let mut rm = r.removals;
    up.sort();
    rm.sort();
    (up, rm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_request_answered_410_gone_relists_no_ghosts_and_new_objects_appear() {
    let mock = MockApi::start().await;
    // While the watch was down, curl was deleted and a catalog pod was created.
    mock.list(PODS, "list/pods.json").list(PODS, "list/pods-after-curl-replaced.json").cluster();
    let mut src = Source::synced(&mock).await;

    // The watch ends (the server's timeout, a reset connection) and its resource version has
    // meanwhile left the server's history: the new watch request is answered 410.
    mock.expire(PODS, "48213");
    mock.end_watch(PODS);
    let d = src.next_address_delta().await;
    assert_eq!(names(&d, ADDRESS_TYPE_URL), (vec![NEW_CATALOG.to_owned()], vec![CURL.to_owned()]));
    assert!(d.of(AUTHORIZATION_TYPE_URL).is_empty(), "{d:#?}");
    // The pods that did not change are not sent again.
    src.no_delta().await;
    mock.wait_seen("the pods watch resumed from the new list", WAIT, |seen| {
        seen.iter().any(|s| s.path == PODS && s.is_watch() && s.query.get("resourceVersion").unwrap() == "48812")
    })
    .await;
    assert_eq!(mock.lists(PODS).len(), 2);
    let status = src.status.borrow().clone();
    assert_eq!((status.reports, status.failing.len()), (0, 0), "an expired watch is no problem: {status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_ends_resumes_where_it_was_and_misses_no_deletion() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;

    mock.end_watch(POLICIES);
    // Deleted while no watch was open: the next watch, from the same resource version, gets it.
    mock.push_watch(POLICIES, "watch/authorizationpolicy-deny-legacy-deleted.jsonl");
    let d = src.next_delta().await;
    assert_eq!(names(&d, AUTHORIZATION_TYPE_URL), (vec![], vec!["shop/deny-legacy".to_owned()]));
    src.no_delta().await;
    let watches = mock.watches(POLICIES);
    assert_eq!((watches.len(), mock.lists(POLICIES).len()), (2, 1), "resumed without a list");
    assert_eq!(watches[1].query.get("resourceVersion").map(String::as_str), Some("48213"));
}

/// Nothing the proxies are sent may shrink while the API server is away.
fn assert_nothing_removed(deltas: &[Delta]) {
    for d in deltas {
        for ty in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
            assert!(d.of(ty).removals.is_empty(), "removed while the API server was away: {d:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_goes_away_leaves_the_model_in_force_and_is_read_again_on_return() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;
    let (addresses, authorizations) = {
        let t = src.translator.lock().unwrap();
        (t.addresses().clone(), t.authorizations().clone())
    };

    // Gone: every open watch breaks and every new connection is closed.
    mock.set_down(true);
    src.wait("every kind failing", |s| s.failing.len() == WATCHED.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_nothing_removed(&src.drain());
    {
        let t = src.translator.lock().unwrap();
        assert_eq!((t.addresses(), t.authorizations()), (&addresses, &authorizations), "the last model stays");
    }
    let reports = src.status.borrow().reports;
    assert_eq!(reports, WATCHED.len() as u64, "one report per kind");

    // Back, with its history compacted past our resource version, and curl deleted meanwhile.
    mock.replace_list(PODS, "list/pods-after-curl-deleted.json");
    mock.expire(PODS, "48213");
    mock.set_down(false);
    let d = src.next_address_delta().await;
    assert_eq!(names(&d, ADDRESS_TYPE_URL), (vec![], vec![CURL.to_owned()]));
    // Every watch back, those with nothing new as well: no kind is left failing.
    let status = src.wait("every kind recovered", |s| s.failing.is_empty()).await;
    assert_eq!(status.reports, reports, "{status:#?}");

    // So a second outage is reported as the first was, not taken for the same problem.
    mock.set_down(true);
    let status = src.wait("every kind failing again", |s| s.failing.len() == WATCHED.len()).await;
    assert_eq!(status.reports, 2 * reports, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_unreachable_at_start_is_reported_once_per_kind_and_nothing_is_ready_until_it_answers() {
    let mock = MockApi::start().await;
    mock.cluster();
    mock.set_down(true);
    let mut src = Source::start(&mock);
    let status = src.wait("every kind failing", |s| s.failing.len() == WATCHED.len()).await;
    assert!(!status.ready() && status.synced.is_empty(), "{status:#?}");
    // Retried with backoff, and reported no more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = src.status.borrow().clone();
    assert_eq!(status.reports, WATCHED.len() as u64, "{status:#?}");
    assert!(src.drain().is_empty(), "a delta before the first list: an empty mesh");

    mock.set_down(false);
    let status = src.ready().await;
    assert!(status.failing.is_empty() && status.synced.len() == WATCHED.len(), "{status:#?}");
    assert!(src.translator.lock().unwrap().addresses().contains_key("Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p"));
}
