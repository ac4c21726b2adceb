//! One tunnelled byte stream: an HTTP/2 CONNECT stream as a byte stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::pool::StreamGuard;
use crate::http2::{self, ErrorCode};

/// A bidirectional byte stream carried by one CONNECT stream.
///
/// `AsyncRead`/`AsyncWrite` for general use; [`crate::tunnel::copy`] has a faster path to a TCP
/// socket. Shutting down the write side sends END_STREAM (the tunnel's FIN); dropping the
/// stream before both ends finished resets it.
#[derive(Debug)]
pub struct H2Stream {
    pub(crate) inner: http2::Stream,
    /// Received but not yet read.
    pub(crate) pending: Bytes,
    write_closed: bool,
    /// Keeps the pooled connection's stream count while the stream lives.
    pub(crate) guard: Option<Arc<StreamGuard>>,
}

impl H2Stream {
    pub(crate) fn new(inner: http2::Stream, guard: Option<Arc<StreamGuard>>) -> Self {
        H2Stream { inner, pending: Bytes::new(), write_closed: false, guard }
    }

    /// Aborts the stream with RST_STREAM carrying `code` (the tunnel's TCP RST).
    pub fn reset(&mut self, code: ErrorCode) {
        self.inner.reset(code);
    }
}

/// Maps a stream error to the I/O error a TCP socket would give for the same event.
pub(crate) fn to_io(e: http2::Error) -> io::Error {
    match &e {
        http2::Error::Reset(_) | http2::Error::Refused(_) => io::Error::new(io::ErrorKind::ConnectionReset, e),
        http2::Error::Malformed(_) => io::Error::new(io::ErrorKind::InvalidData, e),
        http2::Error::Connection(c) if matches!(**c, http2::ConnError::Eof) => {
            io::Error::new(io::ErrorKind::ConnectionAborted, e)
        }
        http2::Error::Connection(_) => io::Error::other(e),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.inner.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Hold at most one frame unread, so the window can open again right away.
                    this.inner.release(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
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
        ready!(this.inner.poll_capacity(cx)).map_err(to_io)?;
        // Nothing runs between the two calls on this task, so the capacity is still there.
        let n = this.inner.send(buf, false).map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write goes to TLS and the socket at once; what a full socket held back is
        // flushed by the connection's driver.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.inner.send(&[], true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
