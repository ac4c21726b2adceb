//! The HTTP/2 connection itself driven by arbitrary peer bytes ([`http2_connection`]): its
//! streams' states, flow control, SETTINGS, RST_STREAM and GOAWAY handling and HPACK across
//! frames, where `http2_frames` checks only how single frames parse.
//!
//! The connection runs as in production but without TLS (`Connection::plain`), over a Unix
//! socket pair standing in for TCP: the calls the connection makes on its socket (read,
//! write, shutdown, readiness) are the same, and there is no handshake or randomness per run.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::panic::resume_unwind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::task::{JoinError, JoinSet};

use crate::http2::frame::{self, Frame, HEAD_LEN, Head, setting};
use crate::http2::hpack::Decoder;
use crate::http2::{ConnError, Connection, ErrorCode, Held, Limits, Stream};
use crate::tunnel::H2Settings;
use crate::tunnel::copy::copy_bidirectional;
use crate::tunnel::server::{send_refusal, validate};
use crate::tunnel::stream::H2Stream;

/// One connection, served (or, as a client, used) while a peer sends the input and then
/// closes: the first two bytes choose the end, the limits and what is done with each stream
/// (see [`Setup`]); the rest is what the peer sends, after the client preface for a server.
///
/// Checked: nothing panics, the connection's tasks included; the connection and every task
/// serving its streams end once the peer has closed (or, if it goes silent, once the
/// keepalive gives up on it), within a poll budget that grows with the input; received bytes
/// held stay within the windows this end advertised; and what the connection sends parses as
/// HTTP/2 this end would accept, keeps to the peer's limits (frame size, flow-control windows
/// the peer granted) and to the stream states (no DATA before HEADERS or after END_STREAM or
/// RST_STREAM, one RST_STREAM per stream, GOAWAY's last stream never rising, nothing after a
/// GOAWAY for an error), and its header blocks decode to a response head (or, from a client,
/// a CONNECT).
pub fn http2_connection(data: &[u8]) {
    let Some((setup, input)) = Setup::read(data) else { return };
    let mut sent = Vec::with_capacity(frame::PREFACE.len() + HEAD_LEN + input.len());
    if setup.server {
        sent.extend_from_slice(frame::PREFACE);
    }
    if setup.settings_first {
        frame::put_settings(&mut sent, &[]);
    }
    sent.extend_from_slice(input);
    let allowance = Allowance::read(&sent[if setup.server { frame::PREFACE.len() } else { 0 }..]);
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(setup.idle).build().expect("a runtime");
    let written = rt.block_on(run(setup, sent, allowance.clone()));
    drop(rt);
    check_written(&setup, &allowance, &written);
}

/// How an input is run, from its first two bytes.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// This end is the server (the input is a client's); otherwise the client.
    server: bool,
    /// An empty SETTINGS goes before the input (the preface's second half), so that inputs
    /// need not start with one.
    settings_first: bool,
    /// The peer's bytes are written in pieces of this size, other tasks running between.
    chunk: usize,
    /// Which [`Setup::limits`].
    limits: u8,
    /// What is done with the first stream; the next ones take the next behaviours.
    behaviour: usize,
    /// The peer goes silent after its input instead of closing: time is virtual, and the
    /// keepalive must end the connection.
    idle: bool,
    /// This end closes the connection once the input is written.
    close: bool,
    /// Server: GOAWAY (graceful) once the first stream is accepted.
    go_away: bool,
    /// Client: streams opened.
    requests: usize,
}

impl Setup {
    fn read(data: &[u8]) -> Option<(Setup, &[u8])> {
        let (&[a, b], rest) = data.split_first_chunk::<2>()?;
        let setup = Setup {
            server: a & 1 == 0,
            settings_first: a & 2 != 0,
            chunk: [usize::MAX, 7, 61, 512][usize::from(a >> 2 & 3)],
            limits: a >> 4 & 3,
            behaviour: usize::from(a >> 6),
            idle: b & 1 != 0,
            close: b & 2 != 0,
            go_away: b & 4 != 0,
            requests: usize::from(b >> 3 & 3) + 1,
        };
        Some((setup, rest))
    }

