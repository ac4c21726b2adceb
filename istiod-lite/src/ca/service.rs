//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: who may get which certificate.
//!
//! File mode authenticates callers by per-node bootstrap tokens (`authorization: Bearer
//! <token>`), each naming the node it belongs to. A node proxy asks on behalf of its pods,
//! naming the identity in the request metadata's `ImpersonatedIdentity` (as Istio's ztunnel
//! does); the identity is granted only if a pod with that service account runs on the
//! caller's node. Every refusal says why, and is logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hbone::Identity;
use proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Request, Response, Status};

use super::signer::{CaError, CaSigner};

/// The metadata key naming the identity a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Where pods run, as far as the CA must know.
pub trait Placement: Send + Sync + 'static {
    /// Whether a pod running as `identity` is scheduled on `node`.
    fn runs_on(&self, identity: &Identity, node: &str) -> bool;
}

impl<F> Placement for F
where
    F: Fn(&Identity, &str) -> bool + Send + Sync + 'static,
{
    fn runs_on(&self, identity: &Identity, node: &str) -> bool {
        self(identity, node)
    }
}

/// Bootstrap tokens: token → node name.
#[derive(Debug, Clone, Default)]
pub struct NodeTokens(pub HashMap<String, String>);

impl NodeTokens {
    /// The node a bearer token belongs to.
    pub fn node(&self, token: &str) -> Option<&str> {
        self.0.get(token).map(String::as_str)
    }
}

/// The CA service.
pub struct CaService<P> {
    signer: Arc<CaSigner>,
    tokens: NodeTokens,
    placement: Arc<P>,
}

impl<P: Placement> CaService<P> {
    /// A CA signing with `signer` for callers holding `tokens`, checking pods with `placement`.
    pub fn new(signer: Arc<CaSigner>, tokens: NodeTokens, placement: Arc<P>) -> Self {
        CaService { signer, tokens, placement }
    }

    /// The tonic service to mount.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    fn decide(&self, req: &Request<IstioCertificateRequest>) -> Result<(Identity, String), Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("no bearer token"))?;
        let node = self.tokens.node(token).ok_or_else(|| Status::unauthenticated("unknown token"))?.to_owned();
        let body = req.get_ref();
        let wanted = body
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
            .ok_or_else(|| Status::invalid_argument(format!("metadata.{IMPERSONATED_IDENTITY} is required")))?;
        let identity: Identity =
            wanted.parse().map_err(|e| Status::invalid_argument(format!("metadata.{IMPERSONATED_IDENTITY}: {e}")))?;
        if !self.placement.runs_on(&identity, &node) {
            return Err(Status::permission_denied(format!("no pod running as {identity} is on node {node}")));
        }
        Ok((identity, node))
    }
}

#[tonic::async_trait]
impl<P: Placement> IstioCertificateService for CaService<P> {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (identity, node) = self.decide(&req).inspect_err(|s| {
            tracing::warn!(code = ?s.code(), reason = s.message(), "certificate refused");
        })?;
        let body = req.into_inner();
        let ttl = (body.validity_duration > 0).then(|| Duration::from_secs(body.validity_duration as u64));
        let chain = self.signer.sign(&body.csr, &identity, ttl).map_err(|e| {
            tracing::warn!(%identity, %node, error = %e, "certificate refused");
            match e {
                CaError::Csr(_) => Status::invalid_argument(e.to_string()),
                CaError::IdentityMismatch { .. } => Status::permission_denied(e.to_string()),
                _ => Status::internal(e.to_string()),
            }
        })?;
        tracing::info!(%identity, %node, "certificate issued");
        // The root also travels as the chain's last entry, where older clients look for it.
        Ok(Response::new(IstioCertificateResponse { cert_chain: chain, root_cert: None }))
    }
}
