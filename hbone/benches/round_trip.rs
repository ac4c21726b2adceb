//! One request and its response on a kept connection, on loopback: raw TCP beside the full
//! HBONE path (app → outbound pump → pooled mTLS HTTP/2 → server → inbound pump → backend and
//! back). A 128-byte request gets a 1 KiB answer, the shape of `benches l4`'s open loop, where
//! what a proxy costs per request is its work per wake-up, not its copying speed.
//!
//! Everything runs on one current-thread runtime, as ztunnel's data path does, so the figure is
//! the work of both proxies and both apps per round trip; read it against raw TCP's.
//!
//! `ROUND_TRIPS=N cargo bench -p hbone --bench round_trip` skips criterion and makes exactly N
//! HBONE round trips after one warm-up, for instruction counts that do not depend on the
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

/// The runtime, and a kept connection straight to a responder and one through HBONE.
fn setup() -> (Runtime, TcpStream, TcpStream) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (raw, hbone) = rt.block_on(async {
        let mesh = Mesh::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let tls = hbone::tls::server_config(&mesh.server_store, mesh.server.clone());
        tokio::spawn(Server::new(tls, H2Settings::default(), forwarder(None)).serve(listener));
        let app = outbound(mesh.pool(), mesh.key(server_addr), responder().await).await;
        let (mut raw, mut hbone) = (client(responder().await).await, client(app).await);
        // The first trip through HBONE sets up the pooled connection and the stream.
        trip(&mut raw).await;
        trip(&mut hbone).await;
        (raw, hbone)
    });
    (rt, raw, hbone)
}

fn round_trip(c: &mut Criterion) {
    let (rt, mut raw, mut hbone) = setup();
    let mut group = c.benchmark_group("round_trip_loopback");
    group.measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    group.bench_function("raw_tcp", |b| b.iter(|| rt.block_on(trip(&mut raw))));
    group.bench_function("hbone", |b| b.iter(|| rt.block_on(trip(&mut hbone))));
    group.finish();
}

criterion_group!(benches, round_trip);

fn main() {
    match std::env::var("ROUND_TRIPS") {
        Ok(n) => {
            let n: u64 = n.parse().expect("ROUND_TRIPS is a count");
            let (rt, _raw, mut hbone) = setup();
            rt.block_on(async {
                for _ in 0..n {
                    trip(&mut hbone).await;
                }
            });
        }
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
