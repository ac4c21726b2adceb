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

/// The first load error of `route`, which must be refused with nothing of it translated.
fn refused(test: &str, route: &str) -> String {
    let dir = TempDir::new(test);
    dir.write("r.yaml", &format!("{BASE}---\n{route}"));
    let snap = Loader::new(dir.path()).load().unwrap();
    assert_eq!(snap.errors.len(), 1, "{test}: {:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    assert!(!t.routes().contains_key("shop/HTTPRoute/r"), "{test}: a refused route is not translated");
    snap.errors[0].to_string()
}

fn redirect(spec: &str) -> String {
    http_route(&format!("filters:\n    - type: RequestRedirect\n      requestRedirect: {spec}"))
}

/// HTTPRequestRedirectFilter.statusCode: `Enum=301;302;303;307;308` (301 and 302 Core, the
/// others Extended); each is sent to the waypoint as written, 302 when absent.
#[test]
fn every_redirect_status_of_the_api_enum_is_accepted_as_written() {
    use pb::filter::Kind;
    for (spec, want) in [
        ("{hostname: a.example}", 302),
        ("{statusCode: 301}", 301),
        ("{statusCode: 302}", 302),
        ("{statusCode: 303}", 303),
        ("{statusCode: 307}", 307),
        ("{statusCode: 308}", 308),
    ] {
        let t = translate("route-spec-redirect-codes", &redirect(spec));
        match &the_rule(&t).filters[0].kind {
            Some(Kind::RequestRedirect(r)) => assert_eq!(r.status_code, want, "{spec}"),
            other => panic!("{spec}: {other:?}"),
        }
    }
}

#[test]
fn a_redirect_status_outside_the_api_enum_is_refused_naming_the_field() {
    for code in [300, 304, 305, 306, 309, 200] {
        let msg = refused("route-spec-redirect-bad-code", &redirect(&format!("{{statusCode: {code}}}")));
        assert!(msg.contains("(HTTPRoute shop/r)"), "{msg}");
        assert!(
            msg.contains(&format!(
                "spec.rules[0].filters[0].requestRedirect.statusCode: unsupported value {code} (supported: 301, 302, 303, 307, 308)"
            )),
            "{msg}"
        );
    }
}

fn header_modifier(member: &str, body: &str) -> String {
    let type_ = if member == "requestHeaderModifier" { "RequestHeaderModifier" } else { "ResponseHeaderModifier" };
    http_route(&format!(
        "filters:\n    - type: {type_}\n      {member}:\n        {body}\n    backendRefs: [{{name: web, port: 80}}]"
    ))
}

/// A header that frames the message or belongs to one connection is the proxy's to write for
/// each hop: a filter that sets, adds or removes one is refused naming the field (a
/// `content-length` set by a filter cut bodies short).
#[test]
fn a_header_modifier_on_a_framing_header_is_refused_naming_the_field() {
    let cases = [
        ("set: [{name: Content-Length, value: \"1\"}]", "set[0].name", "Content-Length"),
        (
            "add: [{name: x-ok, value: \"1\"}, {name: transfer-encoding, value: chunked}]",
            "add[1].name",
            "transfer-encoding",
        ),
        ("remove: [Connection]", "remove[0]", "Connection"),
        ("set: [{name: upgrade, value: websocket}]", "set[0].name", "upgrade"),
    ];
    for member in ["requestHeaderModifier", "responseHeaderModifier"] {
        for (body, field, name) in cases {
            let msg = refused("route-spec-framing-headers", &header_modifier(member, body));
            assert!(msg.contains("(HTTPRoute shop/r)"), "{msg}");
            assert!(
                msg.contains(&format!("spec.rules[0].filters[0].{member}.{field}: {name:?} frames the message")),
                "{body}: {msg}"
            );
        }
    }
}

/// HTTPHeaderFilter: "Only one action for a given header name is permitted. Filters specifying
/// multiple actions of the same or different type for any one header name are invalid", and
/// header names are case-insensitive.
#[test]
fn a_header_name_twice_in_one_modifier_is_refused_whatever_its_case() {
    let cases = [
        ("set: [{name: X-A, value: \"1\"}, {name: x-a, value: \"2\"}]", "set[1].name", "set[0].name"),
        ("add: [{name: x-a, value: \"1\"}, {name: X-A, value: \"2\"}]", "add[1].name", "add[0].name"),
        ("remove: [x-a, X-a]", "remove[1]", "remove[0]"),
        ("set: [{name: x-a, value: \"1\"}]\n        add: [{name: X-A, value: \"2\"}]", "add[0].name", "set[0].name"),
        ("add: [{name: X-B, value: \"1\"}]\n        remove: [x-b]", "remove[0]", "add[0].name"),
    ];
    for member in ["requestHeaderModifier", "responseHeaderModifier"] {
        for (body, field, first) in cases {
            let msg = refused("route-spec-dup-headers", &header_modifier(member, body));
            let base = format!("spec.rules[0].filters[0].{member}");
            assert!(msg.contains("(HTTPRoute shop/r)"), "{msg}");
            assert!(msg.contains(&format!("{base}.{field}: header ")), "{body}: {msg}");
            assert!(msg.contains(&format!("already appears at {base}.{first}")), "{body}: {msg}");
        }
    }
    // Distinct names, in any case, are fine, and are sent in lower case.
    let t = translate(
        "route-spec-distinct-headers",
        &header_modifier(
            "requestHeaderModifier",
            "set: [{name: X-A, value: \"1\"}]\n        add: [{name: X-B, value: \"2\"}]\n        remove: [X-C]",
        ),
    );
    match &the_rule(&t).filters[0].kind {
        Some(pb::filter::Kind::RequestHeaderModifier(m)) => {
            assert_eq!((m.set[0].name.as_str(), m.add[0].name.as_str(), m.remove[0].as_str()), ("x-a", "x-b", "x-c"));
        }
        other => panic!("{other:?}"),
    }
}

/// HTTPRequestRedirectFilter.hostname and HTTPURLRewriteFilter.hostname are `PreciseHostname`s:
/// RFC 1123 names, numeric IP addresses excluded (so no wildcard and no port either).
#[test]
fn redirect_and_rewrite_hostnames_must_be_precise_hostnames() {
    let rewrite = |h: &str| {
        http_route(&format!(
            "filters:\n    - type: URLRewrite\n      urlRewrite: {{hostname: \"{h}\"}}\n    backendRefs: [{{name: web, port: 80}}]"
        ))
    };
    for bad in ["*.example.com", "example.com:8080", "10.0.0.1", "::1", "a_b.example", "-a.example", "a..b", ""] {
        for (route, field) in [
            (rewrite(bad), "spec.rules[0].filters[0].urlRewrite.hostname"),
            (redirect(&format!("{{hostname: \"{bad}\"}}")), "spec.rules[0].filters[0].requestRedirect.hostname"),
        ] {
            let msg = refused("route-spec-bad-hostname", &route);
            assert!(msg.contains("(HTTPRoute shop/r)"), "{msg}");
            assert!(msg.contains(&format!("{field}: {bad:?} is not a precise hostname")), "{bad}: {msg}");
        }
    }
    let long = format!("{}.example", "a".repeat(64));
    assert!(refused("route-spec-long-label", &rewrite(&long)).contains("is not a precise hostname"));
    // Good names pass, sent in lower case.
    for (route, good) in [(rewrite("Rewritten.Example.com"), "rewritten.example.com"), (rewrite("svc-1"), "svc-1")] {
        let t = translate("route-spec-good-hostname", &route);
        match &the_rule(&t).filters[0].kind {
            Some(pb::filter::Kind::UrlRewrite(u)) => assert_eq!(u.hostname, good),
            other => panic!("{other:?}"),
        }
    }
    let t = translate("route-spec-good-redirect-host", &redirect("{hostname: Other.Example}"));
    match &the_rule(&t).filters[0].kind {
        Some(pb::filter::Kind::RequestRedirect(r)) => assert_eq!(r.hostname, "other.example"),
        other => panic!("{other:?}"),
    }
}

/// GEP-1426 (route types on a Service port): GRPCRoute before HTTPRoute whatever their ages and
/// names. The oldest-then-alphabetical rule is the GRPCRoute spec's for Gateway listeners; on a
/// Service it would let an older HTTPRoute take the port.
#[test]
fn on_a_service_port_the_grpc_route_wins_even_over_an_older_http_route() {
    let route = |kind: &str, name: &str, created: &str, rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: shop\n  \
             creationTimestamp: \"{created}\"\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: web, port: 80}}\n  \
             rules:\n  - {rule}\n"
        )
    };
    let t = translate(
        "route-spec-type-precedence",
        &format!(
            "{}---\n{}",
            route("HTTPRoute", "a-http", "2020-01-01T00:00:00Z", "backendRefs: [{name: web, port: 80}]"),
            route(
                "GRPCRoute",
                "z-grpc",
                "2026-01-01T00:00:00Z",
                "matches: [{method: {service: shop.Web}}]\n    backendRefs: [{name: web, port: 80}]"
            ),
        ),
    );
    assert_eq!(t.routes().keys().collect::<Vec<_>>(), ["shop/GRPCRoute/z-grpc"]);
    let http = &t.route_status()[&ObjectKey::new(Kind::HttpRoute, "shop", "a-http")][0];
    let accepted = http.conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
    assert_eq!((accepted.status, accepted.reason), (false, "Conflicted"), "{accepted:?}");
    assert!(accepted.message.contains("GRPCRoute shop/z-grpc"), "{}", accepted.message);
    assert!(
        !http.conditions.iter().any(|c| c.type_ == "PartiallyInvalid"),
        "a parent that does not accept the route: {http:?}"
    );
    let grpc = &t.route_status()[&ObjectKey::new(Kind::GrpcRoute, "shop", "z-grpc")][0];
    assert!(grpc.conditions.iter().any(|c| c.type_ == "Accepted" && c.status), "{grpc:?}");
}

