//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: who may get which certificate.
//!
//! Callers present `authorization: Bearer <token>`. How the token is judged is the
//! [`Authenticator`]:
//!
//! - File mode: per-node bootstrap tokens, each naming the node it belongs to; every holder
//!   is a node proxy.
//! - Kubernetes mode: a TokenReview of the caller's projected service-account token (see
//!   [`super::tokenreview`]). The node proxies' service account (`istio-system/ztunnel` by
//!   default) is a node proxy for the node of the pod its token is bound to; any other service
//!   account (a waypoint, say) may only have its own identity.
//!
//! A node proxy asks on behalf of its pods, naming the identity in the request metadata's
//! `ImpersonatedIdentity` (as Istio's ztunnel does); the identity is granted only if a pod with
//! that service account is scheduled on the caller's node, whatever its phase or IP, until it
//! is deleted, as istiod's node authorizer decides (see [`Placement`]). Only identities of the signer's trust domain
//! are ever granted, whatever the placement answers. Every refusal says why in its status, and
//! is one log line naming the caller (its node or service account, or its address when the
//! token is not known) and the reason; tokens are never logged.

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
use super::tokenreview::{ReviewError, ServiceAccountToken, TokenReviewer};

/// The metadata key naming the identity a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Where pods run, as far as the CA must know.
///
/// [`Placement::runs_on`] is the question of istiod's node authorizer, and implementations
/// (`crate::placement::ModelPlacement`) answer it as istiod does. istiod
/// (istio/istio `security/pkg/server/ca/node_auth.go`, `ClusterNodeAuthorizer`, and before it
/// `NodeAuthorizer` since istio/istio#41379) indexes every pod its informer holds by
/// `(namespace/spec.serviceAccountName, spec.nodeName)`, skipping only pods with an empty
/// `nodeName` or service account, and `authenticateImpersonation` grants an identity when that
/// lookup finds at least one pod. It reads neither `status` nor `deletionTimestamp`. So:
///
/// - **Scheduled is what counts.** Only `spec.nodeName` places a pod. A pod not yet scheduled
///   is on no node, so no node proxy may have its identity (and [`CaService`] refuses a node
///   proxy whose node name is empty before asking, lest it match such pods).
/// - **No IP yet: granted.** ztunnel hears of a new pod from the CNI plugin while its sandbox
///   is set up and fetches its certificate at once, typically before the kubelet has written
///   `status.podIP` to the API; istiod's index does not look at the status, so neither do we.
/// - **Being deleted: granted until it is gone.** A pod with `deletionTimestamp` keeps running
///   through its grace period, and its node proxy keeps serving and draining it with its
///   certificate (and may have to renew it); istiod's index drops a pod only on its delete event.
/// - **Finished (`Succeeded`/`Failed`): granted until deleted**, because istiod does not look
///   at the phase either. Nothing runs in such a pod and it is no workload (see
///   `crate::translate::workload`), so ztunnel has no reason to ask; refusing would be stricter
///   than istiod, which we do not choose silently.
/// - **Service account:** istiod skips a pod without `serviceAccountName`; the API server's
///   ServiceAccount admission sets `default` on every pod, so that never happens in Kubernetes
///   mode, and in a directory such a pod runs as `default` (as its workload says), so it is
///   counted as `default`.
pub trait Placement: Send + Sync + 'static {
    /// Whether a pod running as `identity` is scheduled on `node` (see the trait's rules).
    fn runs_on(&self, identity: &Identity, node: &str) -> bool;

    /// The node of pod `namespace/name`, if known (for tokens that name their pod but not its
    /// node). Unknown by default.
    fn pod_node(&self, _namespace: &str, _name: &str) -> Option<String> {
        None
    }
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

/// Kubernetes mode: TokenReview, and which service account is the node proxies'.
#[derive(Debug)]
pub struct KubeAuth {
    /// Reviews bearer tokens.
    pub reviewer: TokenReviewer,
    /// The node proxies' service account, `(namespace, name)`.
    pub node_proxy: (String, String),
    /// The trust domain of the identities issued to other service accounts.
    pub trust_domain: String,
}

/// How callers are authenticated.
#[derive(Debug)]
pub enum Authenticator {
    /// Per-node bootstrap tokens (file mode).
    NodeTokens(NodeTokens),
    /// TokenReview of service-account tokens (Kubernetes mode).
    Kube(Box<KubeAuth>),
}

impl Authenticator {
    /// Who holds `token`; `placement` finds the node of the pod a node proxy's token is bound to.
    pub(crate) async fn authenticate<P: Placement>(&self, token: &str, placement: &P) -> Result<Caller, Status> {
        match self {
            Authenticator::NodeTokens(tokens) => tokens
                .node(token)
                .map(|n| Caller::Node(n.to_owned()))
                .ok_or_else(|| Status::unauthenticated("unknown token")),
            Authenticator::Kube(kube) => {
                let who = kube.reviewer.review(token).await.map_err(|e| match e {
                    // The API server being unreachable is not the caller's fault, but it is
                    // still no proof of who they are.
                    ReviewError::Api(_) => Status::unauthenticated(format!("cannot authenticate the token: {e}")),
                    _ => Status::unauthenticated(e.to_string()),
                })?;
                Self::kube_caller(kube, who, placement)
            }
        }
    }

