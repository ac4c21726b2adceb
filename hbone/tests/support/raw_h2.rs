//! A raw HTTP/2 end for tests: frames built byte by byte, so it can break every rule a real
//! peer never would, and read back one by one. Shared by the protocol tests of our server and
//! of our client.

use std::net::SocketAddr;
use std::time::Duration;

use hbone::http2::refusals::protocol_errors;
use hbone::http2::{Connection, ErrorCode, Limits};
use hbone::tunnel::server::{Handler, InboundConnect};
use hbone::tunnel::stream::H2Stream;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::*;

/// The longest wait for any one answer: a hang fails the test instead of blocking it.
pub const WAIT: Duration = Duration::from_secs(5);
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const MIB: usize = 1 << 20;
/// The largest frame payload every peer must accept; what the raw peer sends DATA in.
pub const CHUNK: usize = 16_384;

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
// Settings.
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;
// Error codes (§7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const CONNECT_ERROR: u32 = 0xa;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> =
        params.iter().flat_map(|(id, v)| [&id.to_be_bytes()[..], &v.to_be_bytes()].concat()).collect();
    frame(SETTINGS, 0, 0, &payload)
}

pub fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// DATA frames carrying `len` bytes on `stream`, at most [`CHUNK`] each.
pub fn data(stream: u32, len: usize) -> Vec<u8> {
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
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

pub fn connect_block(authority: SocketAddr) -> Vec<u8> {
    [literal(":method", "CONNECT"), literal(":authority", &authority.to_string())].concat()
}

/// HEADERS opening `stream` with a CONNECT to `authority`.
pub fn request(stream: u32, authority: SocketAddr) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, stream, &connect_block(authority))
}

/// The block our server sends for a bare 200: static entry 8 (0x88), after a dynamic table
/// size update to 0 (0x20) in the connection's first block.
pub fn is_200(block: &[u8]) -> bool {
    block.strip_prefix(&[0x20]).unwrap_or(block) == [0x88]
}

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The first four payload bytes (RST_STREAM's code, WINDOW_UPDATE's increment).
    pub fn word(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().unwrap()) & 0x7fff_ffff
    }
}

#[derive(Debug)]
pub struct GoAway {
    pub last_stream: u32,
    pub code: u32,
    pub debug: String,
}

/// A raw HTTP/2 end over mesh TLS, client (the default) or server: bytes, nothing else.
pub struct Peer<S = TlsStream<TcpStream>> {
    pub tls: S,
    pub buf: Vec<u8>,
    /// Sum of WINDOW_UPDATE increments on stream 0 read since the handshake.
    pub credit: u64,
    /// The process's protocol-error counters, by code, before this peer connected.
    pub errors_before: Vec<u64>,
}

impl Peer {
    /// Mesh TLS to `addr`, no HTTP/2 yet.
    pub async fn tls(mesh: &Mesh, addr: SocketAddr) -> Peer {
        let cfg = hbone::tls::client_config(
            &mesh.client_store,
            mesh.client_store.get(&mesh.client).unwrap(),
            vec![mesh.server.clone()],
        );
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connect = TlsConnector::from(cfg).connect(ServerName::IpAddress(addr.ip().into()), tcp);
        let errors_before = protocol_error_counts();
        let tls = tokio::time::timeout(WAIT, connect).await.expect("TLS in time").unwrap();
        Peer { tls, buf: Vec::new(), credit: 0, errors_before }
    }

    /// TLS, preface and an empty SETTINGS, through the server's SETTINGS and its ACK of ours.
    pub async fn start(mesh: &Mesh, addr: SocketAddr) -> Peer {
        let mut p = Peer::tls(mesh, addr).await;
        p.send(&[PREFACE, &settings(&[])[..]].concat()).await.unwrap();
        let first = p.next().await.expect("server SETTINGS");
        assert_eq!((first.kind, first.flags), (SETTINGS, 0), "the server's first frame is SETTINGS");
        p.expect("SETTINGS ACK", |f| f.kind == SETTINGS && f.flags == ACK).await;
        p.credit = 0;
        p
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// A peer over an established TLS stream (of either end).
    pub fn over(tls: S) -> Self {
        Peer { tls, buf: Vec::new(), credit: 0, errors_before: protocol_error_counts() }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let write = async {
            self.tls.write_all(bytes).await?;
            self.tls.flush().await
        };
        tokio::time::timeout(6 * WAIT, write).await.expect("the other end takes what we send")
    }

    /// The next frame; `None` once the connection ended (EOF or error). Panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.read_frame()).await.expect("the other end answered in time")
    }

