//! W3C trace context through the waypoint and OTLP/HTTP JSON export to a collector on
//! loopback, over plain HTTP and over TLS verified against a CA file.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::mesh::waypoint::v1 as pb;
use support::*;

/// A POST the collector got: path, `Authorization` header, body.
type Posted = (String, Option<String>, String);

/// A collector: every POST is sent to the channel, answered 200.
async fn collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<Posted>, Task) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let t = Task(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let _ = tx.send((path, auth, String::from_utf8_lossy(&body).into_owned()));
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    }));
    (format!("http://{addr}"), rx, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_kept_span_new_and_exported() {
    let (url, mut rx, _collector) = collector().await;
    // A collector that wants a token gets it, as OTEL_EXPORTER_OTLP_HEADERS writes it.
    let headers = waypoint::telemetry::otlp::parse_headers(&["Authorization=Bearer%20t0ken".to_owned()]).unwrap();
    let rt = tokio::runtime::Handle::current();
    let exporter = waypoint::telemetry::otlp::Exporter::start(&url, "wp.shop".into(), &rt, None, headers).unwrap();
    let w = World::with_spans([5, 1], Some(exporter)).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    let mut c = w.h1(w.vip(1)).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c.send(get("/traced").header("traceparent", incoming).body(empty()).unwrap()).await.unwrap();
    let seen = r.seen_header("traceparent").unwrap().to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "trace id kept");
    assert_ne!(parts[2], "00f067aa0ba902b7", "new span id upstream");

    let (path, auth, body) =
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch is exported").unwrap();
    assert_eq!(path, "/v1/traces");
    assert_eq!(auth.as_deref(), Some("Bearer t0ken"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["spanId"], parts[2], "the exported span is the one sent upstream");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["name"], "svc.shop.svc.cluster.local:80/*", "{span}");
}

