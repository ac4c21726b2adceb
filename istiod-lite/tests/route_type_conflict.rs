//! Route types on one Service port (Gateway API mesh binding): where a GRPCRoute and an
//! HTTPRoute bind the same Service port, only the GRPCRoute is applied; the HTTPRoute's parent
//! says `Accepted` False, reason `Conflicted`, naming the GRPCRoute, and the HTTPRoute is served
//! again once the GRPCRoute is gone. A parent without a port binds every port of its Service.

mod kube_support;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use istiod_lite::deploy::route_status::sync;
use istiod_lite::k8s::gateway::Route;
use istiod_lite::source::dir::Loader;
use istiod_lite::translate::route::{Condition, ParentStatus};
use istiod_lite::{Change, Kind, MeshConfig, Object, ObjectKey, Translator};
use kube_support::MockApi;
use proto::mesh::waypoint::v1 as pb;
use support::TempDir;

/// Namespace `shop`, whose Services use waypoint `shop/waypoint`; Service `orders` (ports 8080
/// and 9090) and Service `stock` (port 80).
const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {istio.io/use-waypoint: waypoint}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: shop\nspec:\n  \
gatewayClassName: istio-waypoint\n  listeners:\n  - {name: mesh, port: 15008, protocol: HBONE}\n---\n\
apiVersion: v1\nkind: Service\nmetadata:\n  name: orders\n  namespace: shop\nspec:\n  ports:\n  - {name: grpc, port: 8080}\n  - {name: http, port: 9090}\n---\n\
apiVersion: v1\nkind: Service\nmetadata:\n  name: stock\n  namespace: shop\nspec:\n  ports:\n  - {name: http, port: 80}\n";

const ORDERS: &str = "orders.shop.svc.cluster.local";

/// A parentRef line: Service `name`, with `port` when given.
fn parent(name: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("  - {{group: \"\", kind: Service, name: {name}, port: {p}}}\n"),
        None => format!("  - {{group: \"\", kind: Service, name: {name}}}\n"),
    }
}

fn http_route(name: &str, parents: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: shop\n  generation: 2\nspec:\n  \
         parentRefs:\n{}  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]\n    backendRefs: [{{name: orders, port: 9090}}]\n",
        parents.concat()
    )
}

fn grpc_route(name: &str, parents: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: {name}\n  namespace: shop\n  generation: 1\nspec:\n  \
         parentRefs:\n{}  rules:\n  - matches: [{{method: {{service: shop.Orders, method: Get}}}}]\n    backendRefs: [{{name: orders, port: 8080}}]\n",
        parents.concat()
    )
}

fn http_key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::HttpRoute, "shop", name)
}

fn grpc_key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::GrpcRoute, "shop", name)
}

/// Loads `BASE` and `routes` from a directory, asserting no load errors, and translates them.
fn load(test: &str, routes: &[String]) -> Translator {
    let dir = TempDir::new(test);
    let mut text = BASE.to_owned();
    for r in routes {
        text.push_str("---\n");
        text.push_str(r);
    }
    dir.write("r.yaml", &text);
    let snap = Loader::new(dir.path()).load().unwrap();
    assert!(snap.errors.is_empty(), "{test}: {:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    t
}

fn parsed(kind: Kind, yaml: &str) -> Object {
    let r: Route = serde_yaml::from_str(yaml).unwrap();
    if kind == Kind::GrpcRoute { Object::GrpcRoute(r) } else { Object::HttpRoute(r) }
}

fn accepted(p: &ParentStatus) -> &Condition {
    p.conditions.iter().find(|c| c.type_ == "Accepted").unwrap_or_else(|| panic!("no Accepted: {p:?}"))
}

/// `(status, reason)` of `Accepted` for each parent of a route.
fn verdicts(t: &Translator, key: &ObjectKey) -> Vec<(bool, &'static str)> {
    t.route_status()[key].iter().map(|p| (accepted(p).status, accepted(p).reason)).collect()
}

/// The (hostname, port) pairs a route resource is sent for.
fn sent_parents(t: &Translator, resource: &str) -> Option<Vec<(String, u32)>> {
    t.routes().get(resource).map(|r| r.parents.iter().map(|p| (p.hostname.clone(), p.port)).collect())
}

/// The rules the waypoint files for Service `orders` on `port`: those of every route resource
/// with a parent on that port or on every port, as the waypoint builds its tables.
fn rules_on_orders(t: &Translator, port: u32) -> Vec<(String, pb::Rule)> {
    t.routes()
        .iter()
        .filter(|(_, r)| r.parents.iter().any(|p| p.hostname == ORDERS && (p.port == port || p.port == 0)))
        .flat_map(|(name, r)| r.rules.iter().map(move |rule| (name.clone(), rule.clone())))
        .collect()
}

#[test]
fn on_one_port_the_grpc_route_is_applied_and_the_http_route_is_conflicted() {
    let t = load(
        "conflict-same-port",
        &[
            http_route("orders-http", &[parent("orders", Some(8080))]),
            grpc_route("orders-grpc", &[parent("orders", Some(8080))]),
        ],
    );
    let on_8080 = rules_on_orders(&t, 8080);
    assert_eq!(on_8080.len(), 1, "{on_8080:?}");
    assert_eq!(on_8080[0].0, "shop/GRPCRoute/orders-grpc");
    assert_eq!(on_8080[0].1.matches[0].grpc.as_ref().unwrap().method, "Get");
    assert!(!t.routes().contains_key("shop/HTTPRoute/orders-http"), "{:?}", t.routes().keys());

    let http = &t.route_status()[&http_key("orders-http")][0];
    let a = accepted(http);
    assert_eq!((a.status, a.reason), (false, "Conflicted"));
    assert_eq!(
        a.message,
        "spec.parentRefs[0]: GRPCRoute shop/orders-grpc also binds Service shop/orders port 8080; \
         GRPCRoute takes precedence over HTTPRoute"
    );
    assert_eq!(verdicts(&t, &grpc_key("orders-grpc")), [(true, "Accepted")]);

    // File mode: the translation warning of the HTTPRoute names both routes.
    let warnings: Vec<String> = t.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["HTTPRoute shop/orders-http: spec.parentRefs[0]: GRPCRoute shop/orders-grpc also binds Service shop/orders \
          port 8080; GRPCRoute takes precedence over HTTPRoute"]
    );
}

