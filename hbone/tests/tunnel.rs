//! The tunnel end to end on loopback: app → pump → pool → TLS/HTTP/2 → server → pump → backend.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use hbone::tunnel::client::{ConnectError, ConnectTarget, NoUsableCert};
use hbone::tunnel::pool::{Pool, PoolConfig};
use hbone::tunnel::server::{HandshakeLimit, InboundConnect, ServeError};
use hbone::{CertStore, tls::PeerIdentityError};
use http::StatusCode;
use rand::{Rng, SeedableRng};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECOND: Duration = Duration::from_secs(1);

async fn topology(mesh: &Mesh, backend: SocketAddr) -> (TestServer, SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let app_port = outbound(mesh.pool(), mesh.key(server.addr), backend).await;
    (server, app_port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_arrive_intact_both_ways() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let (_server, app_port, mut seen) = topology(&mesh, backend).await;
    for len in [1u64, 64 * 1024, 100 * 1024 * 1024] {
        let tcp = TcpStream::connect(app_port).await.unwrap();
        let client_addr = tcp.local_addr().unwrap();
        assert_eq!(echo_check(tcp, len).await, len, "echo of {len} bytes");
        let s = seen.recv().await.unwrap();
        assert_eq!(s.peer, mesh.client, "server sees the client's verified identity");
        assert_eq!(s.authority, backend);
        assert_eq!(s.forwarded_for, Some(client_addr), "forwarded header carries the original client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_reaches_backend_and_reply_still_flows() {
    let mesh = Mesh::new();
    // Backend: read until EOF, then answer with the byte count and close.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        tcp.read_to_end(&mut all).await.unwrap();
        tcp.write_all(format!("got {}", all.len()).as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
    });
    let (_server, app_port, _seen) = topology(&mesh, backend).await;
    let mut tcp = TcpStream::connect(app_port).await.unwrap();
    tcp.write_all(&[7u8; 5000]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(5 * SECOND, tcp.read_to_string(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply, "got 5000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_half_close_reaches_client_and_requests_still_flow() {
    let mesh = Mesh::new();
    // Backend: greet and close its side first, then keep reading what the client sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        tcp.write_all(b"hello").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut all = Vec::new();
        tcp.read_to_end(&mut all).await.unwrap();
        done_tx.send(all).unwrap();
    });
    let (_server, app_port, _seen) = topology(&mesh, backend).await;
    let mut tcp = TcpStream::connect(app_port).await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(5 * SECOND, tcp.read_to_end(&mut greeting)).await.unwrap().unwrap();
    assert_eq!(greeting, b"hello", "EOF from the backend arrives as EOF");
    tcp.write_all(b"after your FIN").await.unwrap();
    tcp.shutdown().await.unwrap();
    let got = tokio::time::timeout(5 * SECOND, done_rx).await.unwrap().unwrap();
    assert_eq!(got, b"after your FIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_carried_both_ways() {
    let mesh = Mesh::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, mut backend_reads) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                tcp.read_exact(&mut first).await.unwrap();
                if first[0] == b'R' {
                    // Asked to abort: RST towards the client.
                    tcp.set_zero_linger().unwrap();
                    drop(tcp);
                    return;
                }
                let mut rest = Vec::new();
                let _ = tx.send(tcp.read_to_end(&mut rest).await.map_err(|e| e.kind()));
            });
        }
    });
    let (_server, app_port, _seen) = topology(&mesh, backend).await;

    // Client aborts: the backend must see a reset, not a clean end.
    let mut tcp = TcpStream::connect(app_port).await.unwrap();
    tcp.write_all(b"x").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tcp.set_zero_linger().unwrap();
    drop(tcp);
    let r = tokio::time::timeout(5 * SECOND, backend_reads.recv()).await.unwrap().unwrap();
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset), "client RST reaches the backend as RST");

    // Backend aborts: the client must see a reset.
    let mut tcp = TcpStream::connect(app_port).await.unwrap();
    tcp.write_all(b"R").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(5 * SECOND, tcp.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "backend RST reaches the client as RST"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_server_with_another_identity() {
    let mesh = Mesh::new();
    let impostor = id("backend", "impostor");
    mesh.server_store.insert(mesh.ca.issue(&impostor, DAY));
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, impostor.clone(), forwarder(Some(tx))).await;
    let err = mesh
        .pool()
        .connect(&mesh.key(server.addr), &ConnectTarget::new("127.0.0.1:1".parse().unwrap(), None))
        .await
        .unwrap_err();
    match err.peer_identity_error() {
        Some(PeerIdentityError::Mismatch { expected, got }) => {
            assert_eq!(got, &impostor);
            assert_eq!(expected.0, vec![mesh.server.clone()]);
        }
        other => panic!("expected an identity mismatch, got {other:?} from {err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_client_certificate_from_foreign_ca() {
    let mesh = Mesh::new();
    let foreign = TestCa::new("foreign root");
    // The client trusts the mesh (so it accepts the server) but presents a foreign certificate.
    let client_store = CertStore::new(mesh.ca.roots());
    client_store.insert(foreign.issue(&mesh.client, DAY));
    let (tx, _seen) = mpsc::unbounded_channel();
    let mut server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let pool = Pool::new(PoolConfig::default(), client_store, None);
    let res = pool.connect(&mesh.key(server.addr), &ConnectTarget::new(echo_backend().await, None)).await;
    assert!(res.is_err(), "a foreign client certificate must not get a stream");
    let outcome = server.next_outcome(5 * SECOND).await.unwrap_err();
    let text = format!("{outcome}");
    assert!(text.contains("UnknownIssuer"), "server names the reason: {text}");
}

/// A node does not present its own expired certificate: the pool fails the tunnel before
/// dialing, naming the identity and the expiry, and a server does not answer with one
/// (hbone::tls refuses the handshake). That peers refuse an expired certificate presented
/// anyway is in `tls_refusals.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_own_certificates_are_not_presented_on_either_end() {
    let mesh = Mesh::new();
    let now = SystemTime::now();
    let long_ago = now - 2 * DAY;
    let yesterday = now - DAY;

    // Expired client certificate: the pool refuses locally; the server never sees a connection.
    let client_store = CertStore::new(mesh.ca.roots());
    client_store.insert(mesh.ca.issue_between(&mesh.client, long_ago, yesterday));
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let pool = Pool::new(PoolConfig::default(), client_store, None);
    let target = ConnectTarget::new(echo_backend().await, None);
    let err = pool.connect(&mesh.key(server.addr), &target).await.unwrap_err();
    // Were the refusal the server's, it would have accepted the connection first.
    assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the server");
    match &err {
        ConnectError::NoCertificate(NoUsableCert::Expired(e)) => {
            assert_eq!(e.identity, mesh.client);
            assert!(e.not_after <= yesterday && e.not_after > yesterday - SECOND, "{e}");
        }
        other => panic!("expected a local refusal for the expired certificate, got {other:?}"),
    }
    assert!(err.to_string().contains(mesh.client.as_str()), "{err}");

    // Expired server certificate: the server does not answer with it; the client is refused.
    let server_store = CertStore::new(mesh.ca.roots());
    server_store.insert(mesh.ca.issue_between(&mesh.server, long_ago, yesterday));
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let err = mesh.pool().connect(&mesh.key(server.addr), &target).await.unwrap_err();
    assert!(
        matches!(err.rustls_error(), Some(rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied))),
        "client is refused without being shown the expired certificate: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_is_refused_quickly_and_tunnels_keep_working() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let (server, app_port, _seen) = topology(&mesh, backend).await;

    // A tunnel that stays open through the garbage.
    let mut open = TcpStream::connect(app_port).await.unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(15008);
    let mut random = vec![0u8; 4096];
    rng.fill(&mut random[..]);
    random[0] = 0x47; // Not a TLS record type, as nearly all random input is not.
    let plaintext = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n".to_vec();
    for garbage in [plaintext, random] {
        let started = tokio::time::Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let _ = tcp.write_all(&garbage).await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(SECOND, tcp.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "garbage connection closed within a second");
        assert!(!sink.starts_with(b"HTTP/"), "no HTTP answer to garbage");
        assert!(started.elapsed() < SECOND);
    }

    open.write_all(b"after!").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!", "the open tunnel still works");
    let fresh = TcpStream::connect(app_port).await.unwrap();
    assert_eq!(echo_check(fresh, 10_000).await, 10_000, "a new tunnel works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_share_two_connections() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let pool = mesh.pool();
    let key = mesh.key(server.addr);
    let mut tasks = Vec::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    for i in 0..200u32 {
        let (pool, key, barrier) = (pool.clone(), key.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = pool.connect(&key, &ConnectTarget::new(backend, None)).await.unwrap();
            // Hold every stream open until all 200 are, so they really are concurrent.
            barrier.wait().await;
            s.write_all(&i.to_be_bytes()).await.unwrap();
            let mut back = [0u8; 4];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(u32::from_be_bytes(back), i);
            s.shutdown().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(20 * SECOND, t).await.unwrap().unwrap();
    }
    let conns = server.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&conns), "200 streams used {conns} TCP connections");
    assert_eq!(pool.connection_count(), conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swap_keeps_open_streams_and_new_connections_see_it() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let (server, app_port, _seen) = topology(&mesh, backend).await;
    let mut open = TcpStream::connect(app_port).await.unwrap();
    open.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    open.read_exact(&mut buf).await.unwrap();

    let old = mesh.server_store.get(&mesh.server).unwrap();
    mesh.server_store.insert(mesh.ca.issue(&mesh.server, 2 * DAY));
    let new = mesh.server_store.get(&mesh.server).unwrap();
    assert_ne!(old.certified_key().cert[0], new.certified_key().cert[0]);

    open.write_all(b"two").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two", "a stream opened before the swap keeps working");

    // A new connection is handed the new certificate.
    let cfg = hbone::tls::client_config(
        &mesh.client_store,
        mesh.client_store.get(&mesh.client).unwrap(),
        vec![mesh.server.clone()],
    );
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls_pki_types::ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await
        .unwrap();
    let presented = &tls.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(presented, &new.certified_key().cert[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pooled_connection_does_not_strand_requests() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let pool = mesh.pool();
    let key = mesh.key(server.addr);
    for round in 0..10 {
        let mut s = pool.connect(&key, &ConnectTarget::new(backend, None)).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        drop(s);
        // Kill the server side of the pooled connection and ask again at once.
        server.kill_connections();
        let mut s = tokio::time::timeout(5 * SECOND, pool.connect(&key, &ConnectTarget::new(backend, None)))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        s.write_all(b"pong").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
    }
    assert!(server.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let (tx, _seen) = mpsc::unbounded_channel();
    let mut server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let cfg = PoolConfig { idle_timeout: Duration::from_millis(200), ..PoolConfig::default() };
    let pool = Pool::new(cfg, mesh.client_store.clone(), None);
    let mut s = pool.connect(&mesh.key(server.addr), &ConnectTarget::new(backend, None)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(pool.connection_count(), 1);
    drop(s);
    // The server sees the client close the connection once it has idled out.
    server.next_outcome(5 * SECOND).await.unwrap();
    assert_eq!(pool.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_status_and_reason() {
    let mesh = Mesh::new();
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), |req: InboundConnect| async move {
        if req.authority().port() == 1 {
            req.refuse(StatusCode::UNAUTHORIZED, "denied by policy ns/deny-all");
        }
        // Other requests are dropped unanswered: 503.
    })
    .await;
    let pool = mesh.pool();
    let key = mesh.key(server.addr);
    for (port, status, reason) in [
        (1, StatusCode::UNAUTHORIZED, "denied by policy ns/deny-all"),
        (2, StatusCode::SERVICE_UNAVAILABLE, "request was not handled"),
    ] {
        let target = ConnectTarget::new(SocketAddr::from(([10, 0, 0, 1], port)), None);
        match pool.connect(&key, &target).await.unwrap_err() {
            ConnectError::Refused { status: s, reason: r, authority, .. } => {
                assert_eq!((s, r.as_str(), authority), (status, reason, target.authority));
            }
            other => panic!("expected a refusal, got {other}"),
        }
    }
    assert_eq!(pool.connection_count(), 1, "refusals do not cost the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let mesh = Mesh::new();
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let cfg = hbone::tls::client_config(
        &mesh.client_store,
        mesh.client_store.get(&mesh.client).unwrap(),
        vec![mesh.server.clone()],
    );
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls_pki_types::ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    use hbone::tunnel::server::MalformedConnect;
    for (method, uri, reason) in [
        ("CONNECT", "backend.example:80", MalformedConnect::BadAuthority),
        ("CONNECT", "[fe80::1%2]:80", MalformedConnect::BadAuthority),
        ("GET", "http://10.0.0.1:80/", MalformedConnect::NotConnect),
    ] {
        // Process-wide counters: other tests may count too, never less.
        let before = reason.total();
        let req = http::Request::builder().method(method).uri(uri).body(()).unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{method} {uri}");
        assert!(reason.total() > before, "{method} {uri}: counted as {}", reason.as_str());
    }
}

/// A draining server closes its connection as soon as the last stream ends, so the close
/// lands right behind that stream's END_STREAM: the client must still see a clean end of every
/// byte, not a reset (each round races the close against the final frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_just_before_a_draining_server_closes_ends_cleanly() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let handler = move |req: InboundConnect| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            let tcp = TcpStream::connect(req.authority()).await.unwrap();
            let Ok(stream) = req.accept() else { return };
            hbone::tunnel::copy::copy_bidirectional(tcp, stream).await;
        }
    };
    let server = hbone::tunnel::server::Server::new(
        hbone::tls::server_config(&mesh.server_store, mesh.server.clone()),
        hbone::tunnel::H2Settings::default(),
        handler,
    );
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let (server, mut drain) = (server.clone(), drain_rx.clone());
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = drain.wait_for(|d| *d).await;
                };
                let _ = server.serve_connection_until(tcp, peer, shutdown).await;
            });
        }
    });
    for round in 0..5 {
        let _ = drain_tx.send(false);
        let app = outbound(mesh.pool(), mesh.key(addr), backend).await;
        let tcp = TcpStream::connect(app).await.unwrap();
        let check = tokio::spawn(echo_check(tcp, 200_000 + round));
        // Draining starts while the stream runs; the connection closes when it ends.
        tokio::time::timeout(5 * SECOND, started.recv()).await.unwrap();
        let _ = drain_tx.send(true);
        let echoed = tokio::time::timeout(10 * SECOND, check).await.expect("stream ended").expect("clean end");
        assert_eq!(echoed, 200_000 + round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulk_tunnels_on_one_connection_deliver_every_byte_in_order() {
    // Eight tunnels push 4 MiB each through one pooled connection and its shared window at
    // once: a copy often reads more than the window has left by the time it sends (another
    // stream took it meanwhile) and must keep the remainder until the window opens again.
    let mesh = Mesh::new();
    let (server, app_port, _seen) = topology(&mesh, echo_backend().await).await;
    const LEN: u64 = 4 * 1024 * 1024;
    let tunnels: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let tcp = TcpStream::connect(app_port).await.unwrap();
                echo_check(tcp, LEN).await
            })
        })
        .collect();
    for t in tunnels {
        let echoed = tokio::time::timeout(60 * SECOND, t).await.expect("in time").unwrap();
        assert_eq!(echoed, LEN, "every byte came back, in order");
    }
    assert_eq!(server.accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "all on one connection");
}