    /// The tunnel's own settings, or small and odd ones that bring the limits within reach.
    fn limits(&self) -> Limits {
        // Never while a peer sends; only a silent one is pinged and dropped.
        let keepalive = Duration::from_secs(if self.idle { 10 } else { 3600 });
        let small =
            |stream_window, connection_window, max_frame_size, max_concurrent_streams, max_header_list_size| Limits {
                stream_window,
                connection_window,
                max_frame_size,
                max_concurrent_streams,
                max_header_list_size,
                keepalive,
            };
        match self.limits {
            0 => Limits { keepalive, ..H2Settings::default().limits() },
            1 => small(1, 0, 16_384, 1, 128),
            2 => small(65_535, 65_535, 16_384, 4, 4096),
            _ => small(1000, 100_000, 20_000, 2, 1 << 16),
        }
    }
}

/// Runs the connection and returns what it wrote.
async fn run(setup: Setup, sent: Vec<u8>, allowance: Allowance) -> Vec<u8> {
    let budget = Budget::new(sent.len());
    let limits = setup.limits();
    let (ours, theirs) = socket_pair();
    let (conn, driver) = Connection::plain(ours, limits.clone(), setup.server).expect("a connection");
    let mut driver = tokio::spawn(budget.count(driver));
    let (mut their_read, their_write) = theirs.into_split();
    let reader = tokio::spawn(budget.count(async move {
        let mut written = Vec::new();
        let _ = their_read.read_to_end(&mut written).await;
        written
    }));
    let streams = tokio::spawn(budget.count(streams(conn.clone(), setup, budget.clone())));
    let fed = feed(their_write, sent, setup.chunk, conn.clone(), limits.clone(), allowance);
    let mut feeder = tokio::spawn(budget.count(fed));
    let (mut their_write, mut ended) = (None, None);
    tokio::select! {
        w = &mut feeder => their_write = Some(join(w)),
        e = &mut driver => ended = Some(join(e)),
    }
    if ended.is_some() {
        // The connection is gone; what was not written never will be.
        feeder.abort();
        their_write = match feeder.await {
            Err(e) if e.is_cancelled() => None,
            r => Some(join(r)),
        };
    }
    if setup.close {
        conn.close();
    }
    if !setup.idle
        && let Some(w) = &mut their_write
    {
        let _ = w.shutdown().await;
    }
    // Real time: nothing in a run waits for a timer. Virtual time when idle: the keepalive
    // pings after 10 s and gives up after 20 s.
    let limit = Duration::from_secs(if setup.idle { 600 } else { 10 });
    let written = tokio::time::timeout(limit, async {
        let end = match ended {
            Some(end) => end,
            None => join(driver.await),
        };
        assert!(setup.idle || !matches!(*end, ConnError::Silent(_)), "{end}");
        join(streams.await);
        join(reader.await)
    })
    .await
    .expect("the connection and its streams end once the peer has closed or gone silent");
    check_held(conn.held(), &limits, usize::MAX);
    drop(their_write);
    written
}

/// Writes the peer's bytes, checking what the connection holds after each piece. Returns the
/// writing half, still open.
async fn feed(
    mut w: OwnedWriteHalf,
    sent: Vec<u8>,
    chunk: usize,
    conn: Connection,
    limits: Limits,
    allowance: Allowance,
) -> OwnedWriteHalf {
    let mut fed = 0;
    for piece in sent.chunks(chunk) {
        if w.write_all(piece).await.is_err() {
            break;
        }
        fed += piece.len();
        tokio::task::yield_now().await;
        let held = conn.held();
        check_held(held, &limits, fed);
        // Answers to what was fed (acks, resets, refusals, response heads) and the DATA the
        // peer allowed, not yet taken by the socket.
        let answers = 64 * 1024 + 16 * fed as u64 + allowance.conn_credit.min(1 << 30);
        assert!(held.staged as u64 <= answers, "{held:?} after {fed} bytes");
    }
    w
}

/// What the connection holds, against the windows it advertised.
fn check_held(held: Held, limits: &Limits, fed: usize) {
    let window = limits.connection_window.max(frame::DEFAULT_WINDOW) as usize;
    assert!(held.queued <= window, "{held:?}: more received bytes held than the connection's window");
    assert!(held.queued_max <= limits.stream_window as usize, "{held:?}: more held for a stream than its window");
    assert!(held.partial <= fed, "{held:?}");
}

