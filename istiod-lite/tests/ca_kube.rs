//! The CA in Kubernetes mode: callers authenticated by TokenReview against the mock API server
//! (recorded `authentication.k8s.io/v1` answers over real HTTP, through a real kube client),
//! authorized by the token's service account and pod binding. Also istiod-lite run with
//! `--source kube`: certificates over its port, refusals counted by reason, and 15012 waiting
//! for the first model.

mod kube_support;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hbone::Identity;
use hyper::StatusCode;
use istiod_lite::ca::tokenreview::{DEFAULT_AUDIENCE, DEFAULT_CACHE_TTL};
use istiod_lite::ca::{
    Authenticator, CaService, CaSigner, IMPERSONATED_IDENTITY, KubeAuth, PlacedPod, Placement, REFUSAL_REASON, Refusal,
    TokenReviewer,
};
use kube_support::{MockApi, TOKEN_REVIEWS};
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use support::TempDir;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(15);
const CATALOG: &str = "spiffe://cluster.local/ns/shop/sa/catalog";
const DEBUG: &str = "spiffe://cluster.local/ns/tools/sa/default";
const WAYPOINT: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";

/// A pod: `(namespace, name)`, then service account, node and uid.
type PodEntry = ((&'static str, &'static str), (&'static str, &'static str, &'static str));

/// Pods by `(namespace, name)`: service account, node and uid.
struct Pods(HashMap<(&'static str, &'static str), (&'static str, &'static str, &'static str)>);

impl Placement for Pods {
    fn runs_on(&self, identity: &Identity, node: &str) -> bool {
        self.0
            .iter()
            .any(|((ns, _), (sa, n, _))| *ns == identity.namespace() && *sa == identity.service_account() && *n == node)
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PlacedPod> {
        self.0.get(&(namespace, name)).map(|(sa, node, uid)| PlacedPod {
            uid: Some(uid.to_string()),
            service_account: sa.to_string(),
            node: node.to_string(),
        })
    }
}

/// The uids of the ztunnel pods the recorded tokens are bound to.
const ZTUNNEL_A_UID: &str = "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b";
const ZTUNNEL_B_UID: &str = "1f0e9d8c-7b6a-4f5e-3d2c-1b0a9f8e7d6c";

fn pods() -> Pods {
    Pods(HashMap::from([
        (("shop", "catalog-1"), ("catalog", "node-a", "5e1f0a2b-0000-4000-8000-00000000c001")),
        (("tools", "debug"), ("default", "node-b", "5e1f0a2b-0000-4000-8000-00000000d001")),
        (("istio-system", "ztunnel-x7k2p"), ("ztunnel", "node-a", ZTUNNEL_A_UID)),
        (("istio-system", "ztunnel-m4q8r"), ("ztunnel", "node-b", ZTUNNEL_B_UID)),
    ]))
}

fn ca(dir: &TempDir, client: kube::Client) -> CaService<Pods> {
    ca_with(dir, client, pods())
}

fn ca_with<P: Placement>(dir: &TempDir, client: kube::Client, pods: P) -> CaService<P> {
    let signer = Arc::new(CaSigner::load_or_generate(&dir.path().join("ca"), "cluster.local").unwrap());
    let auth = Authenticator::Kube(Box::new(KubeAuth {
        reviewer: TokenReviewer::new(client, DEFAULT_AUDIENCE, DEFAULT_CACHE_TTL),
        node_proxy: ("istio-system".into(), "ztunnel".into()),
        trust_domain: "cluster.local".into(),
    }));
    CaService::with_auth(signer, auth, Arc::new(pods))
}

/// A CSR for `san` and its key, PEM.
fn csr(san: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
    (p.serialize_request(&key).unwrap().pem().unwrap(), key.serialize_pem())
}

/// A request, and the key of its CSR.
fn request(token: &str, impersonate: Option<&str>, san: &str) -> (Request<IstioCertificateRequest>, String) {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(id.to_owned())) },
        )]
        .into_iter()
        .collect(),
    });
    let (csr, key) = csr(san);
    let mut r = Request::new(IstioCertificateRequest { csr, validity_duration: 3600, metadata });
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    (r, key)
}

