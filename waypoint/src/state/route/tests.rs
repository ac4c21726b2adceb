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
