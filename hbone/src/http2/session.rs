//! What a connection's frames go through on their way to and from the socket: TLS, and for
//! the fuzz target only (feature `fuzzing`), plain bytes, so that arbitrary input reaches the
//! connection's state machine without a handshake and with nothing random in between.
//!
//! The methods are rustls's own, so the connection calls them as it would call rustls; in a
//! build without the feature the enum has one variant and every match compiles away.

use std::io::{self, BufRead, IoSlice, Read, Write};

// Boxing TLS would put a pointer chase on every read and write of a production build, where
// the small variant does not exist.
#[cfg_attr(
    any(test, feature = "fuzzing"),
    allow(clippy::large_enum_variant, reason = "the small variant is for tests and fuzzing only")
)]
pub(super) enum Session {
    Tls(rustls::Connection),
    /// Plain bytes both ways (see [`Plain`]).
    #[cfg(any(test, feature = "fuzzing"))]
    Plain(Plain),
}

impl Session {
    /// TLS whose outgoing records are never refused (see [`Session::write_plaintext`]).
    pub(super) fn tls(mut tls: rustls::Connection) -> Self {
        tls.set_buffer_limit(None);
        Session::Tls(tls)
    }

    /// Takes all of `bufs`: nothing limits what is staged for the socket.
    pub(super) fn write_plaintext(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Session::Tls(tls) => tls.writer().write_vectored(bufs),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(p) => {
                let mut n = 0;
                for b in bufs {
                    p.sending.extend_from_slice(b);
                    n += b.len();
                }
                Ok(n)
            }
        }
    }

    pub(super) fn wants_write(&self) -> bool {
        match self {
            Session::Tls(tls) => tls.wants_write(),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(p) => !p.sending.is_empty(),
        }
    }

    /// One write of staged bytes to `wr`.
    pub(super) fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        match self {
            Session::Tls(tls) => tls.write_tls(wr),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(p) => {
                let n = wr.write(&p.sending)?;
                p.sending.drain(..n);
                Ok(n)
            }
        }
    }

    /// One read from `rd`; `Ok(0)` at its end.
    pub(super) fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize> {
        match self {
            Session::Tls(tls) => tls.read_tls(rd),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(p) => {
                let len = p.received.len();
                p.received.resize(len + Plain::READ, 0);
                let read = rd.read(&mut p.received[len..]);
                p.received.truncate(len + *read.as_ref().unwrap_or(&0));
                p.eof |= matches!(read, Ok(0));
                read
            }
        }
    }

    /// Decrypts what was read.
    pub(super) fn process_new_packets(&mut self) -> Result<(), rustls::Error> {
        match self {
            Session::Tls(tls) => tls.process_new_packets().map(|_| ()),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(_) => Ok(()),
        }
    }

    /// Received plaintext: `WouldBlock` when there is none yet, `Ok([])` at a clean end and
    /// another error at an unclean one, as rustls's reader.
    pub(super) fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Session::Tls(tls) => tls.reader().into_first_chunk(),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(p) => match (&p.received[..], p.eof) {
                ([], false) => Err(io::ErrorKind::WouldBlock.into()),
                // Plain bytes have no close_notify: every end is unclean.
                ([], true) => Err(io::ErrorKind::UnexpectedEof.into()),
                (chunk, _) => Ok(chunk),
            },
        }
    }

    pub(super) fn consume(&mut self, n: usize) {
        match self {
            Session::Tls(tls) => tls.reader().consume(n),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(p) => {
                p.received.drain(..n);
            }
        }
    }

    pub(super) fn send_close_notify(&mut self) {
        match self {
            Session::Tls(tls) => tls.send_close_notify(),
            #[cfg(any(test, feature = "fuzzing"))]
            Session::Plain(_) => {}
        }
    }

    /// Bytes staged for the socket and not yet written (plain bytes only; TLS does not say).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn staged(&self) -> usize {
        match self {
            Session::Tls(_) => 0,
            Session::Plain(p) => p.sending.len(),
        }
    }
}

/// The plain session's buffers.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Default)]
pub(super) struct Plain {
    received: Vec<u8>,
    sending: Vec<u8>,
    eof: bool,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Plain {
    /// Bytes one read asks for: a TLS record's worth, as rustls reads.
    const READ: usize = 16 * 1024 + 5;
}
