//! HTTP/2 (RFC 9113) as HBONE uses it: CONNECT streams carrying raw bytes, both ends of the
//! connection, written for the tunnel's data path.
//!
//! - `frame`: the frame layout and each frame type's checks.
//! - [`hpack`]: header compression (RFC 7541), the full decoder a peer's encoder may need and
//!   a simple encoder that never indexes.
//! - `head`: request and response heads out of decoded fields.
//! - `conn`: a connection and its streams, flow control, settings, shutdown.
//! - [`refusals`]: streams refused, by reason, and connections closed for protocol errors, by
//!   code, for metrics.
//! - `session`: what frames go through to the socket: TLS (or, for the fuzz target, nothing).
//! - `stream_ids`: the hasher of the connection's stream map.

mod conn;
pub(crate) mod frame;
mod head;
pub mod hpack;
mod huffman;
pub mod refusals;
mod session;
mod stream_ids;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use conn::Held;
pub use conn::{ConnError, Connection, Error, Limits, Stream};
pub use frame::{ErrorCode, FrameError};
pub use head::{RequestHead, ResponseHead};
pub use refusals::Refusal;
