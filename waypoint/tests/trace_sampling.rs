//! The caller's sampling decision (the `traceparent` flags) decides whether the waypoint
//! exports a span: an unsampled request is propagated but not exported.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;

/// A collector on loopback: every POSTed body is sent to the channel, answered 200.
async fn collector() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>, Task) {
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
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    }));
    (format!("http://{addr}"), rx, t)
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
    while let Ok(Some(body)) = tokio::time::timeout_at(until, rx.recv()).await {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for span in v["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap() {
            traces.push(span["traceId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(traces, vec!["22222222222222222222222222222222".to_owned()], "only the sampled request's span");
}
