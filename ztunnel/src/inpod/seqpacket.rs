//! Async unix `SOCK_SEQPACKET` sockets with file-descriptor passing: the ZDS
//! transport. Tokio has no seqpacket type, so this wraps a non-blocking
//! socket in [`AsyncFd`]. The one `unsafe` of the crate lives here: adopting
//! the descriptors the kernel installed for an `SCM_RIGHTS` message.

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::cmsg_space;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Most descriptors accepted with one message. ZDS sends one; room for a few
/// more lets us receive (and close) extras instead of having the kernel cut
/// the control data short.
const MAX_FDS: usize = 8;

/// One connected seqpacket socket. Each `send` is one message and each `recv`
/// returns exactly one message.
#[derive(Debug)]
pub struct SeqPacket {
    inner: AsyncFd<Socket>,
}

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the message that fit in the buffer; 0 means the peer closed.
    pub len: usize,
    /// Descriptors that came with it, now owned by the receiver.
    pub fds: Vec<OwnedFd>,
    /// The message was larger than the buffer (the rest is lost).
    pub truncated: bool,
}

/// Registers a socket with the tokio reactor.
fn register(sock: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: a `socket2::Socket` owns its descriptor and returns the same one
    // from `as_raw_fd` until it is dropped, which happens only when the
    // `AsyncFd` drops it.
    unsafe { AsyncFd::register(sock) }.map_err(|e| e.into_parts().1)
}

fn new_socket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

impl SeqPacket {
    /// Connects to a listening socket at `path`.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        let addr = SockAddr::unix(path)?;
        // A unix connect completes at once unless the backlog is full, so a
        // blocking connect before switching to non-blocking mode is fine.
        let sock = tokio::task::spawn_blocking(move || {
            let sock = new_socket()?;
            sock.connect(&addr)?;
            Ok::<_, io::Error>(sock)
        })
        .await
        .map_err(io::Error::other)??;
        Self::from_socket(sock)
    }

    fn from_socket(sock: Socket) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self { inner: register(sock)? })
    }

    /// Sends one message, optionally with one descriptor attached.
    pub async fn send(&self, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        self.send_fds(data, &fds).await
    }

    /// Sends one message with any number of descriptors (tests use this to
    /// misbehave).
    pub async fn send_fds(&self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let iov = [IoSlice::new(data)];
        let cmsgs: Vec<ControlMessage<'_>> =
            if fds.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(fds)] };
        let sent = self
            .inner
            .async_io(Interest::WRITABLE, |s| {
                sendmsg::<UnixAddr>(s.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
            })
            .await?;
        if sent != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short seqpacket send"));
        }
        Ok(())
    }

    /// Receives one message into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.inner
            .async_io(Interest::READABLE, |s| {
                let mut cmsg = cmsg_space!([RawFd; MAX_FDS]);
                let mut iov = [IoSliceMut::new(buf)];
                let msg = recvmsg::<UnixAddr>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
                    .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                // Errors only when the control data was cut short; the kernel
                // then drops what did not fit.
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel just installed `fd` in this
                                // process for this SCM_RIGHTS message; nothing
                                // else knows it, so we are its only owner.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                Ok(Received { len: msg.bytes, fds, truncated })
            })
            .await
    }
}

/// A listening seqpacket socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    inner: AsyncFd<Socket>,
}

impl SeqPacketListener {
    /// Binds at `path`, replacing a stale socket file left by a previous run,
    /// and makes it accessible to its owner only (whoever can connect can
    /// hand pods to or take them from ztunnel).
    pub fn bind(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let sock = new_socket()?;
        sock.bind(&SockAddr::unix(path)?)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        sock.listen(16)?;
        sock.set_nonblocking(true)?;
        Ok(Self { inner: register(sock)? })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<SeqPacket> {
        let (sock, _) = self.inner.async_io(Interest::READABLE, |s| s.accept()).await?;
        SeqPacket::from_socket(sock)
    }
}
