//! Our HTTP/2 server end (`hbone::tunnel::server::Server`) against a hand-written raw peer over
//! mesh TLS: frames are built byte by byte here, so the peer can break every rule a real client
//! never would. Covers the handshake (preface, SETTINGS, the connection window), CONNECT,
//! DATA and PING on the happy path; and that each protocol violation gets its RFC 9113 answer
//! (GOAWAY with the right code and a reason, or RST_STREAM for one stream), ends only what it
//! must, is reported as the connection's outcome, and leaves the server serving others: a bad
//! preface, a first frame other than SETTINGS, DATA on an idle stream, both flow-control
//! windows overrun, an oversized frame, interrupted and endless header blocks, malformed
//! request heads, undecodable HPACK, the concurrent stream limit, a peer's RST_STREAM, invalid
//! SETTINGS values, the accounting of the connection window around reset and finished streams,
//! and a PING flood from a peer that never reads.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hbone::http2::Refusal;
use hbone::tunnel::H2Settings;
use hbone::tunnel::server::Server;
use support::raw_h2::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The server reports the connection as failed, naming `what`.
async fn outcome_names(server: &mut TestServer, what: &str) {
    let err = server.next_outcome(WAIT).await.expect_err("the connection's outcome is an error");
    let text = err.to_string();
    assert!(text.contains(what), "outcome {text:?} names {what:?}");
}

/// A fresh connection gets a tunnel to the echo `backend`: the server is still serving.
async fn still_serves(mesh: &Mesh, server: SocketAddr, backend: SocketAddr) {
    let mut p = Peer::start(mesh, server).await;
    p.send(&request(1, backend)).await.unwrap();
    p.expect_200(1).await;
    p.echo(1, b"still serving").await;
}

async fn forwarding_server(mesh: &Mesh) -> TestServer {
    TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(None)).await
}

/// This process's resident memory (Linux), for messages.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    kib.unwrap_or(0) / 1024
}

