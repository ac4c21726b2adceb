//! What `meshctl` asks running components, as functions the binary and the tests share.
//!
//! - [`fetch`]: a small HTTP/1.1 GET client (hyper) for the debug and admin ports.
//! - [`proxy_status`]: each connected proxy's acknowledged versions against what istiod-lite
//!   serves now, from istiod-lite's `/debug/connections`.
//! - [`certs`]: the certificates a ztunnel holds, from its admin `/certs`.
//! - [`check`]: preflight of a host (kernel features, CNI chain, ports) and health of the
//!   mesh's components.
//! - [`table`]: plain-text tables and time formatting.

pub mod certs;
pub mod check;
pub mod fetch;
pub mod proxy_status;
pub mod table;
