//! The mesh CA: a persisted root ([`signer`]), the Istio CA service ([`service`]) and, in
//! Kubernetes mode, TokenReview of its callers ([`tokenreview`]).

mod der;
pub mod service;
pub mod signer;
pub mod tokenreview;

pub(crate) use service::bearer;
pub use service::{
    Authenticator, CaService, IMPERSONATED_IDENTITY, KubeAuth, NodeTokens, PlacedPod, Placement, REFUSAL_REASON,
    Refusal,
};
pub use signer::{CaError, CaSigner, DEFAULT_MAX_TTL, DEFAULT_TTL};
pub use tokenreview::{ReviewError, ServiceAccountToken, TokenReviewer};
