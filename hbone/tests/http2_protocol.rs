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

use hbone::http2::refusals::protocol_errors;
use hbone::http2::{ErrorCode, Refusal};
use hbone::tunnel::server::{Handler, InboundConnect};
use hbone::tunnel::stream::H2Stream;
use rustls_pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The longest wait for any one answer: a hang fails the test instead of blocking it.
const WAIT: Duration = Duration::from_secs(5);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MIB: usize = 1 << 20;
/// The largest frame payload every peer must accept; what the raw peer sends DATA in.
const CHUNK: usize = 16_384;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
// Settings.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;
// Error codes (§7).
const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> =
        params.iter().flat_map(|(id, v)| [&id.to_be_bytes()[..], &v.to_be_bytes()].concat()).collect();
    frame(SETTINGS, 0, 0, &payload)
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// DATA frames carrying `len` bytes on `stream`, at most [`CHUNK`] each.
fn data(stream: u32, len: usize) -> Vec<u8> {
    let chunk = [0x5a; CHUNK];
    let mut out = Vec::with_capacity(len + len.div_ceil(CHUNK) * 9);
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        out.extend(frame(DATA, 0, stream, &chunk[..n]));
        left -= n;
    }
    out
}

/// HPACK literal without indexing, new name (RFC 7541 §6.2.2), short name and value.
fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

fn connect_block(authority: SocketAddr) -> Vec<u8> {
    [literal(":method", "CONNECT"), literal(":authority", &authority.to_string())].concat()
}

/// HEADERS opening `stream` with a CONNECT to `authority`.
fn request(stream: u32, authority: SocketAddr) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, stream, &connect_block(authority))
}

/// The block our server sends for a bare 200: static entry 8 (0x88), after a dynamic table
/// size update to 0 (0x20) in the connection's first block.
fn is_200(block: &[u8]) -> bool {
    block.strip_prefix(&[0x20]).unwrap_or(block) == [0x88]
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The first four payload bytes (RST_STREAM's code, WINDOW_UPDATE's increment).
    fn word(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap()) & 0x7fff_ffff
    }
}

#[derive(Debug)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
}

/// The raw client: TLS and bytes, nothing else.
struct Peer {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
    /// Sum of WINDOW_UPDATE increments on stream 0 read since the handshake.
    credit: u64,
    /// The process's protocol-error counters, by code, before this peer connected.
    errors_before: Vec<u64>,
}

impl Peer {
    /// Mesh TLS to `addr`, no HTTP/2 yet.
    async fn tls(mesh: &Mesh, addr: SocketAddr) -> Peer {
        let cfg = hbone::tls::client_config(
            &mesh.client_store,
            mesh.client_store.get(&mesh.client).unwrap(),
            vec![mesh.server.clone()],
        );
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connect = TlsConnector::from(cfg).connect(ServerName::IpAddress(addr.ip().into()), tcp);
        let errors_before = (0..ErrorCode::DEFINED as u32).map(|c| protocol_errors(ErrorCode(c))).collect();
        let tls = tokio::time::timeout(WAIT, connect).await.expect("TLS in time").unwrap();
        Peer { tls, buf: Vec::new(), credit: 0, errors_before }
    }

    /// TLS, preface and an empty SETTINGS, through the server's SETTINGS and its ACK of ours.
    async fn start(mesh: &Mesh, addr: SocketAddr) -> Peer {
        let mut p = Peer::tls(mesh, addr).await;
        p.send(&[PREFACE, &settings(&[])[..]].concat()).await.unwrap();
        let first = p.next().await.expect("server SETTINGS");
        assert_eq!((first.kind, first.flags), (SETTINGS, 0), "the server's first frame is SETTINGS");
        p.expect("SETTINGS ACK", |f| f.kind == SETTINGS && f.flags == ACK).await;
        p.credit = 0;
        p
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let write = async {
            self.tls.write_all(bytes).await?;
            self.tls.flush().await
        };
        tokio::time::timeout(6 * WAIT, write).await.expect("the server takes what we send")
    }

