//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: who may get which certificate.
//!
//! Callers present `authorization: Bearer <token>`. How the token is judged is the
//! [`Authenticator`]:
//!
//! - File mode: per-node bootstrap tokens, each naming the node it belongs to; every holder
//!   is a node proxy.
//! - Kubernetes mode: a TokenReview of the caller's projected service-account token (see
//!   [`super::tokenreview`]). The node proxies' service account (`istio-system/ztunnel` by
//!   default) is a node proxy for the node of the pod its token is bound to, once that pod is
//!   known with the token's uid and service account (as istiod checks); any other service
//!   account (a waypoint, say) may only have its own identity.
//!
//! A node proxy asks on behalf of its pods, naming the identity in the request metadata's
//! `ImpersonatedIdentity` (as Istio's ztunnel does); the identity is granted only if a pod with
//! that service account is scheduled on the caller's node, whatever its phase or IP, until it
//! is deleted, as istiod's node authorizer decides (see [`Placement`]). Only identities of the
//! signer's trust domain are ever granted, whatever the placement answers. Every refusal says
//! why in its status, with a [`Refusal`] label in its metadata (the caller sees it, the metrics
//! count by it), and is one log line naming the caller (its node or service account, or its
//! address when the token is not known) and the reason; tokens are never logged.

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
use super::tokenreview::{ReviewError, ServiceAccountToken, TokenReviewer, sha256};

/// The metadata key naming the identity a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// The key of a refusal's gRPC metadata (trailers) carrying its [`Refusal::label`], for the
/// caller's logs and for the CA's metrics (`crate::debug::metrics::CountedCa`).
pub const REFUSAL_REASON: &str = "refusal-reason";

/// Why a certificate request was refused. The gRPC code says only what kind of failure it
/// is; an operator looking at `istiod_lite_certificates_refused_total{reason}` needs to tell a
/// node proxy that is not yet known from a pod that is not on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No `authorization: Bearer` token.
    NoToken,
    /// A bootstrap token that belongs to no node (file mode).
    UnknownToken,
    /// The API server did not authenticate the token for the CA's audience, or it is not a
    /// service account's.
    TokenRejected,
    /// The TokenReview could not be made (API server unreachable, istiod-lite not allowed).
    TokenReviewFailed,
    /// A node proxy's token bound to no pod, so naming no node.
    TokenNotBoundToPod,
    /// The pod a node proxy's token is bound to is not (yet) known.
    CallerPodUnknown,
    /// That pod is known, but the token was issued for another pod of the same name, another
    /// service account, or another node.
    CallerPodMismatch,
    /// The node proxy's pod, or its bootstrap token, names no node.
    CallerNodeUnknown,
    /// A node proxy named no identity, or one that does not parse.
    BadImpersonatedIdentity,
    /// The identity is not of the mesh's trust domain.
    ForeignTrustDomain,
    /// No pod running as the identity is on the node proxy's node.
    NotOnNode,
    /// A workload other than a node proxy asked for an identity not its own.
    NotOwnIdentity,
    /// The CSR does not parse or its signature does not verify.
    BadCsr,
    /// The CSR names another identity than the one granted.
    CsrIdentityMismatch,
    /// `validity_duration` is longer than the CA's longest lifetime.
    TtlTooLong,
    /// The CA could not sign.
    Internal,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 16] = [
        Refusal::NoToken,
        Refusal::UnknownToken,
        Refusal::TokenRejected,
        Refusal::TokenReviewFailed,
        Refusal::TokenNotBoundToPod,
        Refusal::CallerPodUnknown,
        Refusal::CallerPodMismatch,
        Refusal::CallerNodeUnknown,
        Refusal::BadImpersonatedIdentity,
        Refusal::ForeignTrustDomain,
        Refusal::NotOnNode,
        Refusal::NotOwnIdentity,
        Refusal::BadCsr,
        Refusal::CsrIdentityMismatch,
        Refusal::TtlTooLong,
        Refusal::Internal,
    ];

    /// The metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::TokenRejected => "token_rejected",
            Refusal::TokenReviewFailed => "token_review_failed",
            Refusal::TokenNotBoundToPod => "token_not_bound_to_pod",
            Refusal::CallerPodUnknown => "caller_pod_unknown",
            Refusal::CallerPodMismatch => "caller_pod_mismatch",
            Refusal::CallerNodeUnknown => "caller_node_unknown",
            Refusal::BadImpersonatedIdentity => "bad_impersonated_identity",
            Refusal::ForeignTrustDomain => "foreign_trust_domain",
            Refusal::NotOnNode => "not_on_node",
            Refusal::NotOwnIdentity => "not_own_identity",
            Refusal::BadCsr => "bad_csr",
            Refusal::CsrIdentityMismatch => "csr_identity_mismatch",
            Refusal::TtlTooLong => "ttl_too_long",
            Refusal::Internal => "internal",
        }
    }

    fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Refusal::NoToken | Refusal::UnknownToken | Refusal::TokenRejected | Refusal::TokenReviewFailed => {
                Code::Unauthenticated
            }
            Refusal::BadImpersonatedIdentity | Refusal::BadCsr | Refusal::TtlTooLong => Code::InvalidArgument,
            Refusal::Internal => Code::Internal,
            Refusal::TokenNotBoundToPod
            | Refusal::CallerPodUnknown
            | Refusal::CallerPodMismatch
            | Refusal::CallerNodeUnknown
            | Refusal::ForeignTrustDomain
            | Refusal::NotOnNode
            | Refusal::NotOwnIdentity
            | Refusal::CsrIdentityMismatch => Code::PermissionDenied,
        }
    }

    /// The status refusing a request for this reason, saying `why`.
    pub fn status(self, why: impl Into<String>) -> Status {
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert(REFUSAL_REASON, tonic::metadata::MetadataValue::from_static(self.label()));
        Status::with_metadata(self.code(), why, meta)
    }

    /// The reason a status from [`Refusal::status`] carries.
    pub fn of(status: &Status) -> Option<&str> {
        status.metadata().get(REFUSAL_REASON).and_then(|v| v.to_str().ok())
    }
}

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

    /// Pod `namespace/name` as the CA must know it, if known: the node proxy a token is bound
    /// to is looked up here. Unknown by default.
    fn pod(&self, _namespace: &str, _name: &str) -> Option<PlacedPod> {
        None
    }
}

