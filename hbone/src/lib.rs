//! Mesh TLS identity and the HBONE tunnel.
//!
//! - [`identity`]: SPIFFE IDs, strictly parsed.
//! - [`certs`], [`store`]: workload certificates, trust roots, and the swappable store both
//!   ends of every handshake read.
//! - [`tls`]: TLS 1.3 contexts whose verifiers check chains against the mesh roots and
//!   identities against what the caller expects.
//! - [`http2`]: HTTP/2 as the tunnel needs it, written for its data path: streams write
//!   straight into TLS, and one driver per connection writes received bytes straight to the
//!   socket they are for.
//! - [`tunnel`]: HTTP/2 CONNECT client pool, server, and the byte pump between a tunnel stream
//!   and a TCP socket.
//! - `fuzzing` (feature `fuzzing`): properties of the parsers that read what peers send, for
//!   the libFuzzer targets in `fuzz/` and the corpus-replaying tests.
#![forbid(unsafe_code)]

pub mod certs;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod http2;
pub mod identity;
pub mod log_budget;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod tunnel;

pub use certs::{CertError, TrustRoots, WorkloadCert};
pub use identity::{DEFAULT_TRUST_DOMAIN, Identity, IdentityError};
pub use store::CertStore;
