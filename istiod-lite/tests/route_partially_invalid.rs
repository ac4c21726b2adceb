//! Gateway API `PartiallyInvalid`, "Dropped Rule" way: a route with valid and invalid rules is
//! accepted, its invalid rules are dropped (never sent to the waypoint) and named in a
//! `PartiallyInvalid` condition and in translation warnings; a route whose every rule is invalid
//! is refused without that condition; the condition goes away once the route is fixed.

mod kube_support;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use istiod_lite::deploy::route_status::{status_body, sync};
use istiod_lite::k8s::gateway::Route;
use istiod_lite::source::dir::{Loader, WatchStatus, watch};
use istiod_lite::translate::route::Condition;
use istiod_lite::{Change, Kind, MeshConfig, Object, ObjectKey, Translator};
use kube_support::MockApi;
use proto::mesh::waypoint::v1 as pb;
use support::TempDir;

/// Namespace `shop`, whose Services use waypoint `shop/waypoint`, and Service `web`.
const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {istio.io/use-waypoint: waypoint}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: shop\nspec:\n  \
gatewayClassName: istio-waypoint\n  listeners:\n  - {name: mesh, port: 15008, protocol: HBONE}\n---\n\
apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - {name: http, port: 80}\n";

const GOOD_RULE: &str =
    "- matches: [{path: {type: PathPrefix, value: /good}}]\n    backendRefs: [{name: web, port: 80}]\n  ";
/// Invalid: 305 is not in the API's enum of redirect codes.
const BAD_REDIRECT: &str = "- matches: [{path: {type: PathPrefix, value: /bad}}]\n    filters:\n    - type: RequestRedirect\n      \
requestRedirect: {statusCode: 305}\n  ";
/// Invalid: a header named twice in one modifier; its backend does not exist.
const BAD_HEADERS: &str = "- matches: [{path: {type: PathPrefix, value: /worse}}]\n    filters:\n    - type: RequestHeaderModifier\n      \
requestHeaderModifier: {set: [{name: x-a, value: \"1\"}], remove: [X-A]}\n    backendRefs: [{name: gone, port: 80}]\n  ";

const REDIRECT_DROPPED: &str = "Dropped Rule(s) spec.rules[1]: filters[0].requestRedirect.statusCode: \
unsupported value 305 (supported: 301, 302, 303, 307, 308)";

