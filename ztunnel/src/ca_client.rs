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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hbone::store::InsertError;
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
    /// The CA's certificate is not one peers would take as the identity's (another SPIFFE ID,
    /// not a leaf SVID, a key not ours, outside its validity): the store kept the previous one.
    #[error("CA answer not installed: {0}")]
    NotInstalled(#[source] InsertError),
}

impl CaClientError {
    /// The `reason` label this failure is counted under (see [`fetch_failures`]).
    pub fn reason(&self) -> &'static str {
        match self {
            CaClientError::Csr { .. } => "csr",
            CaClientError::Refused { .. } => "ca_refused",
            CaClientError::Token { .. } => "token",
            CaClientError::BadAnswer { .. } => "bad_answer",
            CaClientError::NotInstalled(e) => e.reason(),
        }
    }
}

/// Every reason a certificate fetch fails for: ours, then the store's refusals
/// ([`InsertError::REASONS`]).
pub const FETCH_FAILURE_REASONS: [&str; 11] = [
    "csr",
    "ca_refused",
    "token",
    "bad_answer",
    "malformed",
    "key_mismatch",
    "bad_spiffe_id",
    "not_leaf_svid",
    "wrong_identity",
    "not_yet_valid",
    "expired",
];

/// Fetches failed since the process started, per reason of [`FETCH_FAILURE_REASONS`].
/// Process-wide: a scrape wants one total, whichever client asked.
static FETCH_FAILURES: [AtomicU64; FETCH_FAILURE_REASONS.len()] =
    [const { AtomicU64::new(0) }; FETCH_FAILURE_REASONS.len()];

