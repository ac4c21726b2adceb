//! ztunnel's TLS to istiod (`https://` xDS and CA addresses) against a real istiod-lite on
//! loopback: connecting by IP with the service name as the alternative hostname works for the
//! CA and xDS; a certificate for another name, or from another root, is refused with an error
//! that says what was expected.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use hbone::{CertStore, Identity, TrustRoots};
use ztunnel::ca_client::{CaClient, CaClientError};
use ztunnel::control_plane_tls::{Connector, error_chain};
use ztunnel::state::xds::XdsEndpoint;
use ztunnel::state::{StateConfig, StateHandle};

const TOKEN: &str = "node-a-bootstrap-token-0123456789";

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(test: &str) -> (TempDir, istiod_lite::config::Config) {
    let dir = std::env::temp_dir().join(format!("ztunnel-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples");
    for f in ["namespaces.yaml", "shop.yaml"] {
        std::fs::copy(samples.join(f), dir.join("config").join(f)).unwrap();
    }
    std::fs::write(dir.join("tokens.yaml"), format!("node-a: {TOKEN}\n")).unwrap();
    let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
    let cfg = istiod_lite::config::Config::try_parse_from([
        "istiod-lite",
        "--config-dir",
        &p("config"),
        "--ca-dir",
        &p("ca"),
        "--bootstrap-tokens",
        &p("tokens.yaml"),
        "--tls-addr",
        "127.0.0.1:0",
        "--monitoring-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    (TempDir(dir), cfg)
}

fn ca_client(url: &str, alt: Option<&str>, roots: &TrustRoots) -> CaClient {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap();
    let channel = endpoint.connect_with_connector_lazy(Connector::new(url, alt, roots).unwrap());
    CaClient::new(channel, TOKEN, CertStore::new(roots.clone()), Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_and_xds_over_verified_tls() {
    let (_dir, cfg) = setup("cp-tls");
    let running = istiod_lite::serve::start(&cfg).await.unwrap();
    let roots = TrustRoots::from_pem(&std::fs::read(cfg.ca_dir.join("root-cert.pem")).unwrap()).unwrap();
    let url = format!("https://{}", running.tls_addr);
    let catalog = Identity::new("cluster.local", "shop", "catalog").unwrap();

    // By IP, with the service name istiod's certificate carries: granted.
    let ca = ca_client(&url, Some("istiod.istio-system.svc"), &roots);
    assert_eq!(ca.fetch(&catalog).await.unwrap().identity(), &catalog);

    // By IP alone: the certificate does not name 127.0.0.1; the error says what was expected
    // and what the certificate names.
    let ca = ca_client(&url, None, &roots);
    match ca.fetch(&catalog).await {
        Err(e @ CaClientError::Refused { .. }) => {
            let text = error_chain(&e);
            assert!(
                text.contains("istiod's certificate is not valid for 127.0.0.1")
                    && text.contains("istiod.istio-system.svc"),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Another name expected: named in the error.
    let ca = ca_client(&url, Some("istiod.elsewhere.svc"), &roots);
    let text = error_chain(&ca.fetch(&catalog).await.unwrap_err());
    assert!(text.contains("not valid for 127.0.0.1 or istiod.elsewhere.svc"), "{text}");

    // Another root: refused.
    let other = hbone::testing::TestCa::new("other");
    let ca = ca_client(&url, Some("istiod.istio-system.svc"), &other.roots());
    let text = error_chain(&ca.fetch(&catalog).await.unwrap_err());
    assert!(text.contains("UnknownIssuer"), "{text}");

    // xDS over the same kind of connection needs the node's token, as the CA does: without
    // one, or with a wrong one, the stream is refused and nothing of the mesh is sent.
    let xds = |token: Option<&str>| {
        let token_file = token.map(|t| {
            let path = cfg.ca_dir.with_file_name(format!("xds-token-{}", t.len()));
            std::fs::write(&path, t).unwrap();
            path
        });
        let endpoint = XdsEndpoint {
            endpoint: tonic::transport::Endpoint::from_shared(url.clone()).unwrap(),
            tls: Some(Connector::new(&url, Some("istiod.istio-system.svc"), &roots).unwrap()),
            token_file,
        };
        let handle = StateHandle::default();
        (ztunnel::state::xds::start(endpoint, Default::default(), handle.clone(), StateConfig::default()), handle)
    };
    for token in [None, Some("not-the-node-token-at-all")] {
        let (source, handle) = xds(token);
        let mut status = source.client.watch();
        let refused = status
            .wait_for(|s| s.last_error.as_deref().is_some_and(|e| e.contains("valid authentication credentials")));
        let refused = tokio::time::timeout(Duration::from_secs(10), refused).await;
        assert!(refused.is_ok(), "token {token:?}: the stream was not refused: {:?}", source.client.status());
        assert_eq!(handle.snapshot().counts().workloads, 0, "token {token:?}: workloads were sent");
    }
    // With it: the sample's workloads arrive.
    let (_source, handle) = xds(Some(TOKEN));
    let catalog_ip = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 10));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.snapshot().workload_by_ip(catalog_ip).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no workloads over TLS xDS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
