//! What the CA logs: one line per refusal naming the caller and the reason, and never a token.
//! Its own test binary: tracing caches, per call site, whether anyone listens, and a call site
//! first reached by a test on another thread, before this one's subscriber, stays silent here.

use std::collections::HashMap;
use std::sync::Arc;

use hbone::Identity;
use istiod_lite::ca::{CaService, CaSigner, IMPERSONATED_IDENTITY, NodeTokens};
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use tonic::Request;

// The CA of tests/ca.rs: node-a's token, and shop/web running on node-a.
fn service(dir: &std::path::Path) -> CaService<impl istiod_lite::ca::Placement> {
    let signer = Arc::new(CaSigner::load_or_generate(dir, "cluster.local").unwrap());
    let tokens = NodeTokens::from(HashMap::from([("token-of-node-a-0123456789".to_owned(), "node-a".to_owned())]));
    let placement =
        |id: &Identity, node: &str| node == "node-a" && id.as_str() == "spiffe://cluster.local/ns/shop/sa/web";
    CaService::new(signer, tokens, Arc::new(placement))
}

fn csr(san: &str) -> String {
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
    p.serialize_request(&rcgen::KeyPair::generate().unwrap()).unwrap().pem().unwrap()
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

/// Log lines written while a test runs on its one thread.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    /// Captures this thread's log lines until the guard drops.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    /// The lines so far, and forgets them.
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

/// Every refusal is one log line saying who asked (the node, or the peer when the token is
/// not known) and why; no line, granted or refused, carries a token.
#[tokio::test]
async fn refusals_are_logged_naming_the_caller_never_the_token() {
    let dir = std::env::temp_dir().join(format!("istiod-ca-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = service(&dir);
    let (logs, _guard) = Logs::capture();
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let admin = "spiffe://cluster.local/ns/shop/sa/admin";
    let token = "token-of-node-a-0123456789";
    let peer: std::net::SocketAddr = "10.1.2.3:41000".parse().unwrap();
    let from_peer = |mut r: Request<IstioCertificateRequest>| {
        r.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(peer) });
        r
    };
    let cases = [
        ("unknown token", request(Some("secret-guess-987654321"), Some(web), csr(web)), vec!["10.1.2.3:41000"]),
        ("no identity named", request(Some(token), None, csr(web)), vec!["node-a", IMPERSONATED_IDENTITY]),
        ("pod on another node", request(Some(token), Some(admin), csr(web)), vec!["node-a", "sa/admin"]),
        ("identity mismatch", request(Some(token), Some(web), csr(admin)), vec!["node-a", "sa/admin", "sa/web"]),
        ("malformed CSR", request(Some(token), Some(web), "not a CSR".into()), vec!["node-a", "malformed CSR"]),
    ];
    for (what, req, says) in cases {
        ca.create_certificate(from_peer(req)).await.expect_err(what);
        let lines = logs.take();
        assert_eq!(lines.lines().count(), 1, "{what}: one line per refusal: {lines}");
        assert!(lines.contains("certificate refused"), "{what}: {lines}");
        for s in says {
            assert!(lines.contains(s), "{what}: the log should say {s:?}: {lines}");
        }
        assert!(!lines.contains("secret-guess") && !lines.contains(token), "{what}: a token in the log: {lines}");
    }
    ca.create_certificate(from_peer(request(Some(token), Some(web), csr(web)))).await.unwrap();
    let lines = logs.take();
    assert!(
        lines.contains("certificate issued") && lines.contains("node-a") && !lines.contains(token),
        "issued: {lines:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
