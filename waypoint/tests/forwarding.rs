//! What the waypoint forwards between HTTP versions and to mirrors: connection-specific
//! headers (RFC 9110 §7.6.1) that must not cross, and what it keeps of answers it discards.

mod support;

use proto::istio::workload as pbw;
use proto::mesh::waypoint::v1 as pb;
use support::*;

/// `TE` is connection-specific (RFC 9110 §10.1.4); only `trailers` may cross into HTTP/2
/// (RFC 9113 §8.2.2). A client that sends it in several fields, `trailers` first, must not get
/// the other values through to an HTTP/2 backend, which would refuse the whole request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_other_than_trailers_never_reaches_http2_in_any_field() {
    let w = World::new([11, 1]).await;
    let a = w.backend("a").await;
    w.service_declaring("svc", 1, &[&a], pbw::AppProtocol::Http2);
    w.until_endpoints("svc", 1).await;
    let mut c = w.h1(w.vip(1)).await;
    for tes in [&["trailers", "gzip"][..], &["gzip", "trailers"], &["trailers, gzip"], &["trailers"]] {
        let mut req = get("/te");
        for te in tes {
            req = req.header("te", *te);
        }
        let r = c.send(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "TE {tes:?}: {}", r.body);
        assert!(r.body.contains("HTTP/2.0"), "{}", r.body);
        let seen: Vec<&str> = r.body.lines().filter_map(|l| l.strip_prefix("te: ")).collect();
        assert!(seen.iter().all(|v| *v == "trailers"), "TE {tes:?}: the backend saw {seen:?}");
    }
}

/// A mirror's answer is read and dropped, never kept: one that goes on and on (a stream of
/// events, a large download) is read up to a bound and then let go, rather than held in memory
/// as it grows, for as long as the mirror keeps sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_answer_is_not_read_without_end() {
    let w = World::new([11, 2]).await;
    let a = w.backend("a").await;
    let m = w.backend("m").await;
    w.service("svc", 1, &[&a]);
    w.service("shadow", 2, &[&m]);
    let mut mirrored = rule(vec![], vec![backend_ref("svc", 1)]);
    mirrored.filters = vec![mirror_filter("shadow", 100)];
    w.route(&route("mirrored", "svc", vec![mirrored]));
    w.until_endpoints("shadow", 1).await;
    w.settle().await;

    // The client reads the primary's answer only as far as its head.
    let Client::H1(mut s, _t) = w.h1(w.vip(1)).await else { unreachable!() };
    let r = s.send_request(get("/endless").body(empty()).unwrap()).await.unwrap();
    assert_eq!(r.headers()["x-backend"], "a");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.behaviour.abandoned.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the waypoint still reads the mirror's endless answer");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(r);
}

/// Timeouts, backoffs and retry counts come from the control plane as they are: the largest a
/// push can carry must not overflow on the request's path (a panic there ends the client's
/// whole connection). A timeout too long to reach is no timeout; a backoff too long to wait
/// within the request's timeout ends the request at that timeout, as a shorter one would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_timeouts_and_retries_a_push_can_carry() {
    let w = World::new([11, 3]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    let forever = Some(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 });
    let mut long_timeout = rule(vec![prefix("/long-timeout")], vec![backend_ref("svc", 1)]);
    long_timeout.timeouts = Some(pb::Timeouts { request: forever, backend_request: forever });
    let mut many_retries = rule(vec![prefix("/many-retries")], vec![backend_ref("svc", 1)]);
    many_retries.retry = Some(pb::Retry { attempts: u32::MAX, codes: vec![], backoff: None });
    let mut long_backoff = rule(vec![prefix("/status")], vec![backend_ref("svc", 1)]);
    long_backoff.retry = Some(pb::Retry { attempts: 1, codes: vec![503], backoff: forever });
    long_backoff.timeouts =
        Some(pb::Timeouts { request: Some(prost_types::Duration { seconds: 2, nanos: 0 }), backend_request: None });
    w.route(&route("svc", "svc", vec![long_timeout, many_retries, long_backoff]));
    w.until_endpoints("svc", 1).await;
    w.settle().await;

    let mut c = w.h2(w.vip(1)).await;
    for (path, status) in [("/long-timeout", 200), ("/many-retries", 200), ("/status/503", 504)] {
        let r = c.send(get(path).body(empty()).unwrap()).await;
        assert_eq!(r.map(|r| r.status.as_u16()).map_err(|e| e.to_string()), Ok(status), "{path}");
    }
}

/// RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
/// request message that lacks a Host header field and to any request message that contains
/// more than one Host header field line". HTTP/1.0 needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_request_needs_exactly_one_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::new([11, 4]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    for (raw, status) in [
        ("GET /x HTTP/1.1\r\n\r\n", "400"),
        ("GET /x HTTP/1.1\r\nHost: svc.example\r\nHost: admin.example\r\n\r\n", "400"),
        ("GET http://svc.example/x HTTP/1.1\r\n\r\n", "400"),
        ("GET /x HTTP/1.1\r\nHost: svc.example\r\n\r\n", "200"),
        ("GET /x HTTP/1.0\r\n\r\n", "200"),
    ] {
        let mut t = w.tunnel(w.vip(1)).await;
        t.write_all(raw.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 12];
        tokio::time::timeout(std::time::Duration::from_secs(5), t.read_exact(&mut got)).await.unwrap().unwrap();
        let got = String::from_utf8_lossy(&got).into_owned();
        assert_eq!(&got[9..], status, "{raw:?}: {got}");
    }
    assert_eq!(a.behaviour.seen.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// Gateway API HTTPRouteTimeouts: `backendRequest` "covers the time from when the request
/// first starts being sent from the gateway to when the full response has been received from
/// the backend", and `request` the whole exchange: a backend that sends its head and then
/// stalls is cut off at the timeout, not waited for without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_stalls_is_cut_off_at_the_timeout() {
    use http_body_util::BodyExt;
    let w = World::new([11, 5]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    let ms = |n: i32| Some(prost_types::Duration { seconds: 0, nanos: n * 1_000_000 });
    let mut whole = rule(vec![prefix("/stall/request")], vec![backend_ref("svc", 1)]);
    whole.timeouts = Some(pb::Timeouts { request: ms(400), backend_request: None });
    let mut per_try = rule(vec![prefix("/stall/backend")], vec![backend_ref("svc", 1)]);
    per_try.timeouts = Some(pb::Timeouts { request: None, backend_request: ms(400) });
    w.route(&route("svc", "svc", vec![whole, per_try]));
    w.until_endpoints("svc", 1).await;
    w.settle().await;

    for (n, path) in ["/stall/request", "/stall/backend"].into_iter().enumerate() {
        let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
        let uri = format!("http://svc.example{path}");
        let r = s.send_request(http::Request::get(uri).body(empty()).unwrap()).await.unwrap();
        assert_eq!(r.status(), 200, "{path}: the head came in time");
        let mut body = r.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        let rest = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await;
        let rest = rest.unwrap_or_else(|_| panic!("{path}: the stalled body was not cut off"));
        assert!(rest.is_some_and(|f| f.is_err()), "{path}: the body fails rather than ends cleanly");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while a.behaviour.abandoned.load(std::sync::atomic::Ordering::Relaxed) <= n as u64 {
            assert!(tokio::time::Instant::now() < deadline, "{path}: the backend's stream was let go");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The asterisk-form (RFC 9112 §3.2.4, RFC 9113 §8.3.1) is for a server-wide `OPTIONS` only:
/// any other method with it is malformed (400). `OPTIONS *` is answered 404 by the waypoint,
/// as Envoy answers it in Istio's waypoints, whether or not the service has routes, and goes
/// to no backend: no route can match a target that is not a path, and the service's pods are
/// not "the server" the client asks about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asterisk_form_is_options_only_and_answered_404() {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::new([11, 6]).await;
    let a = w.backend("a").await;
    let b = w.backend("b").await;
    w.service("plain", 1, &[&a]);
    w.service("routed", 2, &[&b]);
    // A rule with no match takes every path ("/" prefix).
    w.route(&route("routed", "routed", vec![rule(vec![], vec![backend_ref("routed", 2)])]));
    w.until_endpoints("plain", 1).await;
    w.until_endpoints("routed", 1).await;
    w.settle().await;

    for vip in [w.vip(1), w.vip(2)] {
        for (raw, status) in [
            ("OPTIONS * HTTP/1.1\r\nHost: svc.example\r\n\r\n", "404"),
            ("OPTIONS * HTTP/1.0\r\n\r\n", "404"),
            ("GET * HTTP/1.1\r\nHost: svc.example\r\n\r\n", "400"),
            ("POST * HTTP/1.1\r\nHost: svc.example\r\nContent-Length: 0\r\n\r\n", "400"),
            ("OPTIONS /x HTTP/1.1\r\nHost: svc.example\r\n\r\n", "200"),
        ] {
            let mut t = w.tunnel(vip).await;
            t.write_all(raw.as_bytes()).await.unwrap();
            let mut got = vec![0u8; 12];
            tokio::time::timeout(std::time::Duration::from_secs(5), t.read_exact(&mut got)).await.unwrap().unwrap();
            let got = String::from_utf8_lossy(&got).into_owned();
            assert_eq!(&got[9..], status, "{vip} {raw:?}: {got}");
        }
        // HTTP/2 carries it as `:path: *`.
        let Client::H2(mut s, _t) = w.h2(vip).await else { unreachable!() };
        for (method, status) in [("OPTIONS", 404), ("GET", 400)] {
            let uri = http::Uri::builder().scheme("http").authority("svc.example").path_and_query("*").build().unwrap();
            let r =
                s.send_request(http::Request::builder().method(method).uri(uri).body(empty()).unwrap()).await.unwrap();
            assert_eq!(r.status(), status, "{vip} HTTP/2 {method} *");
        }
    }
    assert_eq!(a.behaviour.seen.load(Relaxed), 1, "only OPTIONS /x reached the plain service");
    assert_eq!(b.behaviour.seen.load(Relaxed), 1, "only OPTIONS /x reached the routed service");
}
