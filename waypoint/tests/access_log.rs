//! What the access log records. Its own test binary: the lines are caught by a process-wide
//! subscriber (the waypoint writes them from the runtime's worker threads), which no other test
//! should share.

mod support;

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::BodyExt;
use proto::mesh::waypoint::v1 as pb;
use support::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The `access` lines written so far, each as `name=value ` pairs (strings quoted).
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps the events of target `access` and nothing else.
struct AccessLines;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Subscriber for AccessLines {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target() == "access"
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, e: &Event<'_>) {
        let mut f = Fields(String::new());
        e.record(&mut f);
        LINES.lock().unwrap().push(f.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// The access line of the one request to `path`, waiting for it (a request is recorded once
/// its response body is done, in a task of its own).
async fn line_for(path: &str) -> String {
    let field = format!("path={path:?} ");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = LINES.lock().unwrap().iter().find(|l| l.contains(&field)) {
            return l.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no access line for {path}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response whose head went out but whose body the route's timeout (`request` or
/// `backendRequest`) cut off keeps its status and is flagged `UT`, as Envoy flags an upstream
/// request timeout, in the access line and in the metrics; a complete response on the same
/// route has no flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_off_by_the_route_timeout_is_flagged_ut() {
    tracing::subscriber::set_global_default(AccessLines).unwrap();
    let w = World::new([12, 1]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    let ms = |n: i32| Some(prost_types::Duration { seconds: 0, nanos: n * 1_000_000 });
    let mut whole = rule(vec![prefix("/stall/request")], vec![backend_ref("svc", 1)]);
    whole.timeouts = Some(pb::Timeouts { request: ms(300), backend_request: None });
    let mut per_try = rule(vec![prefix("/stall/backend")], vec![backend_ref("svc", 1)]);
    per_try.timeouts = Some(pb::Timeouts { request: None, backend_request: ms(300) });
    let mut complete = rule(vec![prefix("/done")], vec![backend_ref("svc", 1)]);
    complete.timeouts = Some(pb::Timeouts { request: ms(2000), backend_request: ms(2000) });
    w.route(&route("svc", "svc", vec![whole, per_try, complete]));
    w.until_endpoints("svc", 1).await;
    w.settle().await;

    for path in ["/stall/request", "/stall/backend"] {
        let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
        let r = s.send_request(get(&format!("http://svc.example{path}")).body(empty()).unwrap()).await.unwrap();
        assert_eq!(r.status(), 200, "{path}: the head came in time");
        let cut = tokio::time::timeout(Duration::from_secs(5), r.into_body().collect()).await;
        assert!(cut.expect("the body is cut off").is_err(), "{path}: the body fails rather than ends");
        let line = line_for(path).await;
        assert!(line.contains("status=200 ") && line.contains("flags=\"UT\" "), "{path}: {line}");
    }
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/done").await.status, 200);
    let line = line_for("/done").await;
    assert!(line.contains("status=200 ") && line.contains("flags=\"-\" "), "{line}");

    let m = w.metrics();
    let cut = m.lines().find(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"UT\""));
    assert!(cut.is_some_and(|l| l.contains("response_code=\"200\"") && l.ends_with(" 2")), "{m}");
}