#[test]
fn different_ports_of_one_service_do_not_conflict() {
    let t = load(
        "conflict-other-port",
        &[
            http_route("orders-http", &[parent("orders", Some(9090))]),
            grpc_route("orders-grpc", &[parent("orders", Some(8080))]),
        ],
    );
    assert_eq!(verdicts(&t, &http_key("orders-http")), [(true, "Accepted")]);
    assert_eq!(sent_parents(&t, "shop/HTTPRoute/orders-http"), Some(vec![(ORDERS.to_owned(), 9090)]));
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

#[test]
fn a_port_less_http_parent_conflicts_with_a_grpc_route_on_any_port() {
    let t = load(
        "conflict-http-portless",
        &[
            http_route("orders-http", &[parent("orders", None)]),
            grpc_route("orders-grpc", &[parent("orders", Some(8080))]),
        ],
    );
    let http = &t.route_status()[&http_key("orders-http")][0];
    assert_eq!((accepted(http).status, accepted(http).reason), (false, "Conflicted"));
    assert!(
        accepted(http).message.contains("GRPCRoute shop/orders-grpc also binds Service shop/orders port 8080"),
        "{http:?}"
    );
    // Not served on 9090 either: the parent is refused whole, as its status says.
    assert!(!t.routes().contains_key("shop/HTTPRoute/orders-http"));
    assert!(rules_on_orders(&t, 9090).iter().all(|(name, _)| name == "shop/GRPCRoute/orders-grpc"));
}

#[test]
fn a_port_less_grpc_parent_takes_every_port_of_the_service() {
    let t = load(
        "conflict-grpc-portless",
        &[
            http_route("on-9090", &[parent("orders", Some(9090))]),
            http_route("everywhere", &[parent("orders", None)]),
            grpc_route("orders-grpc", &[parent("orders", None)]),
        ],
    );
    let on_9090 = &t.route_status()[&http_key("on-9090")][0];
    assert_eq!(
        accepted(on_9090).message,
        "spec.parentRefs[0]: GRPCRoute shop/orders-grpc also binds Service shop/orders port 9090; \
         GRPCRoute takes precedence over HTTPRoute"
    );
    let everywhere = &t.route_status()[&http_key("everywhere")][0];
    assert_eq!(accepted(everywhere).reason, "Conflicted");
    assert!(
        accepted(everywhere)
            .message
            .contains("GRPCRoute shop/orders-grpc also binds every port of Service shop/orders"),
        "{everywhere:?}"
    );
    assert_eq!(t.routes().keys().collect::<Vec<_>>(), ["shop/GRPCRoute/orders-grpc"]);
}

#[test]
fn a_route_with_several_parents_loses_only_where_it_conflicts() {
    let t = load(
        "conflict-several-parents",
        &[
            http_route(
                "orders-http",
                &[parent("orders", Some(8080)), parent("orders", Some(9090)), parent("stock", None)],
            ),
            grpc_route("orders-grpc", &[parent("orders", Some(8080))]),
            grpc_route("other-grpc", &[parent("orders", Some(8080))]),
        ],
    );
    assert_eq!(verdicts(&t, &http_key("orders-http")), [(false, "Conflicted"), (true, "Accepted"), (true, "Accepted")]);
    let first = &t.route_status()[&http_key("orders-http")][0];
    assert_eq!(
        accepted(first).message,
        "spec.parentRefs[0]: GRPCRoute shop/orders-grpc also binds Service shop/orders port 8080, \
         GRPCRoute shop/other-grpc also binds Service shop/orders port 8080; GRPCRoute takes precedence over HTTPRoute"
    );
    assert_eq!(
        sent_parents(&t, "shop/HTTPRoute/orders-http"),
        Some(vec![(ORDERS.to_owned(), 9090), ("stock.shop.svc.cluster.local".to_owned(), 0)])
    );
    assert_eq!(rules_on_orders(&t, 8080).iter().filter(|(n, _)| n.contains("HTTPRoute")).count(), 0);
}

#[test]
fn a_grpc_route_that_is_not_accepted_takes_no_port() {
    // Its parent has no port 7000 (NoMatchingParent); another GRPCRoute's every rule is invalid.
    let not_there = grpc_route("not-there", &[parent("orders", Some(7000))]);
    let t = load("conflict-grpc-refused", &[http_route("orders-http", &[parent("orders", None)]), not_there]);
    assert_eq!(verdicts(&t, &grpc_key("not-there")), [(false, "NoMatchingParent")]);
    assert_eq!(verdicts(&t, &http_key("orders-http")), [(true, "Accepted")]);

    let mut t = t;
    let invalid = grpc_route("invalid", &[parent("orders", None)]).replace("method: Get", "method: Get, type: Bogus");
    t.apply(Change::Upsert(parsed(Kind::GrpcRoute, &invalid)));
    assert_eq!(verdicts(&t, &grpc_key("invalid")), [(false, "UnsupportedValue")]);
    assert_eq!(verdicts(&t, &http_key("orders-http")), [(true, "Accepted")]);
    assert!(t.routes().contains_key("shop/HTTPRoute/orders-http"));
}

#[test]
fn adding_then_removing_the_grpc_route_takes_the_port_and_gives_it_back() {
    let http = http_route("orders-http", &[parent("orders", Some(8080))]);
    let mut t = load("conflict-incremental", std::slice::from_ref(&http));
    assert_eq!(verdicts(&t, &http_key("orders-http")), [(true, "Accepted")]);

    let delta = t.apply(Change::Upsert(parsed(Kind::GrpcRoute, &grpc_route("orders-grpc", &[parent("orders", None)]))));
    let routes = delta.of(proto::WAYPOINT_ROUTE_TYPE_URL);
    assert_eq!(routes.removals, ["shop/HTTPRoute/orders-http"], "the waypoint is told: {routes:?}");
    assert_eq!(verdicts(&t, &http_key("orders-http")), [(false, "Conflicted")]);
    assert_eq!(t.warnings().len(), 1, "{:?}", t.warnings());

    let delta = t.apply(Change::Delete(grpc_key("orders-grpc")));
    let routes = delta.of(proto::WAYPOINT_ROUTE_TYPE_URL);
    let upserted: Vec<&str> = routes.upserts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(upserted, ["shop/HTTPRoute/orders-http"], "{routes:?}");
    assert_eq!(routes.removals, ["shop/GRPCRoute/orders-grpc"]);
    assert_eq!(verdicts(&t, &http_key("orders-http")), [(true, "Accepted")]);
    assert_eq!(sent_parents(&t, "shop/HTTPRoute/orders-http"), Some(vec![(ORDERS.to_owned(), 8080)]));
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

/// Kubernetes mode: the HTTPRoute's status says `Conflicted` for the route's generation while
/// the GRPCRoute binds its port, and `Accepted` once the GRPCRoute is deleted.
#[tokio::test]
async fn kubernetes_status_says_conflicted_then_accepted_once_the_grpc_route_is_gone() {
    let t = load(
        "conflict-kube",
        &[
            http_route("orders-http", &[parent("orders", Some(8080))]),
            grpc_route("orders-grpc", &[parent("orders", Some(8080))]),
        ],
    );
    let t = Arc::new(Mutex::new(t));
    let mock = MockApi::start().await;
    let mut written = BTreeMap::new();
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 2);
    let http_status = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/orders-http/status";
    let last_http_status = || {
        let writes = mock.writes();
        let w = writes.iter().rev().find(|w| w.path == http_status).expect("HTTPRoute status written");
        w.body.clone().unwrap()["status"]["parents"][0].clone()
    };
    let parent = last_http_status();
    assert_eq!(
        parent["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "namespace": "shop", "name": "orders", "port": 8080})
    );
    let a = &parent["conditions"][0];
    assert_eq!((a["type"].as_str(), a["status"].as_str()), (Some("Accepted"), Some("False")));
    assert_eq!(a["reason"], "Conflicted");
    assert_eq!(a["observedGeneration"], 2);
    assert!(a["message"].as_str().unwrap().contains("GRPCRoute shop/orders-grpc"), "{a}");

    t.lock().unwrap().apply(Change::Delete(grpc_key("orders-grpc")));
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 1, "the HTTPRoute's status changed");
    let a = last_http_status()["conditions"][0].clone();
    assert_eq!((a["status"].as_str(), a["reason"].as_str()), (Some("True"), Some("Accepted")));
}
