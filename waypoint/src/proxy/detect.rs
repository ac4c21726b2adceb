//! Protocol detection on the first bytes of a tunnelled stream: the HTTP/2 prior-knowledge
//! preface, an HTTP/1.x request line, or anything else (plain TCP). The bytes read are kept
//! and replayed ([`Rewind`]), so whichever protocol handler follows sees the whole stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest HTTP/1 request line we wait for before deciding it is not HTTP.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// What the stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge.
    Http2,
    /// HTTP/1.0 or 1.1.
    Http1,
    /// Anything else.
    Tcp,
}

/// The verdict on the bytes seen so far: decided, or more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // HTTP/2 preface, or a prefix of it.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() { Some(Protocol::Http2) } else { None };
    }
    // HTTP/1: METHOD SP request-target SP HTTP/1.x CRLF, method an upper-case token.
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len > 20 {
        return Some(Protocol::Tcp);
    }
    if method_len == buf.len() {
        return None;
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Some(Protocol::Tcp);
    }
    let rest = &buf[method_len + 1..];
    let eol = rest.iter().position(|&b| b == b'\n');
    if eol.unwrap_or(rest.len()) > MAX_REQUEST_LINE {
        return Some(Protocol::Tcp);
    }
    let Some(eol) = eol else {
        // The target must be visible characters; bail out early on binary.
        if rest.iter().any(|&b| b < 0x20 && b != b'\r') {
            return Some(Protocol::Tcp);
        }
        return None;
    };
    let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
    let Some(sp) = line.iter().rposition(|&b| b == b' ') else { return Some(Protocol::Tcp) };
    let (target, version) = (&line[..sp], &line[sp + 1..]);
    let ok = !target.is_empty()
        && target.iter().all(|&b| b > 0x20 && b < 0x7f)
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0");
    Some(if ok { Protocol::Http1 } else { Protocol::Tcp })
}

/// Reads from `io` until [`classify`] decides, the peer stops sending for `quiet` (then TCP:
/// server-first protocols send nothing), or closes. Returns the bytes read.
pub async fn detect<S: AsyncRead + Unpin>(io: &mut S, quiet: Duration) -> io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(p) = classify(&buf) {
            return Ok((p, buf.freeze()));
        }
        match tokio::time::timeout(quiet, io.read_buf(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => return Ok((Protocol::Tcp, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A stream whose first bytes were already read: they are returned again before the rest.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` then `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_shapes() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET / HTT"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"hello world\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tcp), "a TLS ClientHello is TCP");
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"GET /\x00x"), Some(Protocol::Tcp));
    }

    /// Long inputs always get a decision (random input: `crate::fuzzing::detect`).
    #[test]
    fn long_input_is_decided() {
        let long = vec![b'A'; 100];
        assert_eq!(classify(&long), Some(Protocol::Tcp));
        let mut long_line = b"GET /".to_vec();
        long_line.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(classify(&long_line), Some(Protocol::Tcp));
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\nrest").await.unwrap();
        drop(a);
        let mut b = b;
        let (p, seen) = detect(&mut b, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        let mut all = Vec::new();
        Rewind::new(seen, b).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nrest");
    }
}
