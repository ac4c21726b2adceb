//! One HTTP/2 connection over TLS, either end, and the streams on it.
//!
//! There is no connection task between a stream and the socket: a stream writes its frames
//! straight into TLS under the connection's lock, so sending costs no task hand-off and no
//! queue. A small send is only staged, and the driver flushes it when it next runs: sends made
//! by tasks that one event woke then leave in one TLS record (see [`COALESCE_MAX`]). One
//! driver task per connection reads TLS, applies what arrives (flow control, settings, pings,
//! new streams) and wakes the stream a frame is for. It also flushes TLS output that a full
//! socket held back, so a writer never waits on the socket itself.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpStream as StdTcp;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::frame::{self, ErrorCode, Frame, FrameError, Head, flag, kind, setting};
use super::head::{self, RequestHead, ResponseHead};
use super::hpack::{Decoder, Encoder};
use super::refusals::Refusal;
use super::session::Session;
use super::stream_ids::StreamIds;

/// Limits this end advertises and enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// SETTINGS_INITIAL_WINDOW_SIZE: how much each stream may receive ahead of its reader.
    pub stream_window: u32,
    /// The connection's receive window (raised from the default with a WINDOW_UPDATE).
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (enforced on streams the peer opens).
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: u32,
    /// When nothing has come from the peer for this long, a PING asks; when nothing comes for
    /// as long again, the peer is taken for gone and the connection closed (a peer that
    /// vanished without a RST, a flow a NAT dropped, would otherwise hold it and its streams
    /// forever).
    pub keepalive: std::time::Duration,
}

/// Largest header block (all of HEADERS and its CONTINUATIONs) kept while it arrives.
const MAX_BLOCK: usize = 256 * 1024;
/// Streams reset by the peer while waiting to be served, at most, before the connection is
/// closed with ENHANCE_YOUR_CALM.
const MAX_RESET_BEFORE_ACCEPT: usize = 20;
/// How long a closed connection keeps reading what the peer still sends (see `linger`).
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// DATA frames one `send` writes at most.
const MAX_FRAMES_PER_SEND: usize = 16;
/// Answers staged while the peer does not read us, at most, before the driver stops reading
/// the peer too. It keeps reading while its own output waits: two ends that each send more
/// than the sockets between them hold (bulk both ways on streams whose windows add up past
/// the socket buffers) would otherwise each wait for the other to read, forever. But every
/// frame may call for an answer (PING, SETTINGS), and a peer that sends without reading
/// must not make those pile up.
const MAX_ANSWERS_WHILE_BLOCKED: usize = 64 * 1024;
/// Driver wake-ups handled in a row before it lets other tasks run.
const READS_PER_PASS: usize = 16;
/// Staged output up to which a small send is left for the driver to flush. Streams woken by
/// one event (requests arriving together on several connections) then share one TLS record
/// and one system call, and the peer one read; a lone send costs a task poll more, no syscall.
const COALESCE_MAX: usize = 16 * 1024;
/// Capacity of the connection's read buffer kept while it holds nothing.
const READ_BUFFER_KEPT: usize = 64 * 1024;
/// Streams reset by this end that are remembered, so that a HEADERS frame the peer sent before
/// it saw the reset (trailers, a response) is ignored rather than taken for a protocol error
/// on a closed stream. Older ones fall back to that error, as RFC 9113 §5.1 allows.
const RESETS_REMEMBERED: usize = 32;
/// Received bytes queued for a stream are appended to its last queued buffer up to this size;
/// a larger frame gets a buffer of its own size.
const QUEUE_CHUNK: usize = 16 * 1024;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// TLS failed (bad record, alert).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer broke the protocol; we sent GOAWAY with the code.
    #[error("peer broke HTTP/2: {0}")]
    Protocol(FrameError),
    /// The peer sent GOAWAY with an error.
    #[error("peer sent GOAWAY {code}: {debug}")]
    GoAway {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's debug text.
        debug: String,
    },
    /// The peer closed the connection.
    #[error("closed by the peer")]
    Eof,
    /// Nothing came from the peer for two keepalive intervals, a PING included.
    #[error("peer silent for {0:?}, PING unanswered")]
    Silent(std::time::Duration),
    /// This end closed it.
    #[error("closed")]
    Local,
}

/// Why a stream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The peer reset the stream (RST_STREAM).
    #[error("stream reset by the peer: {0}")]
    Reset(ErrorCode),
    /// We reset the stream because the peer broke the rules for it.
    #[error("stream reset: {0}")]
    Malformed(&'static str),
    /// The stream was not processed by the peer (REFUSED_STREAM, or past its GOAWAY), or could
    /// not be opened here: it is safe to try again on another connection.
    #[error("stream refused: {0}")]
    Refused(&'static str),
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Connection(Arc<ConnError>),
}

impl Error {
    /// True when the failure is the connection's, not this stream's.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Connection(_))
    }
}

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

/// The socket and everything under the lock.
struct Shared {
    sock: AsyncFd<StdTcp>,
    /// Bytes read from the peer so far (see [`keep_alive`]).
    heard: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    /// Wakes the driver: output held back, or the connection is closing.
    driver: Notify,
    role: Role,
    limits: Limits,
}

struct Peer {
    initial_window: u32,
    max_frame: u32,
    max_concurrent: u32,
}

/// A stream as the connection sees it.
struct Slot {
    /// Received bytes not yet taken, copied out of the connection's read buffer (a slice of it
    /// would keep the whole buffer alive: many tiny frames on a slow stream could then pin
    /// far more memory than the window they count against). Small frames are appended to the
    /// last entry while it has room, so the queue costs about what it holds.
    queue: VecDeque<BytesMut>,
    /// How receiving ended: `Ok` at END_STREAM.
    end: Option<Result<(), Error>>,
    /// Client: the response head, once it came.
    response: Option<Result<ResponseHead, Error>>,
    got_head: bool,
    recv_window: i64,
    unreleased: u32,
    /// Bytes `poll_data` handed out that the reader has not released yet: a stream dropped
    /// before it releases them (its socket failed mid-write) gives them back to the
    /// connection's window, which would otherwise shrink for good.
    taken: u32,
    recv_waker: Option<Waker>,
    send_window: i64,
    /// Why sending is over, if it is: `Ok` once END_STREAM went out.
    send_end: Option<Result<(), Error>>,
    send_waker: Option<Waker>,
    /// Where received bytes go: the driver writes them there itself while nothing is queued
    /// ahead of them, which saves waking the stream's task for each one.
    sink: Option<StdTcp>,
    /// The stream's task took bytes from the queue and has not come back for more: bytes
    /// arriving now must queue behind them.
    sink_busy: bool,
    /// Bytes the driver wrote to the sink.
    sunk: u64,
    /// The driver shut the sink's sending side at END_STREAM.
    sink_shut: bool,
}

impl Slot {
    fn new(recv_window: u32, send_window: u32) -> Self {
        Slot {
            queue: VecDeque::new(),
            end: None,
            response: None,
            got_head: false,
            recv_window: recv_window as i64,
            unreleased: 0,
            taken: 0,
            recv_waker: None,
            send_window: send_window as i64,
            send_end: None,
            send_waker: None,
            sink: None,
            sink_busy: false,
            sunk: 0,
            sink_shut: false,
        }
    }

