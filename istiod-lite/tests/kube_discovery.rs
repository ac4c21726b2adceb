//! Which version of each CRD kind the Kubernetes source reads, from the API server's
//! discovery, and what it does when a policy kind is served at no version it reads, or answers
//! 404 while discovery says it is served; and where a failing watch is shown.

mod kube_support;
mod support;

use hyper::StatusCode;
use istiod_lite::source::dir::Loader;
use istiod_lite::source::kube::{KubeError, KubeStatus, WATCHED};
use istiod_lite::{Kind, MeshConfig, Object, Translator};
use kube_support::{MockApi, Source, WAIT};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const PEER_AUTHENTICATIONS: &str = "/apis/security.istio.io/v1/peerauthentications";
const POLICIES_V1BETA1: &str = "/apis/security.istio.io/v1beta1/authorizationpolicies";
const PEER_AUTHENTICATIONS_V1BETA1: &str = "/apis/security.istio.io/v1beta1/peerauthentications";

/// The authorizations of the same cluster read from the samples directory.
fn expected_authorizations() -> Vec<String> {
    let snap = Loader::new(samples_dir()).load().unwrap();
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    t.authorizations().keys().cloned().collect()
}

fn authorizations(src: &Source) -> Vec<String> {
    src.translator.lock().unwrap().authorizations().keys().cloned().collect()
}