/// A backend on loopback that hands every connection it accepts to `serve`.
async fn backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// A backend that reads everything to EOF, then closes.
async fn discard_backend() -> SocketAddr {
    backend(|mut tcp| async move {
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_settings_connect_data_and_ping() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let server = forwarding_server(&mesh).await;
    let mut p = Peer::tls(&mesh, server.addr).await;
    p.send(&[PREFACE, &settings(&[])[..]].concat()).await.unwrap();

    let first = p.next().await.expect("server SETTINGS");
    assert_eq!((first.kind, first.flags, first.stream), (SETTINGS, 0, 0), "the server's preface is SETTINGS");
    assert_eq!(first.payload.len() % 6, 0);
    let params: Vec<(u16, u32)> = first
        .payload
        .chunks(6)
        .map(|e| (u16::from_be_bytes([e[0], e[1]]), u32::from_be_bytes([e[2], e[3], e[4], e[5]])))
        .collect();
    for want in [(INITIAL_WINDOW_SIZE, 4 * MIB as u32), (MAX_FRAME_SIZE, MIB as u32), (MAX_CONCURRENT_STREAMS, 100)] {
        assert!(params.contains(&want), "server SETTINGS {params:?} carry {want:?}");
    }
    let mut window_update = None;
    loop {
        let f = p.next().await.expect("SETTINGS ACK");
        match (f.kind, f.flags) {
            (WINDOW_UPDATE, _) if f.stream == 0 => window_update = Some(f.word()),
            (SETTINGS, ACK) => {
                assert!(f.payload.is_empty());
                break;
            }
            _ => panic!("unexpected frame in the handshake: {f:?}"),
        }
    }
    assert_eq!(window_update, Some(16 * MIB as u32 - 65_535), "the connection window is raised to 16 MiB");

    p.send(&request(1, backend)).await.unwrap();
    p.expect_200(1).await;
    p.echo(1, b"hello").await;
    p.ping(*b"8 bytes!").await;
    // END_STREAM both ways: the backend's EOF comes back as ours.
    p.send(&frame(DATA, END_STREAM, 1, b"")).await.unwrap();
    let end = p.expect("END_STREAM", |f| f.stream == 1 && f.flags & END_STREAM != 0).await;
    assert_eq!(end.kind, DATA);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_the_preface_is_closed_and_others_are_served() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::tls(&mesh, server.addr).await;
    p.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut frames = Vec::new();
    while let Some(f) = p.next().await {
        frames.push(f);
    }
    for f in &frames {
        assert!(matches!(f.kind, SETTINGS | WINDOW_UPDATE | GOAWAY), "only the server's preface and GOAWAY: {f:?}");
        if f.kind == GOAWAY {
            assert_eq!(goaway(f).code, PROTOCOL_ERROR);
        }
    }
    outcome_names(&mut server, "preface").await;
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_other_than_settings_is_a_protocol_error() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::tls(&mesh, server.addr).await;
    p.send(&[PREFACE, &frame(PING, 0, 0, &[0; 8])[..]].concat()).await.unwrap();
    let g = p.expect_goaway(PROTOCOL_ERROR).await;
    assert_eq!(g.last_stream, 0);
    outcome_names(&mut server, "PROTOCOL_ERROR").await;
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_on_an_idle_stream_is_a_protocol_error() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    p.send(&frame(DATA, 0, 5, b"who?")).await.unwrap();
    p.expect_goaway(PROTOCOL_ERROR).await;
    outcome_names(&mut server, "idle").await;
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_on_a_closed_stream_is_a_stream_closed_error() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    // Opening stream 3 closes stream 1, never used (RFC 9113 §5.1.1); HEADERS cannot open it now.
    p.send(&request(3, backend)).await.unwrap();
    p.expect_200(3).await;
    p.send(&request(1, backend)).await.unwrap();
    p.expect_goaway(STREAM_CLOSED).await;
    outcome_names(&mut server, "closed stream").await;
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_beyond_the_stream_window_resets_only_that_stream() {
    let mesh = Mesh::new();
    let (server, mut held) = holding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    p.send(&request(1, target)).await.unwrap();
    p.expect_200(1).await;
    let _stream = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
    // The whole 4 MiB stream window, which the handler never reads, then one byte more.
    p.send(&data(1, 4 * MIB)).await.unwrap();
    p.send(&frame(DATA, 0, 1, b"x")).await.unwrap();
    p.expect_rst(1, FLOW_CONTROL_ERROR).await;
    // A stream error: the connection goes on.
    p.ping(*b"still up").await;
    p.send(&request(3, target)).await.unwrap();
    p.expect_200(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_beyond_the_connection_window_is_a_connection_error() {
    let mesh = Mesh::new();
    let (mut server, mut held) = holding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut streams = Vec::new();
    for id in [1, 3, 5, 7, 9] {
        p.send(&request(id, target)).await.unwrap();
        p.expect_200(id).await;
        streams.push(tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap());
    }
    // 4 × 4 MiB: every stream's window full, and with it the 16 MiB connection window.
    for id in [1, 3, 5, 7] {
        p.send(&data(id, 4 * MIB)).await.unwrap();
    }
    let _ = p.send(&frame(DATA, 0, 9, b"x")).await;
    let g = p.expect_goaway(FLOW_CONTROL_ERROR).await;
    assert_eq!(g.last_stream, 9);
    outcome_names(&mut server, "FLOW_CONTROL_ERROR").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_larger_than_max_frame_size_is_a_frame_size_error() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    p.send(&request(1, backend)).await.unwrap();
    p.expect_200(1).await;
    // Only the head: the length alone (1 MiB + 1) must be refused, before any payload.
    let len = (MIB as u32 + 1).to_be_bytes();
    p.send(&[len[1], len[2], len[3], DATA, 0, 0, 0, 0, 1]).await.unwrap();
    let g = p.expect_goaway(FRAME_SIZE_ERROR).await;
    assert_eq!(g.last_stream, 1);
    outcome_names(&mut server, "FRAME_SIZE_ERROR").await;
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_header_block_is_a_protocol_error() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let block = connect_block(backend);
    p.send(&frame(HEADERS, 0, 1, &block[..5])).await.unwrap();
    p.send(&frame(PING, 0, 0, &[1; 8])).await.unwrap();
    p.expect_goaway(PROTOCOL_ERROR).await;
    outcome_names(&mut server, "interrupted").await;
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_continuation_is_refused_with_enhance_your_calm() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    // CONTINUATION flood: a header block that never ends, 16 KiB at a time (the server keeps
    // at most 256 KiB of one block).
    p.send(&frame(HEADERS, 0, 1, &literal(":method", "CONNECT"))).await.unwrap();
    let filler = [0x3a; CHUNK];
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let _ = p.send(&flood).await;
    p.expect_goaway(ENHANCE_YOUR_CALM).await;
    outcome_names(&mut server, "ENHANCE_YOUR_CALM").await;
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_heads_reset_only_their_stream() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let with_path = [connect_block(backend), literal(":path", "/")].concat();
    p.send(&frame(HEADERS, END_HEADERS, 1, &with_path)).await.unwrap();
    p.expect_rst(1, PROTOCOL_ERROR).await;
    let upper_case = [connect_block(backend), literal("X-Upper", "1")].concat();
    p.send(&frame(HEADERS, END_HEADERS, 3, &upper_case)).await.unwrap();
    p.expect_rst(3, PROTOCOL_ERROR).await;
    let pseudo_after_regular = [literal("x-first", "1"), connect_block(backend)].concat();
    p.send(&frame(HEADERS, END_HEADERS, 5, &pseudo_after_regular)).await.unwrap();
    p.expect_rst(5, PROTOCOL_ERROR).await;
    // The connection and its HPACK state are intact.
    p.send(&request(7, backend)).await.unwrap();
    p.expect_200(7).await;
    p.echo(7, b"after three bad heads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_hpack_is_a_compression_error() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    for (what, block) in [
        ("integer overflow", &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..]),
        ("index 0", &[0x80][..]),
        ("truncated string", &[0x00, 0x07, b':', b'm'][..]),
    ] {
        let mut p = Peer::start(&mesh, server.addr).await;
        p.send(&frame(HEADERS, END_HEADERS, 1, block)).await.unwrap();
        let g = tokio::time::timeout(2 * WAIT, p.expect_goaway(COMPRESSION_ERROR)).await;
        assert!(g.is_ok(), "{what}: GOAWAY in time");
        outcome_names(&mut server, "COMPRESSION_ERROR").await;
    }
    still_serves(&mesh, server.addr, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused_until_one_closes() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let counted = Refusal::ConcurrencyLimit.total();
    let mut burst = Vec::new();
    for i in 0..101u32 {
        burst.extend(request(1 + 2 * i, backend));
    }
    p.send(&burst).await.unwrap();
    let (mut answered, mut refused) = (0, false);
    while answered < 100 || !refused {
        let f = p.expect("responses", |f| matches!(f.kind, HEADERS | RST_STREAM)).await;
        match (f.kind, f.stream) {
            (HEADERS, 1..=199) => {
                assert!(is_200(&f.payload), "stream {}: {:02x?}", f.stream, f.payload);
                answered += 1;
            }
            (RST_STREAM, 201) => {
                assert_eq!(f.word(), REFUSED_STREAM, "the 101st stream is refused");
                assert!(Refusal::ConcurrencyLimit.total() > counted, "the refusal is counted by its reason");
                refused = true;
            }
            _ => panic!("unexpected {f:?}"),
        }
    }
    p.send(&rst(1, CANCEL)).await.unwrap();
    p.send(&request(203, backend)).await.unwrap();
    p.expect_200(203).await;
    p.echo(203, b"room again").await;
    p.echo(199, b"the others still run").await;
}

/// Opens `count` streams from `first` on and waits for all their 200s, then resets them all.
async fn open_answered_and_reset(p: &mut Peer, first: u32, count: u32, target: SocketAddr) {
    let ids: Vec<u32> = (0..count).map(|i| first + 2 * i).collect();
    p.send(&ids.iter().flat_map(|&id| request(id, target)).collect::<Vec<_>>()).await.unwrap();
    for _ in &ids {
        let f = p.expect("responses", |f| matches!(f.kind, HEADERS | RST_STREAM)).await;
        assert!(f.kind == HEADERS && is_200(&f.payload), "stream {} answered: {f:?}", f.stream);
    }
    p.send(&ids.iter().flat_map(|&id| rst(id, CANCEL)).collect::<Vec<_>>()).await.unwrap();
}

// A reset closes the stream for the peer, but the handler keeps its work until it lets go;
// without a bound, a peer resetting each stream once answered keeps unbounded work in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_after_accept_count_while_their_handlers_hold_them() {
    let mesh = Mesh::new();
    let (server, mut held) = holding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // The limit is 100: two limits' worth of answered-then-reset streams fit, the peer
    // believing each time that none is open.
    open_answered_and_reset(&mut p, 1, 100, target).await;
    open_answered_and_reset(&mut p, 201, 100, target).await;
    let counted = Refusal::ResetStreamsHeld.total();
    p.send(&request(401, target)).await.unwrap();
    p.expect_rst(401, REFUSED_STREAM).await;
    assert!(Refusal::ResetStreamsHeld.total() > counted, "the refusal is counted by its reason");
    p.ping(*b"still up").await;
    // The handlers let go: room again.
    for _ in 0..200 {
        drop(tokio::time::timeout(WAIT, held.recv()).await.expect("every answered stream reached the handler"));
    }
    p.send(&request(403, target)).await.unwrap();
    p.expect_200(403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reset_of_a_tunnel_resets_the_backend_connection() {
    let mesh = Mesh::new();
    let echo = echo_backend().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (got_first, first_seen) = oneshot::channel();
    let (report, seen) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 1];
        tcp.read_exact(&mut first).await.unwrap();
        got_first.send(()).unwrap();
        let mut rest = Vec::new();
        let _ = report.send(tcp.read_to_end(&mut rest).await.map_err(|e| e.kind()));
    });
    let server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    p.send(&request(1, backend)).await.unwrap();
    p.expect_200(1).await;
    p.send(&frame(DATA, 0, 1, b"x")).await.unwrap();
    tokio::time::timeout(WAIT, first_seen).await.unwrap().unwrap();
    p.send(&rst(1, CANCEL)).await.unwrap();
    let r = tokio::time::timeout(WAIT, seen).await.expect("the backend connection ends").unwrap();
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset), "the peer's RST_STREAM reaches the backend as RST");
    p.send(&request(3, echo)).await.unwrap();
    p.expect_200(3).await;
    p.echo(3, b"next").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_values_are_connection_errors() {
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    for (param, value, code) in [
        (INITIAL_WINDOW_SIZE, 1u32 << 31, FLOW_CONTROL_ERROR),
        (MAX_FRAME_SIZE, 100, PROTOCOL_ERROR),
        (MAX_FRAME_SIZE, 1 << 24, PROTOCOL_ERROR),
    ] {
        let mut p = Peer::start(&mesh, server.addr).await;
        p.send(&settings(&[(param, value)])).await.unwrap();
        p.expect_goaway(code).await;
        outcome_names(&mut server, "SETTINGS_").await;
    }
    still_serves(&mesh, server.addr, backend).await;
}

/// RFC 9113 §6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 is a FLOW_CONTROL_ERROR, in the
/// client's preface SETTINGS too; the reason must not claim the frame is not SETTINGS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_value_in_the_preface_settings_gets_its_own_error() {
    let mesh = Mesh::new();
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::tls(&mesh, server.addr).await;
    p.send(&[PREFACE, &settings(&[(INITIAL_WINDOW_SIZE, 1 << 31)])[..]].concat()).await.unwrap();
    let g = p.expect_goaway(FLOW_CONTROL_ERROR).await;
    assert!(g.debug.contains("INITIAL_WINDOW_SIZE"), "reason: {:?}", g.debug);
    outcome_names(&mut server, "INITIAL_WINDOW_SIZE").await;
}

/// Bytes buffered on a stream that is then reset are discarded; they must still be credited back
/// to the connection window, or every such reset shrinks it for good and the connection
/// eventually stalls for all its streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_discarded_by_a_reset_is_credited_to_the_connection() {
    let mesh = Mesh::new();
    let (server, mut held) = holding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for id in [1, 3, 5, 7] {
        p.send(&request(id, target)).await.unwrap();
        p.expect_200(id).await;
        let stream = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
        // A full stream window the handler never reads, then we give up on the stream and the
        // handler lets go of it.
        p.send(&data(id, 4 * MIB)).await.unwrap();
        p.send(&rst(id, CANCEL)).await.unwrap();
        p.ping(*b"reset in").await;
        drop(stream);
    }
    // All 16 MiB of the connection window went to streams that are gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.credit == 0 && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout_at(deadline, p.read_frame()).await;
    }
    assert!(p.credit > 0, "no WINDOW_UPDATE on stream 0 after 16 MiB were discarded: the connection is stalled");
    // And the server agrees the window is open again: a new stream may send.
    p.send(&request(9, target)).await.unwrap();
    p.expect_200(9).await;
    p.send(&frame(DATA, 0, 9, b"x")).await.unwrap();
    p.ping(*b"flowing!").await;
}

