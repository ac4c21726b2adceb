//! HTTP routing through the waypoint over real HBONE, with routes from a real xDS server:
//! default routing to the service, matches on path/header/method/query, weighted splits,
//! filters, HTTP/1.1 and HTTP/2.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use proto::mesh::waypoint::v1 as pb;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route_and_matches_over_h1_and_h2() {
    let w = World::new([1, 1]).await;
    let v1 = w.backend("v1").await;
    let v2 = w.backend("v2").await;
    let v3 = w.backend("v3").await;
    w.service("reviews", 1, &[&v1]);
    w.service("reviews-v2", 2, &[&v2]);
    w.service("reviews-v3", 3, &[&v3]);
    w.until_endpoints("reviews", 1).await;
    w.until_endpoints("reviews-v3", 1).await;

    // No route: the service itself.
    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        let a = c.get("/hello?x=1").await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.backend(), "v1");
        assert_eq!(a.seen_path(), "/hello?x=1");
        assert!(a.seen_header("traceparent").is_some(), "a trace is started: {}", a.body);
    }

    let mut exact = pb::Match { path: path(pb::MatchType::Exact, "/exact"), ..Default::default() };
    exact.method = String::new();
    let header = pb::Match {
        headers: vec![pb::HeaderMatch {
            name: "x-version".into(),
            r#type: pb::MatchType::Exact as i32,
            value: "v3".into(),
        }],
        ..Default::default()
    };
    let method =
        pb::Match { method: "POST".into(), path: path(pb::MatchType::PathPrefix, "/api"), ..Default::default() };
    let query = pb::Match {
        query_params: vec![pb::HeaderMatch {
            name: "canary".into(),
            r#type: pb::MatchType::RegularExpression as i32,
            value: "yes|true".into(),
        }],
        ..Default::default()
    };
    w.route(&route(
        "reviews",
        "reviews",
        vec![
            rule(vec![exact], vec![backend_ref("reviews-v2", 1)]),
            rule(vec![header, query], vec![backend_ref("reviews-v3", 1)]),
            rule(vec![method], vec![backend_ref("reviews-v2", 1)]),
            rule(
                vec![pb::Match { path: path(pb::MatchType::PathPrefix, "/"), ..Default::default() }],
                vec![backend_ref("reviews", 1)],
            ),
        ],
    ));
    w.settle().await;
    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        assert_eq!(c.get("/exact").await.backend(), "v2");
        assert_eq!(c.get("/exact/more").await.backend(), "v1", "exact is exact");
        assert_eq!(c.send(get("/any").header("x-version", "v3").body(empty()).unwrap()).await.unwrap().backend(), "v3");
        assert_eq!(c.get("/any?canary=true").await.backend(), "v3");
        assert_eq!(c.get("/any?canary=maybe").await.backend(), "v1");
        assert_eq!(c.send(get("/api/x").method("POST").body(empty()).unwrap()).await.unwrap().backend(), "v2");
        assert_eq!(c.get("/api/x").await.backend(), "v1", "GET does not match the POST rule");
        assert_eq!(c.get("/apix").await.backend(), "v1", "prefixes are element-wise");
    }

    // Upstream connections are reused: sequential requests over one downstream connection
    // of each version need one application connection per version.
    let c2 = w.h2(w.vip(2)).await;
    let c1 = w.h1(w.vip(2)).await;
    let before = v2.behaviour.connections.load(Ordering::Relaxed);
    for mut c in [c1, c2] {
        for _ in 0..20 {
            assert_eq!(c.get("/").await.backend(), "v2");
        }
    }
    let opened = v2.behaviour.connections.load(Ordering::Relaxed) - before;
    assert!(opened <= 2, "{opened} connections for 40 requests");

    // Every request was accounted with Istio's labels.
    let want = [
        "istio_requests_total{reporter=\"waypoint\"",
        "destination_service=\"reviews-v3.shop.svc.cluster.local\"",
        "source_principal=\"spiffe://cluster.local/ns/frontend/sa/web\"",
        "destination_workload=\"v2\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let m = w.metrics_once(|m| want.iter().all(|s| m.contains(s))).await;
    for s in want {
        assert!(m.contains(s), "{s}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_to_buffer_is_mirrored_as_it_streams() {
    let w = World::new([1, 4]).await;
    let a = w.backend("a").await;
    let m = w.backend("mirror").await;
    w.service("svc", 1, &[&a]);
    w.service("shadow", 2, &[&m]);
    let mut mirror_rule = rule(vec![], vec![backend_ref("svc", 1)]);
    mirror_rule.filters = vec![mirror_filter("shadow", 100)];
    w.route(&route("mirrored", "svc", vec![mirror_rule]));
    w.until_endpoints("shadow", 1).await;
    w.settle().await;

    // Four times the replay buffer, in 16 KiB pieces, over both HTTP versions.
    let size = 4 * waypoint::proxy::http::MAX_REPLAY_BODY;
    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        let before = m.behaviour.uploaded.load(Ordering::Relaxed);
        let (tx, body) = channel_body();
        let send = tokio::spawn(async move {
            for _ in 0..size / (16 * 1024) {
                tx.send(Bytes::from(vec![b'u'; 16 * 1024])).await.unwrap();
            }
        });
        let r = c.send(get("/upload").method("POST").body(body).unwrap()).await.unwrap();
        send.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "a");
        assert_eq!(r.body.trim(), size.to_string(), "the backend got the whole body");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while m.behaviour.uploaded.load(Ordering::Relaxed) - before < size as u64 {
            assert!(tokio::time::Instant::now() < deadline, "the mirror got the whole body too");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(m.behaviour.uploaded.load(Ordering::Relaxed) - before, size as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10() {
    let w = World::new([1, 2]).await;
    let a = w.backend("a").await;
    let b = w.backend("b").await;
    w.service("front", 1, &[&a]);
    w.service("a", 2, &[&a]);
    w.service("b", 3, &[&b]);
    w.route(&route("split", "front", vec![rule(vec![], vec![backend_ref("a", 90), backend_ref("b", 10)])]));
    w.until_endpoints("b", 1).await;
    w.settle().await;
    let mut c = w.h2(w.vip(1)).await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        *counts.entry(c.get("/").await.backend().to_owned()).or_default() += 1;
    }
    let share_b = f64::from(counts.get("b").copied().unwrap_or(0)) / 10.0;
    assert!((6.0..=14.0).contains(&share_b), "b got {share_b}% (want 10 ± 4): {counts:?}");
    assert_eq!(counts.values().sum::<u32>(), 1000);
}

/// Gateway API: a backendRef that does not resolve (istiod-lite sends it with an empty
/// hostname) answers 500 for the share of requests its weight gives it; the other backends of
/// the rule keep serving theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_backend_answers_500_for_its_share() {
    let w = World::new([1, 4]).await;
    let a = w.backend("a").await;
    let other = w.backend("other").await;
    w.service("front", 1, &[&other]);
    w.service("a", 2, &[&a]);
    let unresolved = pb::Backend { hostname: String::new(), port: 0, weight: 1, filters: vec![] };
    w.route(&route("split", "front", vec![rule(vec![], vec![unresolved, backend_ref("a", 1)])]));
    w.until_endpoints("a", 1).await;
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        let r = c.get("/").await;
        let key = if r.status == 200 { r.backend().to_owned() } else { r.status.as_str().to_owned() };
        *counts.entry(key).or_default() += 1;
    }
    let errors = counts.get("500").copied().unwrap_or(0);
    assert!((60..=140).contains(&errors), "about half answered 500: {counts:?}");
    assert_eq!(counts.get("a").copied().unwrap_or(0) + errors, 200, "the rest went to a: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_headers_rewrite_redirect_mirror() {
    let w = World::new([1, 3]).await;
    let a = w.backend("a").await;
    let m = w.backend("mirror").await;
    w.service("svc", 1, &[&a]);
    w.service("shadow", 2, &[&m]);
    use pb::filter::Kind;
    let hm = |set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]| pb::HeaderModifier {
        set: set.iter().map(|(n, v)| pb::Header { name: (*n).into(), value: (*v).into() }).collect(),
        add: add.iter().map(|(n, v)| pb::Header { name: (*n).into(), value: (*v).into() }).collect(),
        remove: remove.iter().map(|s| (*s).into()).collect(),
    };
    let filter = |k: Kind| pb::Filter { kind: Some(k) };
    let mut headers_rule = rule(vec![prefix("/headers")], vec![backend_ref("svc", 1)]);
    headers_rule.filters = vec![
        filter(Kind::RequestHeaderModifier(hm(&[("x-set", "s")], &[("x-add", "a2")], &["x-remove"]))),
        filter(Kind::ResponseHeaderModifier(hm(&[("x-resp", "r")], &[], &["x-path"]))),
    ];
    let mut rewrite_rule = rule(vec![prefix("/old")], vec![backend_ref("svc", 1)]);
    rewrite_rule.filters = vec![filter(Kind::UrlRewrite(pb::UrlRewrite {
        hostname: "rewritten.example".into(),
        path: Some(pb::PathModifier { kind: Some(pb::path_modifier::Kind::ReplacePrefixMatch("/new".into())) }),
    }))];
    let mut redirect_rule = rule(vec![prefix("/moved")], vec![]);
    redirect_rule.filters = vec![filter(Kind::RequestRedirect(pb::RequestRedirect {
        scheme: "https".into(),
        hostname: "elsewhere.example".into(),
        path: Some(pb::PathModifier { kind: Some(pb::path_modifier::Kind::ReplaceFullPath("/landing".into())) }),
        port: 0,
        status_code: 301,
    }))];
    let mut mirror_rule = rule(vec![prefix("/mirror")], vec![backend_ref("svc", 1)]);
    mirror_rule.filters =
        vec![filter(Kind::RequestMirror(pb::RequestMirror { backend: Some(backend_ref("shadow", 1)), percent: 100 }))];
    let no_backend = rule(vec![prefix("/nobackend")], vec![]);
    w.route(&route("filters", "svc", vec![headers_rule, rewrite_rule, redirect_rule, mirror_rule, no_backend]));
    w.until_endpoints("shadow", 1).await;
    w.settle().await;

    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        let r = c
            .send(
                get("/headers")
                    .header("x-add", "a1")
                    .header("x-remove", "gone")
                    .header("x-set", "old")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.seen_header("x-set"), Some("s"), "{}", r.body);
        assert_eq!(r.body.matches("x-add: ").count(), 2, "{}", r.body);
        assert!(r.seen_header("x-remove").is_none(), "{}", r.body);
        assert_eq!(r.headers.get("x-resp").unwrap(), "r");
        assert!(r.headers.get("x-path").is_none(), "response header removed");

        let r = c.get("/old/page?q=1").await;
        assert_eq!(r.seen_path(), "/new/page?q=1");
        let host = r.seen_header("host").or(r.body.lines().find(|l| l.starts_with("host")).map(|_| "?"));
        // HTTP/2 carries the authority as :authority; the backend's hyper shows it in the URI.
        if matches!(c, Client::H1(..)) {
            assert_eq!(host, Some("rewritten.example"), "{}", r.body);
        }
        let r = c.get("/old").await;
        assert_eq!(r.seen_path(), "/new");

        let r = c.get("/moved/x?y=2").await;
        assert_eq!(r.status, 301);
        assert_eq!(r.headers.get("location").unwrap(), "https://elsewhere.example/landing?y=2");

        assert_eq!(c.get("/nobackend").await.status, 500);
    }

    assert_mirrored(&w, &m).await;
}

