//! One request and its response on a kept connection, on loopback: raw TCP, two plain TCP
//! relays in a row (the floor: the same hops with nothing done in them), and the full HBONE
//! path (app → outbound pump → pooled mTLS HTTP/2 → server → inbound pump → backend and
//! back). A 128-byte request gets a 1 KiB answer, the shape of `benches l4`'s open loop, where
//! what a proxy costs per request is its work per wake-up, not its copying speed.
//!
//! Everything runs on one current-thread runtime, as ztunnel's data path does, so the figure is
//! the work of both proxies and both apps per round trip; read it against raw TCP's.
//!
//! `ROUND_TRIPS=N cargo bench -p hbone --bench round_trip` skips criterion and makes exactly N
//! HBONE round trips (`ROUND_TRIP_PATH=relay`: through the relays) after one warm-up, for instruction counts that do not depend on the
//! machine's noise: run it under `valgrind --tool=callgrind` with two values of N and divide the
//! difference of the totals by the difference of N (setup cancels out).
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use hbone::testing::{Mesh, forwarder, outbound};
use hbone::tunnel::H2Settings;
use hbone::tunnel::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const REQUEST: usize = 128;
const RESPONSE: usize = 1024;

/// Answers every [`REQUEST`] bytes it reads with [`RESPONSE`] bytes, until EOF.
async fn responder() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let mut request = [0u8; REQUEST];
                let response = [0x5au8; RESPONSE];
                while tcp.read_exact(&mut request).await.is_ok() {
                    if tcp.write_all(&response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A plain TCP relay on loopback to `upstream`: accept, connect, copy both ways.
async fn relay(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut down, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut up = client(upstream).await;
                let _ = down.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    addr
}

/// A kept client connection to `addr`.
async fn client(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// One request, and the whole response read.
async fn trip(tcp: &mut TcpStream) {
    let request = [0xa5u8; REQUEST];
    let mut response = [0u8; RESPONSE];
    tcp.write_all(&request).await.unwrap();
    tcp.read_exact(&mut response).await.unwrap();
    assert_eq!(response[RESPONSE - 1], 0x5a, "the backend's bytes came back");
}

/// Kept connections: straight to a responder, through two relays, through HBONE.
struct Paths {
    raw: TcpStream,
    relay: TcpStream,
    hbone: TcpStream,
}

/// The runtime and the three paths, each with one round trip made.
fn setup() -> (Runtime, Paths) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let paths = rt.block_on(async {
        let mesh = Mesh::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let tls = hbone::tls::server_config(&mesh.server_store, mesh.server.clone());
        tokio::spawn(Server::new(tls, H2Settings::default(), forwarder(None)).serve(listener));
        let app = outbound(mesh.pool(), mesh.key(server_addr), responder().await).await;
        let relayed = relay(relay(responder().await).await).await;
        let mut paths =
            Paths { raw: client(responder().await).await, relay: client(relayed).await, hbone: client(app).await };
        // The first trip through HBONE sets up the pooled connection and the stream.
        for tcp in [&mut paths.raw, &mut paths.relay, &mut paths.hbone] {
            trip(tcp).await;
        }
        paths
    });
    (rt, paths)
}

fn round_trip(c: &mut Criterion) {
    let (rt, mut p) = setup();
    let mut group = c.benchmark_group("round_trip_loopback");
    group.measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.bench_function("raw_tcp", |b| b.iter(|| rt.block_on(trip(&mut p.raw))));
    group.bench_function("two_relays", |b| b.iter(|| rt.block_on(trip(&mut p.relay))));
    group.bench_function("hbone", |b| b.iter(|| rt.block_on(trip(&mut p.hbone))));
    group.finish();
}

criterion_group!(benches, round_trip);

fn main() {
    match std::env::var("ROUND_TRIPS") {
        Ok(n) => {
            let n: u64 = n.parse().expect("ROUND_TRIPS is a count");
            let (rt, mut p) = setup();
            let tcp = match std::env::var("ROUND_TRIP_PATH").as_deref() {
                Ok("relay") => &mut p.relay,
                Ok("hbone") | Err(_) => &mut p.hbone,
                Ok(other) => panic!("ROUND_TRIP_PATH is relay or hbone, not {other}"),
            };
            rt.block_on(async {
                for _ in 0..n {
                    trip(tcp).await;
                }
            });
        }
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
