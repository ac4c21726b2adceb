//! Workload certificates from the mesh CA (`istio.v1.auth.IstioCertificateService`), asked for
//! on behalf of the pods on this node, and renewed at about half their life.
//!
//! Keys are generated here and never leave the process; the CA sees only a CSR. The identity
//! is named in the request metadata (`ImpersonatedIdentity`), and the call is authenticated
//! with this node's bootstrap token. A token given as a file is read again for every request:
//! kubelet rewrites a projected service-account token well before it expires, and a renewal
//! hours after start must present the current one, not the one we started with. The root that comes back with each chain is added to the
//! trusted roots, so during a root rotation old and new roots are both trusted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hbone::{CertStore, Identity, TrustRoots, WorkloadCert};
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rand::Rng;
use tonic::transport::Channel;

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// Key or CSR generation failed.
    #[error("CSR for {identity}: {why}")]
    Csr {
        /// For whom.
        identity: Identity,
        /// Why.
        why: String,
    },
    /// The CA refused or could not be reached.
    #[error("CA refused {identity}: {status}")]
    Refused {
        /// For whom.
        identity: Identity,
        /// The CA's answer.
        status: tonic::Status,
    },
    /// The token file could not be read, or holds nothing.
    #[error("CA token file {path} for {identity}: {source}")]
    Token {
        /// For whom the request was.
        identity: Identity,
        /// The token file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA's answer is not a usable certificate for the identity.
    #[error("CA answer for {identity} unusable: {why}")]
    BadAnswer {
        /// For whom.
        identity: Identity,
        /// Why.
        why: String,
    },
}

/// Where the bearer token comes from.
#[derive(Clone, Debug)]
enum Token {
    /// Fixed for the life of the client.
    Fixed(Arc<str>),
    /// Read from this file for each request (it is small; the read is far cheaper than the
    /// signing it authorizes).
    File(PathBuf),
}

impl Token {
    async fn current(&self, identity: &Identity) -> Result<Arc<str>, CaClientError> {
        match self {
            Token::Fixed(t) => Ok(t.clone()),
            Token::File(path) => {
                let err = |source| CaClientError::Token { identity: identity.clone(), path: path.clone(), source };
                let text = tokio::fs::read_to_string(path).await.map_err(err)?;
                let token = text.trim();
                if token.is_empty() {
                    // Caught mid-rewrite, or a broken mount: say so rather than send no token.
                    return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidData, "empty")));
                }
                Ok(token.into())
            }
        }
    }
}