/// A POST to `/mirror` of service 1 is answered by backend `a`, and `mirror` gets a copy within 5 s.
async fn assert_mirrored(w: &World, mirror: &Backend) {
    let before = mirror.behaviour.seen.load(Ordering::Relaxed);
    let mut c = w.h1(w.vip(1)).await;
    let r = c.send(get("/mirror").method("POST").body(full("payload")).unwrap()).await.unwrap();
    assert_eq!(r.backend(), "a");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mirror.behaviour.seen.load(Ordering::Relaxed) == before {
        assert!(tokio::time::Instant::now() < deadline, "the mirror got a copy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sum of the samples of `name` (a full series name such as `istio_request_bytes_sum`) whose
/// labels contain `label`.
fn series_sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The request metrics carry what the requests really were: body bytes both ways and one
/// duration sample per request, under the labels of the service they went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_count_bodies_and_durations() {
    let w = World::new([1, 5]).await;
    let b = w.backend("sized").await;
    w.service("sized", 1, &[&b]);
    w.until_endpoints("sized", 1).await;
    let mut c = w.h2(w.vip(1)).await;
    let posted = c.send(get("/upload-size").method("POST").body(full(vec![b'x'; 1234])).unwrap()).await.unwrap();
    let got = c.get("/plain").await;
    assert_eq!((posted.status.as_u16(), got.status.as_u16()), (200, 200));
    let response_bytes = (posted.body.len() + got.body.len()) as f64;

    let label = "destination_service=\"sized.shop.svc.cluster.local\"";
    let want = [
        ("istio_requests_total", 2.0),
        ("istio_request_bytes_sum", 1234.0),
        ("istio_request_bytes_count", 2.0),
        ("istio_response_bytes_sum", response_bytes),
        ("istio_request_duration_milliseconds_count", 2.0),
    ];
    // A request is recorded just after its response ends: give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut m = w.metrics();
    while want.iter().any(|(n, v)| series_sum(&m, n, label) != *v) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = w.metrics();
    }
    for (name, value) in want {
        assert_eq!(series_sum(&m, name, label), value, "{name}:\n{m}");
    }
    // Durations are real: both requests were answered, so the sum is positive.
    assert!(series_sum(&m, "istio_request_duration_milliseconds_sum", label) > 0.0, "{m}");
}

/// Gateway API HTTPRequestRedirectFilter.statusCode: 303, 307 and 308 (Extended) are answered
/// as configured, with the `Location` the filter makes, for a POST with a body too: 307 and 308
/// keep the method and body only if the client gets that very code. A mirror named in mixed
/// case still reaches its service (hostnames are made lower case once, when compiled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_codes_303_307_308_and_a_mixed_case_mirror() {
    let w = World::new([1, 6]).await;
    let a = w.backend("a").await;
    let m = w.backend("mirror").await;
    w.service("svc", 1, &[&a]);
    w.service("shadow", 2, &[&m]);
    use pb::filter::Kind;
    let redirect = |p: &str, code: u32| {
        let mut r = rule(vec![prefix(p)], vec![]);
        r.filters = vec![pb::Filter {
            kind: Some(Kind::RequestRedirect(pb::RequestRedirect {
                hostname: "elsewhere.example".into(),
                status_code: code,
                ..Default::default()
            })),
        }];
        r
    };
    let mut mirror_rule = rule(vec![prefix("/mirror")], vec![backend_ref("svc", 1)]);
    let mut shadow = backend_ref("shadow", 1);
    shadow.hostname = shadow.hostname.to_ascii_uppercase();
    mirror_rule.filters =
        vec![pb::Filter { kind: Some(Kind::RequestMirror(pb::RequestMirror { backend: Some(shadow), percent: 100 })) }];
    let rules = vec![redirect("/see", 303), redirect("/temp", 307), redirect("/perm", 308), mirror_rule];
    w.route(&route("codes", "svc", rules));
    w.until_endpoints("shadow", 1).await;
    w.settle().await;

    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        for (p, code) in [("/see", 303), ("/temp", 307), ("/perm", 308)] {
            let r = c.send(get(&format!("{p}/x?q=1")).method("POST").body(full("payload")).unwrap()).await.unwrap();
            assert_eq!(r.status, code, "{p}");
            assert_eq!(r.headers.get("location").unwrap(), &format!("http://elsewhere.example{p}/x?q=1"), "{p}");
        }
    }

    assert_mirrored(&w, &m).await;
}

