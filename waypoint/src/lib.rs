//! The waypoint: the mesh's L7 proxy for one waypoint Gateway.
//!
//! Data path, in the order a request takes it:
//! - [`proxy`]: the HBONE server ([`proxy::Proxy`]), protocol detection ([`proxy::detect`]),
//!   the HTTP path (route → filters → authorization → backend → endpoint → upstream) and the
//!   TCP fallback.
//! - [`state`]: the snapshot from xDS: services, workloads, compiled routes, policies.
//! - [`authz`]: L7 authorization (pure functions), [`normalize`]: path normalization,
//!   [`headers`]: the hop-by-hop and framing fields.
//! - [`telemetry`]: Istio request metrics, access log, W3C trace context.
//! - [`config`], [`app`]: flags and wiring (admin, readiness, metrics, CA, xDS).
//! - `fuzzing` (feature `fuzzing`): properties of the parsers of client input, for the
//!   libFuzzer targets in `fuzz/` and the corpus-replaying tests.
//!
//! See `ARCHITECTURE.md` for the runtime split and the port table.

#![forbid(unsafe_code)]

pub mod app;
pub mod authz;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod headers;
pub mod normalize;
pub mod proxy;
pub mod state;
pub mod telemetry;