    pub async fn read_frame(&mut self) -> Option<Frame> {
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
            if !self.read_more().await {
                return None;
            }
        }
    }

    /// One read into the buffer; false once the connection ended (EOF or error).
    pub async fn read_more(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match self.tls.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Skips frames up to the first that `want` matches; panics if the connection ends first.
    pub async fn expect(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
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
    pub async fn expect_goaway(&mut self, code: u32) -> GoAway {
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
    pub async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.read_frame()).await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The response head on `stream`, which must be a bare 200.
    pub async fn expect_200(&mut self, stream: u32) {
        let f = self.expect("response", |f| f.stream == stream && matches!(f.kind, HEADERS | RST_STREAM)).await;
        assert_eq!(f.kind, HEADERS, "stream {stream} answered, not reset (code {})", f.word());
        assert!(is_200(&f.payload), "stream {stream}: not a bare 200: {:02x?}", f.payload);
    }

    /// RST_STREAM on `stream`, with `code`.
    pub async fn expect_rst(&mut self, stream: u32, code: u32) {
        let f = self.expect("RST_STREAM", |f| f.stream == stream && matches!(f.kind, HEADERS | RST_STREAM)).await;
        assert_eq!(f.kind, RST_STREAM, "stream {stream} reset, not answered");
        assert_eq!(f.word(), code, "stream {stream}: RST_STREAM code");
    }

    /// Sends `bytes` on `stream` and reads them back (the stream goes to an echo backend).
    pub async fn echo(&mut self, stream: u32, bytes: &[u8]) {
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
    pub async fn ping(&mut self, opaque: [u8; 8]) {
        self.send(&frame(PING, 0, 0, &opaque)).await.unwrap();
        let ack = self.expect("PING ACK", |f| f.kind == PING && f.flags == ACK).await;
        assert_eq!(ack.payload, opaque, "the PING ACK echoes the opaque data");
    }
}

/// This process's protocol-error counters, by code.
fn protocol_error_counts() -> Vec<u64> {
    (0..ErrorCode::DEFINED as u32).map(|c| protocol_errors(ErrorCode(c))).collect()
}

pub fn goaway(f: &Frame) -> GoAway {
    let p = &f.payload;
    assert!(p.len() >= 8, "GOAWAY payload of {} bytes", p.len());
    GoAway {
        last_stream: u32::from_be_bytes(p[..4].try_into().unwrap()) & 0x7fff_ffff,
        code: u32::from_be_bytes(p[4..8].try_into().unwrap()),
        debug: String::from_utf8_lossy(&p[8..]).into_owned(),
    }
}

/// A handler that answers 200 and hands each stream to the test unread, so what the peer sends
/// stays buffered against the windows.
pub fn holder() -> (impl Handler, mpsc::UnboundedReceiver<H2Stream>) {
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
pub async fn holding_server(mesh: &Mesh) -> (TestServer, mpsc::UnboundedReceiver<H2Stream>) {
    let (handler, held) = holder();
    (TestServer::start(&mesh.server_store, mesh.server.clone(), handler).await, held)
}

/// Our client's `Connection` to `server` on mesh TLS (through whatever listens at `addr`).
pub async fn our_connection(mesh: &Mesh, addr: SocketAddr) -> Connection {
    let cert = mesh.client_store.get(&mesh.client).unwrap();
    let tls = hbone::tls::client_config(&mesh.client_store, cert, vec![mesh.server.clone()]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(tls).connect(ServerName::IpAddress(addr.ip().into()), tcp).await.unwrap();
    let (tcp, tls) = tls.into_inner();
    let limits = Limits {
        stream_window: 1 << 20,
        connection_window: 1 << 22,
        max_frame_size: 1 << 14,
        max_concurrent_streams: 100,
        max_header_list_size: 1 << 16,
        keepalive: Duration::from_secs(10),
    };
    let (conn, driver) = Connection::client(tcp, tls, limits).unwrap();
    tokio::spawn(driver);
    conn
}

/// A CONNECT request head for our client's `Connection::request`.
pub const CONNECT_HEAD: [(&[u8], &[u8]); 2] = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")];