/// A CA, and a TLS server config for 127.0.0.1 with a certificate it signed: (CA PEM, config).
fn collector_tls() -> (String, std::sync::Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "collector test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(hbone::tls::provider().clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    (ca_pem, std::sync::Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_https_collector_verified_against_the_ca_file() {
    let (ca_pem, server_cfg) = collector_tls();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let _collector = Task(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    }));
    let dir = std::env::temp_dir().join(format!("otlp-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let rt = tokio::runtime::Handle::current();
    let url = format!("https://{addr}");
    let span = |name: &str| waypoint::telemetry::otlp::Span {
        trace_id: 7,
        span_id: 9,
        parent: None,
        name: name.to_owned(),
        start: std::time::SystemTime::now(),
        end: std::time::SystemTime::now(),
        attributes: Vec::new(),
        error: false,
    };

    let trusted =
        waypoint::telemetry::otlp::Exporter::start(&url, "wp.shop".into(), &rt, Some(&ca_file), vec![]).unwrap();
    trusted.record(span("GET over TLS"));
    let body = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch over TLS").unwrap();
    assert!(body.contains("GET over TLS"), "{body}");

    // Against other roots the collector is not trusted: nothing reaches it.
    let (other_ca, _) = collector_tls();
    let other_file = dir.join("other.pem");
    std::fs::write(&other_file, other_ca).unwrap();
    let untrusted =
        waypoint::telemetry::otlp::Exporter::start(&url, "wp.shop".into(), &rt, Some(&other_file), vec![]).unwrap();
    untrusted.record(span("must not arrive"));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.is_err(),
        "an unverified collector got spans"
    );

    // A CA file that is not PEM certificates is refused at start, naming the file.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = waypoint::telemetry::otlp::Exporter::start(&url, "wp.shop".into(), &rt, Some(&junk), vec![]).unwrap_err();
    assert!(e.to_string().starts_with(&format!("OTLP CA certificates {}", junk.display())), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The spans of the next batches, until `n` have come (10 s at most).
async fn spans(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Posted>, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let (_, _, body) =
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("spans are exported").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        out.extend(v["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap().iter().cloned());
    }
    out
}

/// A span's attributes by name; every value must be a string, as Envoy writes tags.
fn attributes(span: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (a["key"].as_str().unwrap().to_owned(), a["value"]["stringValue"].as_str().expect("a string").to_owned())
        })
        .collect()
}

/// An exporter to a fresh collector, with the waypoint's own tags as `app` sets them.
async fn exporter() -> (waypoint::telemetry::otlp::Exporter, tokio::sync::mpsc::UnboundedReceiver<Posted>, Task) {
    let (url, rx, task) = collector().await;
    let site = waypoint::telemetry::span_tags::Site {
        node_id: "waypoint~shop/wp~node-1".into(),
        mesh_id: "cluster.local".into(),
        cluster_id: "Kubernetes".into(),
        namespace: "shop".into(),
    };
    let rt = tokio::runtime::Handle::current();
    let x =
        waypoint::telemetry::otlp::Exporter::start(&url, "wp.shop".into(), &rt, None, vec![]).unwrap().with_site(site);
    (x, rx, task)
}

const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The tags every span here carries the same way: the waypoint's own (its workload is not in
/// the test's mesh state, so Istio's fallbacks for canonical service and revision, no zone).
fn expected(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    let common = [
        ("component", "proxy"),
        ("downstream_cluster", "-"),
        ("node_id", "waypoint~shop/wp~node-1"),
        ("zone", ""),
        ("istio.canonical_service", "unknown"),
        ("istio.canonical_revision", "latest"),
        ("istio.mesh_id", "cluster.local"),
        ("istio.namespace", "shop"),
        ("istio.cluster_id", "Kubernetes"),
    ];
    common.iter().chain(pairs).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Takes `peer.address` out (the client's address, whatever the test's tunnel gave it),
/// checking it is a bare IP as Envoy writes it.
fn take_peer(a: &mut std::collections::BTreeMap<String, String>) {
    let peer = a.remove("peer.address").expect("peer.address");
    assert!(peer.parse::<std::net::IpAddr>().is_ok(), "peer.address {peer:?} is an IP without port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_span_carries_envoys_and_istios_tags() {
    let (x, mut rx, _collector) = exporter().await;
    let w = World::with_spans([22, 1], Some(x)).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    let mut c = w.h1(w.vip(1)).await;
    let req = get("/traced/./x?q=1")
        .method("POST")
        .header("traceparent", SAMPLED)
        .header("user-agent", "test-agent/1")
        .header("x-request-id", "req-1")
        .body(full("hello"))
        .unwrap();
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, 200);
    let span = spans(&mut rx, 1).await.remove(0);
    assert_eq!(span["name"], "svc.shop.svc.cluster.local:80/*", "Istio's operation for the default route");
    assert_eq!(span["kind"], 2, "SERVER");
    assert_eq!(span["status"]["code"], 0);
    let mut got = attributes(&span);
    take_peer(&mut got);
    let size = r.body.len().to_string();
    let want = expected(&[
        ("guid:x-request-id", "req-1"),
        ("http.url", "http://svc.example/traced/x?q=1"),
        ("http.method", "POST"),
        ("user_agent", "test-agent/1"),
        ("http.protocol", "HTTP/1.1"),
        ("request_size", "5"),
        ("response_size", &size),
        ("upstream_cluster", "inbound-vip|80|http|svc.shop.svc.cluster.local"),
        ("upstream_cluster.name", "inbound-vip|80|http|svc.shop.svc.cluster.local"),
        ("http.status_code", "200"),
        ("response_flags", "-"),
    ]);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_span_names_the_routed_method_and_carries_grpc_tags() {
    let (x, mut rx, _collector) = exporter().await;
    let w = World::with_spans([22, 2], Some(x)).await;
    let a = w.backend("a").await;
    w.service("greeter", 1, &[&a]);
    w.route(&pb::Route {
        namespace: "shop".into(),
        name: "greeter".into(),
        kind: pb::route::Kind::Grpc as i32,
        parents: vec![pb::ParentService { hostname: host("greeter"), port: 80 }],
        rules: vec![pb::Rule {
            matches: vec![pb::Match {
                grpc: Some(pb::GrpcMethodMatch {
                    r#type: pb::MatchType::Exact as i32,
                    service: "helloworld.Greeter".into(),
                    method: "SayHello".into(),
                }),
                ..Default::default()
            }],
            backends: vec![backend_ref("greeter", 1)],
            ..Default::default()
        }],
        ..Default::default()
    });
    w.until_endpoints("greeter", 1).await;
    w.settle().await;
    let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
    let call = http::Request::post("http://greeter/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "5S")
        .header("traceparent", SAMPLED)
        .body(full("unary"))
        .unwrap();
    let r = s.send_request(call).await.unwrap();
    let body = r.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap().get("grpc-status").unwrap(), "0");
    let size = body.to_bytes().len().to_string();
    let span = spans(&mut rx, 1).await.remove(0);
    assert_eq!(span["name"], "greeter.shop.svc.cluster.local:80/helloworld.Greeter/SayHello");
    assert_eq!(span["kind"], 2);
    let mut got = attributes(&span);
    take_peer(&mut got);
    let want = expected(&[
        ("http.url", "http://greeter/helloworld.Greeter/SayHello"),
        ("http.method", "POST"),
        ("user_agent", "-"),
        ("http.protocol", "HTTP/2"),
        ("grpc.path", "/helloworld.Greeter/SayHello"),
        ("grpc.authority", "greeter"),
        ("grpc.content_type", "application/grpc"),
        ("grpc.timeout", "5S"),
        ("grpc.status_code", "0"),
        ("request_size", "5"),
        ("response_size", &size),
        ("upstream_cluster", "inbound-vip|80|http|greeter.shop.svc.cluster.local"),
        ("upstream_cluster.name", "inbound-vip|80|http|greeter.shop.svc.cluster.local"),
        ("http.status_code", "200"),
        ("response_flags", "-"),
    ]);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_span_is_an_error_with_its_flags() {
    let (x, mut rx, _collector) = exporter().await;
    let w = World::with_spans([22, 3], Some(x)).await;
    w.service("gone", 1, &[]);
    w.until("service gone", |s| s.service_by_host(&host("gone")).is_some()).await;
    let mut c = w.h1(w.vip(1)).await;
    let r = c.send(get("/x").header("traceparent", SAMPLED).body(empty()).unwrap()).await.unwrap();
    assert_eq!(r.status, 503);
    let span = spans(&mut rx, 1).await.remove(0);
    assert_eq!(span["name"], "gone.shop.svc.cluster.local:80/*");
    assert_eq!(span["status"]["code"], 2, "an error status");
    let mut got = attributes(&span);
    take_peer(&mut got);
    let size = r.body.len().to_string();
    let want = expected(&[
        ("http.url", "http://svc.example/x"),
        ("http.method", "GET"),
        ("user_agent", "-"),
        ("http.protocol", "HTTP/1.1"),
        ("request_size", "0"),
        ("response_size", &size),
        ("upstream_cluster", "inbound-vip|80|http|gone.shop.svc.cluster.local"),
        ("upstream_cluster.name", "inbound-vip|80|http|gone.shop.svc.cluster.local"),
        ("http.status_code", "503"),
        ("response_flags", "UH"),
        ("error", "true"),
    ]);
    assert_eq!(got, want);
}

/// Rule: a request whose `traceparent` says not sampled (flags `00`) keeps that context
/// upstream and is not exported; a sampled one is. Envoy's tracer in Istio's waypoint and
/// OpenTelemetry's default parent-based sampler follow the caller's decision; exporting every
/// request would multiply the collector's load by the application's sampling ratio and fill
/// it with spans whose parents were never recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sampled_requests_are_exported() {
    let (url, mut rx, _collector) = collector().await;
    let rt = tokio::runtime::Handle::current();
    let exporter = waypoint::telemetry::otlp::Exporter::start(&url, "wp.shop".into(), &rt, None, vec![]).unwrap();
    let w = World::with_spans([5, 3], Some(exporter)).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    let mut c = w.h1(w.vip(1)).await;

    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    let r = c.send(get("/unsampled").header("traceparent", unsampled).body(empty()).unwrap()).await.unwrap();
    let seen = r.seen_header("traceparent").unwrap().to_owned();
    assert!(seen.starts_with("00-11111111111111111111111111111111-") && seen.ends_with("-00"), "{seen}");
    let sampled = "00-22222222222222222222222222222222-00f067aa0ba902b7-01";
    c.send(get("/sampled").header("traceparent", sampled).body(empty()).unwrap()).await.unwrap();

    // Both requests end within one batch's linger; collect what arrives for a while.
    let mut traces = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some((_, _, body))) = tokio::time::timeout_at(until, rx.recv()).await {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for span in v["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap() {
            traces.push(span["traceId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(traces, vec!["22222222222222222222222222222222".to_owned()], "only the sampled request's span");
}