/// A route the waypoint cannot compile is refused by name and removed, and does not hold back the
/// routes that come after it: the server sends it again with every later push of routes, which
/// all-or-nothing would refuse whole, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_does_not_compile_does_not_hold_back_the_next() {
    let w = World::new([1, 9]).await;
    let (a, b) = (w.backend("a").await, w.backend("b").await);
    w.service("svc-a", 1, &[&a]);
    w.service("svc-b", 2, &[&b]);
    w.until_endpoints("svc-b", 1).await;
    let bad = pb::Match { path: path(pb::MatchType::RegularExpression, "/(unclosed"), ..Default::default() };
    w.route(&route("broken", "svc-a", vec![rule(vec![bad], vec![backend_ref("svc-a", 1)])]));
    let url = proto::WAYPOINT_ROUTE_TYPE_URL;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !w.xds_server.connections().iter().any(|c| {
        c.types.get(url).and_then(|t| t.last_nack.as_ref()).is_some_and(|n| n.message.contains("shop/HTTPRoute/broken"))
    }) {
        assert!(tokio::time::Instant::now() < deadline, "the broken route is NACKed by name");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A good route after it applies: svc-a's /to-b goes to svc-b.
    w.route(&route("good", "svc-a", vec![rule(vec![prefix("/to-b")], vec![backend_ref("svc-b", 1)])]));
    w.until("the good route", |s| s.routes(&host("svc-a"), 80).is_some() || s.routes(&host("svc-a"), 0).is_some())
        .await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/to-b/x").await.backend(), "b");
    // Routes attached, none matching: 404 (Gateway API), not the service's default route.
    assert_eq!(c.get("/other").await.status, 404);

    // The good route broken in turn is removed, not kept in its last good form: svc-a is left
    // with no route, so its own backends serve every path again.
    let bad = pb::Match { path: path(pb::MatchType::RegularExpression, "/(unclosed"), ..Default::default() };
    w.route(&route("good", "svc-a", vec![rule(vec![bad], vec![backend_ref("svc-b", 1)])]));
    w.until("the broken route removed", |s| s.routes(&host("svc-a"), 80).is_none()).await;
    assert_eq!(c.get("/to-b/x").await.backend(), "a");
}
