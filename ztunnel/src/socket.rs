//! Socket options the in-pod data path needs: the original destination of a
//! redirected connection, and ztunnel's own socket mark.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::SockRef;

/// Mark (`SO_MARK`) on every socket ztunnel opens in a pod's namespace, so the
/// redirection rules never capture ztunnel's own traffic. Istio's value.
pub const ZTUNNEL_MARK: u32 = 0x539;

/// The destination a connection redirected by the in-pod rules was really
/// addressed to (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`).
pub fn original_dst(stream: &impl AsFd) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("socket has no IP address"))?;
    let orig = match local {
        // A v4-mapped local address means the v4 conntrack entry holds the answer.
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => sock.original_dst_v6()?,
        _ => sock.original_dst_v4()?,
    };
    orig.as_socket().ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

/// Puts [`ZTUNNEL_MARK`] on a socket.
pub fn set_ztunnel_mark(socket: &impl AsFd) -> io::Result<()> {
    SockRef::from(socket).set_mark(ZTUNNEL_MARK)
}