/// The connection window is credited (WINDOW_UPDATE on stream 0) at most for bytes received: a
/// receiver that credits more lets the peer buffer beyond its limit, and drives the peer's send
/// window towards the 2^31-1 a compliant peer treats as a FLOW_CONTROL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_window_is_never_credited_beyond_what_was_received() {
    let mesh = Mesh::new();
    let backend = discard_backend().await;
    let server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let mut sent = 0u64;
    for i in 0..10u32 {
        let id = 1 + 2 * i;
        p.send(&request(id, backend)).await.unwrap();
        p.expect_200(id).await;
        // 1 MiB: under half the stream window, so no stream WINDOW_UPDATE is due for it.
        p.send(&data(id, MIB)).await.unwrap();
        p.send(&frame(DATA, END_STREAM, id, b"")).await.unwrap();
        sent += MIB as u64;
        p.expect("the backend's EOF", |f| f.stream == id && f.flags & END_STREAM != 0).await;
    }
    // Late WINDOW_UPDATEs (the stream handles drop just after their END_STREAM went out).
    p.ping(*b"the end.").await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async { while p.read_frame().await.is_some() {} }).await;
    assert!(p.credit <= sent, "the server credited {} bytes to the connection for {sent} received", p.credit);
}

/// A peer that sends PINGs and never reads makes the server queue a PING ACK for each: the
/// server must bound that (stop reading from the peer, or close the connection), not buffer
/// without end. 48 MiB of PINGs is far beyond what the loopback socket buffers of both ends hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_from_a_peer_that_never_reads_is_bounded() {
    let mesh = Mesh::new();
    let server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let burst: Vec<u8> = (0..MIB / 17).flat_map(|_| frame(PING, 0, 0, &[7; 8])).collect();
    let flood = async {
        for _ in 0..48 {
            if p.tls.write_all(&burst).await.is_err() {
                return false;
            }
        }
        true
    };
    let before = rss_mib();
    let all_taken = tokio::time::timeout(4 * WAIT, flood).await.unwrap_or(false);
    let after = rss_mib();
    assert!(
        !all_taken,
        "the server took 48 MiB of PINGs from a peer that read none of the ACKs (process RSS {before} -> {after} MiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_after_end_stream_is_a_stream_closed_error() {
    // RFC 9113 §5.1, half-closed (remote): only WINDOW_UPDATE, PRIORITY and RST_STREAM may
    // follow END_STREAM; anything else is a stream error of type STREAM_CLOSED.
    let mesh = Mesh::new();
    let (server, mut held) = holding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    p.send(&request(1, target)).await.unwrap();
    p.expect_200(1).await;
    let _stream = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
    let after_end = frame(HEADERS, END_STREAM | END_HEADERS, 1, &literal("x-after-end", "1"));
    p.send(&[frame(DATA, END_STREAM, 1, b"last"), after_end].concat()).await.unwrap();
    p.expect_rst(1, STREAM_CLOSED).await;
    p.ping(*b"after-es").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_that_does_not_abort_a_waiting_stream_is_not_counted_as_a_rapid_reset() {
    // RST_STREAM(NO_ERROR) after END_STREAM leaves the request readable, so the stream is still
    // served: counted as reset before it was served, the count was never taken back, and the
    // 21st such stream on a connection closed it with ENHANCE_YOUR_CALM.
    let mesh = Mesh::new();
    let (server, _held) = holding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for i in 0..30u32 {
        let id = 1 + 2 * i;
        let opened = frame(HEADERS, END_STREAM | END_HEADERS, id, &connect_block(target));
        p.send(&[opened, rst(id, NO_ERROR), rst(id, NO_ERROR)].concat()).await.unwrap();
        // One at a time: served before the next opens. `ping` fails on a GOAWAY.
        p.ping(*b"one more").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_error_on_an_idle_stream_is_a_connection_error() {
    // RFC 9113 §5.1: on an idle stream only HEADERS and PRIORITY may come, and §6.4: no
    // RST_STREAM for an idle stream. A WINDOW_UPDATE of 0 is otherwise a stream error.
    let mesh = Mesh::new();
    let backend = echo_backend().await;
    let mut server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    p.send(&frame(WINDOW_UPDATE, 0, 5, &0u32.to_be_bytes())).await.unwrap();
    p.expect_goaway(PROTOCOL_ERROR).await;
    outcome_names(&mut server, "WINDOW_UPDATE").await;
    still_serves(&mesh, server.addr, backend).await;
}

/// A backend that resets (RST) every connection shortly after it is accepted.
async fn resetting_backend() -> SocketAddr {
    backend(|tcp| async move {
        // Not at once: a reset that beats the tunnel's connect makes the connect fail.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tcp.set_zero_linger();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_failed_tunnel_took_are_credited_to_the_connection() {
    // RFC 9113 §6.9: the connection window must come back for every byte received and no
    // longer held. A tunnel whose socket fails while its copy holds DATA it took (not yet
    // released) used to drop it uncredited: 16 such streams took the whole 16 MiB window,
    // and the connection stalled for every stream. The peer's initial window of 0 keeps the
    // socket→tunnel half from reading, so the tunnel→socket half meets the backend's reset.
    let mesh = Mesh::new();
    let backend = resetting_backend().await;
    let server = forwarding_server(&mesh).await;
    let mut p = Peer::start(&mesh, server.addr).await;
    p.send(&settings(&[(INITIAL_WINDOW_SIZE, 0)])).await.unwrap();
    p.expect("SETTINGS ACK", |f| f.kind == SETTINGS && f.flags == ACK).await;
    let chunk = vec![0x5a; MIB];
    let mut sent = 0u64;
    for i in 0..16u32 {
        let id = 1 + 2 * i;
        p.send(&request(id, backend)).await.unwrap();
        p.expect_200(id).await;
        // The backend's reset comes first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.send(&frame(DATA, 0, id, &chunk)).await.unwrap();
        sent += chunk.len() as u64;
        p.expect_rst(id, CONNECT_ERROR).await;
    }
    // Each stream's credit is announced once its handle is gone, which may follow its reset.
    let deadline = tokio::time::Instant::now() + WAIT;
    while p.credit < sent && tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), p.read_frame()).await;
    }
    // At most half the window (8 MiB) may be received and not yet announced.
    let outstanding = sent - p.credit;
    assert!(
        outstanding < 8 * MIB as u64,
        "{} MiB received on streams that are all gone were never credited back ({} credited of {sent})",
        outstanding / MIB as u64,
        p.credit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_cross_our_reset_are_ignored() {
    // RFC 9113 §5.1, closed: frames received after sending RST_STREAM are ignored, as the peer
    // may have sent them first. Trailers crossing a handler's reset closed the connection.
    let mesh = Mesh::new();
    let (_server, mut p, target) = stream_1_answered_then_reset(&mesh).await;
    let trailers = frame(HEADERS, END_STREAM | END_HEADERS, 1, &literal("x-trailer", "1"));
    p.send(&[frame(DATA, 0, 1, b"late"), trailers].concat()).await.unwrap();
    p.ping(*b"ignored?").await;
    // And no answer of any kind for stream 1.
    p.send(&request(3, target)).await.unwrap();
    let f = p.expect("stream 3's answer", |f| f.stream != 0).await;
    assert_eq!((f.kind, f.stream), (HEADERS, 3), "the first stream frame after the late ones: {f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_on_a_stream_we_reset_or_refused_get_no_second_reset() {
    // RFC 9113 §5.1, closed: frames on a stream after our RST_STREAM are ignored, broken ones
    // too, and the peer may take a RST_STREAM on a closed stream for a connection error. A
    // PRIORITY of the wrong size or a WINDOW_UPDATE of 0 there drew a second RST_STREAM
    // (found by the http2_connection fuzz target).
    let mesh = Mesh::new();
    let (_server, mut p, target) = stream_1_answered_then_reset(&mesh).await;
    let with_path = [connect_block(target), literal(":path", "/")].concat();
    p.send(&frame(HEADERS, END_HEADERS, 3, &with_path)).await.unwrap();
    p.expect_rst(3, PROTOCOL_ERROR).await;
    for stream in [1, 3] {
        p.send(&frame(PRIORITY, 0, stream, b"")).await.unwrap();
        p.send(&frame(WINDOW_UPDATE, 0, stream, &0u32.to_be_bytes())).await.unwrap();
    }
    p.send(&request(5, target)).await.unwrap();
    let f = p.expect("a stream's frame", |f| f.stream != 0).await;
    assert_eq!((f.kind, f.stream), (HEADERS, 5), "the first stream frame after the broken ones: {f:?}");
}

/// A peer whose stream 1 the server answered (200) and then reset (CANCEL: its handler let
/// go of it); the server is held while the first value is.
async fn stream_1_answered_then_reset(mesh: &Mesh) -> (TestServer, Peer, SocketAddr) {
    let (server, mut held) = holding_server(mesh).await;
    let mut p = Peer::start(mesh, server.addr).await;
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    p.send(&request(1, target)).await.unwrap();
    p.expect_200(1).await;
    let stream = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
    drop(stream);
    p.expect_rst(1, CANCEL).await;
    (server, p, target)
}

/// An HBONE server forwarding to backends, with `settings` (`TestServer` has the defaults).
async fn server_with(mesh: &Mesh, settings: H2Settings) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = hbone::tls::server_config(&mesh.server_store, mesh.server.clone());
    let server = Server::new(tls, settings, forwarder(None));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let server = server.clone();
            tokio::spawn(async move {
                let _ = server.serve_connection(tcp, peer).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_pinged_then_dropped_and_an_answering_one_kept() {
    // Nothing else bounds a connection after its handshake: a peer that vanished without a RST
    // (or a flow a NAT dropped) held it and its streams forever. After `keepalive` of silence
    // a PING asks; after as long again without a byte, the connection closes (Istio's ztunnel:
    // PING every 10 s, 20 s to answer).
    let mesh = Mesh::new();
    let keepalive = Duration::from_millis(300);
    let addr = server_with(&mesh, H2Settings { keepalive, ..H2Settings::default() }).await;
    let mut silent = Peer::start(&mesh, addr).await;
    let started = std::time::Instant::now();
    let ping = silent.expect("a PING", |f| f.kind == PING && f.flags == 0).await;
    assert!(started.elapsed() >= keepalive, "pinged after {:?}", started.elapsed());
    assert_eq!(ping.stream, 0);
    assert!(silent.closed().await, "the silent peer's connection is closed");
    assert!(started.elapsed() < 10 * keepalive, "closed only after {:?}", started.elapsed());
    // A peer that answers each PING stays connected well past two intervals.
    let mut answering = Peer::start(&mesh, addr).await;
    let until = std::time::Instant::now() + 6 * keepalive;
    while std::time::Instant::now() < until {
        let f = answering.expect("a PING", |f| f.kind == PING && f.flags == 0).await;
        let payload: [u8; 8] = f.payload.try_into().unwrap();
        answering.send(&frame(PING, ACK, 0, &payload)).await.unwrap();
    }
    answering.ping(*b"still up").await;
}