    /// Fails what has not finished: a direction that already ended keeps its clean end, so a
    /// connection closing just after a stream's last frame does not turn it into an error.
    fn fail(&mut self, e: Error) {
        if self.end.is_none() {
            self.end = Some(Err(e.clone()));
        }
        if self.response.is_none() && !self.got_head {
            self.response = Some(Err(e.clone()));
        }
        if self.send_end.is_none() {
            self.send_end = Some(Err(e));
        }
        self.wake();
    }

    /// A reset: bytes not yet delivered are dropped and receiving fails even if END_STREAM
    /// came, so the reader sees the abort rather than a clean but short stream.
    /// Returns the dropped bytes, which the caller gives back to the connection's window.
    #[must_use]
    fn abort(&mut self, e: Error) -> u32 {
        let dropped: usize = self.queue.drain(..).map(|b| b.len()).sum();
        self.end = Some(Err(e.clone()));
        self.fail(e);
        dropped as u32
    }

    /// Queues received bytes for the reader (see [`Slot::queue`]).
    fn enqueue(&mut self, data: &[u8]) {
        match self.queue.back_mut() {
            Some(last) if last.len() + data.len() <= QUEUE_CHUNK => last.extend_from_slice(data),
            _ => {
                let mut b = BytesMut::with_capacity(data.len().max(QUEUE_CHUNK));
                b.extend_from_slice(data);
                self.queue.push_back(b);
            }
        }
    }

    /// Open or half-closed (RFC 9113 §5.1): counts against the concurrent stream limit.
    fn is_open(&self) -> bool {
        self.end.is_none() || self.send_end.is_none()
    }

    fn wake(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }
}

struct Partial {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

struct State {
    tls: Session,
    /// Frames staged for TLS (control frames; DATA payloads go in from the caller's buffer).
    out: Vec<u8>,
    /// A write hit a full socket: TLS holds records the driver must flush.
    out_blocked: bool,
    /// Bytes of frames the driver staged in answer to what it read while `out_blocked`
    /// (PING and SETTINGS acknowledgements, resets, GOAWAY); see [`MAX_ANSWERS_WHILE_BLOCKED`].
    answers_while_blocked: usize,
    /// `out` holds DATA staged by `Stream::send` and the driver has been asked to flush it.
    flush_asked: bool,
    out_waiters: Vec<Waker>,
    streams: HashMap<u32, Slot, StreamIds>,
    next_local: u32,
    last_peer: u32,
    peer: Peer,
    settings_received: bool,
    settled_waiters: Vec<Waker>,
    preface_pending: bool,
    send_window: i64,
    recv_window: i64,
    unreleased: u32,
    partial: Option<Partial>,
    decoder: Decoder,
    encoder: Encoder,
    /// Streams this end reset most recently, oldest first (see [`RESETS_REMEMBERED`]).
    reset_sent: VecDeque<u32>,
    /// Server: streams opened by the peer, not yet taken by `accept`.
    accepted: VecDeque<(u32, RequestHead)>,
    /// Streams in `accepted` the peer already reset: a peer that opens and resets streams
    /// faster than they are served makes work without holding a stream open ("rapid reset").
    reset_before_accept: usize,
    accept_waker: Option<Waker>,
    goaway_sent: bool,
    /// The last stream our GOAWAY named, once one went out (see [`State::put_goaway`]).
    goaway_last: Option<u32>,
    goaway_received: Option<u32>,
    closed: Option<Arc<ConnError>>,
}

impl State {
    fn closed_error(&self) -> Option<Error> {
        self.closed.as_ref().map(|e| Error::Connection(e.clone()))
    }

    /// Writes staged frames and any `data` into TLS, then as much TLS as the socket takes.
    fn write(&mut self, sock: &StdTcp, data: &[&[u8]]) -> io::Result<()> {
        if !self.out.is_empty() || !data.is_empty() {
            let mut bufs = [io::IoSlice::new(&[]); 1 + 2 * MAX_FRAMES_PER_SEND];
            let mut k = 0;
            for d in std::iter::once(&self.out[..]).chain(data.iter().copied()).filter(|d| !d.is_empty()) {
                bufs[k] = io::IoSlice::new(d);
                k += 1;
            }
            // The buffer limit is off, so TLS takes everything given (records are queued).
            let n = self.tls.write_plaintext(&bufs[..k])?;
            debug_assert_eq!(n, bufs[..k].iter().map(|b| b.len()).sum::<usize>());
            self.out.clear();
            self.flush_asked = false;
        }
        self.flush(sock)
    }

    fn flush(&mut self, sock: &StdTcp) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut &*sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.out_blocked = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        if self.out_blocked {
            self.out_blocked = false;
            self.answers_while_blocked = 0;
            for w in self.out_waiters.drain(..) {
                w.wake();
            }
        }
        Ok(())
    }

    fn release(&mut self, id: u32, n: u32, limits: &Limits) {
        if n == 0 {
            return;
        }
        self.unreleased += n;
        if self.unreleased >= limits.connection_window / 2 {
            frame::put_window_update(&mut self.out, 0, self.unreleased);
            self.recv_window += self.unreleased as i64;
            self.unreleased = 0;
        }
        if let Some(slot) = self.streams.get_mut(&id)
            && slot.end.is_none()
        {
            slot.unreleased += n;
            if slot.unreleased >= limits.stream_window / 2 {
                frame::put_window_update(&mut self.out, id, slot.unreleased);
                slot.recv_window += slot.unreleased as i64;
                slot.unreleased = 0;
            }
        }
    }

    /// Stages GOAWAY naming the last stream the peer opened, or what an earlier GOAWAY named
    /// if that is lower: the value never rises (RFC 9113 §6.8), as the peer may already have
    /// retried the streams past it elsewhere (streams opened after a graceful GOAWAY are
    /// refused, yet still raise `last_peer`).
    fn put_goaway(&mut self, code: ErrorCode, debug: &[u8]) {
        let last = self.goaway_last.unwrap_or(self.last_peer);
        self.goaway_last = Some(last);
        frame::put_goaway(&mut self.out, last, code, debug);
    }

    /// Stages RST_STREAM and remembers the stream among those recently reset.
    fn put_rst(&mut self, id: u32, code: ErrorCode) {
        frame::put_rst_stream(&mut self.out, id, code);
        if self.reset_sent.len() == RESETS_REMEMBERED {
            self.reset_sent.pop_front();
        }
        self.reset_sent.push_back(id);
    }

    fn reset(&mut self, id: u32, code: ErrorCode, local: Error, limits: &Limits) {
        self.put_rst(id, code);
        if let Some(slot) = self.streams.get_mut(&id) {
            let dropped = slot.abort(local);
            self.release(0, dropped, limits);
        }
    }

    fn close(&mut self, e: ConnError) {
        if self.closed.is_some() {
            return;
        }
        let e = Arc::new(e);
        self.closed = Some(e.clone());
        for slot in self.streams.values_mut() {
            slot.fail(Error::Connection(e.clone()));
        }
        self.wake_all();
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
        for w in self.settled_waiters.drain(..).chain(self.out_waiters.drain(..)) {
            w.wake();
        }
    }