/// Asks the CA for certificates and keeps them fresh in the store.
#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    token: Token,
    store: CertStore,
    ttl: Duration,
    renewing: Arc<Mutex<HashMap<Identity, tokio::task::AbortHandle>>>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl CaClient {
    /// A client of the CA at `channel`, authenticating with `token`, filling `store`.
    pub fn new(channel: Channel, token: &str, store: CertStore, ttl: Duration) -> Self {
        CaClient {
            client: IstioCertificateServiceClient::new(channel),
            token: Token::Fixed(token.into()),
            store,
            ttl,
            renewing: Arc::default(),
        }
    }

    /// Like [`Self::new`], but the token is read from `token_file` for every request, so a
    /// rotated token (kubelet's projected service-account tokens) is used from the next request
    /// on. The file is not checked here; a request fails with [`CaClientError::Token`] when it
    /// cannot be read.
    pub fn with_token_file(channel: Channel, token_file: &Path, store: CertStore, ttl: Duration) -> Self {
        CaClient { token: Token::File(token_file.to_owned()), ..Self::new(channel, "", store, ttl) }
    }

    /// One CSR round trip for `identity`; installs and returns the certificate.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, CaClientError> {
        let csr_err = |why: String| CaClientError::Csr { identity: identity.clone(), why };
        let key = rcgen::KeyPair::generate().map_err(|e| csr_err(e.to_string()))?;
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names =
            vec![rcgen::SanType::URI(identity.as_str().try_into().map_err(|e: rcgen::Error| csr_err(e.to_string()))?)];
        let csr = params.serialize_request(&key).and_then(|c| c.pem()).map_err(|e| csr_err(e.to_string()))?;
        let metadata = prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(identity.to_string())) },
            )]
            .into_iter()
            .collect(),
        };
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: self.ttl.as_secs() as i64,
            metadata: Some(metadata),
        });
        let token = self.token.current(identity).await?;
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| csr_err("bootstrap token is not valid header text".into()))?;
        req.metadata_mut().insert("authorization", bearer);
        let chain = self
            .client
            .clone()
            .create_certificate(req)
            .await
            .map_err(|status| CaClientError::Refused { identity: identity.clone(), status })?
            .into_inner()
            .cert_chain;
        let bad = |why: String| CaClientError::BadAnswer { identity: identity.clone(), why };
        let root = chain.last().ok_or_else(|| bad("empty chain".into()))?;
        let roots = TrustRoots::from_pem(root.as_bytes()).map_err(|e| bad(format!("root: {e}")))?;
        let cert = WorkloadCert::from_pem(chain.concat().as_bytes(), key.serialize_pem().as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        if cert.identity() != identity {
            return Err(bad(format!("certificate is for {}", cert.identity())));
        }
        // Trust the root that signed it in addition to those already trusted (rotation overlap).
        let current = self.store.roots();
        if !roots.certificates().iter().all(|r| current.certificates().contains(r)) {
            self.store.set_roots(current.merged(&roots));
            tracing::info!(roots = current.certificates().len() + 1, "trusting a new mesh root");
        }
        self.store.insert(cert);
        Ok(self.store.get(identity).expect("just inserted"))
    }

    /// Makes sure `identity` has a certificate and keeps renewing it until [`Self::forget`].
    pub async fn ensure(&self, identity: &Identity) -> Result<(), CaClientError> {
        if self.renewing.lock().unwrap_or_else(PoisonError::into_inner).contains_key(identity) {
            return Ok(());
        }
        let cert = self.fetch(identity).await?;
        let me = self.clone();
        let id = identity.clone();
        let task = tokio::spawn(async move { me.renew_forever(id, cert).await });
        let old =
            self.renewing.lock().unwrap_or_else(PoisonError::into_inner).insert(identity.clone(), task.abort_handle());
        if let Some(old) = old {
            old.abort();
        }
        Ok(())
    }

    /// Stops renewing `identity` and drops its certificate (no pod of it is left here).
    pub fn forget(&self, identity: &Identity) {
        if let Some(t) = self.renewing.lock().unwrap_or_else(PoisonError::into_inner).remove(identity) {
            t.abort();
        }
        self.store.remove(identity);
    }

    async fn renew_forever(self, identity: Identity, mut cert: Arc<WorkloadCert>) {
        let mut retry = Duration::from_millis(200);
        loop {
            tokio::time::sleep(renew_after(&cert, SystemTime::now())).await;
            // Boxed: inline, the gRPC call's state (about 3 KiB) would be part of this task for
            // its whole life, once per identity on the node, though it sleeps almost always.
            match Box::pin(self.fetch(&identity)).await {
                Ok(c) => {
                    tracing::info!(%identity, "certificate renewed");
                    cert = c;
                    retry = Duration::from_millis(200);
                }
                Err(e) => {
                    // Keep the current certificate; try again soon, more slowly each time.
                    tracing::warn!(%identity, error = %e, "renewal failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// When to renew: at about half of what is left of the certificate's life (CAs backdate
/// `not_before` for clock skew, so the nominal life would overstate what we have), plus up to
/// 10% as jitter so that the pods of a node do not all ask at once.
fn renew_after(cert: &WorkloadCert, now: SystemTime) -> Duration {
    cert.remaining(now).mul_f64(0.5 + rand::rng().random_range(0.0..0.1))
}
