//! Authenticating CA callers in Kubernetes mode: a TokenReview
//! (`authentication.k8s.io/v1`) of the caller's bearer token, a projected service-account
//! token, for the CA's audience (`istio-ca` by default, as Istio's).
//!
//! A review answers who the token belongs to (`system:serviceaccount:<ns>:<sa>`) and, for
//! pod-bound tokens, which pod (and, from Kubernetes 1.30, which node) it was issued for.
//! Positive answers are cached briefly, keyed by the token's SHA-256 (the token itself is
//! neither kept nor logged), so a burst of CSRs costs one API call; at most
//! [`MAX_CACHED_REVIEWS`] are kept, the oldest going first. Refusals are never cached, so a
//! fixed token works at once.
//!
//! istiod-lite's service account needs `create` on `tokenreviews.authentication.k8s.io`
//! (cluster scope, as `system:auth-delegator` grants); without it every review is refused
//! with the API server's 403 message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The audience Istio's CA asks for by default.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// How long a positive review is believed.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Bound-token extra naming the pod the token was issued for.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// Bound-token extra with that pod's uid.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// Bound-token extra naming the pod's node (Kubernetes ≥ 1.30).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// The most positive reviews cached: when full, expired ones are swept, then the oldest goes.
pub const MAX_CACHED_REVIEWS: usize = 1024;

/// Who an authenticated token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountToken {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The pod the token is bound to, if it is a pod-bound token.
    pub pod_name: Option<String>,
    /// That pod's uid.
    pub pod_uid: Option<String>,
    /// That pod's node, if the API server says (Kubernetes ≥ 1.30).
    pub node_name: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The TokenReview request failed (API server down, forbidden, ...).
    #[error("TokenReview request failed: {0}")]
    Api(#[source] kube::Error),
    /// The API server did not authenticate the token.
    #[error("token not authenticated: {0}")]
    NotAuthenticated(String),
    /// The token is authenticated but not for our audience.
    #[error("token is not for audience {expected} (the review says {got:?})")]
    Audience {
        /// The CA's audience.
        expected: String,
        /// What the review returned.
        got: Vec<String>,
    },
    /// The token belongs to something other than a service account.
    #[error("authenticated user {0:?} is not a service account")]
    NotServiceAccount(String),
}

/// Reviews tokens through the Kubernetes API, with a short cache of positive answers.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Instant, ServiceAccountToken)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer asking `client`'s API server for tokens of `audience`, believing positive
    /// answers for `ttl`.
    pub fn new(client: kube::Client, audience: impl Into<String>, ttl: Duration) -> Self {
        TokenReviewer { api: Api::all(client), audience: audience.into(), ttl, cache: Mutex::default() }
    }

    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Who `token` belongs to.
    pub async fn review(&self, token: &str) -> Result<ServiceAccountToken, ReviewError> {
        let key = sha256(token.as_bytes());
        let now = Instant::now();
        if let Some((at, who)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return Ok(who.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let answer = self.api.create(&PostParams::default(), &review).await.map_err(ReviewError::Api)?;
        let who = self.judge(answer)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_REVIEWS && !cache.contains_key(&key) {
            cache.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if cache.len() >= MAX_CACHED_REVIEWS
                && let Some(oldest) = cache.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (now, who.clone()));
        Ok(who)
    }

    /// Reads a review's status; anything short of an authenticated service account for our
    /// audience is a refusal.
    fn judge(&self, answer: TokenReview) -> Result<ServiceAccountToken, ReviewError> {
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "the API server said no".into());
            return Err(ReviewError::NotAuthenticated(why));
        }
        // An API server that ignores spec.audiences returns none: then the token was checked
        // only for the API server's own audience, which is not ours.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(ReviewError::Audience { expected: self.audience.clone(), got: audiences });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
            .ok_or_else(|| ReviewError::NotServiceAccount(username.clone()))?;
        let extra = user.extra.unwrap_or_default();
        let one = |k: &str| extra.get(k).and_then(|v| v.first()).filter(|v| !v.is_empty()).cloned();
        Ok(ServiceAccountToken {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod_name: one(EXTRA_POD_NAME),
            pod_uid: one(EXTRA_POD_UID),
            node_name: one(EXTRA_NODE_NAME),
        })
    }
}

/// SHA-256 through the mesh's crypto provider (no extra hashing crate).
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let suite = hbone::tls::provider()
        .cipher_suites
        .iter()
        .find_map(|s| match s {
            rustls::SupportedCipherSuite::Tls13(t)
                if t.common.hash_provider.algorithm() == rustls::crypto::hash::HashAlgorithm::SHA256 =>
            {
                Some(t)
            }
            _ => None,
        })
        .expect("the mesh provider has a SHA-256 TLS 1.3 suite");
    let out = suite.common.hash_provider.hash(data);
    let mut key = [0u8; 32];
    key.copy_from_slice(out.as_ref());
    key
}
