//! What the waypoint forwards between HTTP versions and to mirrors: connection-specific
//! headers (RFC 9110 §7.6.1) that must not cross, and what it keeps of answers it discards.

mod support;

use proto::istio::workload as pbw;
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