    /// The next frame; `None` once the connection ended (EOF or error). Panics after [`WAIT`].
    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.read_frame()).await.expect("the server answered in time")
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let b = &self.buf;
                    let f = Frame {
                        kind: b[3],
                        flags: b[4],
                        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
                        payload: b[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.kind == WINDOW_UPDATE && f.stream == 0 {
                        self.credit += u64::from(f.word());
                    }
                    return Some(f);
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Skips frames up to the first that `want` matches; panics if the connection ends first.
    async fn expect(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            match self.next().await {
                Some(f) if want(&f) => return f,
                Some(f) if f.kind == GOAWAY => panic!("GOAWAY while waiting for {what}: {:?}", goaway(&f)),
                Some(_) => {}
                None => panic!("connection closed while waiting for {what}"),
            }
        }
    }

    /// GOAWAY with `code` and a reason, after which the server closes the connection.
    async fn expect_goaway(&mut self, code: u32) -> GoAway {
        let g = loop {
            match self.next().await {
                Some(f) if f.kind == GOAWAY => break goaway(&f),
                Some(_) => {}
                None => panic!("connection closed without GOAWAY (wanted code {code})"),
            }
        };
        assert_eq!(g.code, code, "GOAWAY code: {g:?}");
        assert!(!g.debug.is_empty(), "GOAWAY carries the reason");
        let counted = protocol_errors(ErrorCode(code));
        assert!(counted > self.errors_before[code as usize], "the close is counted under {}", ErrorCode(code));
        assert!(self.closed().await, "the connection closes after GOAWAY");
        g
    }

    /// Reads to the end of the connection: true if it ended within [`WAIT`] of the last frame.
    async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.read_frame()).await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The response head on `stream`, which must be a bare 200.
    async fn expect_200(&mut self, stream: u32) {
        let f = self.expect("response", |f| f.stream == stream && matches!(f.kind, HEADERS | RST_STREAM)).await;
        assert_eq!(f.kind, HEADERS, "stream {stream} answered, not reset (code {})", f.word());
        assert!(is_200(&f.payload), "stream {stream}: not a bare 200: {:02x?}", f.payload);
    }

    /// RST_STREAM on `stream`, with `code`.
    async fn expect_rst(&mut self, stream: u32, code: u32) {
        let f = self.expect("RST_STREAM", |f| f.stream == stream && matches!(f.kind, HEADERS | RST_STREAM)).await;
        assert_eq!(f.kind, RST_STREAM, "stream {stream} reset, not answered");
        assert_eq!(f.word(), code, "stream {stream}: RST_STREAM code");
    }

    /// Sends `bytes` on `stream` and reads them back (the stream goes to an echo backend).
    async fn echo(&mut self, stream: u32, bytes: &[u8]) {
        self.send(&frame(DATA, 0, stream, bytes)).await.unwrap();
        let mut got = Vec::new();
        while got.len() < bytes.len() {
            let f = self.expect("echoed DATA", |f| f.stream == stream && matches!(f.kind, DATA | RST_STREAM)).await;
            assert_eq!(f.kind, DATA, "stream {stream} reset while echoing");
            got.extend_from_slice(&f.payload);
        }
        assert_eq!(got, bytes, "the echo on stream {stream}");
    }

    /// PING and its ACK: the connection is alive and its frames are read.
    async fn ping(&mut self, opaque: [u8; 8]) {
        self.send(&frame(PING, 0, 0, &opaque)).await.unwrap();
        let ack = self.expect("PING ACK", |f| f.kind == PING && f.flags == ACK).await;
        assert_eq!(ack.payload, opaque, "the PING ACK echoes the opaque data");
    }
}

fn goaway(f: &Frame) -> GoAway {
    let p = &f.payload;
    assert!(p.len() >= 8, "GOAWAY payload of {} bytes", p.len());
    GoAway {
        last_stream: u32::from_be_bytes(p[..4].try_into().unwrap()) & 0x7fff_ffff,
        code: u32::from_be_bytes(p[4..8].try_into().unwrap()),
        debug: String::from_utf8_lossy(&p[8..]).into_owned(),
    }
}

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

/// A handler that answers 200 and hands each stream to the test unread, so what the peer sends
/// stays buffered against the windows.
fn holder() -> (impl Handler, mpsc::UnboundedReceiver<H2Stream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |req: InboundConnect| {
        let tx = tx.clone();
        async move {
            if let Ok(s) = req.accept() {
                let _ = tx.send(s);
            }
        }
    };
    (handler, rx)
}

/// A server whose handler answers 200 and hands each stream to the test (see [`holder`]).
async fn holding_server(mesh: &Mesh) -> (TestServer, mpsc::UnboundedReceiver<H2Stream>) {
    let (handler, held) = holder();
    (TestServer::start(&mesh.server_store, mesh.server.clone(), handler).await, held)
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

/// A backend that reads everything to EOF, then closes.
async fn discard_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tcp.read_to_end(&mut sink).await;
            });
        }
    });
    addr
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
