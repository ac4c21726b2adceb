//! What the OTLP exporter says when its collector fails. Its own test binary: the exporter
//! logs from the runtime's worker threads, caught by a process-wide subscriber no other test
//! should share.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use waypoint::telemetry::otlp::{Exporter, Span};

/// The exporter's events at info level or above, as `LEVEL message`.
static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct ExporterEvents;

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl Subscriber for ExporterEvents {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target().ends_with("otlp") && *m.level() <= Level::INFO
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, e: &Event<'_>) {
        let mut m = Message(String::new());
        e.record(&mut m);
        EVENTS.lock().unwrap().push(format!("{} {}", e.metadata().level(), m.0));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn span(n: u64) -> Span {
    let now = SystemTime::now();
    Span {
        trace_id: u128::from(n),
        span_id: n,
        parent: None,
        name: "GET svc".into(),
        start: now,
        end: now,
        attributes: Vec::new(),
        error: false,
    }
}

/// Rule: a collector that refuses the export is reported once at warn level (else an operator
/// never learns why no trace arrives), not once per batch, and its recovery once at info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_is_reported_once_and_its_recovery_too() {
    tracing::subscriber::set_global_default(ExporterEvents).unwrap();
    static STATUS: AtomicU16 = AtomicU16::new(500);
    static POSTS: AtomicUsize = AtomicUsize::new(0);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let collector = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                    POSTS.fetch_add(1, Ordering::SeqCst);
                    let mut r = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                    *r.status_mut() = http::StatusCode::from_u16(STATUS.load(Ordering::SeqCst)).unwrap();
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    let exporter = Exporter::start(&url, "wp".into(), &tokio::runtime::Handle::current(), None, vec![]).unwrap();
    let posted = |n: usize| async move {
        tokio::time::timeout(Duration::from_secs(5), async {
            while POSTS.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("POST {n} in time"));
        // The outcome is logged right after the answer.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for n in 1..=3 {
        exporter.record(span(n as u64));
        posted(n).await;
    }
    STATUS.store(200, Ordering::SeqCst);
    exporter.record(span(4));
    posted(4).await;
    collector.abort();

    let events = EVENTS.lock().unwrap().clone();
    let warns = events.iter().filter(|e| e.starts_with("WARN")).count();
    assert_eq!(warns, 1, "one warning for three failed batches: {events:?}");
    assert!(events.iter().any(|e| e.starts_with("INFO") && e.contains("works again")), "{events:?}");
}
