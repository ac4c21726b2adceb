//! Async unix `SOCK_SEQPACKET` sockets with file-descriptor passing: the ZDS
//! transport. Tokio has no seqpacket type, so this wraps a non-blocking
//! socket in [`AsyncFd`]. The socket `unsafe` of the crate lives here:
//! `recvmsg(2)` and the walk over its control data with the `CMSG_*` macros,
//! and adopting the descriptors the kernel installed for an `SCM_RIGHTS`
//! message.
//!
//! The walk is done by hand rather than with nix's `RecvMsg::cmsgs`, which
//! refuses (`ENOBUFS`) to look at the control data once the kernel cut it
//! short (`MSG_CTRUNC`). unix(7): the kernel then still installs the
//! descriptors that fit (only the excess is closed), so skipping the control
//! data would leak them. Every `SCM_RIGHTS` descriptor that arrived is owned
//! (and closed on drop) whatever the flags say.

#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Most descriptors accepted with one message. ZDS sends one; room for a few
/// more lets us receive (and close) extras. Beyond that the kernel cuts the
/// control data short and closes the excess; the ones that fit are still ours
/// to close, and the message is reported truncated.
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
    /// The message was larger than the buffer (the rest is lost), or carried
    /// more descriptors than `recv` takes (the kernel closed the excess; the
    /// ones that fit are in `fds`). Either way it must be refused.
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
    /// Connects to a listening socket at `path`. Never waits for the listener
    /// to accept: a unix connect completes at once, or, when the listener's
    /// backlog is full (it is not accepting), fails with `WouldBlock` rather
    /// than parking a thread until it does; callers retry on their backoff.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        let addr = SockAddr::unix(path)?;
        let sock = new_socket()?;
        sock.set_nonblocking(true)?;
        sock.connect(&addr)?;
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

    /// Receives one message into `buf`. Descriptors that came with it are
    /// always returned (owned), also when the message is reported truncated.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        self.inner.async_io(Interest::READABLE, |s| recv_now(s.as_raw_fd(), buf)).await
    }
}

/// One non-blocking `recvmsg(2)` on `fd`.
fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let fd_bytes = u32::try_from(MAX_FDS * size_of::<RawFd>()).expect("small constant");
    // SAFETY: CMSG_SPACE is arithmetic on its argument only.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // u64 words: the buffer is aligned for `cmsghdr`, as the CMSG_* macros assume.
    let mut control = vec![0u64; space.div_ceil(size_of::<u64>())];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    // The field's integer type differs between C libraries.
    hdr.msg_controllen = space as _;
    // SAFETY: `hdr` points at `iov` (into `buf`, `buf.len()` bytes) and at
    // `control` (`space` bytes), all alive and exclusively borrowed for the
    // call; the kernel writes within those lengths.
    let n = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel set `msg_controllen` to the control bytes it wrote (fewer
    // than `space` when it cut them short); walk exactly those.
    let written = (hdr.msg_controllen as usize).min(space);
    let end = (control.as_ptr() as usize) + written;
    let mut fds = Vec::new();
    // SAFETY: CMSG_FIRSTHDR only reads `hdr`'s control pointer and length,
    // which describe our `control` buffer; it returns null when no header fits.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&hdr) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies whole
        // within the first `written` bytes of `control`, which is aligned for it.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA is pointer arithmetic within the same header.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let start = data as usize;
            // `cmsg_len` counts the descriptors the kernel installed; never
            // read past what it wrote.
            let stop = ((cmsg as usize).saturating_add(header.cmsg_len as usize)).min(end);
            let count = stop.saturating_sub(start) / size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: descriptor `i` lies within the written control data
                // (checked above); CMSG_DATA need not be aligned for `c_int`.
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed `raw` in this process for
                // this SCM_RIGHTS message; nothing else knows it, so we are
                // its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `cmsg` is a header within `hdr`'s control data; CMSG_NXTHDR
        // checks the next one against `msg_controllen` and returns null past it.
        cmsg = unsafe { libc::CMSG_NXTHDR(&hdr, cmsg) };
    }
    let truncated = hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    Ok(Received { len: n as usize, fds, truncated })
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