/// A pod as the CA knows it: which pod exactly, who it runs as and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPod {
    /// `metadata.uid`: a pod deleted and created again under the same name has a new one.
    pub uid: Option<String>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// `spec.nodeName`, empty while unscheduled.
    pub node: String,
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
///
/// Kept by the tokens' SHA-256, not the tokens: a lookup's timing (hashing, comparing within a
/// bucket) depends on the digest of what the caller sent, which tells them nothing about the
/// tokens that exist, where comparing the tokens themselves would leak their prefixes.
#[derive(Clone, Default)]
pub struct NodeTokens(HashMap<[u8; 32], String>);

impl NodeTokens {
    /// The node a bearer token belongs to.
    pub fn node(&self, token: &str) -> Option<&str> {
        self.0.get(&sha256(token.as_bytes())).map(String::as_str)
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: AsRef<str>, N: Into<String>> FromIterator<(T, N)> for NodeTokens {
    fn from_iter<I: IntoIterator<Item = (T, N)>>(tokens: I) -> Self {
        NodeTokens(tokens.into_iter().map(|(t, n)| (sha256(t.as_ref().as_bytes()), n.into())).collect())
    }
}

impl From<HashMap<String, String>> for NodeTokens {
    fn from(tokens: HashMap<String, String>) -> Self {
        tokens.into_iter().collect()
    }
}

// Never print the digests either: they are as good as the tokens to whoever can brute-force
// a short one.
impl std::fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTokens").field("nodes", &self.0.values().collect::<Vec<_>>()).finish()
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
                .ok_or_else(|| Refusal::UnknownToken.status("unknown token")),
            Authenticator::Kube(kube) => {
                let who = kube.reviewer.review(token).await.map_err(|e| match e {
                    // The API server being unreachable is not the caller's fault, but it is
                    // still no proof of who they are.
                    ReviewError::Api(_) => {
                        Refusal::TokenReviewFailed.status(format!("cannot authenticate the token: {e}"))
                    }
                    _ => Refusal::TokenRejected.status(e.to_string()),
                })?;
                Self::kube_caller(kube, who, placement)
            }
        }
    }

    fn kube_caller<P: Placement>(kube: &KubeAuth, who: ServiceAccountToken, placement: &P) -> Result<Caller, Status> {
        if (who.namespace.as_str(), who.service_account.as_str())
            == (kube.node_proxy.0.as_str(), kube.node_proxy.1.as_str())
        {
            return Self::node_proxy(&who, placement).map(Caller::Node);
        }
        Identity::new(&kube.trust_domain, &who.namespace, &who.service_account).map(Caller::Workload).map_err(|e| {
            Refusal::TokenRejected.status(format!("service account {}/{}: {e}", who.namespace, who.service_account))
        })
    }

    /// The node of the node proxy holding `who`, as istiod's node authorizer finds it: from
    /// the pod the token is bound to, which must be that very pod (a pod deleted and created
    /// again under the same name has another uid, and a token of the old one must not speak
    /// for the new one's node), running as the token's service account. Kubernetes 1.30+
    /// also names the node in the token; a pod never moves, so a different node there means
    /// our view of the pod is not the API server's, and nothing is granted on it.
    fn node_proxy<P: Placement>(who: &ServiceAccountToken, placement: &P) -> Result<String, Status> {
        let ns = &who.namespace;
        let Some(name) = &who.pod_name else {
            return Err(Refusal::TokenNotBoundToPod.status(format!(
                "a token of {ns}/{} must be bound to a pod (a projected token) to name its node",
                who.service_account
            )));
        };
        let pod = placement.pod(ns, name).ok_or_else(|| {
            Refusal::CallerPodUnknown
                .status(format!("the token is bound to pod {ns}/{name}, which is not (yet) known to istiod-lite"))
        })?;
        if pod.uid.is_none() || pod.uid != who.pod_uid {
            return Err(Refusal::CallerPodMismatch.status(format!(
                "the token was issued for pod {ns}/{name} with uid {}, but the pod of that name has uid {} \
                 (it was deleted and created again)",
                who.pod_uid.as_deref().unwrap_or("(none)"),
                pod.uid.as_deref().unwrap_or("(none)")
            )));
        }
        if pod.service_account != who.service_account {
            return Err(Refusal::CallerPodMismatch.status(format!(
                "pod {ns}/{name} runs as service account {}, not {} as its token says",
                pod.service_account, who.service_account
            )));
        }
        if pod.node.is_empty() {
            return Err(Refusal::CallerNodeUnknown.status(format!("pod {ns}/{name} is not scheduled on any node")));
        }
        if let Some(claimed) = &who.node_name
            && *claimed != pod.node
        {
            return Err(Refusal::CallerPodMismatch.status(format!(
                "the token says pod {ns}/{name} is on node {claimed}, istiod-lite knows it on node {}",
                pod.node
            )));
        }
        Ok(pod.node)
    }
}

