//! The per-request decisions on the waypoint's hot path:
//!
//! - `normalize/*`: path normalization of a plain path (the common case, no copy) and of one
//!   carrying encodings and dot segments;
//! - `route/*`: route lookup in a table of 40 entries (20 rules: a path prefix each, every
//!   other one with a method and a header too), for a request a prefix rule takes (after the
//!   ten longer prefixes precedence puts first) and one only the catch-all takes;
//! - `authorize/*`: L7 policy evaluation against four policies (DENY by path with wildcards and
//!   by header, ALLOW by principal and method, AUDIT), for a request that is allowed and one a
//!   DENY stops.
//!
//! Absolute times depend on the machine; compare runs on the same one.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

// The route and policy builders the integration tests use.
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use proto::mesh::waypoint::v1 as pb;
use waypoint::authz::{self, Facts, HttpFacts, Policy};
use waypoint::normalize::normalize;
use waypoint::state::route::{self, CompiledRoute, Entry, RequestView};

use support::{backend_ref, host, prefix, route as http_route, rule};

fn normalization(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    g.bench_function("plain path", |b| b.iter(|| normalize(black_box("/api/v1/reviews/1234"))));
    g.bench_function("encoded with dot segments", |b| {
        b.iter(|| normalize(black_box("/api/v1/%2E%2e/admin//Reviews/%7Euser/./1234")))
    });
    g.finish();
}

fn table() -> Vec<Entry> {
    let mut rules: Vec<pb::Rule> = (0..20)
        .map(|i| {
            let mut matches = vec![prefix(&format!("/api/v{i}/"))];
            if i % 2 == 0 {
                matches.push(pb::Match {
                    method: "POST".into(),
                    headers: vec![pb::HeaderMatch {
                        name: "x-canary".into(),
                        r#type: pb::MatchType::Exact as i32,
                        value: "yes".into(),
                    }],
                    ..prefix(&format!("/api/v{i}/"))
                });
            }
            rule(matches, vec![backend_ref("reviews", 1)])
        })
        .collect();
    rules.push(rule(vec![prefix("/")], vec![backend_ref("reviews", 1)]));
    let compiled = CompiledRoute::try_from(http_route("reviews", "reviews", rules)).unwrap();
    let mut entries: Vec<Entry> = compiled.entries().collect();
    route::sort(&mut entries);
    entries
}

fn routing(c: &mut Criterion) {
    let table = table();
    let headers = HeaderMap::new();
    let reviews = host("reviews");
    let view = |path| RequestView { method: &Method::GET, path, query: None, headers: &headers, host: &reviews };
    let (early, late) = (view("/api/v0/reviews/1"), view("/static/app.js"));
    let last = table.len() - 1;
    assert!(std::ptr::eq(route::find(&table, &late).unwrap(), &table[last]), "only the catch-all takes it");
    assert!(!std::ptr::eq(route::find(&table, &early).unwrap(), &table[last]), "a prefix rule takes it");
    let mut g = c.benchmark_group("route");
    g.bench_function("a prefix rule matches", |b| b.iter(|| route::find(&table, black_box(&early))));
    g.bench_function("only the catch-all matches", |b| b.iter(|| route::find(&table, black_box(&late))));
    g.finish();
}

fn policy(name: &str, action: pb::l7_policy::Action, rule: pb::PolicyRule) -> Policy {
    Policy::try_from(support::policy(name, action, vec![rule])).unwrap()
}

fn policies() -> Vec<Policy> {
    use pb::l7_policy::Action;
    let to = |o: pb::Operation| pb::PolicyRule { to: vec![o], ..Default::default() };
    vec![
        policy(
            "deny-admin",
            Action::Deny,
            to(pb::Operation { paths: vec!["/admin*".into(), "*/internal".into()], ..Default::default() }),
        ),
        policy(
            "deny-debug-header",
            Action::Deny,
            pb::PolicyRule {
                when: vec![pb::Condition {
                    key: "request.headers[x-debug]".into(),
                    values: vec!["*".into()],
                    not_values: vec![],
                }],
                ..Default::default()
            },
        ),
        policy(
            "allow-frontend-reads",
            Action::Allow,
            pb::PolicyRule {
                from: vec![pb::Source {
                    principals: vec!["cluster.local/ns/frontend/sa/*".into()],
                    ..Default::default()
                }],
                to: vec![pb::Operation { methods: vec!["GET".into(), "HEAD".into()], ..Default::default() }],
                ..Default::default()
            },
        ),
        policy("audit-writes", Action::Audit, to(pb::Operation { methods: vec!["POST".into()], ..Default::default() })),
    ]
}

fn authorization(c: &mut Criterion) {
    let policies = policies();
    let plain = HeaderMap::new();
    let mut debug = HeaderMap::new();
    debug.insert("x-debug", HeaderValue::from_static("1"));
    let facts = |path, headers| Facts {
        principal: Some("cluster.local/ns/frontend/sa/web"),
        namespace: Some("frontend"),
        source_ip: Some("10.0.0.7".parse().unwrap()),
        destination_ip: Some("10.96.0.10".parse().unwrap()),
        port: 80,
        http: Some(HttpFacts { host: "reviews.shop.svc.cluster.local", method: "GET", path, headers }),
    };
    let (allowed, denied) = (facts("/api/v1/reviews/1", &plain), facts("/api/v1/reviews/1", &debug));
    assert!(authz::evaluate(policies.iter(), &allowed).allowed);
    assert!(!authz::evaluate(policies.iter(), &denied).allowed);
    let mut g = c.benchmark_group("authorize");
    g.bench_function("allowed by principal and method", |b| {
        b.iter(|| authz::evaluate(policies.iter(), black_box(&allowed)))
    });
    g.bench_function("denied by header", |b| b.iter(|| authz::evaluate(policies.iter(), black_box(&denied))));
    g.finish();
}

criterion_group!(benches, normalization, routing, authorization);
criterion_main!(benches);
