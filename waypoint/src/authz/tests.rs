//! Tests of L7 authorization: Istio's semantics field by field.

use std::net::IpAddr;

use http::HeaderMap;
use proto::mesh::waypoint::v1 as pb;

use super::*;

fn pol(name: &str, action: pb::l7_policy::Action, rules: Vec<pb::PolicyRule>) -> Policy {
    Policy::try_from(pb::L7Policy {
        namespace: "ns".into(),
        name: name.into(),
        targets: vec![],
        action: action as i32,
        rules,
    })
    .unwrap()
}

fn op(f: impl FnOnce(&mut pb::Operation)) -> pb::PolicyRule {
    let mut o = pb::Operation::default();
    f(&mut o);
    pb::PolicyRule { to: vec![o], ..Default::default() }
}

fn src(f: impl FnOnce(&mut pb::Source)) -> pb::PolicyRule {
    let mut s = pb::Source::default();
    f(&mut s);
    pb::PolicyRule { from: vec![s], ..Default::default() }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> pb::PolicyRule {
    pb::PolicyRule {
        when: vec![pb::Condition {
            key: key.into(),
            values: values.iter().map(|s| (*s).into()).collect(),
            not_values: not_values.iter().map(|s| (*s).into()).collect(),
        }],
        ..Default::default()
    }
}

struct Req {
    principal: &'static str,
    ip: &'static str,
    dest_ip: &'static str,
    port: u16,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    http: bool,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            principal: "cluster.local/ns/frontend/sa/web",
            ip: "10.0.0.7",
            dest_ip: "10.96.0.10",
            port: 80,
            host: "reviews.shop.svc.cluster.local",
            method: "GET",
            path: "/",
            headers: HeaderMap::new(),
            http: true,
        }
    }
}

fn decide(policies: &[Policy], r: &Req) -> Decision {
    let ns = r.principal.split("/ns/").nth(1).and_then(|x| x.split('/').next());
    let f = Facts {
        principal: Some(r.principal),
        namespace: ns,
        source_ip: Some(r.ip.parse::<IpAddr>().unwrap()),
        destination_ip: Some(r.dest_ip.parse::<IpAddr>().unwrap()),
        port: r.port,
        http: r.http.then_some(HttpFacts { host: r.host, method: r.method, path: r.path, headers: &r.headers }),
    };
    evaluate(policies.iter(), &f)
}

fn allowed(policies: &[Policy], r: &Req) -> bool {
    decide(policies, r).allowed
}

use pb::l7_policy::Action::{Allow as A, Audit as U, Deny as D};

#[test]
fn no_policies_allow_and_empty_allow_denies() {
    assert_eq!(decide(&[], &Req::default()).reason, Reason::NoAllowPolicy);
    // An ALLOW policy without rules matches nothing: everything is denied.
    let p = pol("a", A, vec![]);
    assert_eq!(decide(&[p], &Req::default()).reason, Reason::NoAllowMatched);
    // One empty rule matches everything.
    assert!(allowed(&[pol("a", A, vec![pb::PolicyRule::default()])], &Req::default()));
    // A DENY without rules denies nothing.
    assert!(allowed(&[pol("d", D, vec![])], &Req::default()));
}

#[test]
fn deny_before_allow_and_audit_only_reports() {
    let all = pb::PolicyRule::default();
    let ps = [pol("allow", A, vec![all.clone()]), pol("deny", D, vec![all.clone()]), pol("audit", U, vec![all])];
    let d = decide(&ps, &Req::default());
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::DeniedBy("ns/deny".into()));
    assert_eq!(d.audited, vec![Arc::<str>::from("ns/audit")]);
    let d = decide(&ps[2..], &Req::default());
    assert!(d.allowed, "AUDIT never denies");
    assert_eq!(d.audited.len(), 1);
}

