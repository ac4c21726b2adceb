//! The mesh CA: a persisted root ([`signer`]) and the Istio CA service ([`service`]).

pub mod service;
pub mod signer;

pub use service::{CaService, IMPERSONATED_IDENTITY, NodeTokens, Placement};
pub use signer::{CaError, CaSigner};
