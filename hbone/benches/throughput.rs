//! One stream's throughput on loopback: raw TCP beside the full HBONE path
//! (app → outbound pump → pooled mTLS HTTP/2 → server → inbound pump → sink).
//!
//! Both run in the same process and the same run, so their ratio is what to read; absolute
//! figures depend on the machine. Each iteration sends [`PAYLOAD`] bytes on a new connection
//! (new stream, pooled tunnel connection) and waits for the sink to confirm it read them all.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hbone::testing::{Mesh, forwarder, outbound};
use hbone::tunnel::H2Settings;
use hbone::tunnel::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const PAYLOAD: usize = 64 * 1024 * 1024;

/// Reads everything, then answers one byte so the sender knows all of it arrived.
async fn sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while tcp.read(&mut buf).await.unwrap() > 0 {}
                tcp.write_all(b"k").await.unwrap();
            });
        }
    });
    addr
}

async fn send_through(addr: SocketAddr, chunk: &[u8]) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut left = PAYLOAD;
    while left > 0 {
        let n = left.min(chunk.len());
        tcp.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    tcp.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    tcp.read_exact(&mut ack).await.unwrap();
}

fn one_stream(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (raw, hbone) = rt.block_on(async {
        let raw = sink().await;
        let mesh = Mesh::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = listener.local_addr().unwrap();
        let tls = hbone::tls::server_config(&mesh.server_store, mesh.server.clone());
        tokio::spawn(Server::new(tls, H2Settings::default(), forwarder(None)).serve(listener));
        let app = outbound(mesh.pool(), mesh.key(server_addr), sink().await).await;
        (raw, app)
    });
    let chunk = vec![0x5au8; 256 * 1024];
    let mut group = c.benchmark_group("one_stream_loopback");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    group.bench_function("raw_tcp", |b| b.to_async(&rt).iter(|| send_through(raw, &chunk)));
    group.bench_function("hbone", |b| b.to_async(&rt).iter(|| send_through(hbone, &chunk)));
    group.finish();
}

criterion_group!(benches, one_stream);
criterion_main!(benches);
