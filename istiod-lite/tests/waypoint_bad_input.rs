//! Bad waypoint configuration (routes, waypoint policies, Service annotations) is reported with
//! file, document, object and field; the rest of the file still applies; and a bad waypoint
//! policy fails closed at its targets.

mod support;

use istiod_lite::source::dir::Loader;
use istiod_lite::{Kind, MeshConfig, ObjectKey, Translator};
use support::TempDir;

const GOOD: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";

fn http_route(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: shop\nspec:\n  \
         parentRefs:\n  - {{group: \"\", kind: Service, name: web}}\n{spec}"
    )
}

fn grpc_route(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: g\n  namespace: shop\nspec:\n  \
         parentRefs:\n  - {{group: \"\", kind: Service, name: web}}\n{spec}"
    )
}

fn rule(body: &str) -> String {
    http_route(&format!("  rules:\n  - {body}\n"))
}

/// (case, document, object, message fragments)
fn cases() -> Vec<(&'static str, String, &'static str, Vec<&'static str>)> {
    const R: &str = "(HTTPRoute shop/r)";
    const G: &str = "(GRPCRoute shop/g)";
    vec![
        ("unknown spec field", http_route("  hostname: [a]\n"), R, vec!["unknown field `hostname`"]),
        ("unknown rule field", rule("sessionPersistence: {}"), R, vec!["spec.rules[0]", "unknown field `sessionPersistence`"]),
        (
            "bad path type",
            rule("matches:\n    - path: {type: Glob, value: /a}"),
            R,
            vec!["spec.rules[0].matches[0].path.type: unsupported value \"Glob\""],
        ),
        (
            "relative path",
            rule("matches:\n    - path: {type: Exact, value: a/b}"),
            R,
            vec!["spec.rules[0].matches[0].path.value: \"a/b\" must start with '/'"],
        ),
        (
            "encoded slash in a path match",
            rule("matches:\n    - path: {type: PathPrefix, value: /a%2Fb}"),
            R,
            vec!["spec.rules[0].matches[0].path.value: \"/a%2Fb\" is not a normalized path"],
        ),
        (
            "fragment in a path match",
            rule("matches:\n    - path: {type: Exact, value: \"/a#b\"}"),
            R,
            vec!["spec.rules[0].matches[0].path.value: \"/a#b\" contains '#'"],
        ),
        ("two wildcard labels", http_route("  hostnames: [\"*.*.example.com\"]\n"), R, vec!["spec.hostnames[0]: \"*.*.example.com\" is not a hostname"]),
        ("an IP as hostname", http_route("  hostnames: [10.0.0.1]\n"), R, vec!["spec.hostnames[0]: \"10.0.0.1\" is not a hostname"]),
        ("label ending in a dash", http_route("  hostnames: [a-.example.com]\n"), R, vec!["spec.hostnames[0]: \"a-.example.com\" is not a hostname"]),
        (
            "bad path regex",
            rule("matches:\n    - path: {type: RegularExpression, value: \"/a(\"}"),
            R,
            vec!["spec.rules[0].matches[0].path.value: not a valid regular expression"],
        ),
        (
            "bad header regex",
            rule("matches:\n    - headers: [{type: RegularExpression, name: x-a, value: \"[\"}]"),
            R,
            vec!["spec.rules[0].matches[0].headers[0].value: not a valid regular expression"],
        ),
        (
            "bad query type",
            rule("matches:\n    - queryParams: [{type: Prefix, name: q, value: v}]"),
            R,
            vec!["spec.rules[0].matches[0].queryParams[0].type: unsupported value \"Prefix\""],
        ),
        ("bad method", rule("matches:\n    - method: FETCH"), R, vec!["spec.rules[0].matches[0].method: unsupported value \"FETCH\""]),
        (
            "unsupported filter",
            rule("filters:\n    - type: ExtensionRef\n      extensionRef: {group: x, kind: y, name: z}"),
            R,
            vec!["spec.rules[0].filters[0].type: unsupported value \"ExtensionRef\""],
        ),
        (
            "filter without its member",
            rule("filters:\n    - type: RequestHeaderModifier"),
            R,
            vec!["spec.rules[0].filters[0].requestHeaderModifier: required when type is RequestHeaderModifier"],
        ),
        (
            "redirect status",
            rule("filters:\n    - type: RequestRedirect\n      requestRedirect: {statusCode: 304}"),
            R,
            vec!["spec.rules[0].filters[0].requestRedirect.statusCode: unsupported value 304"],
        ),
        (
            "redirect with backends",
            rule("filters:\n    - type: RequestRedirect\n      requestRedirect: {hostname: x}\n    backendRefs: [{name: web, port: 80}]"),
            R,
            vec!["spec.rules[0].backendRefs: cannot be used with a RequestRedirect filter"],
        ),
        (
            "prefix rewrite on an exact match",
            rule(
                "matches:\n    - path: {type: Exact, value: /a}\n    filters:\n    - type: URLRewrite\n      urlRewrite:\n        \
                 path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}",
            ),
            R,
            vec!["spec.rules[0].filters[0].urlRewrite.path: ReplacePrefixMatch needs every match"],
        ),
        (
            "mirror percent",
            rule("filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: web, port: 80}, percent: 150}"),
            R,
            vec!["spec.rules[0].filters[0].requestMirror.percent: must be 0-100"],
        ),
        (
            "backend without port",
            rule("backendRefs: [{name: web}]"),
            R,
            vec!["spec.rules[0].backendRefs[0].port: required"],
        ),
        (
            "bad timeout",
            rule("timeouts: {request: 10 seconds}"),
            R,
            vec!["spec.rules[0].timeouts.request: \"10 seconds\" is not a duration"],
        ),
        (
            "backend timeout over request timeout",
            rule("timeouts: {request: 1s, backendRequest: 2s}"),
            R,
            vec!["spec.rules[0].timeouts.backendRequest: must not be longer than timeouts.request"],
        ),
        ("bad retry code", rule("retry: {codes: [200]}"), R, vec!["spec.rules[0].retry.codes[0]: 200 is not an HTTP error code"]),
        (
            "grpc path match",
            grpc_route("  rules:\n  - matches:\n    - path: {value: /x}\n"),
            G,
            vec!["spec.rules[0].matches[0].path: not a GRPCRoute field"],
        ),
        (
            "grpc method as a string",
            grpc_route("  rules:\n  - matches:\n    - method: GET\n"),
            G,
            vec!["spec.rules[0].matches[0].method: \"GET\": a GRPCRoute method is {type, service, method}"],
        ),
        (
            "grpc empty method match",
            grpc_route("  rules:\n  - matches:\n    - method: {type: Exact}\n"),
            G,
            vec!["spec.rules[0].matches[0].method: needs a service or a method"],
        ),
        (
            "grpc method regex",
            grpc_route("  rules:\n  - matches:\n    - method: {type: RegularExpression, service: \"(\"}\n"),
            G,
            vec!["spec.rules[0].matches[0].method.service: not a valid regular expression"],
        ),
        (
            "grpc redirect",
            grpc_route("  rules:\n  - filters:\n    - type: RequestRedirect\n      requestRedirect: {hostname: x}\n"),
            G,
            vec!["spec.rules[0].filters[0].type: unsupported value \"RequestRedirect\""],
        ),
        (
            "bad load balancer annotation",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: shop\n  annotations:\n    \
             waypoint.mesh/load-balancer: fastest\n"
                .into(),
            "(Service shop/s)",
            vec!["metadata.annotations[waypoint.mesh/load-balancer]: unsupported value \"fastest\""],
        ),
        (
            "bad outlier annotation",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: shop\n  annotations:\n    \
             waypoint.mesh/outlier-ejection-seconds: \"-1\"\n"
                .into(),
            "(Service shop/s)",
            vec!["metadata.annotations[waypoint.mesh/outlier-ejection-seconds]"],
        ),
        (
            "custom waypoint policy",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ap\n  namespace: shop\nspec:\n  \
             targetRefs: [{kind: Service, group: \"\", name: web}]\n  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n"
                .into(),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.action: CUSTOM (an external authorizer) is not supported"],
        ),
        (
            "unsupported target kind",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ap\n  namespace: shop\nspec:\n  \
             targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: web}]\n"
                .into(),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.targetRefs[0].kind: unsupported target networking.istio.io/ServiceEntry"],
        ),
        (
            "reference grant with nothing to grant",
            grant("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: web}]\n  to: []\n"),
            "(ReferenceGrant shop/g)",
            vec!["spec.to: 0 entries; 1 to 16 are allowed"],
        ),
        (
            "reference grant without a from namespace",
            grant("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: \"\"}]\n  to: [{group: \"\", kind: Service}]\n"),
            "(ReferenceGrant shop/g)",
            vec!["spec.from[0].namespace: must not be empty"],
        ),
        (
            "reference grant with an unknown field",
            grant("  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: web, name: r}]\n  to: [{group: \"\", kind: Service}]\n"),
            "(ReferenceGrant shop/g)",
            vec!["unknown field `name`"],
        ),
    ]
}

fn grant(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata:\n  name: g\n  namespace: shop\nspec:\n{spec}"
    )
}

#[test]
fn each_bad_waypoint_document_is_reported_with_its_field() {
    for (case, bad, object, fragments) in cases() {
        let dir = TempDir::new("wp-bad-input");
        let file = dir.write("mixed.yaml", &format!("{GOOD}---\n{bad}"));
        let snap = Loader::new(dir.path()).load().unwrap();
        assert_eq!(snap.errors.len(), 1, "{case}: {:?}", snap.errors);
        let msg = snap.errors[0].to_string();
        assert!(msg.starts_with(&format!("{} document 2", file.display())), "{case}: {msg}");
        assert!(msg.contains(object), "{case}: {msg} lacks {object}");
        for f in fragments {
            assert!(msg.contains(f), "{case}: {msg:?} lacks {f:?}");
        }
        assert!(
            snap.objects.iter().any(|o| o.object.key() == ObjectKey::new(Kind::Namespace, "", "shop")),
            "{case}: the good document applies"
        );
    }
}

#[test]
fn a_bad_waypoint_policy_is_a_deny_all_at_its_targets_not_at_ztunnel() {
    use proto::mesh::waypoint::v1::{PolicyRule, Target, l7_policy::Action, target};
    let dir = TempDir::new("wp-fail-closed");
    dir.write(
        "p.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ap\n  namespace: shop\nspec:\n  \
         targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules:\n  - to:\n    - operation:\n        ports: [http]\n",
    );
    let snap = Loader::new(dir.path()).load().unwrap();
    assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    assert!(t.authorizations().is_empty(), "the stand-in must stay a waypoint policy");
    let p = &t.l7_policies()["shop/ap"];
    assert_eq!(p.action, Action::Deny as i32);
    assert_eq!(p.targets, [Target { kind: Some(target::Kind::Service("web.shop.svc.cluster.local".into())) }]);
    assert_eq!(p.rules, [PolicyRule::default()], "one empty rule: matches everything");
}