/// Every kind synced but the policy kinds, which are failing.
fn all_but_policies(s: &KubeStatus) -> bool {
    WATCHED.iter().all(|w| match w.kind {
        Kind::AuthorizationPolicy | Kind::PeerAuthentication => s.failing.contains_key(&w.kind),
        k => s.synced.contains(&k),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_served_only_at_v1beta1_are_read_there() {
    // An older Istio's CRDs: security.istio.io at v1beta1 only.
    let mock = MockApi::start().await;
    mock.not_installed(POLICIES)
        .not_installed(PEER_AUTHENTICATIONS)
        .list(POLICIES_V1BETA1, "list/authorizationpolicies-v1beta1.json")
        .list(PEER_AUTHENTICATIONS_V1BETA1, "list/peerauthentications-v1beta1.json")
        .cluster();
    let mut src = Source::start(&mock);
    let status = src.ready().await;
    assert!(status.synced.contains(&Kind::AuthorizationPolicy), "{status:#?}");
    assert!(status.synced.contains(&Kind::PeerAuthentication), "{status:#?}");
    assert_eq!(status.versions.get(&Kind::AuthorizationPolicy), Some(&"v1beta1"));
    assert_eq!(status.versions.get(&Kind::Gateway), Some(&"v1"));
    assert_eq!((status.reports, status.rejected.len()), (0, 0), "{status:#?}");
    let authz = authorizations(&src);
    assert!(!authz.is_empty());
    assert_eq!(authz, expected_authorizations());
    assert!(mock.lists(POLICIES).is_empty(), "asked for a version discovery does not list");
    // Its watch, at v1beta1 too, counts as opened.
    mock.wait_seen("the v1beta1 policies watch", WAIT, |seen| {
        seen.iter().any(|s| s.path == POLICIES_V1BETA1 && s.is_watch())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_served_at_no_version_read_keep_the_source_not_ready_and_are_reported() {
    // The security group is there, with policies, but at a version we do not read: serving
    // without them would turn every DENY off.
    let mock = MockApi::start().await;
    mock.not_installed(POLICIES)
        .not_installed(PEER_AUTHENTICATIONS)
        .list("/apis/security.istio.io/v2alpha1/authorizationpolicies", "list/authorizationpolicies.json")
        .cluster();
    let mut src = Source::start(&mock);
    let status = src
        .wait("policy kinds unreadable, the rest synced", |s| {
            all_but_policies(s)
                && [Kind::AuthorizationPolicy, Kind::PeerAuthentication]
                    .iter()
                    .all(|k| matches!(s.failing.get(k).map(|e| &**e), Some(KubeError::Unreadable { .. })))
        })
        .await;
    assert!(!status.ready(), "ready without policies: {status:#?}");
    assert_eq!(status.reports, 2, "{status:#?}");
    let report = status.failing[&Kind::AuthorizationPolicy].to_string();
    assert!(report.contains("security.istio.io") && report.contains("\"v2alpha1\""), "{report}");
    assert_eq!(status.failures().count(), 2);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(!src.status.borrow().ready());
    assert_eq!(src.status.borrow().reports, 2, "reported once, not on every retry");

    // The CRDs upgraded to a version we read: found on the next discovery.
    mock.install(POLICIES).install(PEER_AUTHENTICATIONS);
    let status = src.ready().await;
    assert!(status.failing.is_empty(), "{status:#?}");
    assert_eq!(authorizations(&src), expected_authorizations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_list_not_found_while_discovery_serves_it_is_a_failure_not_a_missing_crd() {
    // An API server still starting: discovery lists the CRD, its list answers 404 once.
    let mock = MockApi::start().await;
    mock.respond(POLICIES, StatusCode::NOT_FOUND, "status/not-found.json")
        .list(POLICIES, "list/authorizationpolicies.json")
        .cluster();
    let mut src = Source::start(&mock);
    let status = src
        .wait("all but policies synced", |s| {
            s.failing.contains_key(&Kind::AuthorizationPolicy)
                && WATCHED.iter().all(|w| w.kind == Kind::AuthorizationPolicy || s.synced.contains(&w.kind))
        })
        .await;
    assert!(!status.ready(), "ready without policies: {status:#?}");
    let KubeError::Watch { kind: "AuthorizationPolicy", .. } = &*status.failing[&Kind::AuthorizationPolicy] else {
        panic!("not a failing watch: {:#?}", status.failing[&Kind::AuthorizationPolicy])
    };
    assert!(authorizations(&src).is_empty() || !status.synced.contains(&Kind::AuthorizationPolicy));

    let status = src.ready().await;
    assert!(status.failing.is_empty() && status.synced.contains(&Kind::AuthorizationPolicy), "{status:#?}");
    assert_eq!(authorizations(&src), expected_authorizations());
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: istiod\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.unwrap().unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_watch_shows_in_debug_errors_and_metrics() {
    use clap::Parser;
    let mock = MockApi::start().await;
    mock.respond(POLICIES, StatusCode::FORBIDDEN, "status/forbidden-authorizationpolicies.json").cluster();
    let dir = TempDir::new("kube-discovery-errors");
    let kubeconfig = dir.write("kubeconfig", &mock.kubeconfig());
    std::fs::create_dir(dir.path().join("ca")).unwrap();
    let cfg = istiod_lite::config::Config::try_parse_from([
        "istiod-lite".as_ref(),
        "--source".as_ref(),
        "kube".as_ref(),
        "--kubeconfig".as_ref(),
        kubeconfig.as_os_str(),
        "--ca-dir".as_ref(),
        dir.path().join("ca").as_os_str(),
        "--tls-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--monitoring-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
    ])
    .unwrap();
    let running = istiod_lite::serve::start(&cfg).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let errors = loop {
        let body: serde_json::Value =
            serde_json::from_str(&http_get(running.monitoring_addr, "/debug/errors").await).unwrap();
        let errors: Vec<String> =
            body["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_owned()).collect();
        if !errors.is_empty() {
            break errors;
        }
        assert!(tokio::time::Instant::now() < deadline, "no error shown: {body:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("kubernetes:AuthorizationPolicy")
            && errors[0].contains("watching AuthorizationPolicy")
            && errors[0].contains("cannot list resource"),
        "{errors:#?}"
    );
    let metrics = http_get(running.monitoring_addr, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "istiod_lite_config_errors 1"), "{metrics}");
}