/// A raw HBONE server: TLS and SETTINGS, then it reads everything and answers nothing (a hung
/// peer, or one gone without a RST behind a middlebox that still acknowledges).
async fn silent_h2_server(mesh: &Mesh) -> SocketAddr {
    use support::raw_h2::{Peer, settings};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(hbone::tls::server_config(&mesh.server_store, mesh.server.clone()));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut p = Peer::over(tls);
                let _ = p.send(&settings(&[])).await;
                while p.read_more().await {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_the_peer_never_answers_fails_after_the_answer_timeout() {
    // The handshake deadline covers TCP, TLS and the preface only: without a deadline on the
    // answer, an application connection captured for a peer that went silent hung forever.
    let mesh = Mesh::new();
    let addr = silent_h2_server(&mesh).await;
    let answer_timeout = Duration::from_millis(300);
    let h2 = hbone::tunnel::H2Settings { answer_timeout, ..Default::default() };
    let pool = Pool::new(PoolConfig { h2, ..PoolConfig::default() }, mesh.client_store.clone(), None);
    let target = ConnectTarget::new("10.0.0.1:80".parse().unwrap(), None);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), pool.connect(&mesh.key(addr), &target)).await;
    let Err(e) = r.expect("the connect ends on its own") else { panic!("no answer is a failure") };
    assert!(matches!(e, ConnectError::AnswerTimeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2), "failed only after {:?}", started.elapsed());
}

