//! Our HTTP/2 against another implementation (the `h2` crate, which Istio's ztunnel uses), both
//! ways round, over mesh TLS on loopback: bulk data under small windows and small frames,
//! header compression with the peer's dynamic table and Huffman strings, stream limits,
//! PING, GOAWAY and refusals.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hbone::tunnel::client::{ConnectError, ConnectTarget};
use hbone::tunnel::server::InboundConnect;
use http::{Request, Response, StatusCode};
use rustls_pki_types::ServerName;
use support::raw_h2::{CONNECT_HEAD, our_connection};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SECOND: Duration = Duration::from_secs(1);

/// A loopback listener, the server identity's TLS acceptor, and a connection counter.
async fn mesh_tls_listener(mesh: &Mesh) -> (TcpListener, SocketAddr, TlsAcceptor, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(hbone::tls::server_config(&mesh.server_store, mesh.server.clone()));
    (listener, addr, acceptor, Arc::new(AtomicUsize::new(0)))
}

/// An `h2` server on mesh TLS that echoes each CONNECT stream's bytes, or refuses CONNECTs to
/// port 1 with 401 and a reason. Counts connections.
async fn h2_echo_server(mesh: &Mesh, builder: h2::server::Builder) -> (SocketAddr, Arc<AtomicUsize>) {
    let (listener, addr, acceptor, conns) = mesh_tls_listener(mesh).await;
    let counted = conns.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, builder) = (acceptor.clone(), builder.clone());
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut conn = builder.handshake::<_, Bytes>(tls).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        if req.uri().port_u16() == Some(1) {
                            let resp = Response::builder().status(401).body(()).unwrap();
                            let mut send = respond.send_response(resp, false).unwrap();
                            send.send_data(Bytes::from_static(b"denied by policy"), true).unwrap();
                            return;
                        }
                        let mut body = req.into_body();
                        let mut send = respond.send_response(Response::new(()), false).unwrap();
                        while let Some(chunk) = body.data().await {
                            let chunk = chunk.unwrap();
                            let n = chunk.len();
                            send.send_data(chunk, false).unwrap();
                            body.flow_control().release_capacity(n).unwrap();
                        }
                        send.send_data(Bytes::new(), true).unwrap();
                    });
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_moves_bulk_data_through_an_h2_server_with_small_windows_and_frames() {
    let mesh = Mesh::new();
    // Default frame size (16 KiB) and 64 KiB windows: our writes must be split and paced.
    let mut builder = h2::server::Builder::new();
    builder.initial_window_size(65_535).initial_connection_window_size(65_535);
    let (server, _) = h2_echo_server(&mesh, builder).await;
    let app = outbound(mesh.pool(), mesh.key(server), "10.0.0.1:80".parse().unwrap()).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(app).await.unwrap();
            echo_check(tcp, 6 * 1024 * 1024 + 17).await
        }));
    }
    for t in tasks {
        assert_eq!(tokio::time::timeout(60 * SECOND, t).await.unwrap().unwrap(), 6 * 1024 * 1024 + 17);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_respects_the_h2_servers_stream_limit_and_reads_its_refusals() {
    let mesh = Mesh::new();
    let mut builder = h2::server::Builder::new();
    builder.max_concurrent_streams(2);
    let (server, conns) = h2_echo_server(&mesh, builder).await;
    let pool = mesh.pool();
    let key = mesh.key(server);
    let mut open = Vec::new();
    for _ in 0..5 {
        let s = pool.connect(&key, &ConnectTarget::new("10.0.0.1:80".parse().unwrap(), None)).await.unwrap();
        open.push(s);
    }
    // Five streams at two per connection: three connections, none refused.
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    match pool.connect(&key, &ConnectTarget::new("10.0.0.1:1".parse().unwrap(), None)).await {
        Err(ConnectError::Refused { status, reason, .. }) => {
            assert_eq!((status, reason.as_str()), (StatusCode::UNAUTHORIZED, "denied by policy"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_sees_an_h2_servers_goaway_and_moves_to_a_new_connection() {
    let mesh = Mesh::new();
    let (listener, server, acceptor, conns) = mesh_tls_listener(&mesh).await;
    let counted = conns.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut conn = h2::server::handshake(tls).await.unwrap();
                let mut held = Vec::new();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    held.push(respond.send_response(Response::new(()), false).unwrap());
                    // The first connection goes away after its first stream.
                    if n == 0 {
                        conn.graceful_shutdown();
                    }
                }
            });
        }
    });
    let pool = mesh.pool();
    let key = mesh.key(server);
    let target = ConnectTarget::new("10.0.0.1:80".parse().unwrap(), None);
    let first = pool.connect(&key, &target).await.unwrap();
    // Give the GOAWAY time to arrive; the next stream must go to a new connection.
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    while conns.load(Ordering::SeqCst) < 2 {
        let _second = tokio::time::timeout(5 * SECOND, pool.connect(&key, &target)).await.unwrap().unwrap();
        assert!(tokio::time::Instant::now() < deadline, "no second connection after GOAWAY");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first);
}

