//! The HBONE tunnel: HTTP/2 `CONNECT` streams over mesh TLS.
//!
//! Data path: [`pool`] hands out streams on pooled connections, [`server`] accepts them,
//! [`copy`] moves bytes between a stream and a TCP socket.

pub mod client;
pub mod copy;
pub mod headers;
pub mod pool;
pub mod server;
pub mod stream;

use std::time::Duration;

/// Port every HBONE endpoint listens on.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 tuning shared by both ends of a tunnel.
///
/// Windows are sized for throughput on a single stream: with the defaults (64 KiB) one
/// stream would stall every round trip on a fast link.
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// Flow-control window of each stream.
    pub stream_window: u32,
    /// Flow-control window of the whole connection.
    pub connection_window: u32,
    /// Largest DATA frame accepted.
    pub max_frame_size: u32,
    /// Streams the server lets a client open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Time allowed for TCP connect (client), TLS and the HTTP/2 preface (both ends).
    pub handshake_timeout: Duration,
    /// Silence from the peer after which a PING asks whether it is still there; as long again
    /// without a byte closes the connection (Istio's ztunnel: PING every 10 s, 20 s to answer).
    pub keepalive: Duration,
    /// Client: time allowed for the answer to a CONNECT. Longer than a peer's own connect to
    /// the destination (ztunnel's is 10 s), so its 503 comes first; past it the peer itself
    /// is taken for unresponsive.
    pub answer_timeout: Duration,
}

/// Largest request or response head accepted (RFC 9113 §6.5.2 counting). A CONNECT's head is
/// a few hundred bytes; this leaves room for tracing headers without letting a peer make us
/// hold much.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

impl H2Settings {
    pub(crate) fn limits(&self) -> crate::http2::Limits {
        crate::http2::Limits {
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            max_frame_size: self.max_frame_size,
            max_concurrent_streams: self.max_concurrent_streams,
            max_header_list_size: MAX_HEADER_LIST_SIZE,
            keepalive: self.keepalive,
        }
    }
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_concurrent_streams: 100,
            handshake_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(15),
            keepalive: Duration::from_secs(10),
        }
    }
}