fn http_route(rules: &[&str]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: shop\n  generation: 4\nspec:\n  \
         parentRefs:\n  - {{group: \"\", kind: Service, name: web}}\n  rules:\n  {}\n",
        rules.concat()
    )
}

fn key() -> ObjectKey {
    ObjectKey::new(Kind::HttpRoute, "shop", "r")
}

/// Loads `BASE` and `route` from a directory, asserting no load errors, and translates them.
fn load(test: &str, route: &str) -> Translator {
    let dir = TempDir::new(test);
    dir.write("r.yaml", &format!("{BASE}---\n{route}"));
    let snap = Loader::new(dir.path()).load().unwrap();
    assert!(snap.errors.is_empty(), "{test}: a partially invalid route is not a load error: {:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    t
}

/// The route as parsed, without the source's validation (which refuses a route whose every rule
/// is invalid before translation could see it).
fn unvalidated(route: &str) -> Object {
    Object::HttpRoute(serde_yaml::from_str::<Route>(route).unwrap())
}

fn conditions(t: &Translator, key: &ObjectKey) -> Vec<Condition> {
    let parents = &t.route_status()[key];
    assert_eq!(parents.len(), 1, "{parents:?}");
    parents[0].conditions.clone()
}

fn condition<'a>(cs: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    cs.iter().find(|c| c.type_ == type_)
}

fn paths(rule: &pb::Rule) -> Vec<String> {
    rule.matches.iter().filter_map(|m| m.path.as_ref()).map(|p| p.value.clone()).collect()
}

#[test]
fn the_valid_rules_are_served_and_the_invalid_one_is_dropped() {
    let t = load("partially-invalid-http", &http_route(&[GOOD_RULE, BAD_REDIRECT]));
    let route = &t.routes()["shop/HTTPRoute/r"];
    assert_eq!(route.rules.len(), 1, "only the valid rule reaches the waypoint: {:?}", route.rules);
    assert_eq!(paths(&route.rules[0]), ["/good"]);
    assert_eq!(route.rules[0].backends[0].hostname, "web.shop.svc.cluster.local");

    let cs = conditions(&t, &key());
    let accepted = condition(&cs, "Accepted").unwrap();
    assert!(accepted.status && accepted.reason == "Accepted", "{accepted:?}");
    let partial = condition(&cs, "PartiallyInvalid").expect("PartiallyInvalid is set");
    assert!(partial.status, "only ever True: {partial:?}");
    assert_eq!(partial.reason, "UnsupportedValue");
    assert!(partial.message.starts_with("Dropped Rule"), "{partial:?}");
    assert_eq!(partial.message, REDIRECT_DROPPED);
}

#[test]
fn each_dropped_rule_is_named_and_its_backends_are_not_resolved() {
    let t = load("partially-invalid-many", &http_route(&[BAD_HEADERS, GOOD_RULE, BAD_REDIRECT]));
    let route = &t.routes()["shop/HTTPRoute/r"];
    assert_eq!(route.rules.iter().map(paths).collect::<Vec<_>>(), [["/good"]]);
    // Sent first, it still says it is spec.rules[1], which names it in the waypoint's logs.
    assert_eq!(route.rules[0].index, Some(1));
    let cs = conditions(&t, &key());
    let partial = condition(&cs, "PartiallyInvalid").unwrap();
    assert_eq!(
        partial.message,
        "Dropped Rule(s) spec.rules[0]: filters[0].requestHeaderModifier.remove[0]: header \"X-A\" already appears at \
         spec.rules[0].filters[0].requestHeaderModifier.set[0].name (header names compare without case; one action per header name); \
         spec.rules[2]: filters[0].requestRedirect.statusCode: unsupported value 305 (supported: 301, 302, 303, 307, 308)"
    );
    // The dropped rule's missing Service is not what is served: references resolve.
    let resolved = condition(&cs, "ResolvedRefs").unwrap();
    assert!(resolved.status, "{resolved:?}");
}

#[test]
fn a_grpc_route_drops_its_invalid_rule_too() {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: g\n  namespace: shop\nspec:\n  \
                 parentRefs:\n  - {group: \"\", kind: Service, name: web}\n  rules:\n  \
                 - matches: [{method: {service: shop.Cart, method: Get}}]\n    backendRefs: [{name: web, port: 80}]\n  \
                 - matches: [{method: {service: shop.Cart}}]\n    timeouts: {request: 1s}\n    backendRefs: [{name: web, port: 80}]\n";
    let t = load("partially-invalid-grpc", route);
    let r = &t.routes()["shop/GRPCRoute/g"];
    assert_eq!(r.rules.len(), 1, "{:?}", r.rules);
    assert_eq!(r.rules[0].matches[0].grpc.as_ref().unwrap().method, "Get");
    let cs = conditions(&t, &ObjectKey::new(Kind::GrpcRoute, "shop", "g"));
    assert!(condition(&cs, "Accepted").unwrap().status);
    assert_eq!(
        condition(&cs, "PartiallyInvalid").unwrap().message,
        "Dropped Rule(s) spec.rules[1]: timeouts: not a GRPCRoute field"
    );
}

#[test]
fn a_route_whose_every_rule_is_invalid_is_refused_without_partially_invalid() {
    let route = http_route(&[BAD_HEADERS, BAD_REDIRECT]);
    // Read from a directory: refused whole, as before, naming the first bad field.
    let dir = TempDir::new("partially-invalid-all");
    dir.write("r.yaml", &format!("{BASE}---\n{route}"));
    let snap = Loader::new(dir.path()).load().unwrap();
    assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
    let msg = snap.errors[0].to_string();
    assert!(msg.contains("(HTTPRoute shop/r): spec.rules[0].filters[0].requestHeaderModifier.remove[0]"), "{msg}");
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    assert!(t.routes().is_empty() && t.route_status().is_empty());

    // Translated anyway (nothing validated it): refused for every parent, nothing sent.
    t.apply(Change::Upsert(unvalidated(&route)));
    assert!(t.routes().is_empty(), "{:?}", t.routes());
    let cs = conditions(&t, &key());
    let accepted = condition(&cs, "Accepted").unwrap();
    assert!(!accepted.status && accepted.reason == "UnsupportedValue", "{accepted:?}");
    assert!(accepted.message.starts_with("every rule is invalid: spec.rules[0]: "), "{accepted:?}");
    assert!(condition(&cs, "PartiallyInvalid").is_none(), "{cs:?}");
}

#[test]
fn a_parent_that_does_not_accept_the_route_gets_no_partially_invalid() {
    let route = http_route(&[GOOD_RULE, BAD_REDIRECT]).replace(
        "  - {group: \"\", kind: Service, name: web}\n",
        "  - {group: \"\", kind: Service, name: web}\n  - {group: \"\", kind: Service, name: nowhere}\n",
    );
    let t = load("partially-invalid-parents", &route);
    let parents = &t.route_status()[&key()];
    assert_eq!(parents.len(), 2);
    assert!(condition(&parents[0].conditions, "PartiallyInvalid").is_some(), "{:?}", parents[0]);
    let refused = &parents[1].conditions;
    assert_eq!(condition(refused, "Accepted").unwrap().reason, "NoMatchingParent");
    assert!(condition(refused, "PartiallyInvalid").is_none(), "{refused:?}");
}

#[test]
fn the_condition_and_the_warning_go_away_when_the_route_is_fixed() {
    let mut t = load("partially-invalid-fixed", &http_route(&[GOOD_RULE, BAD_REDIRECT]));
    assert!(condition(&conditions(&t, &key()), "PartiallyInvalid").is_some());
    assert_eq!(t.warnings().len(), 1, "{:?}", t.warnings());

    let fixed = http_route(&[GOOD_RULE, &BAD_REDIRECT.replace("305", "307")]);
    t.apply(Change::Upsert(unvalidated(&fixed)));
    assert_eq!(t.routes()["shop/HTTPRoute/r"].rules.len(), 2, "the fixed rule is served again");
    let cs = conditions(&t, &key());
    assert!(condition(&cs, "PartiallyInvalid").is_none(), "{cs:?}");
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
    let body = status_body(&key(), &t.route_status()[&key()], 5, &Default::default(), "2026-01-01T00:00:00Z");
    let types: Vec<&str> = body["status"]["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Accepted", "ResolvedRefs"]);
}

/// Kubernetes mode: the status written carries `Accepted` True and `PartiallyInvalid` True for
/// the route's generation, and the next write after the fix no longer has it.
#[tokio::test]
async fn kubernetes_status_is_written_with_partially_invalid_then_without_it() {
    let t = Arc::new(Mutex::new(load("partially-invalid-kube", &http_route(&[GOOD_RULE, BAD_REDIRECT]))));
    let mock = MockApi::start().await;
    let mut written = BTreeMap::new();
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 1);
    let body = mock.writes()[0].body.clone().unwrap();
    let conds = body["status"]["parents"][0]["conditions"].as_array().unwrap().clone();
    let get = |cs: &[serde_json::Value], type_: &str| cs.iter().find(|c| c["type"] == type_).cloned();
    let accepted = get(&conds, "Accepted").unwrap();
    assert_eq!((accepted["status"].as_str(), accepted["observedGeneration"].as_i64()), (Some("True"), Some(4)));
    let partial = get(&conds, "PartiallyInvalid").expect("written");
    assert_eq!(partial["status"], "True");
    assert_eq!(partial["reason"], "UnsupportedValue");
    assert_eq!(partial["message"], REDIRECT_DROPPED);
    assert_eq!(partial["observedGeneration"], 4);

    let fixed = http_route(&[GOOD_RULE, &BAD_REDIRECT.replace("305", "308")]).replace("generation: 4", "generation: 5");
    t.lock().unwrap().apply(Change::Upsert(unvalidated(&fixed)));
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 1, "the status changed: written again");
    let body = mock.writes()[1].body.clone().unwrap();
    let conds = body["status"]["parents"][0]["conditions"].as_array().unwrap().clone();
    assert!(get(&conds, "PartiallyInvalid").is_none(), "{conds:?}");
    assert_eq!(get(&conds, "Accepted").unwrap()["observedGeneration"], 5);
}