/// An `h2` client on mesh TLS to our server.
async fn h2_client(mesh: &Mesh, server: SocketAddr, builder: h2::client::Builder) -> h2::client::SendRequest<Bytes> {
    let cfg = hbone::tls::client_config(
        &mesh.client_store,
        mesh.client_store.get(&mesh.client).unwrap(),
        vec![mesh.server.clone()],
    );
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = TlsConnector::from(cfg).connect(ServerName::IpAddress(server.ip().into()), tcp).await.unwrap();
    let (send, mut conn) = builder.handshake(tls).await.unwrap();
    // PING round trips while the connection runs: our server must answer them.
    let mut ping = conn.ping_pong().expect("ping handle");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tokio::time::timeout(5 * SECOND, ping.ping(h2::Ping::opaque())).await.expect("PONG in time").unwrap();
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_moves_bulk_data_through_our_server_under_its_small_windows() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(None)).await;
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(65_535).initial_connection_window_size(65_535).max_frame_size(16_384);
    let send = h2_client(&mesh, server.addr, builder).await;
    let len = 4 * 1024 * 1024 + 5;
    let mut tasks = Vec::new();
    for s in 0..3u64 {
        let mut send = send.clone().ready().await.unwrap();
        let req = Request::builder().method("CONNECT").uri(backend.to_string()).body(()).unwrap();
        let (resp, mut body_out) = send.send_request(req, false).unwrap();
        tasks.push(tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                let mut off = 0u64;
                while off < len {
                    // Only what the window grants, so our receive windows are what paces it.
                    body_out.reserve_capacity((len - off).min(100_000) as usize);
                    let granted = match body_out.capacity() {
                        0 => std::future::poll_fn(|cx| body_out.poll_capacity(cx)).await.unwrap().unwrap(),
                        n => n,
                    };
                    let n = (granted as u64).min(len - off);
                    if n == 0 {
                        continue;
                    }
                    let chunk: Vec<u8> = (off..off + n).map(|i| pattern(i + s)).collect();
                    body_out.send_data(Bytes::from(chunk), false).unwrap();
                    off += n;
                }
                body_out.send_data(Bytes::new(), true).unwrap();
            });
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut got = 0u64;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                for (j, b) in chunk.iter().enumerate() {
                    assert_eq!(*b, pattern(got + j as u64 + s), "stream {s} byte {}", got + j as u64);
                }
                got += chunk.len() as u64;
                body.flow_control().release_capacity(chunk.len()).unwrap();
            }
            writer.await.unwrap();
            got
        }));
    }
    for t in tasks {
        assert_eq!(tokio::time::timeout(60 * SECOND, t).await.unwrap().unwrap(), len);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_decodes_the_h2_clients_indexed_and_huffman_headers() {
    let mesh = Mesh::new();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let handler = move |req: InboundConnect| {
        let tx = tx.clone();
        async move {
            let h = req.headers();
            let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
            let _ = tx.send((req.authority(), get("baggage"), get("traceparent"), req.forwarded_for()));
            req.refuse(StatusCode::UNAUTHORIZED, "seen");
        }
    };
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), handler).await;
    let send = h2_client(&mesh, server.addr, h2::client::Builder::new()).await;
    // The same long values on every request: h2 indexes them in its dynamic table after the
    // first, and Huffman-codes them.
    let baggage = "k8s.namespace.name=default,k8s.deployment.name=sleep,service.version=v1";
    for i in 0..3u32 {
        let traceparent = format!("00-{:032x}-{:016x}-01", i + 1, i + 7);
        let req = Request::builder()
            .method("CONNECT")
            .uri(format!("10.1.2.{i}:8080"))
            .header("baggage", baggage)
            .header("traceparent", &traceparent)
            .header("forwarded", format!("for=\"10.9.9.{i}:4000\""))
            .body(())
            .unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(5 * SECOND, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(text, b"seen");
        let (authority, b, t, f) = seen.recv().await.unwrap();
        assert_eq!(authority, format!("10.1.2.{i}:8080").parse().unwrap());
        assert_eq!(b.as_deref(), Some(baggage));
        assert_eq!(t, Some(traceparent));
        assert_eq!(f, Some(format!("10.9.9.{i}:4000").parse().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_refuses_streams_past_its_limit_and_goes_away_gracefully() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(None)).await;
    let send = h2_client(&mesh, server.addr, h2::client::Builder::new()).await;
    // Our default limit is 100 streams per connection; h2 holds the 101st until one ends.
    let mut held = Vec::new();
    let connect = || Request::builder().method("CONNECT").uri(backend.to_string()).body(()).unwrap();
    for _ in 0..100 {
        let mut s = send.clone().ready().await.unwrap();
        let (resp, body) = s.send_request(connect(), false).unwrap();
        let resp = tokio::time::timeout(5 * SECOND, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(body);
    }
    let mut s = send.clone().ready().await.unwrap();
    let (mut extra, extra_body) = s.send_request(connect(), false).unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), &mut extra).await;
    assert!(early.is_err(), "a 101st stream was answered: {early:?}");
    // One stream ending frees a slot.
    drop(held.pop());
    let resp = tokio::time::timeout(5 * SECOND, extra).await.expect("answered once a slot was free").unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop((held, extra_body, resp, s));
    drop(send);
    // The client hangs up: the server reports a clean end.
    server.next_outcome(10 * SECOND).await.unwrap();
}

/// A one-connection TCP relay to `server` that counts the TLS records the client sends.
async fn record_counting_relay(server: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let records = Arc::new(AtomicUsize::new(0));
    let counted = records.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(server).await.unwrap();
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut up_rd, mut up_wr) = upstream.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut up_rd, &mut client_wr).await });
        // Walks the record layer (a 5-byte head, the length in its last two bytes) across reads.
        let (mut head, mut body_left, mut buf) = (Vec::new(), 0usize, vec![0u8; 64 * 1024]);
        loop {
            let n = client_rd.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            up_wr.write_all(&buf[..n]).await.unwrap();
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                if body_left > 0 {
                    let k = body_left.min(rest.len());
                    body_left -= k;
                    rest = &rest[k..];
                    continue;
                }
                let k = (5 - head.len()).min(rest.len());
                head.extend_from_slice(&rest[..k]);
                rest = &rest[k..];
                if head.len() == 5 {
                    body_left = u16::from_be_bytes([head[3], head[4]]) as usize;
                    head.clear();
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    });
    (addr, records)
}

