//! Which identities a node proxy may have, from the model of pods, as istiod's node authorizer
//! decides (istio/istio `security/pkg/server/ca/node_auth.go`): a pod counts on the node in its
//! `spec.nodeName` from the moment it is scheduled (no IP yet) until it is deleted from the API
//! (through its grace period, and also once finished); an unscheduled pod counts nowhere, not
//! even for a node proxy with an empty node name. Asked of `ModelPlacement` directly and
//! through the CA service.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hbone::Identity;
use istiod_lite::ca::{CaService, CaSigner, IMPERSONATED_IDENTITY, NodeTokens, Placement, Refusal};
use istiod_lite::placement::ModelPlacement;
use istiod_lite::source::dir::Loader;
use istiod_lite::{Change, Kind, MeshConfig, Object, ObjectKey, Translator};
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use support::TempDir;
use tonic::{Code, Request};

const NODE_A_TOKEN: &str = "token-of-node-a-0123456789";
const NO_NODE_TOKEN: &str = "token-of-no-node-0123456789";

/// A pod `shop/<name>` running as `sa`, with `spec` and `status` lines added (indented as under
/// their keys) and, if `deleting`, a `deletionTimestamp`.
fn pod(name: &str, sa: &str, deleting: bool, spec: &str, status: &str) -> String {
    let deletion = if deleting { "  deletionTimestamp: \"2025-01-01T00:00:00Z\"\n" } else { "" };
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n{deletion}spec:\n  serviceAccountName: {sa}\n{spec}status:\n{status}"
    )
}

const ON_A: &str = "  nodeName: node-a\n";
const RUNNING: &str = "  phase: Running\n  podIP: 10.244.1.5\n  conditions: [{type: Ready, status: \"True\"}]\n";

/// Every stage of a pod's life, one service account each, on node-a unless said otherwise.
fn pods() -> String {
    [
        pod("web-1", "web", false, ON_A, RUNNING),
        // Scheduled, sandbox being set up: no IP in the API yet.
        pod("fresh-1", "fresh", false, ON_A, "  phase: Pending\n"),
        // In its grace period: still running and serving.
        pod("leaving-1", "leaving", true, ON_A, RUNNING),
        pod("job-1", "batch", false, ON_A, "  phase: Succeeded\n  podIP: 10.244.1.6\n"),
        pod("evicted-1", "evicted", false, ON_A, "  phase: Failed\n"),
        // Not yet scheduled: no nodeName.
        pod("queued-1", "queued", false, "", "  phase: Pending\n"),
        pod("remote-1", "remote", false, "  nodeName: node-b\n", RUNNING),
        // No serviceAccountName: runs as `default`.
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: plain-1\n  namespace: shop\nspec:\n  nodeName: node-a\nstatus:\n  phase: Running\n  podIP: 10.244.1.7\n".to_owned(),
        // Namespaces next to `shop` in the model's order, with an account of the same name: an
        // identity of one namespace is never granted for a pod of another.
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: near-1\n  namespace: sho\nspec:\n  serviceAccountName: near\n  nodeName: node-a\n".to_owned(),
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: near-1\n  namespace: shop-b\n  uid: 7f1d0c2e-1111-4222-8333-944455566677\nspec:\n  serviceAccountName: near\n  nodeName: node-a\n".to_owned(),
    ]
    .concat()
}

fn translator(dir: &TempDir) -> Arc<Mutex<Translator>> {
    dir.write("pods.yaml", &pods());
    let snap = Loader::new(dir.path().to_owned()).load().unwrap();
    assert!(snap.errors.is_empty() && snap.ignored.is_empty(), "{:?} {:?}", snap.errors, snap.ignored);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    Arc::new(Mutex::new(t))
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "shop", sa).unwrap()
}

#[test]
fn a_node_may_have_the_identity_of_every_pod_scheduled_on_it_until_the_pod_is_deleted() {
    let dir = TempDir::new("ca-placement");
    let t = translator(&dir);
    let placement = ModelPlacement::new(t.clone());
    for (sa, why) in [
        ("web", "running"),
        ("fresh", "scheduled without an IP yet (ztunnel asks before the kubelet reports it)"),
        ("leaving", "being deleted, still in its grace period"),
        ("batch", "Succeeded: istiod does not look at the phase"),
        ("evicted", "Failed: istiod does not look at the phase"),
        ("default", "no serviceAccountName: runs as default"),
    ] {
        assert!(placement.runs_on(&id(sa), "node-a"), "{sa}: {why}, so node-a may have it");
        assert!(!placement.runs_on(&id(sa), "node-b"), "{sa} is not on node-b");
    }
    assert!(placement.runs_on(&id("remote"), "node-b"));
    assert!(!placement.runs_on(&id("remote"), "node-a"), "a pod on node-b is not node-a's");
    assert!(!placement.runs_on(&id("nobody"), "node-a"), "no pod runs as shop/nobody");
    assert!(
        !placement.runs_on(&Identity::new("other.domain", "shop", "web").unwrap(), "node-a"),
        "another trust domain"
    );

    // Deleted from the API (the grace period over, or a finished pod garbage-collected): no more.
    for name in ["leaving-1", "job-1"] {
        t.lock().unwrap().apply(Change::Delete(ObjectKey::new(Kind::Pod, "shop", name)));
    }
    assert!(!placement.runs_on(&id("leaving"), "node-a"), "deleted pods place nothing");
    assert!(!placement.runs_on(&id("batch"), "node-a"), "deleted pods place nothing");
    assert!(placement.runs_on(&id("web"), "node-a"), "the others stay");
}

