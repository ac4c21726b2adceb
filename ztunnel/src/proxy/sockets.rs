//! Sockets the data path makes: marked outbound sockets, transparent binds that keep the
//! client's address when connecting to a local workload, and SO_REUSEPORT listeners.
//! (The original destination and the mark itself live in [`crate::socket`].)

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpSocket;

pub use crate::socket::{ZTUNNEL_MARK, original_dst};

/// A new TCP socket for `family_of`, marked so that redirection does not capture it again.
pub fn marked_socket(family_of: IpAddr, mark: Option<u32>) -> io::Result<TcpSocket> {
    let s = if family_of.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(mark) = mark {
        socket2::SockRef::from(&s).set_mark(mark)?;
    }
    s.set_nodelay(true)?;
    Ok(s)
}

/// Binds `s` to `source` even though that address is not local (IP_TRANSPARENT), so the
/// workload sees the real client address.
pub fn bind_transparent(s: &TcpSocket, source: IpAddr) -> io::Result<()> {
    let sock = socket2::SockRef::from(s);
    if source.is_ipv4() {
        sock.set_ip_transparent_v4(true)?;
    } else {
        sock.set_ip_transparent_v6(true)?;
    }
    s.bind(SocketAddr::new(source, 0))
}

/// A listening socket with SO_REUSEPORT, so a new ztunnel can bind beside the old one during
/// a rolling restart and no connection is refused; an IPv6 one takes IPv6 only.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    if addr.is_ipv6() {
        // IPv4 has its own listener on the same port; a dual-stack one would clash with it.
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
