//! OTLP/HTTP JSON trace export: one SERVER span per request the waypoint handled (its span id
//! is the one sent upstream in `traceparent`, its parent the caller's), batched by a small task
//! and POSTed to `<endpoint>/v1/traces`, over `http://` or `https://` (TLS 1.2 or 1.3, the
//! collector verified against `--otlp-ca-file` or else the system's CA bundle), with the
//! headers a collector may require (`--otlp-header` / `OTEL_EXPORTER_OTLP_HEADERS`, e.g. an
//! `Authorization` token; never logged). Export is best effort: a full queue drops spans, a
//! failed POST drops its batch; neither slows requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Uri;
use http::header::{HeaderName, HeaderValue};
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

/// Where the system's CA bundle is on the distributions images are built from (Debian and
/// Alpine, Red Hat, others); the first that exists is used.
const SYSTEM_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Only `http[s]://host[:port][/path]` is supported.
    #[error("OTLP endpoint {0:?}: only http[s]://host[:port][/path] is supported")]
    Endpoint(String),
    /// The CA certificates for an `https://` collector could not be read.
    #[error("OTLP CA certificates {path}: {reason}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An `https://` collector, no `--otlp-ca-file`, and no system CA bundle.
    #[error("an https:// OTLP endpoint needs --otlp-ca-file: no system CA bundle at {}", SYSTEM_BUNDLES.join(", "))]
    NoRoots,
}

/// Extra request headers for the collector.
pub type Headers = Vec<(HeaderName, HeaderValue)>;

/// Why a collector header entry was refused. Names the header, never its value (a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No `=` in the entry.
    #[error("entry {0} is not name=value")]
    Shape(usize),
    /// Not an HTTP header name.
    #[error("{0:?} is not a header name")]
    Name(String),
    /// A value that is not valid percent-encoding or not a valid header value.
    #[error("the value of {0:?} is not a valid header value")]
    Value(String),
    /// A header the exporter sets itself.
    #[error("{0:?} is set by the exporter")]
    Reserved(String),
}

/// Parses `name=value` entries, OpenTelemetry's `OTEL_EXPORTER_OTLP_HEADERS` format (the
/// entries of that comma-separated list; values percent-decoded). Empty entries are skipped.
pub fn parse_headers(entries: &[String]) -> Result<Headers, HeaderError> {
    let mut out = Headers::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let (name, value) = entry.split_once('=').ok_or(HeaderError::Shape(i + 1))?;
        let name = name.trim();
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeaderError::Name(name.to_owned()))?;
        if [http::header::HOST, http::header::CONTENT_TYPE, http::header::CONTENT_LENGTH].contains(&header) {
            return Err(HeaderError::Reserved(name.to_owned()));
        }
        let decoded = percent_decode(value.trim()).ok_or_else(|| HeaderError::Value(name.to_owned()))?;
        let mut value = HeaderValue::from_bytes(&decoded).map_err(|_| HeaderError::Value(name.to_owned()))?;
        value.set_sensitive(true);
        out.push((header, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let digit = |j: usize| b.get(j).copied().and_then(crate::normalize::hex);
            out.push(digit(i + 1)? * 16 + digit(i + 2)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// How batches reach the collector.
#[derive(Clone)]
enum Transport {
    Plain,
    Tls(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>),
}

/// The TLS client for an `https://` collector at `host`.
fn tls(host: &str, ca_file: Option<&Path>) -> Result<Transport, OtlpError> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()).ok_or(OtlpError::NoRoots)?,
    };
    let bad = |reason: String| OtlpError::Roots { path: path.clone(), reason };
    let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let roots = hbone::TrustRoots::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let mut store = rustls::RootCertStore::empty();
    // A system bundle may hold a certificate webpki cannot use; the others still count.
    let (added, _) = store.add_parsable_certificates(roots.certificates().iter().cloned());
    if added == 0 {
        return Err(bad("no usable CA certificate".into()));
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(hbone::tls::provider().clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| OtlpError::Endpoint(format!("{host}: not a host name or IP address")))?;
    Ok(Transport::Tls(tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
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
    /// Span name: the route's operation, e.g. `reviews.shop.svc.cluster.local:9080/*`.
    pub name: String,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// String attributes (see [`super::span_tags`]).
    pub attributes: Vec<(&'static str, String)>,
    /// Server error (5xx).
    pub error: bool,
}

/// Queues spans for export. Clones share the queue.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    site: Arc<super::span_tags::Site>,
}

impl Exporter {
    /// Starts the batching task on `rt`, posting to `endpoint` with `headers`; an `https://`
    /// collector is verified against the PEM certificates in `ca_file`, else the system's CA
    /// bundle.
    pub fn start(
        endpoint: &str,
        service_name: String,
        rt: &tokio::runtime::Handle,
        ca_file: Option<&Path>,
        headers: Headers,
    ) -> Result<Exporter, OtlpError> {
        let uri: Uri = endpoint.parse().map_err(|_| OtlpError::Endpoint(endpoint.to_owned()))?;
        let Some(host) = uri.host() else { return Err(OtlpError::Endpoint(endpoint.to_owned())) };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let transport = match uri.scheme_str() {
            Some("http") => Transport::Plain,
            Some("https") => tls(bare, ca_file)?,
            _ => return Err(OtlpError::Endpoint(endpoint.to_owned())),
        };
        let path = match uri.path().trim_end_matches('/') {
            p if p.ends_with("/v1/traces") => p.to_owned(),
            p => format!("{p}/v1/traces"),
        };
        let host = bare.to_owned();
        let port = uri.port_u16().unwrap_or(4318);
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(run(rx, Target { host, port, path, transport, headers }, service_name));
        Ok(Exporter { tx, site: Arc::default() })
    }

    /// The waypoint's own tags (node id, mesh, cluster, namespace) for every span; Istio's
    /// fallbacks until set.
    #[must_use]
    pub fn with_site(mut self, site: super::span_tags::Site) -> Exporter {
        self.site = Arc::new(site);
        self
    }

    /// The waypoint's own tags.
    pub fn site(&self) -> &super::span_tags::Site {
        &self.site
    }

    /// Queues a span (dropped if the queue is full).
    pub fn record(&self, span: Span) {
        let _ = self.tx.try_send(span);
    }
}

/// The collector.
struct Target {
    host: String,
    port: u16,
    path: String,
    transport: Transport,
    headers: Headers,
}

async fn run(mut rx: mpsc::Receiver<Span>, target: Target, service: String) {
    // Whether the last POST failed: the first failure is a warning (an unreachable or
    // refusing collector is otherwise invisible at the default level), the ones after it
    // debug lines, and the recovery is told once.
    let mut failing = false;
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
        match post(&target, body).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(collector = %target.host, "OTLP export works again");
            }
            Ok(()) => {}
            Err(e) if failing => tracing::debug!(error = %e, spans = batch.len(), "OTLP export failed; batch dropped"),
            Err(e) => {
                failing = true;
                tracing::warn!(
                    collector = %target.host, port = target.port, error = %e, spans = batch.len(),
                    "OTLP export failed; spans are dropped until the collector takes them again"
                );
            }
        }
    }
}

