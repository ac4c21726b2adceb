//! Kubernetes mode: a route the source refuses whole (a bad hostname, a field we do not know)
//! still gets a status on each of its parents, `Accepted` False naming the field, for its
//! generation, written by the route status writer as it runs in istiod-lite; the status is
//! replaced once the route is valid. A route whose `parentRefs` cannot be read gets none.

mod kube_support;

use istiod_lite::deploy::route_status::writer;
use kube_support::{MockApi, Source, WAIT};
use serde_json::{Value, json};

const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";

fn status_path(name: &str) -> String {
    format!("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/{name}/status")
}

/// `status.parents` of the last status write to route `name`, if any.
fn last_parents(mock: &MockApi, name: &str) -> Option<Vec<Value>> {
    let path = status_path(name);
    let writes = mock.writes();
    let w = writes.iter().rev().find(|w| w.path == path)?;
    w.body.as_ref()?["status"]["parents"].as_array().cloned()
}

/// Waits until the last status written to route `name` satisfies `pred`; returns its parents.
async fn written(mock: &MockApi, name: &str, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let path = status_path(name);
    mock.wait_seen(what, WAIT, |seen| {
        let last = seen.iter().rev().find(|s| s.method != "GET" && s.path == path);
        last.and_then(|s| s.body.as_ref()).and_then(|b| b["status"]["parents"].as_array()).is_some_and(|p| pred(p))
    })
    .await;
    last_parents(mock, name).unwrap()
}

/// `(type, status, reason)` of each condition of a parent.
fn conditions(parent: &Value) -> Vec<(String, String, String)> {
    parent["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (s("type"), s("status"), s("reason"))
        })
        .collect()
}

fn owned(v: [(&str, &str, &str); 1]) -> Vec<(String, String, String)> {
    v.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

#[tokio::test]
async fn a_refused_route_gets_a_status_naming_the_field_until_it_is_fixed() {
    let mock = MockApi::start().await;
    mock.list(HTTP_ROUTES, "list/httproutes-refused.json").cluster();
    let mut src = Source::start(&mock);
    // As istiod-lite runs it: woken by every change of the source's status.
    let status_writer = tokio::spawn(writer(mock.client(), src.translator.clone(), src.status.clone()));
    let status = src.ready().await;
    let rejected: Vec<&str> = status.rejected.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(rejected, ["catalog-bad-host", "catalog-sticky", "catalog-unreadable"]);

    // A problem outside the rules: every parent is refused, each for the reason it would have.
    let parents = written(&mock, "catalog-bad-host", "the refused route's status", |p| {
        p.len() == 2 && p[1]["conditions"][0]["reason"] == "NoMatchingParent"
    })
    .await;
    assert_eq!(
        parents[0]["parentRef"],
        json!({"group": "", "kind": "Service", "namespace": "shop", "name": "catalog", "port": 80})
    );
    assert_eq!(
        conditions(&parents[0]),
        owned([("Accepted", "False", "UnsupportedValue")]),
        "no ResolvedRefs: rules unread"
    );
    let accepted = &parents[0]["conditions"][0];
    assert_eq!(
        accepted["message"],
        "the route is invalid and not served: spec.hostnames[0]: \"catalog..shop\" is not a hostname"
    );
    assert_eq!(accepted["observedGeneration"], 3);
    assert_eq!(parents[0]["controllerName"], "istio.io/gateway-controller");
    assert_eq!(parents[1]["conditions"][0]["message"], "spec.parentRefs[1]: Service shop/nowhere not found");

    // A field we do not know (here from the experimental channel) refuses the route at the
    // schema; its parentRefs are read all the same.
    let parents = written(&mock, "catalog-sticky", "the unknown field's status", |p| !p.is_empty()).await;
    assert_eq!(conditions(&parents[0]), owned([("Accepted", "False", "UnsupportedValue")]));
    let message = parents[0]["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the route is invalid and not served: spec.rules[0]: unknown field `sessionPersistence`"),
        "{message}"
    );

    // The valid route is written as before.
    let parents = written(&mock, "catalog-v1", "the valid route's status", |p| {
        p.first().is_some_and(|p| p["conditions"][0]["status"] == "True")
    })
    .await;
    assert_eq!(parents[0]["conditions"][1]["type"], "ResolvedRefs");

    // Edited but still refused for the same field: rewritten for the new generation.
    mock.push_watch(HTTP_ROUTES, "watch/httproute-bad-host-edited.jsonl");
    let parents =
        written(&mock, "catalog-bad-host", "the new generation", |p| p[0]["conditions"][0]["observedGeneration"] == 4)
            .await;
    assert_eq!(parents[0]["conditions"][0]["reason"], "UnsupportedValue");

    // Fixed: its translated status replaces the refusal.
    mock.push_watch(HTTP_ROUTES, "watch/httproute-bad-host-fixed.jsonl");
    let parents =
        written(&mock, "catalog-bad-host", "the fixed route's status", |p| p[0]["conditions"][0]["status"] == "True")
            .await;
    let types: Vec<String> = conditions(&parents[0]).into_iter().map(|c| format!("{}={}", c.0, c.1)).collect();
    assert_eq!(types, ["Accepted=True", "ResolvedRefs=True"]);
    assert_eq!(parents[0]["conditions"][0]["observedGeneration"], 5);
    assert_eq!(parents[1]["conditions"][0]["reason"], "NoMatchingParent");

    // Nothing could be read of the parents of this one: nothing to write (it is still reported).
    assert!(last_parents(&mock, "catalog-unreadable").is_none(), "{:?}", last_parents(&mock, "catalog-unreadable"));
    assert!(mock.writes().iter().all(|w| !w.path.contains("catalog-unreadable")));
    assert!(src.status.borrow().rejected.keys().any(|k| k.name == "catalog-unreadable"));
    status_writer.abort();
}
