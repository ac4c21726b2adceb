//! Graceful shutdown: once the drain starts, requests in flight finish, idle HTTP
//! connections are closed by the waypoint, upgraded connections keep going, new HBONE
//! connections are refused, and nothing is left open for the deadline to cut.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn until_closed(what: &str, closed: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !closed() {
        assert!(tokio::time::Instant::now() < deadline, "{what} is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_what_is_in_flight_and_closes_the_rest() {
    let w = World::new([5, 1]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    w.settle().await;

    let mut idle_h1 = w.h1(w.vip(1)).await;
    let mut idle_h2 = w.h2(w.vip(1)).await;
    assert_eq!(idle_h1.get("/").await.status, 200);
    assert_eq!(idle_h2.get("/").await.status, 200);
    // A request in flight when the drain starts (the backend takes 2 s for /slow).
    let mut busy = w.h1(w.vip(1)).await;
    let slow = tokio::spawn(async move { busy.get("/slow").await });
    // A WebSocket-style upgraded connection, open across the drain.
    let io = w.tunnel(w.vip(1)).await;
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.unwrap();
    let _conn = Task(tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    }));
    let mut resp = s.send_request(websocket_get("/ws")).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut ws = hyper_util::rt::TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = w.proxy.drain.live();
    assert!(before >= 4, "HBONE connection and streams are counted: {before}");

    w.proxy.drain.start();

    // Idle connections are closed by the waypoint, HTTP/1.1 and HTTP/2 alike.
    let (Client::H1(h1, _t1), Client::H2(h2, _t2)) = (idle_h1, idle_h2) else { unreachable!() };
    until_closed("the idle HTTP/1.1 connection", || h1.is_closed()).await;
    until_closed("the idle HTTP/2 connection", || h2.is_closed()).await;
    // The request in flight is answered in full.
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.backend(), "a");
    // The upgraded connection still carries bytes both ways.
    ws.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"a:still here");
    // New HBONE connections are refused: the listener is closed.
    let e = w.try_tunnel(w.vip(1)).await.unwrap_err();
    assert!(e.to_string().contains("Connection refused"), "{e}");
    // Closing the upgraded connection leaves nothing open.
    ws.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.read_to_end(&mut rest)).await;
    let left = w.proxy.drain.wait(Duration::from_secs(5)).await;
    assert_eq!(left, 0, "everything closed on its own before the deadline");
}