/// A peer that accepts TCP and then says nothing (a node that died behind something still
/// completing TCP handshakes, or a hung proxy): every TLS handshake with it runs into the
/// handshake timeout. Returns its address and how many connections it has accepted.
async fn mute_peer() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (addr, accepted)
}

fn pool_with_handshake_timeout(mesh: &Mesh, handshake_timeout: Duration) -> Pool {
    let h2 = hbone::tunnel::H2Settings { handshake_timeout, ..Default::default() };
    Pool::new(PoolConfig { h2, ..PoolConfig::default() }, mesh.client_store.clone(), None)
}

fn spawn_connect(pool: &Pool, key: &hbone::tunnel::pool::PoolKey) -> tokio::task::JoinHandle<ConnectError> {
    let (pool, key) = (pool.clone(), key.clone());
    tokio::spawn(async move {
        let target = ConnectTarget::new("10.0.0.1:80".parse().unwrap(), None);
        match pool.connect(&key, &target).await {
            Ok(_) => panic!("a connect through a mute peer succeeded"),
            Err(e) => e,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_for_a_failing_open_share_its_failure() {
    // Callers used to queue for the right to open, each then opening (and timing out) in
    // turn: the fifth failed only after five handshake timeouts.
    let mesh = Mesh::new();
    let (addr, accepted) = mute_peer().await;
    let timeout = SECOND;
    let pool = pool_with_handshake_timeout(&mesh, timeout);
    let key = mesh.key(addr);
    let started = std::time::Instant::now();
    let callers: Vec<_> = (0..5).map(|_| spawn_connect(&pool, &key)).collect();
    for c in callers {
        let e = tokio::time::timeout(10 * SECOND, c).await.expect("the connect ends on its own").unwrap();
        assert!(matches!(e, ConnectError::HandshakeTimeout(a) if a == addr), "{e}");
    }
    let took = started.elapsed();
    assert!(took < timeout * 5 / 2, "five callers failed after {took:?}, the timeout is {timeout:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "five callers, one open");

    // A failure is not remembered: the next caller opens again.
    let e = spawn_connect(&pool, &key).await.unwrap();
    assert!(matches!(e, ConnectError::HandshakeTimeout(_)), "{e}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_open_is_taken_over_by_one_of_its_waiters() {
    let mesh = Mesh::new();
    let (addr, accepted) = mute_peer().await;
    let timeout = SECOND;
    let pool = pool_with_handshake_timeout(&mesh, timeout);
    let key = mesh.key(addr);
    let opener = spawn_connect(&pool, &key);
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the opener never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiters: Vec<_> = (0..4).map(|_| spawn_connect(&pool, &key)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The application behind the opener gives up: its connect future is dropped mid-open.
    opener.abort();
    let cancelled = std::time::Instant::now();
    for w in waiters {
        let e = tokio::time::timeout(10 * SECOND, w).await.expect("a waiter is not stranded").unwrap();
        assert!(matches!(e, ConnectError::HandshakeTimeout(_)), "{e}");
    }
    let took = cancelled.elapsed();
    assert!(took < timeout * 5 / 2, "four waiters failed {took:?} after the cancel, the timeout is {timeout:?}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "one waiter opened again for all four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_refusal_reaches_every_caller_waiting_for_the_open() {
    // The waiters get the opener's failure itself, not a description of it: the refused
    // identity can still be dug out of each one.
    let mesh = Mesh::new();
    let impostor = id("backend", "impostor");
    mesh.server_store.insert(mesh.ca.issue(&impostor, DAY));
    let (tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, impostor.clone(), forwarder(Some(tx))).await;
    // A slow TCP connect keeps the open in flight until every caller has joined it.
    let opens = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let connector: hbone::tunnel::pool::Connector = {
        let opens = opens.clone();
        std::sync::Arc::new(move |addr| {
            opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                TcpStream::connect(addr).await
            })
        })
    };
    let pool = Pool::new(PoolConfig::default(), mesh.client_store.clone(), Some(connector));
    let key = mesh.key(server.addr);
    let callers: Vec<_> = (0..5).map(|_| spawn_connect(&pool, &key)).collect();
    for c in callers {
        let err = tokio::time::timeout(10 * SECOND, c).await.expect("the connect ends").unwrap();
        match err.peer_identity_error() {
            Some(PeerIdentityError::Mismatch { got, .. }) => assert_eq!(got, &impostor),
            other => panic!("expected an identity mismatch, got {other:?} from {err}"),
        }
    }
    assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), 1, "five callers, one open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_handshake_limit_is_refused_as_overload() {
    // Two servers under one limit, as a node's pods are: a client of one that says nothing
    // holds the only turn, and the other server refuses a handshake until it is given back.
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let limit = HandshakeLimit::new(1);
    let start = || {
        let h2 = hbone::tunnel::H2Settings::default();
        TestServer::start_with(&mesh.server_store, mesh.server.clone(), h2, Some(limit.clone()), forwarder(None))
    };
    let (mut first, mut second) = (start().await, start().await);
    let silent = TcpStream::connect(first.addr).await.unwrap();
    wait_until("the silent connection takes the turn", || limit.available() == 0).await;
    let app_port = outbound(mesh.pool(), mesh.key(second.addr), backend).await;
    let mut refused = TcpStream::connect(app_port).await.unwrap();
    let _ = refused.write_all(b"hello").await;
    let mut back = Vec::new();
    let read = tokio::time::timeout(5 * SECOND, refused.read_to_end(&mut back)).await.expect("the app is let go");
    assert!(read.is_err() || back.is_empty(), "a tunnel through the refused handshake carried bytes: {back:?}");
    let e = second.next_outcome(5 * SECOND).await.unwrap_err();
    assert!(matches!(e, ServeError::Overloaded(_)), "{e}");
    assert!(e.to_string().contains("too many handshakes in progress"), "{e}");

    drop(silent);
    assert!(matches!(first.next_outcome(5 * SECOND).await.unwrap_err(), ServeError::Tls { .. }));
    assert_eq!(limit.available(), 1, "the turn is given back when the handshake ends");
    let served = TcpStream::connect(app_port).await.unwrap();
    assert_eq!(echo_check(served, 1000).await, 1000, "served once the turn is free");
    assert_eq!(limit.available(), 1, "the turn is given back once the handshake is done");
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
