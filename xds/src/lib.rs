//! Delta xDS over ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`)
//! for any protobuf message type.
//!
//! - [`store::ResourceStore`]: versioned resources per type URL, filled by
//!   the control plane; every change wakes the server's streams.
//! - [`server::XdsServer`]: one task per stream tracks the client's
//!   subscriptions (wildcard or by name), the versions it acknowledged or
//!   declared on resume, and the one outstanding push per type; it sends only
//!   what changed, plus removals, and never resends a rejected push unchanged.
//!   Every name a client subscribes to is answered (the resource, or its
//!   removal if it does not exist), as the delta protocol requires.
//! - [`client::Client`]: subscribes by type URL, decodes each push into a
//!   [`client::ResourceHandler`], ACKs or NACKs it (an all-or-nothing handler
//!   keeps its last good state on a NACK; a per-resource one drops only the
//!   resources it rejected and applies the rest; a push naming a resource
//!   twice, or none, is NACKed whole), and reconnects with backoff,
//!   resuming with `initial_resource_versions` of what it holds. The server
//!   treats the names of a rejected push as held at an unknown version, so
//!   either kind of client catches up on the same stream.

#![forbid(unsafe_code)]

pub mod client;
/// Properties of the gRPC reader on arbitrary bytes (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod grpc;
pub mod server;
pub mod store;

pub use client::{
    Backoff, Cache, CacheHandler, Client, ClientHandle, ClientStatus, ClientTypeStatus, Names, ResourceHandler,
    StreamError, Update, cache_handler, cache_handler_per_resource,
};
pub use server::{
    AdsService, Authenticate, ConnectionStatus, DEFAULT_PUSH_BUDGET, NackStatus, ServeError, ServerStats, TypeStatus,
    XdsServer,
};
pub use store::{ResourceStore, StoredResource};
