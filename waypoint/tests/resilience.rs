//! Timeouts, retries and passive outlier ejection through the waypoint.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::mesh::waypoint::v1 as pb;
use support::*;

fn dur(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

fn prefix_rule(p: &str, backend: &str) -> pb::Rule {
    rule(vec![prefix(p)], vec![backend_ref(backend, 1)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_retries() {
    let w = World::new([2, 1]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    let mut slow = prefix_rule("/slow", "svc");
    slow.timeouts = Some(pb::Timeouts { request: dur(300), backend_request: None });
    let mut retried = prefix_rule("/fail-every-other/retried", "svc");
    retried.retry = Some(pb::Retry { attempts: 2, codes: vec![503], backoff: dur(5) });
    let plain = prefix_rule("/fail-every-other/plain", "svc");
    w.route(&pb::Route {
        namespace: "shop".into(),
        name: "r".into(),
        parents: vec![pb::ParentService { hostname: host("svc"), port: 80 }],
        rules: vec![slow, retried, plain],
        ..Default::default()
    });
    w.until_endpoints("svc", 1).await;
    w.settle().await;

    let mut c = w.h1(w.vip(1)).await;
    let t = tokio::time::Instant::now();
    let r = c.get("/slow").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(t.elapsed() < Duration::from_millis(1500), "answered at the timeout, not when the backend did");

    // The backend fails every other request: with a Retry every request succeeds, and a
    // POST body is replayed on the retry.
    let mut c = w.h2(w.vip(1)).await;
    for i in 0..10 {
        let r =
            c.send(get("/fail-every-other/retried").method("POST").body(full("0123456789")).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.seen_header("body-bytes"), Some("10"), "the body reached the backend on the retry");
    }
    // Without the Retry field, half of the requests fail.
    let mut failures = 0;
    for _ in 0..10 {
        if c.get("/fail-every-other/plain").await.status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 5, "no retries without a Retry");
    let m = w.metrics();
    assert!(m.contains("response_code=\"504\""), "{m}");
    assert!(m.contains("response_flags=\"UT\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_ejection_moves_traffic_off_a_failing_endpoint() {
    let w = World::new([2, 2]).await;
    let good = w.backend("good").await;
    let bad = w.backend("bad").await;
    w.service("svc", 1, &[&good, &bad]);
    w.backend_policy(&pb::BackendPolicy {
        hostname: host("svc"),
        load_balancer: pb::backend_policy::LoadBalancer::RoundRobin as i32,
        outlier_consecutive_errors: 3,
        outlier_ejection: dur(60_000),
        ..Default::default()
    });
    w.until_endpoints("svc", 2).await;
    w.settle().await;
    bad.behaviour.fail.store(true, Ordering::Relaxed);
    let mut c = w.h1(w.vip(1)).await;
    let mut counts: HashMap<u16, u32> = HashMap::new();
    for _ in 0..10 {
        *counts.entry(c.get("/").await.status.as_u16()).or_default() += 1;
    }
    assert_eq!(counts.get(&500).copied(), Some(3), "exactly 3 failures before ejection: {counts:?}");
    for _ in 0..20 {
        let r = c.get("/").await;
        assert_eq!((r.status.as_u16(), r.backend()), (200, "good"), "ejected endpoint gets nothing");
    }
    // The last endpoint is never ejected: with "good" failing too, traffic still flows to it.
    good.behaviour.fail.store(true, Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(c.get("/").await.backend(), "good");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_random_and_consistent_hash() {
    let w = World::new([2, 3]).await;
    let b1 = w.backend("b1").await;
    let b2 = w.backend("b2").await;
    let b3 = w.backend("b3").await;
    w.service("svc", 1, &[&b1, &b2, &b3]);
    w.until_endpoints("svc", 3).await;
    // Default: least request; all three get traffic.
    let mut c = w.h2(w.vip(1)).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..60 {
        *seen.entry(c.get("/").await.backend().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // Least request avoids a busy endpoint: hold a slow request open on one of them, and no
    // request while it is outstanding goes there (two distinct random picks, the idler wins).
    let backends = [&b1, &b2, &b3];
    let seen_before: Vec<u64> = backends.iter().map(|b| b.behaviour.seen.load(Ordering::Relaxed)).collect();
    let mut slow_client = w.h2(w.vip(1)).await;
    let slow = tokio::spawn(async move { slow_client.get("/slow").await.status });
    let busy = loop {
        let now: Vec<u64> = backends.iter().map(|b| b.behaviour.seen.load(Ordering::Relaxed)).collect();
        if let Some(i) = (0..3).find(|&i| now[i] > seen_before[i]) {
            break backends[i].name.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for _ in 0..30 {
        let r = c.get("/").await;
        assert_ne!(r.backend(), busy, "least request sent a request to the endpoint that is busy");
    }
    assert_eq!(slow.await.unwrap(), 200);
    // Random spreads requests over every endpoint (missing one in 60 tries: p < 1e-10).
    w.backend_policy(&pb::BackendPolicy {
        hostname: host("svc"),
        load_balancer: pb::backend_policy::LoadBalancer::Random as i32,
        ..Default::default()
    });
    w.settle().await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..60 {
        *seen.entry(c.get("/").await.backend().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    w.backend_policy(&pb::BackendPolicy {
        hostname: host("svc"),
        load_balancer: pb::backend_policy::LoadBalancer::ConsistentHash as i32,
        hash_header: "x-user".into(),
        ..Default::default()
    });
    w.settle().await;
    for user in ["alice", "bob", "carol", "dave"] {
        let first = c.send(get("/").header("x-user", user).body(empty()).unwrap()).await.unwrap().backend().to_owned();
        for _ in 0..10 {
            let r = c.send(get("/").header("x-user", user).body(empty()).unwrap()).await.unwrap();
            assert_eq!(r.backend(), first, "{user} sticks to one endpoint");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_only_with_a_retry() {
    let w = World::new([2, 4]).await;
    let good = w.backend("good").await;
    let dead = w.dead_backend("dead");
    w.service("svc", 1, &[&good, &dead]);
    w.backend_policy(&pb::BackendPolicy {
        hostname: host("svc"),
        load_balancer: pb::backend_policy::LoadBalancer::RoundRobin as i32,
        // High enough that ejection does not hide the retries.
        outlier_consecutive_errors: 1000,
        ..Default::default()
    });
    let mut retried = prefix_rule("/retried", "svc");
    retried.retry = Some(pb::Retry { attempts: 1, codes: vec![], backoff: dur(1) });
    w.route(&pb::Route {
        namespace: "shop".into(),
        name: "r".into(),
        parents: vec![pb::ParentService { hostname: host("svc"), port: 0 }],
        rules: vec![retried, prefix_rule("/plain", "svc")],
        ..Default::default()
    });
    w.until_endpoints("svc", 2).await;
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    for _ in 0..10 {
        let r = c.send(get("/retried").method("POST").body(full("x".repeat(100))).unwrap()).await.unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, "good"), "{r:?}");
    }
    let mut failed = 0;
    for _ in 0..10 {
        let r = c.get("/plain").await;
        if r.status == 503 {
            failed += 1;
        }
    }
    assert_eq!(failed, 5, "round robin sends every other request to the dead endpoint");
    let m = w.metrics_once(|m| m.contains("response_flags=\"UF\"")).await;
    assert!(m.contains("response_flags=\"UF\""), "{m}");
}

/// `backendRequest` bounds each try, not the whole request: a try that outlives it ends as
/// 504 and is retried when the route retries 504s, and only the codes a Retry names are
/// retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_and_retriable_codes() {
    let w = World::new([2, 5]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    let per_try = |path: &str, retry: Option<pb::Retry>| {
        let mut r = prefix_rule(path, "svc");
        // The backend answers /slow after 2 s: well past each try, well within the request.
        r.timeouts = Some(pb::Timeouts { request: dur(5000), backend_request: dur(200) });
        r.retry = retry;
        r
    };
    let retry = |codes: Vec<u32>| Some(pb::Retry { attempts: 2, codes, backoff: dur(5) });
    let mut status_503_only = prefix_rule("/status/500/retry-503", "svc");
    status_503_only.retry = retry(vec![503]);
    let mut status_500 = prefix_rule("/status/500/retry-500", "svc");
    status_500.retry = retry(vec![500]);
    w.route(&pb::Route {
        namespace: "shop".into(),
        name: "r".into(),
        parents: vec![pb::ParentService { hostname: host("svc"), port: 80 }],
        rules: vec![
            per_try("/slow/retried", retry(vec![504])),
            per_try("/slow/once", None),
            status_503_only,
            status_500,
        ],
        ..Default::default()
    });
    w.until_endpoints("svc", 1).await;
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    let seen = &a.behaviour.seen;
    let (status, n, took) = tries(&mut c, seen, "/slow/retried").await;
    assert_eq!((status, n), (504, 3), "each of the 3 tries timed out on its own");
    assert!(took < Duration::from_millis(1900), "ended by the per-try limits, not the backend: {took:?}");
    let (status, n, took) = tries(&mut c, seen, "/slow/once").await;
    assert_eq!((status, n), (504, 1), "no Retry: the first try's timeout is the answer");
    assert!(took < Duration::from_millis(1900), "{took:?}");

    // A 500 is not retried by a Retry for 503 only; a Retry for 500 uses every attempt.
    let (status, n, _) = tries(&mut c, seen, "/status/500/retry-503").await;
    assert_eq!((status, n), (500, 1));
    let (status, n, _) = tries(&mut c, seen, "/status/500/retry-500").await;
    assert_eq!((status, n), (500, 3));
}

/// Sends GET `path`: its status, how many requests the backend saw meanwhile, and how long it took.
async fn tries(c: &mut Client, seen: &std::sync::atomic::AtomicU64, path: &str) -> (u16, u64, Duration) {
    let before = seen.load(Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let r = c.get(path).await;
    (r.status.as_u16(), seen.load(Ordering::Relaxed) - before, started.elapsed())
}

/// The HBONE port refuses a handshake past `--max-inbound-handshakes` at once, and counts
/// refused handshakes by reason, garbage as well as overload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_counted_and_past_the_limit_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::with_handshake_limit([9, 1], 1).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    let counted = |reason: &str, n: usize| {
        let line = format!("waypoint_hbone_handshakes_refused_total{{reason=\"{reason}\"}} {n}");
        move |m: &str| m.contains(&line)
    };
    let until = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = w.metrics();
            if ok(&m) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}:\n{m}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let mut garbage = tokio::net::TcpStream::connect(w.waypoint_addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest)).await.expect("closed");
    until("plaintext on the HBONE port is counted", &counted("hbone_tls_failed", 1));

    // A client that says nothing holds the only turn: a tunnel cannot open until it goes.
    // (An opened tunnel's connection would be pooled and reused, so the first try must be
    // the refused one: the waypoint is given time to accept the silent client first.)
    let silent = tokio::net::TcpStream::connect(w.waypoint_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.try_tunnel(w.vip(1)).await.is_err(), "a tunnel opened while the only turn was held");
    until("the refusal is counted", &counted("hbone_handshake_overload", 1));
    drop(silent);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while w.try_tunnel(w.vip(1)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no tunnel once the turn was free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
