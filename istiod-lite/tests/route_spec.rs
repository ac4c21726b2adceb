//! HTTPRoute / GRPCRoute values the Gateway API accepts are accepted and translated as the
//! specification says (the ones it refuses are in `waypoint_bad_input.rs`).

mod support;

use istiod_lite::source::dir::Loader;
use istiod_lite::{Kind, MeshConfig, Object, ObjectKey, Translator};
use proto::mesh::waypoint::v1 as pb;
use support::TempDir;

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n\
apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - {name: http, port: 80}\n";

fn http_route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: shop\nspec:\n  \
         parentRefs:\n  - {{group: \"\", kind: Service, name: web}}\n  rules:\n  - {rules}\n"
    )
}

/// Loads `BASE` and `route`, asserting the files had no errors, and translates them.
fn translate(test: &str, route: &str) -> Translator {
    let dir = TempDir::new(test);
    dir.write("r.yaml", &format!("{BASE}---\n{route}"));
    let snap = Loader::new(dir.path()).load().unwrap();
    assert!(snap.errors.is_empty(), "{test}: {:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    t
}

fn the_rule(t: &Translator) -> &pb::Rule {
    &t.routes()["shop/HTTPRoute/r"].rules[0]
}

/// Values the Gateway API's CRD validation lets through must not be refused.
#[test]
fn values_the_gateway_api_accepts_are_accepted() {
    let cases = [
        (
            // HTTPPathModifier: "/foo" with an empty replacePrefixMatch rewrites "/foo/bar" to "/bar".
            "empty replacePrefixMatch",
            "matches:\n    - path: {type: PathPrefix, value: /foo}\n    filters:\n    - type: URLRewrite\n      urlRewrite:\n        \
             path: {type: ReplacePrefixMatch, replacePrefixMatch: \"\"}\n    backendRefs: [{name: web, port: 80}]",
        ),
        (
            // HTTPRouteTimeouts: backendRequest may not exceed request; 0s disables it.
            "backendRequest disabled under a request timeout",
            "timeouts: {request: 10s, backendRequest: 0s}\n    backendRefs: [{name: web, port: 80}]",
        ),
        (
            // HTTPHeaderMatch: of entries with equivalent names, the first is used, the rest ignored.
            "header names equal but for case",
            "matches:\n    - headers: [{name: X-Version, value: \"2\"}, {name: x-version, value: \"3\"}]\n    \
             backendRefs: [{name: web, port: 80}]",
        ),
    ];
    for (case, rule) in cases {
        let t = translate("route-spec-accept", &http_route(rule));
        assert!(t.routes().contains_key("shop/HTTPRoute/r"), "{case}");
    }
}

#[test]
fn of_header_matches_with_equivalent_names_the_first_counts() {
    let t = translate(
        "route-spec-headers",
        &http_route(
            "matches:\n    - headers: [{name: X-Version, value: \"2\"}, {name: x-version, value: \"3\"}]\n    \
             backendRefs: [{name: web, port: 80}]",
        ),
    );
    let headers = &the_rule(&t).matches[0].headers;
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!((headers[0].name.as_str(), headers[0].value.as_str()), ("x-version", "2"));
}

/// HTTPRequestMirrorFilter: a backendRef that cannot be resolved "must be dropped" and not
/// configured; the route itself stays (with ResolvedRefs False).
#[test]
fn an_unresolvable_mirror_is_left_out_and_the_route_stays() {
    let t = translate(
        "route-spec-mirror",
        &http_route(
            "filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: gone, port: 80}}\n    \
             backendRefs: [{name: web, port: 80}]",
        ),
    );
    let rule = the_rule(&t);
    assert!(rule.filters.is_empty(), "the unresolved mirror is not sent: {:?}", rule.filters);
    assert_eq!(rule.backends.len(), 1);
    let status = &t.route_status()[&ObjectKey::new(Kind::HttpRoute, "shop", "r")];
    let resolved = status[0].conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap();
    assert!(!resolved.status && resolved.reason == "BackendNotFound", "{resolved:?}");
}
