//! Relaying a query to the upstream resolvers, as bytes: each upstream in turn gets
//! [`DnsConfig::upstream_timeout`] to answer.
//!
//! A UDP answer is taken only from the upstream asked (a connected socket) and only with the
//! query's id, so a stray or forged datagram to the ephemeral port cannot answer the pod. Each
//! query has its own socket, hence its own random source port.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::DnsConfig;
use super::message;

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No upstream is configured.
    #[error("no upstream resolver configured")]
    None,
    /// Too many queries in flight.
    #[error("too many DNS queries in flight")]
    Busy,
    /// Every upstream failed; the last one's error.
    #[error("upstream {upstream}: {why}")]
    Failed {
        /// The last upstream tried.
        upstream: SocketAddr,
        /// What went wrong.
        why: String,
    },
}

/// Asks each upstream over UDP until one answers. An answer longer than `max` (the client's
/// limit) is returned cut to `max + 1` bytes: its header says what the client is told.
pub(super) async fn udp(cfg: &DnsConfig, msg: &[u8], max: usize) -> Result<Vec<u8>, UpstreamError> {
    each(cfg, |up| udp_once(up, msg, max)).await
}

/// Asks each upstream over TCP until one answers.
pub(super) async fn tcp(cfg: &DnsConfig, msg: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    each(cfg, |up| tcp_once(up, msg)).await
}

async fn each<F, Fut>(cfg: &DnsConfig, ask: F) -> Result<Vec<u8>, UpstreamError>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<u8>>>,
{
    let mut last = UpstreamError::None;
    for &up in &cfg.upstreams {
        match tokio::time::timeout(cfg.upstream_timeout, ask(up)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = UpstreamError::Failed { upstream: up, why: e.to_string() },
            Err(_) => {
                last = UpstreamError::Failed { upstream: up, why: format!("no answer in {:?}", cfg.upstream_timeout) }
            }
        }
    }
    Err(last)
}

async fn udp_once(up: SocketAddr, msg: &[u8], max: usize) -> std::io::Result<Vec<u8>> {
    let any: SocketAddr =
        if up.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(up).await?;
    socket.send(msg).await?;
    let id = message::id(msg);
    // One byte more than the client takes tells a longer answer from one that fits; the rest of
    // a longer datagram is of no use, so no query holds 64 KiB for it.
    let mut buf = vec![0u8; max.min(usize::from(u16::MAX)) + 1];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Another id: a late answer to nothing we asked on this socket, or a forgery; wait on.
        if n >= message::HEADER_LEN && message::id(&buf[..n]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_once(up: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    s.set_nodelay(true)?;
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("query over 64 KiB"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut answer).await?;
    if message::id(&answer) != message::id(msg) {
        return Err(std::io::Error::other("answer with another id"));
    }
    Ok(answer)
}