/// A Service parent's `sectionName` is a port name (Gateway API `ParentReference`): the route
/// binds that port only, a name the Service lacks (or a `port` that is not that port's) is
/// `NoMatchingParent`, and the status names the parent as written.
#[test]
fn a_service_parent_section_is_the_port_of_that_name() {
    let route = |name: &str, parent: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: shop\n\
             spec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: two, {parent}}}\n  rules:\n  - backendRefs: [{{name: web, port: 80}}]\n"
        )
    };
    let two = "apiVersion: v1\nkind: Service\nmetadata:\n  name: two\n  namespace: shop\nspec:\n  ports:\n  \
               - {name: http, port: 80}\n  - {name: admin, port: 9000}\n";
    let t = translate(
        "route-spec-section-name",
        &[
            two,
            &route("admin", "sectionName: admin"),
            &route("nope", "sectionName: metrics"),
            &route("mismatch", "sectionName: admin, port: 80"),
        ]
        .join("---\n"),
    );
    let admin = &t.routes()["shop/HTTPRoute/admin"];
    assert_eq!(admin.parents.iter().map(|p| p.port).collect::<Vec<_>>(), [9000], "{admin:?}");
    for (name, says) in [("nope", "no port named \"metrics\""), ("mismatch", "no port named \"admin\" with number 80")]
    {
        assert!(!t.routes().contains_key(&format!("shop/HTTPRoute/{name}")), "{name}");
        let status = &t.route_status()[&ObjectKey::new(Kind::HttpRoute, "shop", name)][0];
        let accepted = status.conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
        assert_eq!((accepted.status, accepted.reason), (false, "NoMatchingParent"), "{name}: {accepted:?}");
        assert!(accepted.message.contains(says), "{name}: {}", accepted.message);
    }
    let status = &t.route_status()[&ObjectKey::new(Kind::HttpRoute, "shop", "admin")][0];
    assert_eq!(status.section_name.as_deref(), Some("admin"));
    let body = istiod_lite::deploy::route_status::status_body(
        &ObjectKey::new(Kind::HttpRoute, "shop", "admin"),
        std::slice::from_ref(status),
        1,
        &Default::default(),
        "2026-01-01T00:00:00Z",
    );
    assert_eq!(body["status"]["parents"][0]["parentRef"]["sectionName"], "admin");
}