/// The bearer token of a request's metadata.
pub(crate) fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Refusal::NoToken.status("no bearer token"))
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
                let wanted = wanted.ok_or_else(|| {
                    Refusal::BadImpersonatedIdentity.status(format!("metadata.{IMPERSONATED_IDENTITY} is required"))
                })?;
                let identity: Identity = wanted.parse().map_err(|e| {
                    Refusal::BadImpersonatedIdentity.status(format!("metadata.{IMPERSONATED_IDENTITY}: {e}"))
                })?;
                self.check_trust_domain(&identity)?;
                // A pod not yet scheduled has an empty `spec.nodeName`; istiod never indexes it
                // (node_auth.go: `if len(pod.Spec.NodeName) == 0 { return nil }`), so no node
                // proxy may have its identity. A node proxy with an empty node name (a
                // bootstrap token file with an empty key) would otherwise match exactly those.
                if node.is_empty() {
                    return Err(Refusal::CallerNodeUnknown.status(format!(
                        "the node proxy has no node name, so no pod is on its node to run as {identity}"
                    )));
                }
                if !self.placement.runs_on(&identity, node) {
                    return Err(Refusal::NotOnNode.status(format!("no pod running as {identity} is on node {node}")));
                }
                identity
            }
            Caller::Workload(own) => {
                if let Some(w) = wanted
                    && w != own.as_str()
                {
                    return Err(
                        Refusal::NotOwnIdentity.status(format!("{own} may only have its own identity, not {w}"))
                    );
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
            return Err(
                Refusal::ForeignTrustDomain.status(format!("{identity} is not of the mesh's trust domain {ours}"))
            );
        }
        Ok(())
    }
}

/// Logs a refusal: who asked, from where, and why (the status's message, which never holds
/// the token).
fn refused(peer: &str, caller: &dyn std::fmt::Display, status: &Status) {
    tracing::warn!(
        %peer,
        %caller,
        code = ?status.code(),
        refusal = Refusal::of(status).unwrap_or("-"),
        reason = status.message(),
        "certificate refused"
    );
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
            let reason = match e {
                CaError::Csr(_) => Refusal::BadCsr,
                CaError::IdentityMismatch { .. } => Refusal::CsrIdentityMismatch,
                CaError::TrustDomain { .. } => Refusal::ForeignTrustDomain,
                CaError::TtlTooLong { .. } => Refusal::TtlTooLong,
                CaError::Io { .. } | CaError::Root { .. } | CaError::Sign(_) => Refusal::Internal,
            };
            let status = reason.status(e.to_string());
            refused(&peer, &caller, &status);
            status
        })?;
        tracing::info!(%peer, %caller, %identity, "certificate issued");
        // The root also travels as the chain's last entry, where older clients look for it.
        Ok(Response::new(IstioCertificateResponse { cert_chain: chain, root_cert: None }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_are_found_by_digest_and_never_printed() {
        let tokens: NodeTokens =
            [("token-of-node-a-0123456789", "node-a"), ("token-of-node-b-9876543210", "node-b")].into_iter().collect();
        assert_eq!(tokens.node("token-of-node-a-0123456789"), Some("node-a"));
        assert_eq!(tokens.node("token-of-node-b-9876543210"), Some("node-b"));
        for other in ["", "token-of-node-a-012345678", "token-of-node-a-0123456789 ", "TOKEN-OF-NODE-A-0123456789"] {
            assert_eq!(tokens.node(other), None, "{other:?}");
        }
        let shown = format!("{tokens:?}");
        assert!(shown.contains("node-a") && !shown.contains("0123456789"), "{shown}");
        assert_eq!(tokens.len(), 2);
    }

    #[test]
    fn every_refusal_has_its_own_label_its_status_carries() {
        let labels: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len(), "labels must tell reasons apart");
        for r in Refusal::ALL {
            let s = r.status("why");
            assert_eq!(Refusal::of(&s), Some(r.label()));
            assert_eq!((s.code(), s.message()), (r.code(), "why"));
        }
        assert_eq!(Refusal::of(&Status::internal("from elsewhere")), None);
    }
}
