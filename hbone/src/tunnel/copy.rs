//! Moving bytes between a TCP socket and a tunnel stream, both ways at once.
//!
//! Semantics carried across: a TCP FIN becomes END_STREAM and END_STREAM becomes a FIN (each
//! direction closes on its own: half-close); a TCP RST becomes RST_STREAM(CONNECT_ERROR) and an
//! RST_STREAM becomes a TCP RST (RFC 9113 §8.5).
//!
//! Buffers: socket→tunnel reads go into one scratch buffer per thread, which TLS copies from
//! as it encrypts in the same poll, so the same buffer serves every read of every copy and an
//! idle connection holds none. The read size doubles while reads fill it (up to
//! [`MAX_CHUNK`]) and halves when they do not. Reads go through tokio's `poll_read`, which
//! treats a short read as "drained" and so saves the `EAGAIN` read per request that
//! `try_read` would cost. Tunnel→socket: the connection's driver writes
//! received bytes, and the FIN at END_STREAM, to the socket itself when nothing is queued
//! ahead of them (see [`http2::Stream::attach_sink`]), so a response costs no wake-up of this
//! task and its end follows it at once; what the socket cannot take at once queues, and this
//! task writes it from the received frames as they are.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use super::stream::H2Stream;
use crate::http2::{self, ErrorCode};

/// Smallest read from the socket.
pub const MIN_CHUNK: usize = 16 * 1024;
/// Largest read from the socket.
pub const MAX_CHUNK: usize = 256 * 1024;

/// Which end of a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The TCP socket (the application, or the workload the tunnel leads to).
    Socket,
    /// The tunnel stream (the remote proxy).
    Tunnel,
}

