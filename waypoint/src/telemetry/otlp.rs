//! OTLP/HTTP JSON trace export: one SERVER span per request the waypoint handled (its span id
//! is the one sent upstream in `traceparent`, its parent the caller's), batched by a small task
//! and POSTed to `<endpoint>/v1/traces`. Export is best effort: a full queue drops spans, a
//! failed POST drops its batch; neither slows requests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Spans queued for export at most; more are dropped.
const QUEUE: usize = 4096;
/// Spans per POST at most.
const BATCH: usize = 512;
/// How long a batch waits to fill.
const LINGER: Duration = Duration::from_secs(1);

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Only `http://host:port[/path]` is supported.
    #[error("OTLP endpoint {0:?}: only http://host[:port][/path] is supported")]
    Endpoint(String),
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Trace id.
    pub trace_id: u128,
    /// This span.
    pub span_id: u64,
    /// The caller's span, if the request carried one.
    pub parent: Option<u64>,
    /// Span name, e.g. `GET reviews.shop.svc.cluster.local`.
    pub name: String,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// String attributes.
    pub attributes: Vec<(&'static str, String)>,
    /// Server error (5xx).
    pub error: bool,
}

/// Queues spans for export. Clones share the queue.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
}

impl Exporter {
    /// Starts the batching task on `rt`, posting to `endpoint`.
    pub fn start(endpoint: &str, service_name: String, rt: &tokio::runtime::Handle) -> Result<Exporter, OtlpError> {
        let uri: Uri = endpoint.parse().map_err(|_| OtlpError::Endpoint(endpoint.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(OtlpError::Endpoint(endpoint.to_owned()));
        }
        let path = match uri.path().trim_end_matches('/') {
            p if p.ends_with("/v1/traces") => p.to_owned(),
            p => format!("{p}/v1/traces"),
        };
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(4318);
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(run(rx, host, port, path, service_name));
        Ok(Exporter { tx })
    }

    /// Queues a span (dropped if the queue is full).
    pub fn record(&self, span: Span) {
        let _ = self.tx.try_send(span);
    }
}

async fn run(mut rx: mpsc::Receiver<Span>, host: String, port: u16, path: String, service: String) {
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&batch, &service).to_string();
        if let Err(e) = post(&host, port, &path, body).await {
            tracing::debug!(error = %e, spans = batch.len(), "OTLP export failed; batch dropped");
        }
    }
}

async fn post(host: &str, port: u16, path: &str, body: String) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host, port))).await??;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), s.send_request(req)).await??;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    if !status.is_success() {
        return Err(format!("collector answered {status}").into());
    }
    Ok(())
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0).to_string()
}

/// The OTLP/JSON `ExportTraceServiceRequest` for `spans` (ids as hex, times as strings).
pub fn encode(spans: &[Span], service: &str) -> Value {
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut v = json!({
                "traceId": format!("{:032x}", s.trace_id),
                "spanId": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
                "status": {"code": if s.error { 2 } else { 0 }},
            });
            if let Some(p) = s.parent {
                v["parentSpanId"] = json!(format!("{p:016x}"));
            }
            v
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [attr("service.name", service)]},
            "scopeSpans": [{"scope": {"name": "waypoint"}, "spans": spans}],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_ids_as_hex_and_times_as_strings() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        let s = Span {
            trace_id: 0xab,
            span_id: 0xcd,
            parent: Some(0xef),
            name: "GET svc".into(),
            start: t,
            end: t + Duration::from_millis(2),
            attributes: vec![("http.response.status_code", "200".into())],
            error: false,
        };
        let v = encode(&[s], "wp.shop");
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "000000000000000000000000000000ab");
        assert_eq!(span["spanId"], "00000000000000cd");
        assert_eq!(span["parentSpanId"], "00000000000000ef");
        assert_eq!(span["startTimeUnixNano"], "1500000000");
        assert_eq!(span["endTimeUnixNano"], "1502000000");
        assert_eq!(span["kind"], 2);
        assert_eq!(v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "wp.shop");
    }

    #[test]
    fn only_plain_http_endpoints() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert!(Exporter::start("https://collector:4318", "w".into(), rt.handle()).is_err());
        assert!(Exporter::start("not a url", "w".into(), rt.handle()).is_err());
        let _guard = rt.enter();
        assert!(Exporter::start("http://127.0.0.1:4318", "w".into(), rt.handle()).is_ok());
    }
}
