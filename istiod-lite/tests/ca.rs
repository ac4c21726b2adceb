//! The CA's decisions, called as a gRPC service would be: who gets which certificate, and
//! what every refusal says.

use std::collections::HashMap;
use std::sync::Arc;

use hbone::Identity;
use istiod_lite::ca::{CaService, CaSigner, IMPERSONATED_IDENTITY, NodeTokens};
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use tonic::{Code, Request};

fn service(dir: &std::path::Path) -> CaService<impl istiod_lite::ca::Placement> {
    let signer = Arc::new(CaSigner::load_or_generate(dir, "cluster.local").unwrap());
    let tokens = NodeTokens(HashMap::from([("token-of-node-a-0123456789".to_owned(), "node-a".to_owned())]));
    let placement =
        |id: &Identity, node: &str| node == "node-a" && id.as_str() == "spiffe://cluster.local/ns/shop/sa/web";
    CaService::new(signer, tokens, Arc::new(placement))
}

fn csr(san: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn request(token: Option<&str>, impersonate: Option<&str>, csr: String) -> Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: [(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(id.to_owned())) },
        )]
        .into_iter()
        .collect(),
    });
    let mut r = Request::new(IstioCertificateRequest { csr, validity_duration: 3600, metadata });
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test]
async fn grants_and_refusals() {
    let dir = std::env::temp_dir().join(format!("istiod-ca-svc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = service(&dir);
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let token = Some("token-of-node-a-0123456789");

    let ok = ca.create_certificate(request(token, Some(web), csr(web))).await.unwrap().into_inner();
    assert_eq!(ok.cert_chain.len(), 2, "leaf and root");

    let cases: Vec<(&str, Request<IstioCertificateRequest>, Code, &str)> = vec![
        ("no token", request(None, Some(web), csr(web)), Code::Unauthenticated, "no bearer token"),
        ("unknown token", request(Some("guess"), Some(web), csr(web)), Code::Unauthenticated, "unknown token"),
        ("no identity named", request(token, None, csr(web)), Code::InvalidArgument, IMPERSONATED_IDENTITY),
        ("malformed identity", request(token, Some("spiffe://x/y"), csr(web)), Code::InvalidArgument, "path"),
        (
            "pod on another node",
            request(token, Some("spiffe://cluster.local/ns/shop/sa/admin"), csr(web)),
            Code::PermissionDenied,
            "node-a",
        ),
        (
            "identity mismatch",
            request(token, Some(web), csr("spiffe://cluster.local/ns/shop/sa/admin")),
            Code::PermissionDenied,
            "sa/admin",
        ),
        ("malformed CSR", request(token, Some(web), "not a CSR".into()), Code::InvalidArgument, "malformed CSR"),
    ];
    for (what, req, code, says) in cases {
        let status = ca.create_certificate(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {:?} should mention {says:?}", status.message());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
