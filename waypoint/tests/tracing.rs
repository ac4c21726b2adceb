//! W3C trace context through the waypoint and OTLP/HTTP JSON export to a collector on
//! loopback, over plain HTTP and over TLS verified against a CA file.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
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
    assert!(span["name"].as_str().unwrap().starts_with("GET svc.shop.svc.cluster.local"), "{span}");
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
