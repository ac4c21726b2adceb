//! Moving bytes between a TCP socket and a tunnel stream, both ways at once.
//!
//! Semantics carried across: a TCP FIN becomes END_STREAM and END_STREAM becomes a FIN (each
//! direction closes on its own: half-close); a TCP RST becomes RST_STREAM(CONNECT_ERROR) and an
//! RST_STREAM becomes a TCP RST (RFC 9113 §8.5).
//!
//! Buffers: socket→tunnel reads go into one buffer per direction and each read's bytes are
//! handed to h2 as a slice of it, so nothing is copied twice; once h2 has written the slices
//! to TLS the same allocation is reused (fresh buffers for every read cost page faults in bulk
//! transfers). The read size doubles while reads fill it (up to [`MAX_CHUNK`]) and halves when
//! they do not. The buffer is let go whenever the socket has nothing to read, so an idle
//! connection holds none. Reads go through tokio's `poll_read`, which treats a short read as
//! "drained" and so saves the `EAGAIN` read per request that `try_read` would cost.
//! Tunnel→socket writes use the received frames as they are.

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use super::stream::H2Stream;

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
    Tunnel(#[source] h2::Error),
}

impl CopyError {
    /// The end that failed first.
    pub fn side(&self) -> Side {
        match self {
            CopyError::Socket(_) => Side::Socket,
            CopyError::Tunnel(_) => Side::Tunnel,
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
pub async fn copy_bidirectional(mut tcp: TcpStream, stream: H2Stream) -> CopyOutcome {
    let H2Stream { mut send, mut recv, pending, .. } = stream;
    let mut to_tunnel = 0u64;
    let mut from_tunnel = 0u64;
    let result = {
        let (mut rd, wr) = tcp.split();
        let up = socket_to_tunnel(&mut rd, &mut send, &mut to_tunnel);
        let down = tunnel_to_socket(wr.as_ref(), &mut recv, pending, &mut from_tunnel);
        tokio::try_join!(up, down).map(|_| ())
    };
    match &result {
        Err(CopyError::Tunnel(_)) => {
            // Abort rather than close so the application sees the failure, not a clean EOF.
            let _ = tcp.set_zero_linger();
        }
        Err(CopyError::Socket(_)) => send.send_reset(Reason::CONNECT_ERROR),
        Ok(()) => {}
    }
    CopyOutcome { to_tunnel, from_tunnel, result }
}

async fn socket_to_tunnel(
    rd: &mut ReadHalf<'_>,
    send: &mut SendStream<Bytes>,
    count: &mut u64,
) -> Result<(), CopyError> {
    let mut chunk = MIN_CHUNK;
    let mut buf = BytesMut::new();
    loop {
        // Flow control first: read from the socket only what the peer can take, so a slow
        // receiver slows the sender through TCP rather than filling our memory.
        send.reserve_capacity(chunk);
        // `poll_capacity` only reports increases: capacity left over from a read that found
        // nothing must be used as it is.
        let window = match send.capacity() {
            0 => match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(CopyError::Tunnel(e)),
                None => return Err(CopyError::Tunnel(h2::Error::from(Reason::STREAM_CLOSED))),
            },
            n => n,
        };
        let ready = poll_fn(|cx| Poll::Ready(rd.as_ref().poll_read_ready(cx).map(|r| r.is_ok()))).await;
        if ready == Poll::Pending {
            // Nothing to read now: wait without holding a buffer.
            buf = BytesMut::new();
            rd.readable().await.map_err(CopyError::Socket)?;
        }
        let want = chunk.min(window);
        // Takes back the allocation once h2 has dropped every slice of it.
        buf.reserve(want);
        let n = (&mut *rd).take(want as u64).read_buf(&mut buf).await.map_err(CopyError::Socket)?;
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(CopyError::Tunnel)?;
            return Ok(());
        }
        *count += n as u64;
        if n == want && chunk < MAX_CHUNK {
            chunk *= 2;
        } else if n < want / 4 && chunk > MIN_CHUNK {
            chunk /= 2;
        }
        send.send_data(buf.split().freeze(), false).map_err(CopyError::Tunnel)?;
    }
}

async fn tunnel_to_socket(
    tcp: &TcpStream,
    recv: &mut RecvStream,
    pending: Bytes,
    count: &mut u64,
) -> Result<(), CopyError> {
    write_all(tcp, &pending).await?;
    *count += pending.len() as u64;
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                write_all(tcp, &data).await?;
                *count += data.len() as u64;
                // Open the window only once the bytes are in the socket: the receiver's pace
                // is what the sender sees.
                let _ = recv.flow_control().release_capacity(data.len());
            }
            Some(Err(e)) => return Err(CopyError::Tunnel(e)),
            None => {
                socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write).map_err(CopyError::Socket)?;
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