/// Server: accepts streams as the tunnel's server does and serves each on a task. Client:
/// opens `requests` streams. Returns once every stream's task has ended.
async fn streams(conn: Connection, setup: Setup, budget: Budget) {
    let mut tasks = JoinSet::new();
    if setup.server {
        let mut behaviour = setup.behaviour;
        while let Some(Ok((stream, head))) = conn.accept().await {
            if setup.go_away {
                conn.go_away();
            }
            match validate(&head) {
                Ok(_) => tasks.spawn(budget.count(serve(stream, behaviour, budget.clone()))),
                Err(reason) => {
                    send_refusal(stream, StatusCode::BAD_REQUEST, reason.message());
                    continue;
                }
            };
            behaviour += 1;
        }
        // As the tunnel's server does when serving ends, however it ends.
        conn.close();
    } else {
        for i in 0..setup.requests {
            tasks.spawn(budget.count(request(conn.clone(), setup.behaviour + i, budget.clone())));
        }
    }
    while let Some(r) = tasks.join_next().await {
        join(r);
    }
}

/// What a server does with one CONNECT.
async fn serve(stream: Stream, behaviour: usize, budget: Budget) {
    match behaviour % 6 {
        b @ 0..3 => {
            if stream.respond(StatusCode::OK, &[], false).is_ok() {
                tunnel(H2Stream::new(stream, None), b, budget).await;
            }
        }
        3 => send_refusal(stream, StatusCode::SERVICE_UNAVAILABLE, "request was not handled"),
        // Answered, then dropped: a reset.
        4 => {
            let _ = stream.respond(StatusCode::OK, &[], false);
        }
        _ => {
            if stream.respond(StatusCode::NO_CONTENT, &[], true).is_ok() {
                let mut h2 = H2Stream::new(stream, None);
                let _ = h2.read_to_end(&mut Vec::new()).await;
            }
        }
    }
}