#[tokio::test]
async fn the_driver_delivers_a_streams_bytes_and_its_end_to_an_attached_socket_by_itself() {
    use tokio::io::AsyncReadExt;
    let mesh = Mesh::new();
    let (server, _) = h2_echo_server(&mesh, h2::server::Builder::new()).await;
    let conn = our_connection(&mesh, server).await;
    let (stream, _) = conn.request(&CONNECT_HEAD).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut app = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (ours, _) = listener.accept().await.unwrap();
    stream.attach_sink(ours.into_std().unwrap());
    // The echo comes back with END_STREAM; nobody polls the stream, so only the driver can
    // write the bytes and the FIN.
    assert_eq!(stream.send(b"response", true).unwrap(), 8);
    let mut got = Vec::new();
    tokio::time::timeout(5 * SECOND, app.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"response");
    assert!(stream.sink_shut());
    assert_eq!(stream.sunk(), 8);
}

// The default, current-thread runtime: the two sends below run in one poll, so the connection's
// driver cannot run between them, as with streams woken by one event in ztunnel.
#[tokio::test]
async fn our_client_sends_the_small_writes_of_one_scheduler_pass_in_one_tls_record() {
    let mesh = Mesh::new();
    let (server, _) = h2_echo_server(&mesh, h2::server::Builder::new()).await;
    let (relay, records) = record_counting_relay(server).await;
    let conn = our_connection(&mesh, relay).await;
    let (a, _) = conn.request(&CONNECT_HEAD).await.unwrap();
    let (b, _) = conn.request(&CONNECT_HEAD).await.unwrap();
    // Let the SETTINGS exchange finish so nothing else is in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = records.load(Ordering::SeqCst);
    assert_eq!(a.send(b"first", false).unwrap(), 5);
    assert_eq!(b.send(b"second", false).unwrap(), 6);
    for (s, want) in [(&a, &b"first"[..]), (&b, &b"second"[..])] {
        let got = tokio::time::timeout(5 * SECOND, std::future::poll_fn(|cx| s.poll_data(cx))).await.unwrap();
        assert_eq!(&got.unwrap().unwrap()[..], want);
    }
    assert_eq!(records.load(Ordering::SeqCst) - before, 1, "both DATA frames in one record");
}
