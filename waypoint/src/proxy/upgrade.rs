//! HTTP/1.1 protocol upgrades (WebSocket and the like, RFC 9110 §7.8) through the waypoint.
//!
//! The upgrade request is an ordinary request on the way in: normalized, authorized, routed,
//! its headers modified; only retries and mirrors are off (an upgrade cannot be replayed).
//! It goes to the application on a connection of its own with `Connection: upgrade` and
//! `Upgrade` kept. When the application answers `101 Switching Protocols`, the client gets
//! the 101 and both connections become one byte stream, copied both ways until each side has
//! closed. The request is accounted (metrics, access log, span) when that stream ends, with
//! the bytes that crossed it. Any other answer is returned as a normal response and the
//! client's connection stays HTTP.
//!
//! `h2c` is not an upgrade the waypoint passes on: it would switch the hop to the waypoint,
//! not the application's connection, so it is dropped with the other hop-by-hop headers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The protocol an HTTP/1.1 request asks to switch its connection to: `Connection` lists
/// `upgrade` and `Upgrade` names a protocol other than `h2c`.
pub fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let proto = headers.get(header::UPGRADE)?;
    if !listed || proto.is_empty() || proto.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return None;
    }
    Some(proto.clone())
}

/// Puts the upgrade back on a head whose hop-by-hop headers were stripped.
pub fn keep(headers: &mut HeaderMap, proto: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, proto);
}

/// Bytes that crossed an upgraded connection, each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crossed {
    /// Client to application.
    pub up: u64,
    /// Application to client.
    pub down: u64,
}

/// Joins the client's upgraded connection and the application's, copying both ways until
/// both have closed (or one fails). The counts are exact whatever the ending.
pub async fn splice(client: OnUpgrade, app: OnUpgrade) -> (Crossed, Option<io::Error>) {
    let (client, app) = tokio::join!(client, app);
    let (client, app) = match (client, app) {
        (Ok(c), Ok(a)) => (c, a),
        (Err(e), _) | (_, Err(e)) => return (Crossed::default(), Some(io::Error::other(e))),
    };
    let mut client = Tally { io: TokioIo::new(client), read: 0 };
    let mut app = Tally { io: TokioIo::new(app), read: 0 };
    // The tallies outlive the copy, so its counts are known even when it fails.
    let err = tokio::io::copy_bidirectional(&mut client, &mut app).await.err();
    (Crossed { up: client.read, down: app.read }, err)
}

/// Whether an upstream answer agrees to the upgrade.
pub fn switched<B>(resp: &Response<B>) -> bool {
    resp.status() == ::http::StatusCode::SWITCHING_PROTOCOLS
}

/// Counts what is read through it.
struct Tally<T> {
    io: T,
    read: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tally<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tally<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers_on_http_1_1() {
        let ws = headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(requested(Version::HTTP_11, &ws).unwrap(), "websocket");
        // The token may sit in a second Connection header.
        let split = headers(&[("connection", "keep-alive"), ("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(requested(Version::HTTP_11, &split).is_some());
        assert!(requested(Version::HTTP_10, &ws).is_none());
        assert!(requested(Version::HTTP_2, &ws).is_none());
        assert!(requested(Version::HTTP_11, &headers(&[("upgrade", "websocket")])).is_none());
        assert!(requested(Version::HTTP_11, &headers(&[("connection", "upgrade")])).is_none());
        // "upgrades" is not the token "upgrade".
        assert!(
            requested(Version::HTTP_11, &headers(&[("connection", "upgrades"), ("upgrade", "websocket")])).is_none()
        );
    }

    #[test]
    fn h2c_is_not_passed_on() {
        let h2c = headers(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "H2C")]);
        assert!(requested(Version::HTTP_11, &h2c).is_none());
    }

    #[test]
    fn keep_puts_back_exactly_the_upgrade() {
        let mut h = headers(&[("x-a", "1")]);
        keep(&mut h, HeaderValue::from_static("websocket"));
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.len(), 3);
    }
}
