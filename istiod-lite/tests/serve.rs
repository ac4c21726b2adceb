//! istiod-lite as its binary runs it, on loopback: xDS and the CA over TLS 1.3 with a
//! certificate issued from the mesh root (verified by a stock rustls client, refused with a
//! wrong root or name), plaintext only when asked, and 15014's metrics and debug JSON after
//! pushes, ACKs, a NACK, CA grants and refusals.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Parser;
use hyper_util::rt::TokioIo;
use istiod_lite::config::Config;
use istiod_lite::serve::Running;
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::istio::workload::Address;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::{CertificateDer, ServerName};
use support::{TempDir, samples_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};
use xds::{Client, ClientHandle, Names, cache_handler};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "node-a-bootstrap-token-0123456789";

/// A config directory with the samples plus one bad document, a token file, a CA directory.
fn setup(test: &str, extra: &[&str]) -> (TempDir, Config) {
    let dir = TempDir::new(test);
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    for f in ["namespaces.yaml", "shop.yaml", "policies.yaml"] {
        dir.write(&format!("config/{f}"), &std::fs::read_to_string(samples_dir().join(f)).unwrap());
    }
    dir.write(
        "config/bad.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: typo\n  namespace: shop\nspec:\n  acton: DENY\n",
    );
    dir.write("tokens.yaml", &format!("node-a: {TOKEN}\n"));
    let p = |s: &str| dir.path().join(s).to_string_lossy().into_owned();
    let mut args = vec![
        "istiod-lite".to_owned(),
        "--config-dir".into(),
        p("config"),
        "--ca-dir".into(),
        p("ca"),
        "--bootstrap-tokens".into(),
        p("tokens.yaml"),
        "--tls-addr".into(),
        "127.0.0.1:0".into(),
        "--monitoring-addr".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let cfg = Config::try_parse_from(args).unwrap();
    (dir, cfg)
}

/// What a TLS client saw of the server.
#[derive(Default, Debug)]
struct Seen {
    leaf: Option<CertificateDer<'static>>,
    identity: Option<String>,
    alpn: Option<Vec<u8>>,
    version: Option<rustls::ProtocolVersion>,
}

/// A tonic connector doing TLS with a stock rustls verifier: chain to `root`, name `name`.
#[derive(Clone)]
struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    seen: Arc<Mutex<Seen>>,
}

impl TlsConnector {
    fn new(root_pem: &str, name: &str) -> Self {
        let mut roots = RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(root_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = hbone::tls::provider().clone();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        TlsConnector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            name: ServerName::try_from(name.to_owned()).unwrap(),
            seen: Arc::default(),
        }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((uri.host().unwrap(), uri.port_u16().unwrap())).await?;
            let tls = me.tls.connect(me.name.clone(), tcp).await?;
            let conn = tls.get_ref().1;
            *me.seen.lock().unwrap() = Seen {
                leaf: conn.peer_certificates().map(|c| c[0].clone().into_owned()),
                identity: hbone::tls::peer_identity(conn).ok().map(|i| i.to_string()),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                version: conn.protocol_version(),
            };
            Ok(TokioIo::new(tls))
        })
    }
}

fn root_pem(cfg: &Config) -> String {
    std::fs::read_to_string(cfg.ca_dir.join("root-cert.pem")).unwrap()
}

async fn tls_channel(addr: SocketAddr, connector: TlsConnector) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}")).unwrap().connect_with_connector(connector).await
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// A file holding node-a's token, which istiod asks of xDS clients on its TLS port.
fn token_file() -> std::path::PathBuf {
    // Written once: writing it again for each client truncates it while another client's stream
    // may be reading it, and that stream would then be refused for an empty token.
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("istiod-serve-xds-token-{}", std::process::id()));
        std::fs::write(&path, TOKEN).unwrap();
        path
    })
    .clone()
}

/// An xDS client of Addresses, with node-a's token; `accept` false NACKs every push.
fn xds_client(channel: Channel, node: &str, accept: bool) -> ClientHandle {
    let (_cache, handler) =
        cache_handler(move |_: &str, a: Address| if accept { Ok(a) } else { Err("refused by the test".to_owned()) });
    let node = proto::envoy::config::core::v3::Node { id: node.to_owned(), ..Default::default() };
    Client::new(node)
        .bearer_token_file(token_file())
        .subscribe(proto::ADDRESS_TYPE_URL, Names::Wildcard, handler)
        .spawn_with(move || std::future::ready(Ok(channel.clone())))
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: istiod\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.unwrap().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head[9..12].parse().unwrap(), body.to_owned())
}

