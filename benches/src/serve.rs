//! The HTTP server the request benchmarks hit: hyper's HTTP/1.1 server answering every
//! request with the same 1 KiB body, keep-alive unless the client asks to close. Run as
//! `benches serve-http --port P` inside the server pod, the same program for both sides.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Size of every response body.
pub const BODY_BYTES: usize = 1024;

/// Serves on `0.0.0.0:port` until killed, on `threads` runtime workers.
pub fn serve(port: u16, threads: usize) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await?;
        eprintln!("serving {BODY_BYTES}-byte responses on {}", listener.local_addr()?);
        let body = Bytes::from(vec![b'x'; BODY_BYTES]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                // A client that goes away mid-request is not the server's problem.
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