/// What a client does with one stream.
async fn request(conn: Connection, behaviour: usize, budget: Budget) {
    let fields: &[(&[u8], &[u8])] = &[(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")];
    if let Ok((stream, head)) = conn.request(fields).await
        && head.status.is_success()
    {
        tunnel(H2Stream::new(stream, None), behaviour % 3, budget).await;
    }
}

/// A tunnel's bytes copied to and from an application as the tunnel copies them: one that
/// echoes (0), one that sends more than a default window and reads to the end (1), or one
/// that is gone at once (2).
async fn tunnel(stream: H2Stream, app: usize, budget: Budget) {
    /// What the long-winded application sends.
    const LONG: usize = 70_000;
    let (tcp, theirs) = socket_pair();
    let app = budget.count(async move {
        let (mut rd, mut wr) = theirs.into_split();
        match app {
            0 => {
                let mut buf = vec![0; 16 * 1024];
                while let Ok(n @ 1..) = rd.read(&mut buf).await {
                    if wr.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            }
            1 => {
                let send = async {
                    let _ = wr.write_all(&[0x5a; LONG]).await;
                    let _ = wr.shutdown().await;
                };
                let mut received = Vec::new();
                let _ = tokio::join!(send, rd.read_to_end(&mut received));
            }
            _ => {}
        }
    });
    tokio::join!(copy_bidirectional(tcp, stream), app);
}

/// A Unix socket pair standing in for TCP (see the module's documentation).
fn socket_pair() -> (TcpStream, TcpStream) {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    let tcp = |s: std::os::unix::net::UnixStream| {
        s.set_nonblocking(true).expect("non-blocking");
        TcpStream::from_std(std::net::TcpStream::from(OwnedFd::from(s))).expect("registered")
    };
    (tcp(a), tcp(b))
}

/// A task's output, or its panic, resumed here.
fn join<T>(r: Result<T, JoinError>) -> T {
    r.unwrap_or_else(|e| match e.try_into_panic() {
        Ok(panic) => resume_unwind(panic),
        Err(e) => panic!("{e}"),
    })
}

/// Polls left to every task of a run together: more than the input calls for is a busy loop
/// (a hang that time does not end, as time does not pass while tasks run).
#[derive(Clone)]
struct Budget(Arc<AtomicUsize>);

impl Budget {
    /// Polls per byte of input, and for any input.
    const PER_BYTE: usize = 64;
    const BASE: usize = 20_000;

    fn new(input: usize) -> Self {
        Budget(Arc::new(AtomicUsize::new(Self::BASE + Self::PER_BYTE * input)))
    }

    fn count<F: Future + Send + 'static>(&self, f: F) -> impl Future<Output = F::Output> + Send + 'static {
        let left = self.0.clone();
        let mut f = Box::pin(f);
        std::future::poll_fn(move |cx| {
            let spent = left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            assert!(spent.is_ok(), "the run's tasks were polled more times than its input calls for");
            f.as_mut().poll(cx)
        })
    }
}

/// What the peer's frames let this end send, read from all of them: an upper bound, since
/// the connection may stop reading earlier.
#[derive(Debug, Clone)]
struct Allowance {
    /// SETTINGS_MAX_FRAME_SIZE: the largest the peer set, or the default.
    max_frame: u32,
    /// DATA on the whole connection: the default window and every increment.
    conn_credit: u64,
    /// A stream's initial window: the largest the peer set, or the default.
    initial_window: u64,
    /// Increments per stream.
    stream_credit: HashMap<u32, u64>,
    /// SETTINGS frames to acknowledge.
    settings: usize,
    /// PINGs to answer.
    pings: usize,
    /// The highest stream the peer opened (or tried to).
    last_stream: u32,
}

impl Allowance {
    fn read(mut sent: &[u8]) -> Allowance {
        let default = u64::from(frame::DEFAULT_WINDOW);
        let mut a = Allowance {
            max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            conn_credit: default,
            initial_window: default,
            stream_credit: HashMap::new(),
            settings: 0,
            pings: 0,
            last_stream: 0,
        };
        while let Some((head, rest)) = sent.split_first_chunk::<HEAD_LEN>() {
            let head = Head::parse(head);
            let Some(payload) = rest.get(..head.len as usize) else { break };
            sent = &rest[head.len as usize..];
            match frame::parse(&head, payload) {
                Ok(Frame::Settings { ack: false, params }) => {
                    a.settings += 1;
                    for (id, value) in frame::settings_entries(params) {
                        match id {
                            setting::MAX_FRAME_SIZE => a.max_frame = a.max_frame.max(value),
                            setting::INITIAL_WINDOW_SIZE => a.initial_window = a.initial_window.max(value.into()),
                            _ => {}
                        }
                    }
                }
                Ok(Frame::Ping { ack: false, .. }) => a.pings += 1,
                Ok(Frame::WindowUpdate { stream: 0, increment }) => a.conn_credit += u64::from(increment),
                Ok(Frame::WindowUpdate { stream, increment }) => {
                    *a.stream_credit.entry(stream).or_default() += u64::from(increment);
                }
                Ok(Frame::Headers { stream, .. }) => a.last_stream = a.last_stream.max(stream),
                _ => {}
            }
        }
        a
    }
}

/// What this end sent on one stream.
#[derive(Debug, Default)]
struct Sent {
    head: bool,
    end_stream: bool,
    reset: bool,
    data: u64,
}

/// What the connection wrote, read as its peer would, against what the peer allowed.
fn check_written(setup: &Setup, allowance: &Allowance, written: &[u8]) {
    let mut out = written;
    if !setup.server {
        let Some(rest) = out.strip_prefix(&frame::PREFACE[..]) else {
            assert!(frame::PREFACE.starts_with(out), "a client starts with the preface: {written:02x?}");
            return;
        };
        out = rest;
    }
    let mut decoder = Decoder::new(4096);
    let mut streams: HashMap<u32, Sent> = HashMap::new();
    let (mut first, mut conn_data, mut acks, mut pongs, mut last_opened) = (true, 0u64, 0, 0, 0);
    let mut block: Option<(u32, Vec<u8>)> = None;
    let mut goaway: Option<(u32, ErrorCode)> = None;
    // A last frame the connection's end cut short is left unread.
    while let Some((head, rest)) = out.split_first_chunk::<HEAD_LEN>() {
        let head = Head::parse(head);
        let Some(payload) = rest.get(..head.len as usize) else { break };
        out = &rest[head.len as usize..];
        assert!(head.len <= allowance.max_frame, "{head:?} is larger than the peer allows");
        let f = frame::parse(&head, payload).unwrap_or_else(|e| panic!("sent {head:?}, which we refuse: {e}"));
        if let Some((_, code)) = goaway {
            assert!(code == ErrorCode::NO_ERROR, "{head:?} after GOAWAY({code})");
        }
        if std::mem::take(&mut first) {
            assert!(matches!(f, Frame::Settings { ack: false, .. }), "the first frame is not SETTINGS: {head:?}");
        } else {
            assert!(!matches!(f, Frame::Settings { ack: false, .. }), "SETTINGS again");
        }
        if let Some((id, _)) = &block {
            assert!(matches!(f, Frame::Continuation { stream, .. } if stream == *id), "header block cut by {head:?}");
        }
        match f {
            Frame::Headers { stream, end_stream, end_headers, block: b } => {
                if setup.server {
                    assert!(stream % 2 == 1 && stream <= allowance.last_stream, "HEADERS on {stream}");
                } else {
                    assert!(stream % 2 == 1 && stream > last_opened, "HEADERS on {stream} after {last_opened}");
                    last_opened = stream;
                }
                let s = streams.entry(stream).or_default();
                assert!(!s.head && !s.reset, "second HEADERS on {stream}: {s:?}");
                (s.head, s.end_stream) = (true, end_stream);
                block = Some((stream, b.to_vec()));
                if end_headers {
                    check_head(setup, &mut decoder, block.take().expect("just set"));
                }
            }
            Frame::Continuation { end_headers, block: b, .. } => {
                block.as_mut().expect("checked above").1.extend_from_slice(b);
                if end_headers {
                    check_head(setup, &mut decoder, block.take().expect("checked above"));
                }
            }
            Frame::Data { stream, end_stream, flow_len, .. } => {
                let s = streams.entry(stream).or_default();
                assert!(s.head && !s.end_stream && !s.reset, "DATA on {stream}: {s:?}");
                s.data += u64::from(flow_len);
                s.end_stream = end_stream;
                conn_data += u64::from(flow_len);
                let window = allowance.initial_window + allowance.stream_credit.get(&stream).copied().unwrap_or(0);
                assert!(s.data <= window, "DATA beyond the window the peer gave {stream}: {s:?}");
                assert!(conn_data <= allowance.conn_credit, "DATA beyond the connection's window: {conn_data}");
            }
            Frame::RstStream { stream, .. } => {
                let s = streams.entry(stream).or_default();
                assert!(!s.reset, "RST_STREAM twice on {stream}");
                s.reset = true;
            }
            Frame::WindowUpdate { stream: 0, .. } => {}
            Frame::WindowUpdate { stream, .. } => {
                assert!(!streams.get(&stream).is_some_and(|s| s.reset), "WINDOW_UPDATE on {stream} after RST_STREAM");
            }
            Frame::Settings { ack: true, .. } => {
                acks += 1;
                assert!(acks <= allowance.settings, "more SETTINGS acks than SETTINGS");
            }
            Frame::Settings { ack: false, .. } => {}
            Frame::Ping { ack: true, .. } => {
                pongs += 1;
                assert!(pongs <= allowance.pings, "more PING acks than PINGs");
            }
            Frame::Ping { ack: false, .. } => {}
            Frame::GoAway { last_stream, code, .. } => {
                if let Some((before, _)) = goaway {
                    assert!(last_stream <= before, "GOAWAY's last stream rose from {before} to {last_stream}");
                }
                assert!(!setup.server || last_stream <= allowance.last_stream, "GOAWAY names {last_stream}");
                goaway = Some((last_stream, code));
            }
            Frame::Priority { .. } | Frame::Unknown => panic!("sent {head:?}"),
        }
    }
}

/// A header block this end sent decodes, to a response head from a server and a CONNECT
/// from a client.
fn check_head(setup: &Setup, decoder: &mut Decoder, (stream, block): (u32, Vec<u8>)) {
    let fields = decoder.decode(&block, usize::MAX).unwrap_or_else(|e| panic!("our block on {stream}: {e}"));
    let first = fields.first().map(|f| (&f.name[..], &f.value[..]));
    if setup.server {
        let status = first.filter(|(name, _)| *name == b":status").map(|(_, v)| v);
        assert!(status.is_some_and(|s| StatusCode::from_bytes(s).is_ok()), "{fields:?}");
    } else {
        assert_eq!(first, Some((&b":method"[..], &b"CONNECT"[..])), "{fields:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::replay;
    use crate::http2::frame::{flag, kind};
    use crate::http2::hpack::Encoder;

    /// Mutations per test run: each is a whole connection, so far fewer than the parsers'.
    const MUTATIONS: usize = 4_000;

    #[test]
    fn http2_connections() {
        let tokens: &[&[u8]] = &[
            b"\x00\x00\x00",
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x01",
            b"\x00\x00\x04\x03\x00\x00\x00\x00\x01",
            b"\x00\x00\x00\x00\x01\x00\x00\x00\x01",
            b"\x01\x04\x00\x00\x00",
            b"\x7f\xff\xff\xff",
            b"\x00\x00\x00\x03",
            b"\x00\x04",
        ];
        replay("http2_connection", seeds().into_iter().map(|(_, s)| s).collect(), tokens, MUTATIONS, http2_connection);
    }

    /// Writes [`seeds`] to `fuzz/corpus/http2_connection/`, the committed seed corpus.
    #[test]
    #[ignore = "writes the committed corpus; run by hand after changing the seeds"]
    fn write_http2_connection_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/http2_connection");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, seed) in seeds() {
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }

    /// A peer's side of one conversation: the two bytes of its [`Setup`], then frames.
    struct Peer {
        bytes: Vec<u8>,
        hpack: Encoder,
    }

    impl Peer {
        fn new(setup: [u8; 2]) -> Self {
            Peer { bytes: setup.to_vec(), hpack: Encoder::new() }
        }

        fn frame(mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Self {
            frame::put_head(&mut self.bytes, payload.len(), kind, flags, stream);
            self.bytes.extend_from_slice(payload);
            self
        }

        fn settings(mut self, params: &[(u16, u32)]) -> Self {
            frame::put_settings(&mut self.bytes, params);
            self
        }

        /// A header block, in HEADERS and CONTINUATIONs of at most `max` bytes.
        fn headers(mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool, max: usize) -> Self {
            let mut block = Vec::new();
            self.hpack.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), &mut block);
            frame::put_headers(&mut self.bytes, stream, &block, end_stream, max);
            self
        }

        fn connect(self, stream: u32) -> Self {
            self.headers(stream, &[(":method", "CONNECT"), (":authority", "10.0.0.1:80")], false, 1 << 14)
        }

        fn status(self, stream: u32, status: &str, end_stream: bool) -> Self {
            self.headers(stream, &[(":status", status)], end_stream, 1 << 14)
        }

        fn data(self, stream: u32, data: &[u8], end_stream: bool) -> Self {
            self.frame(kind::DATA, if end_stream { flag::END_STREAM } else { 0 }, stream, data)
        }

        fn window_update(mut self, stream: u32, increment: u32) -> Self {
            frame::put_window_update(&mut self.bytes, stream, increment);
            self
        }

        fn rst(mut self, stream: u32, code: ErrorCode) -> Self {
            frame::put_rst_stream(&mut self.bytes, stream, code);
            self
        }

        fn ping(mut self) -> Self {
            frame::put_ping(&mut self.bytes, *b"fuzzping");
            self
        }

        fn goaway(mut self, last_stream: u32, code: ErrorCode) -> Self {
            frame::put_goaway(&mut self.bytes, last_stream, code, b"bye");
            self
        }
    }

    /// Conversations that get past the preface and SETTINGS into streams, each ending
    /// differently (the first byte's low bit picks the client's side), and the inputs of what
    /// fuzzing found, by name.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        use ErrorCode as E;
        use setting::{INITIAL_WINDOW_SIZE, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE};
        let echo = |setup| Peer::new(setup).settings(&[]).connect(1).data(1, b"hello", false).data(1, b"", true);
        let ack = |p: Peer| p.frame(kind::SETTINGS, flag::ACK, 0, b"");
        // PINGs, so that what follows comes in another read (pieces of 61 bytes) and the
        // tasks serving streams run in between.
        let pause = |mut p: Peer| {
            for _ in 0..8 {
                p = p.ping();
            }
            p
        };
        let mut padded = vec![4];
        padded.extend_from_slice(b"pad?\0\0\0\0");
        let mut rapid = Peer::new([0, 4]).settings(&[]);
        for id in (1..60).step_by(2) {
            rapid = rapid.connect(id).rst(id, E::CANCEL);
        }
        let get = [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "a")];
        let big = "x".repeat(200);
        let zero = 0u32.to_be_bytes();
        let seeds = [
            ("server_echo", echo([0x00, 0x00])),
            ("server_echo_in_pieces_of_7", echo([0x04, 0x00])),
            ("server_echo_then_silent", echo([0x00, 0x01])),
            ("server_echo_then_local_close", echo([0x0a, 0x02])),
            ("server_echo_graceful_goaway", echo([0x08, 0x04])),
            (
                "server_long_answer_within_windows",
                ack(Peer::new([0x40, 0x00]).settings(&[(INITIAL_WINDOW_SIZE, 1000), (MAX_FRAME_SIZE, 20_000)]))
                    .connect(1)
                    .window_update(0, 100_000)
                    .window_update(1, 100_000)
                    .data(1, &[b'x'; 100], true)
                    .ping(),
            ),
            (
                "server_streams_continuation_padding_refusal_reset_goaway",
                Peer::new([0x22, 0x00])
                    .headers(1, &[(":method", "CONNECT"), (":authority", "10.0.0.1:80")], false, 7)
                    .connect(3)
                    .connect(5)
                    .frame(kind::DATA, flag::PADDED, 1, &padded)
                    .frame(kind::PRIORITY, 0, 3, &[0, 0, 0, 1, 16])
                    .headers(7, &get, true, 1 << 14)
                    .rst(3, E::CANCEL)
                    .data(5, b"bye", true)
                    .goaway(7, E::NO_ERROR),
            ),
            ("server_rapid_reset", rapid),
            (
                "server_small_limits_window_streams_header_list",
                Peer::new([0x10, 0x00]).settings(&[]).connect(1).data(1, b"hi", false).connect(3).headers(
                    5,
                    &[(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("x", &big)],
                    false,
                    1 << 14,
                ),
            ),
            ("server_data_on_idle_stream", Peer::new([0x30, 0x00]).settings(&[]).connect(1).data(9, b"?", false)),
            (
                "client_answered_and_refused",
                Peer::new([0x01, 0x08])
                    .settings(&[])
                    .status(1, "200", false)
                    .data(1, b"hi", true)
                    .status(3, "503", true)
                    .ping(),
            ),
            (
                "client_long_upload_within_windows_then_goaway",
                ack(Peer::new([0x41, 0x10]).settings(&[(MAX_CONCURRENT_STREAMS, 1), (INITIAL_WINDOW_SIZE, 100_000)]))
                    .status(1, "200", false)
                    .window_update(0, 200_000)
                    .window_update(1, 1000)
                    .data(1, b"ok", true)
                    .goaway(1, E::NO_ERROR),
            ),
            (
                "client_informational_answer_trailers_reset",
                Peer::new([0x03, 0x08])
                    .status(1, "100", false)
                    .status(1, "200", false)
                    .data(1, b"body", false)
                    .headers(1, &[("grpc-status", "0")], true, 1 << 14)
                    .status(3, "200", false)
                    .rst(3, E::REFUSED_STREAM),
            ),
            // Found: a stream error on a stream already reset (here refused past the limit of
            // 1) drew a second RST_STREAM.
            (
                "found_second_rst_for_a_stream_error_after_our_reset",
                Peer::new([0x10, 0x00])
                    .settings(&[])
                    .connect(1)
                    .connect(3)
                    .frame(kind::WINDOW_UPDATE, 0, 3, &zero)
                    .frame(kind::PRIORITY, 0, 3, b""),
            ),
            // Found: a client reset a stream for a malformed response head, and reset it again
            // for the next head.
            (
                "found_client_second_rst_for_a_second_bad_head",
                Peer::new([0x03, 0x00]).status(1, "1xx", false).status(1, "2xx", false),
            ),
            // Found: after a graceful GOAWAY naming stream 1, stream 3 was refused, and the GOAWAY
            // for a later protocol error named 3.
            (
                "found_goaway_last_stream_rose",
                pause(pause(Peer::new([0x08, 0x04]).settings(&[]).connect(1)).connect(3)).data(9, b"?", false),
            ),
        ];
        seeds.into_iter().map(|(name, p)| (name, p.bytes)).collect()
    }
}
