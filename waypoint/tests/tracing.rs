//! W3C trace context through the waypoint and OTLP/HTTP JSON export to a collector on
//! loopback.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;

/// A collector: every POST body is sent to the channel, answered 200.
async fn collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, String)>, Task) {
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
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let _ = tx.send((path, String::from_utf8_lossy(&body).into_owned()));
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
    let exporter =
        waypoint::telemetry::otlp::Exporter::start(&url, "wp.shop".into(), &tokio::runtime::Handle::current()).unwrap();
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

    let (path, body) =
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a batch is exported").unwrap();
    assert_eq!(path, "/v1/traces");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["spanId"], parts[2], "the exported span is the one sent upstream");
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert!(span["name"].as_str().unwrap().starts_with("GET svc.shop.svc.cluster.local"), "{span}");
}