pub(crate) fn count_failure(reason: &'static str) {
    // A reason missing from the list is a bug the unit tests catch; it is not worth a panic.
    if let Some(i) = FETCH_FAILURE_REASONS.iter().position(|r| *r == reason) {
        FETCH_FAILURES[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Certificate fetches that failed since the process started, by reason, every reason listed
/// (zero included), for the metrics and admin endpoints.
pub fn fetch_failures() -> impl Iterator<Item = (&'static str, u64)> {
    FETCH_FAILURE_REASONS.iter().zip(&FETCH_FAILURES).map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
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

    /// One CSR round trip for `identity`; installs and returns the certificate. A failure is
    /// counted by reason ([`fetch_failures`]); the identity keeps its previous certificate.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, CaClientError> {
        let fetched = self.fetch_once(identity).await;
        if let Err(e) = &fetched {
            count_failure(e.reason());
            if let CaClientError::NotInstalled(refused) = e {
                tracing::warn!(
                    %identity,
                    reason = refused.reason(),
                    error = %refused,
                    previous_kept = self.store.get(identity).is_some(),
                    "CA answered with a certificate peers would refuse; not installed"
                );
            }
        }
        fetched
    }

    async fn fetch_once(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, CaClientError> {
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
        let answer = self
            .client
            .clone()
            .create_certificate(req)
            .await
            .map_err(|status| CaClientError::Refused { identity: identity.clone(), status })?
            .into_inner();
        let bad = |why: String| CaClientError::BadAnswer { identity: identity.clone(), why };
        let chain = answer.cert_chain;
        if chain.is_empty() {
            return Err(bad("empty cert_chain".into()));
        }
        // Istio's two forms: with `root_cert`, `cert_chain` is the leaf and its intermediates
        // and `root_cert` the whole bundle of roots; without it, the chain's last entry holds
        // the roots. Reading the last entry in the first form would trust an intermediate, or
        // our own leaf, as a root, and not the root that signed the chain.
        let roots = match &answer.root_cert {
            Some(r) if r.ca_cert.is_empty() => return Err(bad("root_cert holds no certificate".into())),
            Some(r) => TrustRoots::from_pem(r.ca_cert.concat().as_bytes()).map_err(|e| bad(format!("root_cert: {e}"))),
            None => TrustRoots::from_pem(chain[chain.len() - 1].as_bytes())
                .map_err(|e| bad(format!("cert_chain's last entry (the roots): {e}"))),
        }?;
        // The store checks the certificate as peers will; a refused answer changes nothing,
        // not even the roots.
        self.store
            .insert_pem(identity, chain.concat().as_bytes(), key.serialize_pem().as_bytes())
            .map_err(CaClientError::NotInstalled)?;
        // Trust the root that signed it in addition to those already trusted (rotation overlap).
        // After the certificate: presenting it does not depend on our roots.
        let current = self.store.roots();
        if !roots.certificates().iter().all(|r| current.certificates().contains(r)) {
            let merged = current.merged(&roots);
            tracing::info!(roots = merged.certificates().len(), "trusting a new mesh root");
            self.store.set_roots(merged);
        }
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
                    tracing::warn!(%identity, reason = e.reason(), error = %e, "renewal failed; retrying");
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::istio::v1::auth::IstioCertificateResponse;
    use proto::istio::v1::auth::istio_certificate_service_server::{
        IstioCertificateService, IstioCertificateServiceServer,
    };
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509CertificationRequest};

    /// The public key a CSR asks a certificate for (ECDSA P-256, as the client generates).
    struct CsrKey(Vec<u8>);

    impl rcgen::PublicKeyData for CsrKey {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ECDSA_P256_SHA256
        }
    }

    /// What the fake CA signs for the CSR's key.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// A workload certificate for the identity asked for.
        Workload,
        /// A workload certificate for another identity.
        OtherIdentity,
        /// A certificate for the identity that may sign certificates (a misconfigured CA).
        SigningCertificate,
        /// A workload certificate alone in `cert_chain`, the roots (ours and another) in
        /// `root_cert`: Istio's newer form.
        RootsInField,
    }

    struct FakeCa {
        issuer: Issuer<'static, KeyPair>,
        root_pem: String,
        answer: Mutex<Answer>,
    }

    impl FakeCa {
        fn new() -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let root_pem = params.self_signed(&key).unwrap().pem();
            FakeCa { issuer: Issuer::new(params, key), root_pem, answer: Mutex::new(Answer::Workload) }
        }
    }

    #[tonic::async_trait]
    impl IstioCertificateService for FakeCa {
        async fn create_certificate(
            &self,
            req: tonic::Request<IstioCertificateRequest>,
        ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
            let req = req.into_inner();
            let der = CertificateSigningRequestDer::from_pem_slice(req.csr.as_bytes()).unwrap();
            let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
            let key = CsrKey(csr.certification_request_info.subject_pki.subject_public_key.data.to_vec());
            let asked = match csr.requested_extensions().into_iter().flatten().find_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    san.general_names.iter().find_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                }
                _ => None,
            }) {
                Some(uri) => uri,
                None => return Err(tonic::Status::invalid_argument("no URI SAN")),
            };
            let answer = *self.answer.lock().unwrap();
            let mut params = CertificateParams::default();
            let uri = match answer {
                Answer::OtherIdentity => "spiffe://cluster.local/ns/shop/sa/other".to_owned(),
                Answer::Workload | Answer::SigningCertificate | Answer::RootsInField => asked,
            };
            params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            if let Answer::SigningCertificate = answer {
                params.key_usages.push(KeyUsagePurpose::KeyCertSign);
            }
            let now = SystemTime::now();
            params.not_before = (now - Duration::from_secs(60)).into();
            params.not_after = (now + Duration::from_secs(3600)).into();
            let leaf = params.signed_by(&key, &self.issuer).unwrap();
            let (cert_chain, root_cert) = match answer {
                Answer::RootsInField => (
                    vec![leaf.pem()],
                    Some(proto::istio::v1::auth::Roots { ca_cert: vec![self.root_pem.clone(), other_root_pem()] }),
                ),
                _ => (vec![leaf.pem(), self.root_pem.clone()], None),
            };
            Ok(tonic::Response::new(IstioCertificateResponse { cert_chain, root_cert }))
        }
    }

    /// A second root, as a CA's bundle carries during a root rotation.
    fn other_root_pem() -> String {
        static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PEM.get_or_init(|| {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
        })
        .clone()
    }

    /// A fake CA serving on loopback, and a client of it with a store trusting its root.
    async fn serve(ca: &Arc<FakeCa>) -> (CaClient, CertStore) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IstioCertificateServiceServer::from_arc(ca.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let store = CertStore::new(TrustRoots::from_pem(ca.root_pem.as_bytes()).unwrap());
        let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect_lazy();
        (CaClient::new(channel, "token", store.clone(), Duration::from_secs(3600)), store)
    }

    /// Istio's newer answer puts the roots in `root_cert` and only the leaf (and intermediates)
    /// in `cert_chain`: the roots trusted are that bundle, never the chain's last entry (here
    /// our own leaf).
    #[tokio::test]
    async fn roots_in_the_root_cert_field_are_the_ones_trusted() {
        let ca = Arc::new(FakeCa::new());
        *ca.answer.lock().unwrap() = Answer::RootsInField;
        let (client, store) = serve(&ca).await;
        let web = Identity::new("cluster.local", "shop", "web").unwrap();
        let cert = client.fetch(&web).await.unwrap();
        let der = |pem: &str| rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let roots = store.roots();
        assert_eq!(roots.certificates().len(), 2, "the CA's root and the other root of its bundle");
        assert!(roots.certificates().contains(&der(&ca.root_pem)));
        assert!(roots.certificates().contains(&der(&other_root_pem())));
        assert!(!roots.certificates().contains(&cert.certified_key().cert[0]), "our own leaf is no root");
    }

    fn failures(reason: &str) -> u64 {
        fetch_failures().find(|(r, _)| *r == reason).map(|(_, n)| n).unwrap()
    }

    #[tokio::test]
    async fn an_answer_peers_would_refuse_is_not_installed_and_is_counted_by_reason() {
        let ca = Arc::new(FakeCa::new());
        let (client, store) = serve(&ca).await;
        let web = Identity::new("cluster.local", "shop", "web").unwrap();
        let other = Identity::new("cluster.local", "shop", "other").unwrap();
        let installed = client.fetch(&web).await.unwrap();

        for (answer, reason, names) in [
            (Answer::OtherIdentity, "wrong_identity", other.as_str()),
            (Answer::SigningCertificate, "not_leaf_svid", "keyCertSign"),
        ] {
            *ca.answer.lock().unwrap() = answer;
            // Process-wide counters: other tests may count too, never less.
            let before = failures(reason);
            let err = client.fetch(&web).await.expect_err(reason);
            let CaClientError::NotInstalled(refused) = &err else { panic!("{answer:?}: {err:?}") };
            assert_eq!(refused.identity, web);
            assert_eq!(err.reason(), reason);
            assert!(err.to_string().contains(web.as_str()) && err.to_string().contains(names), "{err}");
            assert!(failures(reason) > before, "{reason} counted");
            assert!(Arc::ptr_eq(&store.get(&web).unwrap(), &installed), "{answer:?}: the previous one stays");
        }
        assert!(store.get(&other).is_none());
    }

    #[test]
    fn every_failure_reason_is_listed() {
        for reason in InsertError::REASONS {
            assert!(FETCH_FAILURE_REASONS.contains(&reason), "{reason}");
        }
        let id = Identity::new("cluster.local", "shop", "web").unwrap();
        let ours = [
            CaClientError::Csr { identity: id.clone(), why: String::new() },
            CaClientError::Refused { identity: id.clone(), status: tonic::Status::internal("") },
            CaClientError::Token {
                identity: id.clone(),
                path: PathBuf::new(),
                source: std::io::ErrorKind::NotFound.into(),
            },
            CaClientError::BadAnswer { identity: id, why: String::new() },
        ];
        for e in ours {
            assert!(FETCH_FAILURE_REASONS.contains(&e.reason()), "{e}");
        }
        assert_eq!(fetch_failures().count(), FETCH_FAILURE_REASONS.len());
    }
}