/// The identity a usable certificate from the issued chain (with the CSR's key) proves.
fn issued_identity(chain: &[String], key: &str) -> String {
    hbone::WorkloadCert::from_pem(chain.join("").as_bytes(), key.as_bytes()).unwrap().identity().to_string()
}

async fn ask<P: Placement>(
    ca: &CaService<P>,
    token: &str,
    impersonate: Option<&str>,
    san: &str,
) -> Result<String, tonic::Status> {
    let (req, key) = request(token, impersonate, san);
    let r = tokio::time::timeout(WAIT, ca.create_certificate(req)).await.unwrap();
    r.map(|r| issued_identity(&r.into_inner().cert_chain, &key))
}

fn refused(r: Result<String, tonic::Status>, code: Code, says: &str) -> tonic::Status {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(says), "message {:?} should say {says:?}", s.message());
    s
}

/// The refusal's reason, as the caller and the metrics see it.
fn reason(s: &tonic::Status) -> &str {
    Refusal::of(s).unwrap_or_else(|| panic!("no {REFUSAL_REASON} in {s:?}"))
}

#[tokio::test]
async fn ztunnel_token_gets_pods_on_its_node_only() {
    let mock = MockApi::start().await;
    mock.token_review("ztunnel-a", StatusCode::CREATED, "tokenreview/ztunnel-node-a.json");
    let dir = TempDir::new("ca-kube-ztunnel");
    let ca = ca(&dir, mock.client());

    assert_eq!(ask(&ca, "ztunnel-a", Some(CATALOG), CATALOG).await.unwrap(), CATALOG);
    // tools/default runs on node-b only.
    refused(ask(&ca, "ztunnel-a", Some(DEBUG), DEBUG).await, Code::PermissionDenied, "on node node-a");
    // A node proxy must say whom it asks for.
    refused(ask(&ca, "ztunnel-a", None, CATALOG).await, Code::InvalidArgument, IMPERSONATED_IDENTITY);

    // The review asked for the CA's audience, with the caller's token; and positive answers
    // were cached: three CSRs, one review.
    let reviews = mock.review_requests();
    assert_eq!(reviews.len(), 1, "{reviews:#?}");
    assert_eq!(reviews[0]["spec"]["token"], "ztunnel-a");
    assert_eq!(reviews[0]["spec"]["audiences"], serde_json::json!(["istio-ca"]));
    assert_eq!(reviews[0]["kind"], "TokenReview");
}

#[tokio::test]
async fn ztunnel_token_without_node_extra_finds_its_node_through_its_pod() {
    let mock = MockApi::start().await;
    mock.token_review("ztunnel-b", StatusCode::CREATED, "tokenreview/ztunnel-pod-binding-only.json");
    mock.token_review("ztunnel-unbound", StatusCode::CREATED, "tokenreview/ztunnel-unbound.json");
    let dir = TempDir::new("ca-kube-podbinding");
    let ca = ca(&dir, mock.client());
    // The token names pod istio-system/ztunnel-m4q8r, which runs on node-b.
    assert_eq!(ask(&ca, "ztunnel-b", Some(DEBUG), DEBUG).await.unwrap(), DEBUG);
    refused(ask(&ca, "ztunnel-b", Some(CATALOG), CATALOG).await, Code::PermissionDenied, "on node node-b");
    // A token of the node proxies' account not bound to any pod names no node.
    let s =
        refused(ask(&ca, "ztunnel-unbound", Some(CATALOG), CATALOG).await, Code::PermissionDenied, "bound to a pod");
    assert_eq!(reason(&s), "token_not_bound_to_pod");
}