    fn kube_caller<P: Placement>(kube: &KubeAuth, who: ServiceAccountToken, placement: &P) -> Result<Caller, Status> {
        if (who.namespace.as_str(), who.service_account.as_str())
            == (kube.node_proxy.0.as_str(), kube.node_proxy.1.as_str())
        {
            let node = match (&who.node_name, &who.pod_name) {
                (Some(node), _) => node.clone(),
                (None, Some(pod)) => placement.pod_node(&who.namespace, pod).ok_or_else(|| {
                    Status::permission_denied(format!(
                        "the token is bound to pod {}/{pod}, which is not (yet) known to run on any node",
                        who.namespace
                    ))
                })?,
                (None, None) => {
                    return Err(Status::permission_denied(format!(
                        "a token of {}/{} must be bound to a pod (a projected token) to name its node",
                        who.namespace, who.service_account
                    )));
                }
            };
            return Ok(Caller::Node(node));
        }
        Identity::new(&kube.trust_domain, &who.namespace, &who.service_account).map(Caller::Workload).map_err(|e| {
            Status::permission_denied(format!("service account {}/{}: {e}", who.namespace, who.service_account))
        })
    }
}

/// The bearer token of a request's metadata.
pub(crate) fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("no bearer token"))
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A node proxy: may have the identity of any pod on its node.
    Node(String),
    /// Any other workload: may have only its own identity.
    Workload(Identity),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(node) => write!(f, "node proxy of node {node}"),
            Caller::Workload(id) => write!(f, "{id}"),
        }
    }
}

/// The CA service.
pub struct CaService<P> {
    signer: Arc<CaSigner>,
    auth: Arc<Authenticator>,
    placement: Arc<P>,
}

impl<P: Placement> CaService<P> {
    /// A CA signing with `signer` for callers holding `tokens`, checking pods with `placement`.
    pub fn new(signer: Arc<CaSigner>, tokens: NodeTokens, placement: Arc<P>) -> Self {
        Self::with_auth(signer, Authenticator::NodeTokens(tokens), placement)
    }

    /// A CA signing with `signer` for callers `auth` accepts, checking pods with `placement`.
    pub fn with_auth(signer: Arc<CaSigner>, auth: impl Into<Arc<Authenticator>>, placement: Arc<P>) -> Self {
        CaService { signer, auth: auth.into(), placement }
    }

    /// The tonic service to mount.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    /// The identity `caller` may have for `body`.
    fn authorize(&self, caller: &Caller, body: &IstioCertificateRequest) -> Result<Identity, Status> {
        let wanted =
            body.metadata.as_ref().and_then(|m| m.fields.get(IMPERSONATED_IDENTITY)).and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
        let identity = match caller {
            Caller::Node(node) => {
                let wanted = wanted
                    .ok_or_else(|| Status::invalid_argument(format!("metadata.{IMPERSONATED_IDENTITY} is required")))?;
                let identity: Identity = wanted
                    .parse()
                    .map_err(|e| Status::invalid_argument(format!("metadata.{IMPERSONATED_IDENTITY}: {e}")))?;
                self.check_trust_domain(&identity)?;
                // A pod not yet scheduled has an empty `spec.nodeName`; istiod never indexes it
                // (node_auth.go: `if len(pod.Spec.NodeName) == 0 { return nil }`), so no node
                // proxy may have its identity. A node proxy with an empty node name (a
                // bootstrap token file with an empty key) would otherwise match exactly those.
                if node.is_empty() {
                    return Err(Status::permission_denied(format!(
                        "the node proxy has no node name, so no pod is on its node to run as {identity}"
                    )));
                }
                if !self.placement.runs_on(&identity, node) {
                    return Err(Status::permission_denied(format!("no pod running as {identity} is on node {node}")));
                }
                identity
            }
            Caller::Workload(own) => {
                if let Some(w) = wanted
                    && w != own.as_str()
                {
                    return Err(Status::permission_denied(format!("{own} may only have its own identity, not {w}")));
                }
                own.clone()
            }
        };
        self.check_trust_domain(&identity)?;
        Ok(identity)
    }

    fn check_trust_domain(&self, identity: &Identity) -> Result<(), Status> {
        let ours = self.signer.trust_domain();
        if identity.trust_domain() != ours {
            return Err(Status::permission_denied(format!("{identity} is not of the mesh's trust domain {ours}")));
        }
        Ok(())
    }
}

/// Logs a refusal: who asked, from where, and why (the status's message, which never holds
/// the token).
fn refused(peer: &str, caller: &dyn std::fmt::Display, status: &Status) {
    tracing::warn!(%peer, %caller, code = ?status.code(), reason = status.message(), "certificate refused");
}

#[tonic::async_trait]
impl<P: Placement> IstioCertificateService for CaService<P> {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = req.remote_addr().map_or_else(|| "-".to_owned(), |a| a.to_string());
        let caller = match bearer(req.metadata()) {
            Ok(token) => self.auth.authenticate(token, &*self.placement).await,
            Err(s) => Err(s),
        }
        .inspect_err(|s| refused(&peer, &"unauthenticated caller", s))?;
        let identity = self.authorize(&caller, req.get_ref()).inspect_err(|s| refused(&peer, &caller, s))?;
        let body = req.into_inner();
        let ttl = (body.validity_duration > 0).then(|| Duration::from_secs(body.validity_duration as u64));
        let chain = self.signer.sign(&body.csr, &identity, ttl).map_err(|e| {
            let status = match e {
                CaError::Csr(_) => Status::invalid_argument(e.to_string()),
                CaError::IdentityMismatch { .. } | CaError::TrustDomain { .. } => {
                    Status::permission_denied(e.to_string())
                }
                CaError::Io { .. } | CaError::Root { .. } | CaError::Sign(_) => Status::internal(e.to_string()),
            };
            refused(&peer, &caller, &status);
            status
        })?;
        tracing::info!(%peer, %caller, %identity, "certificate issued");
        // The root also travels as the chain's last entry, where older clients look for it.
        Ok(Response::new(IstioCertificateResponse { cert_chain: chain, root_cert: None }))
    }
}
