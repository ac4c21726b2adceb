//! Tests of route compilation, precedence and filters' path arithmetic.

use http::{HeaderMap, Method};
use proto::mesh::waypoint::v1 as pb;

use super::*;

fn m_path(t: pb::MatchType, v: &str) -> pb::Match {
    pb::Match { path: Some(pb::PathMatch { r#type: t as i32, value: v.into() }), ..Default::default() }
}

fn route(name: &str, ts: i64, rules: Vec<(&str, Vec<pb::Match>)>) -> CompiledRoute {
    CompiledRoute::try_from(pb::Route {
        namespace: "ns".into(),
        name: name.into(),
        kind: 0,
        parents: vec![pb::ParentService { hostname: "svc.ns.svc.cluster.local".into(), port: 0 }],
        hostnames: vec![],
        creation_timestamp: ts,
        rules: rules
            .into_iter()
            .map(|(n, matches)| pb::Rule {
                name: n.into(),
                matches,
                backends: vec![pb::Backend { hostname: "b".into(), port: 80, weight: 1, filters: vec![] }],
                ..Default::default()
            })
            .collect(),
    })
    .unwrap()
}

fn pick(routes: &[CompiledRoute], method: &Method, path: &str, headers: &HeaderMap, query: Option<&str>) -> String {
    let mut entries: Vec<Entry> = routes.iter().flat_map(|r| r.entries()).collect();
    sort(&mut entries);
    let v = RequestView { method, path, query, headers, host: "svc" };
    find(&entries, &v).map(|e| e.rule.id.clone()).unwrap_or_default()
}

#[test]
fn gateway_api_precedence() {
    use pb::MatchType::*;
    let h1 = pb::HeaderMatch { name: "x-a".into(), r#type: Exact as i32, value: "1".into() };
    let h2 = pb::HeaderMatch { name: "x-b".into(), r#type: Exact as i32, value: "2".into() };
    let routes = vec![
        route(
            "old",
            1,
            vec![
                ("root", vec![m_path(PathPrefix, "/")]),
                ("foo", vec![m_path(PathPrefix, "/foo")]),
                ("foobar", vec![m_path(PathPrefix, "/foo/bar")]),
                ("exact", vec![m_path(Exact, "/foo/bar")]),
                ("one-header", vec![pb::Match { headers: vec![h1.clone()], ..m_path(PathPrefix, "/h") }]),
                ("method", vec![pb::Match { method: "POST".into(), ..m_path(PathPrefix, "/h") }]),
            ],
        ),
        route(
            "new",
            2,
            vec![
                ("two-headers", vec![pb::Match { headers: vec![h1.clone(), h2.clone()], ..m_path(PathPrefix, "/h") }]),
                ("same-as-old-foo", vec![m_path(PathPrefix, "/foo")]),
            ],
        ),
    ];
    let get = Method::GET;
    let none = HeaderMap::new();
    assert_eq!(pick(&routes, &get, "/foo/bar", &none, None), "ns/HTTPRoute/old#exact");
    assert_eq!(pick(&routes, &get, "/foo/bar/baz", &none, None), "ns/HTTPRoute/old#foobar");
    assert_eq!(pick(&routes, &get, "/foo/x", &none, None), "ns/HTTPRoute/old#foo", "older route wins a tie");
    assert_eq!(pick(&routes, &get, "/other", &none, None), "ns/HTTPRoute/old#root");
    let mut hs = HeaderMap::new();
    hs.insert("x-a", "1".parse().unwrap());
    hs.insert("x-b", "2".parse().unwrap());
    // Method match outranks header count.
    assert_eq!(pick(&routes, &Method::POST, "/h", &hs, None), "ns/HTTPRoute/old#method");
    assert_eq!(pick(&routes, &get, "/h", &hs, None), "ns/HTTPRoute/new#two-headers", "more headers first");
    let mut one = HeaderMap::new();
    one.insert("x-a", "1".parse().unwrap());
    assert_eq!(pick(&routes, &get, "/h", &one, None), "ns/HTTPRoute/old#one-header");
}

#[test]
fn regex_and_query_matches() {
    use pb::MatchType::*;
    let q = pb::HeaderMatch { name: "v".into(), r#type: RegularExpression as i32, value: "[0-9]+".into() };
    let routes = vec![route(
        "r",
        0,
        vec![
            ("re", vec![m_path(RegularExpression, "/items/[0-9]+")]),
            ("q", vec![pb::Match { query_params: vec![q], ..m_path(PathPrefix, "/") }]),
        ],
    )];
    let none = HeaderMap::new();
    assert_eq!(pick(&routes, &Method::GET, "/items/42", &none, None), "ns/HTTPRoute/r#re");
    assert_eq!(pick(&routes, &Method::GET, "/items/42x", &none, None), "", "regex matches the whole path");
    assert_eq!(pick(&routes, &Method::GET, "/x", &none, Some("a=1&v=12")), "ns/HTTPRoute/r#q");
    assert_eq!(pick(&routes, &Method::GET, "/x", &none, Some("v=1a")), "");
}

#[test]
fn compile_errors_name_the_field() {
    let bad = |r: pb::Route| CompiledRoute::try_from(r).unwrap_err().to_string();
    let base = || pb::Route {
        namespace: "ns".into(),
        name: "r".into(),
        parents: vec![pb::ParentService { hostname: "svc".into(), port: 80 }],
        ..Default::default()
    };
    let mut r = base();
    r.rules = vec![pb::Rule { matches: vec![m_path(pb::MatchType::RegularExpression, "/a(")], ..Default::default() }];
    let e = bad(r);
    assert!(e.contains("ns/HTTPRoute/r") && e.contains("rules[0].matches[0].path.value"), "{e}");
    let mut r = base();
    r.rules = vec![pb::Rule { matches: vec![m_path(pb::MatchType::PathPrefix, "nope")], ..Default::default() }];
    assert!(bad(r).contains("does not start with '/'"));
    let mut r = base();
    r.parents.clear();
    assert!(bad(r).contains("parents"));
    let mut r = base();
    r.rules = vec![pb::Rule {
        filters: vec![pb::Filter {
            kind: Some(pb::filter::Kind::RequestHeaderModifier(pb::HeaderModifier {
                set: vec![pb::Header { name: "bad header".into(), value: "v".into() }],
                ..Default::default()
            })),
        }],
        ..Default::default()
    }];
    assert!(bad(r).contains("rules[0].filters[0].set[0].name"));
    let mut r = base();
    r.rules = vec![pb::Rule { retry: Some(pb::Retry { codes: vec![99], ..Default::default() }), ..Default::default() }];
    assert!(bad(r).contains("rules[0].retry.codes[0]"));
}

#[test]
fn prefix_rewrites_per_gateway_api() {
    let m = PathModifier::Prefix("/bar".into());
    assert_eq!(m.apply("/foo/x", Some("/foo")), "/bar/x");
    assert_eq!(m.apply("/foo", Some("/foo")), "/bar");
    let root = PathModifier::Prefix("/".into());
    assert_eq!(root.apply("/foo/x", Some("/foo")), "/x");
    assert_eq!(root.apply("/foo", Some("/foo")), "/");
    let m = PathModifier::Prefix("/bar/".into());
    assert_eq!(m.apply("/foo/x", Some("/foo")), "/bar/x");
    assert_eq!(PathModifier::Full("/z".into()).apply("/foo/x", Some("/foo")), "/z");
    // A prefix match of "/" is stored as "".
    assert_eq!(PathModifier::Prefix("/api".into()).apply("/x", Some("")), "/api/x");
}

fn backend(host: &str, port: u32, weight: u32) -> pb::Backend {
    pb::Backend { hostname: host.into(), port, weight, filters: vec![] }
}

fn grpc_view<'a>(headers: &'a HeaderMap, path: &'a str, host: &'a str) -> RequestView<'a> {
    RequestView { method: &Method::POST, path, query: None, headers, host }
}

fn one_rule_route(name: &str, kind: pb::route::Kind, ts: i64, hostnames: &[&str], rule: pb::Rule) -> CompiledRoute {
    CompiledRoute::try_from(pb::Route {
        namespace: "ns".into(),
        name: name.into(),
        kind: kind as i32,
        parents: vec![pb::ParentService { hostname: "svc.ns.svc.cluster.local".into(), port: 0 }],
        hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
        creation_timestamp: ts,
        rules: vec![rule],
    })
    .unwrap()
}

fn pick_in(routes: &[CompiledRoute], v: &RequestView<'_>) -> String {
    let mut entries: Vec<Entry> = routes.iter().flat_map(|r| r.entries()).collect();
    sort(&mut entries);
    find(&entries, v).map(|e| e.rule.id.clone()).unwrap_or_default()
}

/// Gateway API (HTTPRouteRule.backendRefs): an invalid backendRef gets 500 for its share of
/// requests; istiod-lite sends it with an empty hostname. The route must still compile (a
/// rejected route would drop every rule of it, or NACK the push).
#[test]
fn an_unresolved_backend_keeps_its_share_and_the_route_compiles() {
    let mirror = pb::Filter {
        kind: Some(pb::filter::Kind::RequestMirror(pb::RequestMirror {
            backend: Some(backend("", 0, 1)),
            percent: 100,
        })),
    };
    let r = CompiledRoute::try_from(pb::Route {
        namespace: "ns".into(),
        name: "split".into(),
        parents: vec![pb::ParentService { hostname: "svc.ns.svc.cluster.local".into(), port: 0 }],
        rules: vec![pb::Rule {
            filters: vec![mirror],
            backends: vec![backend("", 0, 3), backend("b.ns.svc.cluster.local", 80, 1)],
            ..Default::default()
        }],
        ..Default::default()
    })
    .expect("a route with an unresolved backend compiles");
    let rule = &r.rules[0].0;
    assert_eq!(rule.backends.len(), 2);
    assert_eq!(rule.backends[0].hostname, "", "the unresolved backend stays, to answer 500");
    assert_eq!(rule.total_weight, 4, "it keeps its share");
}

/// GRPCRoute: "If no matches are specified, the implementation MUST match every gRPC request"
/// — gRPC requests, not every request: an older GRPCRoute without matches must not take plain
/// HTTP requests from an HTTPRoute on the same Service.
#[test]
fn a_grpc_route_takes_grpc_requests_only() {
    let to = |b: &str| vec![backend(b, 80, 1)];
    let grpc = one_rule_route(
        "g",
        pb::route::Kind::Grpc,
        1,
        &[],
        pb::Rule { name: "all".into(), backends: to("g"), ..Default::default() },
    );
    let grpc_svc = one_rule_route(
        "g2",
        pb::route::Kind::Grpc,
        1,
        &[],
        pb::Rule {
            name: "svc".into(),
            matches: vec![pb::Match {
                grpc: Some(pb::GrpcMethodMatch {
                    r#type: pb::MatchType::Exact as i32,
                    service: "api".into(),
                    method: String::new(),
                }),
                ..Default::default()
            }],
            backends: to("g"),
            ..Default::default()
        },
    );
    let http = one_rule_route(
        "h",
        pb::route::Kind::Http,
        2,
        &[],
        pb::Rule {
            name: "root".into(),
            matches: vec![m_path(pb::MatchType::PathPrefix, "/")],
            backends: to("h"),
            ..Default::default()
        },
    );
    let routes = [grpc, grpc_svc, http];
    let plain = HeaderMap::new();
    let mut grpc_ct = HeaderMap::new();
    grpc_ct.insert("content-type", "application/grpc".parse().unwrap());
    let get =
        |path: &'static str| RequestView { method: &Method::GET, path, query: None, headers: &plain, host: "svc" };
    assert_eq!(pick_in(&routes, &get("/index.html")), "ns/HTTPRoute/h#root");
    assert_eq!(pick_in(&routes, &get("/api/users")), "ns/HTTPRoute/h#root", "a two-segment path is not gRPC");
    assert_eq!(pick_in(&routes, &grpc_view(&grpc_ct, "/api/Get", "svc")), "ns/GRPCRoute/g2#svc");
    assert_eq!(pick_in(&routes, &grpc_view(&grpc_ct, "/pkg.Svc/Get", "svc")), "ns/GRPCRoute/g#all");
    // gRPC is `application/grpc`, alone or with `+format` or parameters, in any case;
    // `application/grpc-web` (a protocol of its own, over HTTP/1.1 too) and the like are not.
    for (ct, want) in [
        ("application/grpc+proto", "ns/GRPCRoute/g#all"),
        ("Application/GRPC;charset=utf-8", "ns/GRPCRoute/g#all"),
        ("application/grpc-web", "ns/HTTPRoute/h#root"),
        ("application/grpc-web+proto", "ns/HTTPRoute/h#root"),
        ("application/grpcx", "ns/HTTPRoute/h#root"),
    ] {
        let mut h = HeaderMap::new();
        h.insert("content-type", ct.parse().unwrap());
        assert_eq!(pick_in(&routes, &grpc_view(&h, "/pkg.Svc/Get", "svc")), want, "{ct}");
    }
}

/// A rule named `name` with the one match `m`, to backend `b:80`.
fn rule(name: &str, m: pb::Match) -> pb::Rule {
    pb::Rule { name: name.into(), matches: vec![m], backends: vec![backend("b", 80, 1)], ..Default::default() }
}

/// HTTPRoute/GRPCRoute hostnames: across routes with intersecting hostnames, rules of the route
/// with the longest matching non-wildcard hostname, then the longest matching hostname, come
/// before any match precedence.
#[test]
fn the_most_specific_matching_hostname_wins_before_match_precedence() {
    use pb::MatchType::*;
    let routes = [
        one_rule_route("any", pb::route::Kind::Http, 1, &[], rule("exact", m_path(Exact, "/foo/bar"))),
        one_rule_route("wild", pb::route::Kind::Http, 2, &["*.example.com"], rule("long", m_path(PathPrefix, "/foo"))),
        one_rule_route(
            "deep-wild",
            pb::route::Kind::Http,
            3,
            &["*.api.example.com"],
            rule("root", m_path(PathPrefix, "/")),
        ),
        one_rule_route(
            "precise",
            pb::route::Kind::Http,
            4,
            &["api.example.com"],
            rule("root", m_path(PathPrefix, "/")),
        ),
    ];
    let none = HeaderMap::new();
    let at =
        |host: &'static str| RequestView { method: &Method::GET, path: "/foo/bar", query: None, headers: &none, host };
    assert_eq!(pick_in(&routes, &at("api.example.com")), "ns/HTTPRoute/precise#root");
    assert_eq!(pick_in(&routes, &at("v1.api.example.com")), "ns/HTTPRoute/deep-wild#root");
    assert_eq!(pick_in(&routes, &at("www.example.com")), "ns/HTTPRoute/wild#long");
    assert_eq!(pick_in(&routes, &at("other.test")), "ns/HTTPRoute/any#exact");
}

/// A request that no rule of the most specific matching route takes goes on to the rules of
/// the less specific ones (see [`find`] for why), down to a route without hostnames; one that no
/// rule of any route taking its host matches is not routed (404), and a route whose hostnames
/// do not take the host is never used, however well its rules match.
#[test]
fn a_request_no_rule_of_the_most_specific_hostname_takes_falls_through_to_less_specific() {
    use pb::MatchType::*;
    let routes = [
        one_rule_route("any", pb::route::Kind::Http, 1, &[], rule("docs", m_path(PathPrefix, "/docs"))),
        one_rule_route("wild", pb::route::Kind::Http, 2, &["*.example.com"], rule("v1", m_path(PathPrefix, "/v1"))),
        one_rule_route(
            "precise",
            pb::route::Kind::Http,
            3,
            &["api.example.com"],
            rule("v2", m_path(PathPrefix, "/v2")),
        ),
        one_rule_route("other", pb::route::Kind::Http, 4, &["other.test"], rule("all", m_path(PathPrefix, "/"))),
    ];
    let none = HeaderMap::new();
    let at = |host: &'static str, path: &'static str| RequestView {
        method: &Method::GET,
        path,
        query: None,
        headers: &none,
        host,
    };
    // The most specific route's own rule first...
    assert_eq!(pick_in(&routes, &at("api.example.com", "/v2/x")), "ns/HTTPRoute/precise#v2");
    // ...then, for what it does not take, the wildcard's, then the route without hostnames.
    assert_eq!(pick_in(&routes, &at("api.example.com", "/v1/x")), "ns/HTTPRoute/wild#v1");
    assert_eq!(pick_in(&routes, &at("api.example.com", "/docs")), "ns/HTTPRoute/any#docs");
    assert_eq!(pick_in(&routes, &at("www.example.com", "/docs")), "ns/HTTPRoute/any#docs");
    // Nothing taking the host matches: no route (404), even though `other` takes every path.
    assert_eq!(pick_in(&routes, &at("api.example.com", "/elsewhere")), "");
    // A route whose hostnames do not take the host is never used, however well it matches.
    assert_eq!(pick_in(&routes, &at("www.example.com", "/v2/x")), "");
    assert_eq!(pick_in(&routes, &at("other.test", "/v1/x")), "ns/HTTPRoute/other#all");
}

/// HTTPPathModifier: `replacePrefixMatch` may be the empty string ("/foo" prefix, "" →
/// "/foo/bar" becomes "/bar", "/foo" becomes "/").
#[test]
fn an_empty_prefix_replacement_is_accepted_and_drops_the_prefix() {
    let rewrite = pb::Filter {
        kind: Some(pb::filter::Kind::UrlRewrite(pb::UrlRewrite {
            hostname: String::new(),
            path: Some(pb::PathModifier { kind: Some(pb::path_modifier::Kind::ReplacePrefixMatch(String::new())) }),
        })),
    };
    let r = one_rule_route(
        "rw",
        pb::route::Kind::Http,
        0,
        &[],
        pb::Rule {
            matches: vec![m_path(pb::MatchType::PathPrefix, "/foo")],
            filters: vec![rewrite],
            backends: vec![backend("b", 80, 1)],
            ..Default::default()
        },
    );
    let Filter::Rewrite(Rewrite { path: Some(m), .. }) = &r.rules[0].0.filters[0] else { panic!("a rewrite") };
    assert_eq!(m.apply("/foo/bar", Some("/foo")), "/bar");
    assert_eq!(m.apply("/foo/", Some("/foo")), "/");
    assert_eq!(m.apply("/foo", Some("/foo")), "/");
}

fn filtered(filter: pb::filter::Kind) -> Result<CompiledRoute, String> {
    CompiledRoute::try_from(pb::Route {
        namespace: "ns".into(),
        name: "f".into(),
        parents: vec![pb::ParentService { hostname: "svc.ns.svc.cluster.local".into(), port: 0 }],
        rules: vec![pb::Rule {
            filters: vec![pb::Filter { kind: Some(filter) }],
            backends: vec![backend("b.ns.svc.cluster.local", 80, 1)],
            ..Default::default()
        }],
        ..Default::default()
    })
    .map_err(|e| e.to_string())
}

/// Gateway API HTTPRequestRedirectFilter.statusCode: `Enum=301;302;303;307;308`, 302 by
/// default; each is answered as configured (307 and 308 make the client repeat the method and
/// body, which only holds if the code is not turned into another).
#[test]
fn every_redirect_status_of_the_gateway_api_compiles_as_sent() {
    let redirect =
        |code: u32| pb::filter::Kind::RequestRedirect(pb::RequestRedirect { status_code: code, ..Default::default() });
    for (code, want) in [(0, 302), (301, 301), (302, 302), (303, 303), (307, 307), (308, 308)] {
        let r = filtered(redirect(code)).unwrap();
        let Filter::Redirect(rd) = &r.rules[0].0.filters[0] else { panic!("a redirect") };
        assert_eq!(rd.status.as_u16(), want, "{code}");
    }
    for code in [200, 300, 304, 305, 309] {
        let e = filtered(redirect(code)).unwrap_err();
        assert!(e.contains("ns/HTTPRoute/f") && e.contains("rules[0].filters[0].status_code"), "{code}: {e}");
    }
}

/// Gateway API HTTPHeaderFilter: one action per header name, names compared without case. A
/// route that modifies a header twice is refused naming the second occurrence.
#[test]
fn a_header_modified_twice_is_refused_whatever_its_case() {
    let h = |n: &str| pb::Header { name: n.into(), value: "v".into() };
    let cases = [
        (pb::HeaderModifier { set: vec![h("X-A"), h("x-a")], ..Default::default() }, "set[1].name"),
        (pb::HeaderModifier { add: vec![h("x-a"), h("X-A")], ..Default::default() }, "add[1].name"),
        (pb::HeaderModifier { remove: vec!["x-a".into(), "X-a".into()], ..Default::default() }, "remove[1]"),
        (pb::HeaderModifier { set: vec![h("x-a")], add: vec![h("X-A")], ..Default::default() }, "add[0].name"),
        (pb::HeaderModifier { add: vec![h("x-a")], remove: vec!["X-A".into()], ..Default::default() }, "remove[0]"),
    ];
    for (m, field) in cases {
        for kind in
            [pb::filter::Kind::RequestHeaderModifier(m.clone()), pb::filter::Kind::ResponseHeaderModifier(m.clone())]
        {
            let e = filtered(kind).unwrap_err();
            assert!(e.contains(&format!("rules[0].filters[0].{field}")), "{m:?}: {e}");
            assert!(e.contains("\"x-a\" is modified more than once"), "{e}");
        }
    }
    let distinct = pb::HeaderModifier { set: vec![h("x-a")], add: vec![h("x-b")], remove: vec!["x-c".into()] };
    filtered(pb::filter::Kind::RequestHeaderModifier(distinct)).unwrap();
}

/// A filter may not touch a header the proxy writes for each hop (framing, connection).
#[test]
fn a_framing_header_in_a_modifier_is_refused() {
    let h = |n: &str| pb::Header { name: n.into(), value: "1".into() };
    let cases = [
        (pb::HeaderModifier { set: vec![h("x-ok"), h("Content-Length")], ..Default::default() }, "set[1].name"),
        (pb::HeaderModifier { add: vec![h("transfer-encoding")], ..Default::default() }, "add[0].name"),
        (pb::HeaderModifier { remove: vec!["Connection".into()], ..Default::default() }, "remove[0]"),
    ];
    for (m, field) in cases {
        for kind in
            [pb::filter::Kind::RequestHeaderModifier(m.clone()), pb::filter::Kind::ResponseHeaderModifier(m.clone())]
        {
            let e = filtered(kind).unwrap_err();
            assert!(e.contains(&format!("rules[0].filters[0].{field}")) && e.contains("frames the message"), "{e}");
        }
    }
    let set =
        |n: &str| pb::filter::Kind::RequestHeaderModifier(pb::HeaderModifier { set: vec![h(n)], ..Default::default() });
    for n in [
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        let e = filtered(set(&n.to_ascii_uppercase())).unwrap_err();
        assert!(e.contains("frames the message"), "{n}: {e}");
    }
    // Names that only look like one of them are the filter's to set.
    for n in ["x-connection", "trailers", "content-type", "host"] {
        filtered(set(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    }
}

/// Backend and mirror hostnames are lower case once compiled, so the request path can look
/// their services up as they are (no conversion per request).
#[test]
fn backend_and_mirror_hostnames_are_lower_case_once_compiled() {
    let mirror = pb::filter::Kind::RequestMirror(pb::RequestMirror {
        backend: Some(backend("Shadow.NS.svc.cluster.local", 80, 1)),
        percent: 100,
    });
    let mut r = filtered(mirror).unwrap();
    let Filter::Mirror { backend: m, .. } = &r.rules[0].0.filters[0] else { panic!("a mirror") };
    assert_eq!(m.hostname, "shadow.ns.svc.cluster.local");
    r = CompiledRoute::try_from(pb::Route {
        namespace: "ns".into(),
        name: "b".into(),
        parents: vec![pb::ParentService { hostname: "svc.ns.svc.cluster.local".into(), port: 0 }],
        rules: vec![pb::Rule { backends: vec![backend("B.NS.svc.Cluster.Local", 80, 1)], ..Default::default() }],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.rules[0].0.backends[0].hostname, "b.ns.svc.cluster.local");
}

/// An unnamed rule is named by its place in spec.rules, which istiod-lite sends when it has
/// dropped an invalid rule before it; without it, the place in the list received.
#[test]
fn an_unnamed_rule_is_named_by_its_place_in_spec_rules() {
    let unnamed = |index: Option<u32>, prefix: &str| pb::Rule {
        matches: vec![m_path(pb::MatchType::PathPrefix, prefix)],
        backends: vec![backend("b.ns.svc.cluster.local", 80, 1)],
        index,
        ..Default::default()
    };
    let r = CompiledRoute::try_from(pb::Route {
        namespace: "ns".into(),
        name: "r".into(),
        parents: vec![pb::ParentService { hostname: "svc.ns.svc.cluster.local".into(), port: 0 }],
        rules: vec![unnamed(Some(1), "/a"), unnamed(Some(3), "/b"), unnamed(None, "/c")],
        ..Default::default()
    })
    .unwrap();
    let at = |path: &str| {
        let headers = HeaderMap::new();
        pick_in(
            std::slice::from_ref(&r),
            &RequestView { method: &Method::GET, path, query: None, headers: &headers, host: "svc" },
        )
    };
    assert_eq!(at("/a"), "ns/HTTPRoute/r#1");
    assert_eq!(at("/b"), "ns/HTTPRoute/r#3");
    assert_eq!(at("/c"), "ns/HTTPRoute/r#2", "no index: its place in the list");
}

/// Requests are matched by their normalized path (`crate::normalize`: unreserved characters
/// decoded, other escapes in upper-case hex, `%5C` a slash): a path value written with
/// escapes (the Gateway API allows them) is normalized alike when compiled, or it could
/// never match. The prefix's replacement then cuts what the normalized prefix covers.
#[test]
fn path_values_are_normalized_like_request_paths() {
    use pb::MatchType::*;
    let routes = vec![route(
        "r",
        0,
        vec![
            ("tilde", vec![m_path(Exact, "/%7Euser")]),
            ("cafe", vec![m_path(PathPrefix, "/caf%c3%a9/")]),
            ("back", vec![m_path(PathPrefix, "/a%5Cb")]),
        ],
    )];
    let none = HeaderMap::new();
    let get = |raw: &str| {
        let path = crate::normalize::normalize(raw).unwrap();
        pick(&routes, &Method::GET, &path, &none, None)
    };
    for raw in ["/~user", "/%7Euser", "/%7euser"] {
        assert_eq!(get(raw), "ns/HTTPRoute/r#tilde", "{raw}");
    }
    for raw in ["/caf%C3%A9", "/caf%c3%a9/menu", "/caf%C3%A9/menu"] {
        assert_eq!(get(raw), "ns/HTTPRoute/r#cafe", "{raw}");
    }
    assert_eq!(get("/caf%C3%A9x"), "", "still element-wise");
    assert_eq!(get("/a/b/c"), "ns/HTTPRoute/r#back");
    let entries: Vec<Entry> = routes.iter().flat_map(|r| r.entries()).collect();
    let cafe = entries.iter().find(|e| e.rule.id.ends_with("#cafe")).unwrap();
    let path = crate::normalize::normalize("/caf%c3%a9/menu").unwrap();
    assert_eq!(PathModifier::Prefix("/x".into()).apply(&path, cafe.matcher.prefix()), "/x/menu");
}