/// The value of the sample `name` (exact, labels included) in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn csr(identity: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

async fn ask_ca(channel: Channel, token: &str, identity: &str) -> Result<Vec<String>, tonic::Status> {
    let metadata = prost_types::Struct {
        fields: [(
            istiod_lite::ca::IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(identity.to_owned())) },
        )]
        .into_iter()
        .collect(),
    };
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr(identity),
        validity_duration: 3600,
        metadata: Some(metadata),
    });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    IstioCertificateServiceClient::new(channel).create_certificate(req).await.map(|r| r.into_inner().cert_chain)
}

async fn start(cfg: &Config) -> Running {
    istiod_lite::serve::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_and_ca_over_tls_with_a_certificate_from_the_mesh_root() {
    let (_dir, cfg) = setup("serve-tls", &[]);
    assert_eq!(cfg.plaintext_addr, None, "plaintext is off unless asked");
    assert_eq!(cfg.tls_addr, "127.0.0.1:0".parse().unwrap());
    let running = start(&cfg).await;
    assert_eq!(running.plaintext_addr, None);
    let root = root_pem(&cfg);

    // A stock verifier accepts the certificate for the service name Istio clients check, and
    // for our own; the certificate carries istiod's SPIFFE identity; TLS 1.3 with ALPN h2.
    let connector = TlsConnector::new(&root, "istiod.istio-system.svc");
    let seen = connector.seen.clone();
    let channel = tls_channel(running.tls_addr, connector).await.unwrap();
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.identity.as_deref(), Some("spiffe://cluster.local/ns/istio-system/sa/istiod"));
        assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(s.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(s.leaf.as_ref(), Some(&running.serving_cert.chain()[0]));
    }
    tls_channel(running.tls_addr, TlsConnector::new(&root, "istiod-lite")).await.unwrap();

    // Another name, or another root: refused, saying why.
    let e = tls_channel(running.tls_addr, TlsConnector::new(&root, "istiod.elsewhere.svc")).await.unwrap_err();
    assert!(chain(&e).contains("not valid for name \"istiod.elsewhere.svc\""), "{}", chain(&e));
    let stranger = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut stranger = stranger;
    stranger.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_root = stranger.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
    let e = tls_channel(running.tls_addr, TlsConnector::new(&other_root, "istiod.istio-system.svc")).await.unwrap_err();
    assert!(chain(&e).contains("UnknownIssuer"), "{}", chain(&e));

    // Plaintext HTTP/2 to the TLS port gets nowhere.
    let plain = Endpoint::from_shared(format!("http://{}", running.tls_addr)).unwrap().connect_timeout(WAIT);
    let r = tokio::time::timeout(WAIT, async {
        let ch = plain.connect().await?;
        ask_ca(ch, TOKEN, "spiffe://cluster.local/ns/shop/sa/catalog").await.map_err(|s| s.into())
    })
    .await
    .unwrap();
    let _: Box<dyn std::error::Error + Send + Sync> = match r {
        Ok(_) => panic!("plaintext answered on the TLS port"),
        Err(e) => e,
    };

    // xDS over the verified channel: the sample's workloads and services arrive and are ACKed.
    let client = xds_client(channel.clone(), "ztunnel~node-a", true);
    until("xDS sync over TLS", || {
        let st = client.status();
        let t = &st.types[proto::ADDRESS_TYPE_URL];
        t.synced && t.acks >= 1 && t.versions.contains_key("Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p")
    })
    .await;

    // The CA over the same channel: a pod of node-a's is granted, with the mesh root last.
    let issued = ask_ca(channel.clone(), TOKEN, "spiffe://cluster.local/ns/shop/sa/catalog").await.unwrap();
    assert_eq!(issued.last().unwrap(), &root);
    let refused =
        ask_ca(channel.clone(), "not-a-token", "spiffe://cluster.local/ns/shop/sa/catalog").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_when_asked() {
    let (_dir, cfg) = setup("serve-plain", &["--plaintext-addr", "127.0.0.1:0"]);
    let running = start(&cfg).await;
    let addr = running.plaintext_addr.expect("asked for");
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let issued = ask_ca(channel, TOKEN, "spiffe://cluster.local/ns/shop/sa/catalog").await.unwrap();
    assert_eq!(issued.len(), 2);

    // Stopping releases every port.
    let ports = [addr, running.tls_addr, running.monitoring_addr];
    drop(running);
    until("the ports to close", || ports.iter().all(|p| std::net::TcpStream::connect(p).is_err())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_is_renewed_before_expiry() {
    let (_dir, cfg) = setup("serve-renew", &["--tls-cert-ttl-seconds", "10", "--tls-san", "127.0.0.1,mesh.example"]);
    let running = start(&cfg).await;
    let root = root_pem(&cfg);
    let first = running.serving_cert.chain()[0].clone();
    let first_expiry = running.serving_cert.not_after();
    // The extra names are in the certificate: the IP itself verifies.
    let old = tls_channel(running.tls_addr, TlsConnector::new(&root, "127.0.0.1")).await.unwrap();
    tls_channel(running.tls_addr, TlsConnector::new(&root, "mesh.example")).await.unwrap();

    // Renewed at about half its life, well before it expires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while running.serving_cert.chain()[0] == first {
        assert!(tokio::time::Instant::now() < deadline, "serving certificate not renewed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running.serving_cert.not_after() > first_expiry);
    assert!(std::time::SystemTime::now() < first_expiry);

    // New handshakes get the new certificate; the connection made before still works.
    let connector = TlsConnector::new(&root, "istiod.istio-system.svc");
    let seen = connector.seen.clone();
    let fresh = tls_channel(running.tls_addr, connector).await.unwrap();
    assert_eq!(seen.lock().unwrap().leaf.as_ref(), Some(&running.serving_cert.chain()[0]));
    for ch in [old, fresh] {
        ask_ca(ch, TOKEN, "spiffe://cluster.local/ns/shop/sa/catalog").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_port_shows_pushes_nacks_proxies_and_errors() {
    let (dir, cfg) = setup("serve-monitor", &[]);
    let running = start(&cfg).await;
    let mon = running.monitoring_addr;
    let connector = TlsConnector::new(&root_pem(&cfg), "istiod.istio-system.svc");
    let channel = tls_channel(running.tls_addr, connector).await.unwrap();

    let good = xds_client(channel.clone(), "ztunnel~node-a", true);
    let bad = xds_client(channel.clone(), "ztunnel~node-b", false);
    // A stream without the token is refused, and counted.
    let mut anonymous = proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel.clone());
    let refused = anonymous.delta_aggregated_resources(tokio_stream::iter(Vec::new())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    until("an ACK and a NACK", || {
        good.status().types[proto::ADDRESS_TYPE_URL].acks >= 1 && bad.status().types[proto::ADDRESS_TYPE_URL].nacks >= 1
    })
    .await;
    ask_ca(channel.clone(), TOKEN, "spiffe://cluster.local/ns/shop/sa/catalog").await.unwrap();
    ask_ca(channel.clone(), TOKEN, "spiffe://cluster.local/ns/shop/sa/nobody").await.unwrap_err();

    // A change after both are connected: the ACKing proxy's convergence is measured.
    let policies = std::fs::read_to_string(dir.path().join("config/policies.yaml")).unwrap();
    assert!(policies.contains("\"8080\""));
    let resources_before = running.xds.stats().resources_sent;
    dir.write("config/shop-extra.yaml", &extra_pod());
    until("the new pod's push", || running.xds.stats().resources_sent > resources_before).await;

    let (code, text) = http_get(mon, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(sample(&text, "istiod_lite_xds_connected_proxies"), 2.0);
    assert!(sample(&text, "istiod_lite_xds_pushes_total") >= 3.0, "{text}");
    assert!(sample(&text, "istiod_lite_xds_acks_total") >= 1.0, "{text}");
    assert!(sample(&text, "istiod_lite_xds_nacks_total") >= 1.0, "{text}");
    assert!(sample(&text, "istiod_lite_xds_streams_total") >= 2.0, "{text}");
    assert_eq!(sample(&text, "istiod_lite_xds_streams_refused_total"), 1.0, "{text}");
    assert_eq!(sample(&text, "istiod_lite_config_errors"), 1.0);
    assert_eq!(sample(&text, "istiod_lite_certificates_issued_total"), 1.0);
    assert_eq!(
        sample(&text, "istiod_lite_certificates_refused_total{reason=\"not_on_node\",code=\"PermissionDenied\"}"),
        1.0
    );
    let served = sample(&text, &format!("istiod_lite_xds_resources{{type_url=\"{}\"}}", proto::ADDRESS_TYPE_URL));
    assert_eq!(served as usize, running.translator.lock().unwrap().addresses().len());
    assert!(sample(&text, "istiod_lite_config_changes_total") >= 2.0, "{text}");
    // The convergence of the ACKing proxy to the added pod is measured (the NACKing one never
    // converges on Addresses and is not counted).
    let mut converged = 0.0;
    for _ in 0..100 {
        let (_, text) = http_get(mon, "/metrics").await;
        converged = sample(&text, "istiod_lite_proxy_convergence_seconds_count");
        if converged >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(converged >= 1.0, "no convergence observed");

    // Connected proxies with what they acknowledged, and the rejection.
    let (code, body) = http_get(mon, "/debug/connections").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let by_node = |n: &str| conns.iter().find(|c| c["node_id"] == n).unwrap_or_else(|| panic!("{n} in {body}"));
    let acked = &by_node("ztunnel~node-a")["types"][proto::ADDRESS_TYPE_URL]["acked"];
    let pod = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p";
    let version = running.xds.store().get(proto::ADDRESS_TYPE_URL, pod).unwrap().version;
    assert_eq!(acked[pod], *version);
    let nack = &by_node("ztunnel~node-b")["types"][proto::ADDRESS_TYPE_URL]["last_nack"];
    assert!(nack["message"].as_str().unwrap().contains("refused by the test"), "{nack}");

    // The model and the resources, by name.
    let (_, body) = http_get(mon, "/debug/config").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pods: Vec<&str> = v["model"]["Pod"]["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(pods.contains(&"shop/catalog-7d4b9c6f5-k2x9p") && pods.contains(&"shop/extra"), "{pods:?}");
    let addresses = &v["resources"][proto::ADDRESS_TYPE_URL];
    assert_eq!(addresses["count"], running.translator.lock().unwrap().addresses().len());
    assert!(addresses["names"].as_array().unwrap().iter().any(|n| n == "Kubernetes//Pod/shop/extra"));
    assert!(
        v["resources"][proto::AUTHORIZATION_TYPE_URL]["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "shop/catalog-allow-curl")
    );

    // The last config errors, naming file, object and field.
    let (_, body) = http_get(mon, "/debug/errors").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    let e = errors[0].as_str().unwrap();
    assert!(e.contains("bad.yaml") && e.contains("shop/typo") && e.contains("acton"), "{e}");

    assert_eq!(http_get(mon, "/nope").await.0, 404);
}

fn extra_pod() -> String {
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: extra\n  namespace: shop\nspec:\n  nodeName: node-a\n  serviceAccountName: catalog\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: 10.244.1.77\n  phase: Running\n".to_owned()
}

/// The CA's lifetime bounds come from the flags: a request for longer than
/// `--max-workload-cert-ttl-seconds` is refused naming the field and the flag, one within it is
/// granted; bounds that would refuse a request naming no lifetime do not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_certificate_lifetimes_are_bounded_by_the_flags() {
    let (_dir, cfg) =
        setup("serve-ttl", &["--max-workload-cert-ttl-seconds", "1800", "--default-workload-cert-ttl-seconds", "900"]);
    cfg.validate().unwrap();
    let running = start(&cfg).await;
    let root = root_pem(&cfg);
    let ch = tls_channel(running.tls_addr, TlsConnector::new(&root, "istiod.istio-system.svc")).await.unwrap();
    let status = ask_ca(ch, TOKEN, "spiffe://cluster.local/ns/shop/sa/catalog").await.expect_err("3600 s > 1800 s");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    for says in ["validity_duration", "3600 s", "1800 s", "--max-workload-cert-ttl-seconds"] {
        assert!(status.message().contains(says), "{:?} should say {says:?}", status.message());
    }

    let (_dir, cfg) = setup(
        "serve-ttl-ok",
        &["--max-workload-cert-ttl-seconds", "3600", "--default-workload-cert-ttl-seconds", "900"],
    );
    let running = start(&cfg).await;
    let ch =
        tls_channel(running.tls_addr, TlsConnector::new(&root_pem(&cfg), "istiod.istio-system.svc")).await.unwrap();
    ask_ca(ch, TOKEN, "spiffe://cluster.local/ns/shop/sa/catalog").await.expect("3600 s within 3600 s");

    let (_dir, cfg) = setup("serve-ttl-bad", &["--max-workload-cert-ttl-seconds", "600"]);
    let e = cfg.validate().expect_err("the default (86400 s) over the longest").to_string();
    assert!(e.contains("--max-workload-cert-ttl-seconds") && e.contains("86400"), "{e}");
    let (_dir, cfg) = setup("serve-ttl-short", &["--default-workload-cert-ttl-seconds", "5"]);
    let e = cfg.validate().expect_err("a default shorter than a minute").to_string();
    assert!(e.contains("--default-workload-cert-ttl-seconds"), "{e}");
}