/// As istiod's node authorizer: the node proxy's token must be of the very pod it names (a pod
/// created again under the same name has a new uid; a token of the old one speaks for no node),
/// that pod must be known and run as the token's account, and the node is the pod's — here even
/// when the token names a node itself, which must then agree.
#[tokio::test]
async fn a_node_proxy_token_counts_only_for_the_very_pod_it_was_issued_for() {
    let mock = MockApi::start().await;
    mock.token_review("ztunnel-a", StatusCode::CREATED, "tokenreview/ztunnel-node-a.json");
    let dir = TempDir::new("ca-kube-caller-pod");
    let with = |pods: &[PodEntry]| {
        ca_with(
            &dir,
            mock.client(),
            Pods(pods.iter().copied().chain([(("shop", "catalog-1"), ("catalog", "node-a", "c1"))]).collect()),
        )
    };
    let key = ("istio-system", "ztunnel-x7k2p");
    for (pods, code_says, why) in [
        (vec![], ("caller_pod_unknown", "not (yet) known"), "the pod is not known"),
        (
            vec![(key, ("ztunnel", "node-a", "9f9f9f9f-0000-4000-8000-000000000000"))],
            ("caller_pod_mismatch", "created again"),
            "replaced",
        ),
        (
            vec![(key, ("other", "node-a", ZTUNNEL_A_UID))],
            ("caller_pod_mismatch", "service account other"),
            "another account",
        ),
        (
            vec![(key, ("ztunnel", "node-b", ZTUNNEL_A_UID))],
            ("caller_pod_mismatch", "node node-a, istiod-lite knows it on node node-b"),
            "another node",
        ),
        (vec![(key, ("ztunnel", "", ZTUNNEL_A_UID))], ("caller_node_unknown", "not scheduled"), "unscheduled"),
    ] {
        let ca = with(&pods);
        let s = refused(ask(&ca, "ztunnel-a", Some(CATALOG), CATALOG).await, Code::PermissionDenied, code_says.1);
        assert_eq!(reason(&s), code_says.0, "{why}: {s:?}");
    }
    // The same token, its pod as the API server has it: granted.
    let ca = with(&[(key, ("ztunnel", "node-a", ZTUNNEL_A_UID))]);
    assert_eq!(ask(&ca, "ztunnel-a", Some(CATALOG), CATALOG).await.unwrap(), CATALOG);
}

/// Pods that change under a running CA, as the model does under `ModelPlacement`.
#[derive(Clone)]
struct LivePods(Arc<std::sync::Mutex<Pods>>);