type PostError = Box<dyn std::error::Error + Send + Sync>;

async fn post(t: &Target, body: String) -> Result<(), PostError> {
    let connect = tokio::net::TcpStream::connect((t.host.as_str(), t.port));
    let tcp = tokio::time::timeout(Duration::from_secs(5), connect).await??;
    match &t.transport {
        Transport::Plain => send(TokioIo::new(tcp), t, body).await,
        Transport::Tls(tls, name) => {
            let stream = tokio::time::timeout(Duration::from_secs(5), tls.connect(name.clone(), tcp)).await??;
            send(TokioIo::new(stream), t, body).await
        }
    }
}

async fn send<IO>(io: IO, t: &Target, body: String) -> Result<(), PostError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (host, port, path) = (t.host.as_str(), t.port, t.path.as_str());
    let (mut s, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    for (name, value) in &t.headers {
        req.headers_mut().append(name.clone(), value.clone());
    }
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
    fn http_and_https_endpoints_only_and_a_missing_ca_file_is_named() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        for bad in ["not a url", "grpc://collector:4317", "/v1/traces"] {
            let e = Exporter::start(bad, "w".into(), rt.handle(), None, vec![]).unwrap_err();
            assert!(matches!(e, OtlpError::Endpoint(_)), "{bad}: {e}");
        }
        let missing = Path::new("/nonexistent/otlp-ca.pem");
        let e = Exporter::start("https://collector:4318", "w".into(), rt.handle(), Some(missing), vec![]).unwrap_err();
        assert!(e.to_string().starts_with("OTLP CA certificates /nonexistent/otlp-ca.pem:"), "{e}");
        assert!(Exporter::start("http://127.0.0.1:4318", "w".into(), rt.handle(), None, vec![]).is_ok());
    }

    #[test]
    fn collector_headers_are_parsed_as_opentelemetry_writes_them() {
        let entries = |e: &[&str]| e.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let h = parse_headers(&entries(&["Authorization=Bearer%20abc%3D", " x-tenant = blue ", ""])).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, "authorization");
        assert_eq!(h[0].1, "Bearer abc=");
        assert!(h[0].1.is_sensitive(), "kept out of debug output");
        assert_eq!(h[1], (HeaderName::from_static("x-tenant"), HeaderValue::from_static("blue")));
        // A value may itself hold '='.
        assert_eq!(parse_headers(&entries(&["k=a=b"])).unwrap()[0].1, "a=b");
        for (bad, want) in [
            ("novalue", HeaderError::Shape(1)),
            ("bad name=x", HeaderError::Name("bad name".into())),
            ("k=%zz", HeaderError::Value("k".into())),
            ("k=%+f", HeaderError::Value("k".into())),
            ("k=%4", HeaderError::Value("k".into())),
            ("k=%0a", HeaderError::Value("k".into())),
            ("Host=x", HeaderError::Reserved("Host".into())),
        ] {
            assert_eq!(parse_headers(&entries(&[bad])), Err(want), "{bad}");
        }
        let e = parse_headers(&entries(&["Authorization=%zzsecret"])).unwrap_err().to_string();
        assert!(!e.contains("secret"), "errors never show a value: {e}");
    }
}