/// File mode: the dropped rule is a translation warning (what `/debug/errors` lists and
/// `istiod_lite_translation_warnings` counts), naming the object and the field, not a load
/// error; fixing the file clears it.
#[tokio::test(flavor = "current_thread")]
async fn file_mode_warns_of_the_dropped_rule_naming_the_field() {
    const WAIT: Duration = Duration::from_secs(5);
    async fn loads_reach(status: &mut tokio::sync::watch::Receiver<WatchStatus>, n: u64) -> WatchStatus {
        tokio::time::timeout(WAIT, status.wait_for(|s| s.loads >= n)).await.expect("no load in time").unwrap().clone()
    }
    let dir = TempDir::new("partially-invalid-watch");
    dir.write("r.yaml", &format!("{BASE}---\n{}", http_route(&[GOOD_RULE, BAD_REDIRECT])));
    let translator = Arc::new(Mutex::new(Translator::new(MeshConfig::default())));
    let (mut status, _deltas, fut) = watch(dir.path(), translator.clone());
    let task = tokio::spawn(fut);

    let s = loads_reach(&mut status, 1).await;
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let warnings: Vec<String> = s.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["HTTPRoute shop/r: Dropped Rule spec.rules[1] (the other rules are served): \
          spec.rules[1].filters[0].requestRedirect.statusCode: unsupported value 305 (supported: 301, 302, 303, 307, 308)"]
    );
    assert_eq!(translator.lock().unwrap().routes()["shop/HTTPRoute/r"].rules.len(), 1);

    dir.write("r.yaml", &format!("{BASE}---\n{}", http_route(&[GOOD_RULE, &BAD_REDIRECT.replace("305", "301")])));
    let s = loads_reach(&mut status, 2).await;
    assert!(s.errors.is_empty() && s.warnings.is_empty(), "{:?} {:?}", s.errors, s.warnings);
    task.abort();
}