impl Placement for LivePods {
    fn runs_on(&self, identity: &Identity, node: &str) -> bool {
        self.0.lock().unwrap().runs_on(identity, node)
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PlacedPod> {
        self.0.lock().unwrap().pod(namespace, name)
    }
}

/// The review of a token is cached for a minute, but what it says about the pod is checked
/// against the pods as they are at each request: a token of a ztunnel pod that was deleted, or
/// deleted and created again under its name, speaks for no node from the cache either.
#[tokio::test]
async fn a_cached_review_speaks_for_no_replaced_or_deleted_pod() {
    let mock = MockApi::start().await;
    mock.token_review("ztunnel-a", StatusCode::CREATED, "tokenreview/ztunnel-node-a.json");
    let dir = TempDir::new("ca-kube-cached-review");
    let live = LivePods(Arc::new(std::sync::Mutex::new(pods())));
    let ca = ca_with(&dir, mock.client(), live.clone());
    let ztunnel = ("istio-system", "ztunnel-x7k2p");
    let set = |pod: Option<(&'static str, &'static str, &'static str)>| {
        let mut pods = live.0.lock().unwrap();
        match pod {
            Some(p) => pods.0.insert(ztunnel, p),
            None => pods.0.remove(&ztunnel),
        };
    };

    assert_eq!(ask(&ca, "ztunnel-a", Some(CATALOG), CATALOG).await.unwrap(), CATALOG);
    set(Some(("ztunnel", "node-a", "9f9f9f9f-0000-4000-8000-000000000000")));
    let s = refused(ask(&ca, "ztunnel-a", Some(CATALOG), CATALOG).await, Code::PermissionDenied, "created again");
    assert_eq!(reason(&s), "caller_pod_mismatch");
    set(None);
    let s = refused(ask(&ca, "ztunnel-a", Some(CATALOG), CATALOG).await, Code::PermissionDenied, "not (yet) known");
    assert_eq!(reason(&s), "caller_pod_unknown");
    // The pod as the token was issued for it again: granted, from the same cached review.
    set(Some(("ztunnel", "node-a", ZTUNNEL_A_UID)));
    assert_eq!(ask(&ca, "ztunnel-a", Some(CATALOG), CATALOG).await.unwrap(), CATALOG);
    assert_eq!(mock.review_requests().len(), 1, "the refusals must have come from the cached review");
}

#[tokio::test]
async fn waypoint_token_gets_its_own_identity_only() {
    let mock = MockApi::start().await;
    mock.token_review("waypoint", StatusCode::CREATED, "tokenreview/waypoint.json");
    let dir = TempDir::new("ca-kube-waypoint");
    let ca = ca(&dir, mock.client());
    assert_eq!(ask(&ca, "waypoint", None, WAYPOINT).await.unwrap(), WAYPOINT);
    assert_eq!(ask(&ca, "waypoint", Some(WAYPOINT), WAYPOINT).await.unwrap(), WAYPOINT);
    // Not the identity of a pod on its node, nor any other.
    let s = refused(
        ask(&ca, "waypoint", Some(CATALOG), CATALOG).await,
        Code::PermissionDenied,
        "only have its own identity",
    );
    assert_eq!(reason(&s), "not_own_identity");
    // Nor another identity smuggled into the CSR.
    let s = refused(ask(&ca, "waypoint", None, CATALOG).await, Code::PermissionDenied, "authorized for");
    assert_eq!(reason(&s), "csr_identity_mismatch");
}

/// The placement answers for a namespace and service account; the trust domain is the CA's to
/// hold (the `Pods` here, like any `Placement`, does not look at it).
#[tokio::test]
async fn ztunnel_token_gets_no_identity_of_another_trust_domain() {
    let mock = MockApi::start().await;
    mock.token_review("ztunnel-a", StatusCode::CREATED, "tokenreview/ztunnel-node-a.json");
    let dir = TempDir::new("ca-kube-trust-domain");
    let ca = ca(&dir, mock.client());
    let elsewhere = "spiffe://evil.example/ns/shop/sa/catalog";
    let s = refused(ask(&ca, "ztunnel-a", Some(elsewhere), elsewhere).await, Code::PermissionDenied, "trust domain");
    assert_eq!(reason(&s), "foreign_trust_domain");
    // Nor with the mesh's identity named in the metadata and the other one in the CSR.
    refused(ask(&ca, "ztunnel-a", Some(CATALOG), elsewhere).await, Code::PermissionDenied, "authorized for");
}

/// Positive reviews are cached for a while, but not without bound: past
/// `MAX_CACHED_REVIEWS` live entries the oldest goes, and is reviewed again when next seen.
#[tokio::test]
async fn the_review_cache_is_bounded() {
    use istiod_lite::ca::tokenreview::MAX_CACHED_REVIEWS;
    let mock = MockApi::start().await;
    let tokens: Vec<String> = (0..=MAX_CACHED_REVIEWS).map(|i| format!("waypoint-{i}")).collect();
    for t in &tokens {
        mock.token_review(t, StatusCode::CREATED, "tokenreview/waypoint.json");
    }
    let reviewer = TokenReviewer::new(mock.client(), DEFAULT_AUDIENCE, DEFAULT_CACHE_TTL);
    for t in &tokens {
        reviewer.review(t).await.unwrap();
    }
    assert_eq!(mock.review_requests().len(), tokens.len());
    // The newest is still cached; the first was evicted to make room.
    reviewer.review(tokens.last().unwrap()).await.unwrap();
    assert_eq!(mock.review_requests().len(), tokens.len(), "the newest review was not cached");
    reviewer.review(&tokens[0]).await.unwrap();
    assert_eq!(mock.review_requests().len(), tokens.len() + 1, "the cache kept more than its bound");
}

#[tokio::test]
async fn bad_tokens_wrong_audiences_and_api_errors_are_unauthenticated() {
    let mock = MockApi::start().await;
    mock.token_review("garbage", StatusCode::CREATED, "tokenreview/not-authenticated.json")
        .token_review("for-the-api-server", StatusCode::CREATED, "tokenreview/wrong-audience.json")
        .token_review("audience-ignored", StatusCode::CREATED, "tokenreview/audience-ignored.json")
        .token_review("forbidden", StatusCode::FORBIDDEN, "status/forbidden-tokenreviews.json");
    let dir = TempDir::new("ca-kube-refusals");
    let ca = ca(&dir, mock.client());
    let s = refused(ask(&ca, "garbage", Some(CATALOG), CATALOG).await, Code::Unauthenticated, "invalid bearer token");
    assert_eq!(reason(&s), "token_rejected");
    refused(
        ask(&ca, "for-the-api-server", Some(CATALOG), CATALOG).await,
        Code::Unauthenticated,
        "invalid for the target audiences",
    );
    refused(ask(&ca, "audience-ignored", None, WAYPOINT).await, Code::Unauthenticated, "not for audience istio-ca");
    refused(ask(&ca, "forbidden", Some(CATALOG), CATALOG).await, Code::Unauthenticated, "cannot create resource");
    // Refusals are not cached: asking again reviews again.
    refused(ask(&ca, "garbage", Some(CATALOG), CATALOG).await, Code::Unauthenticated, "invalid bearer token");
    assert_eq!(mock.review_requests().len(), 5);
    let no_token = {
        let (mut r, _) = request("x", Some(CATALOG), CATALOG);
        r.metadata_mut().remove("authorization");
        ca.create_certificate(r).await
    };
    let no_token = no_token.unwrap_err();
    assert_eq!((no_token.code(), reason(&no_token)), (Code::Unauthenticated, "no_token"));

    // The API server gone: refused, saying the token could not be checked.
    drop(mock);
    let s = refused(
        ask(&ca, "garbage", Some(CATALOG), CATALOG).await,
        Code::Unauthenticated,
        "cannot authenticate the token",
    );
    assert_eq!(reason(&s), "token_review_failed");
}

fn kubeconfig(dir: &TempDir, mock: &MockApi) -> std::path::PathBuf {
    dir.write("kubeconfig", &mock.kubeconfig())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_lite_in_kube_mode_serves_the_ca_by_tokenreview_once_the_model_is_loaded() {
    use clap::Parser;
    let mock = MockApi::start().await;
    // The first pod list fails: the model stays incomplete until the source's retry.
    mock.respond("/api/v1/pods", StatusCode::INTERNAL_SERVER_ERROR, "status/internal-error.json");
    // The catalog pod on node-a, and the ztunnel pod there the token is bound to.
    mock.list("/api/v1/pods", "list/pods-catalog-and-ztunnel.json");
    mock.cluster();
    mock.token_review("ztunnel-a", StatusCode::CREATED, "tokenreview/ztunnel-node-a.json");
    mock.token_review("garbage", StatusCode::CREATED, "tokenreview/not-authenticated.json");
    let dir = TempDir::new("ca-kube-serve");
    let kubeconfig = kubeconfig(&dir, &mock);
    let cfg = istiod_lite::config::Config::try_parse_from([
        "istiod-lite".as_ref(),
        "--source".as_ref(),
        "kube".as_ref(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--ca-dir".as_ref(),
        dir.path().join("ca").as_os_str(),
        "--plaintext-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tls-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--monitoring-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
    ])
    .unwrap();
    let running = istiod_lite::serve::start(&cfg).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.plaintext_addr.unwrap()))
        .unwrap()
        .connect_lazy();
    let mut client = IstioCertificateServiceClient::new(channel);
    // Asked at once: answered only once the pods are known, so the pod on node-a is found.
    let (req, key) = request("ztunnel-a", Some(CATALOG), CATALOG);
    let granted =
        tokio::time::timeout(WAIT, client.create_certificate(req)).await.expect("answered in time").expect("granted");
    assert_eq!(issued_identity(&granted.into_inner().cert_chain, &key), CATALOG);
    assert!(mock.lists("/api/v1/pods").len() >= 2, "the failed list was retried before the CA answered");

    let refused = client.create_certificate(request("garbage", Some(CATALOG), CATALOG).0).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(mock.seen().iter().any(|s| s.path == TOKEN_REVIEWS));

    // The reason travels to the caller, and 15014 counts the refusal by it.
    assert_eq!(Refusal::of(&refused), Some("token_rejected"));
    let metrics = http_get(running.monitoring_addr, "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l == "istiod_lite_certificates_refused_total{reason=\"token_rejected\",code=\"Unauthenticated\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l == "istiod_lite_certificates_issued_total 1"), "{metrics}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: istiod\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.unwrap().unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}