/// Why a copy ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The socket failed or was reset; the tunnel stream was reset in turn.
    #[error("socket failed: {0}")]
    Socket(#[source] io::Error),
    /// The tunnel stream was reset or its connection failed; the socket was reset in turn.
    #[error("tunnel failed: {0}")]
    Tunnel(#[source] http2::Error),
    /// The caller stopped the copy (see [`copy_bidirectional_until`]); both ends were reset.
    #[error("stopped")]
    Stopped,
}

impl CopyError {
    /// The end that failed first; `None` when neither did and the copy was stopped.
    pub fn side(&self) -> Option<Side> {
        match self {
            CopyError::Socket(_) => Some(Side::Socket),
            CopyError::Tunnel(_) => Some(Side::Tunnel),
            CopyError::Stopped => None,
        }
    }
}

/// Bytes moved by one copy, and how it ended.
#[derive(Debug)]
pub struct CopyOutcome {
    /// Bytes read from the socket and sent into the tunnel.
    pub to_tunnel: u64,
    /// Bytes received from the tunnel and written to the socket.
    pub from_tunnel: u64,
    /// `Ok` when both directions finished with a FIN / END_STREAM.
    pub result: Result<(), CopyError>,
}

/// Copies both ways until both directions have closed, or either end fails.
pub async fn copy_bidirectional(tcp: TcpStream, stream: H2Stream) -> CopyOutcome {
    copy_bidirectional_until(tcp, stream, std::future::pending()).await
}

/// As [`copy_bidirectional`], and ends early when `stop` completes: the socket is reset and
/// the stream reset with CONNECT_ERROR, so each application sees its connection fail, not a
/// clean end it could take for a complete response. The bytes moved until then are counted.
/// `stop` is polled whenever the copy is, so it must be cheap to poll (a `oneshot::Receiver`
/// is: one atomic load).
pub async fn copy_bidirectional_until(
    mut tcp: TcpStream,
    stream: H2Stream,
    stop: impl Future<Output = ()>,
) -> CopyOutcome {
    let H2Stream { inner, pending, guard, .. } = stream;
    let mut to_tunnel = 0u64;
    let mut from_tunnel = 0u64;
    let result = {
        let (mut rd, wr) = tcp.split();
        let up = socket_to_tunnel(&mut rd, &inner, &mut to_tunnel);
        let down = tunnel_to_socket(wr.as_ref(), &inner, pending, &mut from_tunnel);
        let both = async { tokio::try_join!(up, down).map(|_| ()) };
        tokio::select! {
            biased;
            r = both => r,
            () = stop => Err(CopyError::Stopped),
        }
    };
    match &result {
        Err(CopyError::Tunnel(_)) => {
            // Abort rather than close so the application sees the failure, not a clean EOF.
            let _ = tcp.set_zero_linger();
        }
        Err(CopyError::Socket(_)) => inner.reset(ErrorCode::CONNECT_ERROR),
        Err(CopyError::Stopped) => {
            let _ = tcp.set_zero_linger();
            inner.reset(ErrorCode::CONNECT_ERROR);
        }
        Ok(()) => {}
    }
    from_tunnel += inner.sunk();
    // The stream holds a duplicate of the socket's descriptor: closing it first makes the
    // socket's own close the last, so a zero linger set above still sends the RST.
    drop(inner);
    drop(guard);
    CopyOutcome { to_tunnel, from_tunnel, result }
}

thread_local! {
    /// The read buffer of every copy on this thread. A read's bytes are handed to the stream
    /// (which encrypts them into TLS's output) in the same poll, before the task can yield,
    /// so one buffer serves them all: no allocation per request, and no buffer per
    /// connection, busy or idle.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

async fn socket_to_tunnel(rd: &mut ReadHalf<'_>, stream: &http2::Stream, count: &mut u64) -> Result<(), CopyError> {
    let mut chunk = MIN_CHUNK;
    // Bytes read that the stream could not take at once (other streams used the window
    // between our capacity check and the read): kept until it has room.
    let mut rest: Vec<u8> = Vec::new();
    loop {
        // Flow control first: read from the socket only what the peer can take, so a slow
        // receiver slows the sender through TCP rather than filling our memory.
        let window = poll_fn(|cx| stream.poll_capacity(cx)).await.map_err(CopyError::Tunnel)?;
        let want = chunk.min(window);
        let n = poll_fn(|cx| read_and_send(rd, stream, want, &mut rest, cx)).await?;
        if n == 0 {
            stream.send(&[], true).map_err(CopyError::Tunnel)?;
            return Ok(());
        }
        *count += n as u64;
        if n == want && chunk < MAX_CHUNK {
            chunk *= 2;
        } else if n < want / 4 && chunk > MIN_CHUNK {
            chunk /= 2;
        }
        if !rest.is_empty() {
            let mut sent = 0;
            while sent < rest.len() {
                poll_fn(|cx| stream.poll_capacity(cx)).await.map_err(CopyError::Tunnel)?;
                sent += stream.send(&rest[sent..], false).map_err(CopyError::Tunnel)?;
            }
            // Let it go: a remainder is rare, and a connection should not keep its size.
            rest = Vec::new();
        }
    }
}

/// Reads up to `want` bytes into the thread's scratch buffer and sends them on the stream;
/// what it does not take goes to `rest`. Ready with the bytes read (0 at EOF). Reads go
/// through `poll_read`, which treats a short read as "drained", saving the `EAGAIN` read per
/// request that `try_read` would cost.
fn read_and_send(
    rd: &mut ReadHalf<'_>,
    stream: &http2::Stream,
    want: usize,
    rest: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, CopyError>> {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        buf.reserve(want);
        let mut read = ReadBuf::uninit(&mut buf.spare_capacity_mut()[..want]);
        ready!(Pin::new(&mut *rd).poll_read(cx, &mut read)).map_err(CopyError::Socket)?;
        let data = read.filled();
        if !data.is_empty() {
            let sent = stream.send(data, false).map_err(CopyError::Tunnel)?;
            rest.extend_from_slice(&data[sent..]);
        }
        Poll::Ready(Ok(data.len()))
    })
}

async fn tunnel_to_socket(
    tcp: &TcpStream,
    stream: &http2::Stream,
    pending: Bytes,
    count: &mut u64,
) -> Result<(), CopyError> {
    write_all(tcp, &pending).await?;
    *count += pending.len() as u64;
    // Behind whatever was pending: from here the connection's driver may write directly.
    if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
        stream.attach_sink(std::net::TcpStream::from(fd));
    }
    loop {
        match poll_fn(|cx| stream.poll_data(cx)).await {
            Some(Ok(data)) => {
                write_all(tcp, &data).await?;
                *count += data.len() as u64;
                // Open the window only once the bytes are in the socket: the receiver's pace
                // is what the sender sees.
                stream.release(data.len());
            }
            Some(Err(e)) => return Err(CopyError::Tunnel(e)),
            None => {
                if !stream.sink_shut() {
                    socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write).map_err(CopyError::Socket)?;
                }
                return Ok(());
            }
        }
    }
}

async fn write_all(tcp: &TcpStream, mut data: &[u8]) -> Result<(), CopyError> {
    while !data.is_empty() {
        match tcp.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await.map_err(CopyError::Socket)?,
            Err(e) => return Err(CopyError::Socket(e)),
        }
    }
    Ok(())
}
