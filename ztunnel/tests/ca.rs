//! ztunnel's CA client against istiod-lite's CA on loopback: certificates for pods on this
//! node only, refusals that say why, and renewal before expiry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hbone::{CertStore, Identity};
use istiod_lite::ca::{CaService, CaSigner, NodeTokens};
use ztunnel::ca_client::{CaClient, CaClientError};

async fn start_ca(dir: &std::path::Path) -> (String, Arc<CaSigner>) {
    let signer = Arc::new(CaSigner::load_or_generate(dir, "cluster.local").unwrap());
    let tokens = NodeTokens::from(HashMap::from([
        ("node1-token".to_owned(), "node1".to_owned()),
        ("node1-rotated-token".to_owned(), "node1".to_owned()),
    ]));
    // Only shop/web runs on node1.
    let placement =
        |id: &Identity, node: &str| node == "node1" && id.namespace() == "shop" && id.service_account() == "web";
    let svc = CaService::new(signer.clone(), tokens, Arc::new(placement)).into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), signer)
}

fn client(url: &str, token: &str, signer: &CaSigner, ttl: Duration) -> (CaClient, CertStore) {
    let roots = hbone::TrustRoots::from_pem(signer.root_pem().as_bytes()).unwrap();
    let store = CertStore::new(roots);
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap().connect_lazy();
    (CaClient::new(channel, token, store.clone(), ttl), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_renews_and_refuses() {
    let dir = std::env::temp_dir().join(format!("ztunnel-ca-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (url, signer) = start_ca(&dir).await;
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let admin = Identity::new("cluster.local", "shop", "admin").unwrap();

    let (ca, store) = client(&url, "node1-token", &signer, Duration::from_secs(4));
    let cert = ca.fetch(&web).await.unwrap();
    assert_eq!(cert.identity(), &web);
    assert!(store.get(&web).is_some());

    // A pod identity not on this node: refused, saying why.
    match ca.fetch(&admin).await {
        Err(CaClientError::Refused { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(status.message().contains("node1"), "{}", status.message());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An unknown token: refused as unauthenticated.
    let (stranger, _) = client(&url, "guess", &signer, Duration::from_secs(60));
    match stranger.fetch(&web).await {
        Err(CaClientError::Refused { status, .. }) => assert_eq!(status.code(), tonic::Code::Unauthenticated),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Renewal: a 4 s certificate is replaced at about half its life, before it expires.
    ca.ensure(&web).await.unwrap();
    let first = store.get(&web).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        let now = store.get(&web).unwrap();
        if now.certified_key().cert[0] != first.certified_key().cert[0] {
            assert!(now.not_after() > first.not_after());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "renewed before expiry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ca.forget(&web);
    assert!(store.get(&web).is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A token file rewritten under a running client (kubelet rotating a projected token): the
/// next request uses what the file holds then, not what it held at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_read_per_request() {
    let dir = std::env::temp_dir().join(format!("ztunnel-ca-token-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (url, signer) = start_ca(&dir.join("ca")).await;
    let web = Identity::new("cluster.local", "shop", "web").unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "node1-token\n").unwrap();
    let roots = hbone::TrustRoots::from_pem(signer.root_pem().as_bytes()).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect_lazy();
    let ca = CaClient::with_token_file(channel, &token_file, CertStore::new(roots), Duration::from_secs(60));
    ca.fetch(&web).await.unwrap();

    // Rewritten to a token the CA does not know: the next request presents it and is refused.
    std::fs::write(&token_file, "expired-token").unwrap();
    match ca.fetch(&web).await {
        Err(CaClientError::Refused { status, .. }) => assert_eq!(status.code(), tonic::Code::Unauthenticated),
        other => panic!("expected the new (unknown) token to be refused, got {other:?}"),
    }
    // Rotated the way kubelet does it (new file renamed over the old): accepted again.
    std::fs::write(dir.join("token.new"), "node1-rotated-token").unwrap();
    std::fs::rename(dir.join("token.new"), &token_file).unwrap();
    ca.fetch(&web).await.unwrap();

    // An empty or missing file fails the request, naming the file, instead of sending no token.
    std::fs::write(&token_file, "  \n").unwrap();
    match ca.fetch(&web).await {
        Err(e @ CaClientError::Token { .. }) => assert!(e.to_string().contains("token"), "{e}"),
        other => panic!("expected a token error, got {other:?}"),
    }
    std::fs::remove_file(&token_file).unwrap();
    assert!(matches!(ca.fetch(&web).await, Err(CaClientError::Token { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}