#[test]
fn principals_namespaces_ip_blocks() {
    let p = pol("a", A, vec![src(|s| s.principals = vec!["cluster.local/ns/frontend/sa/*".into()])]);
    assert!(allowed(std::slice::from_ref(&p), &Req::default()));
    assert!(!allowed(&[p], &Req { principal: "cluster.local/ns/other/sa/web", ..Req::default() }));
    let p = pol("a", A, vec![src(|s| s.not_principals = vec!["*/sa/web".into()])]);
    assert!(!allowed(&[p], &Req::default()));
    let p = pol("a", A, vec![src(|s| s.namespaces = vec!["front*".into()])]);
    assert!(allowed(&[p], &Req::default()));
    let p = pol("a", A, vec![src(|s| s.not_namespaces = vec!["frontend".into()])]);
    assert!(!allowed(&[p], &Req::default()));
    let p = pol("a", A, vec![src(|s| s.ip_blocks = vec!["10.0.0.0/24".into()])]);
    assert!(allowed(std::slice::from_ref(&p), &Req::default()));
    assert!(!allowed(&[p], &Req { ip: "10.0.1.7", ..Req::default() }));
    let p = pol("a", A, vec![src(|s| s.not_ip_blocks = vec!["10.0.0.7".into()])]);
    assert!(!allowed(&[p], &Req::default()));
    // Fields of one source are ANDed; sources are ORed.
    let both = pol(
        "a",
        A,
        vec![pb::PolicyRule {
            from: vec![
                pb::Source { namespaces: vec!["x".into()], ..Default::default() },
                pb::Source {
                    namespaces: vec!["frontend".into()],
                    ip_blocks: vec!["10.0.0.0/8".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
    );
    assert!(allowed(std::slice::from_ref(&both), &Req::default()));
    assert!(!allowed(&[both], &Req { ip: "192.168.0.1", ..Req::default() }));
}

#[test]
fn hosts_ports_methods_paths() {
    let p = pol("a", A, vec![op(|o| o.hosts = vec!["*.shop.svc.cluster.local".into()])]);
    assert!(allowed(std::slice::from_ref(&p), &Req { host: "Reviews.Shop.svc.cluster.local:80", ..Req::default() }));
    assert!(!allowed(&[p], &Req { host: "reviews.other", ..Req::default() }));
    let p = pol("a", A, vec![op(|o| o.ports = vec![8080])]);
    assert!(!allowed(std::slice::from_ref(&p), &Req::default()));
    assert!(allowed(&[p], &Req { port: 8080, ..Req::default() }));
    let p = pol("a", A, vec![op(|o| o.not_methods = vec!["DELETE".into()])]);
    assert!(allowed(std::slice::from_ref(&p), &Req::default()));
    assert!(!allowed(&[p], &Req { method: "DELETE", ..Req::default() }));
    let p = pol("d", D, vec![op(|o| o.paths = vec!["/admin/*".into(), "*.php".into(), "/exact".into()])]);
    for (path, ok) in [("/admin/x", false), ("/x.php", false), ("/exact", false), ("/exact/", true), ("/adminx", true)]
    {
        assert_eq!(allowed(std::slice::from_ref(&p), &Req { path, ..Req::default() }), ok, "{path}");
    }
    let p = pol("a", A, vec![op(|o| o.not_paths = vec!["/private*".into()])]);
    assert!(!allowed(&[p], &Req { path: "/private/x", ..Req::default() }));
}

#[test]
fn path_templates() {
    let p = pol("d", D, vec![op(|o| o.paths = vec!["/api/{*}/secret".into(), "/files/{**}".into()])]);
    for (path, denied) in [
        ("/api/v1/secret", true),
        ("/api/v1/v2/secret", false),
        ("/api//secret", false),
        ("/files/a", true),
        ("/files/a/b/c", true),
        ("/files", false),
        // `{**}` is Envoy's `**`: zero or more segments.
        ("/files/", true),
        ("/files/a/", true),
    ] {
        assert_eq!(!allowed(std::slice::from_ref(&p), &Req { path, ..Req::default() }), denied, "{path}");
    }
    // Literal segments may follow `{**}` (Istio's CheckValidPathTemplate allows them).
    let p = pol("d", D, vec![op(|o| o.paths = vec!["/{*}/media/{**}/index.m3u8".into()])]);
    for (path, denied) in [
        ("/v/media/index.m3u8", false),
        ("/v/media//index.m3u8", true),
        ("/v/media/a/b/index.m3u8", true),
        ("/v/media/a/b/index.m3u8x", false),
        ("//media/a/index.m3u8", false),
    ] {
        assert_eq!(!allowed(std::slice::from_ref(&p), &Req { path, ..Req::default() }), denied, "{path}");
    }
}

/// Requests are matched by their normalized path, so a policy's paths are normalized too: a
/// DENY written with escapes, doubled slashes or dot segments still denies what it names.
#[test]
fn policy_paths_are_normalized_as_request_paths_are() {
    let p = pol(
        "d",
        D,
        vec![op(|o| {
            o.paths = vec![
                "/%7Eadmin/*".into(),
                "/a//b".into(),
                "/x/./y/../z".into(),
                "/t/%7e/{*}".into(),
                "/caf%c3%a9".into(),
            ]
        })],
    );
    for (path, denied) in [
        ("/~admin/x", true),
        ("/a/b", true),
        ("/x/z", true),
        ("/t/~/q", true),
        ("/caf%C3%A9", true),
        ("/~adminx", false),
        ("/a//b", false),
    ] {
        assert_eq!(!allowed(std::slice::from_ref(&p), &Req { path, ..Req::default() }), denied, "{path}");
    }
    // A malformed escape cannot be normalized: the field is named and the policy fails closed.
    let l7 = pb::L7Policy {
        namespace: "ns".into(),
        name: "d".into(),
        targets: vec![],
        action: D as i32,
        rules: vec![op(|o| o.paths = vec!["/ok".into(), "/bad%zz*".into()])],
    };
    let e = Policy::compile(&l7).unwrap_err();
    assert_eq!(e.field, "rules[0].to[0].paths[1]", "{e}");
    assert!(!allowed(&[Policy::try_from(l7).unwrap()], &Req { path: "/elsewhere", ..Req::default() }));
}

/// One pass over the path: a 64 KB path against `{**}` costs microseconds, not a second.
#[test]
fn path_templates_match_in_linear_time() {
    let p = pol("d", D, vec![op(|o| o.paths = vec!["/admin/{**}/x".into(), "/{*}/{*}/{*}".into()])]);
    let long: &'static str = format!("/admin/{}", "a/".repeat(32 * 1024)).leak();
    let start = std::time::Instant::now();
    for _ in 0..10 {
        assert!(allowed(std::slice::from_ref(&p), &Req { path: long, ..Req::default() }));
    }
    assert!(start.elapsed() < std::time::Duration::from_millis(200), "took {:?}", start.elapsed());
}

/// Istio's CheckValidPathTemplate: at most one `{**}`, nothing but literals after it, `{*}`
/// and `{**}` only as whole segments, no other braces. A waypoint sent one anyway does not
/// compile it as a literal that never matches: it names the field, and the policy fails closed.
#[test]
fn invalid_path_templates_are_compile_errors_and_fail_closed() {
    for bad in ["/a/{**}/{*}", "/a/{**}/b/{**}", "/files/{*}.txt", "/a/{x}/{*}", "/a*/{*}"] {
        let l7 = pb::L7Policy {
            namespace: "ns".into(),
            name: "d".into(),
            targets: vec![],
            action: D as i32,
            rules: vec![op(|o| o.paths = vec!["/ok".into(), bad.into()])],
        };
        let e = Policy::compile(&l7).unwrap_err();
        assert_eq!(e.field, "rules[0].to[0].paths[1]", "{bad}: {e}");
        let stand_in = Policy::try_from(l7).unwrap();
        assert!(stand_in.invalid.is_some());
        assert!(!allowed(&[stand_in], &Req { path: "/anything", ..Req::default() }), "{bad}");
    }
    // Braces without a template are a literal, as in Istio.
    assert!(!allowed(
        &[pol("d", D, vec![op(|o| o.paths = vec!["/a{b}".into()])])],
        &Req { path: "/a{b}", ..Req::default() }
    ));
}

/// A policy that cannot be compiled is enforced as its stand-in: a DENY (or an unknown
/// action) denies every request, an ALLOW matches nothing, and the reason is kept.
#[test]
fn a_policy_that_cannot_be_compiled_becomes_a_fail_closed_stand_in() {
    let bad_key = || vec![when("request.auth.claims[iss]", &["x"], &[])];
    let stand_in = |action: i32| {
        Policy::try_from(pb::L7Policy {
            namespace: "ns".into(),
            name: "p".into(),
            targets: vec![],
            action,
            rules: bad_key(),
        })
        .unwrap()
    };
    let deny = stand_in(D as i32);
    assert!(deny.invalid.as_deref().unwrap().contains("rules[0].when[0].key"), "{deny:?}");
    assert_eq!(decide(std::slice::from_ref(&deny), &Req::default()).reason, Reason::DeniedBy("ns/p".into()));
    assert!(!allowed(&[deny], &Req { http: false, ..Req::default() }));
    assert!(!allowed(&[stand_in(7)], &Req::default()), "an unknown action fails closed");
    let allow = stand_in(A as i32);
    assert_eq!(decide(&[allow], &Req::default()).reason, Reason::NoAllowMatched);
    let audit = stand_in(U as i32);
    assert!(allowed(&[audit], &Req::default()), "AUDIT never changes the decision");
}

/// A policy with a target the waypoint cannot resolve is enforced on every request failing
/// closed: a DENY denies what its rules name (and nothing else), an ALLOW matches nothing;
/// the reason is kept, after the compile error of a stand-in.
#[test]
fn a_policy_with_an_unresolved_target_fails_closed_everywhere() {
    let why =
        PolicyError { policy: "ns/p".into(), field: "targets[1]".into(), problem: "target without a kind".into() };
    let deny = pol("p", D, vec![op(|o| o.paths = vec!["/admin".into()])]).unresolved_target(&why);
    assert!(!allowed(std::slice::from_ref(&deny), &Req { path: "/admin", ..Req::default() }));
    assert!(allowed(std::slice::from_ref(&deny), &Req { path: "/public", ..Req::default() }));
    assert_eq!(deny.invalid.as_deref(), Some("targets[1]: target without a kind"));
    let allow = pol("p", A, vec![pb::PolicyRule::default()]).unresolved_target(&why);
    assert_eq!(decide(&[allow], &Req::default()).reason, Reason::NoAllowMatched);
    let bad_key = pol("p", D, vec![when("request.auth.claims[iss]", &["x"], &[])]).unresolved_target(&why);
    assert!(!allowed(std::slice::from_ref(&bad_key), &Req::default()), "a stand-in stays one");
    assert!(bad_key.invalid.as_deref().unwrap().ends_with("; targets[1]: target without a kind"), "{bad_key:?}");
}

#[test]
fn methods_and_header_values_take_wildcards_and_bytes() {
    let p = pol("d", D, vec![op(|o| o.methods = vec!["P*".into(), "*ETE".into()])]);
    for (method, denied) in [("POST", true), ("PUT", true), ("DELETE", true), ("GET", false)] {
        assert_eq!(!allowed(std::slice::from_ref(&p), &Req { method, ..Req::default() }), denied, "{method}");
    }
    let p = pol("a", A, vec![op(|o| o.not_methods = vec!["*".into()])]);
    assert!(!allowed(&[p], &Req::default()), "notMethods [*] excludes every method");
    let p = pol("d", D, vec![when("request.headers[x-user]", &["*min"], &[])]);
    let mut h = HeaderMap::new();
    h.append("x-user", http::HeaderValue::from_bytes(b"\xff").unwrap());
    h.append("x-user", "admin".parse().unwrap());
    assert!(!allowed(&[p], &Req { headers: h, ..Req::default() }), "`\\xff,admin` ends with min");
}

#[test]
fn destination_ip() {
    let p = pol("a", A, vec![when("destination.ip", &["10.96.0.0/16"], &[])]);
    assert!(allowed(&[p], &Req::default()));
    let p = pol("a", A, vec![when("destination.ip", &[], &["10.96.0.10"])]);
    assert!(!allowed(std::slice::from_ref(&p), &Req::default()));
    assert!(allowed(&[p], &Req { dest_ip: "10.96.0.11", ..Req::default() }));
    let p = pol("d", D, vec![when("destination.ip", &["10.96.0.10/33"], &[])]);
    assert!(!allowed(&[p], &Req::default()), "a bad CIDR fails closed");
}

#[test]
fn conditions() {
    let mut h = HeaderMap::new();
    h.insert("x-token", "secret".parse().unwrap());
    let p = pol("a", A, vec![when("request.headers[x-token]", &["sec*"], &[])]);
    assert!(allowed(std::slice::from_ref(&p), &Req { headers: h.clone(), ..Req::default() }));
    assert!(!allowed(&[p], &Req::default()), "absent header does not match values");
    let p = pol("a", A, vec![when("request.headers[X-Token]", &[], &["secret"])]);
    assert!(!allowed(std::slice::from_ref(&p), &Req { headers: h, ..Req::default() }));
    assert!(allowed(&[p], &Req::default()), "absent header matches a not_values-only condition");
    let p = pol("a", A, vec![when("source.ip", &["10.0.0.0/16"], &[])]);
    assert!(allowed(&[p], &Req::default()));
    let p = pol("a", A, vec![when("source.namespace", &["frontend"], &[])]);
    assert!(allowed(&[p], &Req::default()));
    let p = pol("a", A, vec![when("source.principal", &["cluster.local/ns/frontend/sa/web"], &[])]);
    assert!(allowed(&[p], &Req::default()));
    let p = pol("a", A, vec![when("destination.port", &["81"], &[])]);
    assert!(!allowed(&[p], &Req::default()));
}

#[test]
fn plain_tcp_fails_closed() {
    let tcp = Req { http: false, ..Req::default() };
    // L7 fields: never match for ALLOW...
    let p = pol("a", A, vec![op(|o| o.methods = vec!["GET".into()])]);
    assert!(!allowed(&[p], &tcp));
    // ...always match for DENY.
    let p = pol("d", D, vec![op(|o| o.paths = vec!["/admin".into()])]);
    assert!(!allowed(&[p], &tcp));
    let p = pol("d", D, vec![when("request.headers[x]", &["y"], &[])]);
    assert!(!allowed(&[p], &tcp));
    // L4 fields still work.
    let p = pol("a", A, vec![op(|o| o.ports = vec![80])]);
    assert!(allowed(&[p], &tcp));
    let p = pol("d", D, vec![src(|s| s.namespaces = vec!["other".into()])]);
    assert!(allowed(&[p], &tcp));
}

#[test]
fn compile_errors_name_the_field() {
    let bad = |rule: pb::PolicyRule| {
        Policy::compile(&pb::L7Policy {
            namespace: "ns".into(),
            name: "p".into(),
            targets: vec![],
            action: 0,
            rules: vec![rule],
        })
        .unwrap_err()
        .to_string()
    };
    assert!(bad(when("request.auth.claims[iss]", &["x"], &[])).contains("rules[0].when[0].key"));
    assert!(bad(src(|s| s.ip_blocks = vec!["10.0.0.0/33".into()])).contains("rules[0].from[0].ip_blocks[0]"));
    assert!(bad(op(|o| o.ports = vec![70000])).contains("rules[0].to[0].ports[0]"));
    assert!(bad(when("destination.port", &["http"], &[])).contains("rules[0].when[0].values[0]"));
    let e = Policy::compile(&pb::L7Policy { action: 7, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("action"), "{e}");
}
