//! One tunnelled byte stream: the send and receive halves of an HTTP/2 CONNECT stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::pool::StreamGuard;

/// A bidirectional byte stream carried by one CONNECT stream.
///
/// `AsyncRead`/`AsyncWrite` for general use; [`crate::tunnel::copy`] has a faster path to a TCP
/// socket that avoids the extra copy `poll_write` makes. Shutting down the write side sends
/// END_STREAM (the tunnel's FIN); dropping the stream before both ends finished resets it.
#[derive(Debug)]
pub struct H2Stream {
    pub(crate) send: SendStream<Bytes>,
    pub(crate) recv: RecvStream,
    /// Received but not yet read.
    pub(crate) pending: Bytes,
    write_closed: bool,
    /// Keeps the pooled connection's stream count while the stream lives.
    _guard: Option<Arc<StreamGuard>>,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, guard: Option<Arc<StreamGuard>>) -> Self {
        H2Stream { send, recv, pending: Bytes::new(), write_closed: false, _guard: guard }
    }

    /// Aborts the stream with RST_STREAM carrying `reason` (the tunnel's TCP RST).
    pub fn reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }
}

/// Maps an h2 error to the I/O error a TCP socket would give for the same event.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_reset() || e.is_go_away() {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    } else if e.is_io() {
        e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Hold at most one frame unread, so the window can open again right away.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len());
        // `poll_capacity` only reports increases, so use what is already granted first.
        let granted = match this.send.capacity() {
            0 => match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            },
            n => n,
        };
        if granted == 0 {
            // Capacity was assigned and taken back (window shrank); ask again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = granted.min(buf.len());
        this.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 flushes queued frames from the connection task.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