#[test]
fn an_unscheduled_pod_is_on_no_node() {
    let dir = TempDir::new("ca-placement-unscheduled");
    let placement = ModelPlacement::new(translator(&dir));
    for node in ["node-a", "node-b"] {
        assert!(!placement.runs_on(&id("queued"), node), "shop/queued-1 has no nodeName, it is not on {node}");
    }
    let node = |name: &str| placement.pod("shop", name).map(|p| p.node);
    assert_eq!(node("queued-1").as_deref(), Some(""), "known, but on no node");
    assert_eq!(node("fresh-1").as_deref(), Some("node-a"), "scheduled without an IP");
    assert_eq!(node("gone-1"), None);
}

#[test]
fn a_pod_is_placed_by_its_own_namespace_only_and_known_by_its_uid() {
    let dir = TempDir::new("ca-placement-namespaces");
    let placement = ModelPlacement::new(translator(&dir));
    assert!(!placement.runs_on(&id("near"), "node-a"), "pods in sho and shop-b do not run as shop/near");
    for ns in ["sho", "shop-b"] {
        assert!(placement.runs_on(&Identity::new("cluster.local", ns, "near").unwrap(), "node-a"), "{ns}/near");
    }
    let pod = placement.pod("shop-b", "near-1").unwrap();
    assert_eq!(pod.uid.as_deref(), Some("7f1d0c2e-1111-4222-8333-944455566677"));
    assert_eq!((pod.service_account.as_str(), pod.node.as_str()), ("near", "node-a"));
    assert_eq!(placement.pod("shop", "plain-1").unwrap().service_account, "default");
}

fn ca(dir: &TempDir) -> CaService<ModelPlacement> {
    let signer = Arc::new(CaSigner::load_or_generate(&dir.path().join("ca"), "cluster.local").unwrap());
    let tokens = NodeTokens::from(HashMap::from([
        (NODE_A_TOKEN.to_owned(), "node-a".to_owned()),
        // A bootstrap token file with an empty node name (`"": <token>`).
        (NO_NODE_TOKEN.to_owned(), String::new()),
    ]));
    CaService::new(signer, tokens, Arc::new(ModelPlacement::new(translator(dir))))
}

fn request(token: &str, identity: &Identity) -> Request<IstioCertificateRequest> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(identity.as_str().try_into().unwrap())];
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let metadata = prost_types::Struct {
        fields: [(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(identity.as_str().to_owned())) },
        )]
        .into_iter()
        .collect(),
    };
    let mut r = Request::new(IstioCertificateRequest { csr, validity_duration: 3600, metadata: Some(metadata) });
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test]
async fn the_ca_signs_for_new_leaving_and_finished_pods_of_the_callers_node() {
    let dir = TempDir::new("ca-placement-grants");
    let ca = ca(&dir);
    for sa in ["web", "fresh", "leaving", "batch", "evicted"] {
        let issued = ca.create_certificate(request(NODE_A_TOKEN, &id(sa))).await;
        assert!(issued.is_ok(), "{sa}: {issued:?}");
    }
    let status = ca.create_certificate(request(NODE_A_TOKEN, &id("queued"))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("node-a"), "{status:?}");
    assert_eq!(Refusal::of(&status), Some("not_on_node"), "{status:?}");
}

#[tokio::test]
async fn a_node_proxy_without_a_node_name_gets_no_unscheduled_pods_identity() {
    let dir = TempDir::new("ca-placement-no-node");
    let ca = ca(&dir);
    for sa in ["queued", "web"] {
        let status = ca.create_certificate(request(NO_NODE_TOKEN, &id(sa))).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{sa}: {status:?}");
        assert!(status.message().contains("no node name"), "{sa}: {status:?}");
        assert_eq!(Refusal::of(&status), Some("caller_node_unknown"), "{sa}: {status:?}");
    }
}