    /// Streams counted against a concurrency limit: those a handle still holds that have not
    /// closed both ways.
    fn open_streams(&self) -> u64 {
        self.streams.values().filter(|s| s.is_open()).count() as u64
    }

    /// Server: whether a new stream finds room. Open streams count against the advertised
    /// limit; streams that ended in a reset still count while their handle is held, against a
    /// second limit's worth of slack: a reset closes the stream for the peer (§5.1), but its
    /// handler may still be connecting or writing, so a peer that resets each stream as soon as
    /// it is answered could otherwise keep unbounded work in flight ("rapid reset" after
    /// accept). A peer that cancels and reopens now and then stays within the slack.
    fn room_for_peer_stream(&self, limit: u32) -> Result<(), Refusal> {
        let (mut open, mut reset_held) = (0u64, 0u64);
        for s in self.streams.values() {
            if s.is_open() {
                open += 1;
            } else if matches!(s.end, Some(Err(_))) {
                reset_held += 1;
            }
        }
        if open >= u64::from(limit) {
            Err(Refusal::ConcurrencyLimit)
        } else if open + reset_held >= 2 * u64::from(limit) {
            Err(Refusal::ResetStreamsHeld)
        } else {
            Ok(())
        }
    }

    /// A stream that is over for this end: let go of (its handle dropped, or refused) or reset
    /// by either end. A stream error on it is ignored rather than answered with another
    /// RST_STREAM: frames on a closed stream after a RST_STREAM are ignored (RFC 9113 §5.1),
    /// and the peer may take a frame on a closed stream for a connection error.
    fn gone(&self, id: u32) -> bool {
        self.streams.get(&id).is_none_or(|s| matches!(s.end, Some(Err(_))))
    }

    /// A stream id the peer could not have used yet.
    fn idle(&self, role: Role, id: u32) -> bool {
        let ours = (id % 2 == 1) == (role == Role::Client);
        if ours { id >= self.next_local } else { id > self.last_peer }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A socket read that notes when it came back short: the kernel had no more, so readiness
/// can be cleared without a read that finds nothing.
struct ShortRead<'a> {
    sock: &'a StdTcp,
    short: bool,
}

impl Read for ShortRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&*self.sock).read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// The handle shared by everything on one connection.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("role", &self.shared.role).finish()
    }
}

impl Connection {
    /// Starts HTTP/2 on a TLS connection whose handshake is complete (TLS may already hold
    /// bytes that arrived with it). Returns the handle and the driver, which the caller spawns;
    /// it ends when the connection does.
    pub fn client(
        tcp: tokio::net::TcpStream,
        tls: rustls::ClientConnection,
        limits: Limits,
    ) -> io::Result<(Connection, impl Future<Output = Arc<ConnError>> + Send + 'static)> {
        Self::start(tcp, Session::tls(tls.into()), limits, Role::Client)
    }

    /// The server end; see [`Connection::client`].
    pub fn server(
        tcp: tokio::net::TcpStream,
        tls: rustls::ServerConnection,
        limits: Limits,
    ) -> io::Result<(Connection, impl Future<Output = Arc<ConnError>> + Send + 'static)> {
        Self::start(tcp, Session::tls(tls.into()), limits, Role::Server)
    }

