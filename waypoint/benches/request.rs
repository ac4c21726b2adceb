//! One request's whole way through the waypoint on loopback, in one process: an HBONE client
//! (mTLS HTTP/2 CONNECT) speaking HTTP/1.1 or HTTP/2 inside, the waypoint (detection, L7
//! policy, route, metrics; no log subscriber, so access lines go nowhere), HBONE to the
//! backend's HBONE server and the HTTP server behind it, and back. Keep-alive connections, one
//! request at a time.
//!
//! Client and backend run in the same process, so a figure is the whole loop, not the
//! waypoint alone; compare two builds on one machine (the loop around the waypoint stays the
//! same).
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use support::*;

fn requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (_w, mut h1, mut h2) = rt.block_on(async {
        let w = World::new([9, 1]).await;
        w.routed_pair("svc", "/b", &["/admin*"]).await;
        let (h1, h2) = (w.h1(w.vip(1)).await, w.h2(w.vip(1)).await);
        (w, h1, h2)
    });
    let mut g = c.benchmark_group("request");
    g.bench_function("HTTP/1.1 through the waypoint", |b| {
        b.iter(|| {
            let r = rt.block_on(h1.get("/reviews/1"));
            assert_eq!(r.status, 200);
        })
    });
    g.bench_function("HTTP/2 through the waypoint", |b| {
        b.iter(|| {
            let r = rt.block_on(h2.get("/reviews/1"));
            assert_eq!(r.status, 200);
        })
    });
    g.finish();
}

criterion_group!(benches, requests);
criterion_main!(benches);
