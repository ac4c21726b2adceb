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
//! `h2c` (HTTP/2 of any spelling) is not an upgrade the waypoint passes on: it would switch the
//! application's connection to HTTP/2 whose requests no policy sees, so it is taken out of the
//! `Upgrade` list (RFC 9110 §7.8: a list) and dropped with the other hop-by-hop headers. Only a
//! `101` naming a protocol that was asked for is spliced; any other `101` is answered with 502.
//!
//! HTTP/2 clients ask with an extended CONNECT (RFC 8441: method CONNECT, `:protocol`
//! naming the protocol), which the waypoint allows by advertising
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`. [`extended_connect`] turns it into the HTTP/1.1 form
//! (GET with `Upgrade`) before anything looks at it, so routes and policies see one request
//! whichever version the client speaks, and the application gets the handshake it knows.
//! RFC 8441 leaves out WebSocket's `Sec-WebSocket-Key`; an HTTP/1.1 WebSocket server refuses
//! a handshake without one, so the waypoint supplies a fresh key and drops the
//! `Sec-WebSocket-Accept` that answers it. The client gets `200` instead of the `101`, and
//! the stream carries the bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, Request, Response, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The protocols an HTTP/1.1 request asks to switch its connection to: `Connection` lists
/// `upgrade` and `Upgrade` lists (RFC 9110 §7.8: a comma-separated list, possibly over several
/// fields) protocols other than HTTP/2 (`is_http2`); those are left out, and what remains is
/// returned as one list. `None` when nothing remains.
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
    if !listed {
        return None;
    }
    let protocols = protocols(headers)?;
    let kept: Vec<&str> = protocols.into_iter().filter(|p| !is_http2(p)).collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// The protocols the `Upgrade` fields of `headers` list, in order; `None` if a field is not
/// text (then nothing is upgraded) or there are none.
fn protocols(headers: &HeaderMap) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::UPGRADE) {
        out.extend(v.to_str().ok()?.split(',').map(str::trim).filter(|t| !t.is_empty()));
    }
    (!out.is_empty()).then_some(out)
}

/// Whether a protocol (`name[/version]`) is HTTP/2 (`h2c`, `h2`, `HTTP/2...`): an upgrade to
/// it would switch the application's connection to a protocol whose requests the waypoint
/// never sees (h2c smuggling).
fn is_http2(protocol: &str) -> bool {
    let (name, version) = protocol.split_once('/').unwrap_or((protocol, ""));
    name.eq_ignore_ascii_case("h2c")
        || name.eq_ignore_ascii_case("h2")
        || (name.eq_ignore_ascii_case("http") && version.starts_with('2'))
}

/// `Sec-WebSocket-Key` (RFC 6455 §4.1), which RFC 8441 handshakes do not carry.
const WS_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
/// `Sec-WebSocket-Version`; 13 is the only version RFC 6455 defines.
const WS_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
/// `Sec-WebSocket-Accept`, the server's answer to a key.
const WS_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// Why an HTTP/2 extended CONNECT cannot be carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// `:protocol` is not a token an HTTP/1.1 `Upgrade` header can carry, or is `h2c`.
    #[error("unsupported :protocol {0:?}")]
    Protocol(String),
}

/// The protocol an HTTP/2 extended CONNECT (RFC 8441) asks for, with the request rewritten
/// to the HTTP/1.1 upgrade it stands for: method GET, and for WebSocket a fresh
/// `Sec-WebSocket-Key` (and version 13) unless the client sent them. `Ok(None)`: not an
/// extended CONNECT, left as it is.
pub fn extended_connect<B>(req: &mut Request<B>) -> Result<Option<HeaderValue>, ConnectError> {
    if req.method() != Method::CONNECT {
        return Ok(None);
    }
    let Some(proto) = req.extensions_mut().remove::<hyper::ext::Protocol>() else { return Ok(None) };
    let name = proto.as_str();
    let token = name.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if name.is_empty() || !token || name.eq_ignore_ascii_case("h2c") {
        return Err(ConnectError::Protocol(name.to_owned()));
    }
    let value = HeaderValue::from_str(name).map_err(|_| ConnectError::Protocol(name.to_owned()))?;
    *req.method_mut() = Method::GET;
    if name.eq_ignore_ascii_case("websocket") {
        let h = req.headers_mut();
        if !h.contains_key(WS_KEY) {
            let key: [u8; 16] = rand::random();
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
            h.insert(WS_KEY, HeaderValue::from_str(&encoded).expect("base64 is a valid header value"));
        }
        if !h.contains_key(WS_VERSION) {
            h.insert(WS_VERSION, HeaderValue::from_static("13"));
        }
    }
    Ok(Some(value))
}

/// The head of an application's `101` as an HTTP/2 client's extended CONNECT expects it:
/// `200`, and no `Sec-WebSocket-Accept` (it answers the key the waypoint made up).
pub fn to_h2_accept(head: &mut ::http::response::Parts) {
    head.status = ::http::StatusCode::OK;
    head.headers.remove(WS_ACCEPT);
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

/// Whether an upstream answer agrees to the upgrade that was asked for: `101` whose `Upgrade`
/// names only protocols in `asked` (the list sent upstream). A `101` to anything else is not
/// spliced: the client would be joined to a protocol nobody asked the waypoint to pass on.
pub fn switched<B>(resp: &Response<B>, asked: &HeaderValue) -> bool {
    if resp.status() != ::http::StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    let Ok(asked) = asked.to_str() else { return false };
    let asked: Vec<&str> = asked.split(',').map(str::trim).collect();
    protocols(resp.headers())
        .is_some_and(|chosen| chosen.iter().all(|c| !is_http2(c) && asked.iter().any(|a| a.eq_ignore_ascii_case(c))))
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
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
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
        // `Upgrade` is a list (RFC 9110 §7.8), over one field or several: HTTP/2 is taken out
        // of it wherever it stands.
        for list in [&[("upgrade", "websocket, h2c")][..], &[("upgrade", "h2c"), ("upgrade", "websocket")]] {
            let mut h = headers(&[("connection", "Upgrade, HTTP2-Settings")]);
            for (k, v) in list {
                h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(requested(Version::HTTP_11, &h).unwrap(), "websocket", "{list:?}");
        }
        for only_http2 in ["h2c, H2", "HTTP/2.0", " , h2c ,"] {
            let h = headers(&[("connection", "upgrade"), ("upgrade", only_http2)]);
            assert!(requested(Version::HTTP_11, &h).is_none(), "{only_http2:?}");
        }
    }

    #[test]
    fn only_a_101_to_a_protocol_asked_for_is_spliced() {
        let answer = |status: u16, upgrade: &[&str]| {
            let mut r = Response::builder().status(status);
            for u in upgrade {
                r = r.header(header::UPGRADE, *u);
            }
            r.body(()).unwrap()
        };
        let asked = HeaderValue::from_static("websocket, foo/2");
        assert!(switched(&answer(101, &["websocket"]), &asked));
        assert!(switched(&answer(101, &["WebSocket"]), &asked));
        assert!(switched(&answer(101, &["foo/2"]), &asked));
        assert!(!switched(&answer(200, &["websocket"]), &asked));
        assert!(!switched(&answer(101, &[]), &asked));
        assert!(!switched(&answer(101, &["h2c"]), &asked));
        assert!(!switched(&answer(101, &["websocket", "h2c"]), &asked));
        assert!(!switched(&answer(101, &["irc"]), &asked));
        assert!(!switched(&answer(101, &["h2c"]), &HeaderValue::from_static("h2c")));
    }

    fn extended(proto: Option<&str>, method: Method, extra: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().method(method).uri("http://chat.svc/ws").body(()).unwrap();
        *req.headers_mut() = headers(extra);
        if let Some(p) = proto {
            req.extensions_mut().insert(hyper::ext::Protocol::from(p));
        }
        req
    }

    #[test]
    fn an_extended_connect_becomes_a_get_upgrade_with_a_key() {
        let mut req = extended(Some("websocket"), Method::CONNECT, &[("sec-websocket-protocol", "chat")]);
        assert_eq!(extended_connect(&mut req).unwrap().unwrap(), "websocket");
        assert_eq!(req.method(), Method::GET);
        let key = req.headers()[WS_KEY].to_str().unwrap();
        let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key).unwrap();
        assert_eq!(raw.len(), 16, "RFC 6455: 16 random bytes, base64");
        assert_eq!(req.headers()[WS_VERSION], "13");
        assert_eq!(req.headers()["sec-websocket-protocol"], "chat");
        // Each handshake gets its own key.
        let mut other = extended(Some("websocket"), Method::CONNECT, &[]);
        extended_connect(&mut other).unwrap();
        assert_ne!(other.headers()[WS_KEY], req.headers()[WS_KEY]);
    }

    #[test]
    fn a_key_the_client_sent_is_kept_and_other_protocols_get_none() {
        let mut req =
            extended(Some("websocket"), Method::CONNECT, &[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")]);
        extended_connect(&mut req).unwrap();
        assert_eq!(req.headers()[WS_KEY], "dGhlIHNhbXBsZSBub25jZQ==");
        let mut req = extended(Some("connect-udp"), Method::CONNECT, &[]);
        assert_eq!(extended_connect(&mut req).unwrap().unwrap(), "connect-udp");
        assert!(req.headers().get(WS_KEY).is_none());
    }

    #[test]
    fn only_an_extended_connect_with_a_usable_protocol_is_converted() {
        // Plain CONNECT, or a :protocol on another method: not an upgrade.
        let mut plain = extended(None, Method::CONNECT, &[]);
        assert_eq!(extended_connect(&mut plain), Ok(None));
        assert_eq!(plain.method(), Method::CONNECT);
        let mut get = extended(Some("websocket"), Method::GET, &[]);
        assert_eq!(extended_connect(&mut get), Ok(None));
        for bad in ["h2c", "H2C", "web socket", "a/b", ""] {
            let mut req = extended(Some(bad), Method::CONNECT, &[]);
            assert_eq!(extended_connect(&mut req), Err(ConnectError::Protocol(bad.to_owned())), "{bad:?}");
        }
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