    fn start(
        tcp: tokio::net::TcpStream,
        tls: Session,
        limits: Limits,
        role: Role,
    ) -> io::Result<(Connection, impl Future<Output = Arc<ConnError>> + Send + 'static)> {
        let mut out = Vec::with_capacity(128);
        if role == Role::Client {
            out.extend_from_slice(frame::PREFACE);
        }
        let mut params = vec![
            (setting::INITIAL_WINDOW_SIZE, limits.stream_window),
            (setting::MAX_FRAME_SIZE, limits.max_frame_size),
            (setting::MAX_HEADER_LIST_SIZE, limits.max_header_list_size),
        ];
        match role {
            Role::Client => params.push((setting::ENABLE_PUSH, 0)),
            Role::Server => params.push((setting::MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams)),
        }
        frame::put_settings(&mut out, &params);
        if limits.connection_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(&mut out, 0, limits.connection_window - frame::DEFAULT_WINDOW);
        }
        let state = State {
            tls,
            out,
            out_blocked: false,
            answers_while_blocked: 0,
            flush_asked: false,
            out_waiters: Vec::new(),
            streams: HashMap::default(),
            next_local: if role == Role::Client { 1 } else { 2 },
            last_peer: 0,
            peer: Peer {
                initial_window: frame::DEFAULT_WINDOW,
                max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
                max_concurrent: u32::MAX,
            },
            settings_received: false,
            settled_waiters: Vec::new(),
            preface_pending: role == Role::Server,
            send_window: frame::DEFAULT_WINDOW as i64,
            recv_window: limits.connection_window.max(frame::DEFAULT_WINDOW) as i64,
            unreleased: 0,
            partial: None,
            decoder: Decoder::new(4096),
            encoder: Encoder::new(),
            reset_sent: VecDeque::new(),
            accepted: VecDeque::new(),
            reset_before_accept: 0,
            accept_waker: None,
            goaway_sent: false,
            goaway_last: None,
            goaway_received: None,
            closed: None,
        };
        // `new` is deprecated for types whose descriptor could be closed behind the registration;
        // the `AsyncFd` owns this socket until both are dropped together.
        #[allow(deprecated)]
        let sock = AsyncFd::new(tcp.into_std()?)?;
        let heard = std::sync::atomic::AtomicU64::new(0);
        let shared = Arc::new(Shared { sock, heard, state: Mutex::new(state), driver: Notify::new(), role, limits });
        {
            let mut st = lock(&shared);
            st.write(shared.sock.get_ref(), &[])?;
        }
        let driver = drive(shared.clone());
        Ok((Connection { shared }, driver))
    }

    /// Resolves once the peer's first SETTINGS arrived (its preface, for a server), or the
    /// connection failed.
    pub async fn settled(&self) -> Result<(), Error> {
        std::future::poll_fn(|cx| {
            let mut st = lock(&self.shared);
            if st.settings_received {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = st.closed_error() {
                return Poll::Ready(Err(e));
            }
            st.settled_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// True while new streams can be opened: not closed, no GOAWAY either way, under the
    /// peer's stream limit.
    pub fn is_ready(&self) -> bool {
        let st = lock(&self.shared);
        st.closed.is_none()
            && st.goaway_received.is_none()
            && !st.goaway_sent
            && st.open_streams() < st.peer.max_concurrent as u64
    }

    /// Client: opens a stream with the request head `fields` (lower-case names, pseudo-headers
    /// first) and waits for the final response head.
    pub async fn request(&self, fields: &[(&[u8], &[u8])]) -> Result<(Stream, ResponseHead), Error> {
        debug_assert_eq!(self.shared.role, Role::Client);
        let id = {
            let mut st = lock(&self.shared);
            if let Some(e) = st.closed_error() {
                return Err(e);
            }
            if st.goaway_received.is_some() || st.goaway_sent {
                return Err(Error::Refused("the connection is going away"));
            }
            if st.open_streams() >= st.peer.max_concurrent as u64 {
                return Err(Error::Refused("the peer's concurrent stream limit is reached"));
            }
            if st.next_local > frame::MAX_WINDOW {
                return Err(Error::Refused("stream identifiers are used up"));
            }
            let id = st.next_local;
            st.next_local += 2;
            let slot = Slot::new(self.shared.limits.stream_window, st.peer.initial_window);
            st.streams.insert(id, slot);
            let mut block = Vec::with_capacity(128);
            st.encoder.encode(fields.iter().copied(), &mut block);
            let max = st.peer.max_frame as usize;
            frame::put_headers(&mut st.out, id, &block, false, max);
            let st = &mut *st;
            if let Err(e) = st.write(self.shared.sock.get_ref(), &[]) {
                st.close(ConnError::Io(e));
                return Err(st.closed_error().expect("just closed"));
            }
            if st.out_blocked {
                self.shared.driver.notify_one();
            }
            id
        };
        let stream = Stream::new(self.shared.clone(), id);
        let head = std::future::poll_fn(|cx| {
            let mut st = lock(&self.shared);
            let slot = st.streams.get_mut(&id).expect("the stream's slot lives as long as its handle");
            match slot.response.take() {
                Some(r) => Poll::Ready(r),
                None => {
                    slot.recv_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        match head {
            Ok(h) => Ok((stream, h)),
            Err(e) => {
                stream.finished.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Server: the next stream the peer opened, with its request head; `None` once the
    /// connection has ended, or after [`go_away`](Self::go_away) when no stream is left.
    pub async fn accept(&self) -> Option<Result<(Stream, RequestHead), Error>> {
        std::future::poll_fn(|cx| {
            let mut st = lock(&self.shared);
            while let Some((id, head)) = st.accepted.pop_front() {
                if st.streams.get(&id).is_some_and(|s| matches!(s.end, Some(Err(_)))) {
                    // Reset before anyone served it: nothing to hand out.
                    st.streams.remove(&id);
                    st.reset_before_accept = st.reset_before_accept.saturating_sub(1);
                    continue;
                }
                return Poll::Ready(Some(Ok((Stream::new(self.shared.clone(), id), head))));
            }
            match &st.closed {
                Some(e) if matches!(**e, ConnError::Eof | ConnError::Local) => return Poll::Ready(None),
                Some(e) => return Poll::Ready(Some(Err(Error::Connection(e.clone())))),
                None => {}
            }
            if st.goaway_sent && st.streams.is_empty() {
                return Poll::Ready(None);
            }
            st.accept_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Sends GOAWAY: the peer opens no more streams here; those already open run on.
    pub fn go_away(&self) {
        let mut st = lock(&self.shared);
        if st.goaway_sent || st.closed.is_some() {
            return;
        }
        st.goaway_sent = true;
        st.put_goaway(ErrorCode::NO_ERROR, b"");
        let _ = st.write(self.shared.sock.get_ref(), &[]);
        st.wake_all();
        drop(st);
        self.shared.driver.notify_one();
    }

    /// Ends the connection: GOAWAY, TLS close_notify, and every stream fails.
    pub fn close(&self) {
        let mut st = lock(&self.shared);
        if st.closed.is_some() {
            return;
        }
        if !st.goaway_sent {
            st.goaway_sent = true;
            st.put_goaway(ErrorCode::NO_ERROR, b"");
        }
        st.tls.send_close_notify();
        let _ = st.write(self.shared.sock.get_ref(), &[]);
        st.close(ConnError::Local);
        let _ = self.shared.sock.get_ref().shutdown(std::net::Shutdown::Write);
        drop(st);
        self.shared.driver.notify_one();
    }
}

/// What a connection holds on its peer's account, for the fuzz target's bounds.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    /// Received bytes queued for streams, or handed out and not yet released, in all.
    pub queued: usize,
    /// The most of those on one stream.
    pub queued_max: usize,
    /// Frames staged for the socket, and bytes the session holds for it.
    pub staged: usize,
    /// A header block still arriving.
    pub partial: usize,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Connection {
    /// A connection without TLS, for the fuzz target: `tcp` (any stream socket) carries the
    /// frames as they are. Otherwise as [`Connection::server`] or [`Connection::client`].
    pub(crate) fn plain(
        tcp: tokio::net::TcpStream,
        limits: Limits,
        server: bool,
    ) -> io::Result<(Connection, impl Future<Output = Arc<ConnError>> + Send + 'static)> {
        let role = if server { Role::Server } else { Role::Client };
        Self::start(tcp, Session::Plain(Default::default()), limits, role)
    }

    pub(crate) fn held(&self) -> Held {
        let st = lock(&self.shared);
        let per_stream = st.streams.values().map(|s| s.queue.iter().map(|b| b.len()).sum::<usize>() + s.taken as usize);
        let (queued, queued_max) = per_stream.fold((0, 0), |(sum, max), n| (sum + n, max.max(n)));
        Held {
            queued,
            queued_max,
            staged: st.out.len() + st.tls.staged(),
            partial: st.partial.as_ref().map_or(0, |p| p.block.len()),
        }
    }
}

/// One stream. Dropping it before both directions ended resets it (CANCEL).
pub struct Stream {
    shared: Arc<Shared>,
    id: u32,
    /// Reset here, or failed before it was handed out: nothing to reset on drop.
    finished: AtomicBool,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl Stream {
    fn new(shared: Arc<Shared>, id: u32) -> Self {
        Stream { shared, id, finished: AtomicBool::new(false) }
    }

    /// Server: answers the request with `status` and `fields`; `end_stream` when there is
    /// no body.
    pub fn respond(&self, status: http::StatusCode, fields: &[(&[u8], &[u8])], end_stream: bool) -> Result<(), Error> {
        let mut st = lock(&self.shared);
        let st = &mut *st;
        let slot = st.streams.get_mut(&self.id).expect("slot");
        if let Some(Err(e)) = &slot.send_end {
            return Err(e.clone());
        }
        if end_stream {
            slot.send_end = Some(Ok(()));
        }
        let mut block = Vec::with_capacity(64);
        let status = status.as_str().as_bytes();
        let all = std::iter::once((&b":status"[..], status)).chain(fields.iter().copied());
        st.encoder.encode(all, &mut block);
        frame::put_headers(&mut st.out, self.id, &block, end_stream, st.peer.max_frame as usize);
        self.commit(st)
    }

    fn commit(&self, st: &mut State) -> Result<(), Error> {
        if let Err(e) = st.write(self.shared.sock.get_ref(), &[]) {
            st.close(ConnError::Io(e));
            return Err(st.closed_error().expect("just closed"));
        }
        if st.out_blocked {
            self.shared.driver.notify_one();
        }
        Ok(())
    }

    /// Waits until the peer can take at least one byte on this stream (both windows open and
    /// earlier output flushed), and returns how many.
    pub fn poll_capacity(&self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        let mut st = lock(&self.shared);
        let st = &mut *st;
        let slot = st.streams.get_mut(&self.id).expect("slot");
        match &slot.send_end {
            Some(Err(e)) => return Poll::Ready(Err(e.clone())),
            Some(Ok(())) => return Poll::Ready(Err(Error::Malformed("sending after END_STREAM"))),
            None => {}
        }
        let window = slot.send_window.min(st.send_window);
        if window <= 0 {
            // Woken by a WINDOW_UPDATE on either level (the driver wakes every sender when the
            // connection's window opens).
            slot.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if st.out_blocked {
            st.out_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(window as usize))
    }

    /// Sends `data` (at most what [`poll_capacity`](Self::poll_capacity) granted) as DATA
    /// frames, with END_STREAM on the last when `end_stream`. Returns the bytes sent.
    pub fn send(&self, data: &[u8], end_stream: bool) -> Result<usize, Error> {
        let mut st = lock(&self.shared);
        let st = &mut *st;
        let slot = st.streams.get_mut(&self.id).expect("slot");
        match &slot.send_end {
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(())) => return Err(Error::Malformed("sending after END_STREAM")),
            None => {}
        }
        let max = st.peer.max_frame as usize;
        let window = slot.send_window.min(st.send_window).max(0) as usize;
        // Heads for a few frames sit on the stack; a peer with small frames and a large write
        // takes several calls.
        let mut heads = [[0u8; frame::HEAD_LEN]; MAX_FRAMES_PER_SEND];
        let n = data.len().min(window).min(heads.len() * max);
        let end = end_stream && n == data.len();
        if n == 0 && !end {
            return Ok(0);
        }
        slot.send_window -= n as i64;
        st.send_window -= n as i64;
        if end {
            slot.send_end = Some(Ok(()));
        }
        let data = &data[..n];
        if !st.out_blocked && n <= max && st.out.len() + frame::HEAD_LEN + n <= COALESCE_MAX {
            let flags = if end { flag::END_STREAM } else { 0 };
            st.out.extend_from_slice(&Head { len: n as u32, kind: kind::DATA, flags, stream: self.id }.encode());
            st.out.extend_from_slice(data);
            if !st.flush_asked {
                st.flush_asked = true;
                self.shared.driver.notify_one();
            }
            return Ok(n);
        }
        let count = n.div_ceil(max).max(1);
        let mut bufs: [&[u8]; 2 * MAX_FRAMES_PER_SEND] = [&[]; 2 * MAX_FRAMES_PER_SEND];
        for (i, h) in heads.iter_mut().enumerate().take(count) {
            let len = (n - i * max).min(max);
            let flags = if i + 1 == count && end { flag::END_STREAM } else { 0 };
            *h = Head { len: len as u32, kind: kind::DATA, flags, stream: self.id }.encode();
        }
        for (i, h) in heads.iter().enumerate().take(count) {
            bufs[2 * i] = h;
            bufs[2 * i + 1] = &data[i * max..(i * max + max).min(n)];
        }
        if let Err(e) = st.write(self.shared.sock.get_ref(), &bufs[..2 * count]) {
            st.close(ConnError::Io(e));
            return Err(st.closed_error().expect("just closed"));
        }
        if st.out_blocked {
            self.shared.driver.notify_one();
        }
        Ok(n)
    }

    /// The next received bytes; `None` at END_STREAM. Call [`release`](Self::release) once
    /// they are consumed, so the peer may send more.
    pub fn poll_data(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let mut st = lock(&self.shared);
        let slot = st.streams.get_mut(&self.id).expect("slot");
        if let Some(b) = slot.queue.pop_front() {
            slot.sink_busy = slot.sink.is_some();
            slot.taken += b.len() as u32;
            return Poll::Ready(Some(Ok(b.freeze())));
        }
        slot.sink_busy = false;
        match &slot.end {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(e)) => Poll::Ready(Some(Err(e.clone()))),
            None => {
                slot.recv_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// From now on the driver writes received bytes to `sock` itself whenever none are queued
    /// ahead of them (the socket must be non-blocking; a write it cannot finish leaves the rest
    /// queued for [`poll_data`](Self::poll_data)). Bytes written this way are released at
    /// once and counted by [`sunk`](Self::sunk), and never returned by `poll_data`.
    pub fn attach_sink(&self, sock: StdTcp) {
        let mut st = lock(&self.shared);
        if let Some(slot) = st.streams.get_mut(&self.id) {
            slot.sink = Some(sock);
        }
    }

    /// True when the driver shut the sink's sending side at END_STREAM itself.
    pub fn sink_shut(&self) -> bool {
        lock(&self.shared).streams.get(&self.id).is_some_and(|s| s.sink_shut)
    }

    /// Bytes the driver wrote to the sink.
    pub fn sunk(&self) -> u64 {
        lock(&self.shared).streams.get(&self.id).map_or(0, |s| s.sunk)
    }

    /// Opens the windows again by `n` consumed bytes.
    pub fn release(&self, n: usize) {
        let mut st = lock(&self.shared);
        if let Some(slot) = st.streams.get_mut(&self.id) {
            slot.taken = slot.taken.saturating_sub(n as u32);
        }
        let before = st.out.len();
        st.release(self.id, n as u32, &self.shared.limits);
        if st.out.len() != before {
            let _ = self.commit(&mut st);
        }
    }

    /// Resets the stream with `code`.
    pub fn reset(&self, code: ErrorCode) {
        let mut st = lock(&self.shared);
        if st.closed.is_some() || self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        st.reset(self.id, code, Error::Reset(code), &self.shared.limits);
        let _ = self.commit(&mut st);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = lock(&self.shared);
        let Some(slot) = st.streams.remove(&self.id) else { return };
        let done = matches!(slot.end, Some(Ok(()))) && matches!(slot.send_end, Some(Ok(())));
        // Both directions over (the peer finished sending and asked us to stop): closed for
        // both ends, nothing to reset (RFC 9113 §5.4.2: no RST_STREAM for a RST_STREAM).
        let peer_closed = matches!(slot.end, Some(Ok(()))) && slot.send_end.is_some();
        if !done
            && !peer_closed
            && !*self.finished.get_mut()
            && st.closed.is_none()
            && slot.end.as_ref().is_none_or(|e| e.is_ok())
        {
            // A server that has answered in full only asks the client to stop sending.
            let answered = self.shared.role == Role::Server && matches!(slot.send_end, Some(Ok(())));
            let code = if answered { ErrorCode::NO_ERROR } else { ErrorCode::CANCEL };
            st.put_rst(self.id, code);
        }
        // Bytes the reader never took, or took and never released, still count against the
        // connection's window (what it released already went to the connection's credit).
        let unread: usize = slot.queue.iter().map(|b| b.len()).sum();
        let owed = unread as u32 + slot.taken;
        if owed > 0 {
            st.release(0, owed, &self.shared.limits);
        }
        if !st.out.is_empty() && st.closed.is_none() {
            let _ = self.commit(&mut st);
        }
        if st.goaway_sent
            && st.streams.is_empty()
            && let Some(w) = st.accept_waker.take()
        {
            w.wake();
        }
    }
}

/// Reads the connection until it ends.
async fn drive(shared: Arc<Shared>) -> Arc<ConnError> {
    let mut buf = BytesMut::new();
    let mut reads = 0usize;
    tokio::spawn(keep_alive(Arc::downgrade(&shared)));
    let result = loop {
        let closed = lock(&shared).closed.clone();
        if let Some(e) = closed {
            if matches!(*e, ConnError::Local) {
                linger(&shared).await;
            }
            break Err(e);
        }
        // What TLS holds: the last read's records, or, the first time, bytes that came with
        // the handshake.
        let Pumped { blocked, may_read } = match pump(&shared, &mut buf) {
            Ok(p) => p,
            Err(e) => break Ok(e),
        };
        tokio::select! {
            biased;
            w = shared.sock.writable(), if blocked => {
                let mut guard = match w {
                    Ok(g) => g,
                    Err(e) => break Ok(ConnError::Io(e)),
                };
                let mut st = lock(&shared);
                if let Err(e) = st.flush(shared.sock.get_ref()) {
                    break Ok(ConnError::Io(e));
                }
                if st.out_blocked {
                    guard.clear_ready();
                }
            }
            r = shared.sock.readable(), if may_read => {
                let mut guard = match r {
                    Ok(g) => g,
                    Err(e) => break Ok(ConnError::Io(e)),
                };
                let mut st = lock(&shared);
                let mut rd = ShortRead { sock: shared.sock.get_ref(), short: false };
                let read = st.tls.read_tls(&mut rd);
                if let Ok(n) = read {
                    shared.heard.fetch_add(n as u64, Ordering::Relaxed);
                }
                match read {
                    Ok(0) => {
                        drop(st);
                        // Frames that came just before the end still count.
                        let _ = pump(&shared, &mut buf);
                        break Ok(ConnError::Eof);
                    }
                    Ok(_) => {
                        if rd.short {
                            guard.clear_ready();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                    Err(e) => break Ok(ConnError::Io(e)),
                }
            }
            () = shared.driver.notified() => {}
        }
        reads += 1;
        if reads.is_multiple_of(READS_PER_PASS) {
            tokio::task::yield_now().await;
        }
    };
    let mut st = lock(&shared);
    match result {
        Err(e) => e,
        Ok(e) => {
            end(&shared, &mut st, e);
            st.closed.clone().expect("just closed")
        }
    }
}

/// Fails the connection with `e` (every stream learns it) and shuts its socket.
fn end(shared: &Shared, st: &mut State, e: ConnError) {
    st.close(e);
    let _ = shared.sock.get_ref().shutdown(std::net::Shutdown::Both);
}

/// Watches a connection for a silent peer, beside its driver so the driver's loop pays nothing
/// but a counter: after `keepalive` without a byte from the peer it sends a PING, and after as
/// long again without one it closes the connection. Ends with the connection.
async fn keep_alive(shared: std::sync::Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| s.limits.keepalive) else { return };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut heard_at_tick, mut pinged) = (0u64, false);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let heard = shared.heard.load(Ordering::Relaxed);
        let mut st = lock(&shared);
        if st.closed.is_some() {
            return;
        }
        if heard != heard_at_tick {
            (heard_at_tick, pinged) = (heard, false);
        } else if pinged {
            tracing::debug!(silent = ?2 * every, "HTTP/2 peer silent, PING unanswered; closing");
            end(&shared, &mut st, ConnError::Silent(2 * every));
            drop(st);
            shared.driver.notify_one();
            return;
        } else {
            pinged = true;
            frame::put_ping(&mut st.out, *b"keepaliv");
            if st.write(shared.sock.get_ref(), &[]).is_err() || st.out_blocked {
                drop(st);
                shared.driver.notify_one();
            }
        }
    }
}

/// After this end closed: reads and drops what the peer still sends until it closes too (or
/// a second passes). Closing a socket with unread bytes makes the kernel send a reset, which
/// can destroy our last frames (GOAWAY, a stream's END_STREAM) before the peer reads them.
async fn linger(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    loop {
        let Ok(Ok(mut guard)) = tokio::time::timeout_at(deadline, shared.sock.readable()).await else { return };
        if let Ok(Ok(0) | Err(_)) = guard.try_io(|s| s.get_ref().read(&mut scratch)) {
            return;
        }
    }
}

/// Decrypts what TLS has, applies every whole frame, and flushes what that produced. Returns
/// whether output is held back by a full socket, and whether to read more.
fn pump(shared: &Shared, buf: &mut BytesMut) -> Result<Pumped, ConnError> {
    let mut st = lock(shared);
    let st = &mut *st;
    let io = st.tls.process_new_packets();
    let mut eof = false;
    loop {
        match st.tls.fill_buf() {
            Ok([]) => {
                eof = true;
                break;
            }
            Ok(chunk) => {
                let n = chunk.len();
                buf.extend_from_slice(chunk);
                st.tls.consume(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    let applied = apply(shared, st, buf);
    if buf.is_empty() && buf.capacity() > READ_BUFFER_KEPT {
        // A large frame grew it; an idle connection should not hold that.
        *buf = BytesMut::new();
    }
    if let Err(e) = &applied {
        super::refusals::count_protocol_error(e.code);
        st.put_goaway(e.code, e.why.as_bytes());
    }
    if let Err(e) = &io {
        // An alert rustls queued for the peer goes out with whatever else is staged.
        let _ = st.write(shared.sock.get_ref(), &[]);
        return Err(ConnError::Tls(e.clone()));
    }
    if st.out_blocked {
        st.answers_while_blocked += st.out.len();
    }
    st.write(shared.sock.get_ref(), &[])?;
    applied.map_err(ConnError::Protocol)?;
    if eof {
        return Err(ConnError::Eof);
    }
    let may_read = !st.out_blocked || st.answers_while_blocked < MAX_ANSWERS_WHILE_BLOCKED;
    Ok(Pumped { blocked: st.out_blocked, may_read })
}

/// What the driver waits for after a [`pump`].
struct Pumped {
    /// TLS holds output the socket did not take: wait until it is writable.
    blocked: bool,
    /// Wait for the peer's bytes too (see [`MAX_ANSWERS_WHILE_BLOCKED`]).
    may_read: bool,
}

fn apply(shared: &Shared, st: &mut State, buf: &mut BytesMut) -> Result<(), FrameError> {
    if st.preface_pending {
        if buf.len() < frame::PREFACE.len() {
            return if frame::PREFACE.starts_with(buf) {
                Ok(())
            } else {
                Err(FrameError::connection(ErrorCode::PROTOCOL_ERROR, "not the HTTP/2 client preface"))
            };
        }
        if &buf[..frame::PREFACE.len()] != frame::PREFACE {
            return Err(FrameError::connection(ErrorCode::PROTOCOL_ERROR, "not the HTTP/2 client preface"));
        }
        buf.advance(frame::PREFACE.len());
        st.preface_pending = false;
    }
    while buf.len() >= frame::HEAD_LEN {
        let head = Head::parse(buf[..frame::HEAD_LEN].try_into().expect("9 bytes"));
        if head.len > shared.limits.max_frame_size {
            return Err(FrameError::connection(
                ErrorCode::FRAME_SIZE_ERROR,
                "frame larger than SETTINGS_MAX_FRAME_SIZE",
            ));
        }
        let total = frame::HEAD_LEN + head.len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            break;
        }
        let parsed = frame::parse(&head, &buf[frame::HEAD_LEN..total]);
        // A broken frame's own error comes first, so a bad first SETTINGS gets the code its
        // bad value calls for.
        if let Err(e) = parsed
            && e.stream.is_none()
        {
            return Err(e);
        }
        if !st.settings_received && !matches!(parsed, Ok(Frame::Settings { ack: false, .. })) {
            return Err(FrameError::connection(ErrorCode::PROTOCOL_ERROR, "first frame is not SETTINGS"));
        }
        if let Some(p) = &st.partial
            && !matches!(parsed, Ok(Frame::Continuation { stream, .. }) if stream == p.stream)
        {
            return Err(FrameError::connection(ErrorCode::PROTOCOL_ERROR, "header block interrupted"));
        }
        match parsed {
            Ok(f) => on_frame(shared, st, f)?,
            // No stream error on a stream that was never opened (RFC 9113 §5.1, §6.4): the
            // peer broke the connection's rules.
            Err(e) if e.stream.is_some_and(|id| st.idle(shared.role, id)) => {
                return Err(FrameError::connection(e.code, e.why));
            }
            Err(e) => match e.stream {
                Some(id) if st.gone(id) => {}
                Some(id) => st.reset(id, e.code, Error::Malformed(e.why), &shared.limits),
                None => return Err(e),
            },
        }
        // Applied frames keep nothing of the buffer (queued bytes are copies), so it is
        // reused from its start once drained.
        buf.advance(total);
    }
    Ok(())
}

fn on_frame(shared: &Shared, st: &mut State, f: Frame<'_>) -> Result<(), FrameError> {
    use ErrorCode as E;
    let conn = FrameError::connection;
    match f {
        Frame::Data { stream, end_stream, data, flow_len } => {
            if flow_len as i64 > st.recv_window {
                return Err(conn(E::FLOW_CONTROL_ERROR, "DATA beyond the connection's window"));
            }
            st.recv_window -= flow_len as i64;
            let padding = flow_len - data.len() as u32;
            let Some(slot) = st.streams.get_mut(&stream) else {
                if st.idle(shared.role, stream) {
                    return Err(conn(E::PROTOCOL_ERROR, "DATA on an idle stream"));
                }
                // A stream we already let go: its bytes are dropped but still count.
                st.release(0, flow_len, &shared.limits);
                return Ok(());
            };
            if matches!(slot.end, Some(Err(_))) {
                // Reset: frames the peer sent before it learnt are ignored (RFC 9113 §5.1).
                st.release(0, flow_len, &shared.limits);
                return Ok(());
            }
            if slot.end.is_some() || !slot.got_head {
                let why = if slot.got_head { "DATA after END_STREAM" } else { "DATA before the response head" };
                let code = if slot.got_head { E::STREAM_CLOSED } else { E::PROTOCOL_ERROR };
                st.reset(stream, code, Error::Malformed(why), &shared.limits);
                st.release(0, flow_len, &shared.limits);
                return Ok(());
            }
            if flow_len as i64 > slot.recv_window {
                st.reset(
                    stream,
                    E::FLOW_CONTROL_ERROR,
                    Error::Malformed("DATA beyond the stream's window"),
                    &shared.limits,
                );
                st.release(0, flow_len, &shared.limits);
                return Ok(());
            }
            slot.recv_window -= flow_len as i64;
            let mut rest = data;
            if let Some(sink) = &slot.sink
                && slot.queue.is_empty()
                && !slot.sink_busy
                && !data.is_empty()
            {
                // A failed write leaves everything queued: the task writes it and meets the
                // socket's error (or readiness) itself.
                if let Ok(n) = (&*sink).write(data) {
                    rest = &data[n..];
                    slot.sunk += n as u64;
                }
            }
            let direct = (data.len() - rest.len()) as u32;
            if !rest.is_empty() {
                slot.enqueue(rest);
            }
            if end_stream {
                slot.end = Some(Ok(()));
                // The FIN follows the last bytes at once, as from the peer's own application:
                // a client reading a response then finds the end with it instead of closing
                // first, which would leave its own port in TIME_WAIT.
                if let Some(sink) = &slot.sink
                    && slot.queue.is_empty()
                    && !slot.sink_busy
                {
                    slot.sink_shut = sink.shutdown(std::net::Shutdown::Write).is_ok();
                }
            }
            if (!rest.is_empty() || end_stream)
                && let Some(w) = slot.recv_waker.take()
            {
                w.wake();
            }
            st.release(stream, padding + direct, &shared.limits);
        }
        Frame::Headers { stream, end_stream, end_headers, block } => {
            if block.len() > MAX_BLOCK {
                return Err(conn(E::ENHANCE_YOUR_CALM, "header block too large"));
            }
            if end_headers {
                on_head(shared, st, stream, end_stream, block)?;
            } else {
                st.partial = Some(Partial { stream, end_stream, block: block.to_vec() });
            }
        }
        Frame::Continuation { stream, end_headers, block } => {
            let Some(p) = st.partial.as_mut() else {
                return Err(conn(E::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
            };
            if p.block.len() + block.len() > MAX_BLOCK {
                return Err(conn(E::ENHANCE_YOUR_CALM, "header block too large"));
            }
            p.block.extend_from_slice(block);
            if end_headers {
                let p = st.partial.take().expect("checked");
                debug_assert_eq!(p.stream, stream);
                on_head(shared, st, p.stream, p.end_stream, &p.block)?;
            }
        }
        Frame::Priority { .. } | Frame::Unknown => {}
        Frame::RstStream { stream, code } => {
            if st.idle(shared.role, stream) {
                return Err(conn(E::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
            }
            let waiting = st.accepted.iter().any(|(id, _)| *id == stream);
            let Some(slot) = st.streams.get_mut(&stream) else { return Ok(()) };
            if code == E::NO_ERROR && matches!(slot.end, Some(Ok(()))) {
                // A server done answering asks the client to stop sending: what arrived
                // stays readable (and `accept` still hands out a stream that waits).
                if slot.send_end.is_none() {
                    slot.send_end = Some(Err(Error::Reset(code)));
                }
                slot.wake();
            } else if !matches!(slot.end, Some(Err(_))) {
                let e = if code == E::REFUSED_STREAM { Error::Refused("REFUSED_STREAM") } else { Error::Reset(code) };
                let dropped = slot.abort(e);
                st.release(0, dropped, &shared.limits);
                // Counted once per stream, and `accept` takes it off again as it skips it.
                if waiting {
                    st.reset_before_accept += 1;
                    if st.reset_before_accept > MAX_RESET_BEFORE_ACCEPT {
                        return Err(conn(E::ENHANCE_YOUR_CALM, "too many streams reset before they were served"));
                    }
                }
            }
        }
        Frame::Settings { ack: true, .. } => {}
        Frame::Settings { ack: false, params } => {
            // The frame is applied as a unit (RFC 9113 §6.5.3): of several INITIAL_WINDOW_SIZE
            // entries only the last counts, so the walk over every stream's window happens once
            // per frame, not once per entry (a 1 MiB frame of them held the lock for long).
            let mut initial_window = None;
            for (id, value) in frame::settings_entries(params) {
                match id {
                    setting::INITIAL_WINDOW_SIZE => initial_window = Some(value),
                    setting::MAX_FRAME_SIZE => st.peer.max_frame = value,
                    // A server may not turn push on (RFC 9113 §6.5.2); we never push either way.
                    setting::ENABLE_PUSH if shared.role == Role::Client && value != 0 => {
                        return Err(conn(E::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH from a server"));
                    }
                    setting::MAX_CONCURRENT_STREAMS => st.peer.max_concurrent = value,
                    _ => {}
                }
            }
            if let Some(value) = initial_window {
                let delta = value as i64 - st.peer.initial_window as i64;
                st.peer.initial_window = value;
                for slot in st.streams.values_mut() {
                    slot.send_window += delta;
                    if slot.send_window > frame::MAX_WINDOW as i64 {
                        return Err(conn(E::FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE overflows a window"));
                    }
                    if delta > 0
                        && let Some(w) = slot.send_waker.take()
                    {
                        w.wake();
                    }
                }
            }
            frame::put_settings_ack(&mut st.out);
            if !st.settings_received {
                st.settings_received = true;
                for w in st.settled_waiters.drain(..) {
                    w.wake();
                }
            }
        }
        Frame::Ping { ack: false, data } => frame::put_ping_ack(&mut st.out, data),
        Frame::Ping { ack: true, .. } => {}
        Frame::GoAway { last_stream, code, debug } => {
            st.goaway_received = Some(last_stream);
            let mine = |id: u32| (id % 2 == 1) == (shared.role == Role::Client);
            for (id, slot) in st.streams.iter_mut() {
                if mine(*id) && *id > last_stream {
                    slot.fail(Error::Refused("past the peer's GOAWAY"));
                }
            }
            if code != E::NO_ERROR {
                let text = String::from_utf8_lossy(&debug[..debug.len().min(256)]).into_owned();
                tracing::debug!(%code, %text, "HTTP/2 peer sent GOAWAY");
                let e = Arc::new(ConnError::GoAway { code, debug: text });
                for slot in st.streams.values_mut() {
                    slot.fail(Error::Connection(e.clone()));
                }
            }
            st.wake_all();
        }
        Frame::WindowUpdate { stream: 0, increment } => {
            st.send_window += increment as i64;
            if st.send_window > frame::MAX_WINDOW as i64 {
                return Err(conn(E::FLOW_CONTROL_ERROR, "connection window above 2^31-1"));
            }
            for slot in st.streams.values_mut() {
                if let Some(w) = slot.send_waker.take() {
                    w.wake();
                }
            }
        }
        Frame::WindowUpdate { stream, increment } => {
            if st.idle(shared.role, stream) {
                return Err(conn(E::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
            }
            if let Some(slot) = st.streams.get_mut(&stream)
                && !matches!(slot.end, Some(Err(_)))
            {
                slot.send_window += increment as i64;
                if slot.send_window > frame::MAX_WINDOW as i64 {
                    st.reset(
                        stream,
                        E::FLOW_CONTROL_ERROR,
                        Error::Malformed("stream window above 2^31-1"),
                        &shared.limits,
                    );
                } else if let Some(w) = slot.send_waker.take() {
                    w.wake();
                }
            }
        }
    }
    Ok(())
}

fn on_head(shared: &Shared, st: &mut State, id: u32, end_stream: bool, block: &[u8]) -> Result<(), FrameError> {
    use ErrorCode as E;
    let conn = FrameError::connection;
    // Always decoded, so the decoder's table stays in step with the peer's encoder.
    let fields = match st.decoder.decode(block, shared.limits.max_header_list_size as usize) {
        Ok(f) => Ok(f),
        Err(e) if e.is_list_too_large() => Err("header list larger than SETTINGS_MAX_HEADER_LIST_SIZE"),
        Err(e) => {
            tracing::debug!(error = %e, "HPACK decoding failed");
            return Err(conn(E::COMPRESSION_ERROR, "header block does not decode"));
        }
    };
    if let Some(slot) = st.streams.get_mut(&id) {
        if matches!(slot.end, Some(Err(_))) {
            // Reset (by either end): what the peer sent before it learnt is ignored, a
            // response head as well as trailers (a second RST_STREAM is not an answer).
            return Ok(());
        }
        if slot.got_head {
            // Trailers: they end the stream; their fields mean nothing to a tunnel.
            match slot.end {
                // Half-closed (remote): nothing more may come but WINDOW_UPDATE, PRIORITY or
                // RST_STREAM (RFC 9113 §5.1).
                Some(_) => st.reset(id, E::STREAM_CLOSED, Error::Malformed("HEADERS after END_STREAM"), &shared.limits),
                None if !end_stream => {
                    st.reset(id, E::PROTOCOL_ERROR, Error::Malformed("trailers without END_STREAM"), &shared.limits)
                }
                None => {
                    slot.end = Some(Ok(()));
                    slot.wake();
                }
            }
            return Ok(());
        }
        // Client: the response head.
        let head = fields.and_then(head::response);
        match head {
            Err(why) => st.reset(id, E::PROTOCOL_ERROR, Error::Malformed(why), &shared.limits),
            Ok(h) if h.status.is_informational() => {
                if end_stream {
                    st.reset(
                        id,
                        E::PROTOCOL_ERROR,
                        Error::Malformed("informational response with END_STREAM"),
                        &shared.limits,
                    );
                }
            }
            Ok(h) => {
                slot.got_head = true;
                slot.response = Some(Ok(h));
                if end_stream {
                    slot.end = Some(Ok(()));
                }
                slot.wake();
            }
        }
        return Ok(());
    }
    // A stream this end reset (a dropped handle, a refusal): the frame may have crossed our
    // RST_STREAM, and frames received after sending one are ignored (RFC 9113 §5.1). Its block
    // was decoded above, so HPACK stays in step. A client never skips an id, so every earlier
    // one of its own is a stream it let go of.
    let ours_let_go = shared.role == Role::Client && id % 2 == 1 && id < st.next_local;
    if ours_let_go || st.reset_sent.contains(&id) {
        return Ok(());
    }
    if shared.role == Role::Client || id.is_multiple_of(2) {
        return Err(conn(E::PROTOCOL_ERROR, "HEADERS on a stream the peer may not open"));
    }
    if id <= st.last_peer {
        return Err(conn(E::STREAM_CLOSED, "HEADERS on a closed stream"));
    }
    st.last_peer = id;
    if st.goaway_sent {
        st.put_rst(id, E::REFUSED_STREAM);
        return Ok(());
    }
    if let Err(why) = st.room_for_peer_stream(shared.limits.max_concurrent_streams) {
        why.count();
        tracing::debug!(stream = id, why = why.as_str(), "stream refused");
        st.put_rst(id, E::REFUSED_STREAM);
        return Ok(());
    }
    let head = match fields.and_then(head::request) {
        Ok(h) => h,
        Err(why) => {
            tracing::debug!(stream = id, %why, "malformed request head");
            st.put_rst(id, E::PROTOCOL_ERROR);
            return Ok(());
        }
    };
    let mut slot = Slot::new(shared.limits.stream_window, st.peer.initial_window);
    slot.got_head = true;
    if end_stream {
        slot.end = Some(Ok(()));
    }
    st.streams.insert(id, slot);
    st.accepted.push_back((id, head));
    if let Some(w) = st.accept_waker.take() {
        w.wake();
    }
    Ok(())
}
