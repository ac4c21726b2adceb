//! How the waypoint reads the framing of HTTP/1.1 requests sent as raw bytes (RFC 9112 §6),
//! CONNECT, and the authority policy judges: a request the waypoint reads one way must never
//! reach the application in a form it reads another way (request smuggling, policy bypass).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, Request};
use proto::mesh::waypoint::v1 as pb;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What came back for raw request bytes: the text, and whether the waypoint closed.
struct Raw {
    text: String,
    closed: bool,
}

impl Raw {
    fn status(&self) -> u16 {
        self.text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Answers in the text (pipelined requests get one each).
    fn answers(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count()
    }
}

/// Sends `bytes` on a fresh tunnel to service VIP 1 and reads until the waypoint closes, or
/// goes quiet once it has answered.
async fn raw(w: &World, bytes: &[u8]) -> Raw {
    let mut io = w.tunnel(w.vip(1)).await;
    io.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let closed = loop {
        let quiet = if out.is_empty() { Duration::from_secs(5) } else { Duration::from_millis(500) };
        let until = deadline.min(tokio::time::Instant::now() + quiet);
        match tokio::time::timeout_at(until, io.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Raw { text: String::from_utf8_lossy(&out).into_owned(), closed }
}

/// A service `svc` (VIP 1) on one echoing backend.
async fn one_service(net: [u8; 2]) -> (std::sync::Arc<World>, std::sync::Arc<Backend>) {
    let w = World::new(net).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    (w, a)
}

/// RFC 9112 §6.1: a transfer coding the waypoint does not undo is refused with 501, and the
/// connection closes. The HTTP/1.1 server takes any list that ends in `chunked` and undoes only
/// that; `Transfer-Encoding` is hop-by-hop, so `gzip, chunked` (or `chunked` twice) would reach
/// the application as bytes it reads otherwise than the client framed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_alone_is_refused() {
    let (w, a) = one_service([21, 1]).await;
    let body = "3\r\nabc\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let r = raw(&w, format!("POST /x HTTP/1.1\r\nHost: svc\r\n{te}\r\n{body}").as_bytes()).await;
        assert_eq!(r.status(), 501, "{te:?}: {}", r.text);
        assert!(r.closed, "{te:?}: the connection stays open: {}", r.text);
    }
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 0, "a refused request reached the application");
    // `chunked` alone, in any case, is read and re-framed for the application.
    let r =
        raw(&w, format!("POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: Chunked\r\n\r\n{body}").as_bytes()).await;
    assert_eq!(r.status(), 200, "{}", r.text);
    assert!(r.text.contains("body-bytes: 3"), "{}", r.text);
}

/// RFC 9112 §6.3: with both `Content-Length` and `Transfer-Encoding`, the chunked framing wins,
/// the length goes (the application never sees both) and the connection closes after the
/// answer, so whatever the length would have framed differently is never read as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_read_as_chunked_and_the_connection_closes() {
    let (w, a) = one_service([21, 2]).await;
    for (first, second) in
        [("Content-Length: 5", "Transfer-Encoding: chunked"), ("Transfer-Encoding: chunked", "Content-Length: 5")]
    {
        let r = raw(
            &w,
            format!(
                "POST /x HTTP/1.1\r\nHost: svc\r\n{first}\r\n{second}\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                 GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status(), 200, "{}", r.text);
        assert!(r.text.contains("body-bytes: 3"), "{}", r.text);
        assert!(!r.text.to_ascii_lowercase().contains("content-length: 5"), "the length was forwarded: {}", r.text);
        assert_eq!(r.answers(), 1, "{}", r.text);
        assert!(r.closed, "the connection stays open after an ambiguous framing");
    }
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 2, "the pipelined request was read");
}

/// Framing the waypoint cannot read one way only is refused with 400 before anything is
/// forwarded: differing lengths, a length that is not digits, a `Transfer-Encoding` whose last
/// coding is not `chunked` (or only looks like it), one on HTTP/1.0, whitespace before a colon,
/// an obs-fold continuation line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused() {
    let (w, a) = one_service([21, 3]).await;
    let chunks = "3\r\nabc\r\n0\r\n\r\n";
    let cases = [
        "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_owned(),
        "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 3, 4\r\n\r\nabcd".to_owned(),
        "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: +3\r\n\r\nabc".to_owned(),
        "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 0x3\r\n\r\nabc".to_owned(),
        format!("POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunks}"),
        format!("POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: xchunked\r\n\r\n{chunks}"),
        format!(
            "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n{chunks}"
        ),
        format!("POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n{chunks}"),
        "POST /x HTTP/1.1\r\nHost: svc\r\nX: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"
            .to_owned(),
        format!("POST /x HTTP/1.0\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"),
    ];
    for c in &cases {
        let r = raw(&w, c.as_bytes()).await;
        assert_eq!(r.status(), 400, "{c:?}: {}", r.text);
    }
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 0, "a refused request reached the application");
}

/// A chunked body that turns out malformed once its head was forwarded (a chunk size past 64
/// bits, a bare LF ending a chunk line, a chunk extension with a newline) is the client's error:
/// 400, not a 503 that blames the endpoint (and counts against it for outlier ejection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_error() {
    let (w, a) = one_service([21, 4]).await;
    for chunks in [
        "fffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
        "3\nabc\n0\n\n",
        "3;a=b\nc\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcd\r\n0\r\n\r\n",
    ] {
        let r =
            raw(&w, format!("POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}").as_bytes())
                .await;
        assert_eq!(r.status(), 400, "{chunks:?}: {}", r.text);
    }
    // Chunk extensions are allowed, and dropped when the body is re-framed.
    let r =
        raw(&w, b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=\"v\"\r\nabc\r\n0\r\n\r\n")
            .await;
    assert_eq!(r.status(), 200, "{}", r.text);
    assert!(r.text.contains("body-bytes: 3"), "{}", r.text);
    assert!(a.behaviour.seen.load(Ordering::Relaxed) >= 1);
}

/// A plain CONNECT (HTTP/1.1 in either target form, HTTP/2 without `:protocol`) asks for a
/// tunnel whose bytes no L7 policy would see: it is refused with 501 and never forwarded, so
/// the application is not asked to open one either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_connect_is_refused_and_not_forwarded() {
    let (w, a) = one_service([21, 5]).await;
    for req in ["CONNECT /x HTTP/1.1\r\nHost: svc\r\n\r\n", "CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\n"] {
        let r = raw(&w, req.as_bytes()).await;
        assert_eq!(r.status(), 501, "{req:?}: {}", r.text);
    }
    let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
    let req = Request::builder().method(Method::CONNECT).uri("svc.example:80").body(empty()).unwrap();
    let r = s.send_request(req).await.unwrap();
    assert_eq!(r.status(), 501);
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 0, "a CONNECT reached the application");
}

/// A rule matching requests whose `key` (a `request.headers[...]` condition) is `value`.
fn when(key: &str, value: &str) -> pb::PolicyRule {
    pb::PolicyRule {
        when: vec![pb::Condition { key: key.into(), values: vec![value.into()], not_values: vec![] }],
        ..Default::default()
    }
}

/// The host a `request.headers[host]` condition judges is the one the application gets: for
/// a target that carries its authority (HTTP/1.1 absolute form, HTTP/2 `:authority`) that
/// authority, not a `Host` field that says otherwise (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reads_the_host_that_is_forwarded() {
    let (w, a) = one_service([21, 6]).await;
    let deny = when("request.headers[host]", "admin.example");
    w.policy(&policy("deny-admin-host", pb::l7_policy::Action::Deny, vec![deny]));
    w.settle().await;

    let r = raw(&w, b"GET /x HTTP/1.1\r\nHost: admin.example\r\n\r\n").await;
    assert_eq!(r.status(), 403, "{}", r.text);
    let r = raw(&w, b"GET http://admin.example/x HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    assert_eq!(r.status(), 403, "absolute form: {}", r.text);
    let r = raw(&w, b"GET http://svc/x HTTP/1.1\r\nHost: admin.example\r\n\r\n").await;
    assert_eq!(r.status(), 200, "{}", r.text);
    assert!(r.text.contains("\r\n\r\na GET /x HTTP/1.1\nhost: svc\n"), "{}", r.text);

    let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
    let req = Request::builder().uri("http://admin.example/x").header("host", "svc").body(empty()).unwrap();
    assert_eq!(s.send_request(req).await.unwrap().status(), 403, ":authority over Host");
    let req = Request::builder().uri("http://svc/x").header("host", "admin.example").body(empty()).unwrap();
    let r = s.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(a.behaviour.authorities.lock().unwrap().last().map(String::as_str), Some("svc"));
}

/// More than one `Host` is refused whatever the version (RFC 9112 §3.2 asks it of HTTP/1.1):
/// the authority forwarded is the first, while a `request.headers[host]` condition reads them
/// all joined, so a DENY on the first would let it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_one_host_is_refused_in_any_version() {
    let (w, a) = one_service([21, 7]).await;
    let deny = when("request.headers[host]", "admin.example");
    w.policy(&policy("deny-admin-host", pb::l7_policy::Action::Deny, vec![deny]));
    w.settle().await;
    for version in ["1.0", "1.1"] {
        let req = format!("GET /x HTTP/{version}\r\nHost: admin.example\r\nHost: svc\r\n\r\n");
        let r = raw(&w, req.as_bytes()).await;
        assert_eq!(r.status(), 400, "HTTP/{version}: {}", r.text);
    }
    let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
    let req = Request::builder()
        .uri("http://svc/x")
        .header("host", "svc")
        .header("host", "admin.example")
        .body(empty())
        .unwrap();
    assert_eq!(s.send_request(req).await.unwrap().status(), 400);
    // One is fine, and HTTP/1.0 may send none.
    assert_eq!(raw(&w, b"GET /x HTTP/1.0\r\nHost: svc\r\n\r\n").await.status(), 200);
    assert_eq!(raw(&w, b"GET /x HTTP/1.0\r\n\r\n").await.status(), 200);
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 2);
}

/// RFC 9113 §8.2.1: an HTTP/2 field value that starts or ends with whitespace is malformed.
/// HTTP/1.1 parsers trim it, so a request carrying `x-user: " admin"` would pass a DENY on
/// `admin` (policy compares the bytes sent) and reach an HTTP/1.1 application as `admin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_field_value_padded_with_whitespace_is_refused() {
    let (w, a) = one_service([21, 8]).await;
    let deny = when("request.headers[x-user]", "admin");
    w.policy(&policy("deny-admin", pb::l7_policy::Action::Deny, vec![deny]));
    w.settle().await;
    let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
    let mut status = |v: &'static str| {
        let req = Request::builder().uri("http://svc/x").header("x-user", v).body(empty()).unwrap();
        let sent = s.send_request(req);
        async move { sent.await.unwrap().status() }
    };
    for padded in [" admin", "admin ", "\tadmin", "admin\t", " admin "] {
        assert_eq!(status(padded).await, 400, "{padded:?}");
    }
    assert_eq!(status("admin").await, 403);
    assert_eq!(status("ad min").await, 200, "whitespace inside a value is fine");
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 1);
}

/// A percent-encoded control character in the path is refused as a raw one is: an application
/// that trims the path it decodes (as some routers do) would read `/admin%0A` as `/admin`,
/// which a DENY on `/admin` never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoded_control_character_in_the_path_is_refused() {
    let (w, a) = one_service([21, 9]).await;
    w.policy(&policy("deny-admin", pb::l7_policy::Action::Deny, vec![to_paths(&["/admin"])]));
    w.settle().await;
    for client in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        let mut c = client;
        for path in ["/admin%0A", "/admin%0d", "/admin%09", "/admin%20%00", "/admin%7F", "/a%1b/b"] {
            assert_eq!(c.get(path).await.status, 400, "{path}");
        }
        assert_eq!(c.get("/admin").await.status, 403);
        assert_eq!(c.get("/admin%20").await.status, 200, "an encoded space is not a control character");
    }
    assert_eq!(a.behaviour.seen.load(Ordering::Relaxed), 2);
}

/// RFC 9113 §8.2.3: the cookies an HTTP/2 client sends in fields of their own are joined with
/// `"; "` into the one `Cookie` an HTTP/1.1 application reads (one reading only the first
/// field lost the rest), and policy reads that same value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_reach_http1_as_one() {
    let w = World::new([21, 10]).await;
    let a = w.backend("a").await;
    w.service_declaring("svc", 1, &[&a], proto::istio::workload::AppProtocol::Http11);
    w.until_endpoints("svc", 1).await;
    let deny = when("request.headers[cookie]", "*; role=admin");
    w.policy(&policy("deny-admin-cookie", pb::l7_policy::Action::Deny, vec![deny]));
    w.settle().await;
    let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
    let req =
        Request::builder().uri("http://svc/x").header("cookie", "a=1").header("cookie", "b=2").body(empty()).unwrap();
    let r = s.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("HTTP/1.1"), "{body}");
    let cookies: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("cookie: ")).collect();
    assert_eq!(cookies, ["a=1; b=2"], "{body}");
    let req = Request::builder()
        .uri("http://svc/x")
        .header("cookie", "a=1")
        .header("cookie", "role=admin")
        .body(empty())
        .unwrap();
    assert_eq!(s.send_request(req).await.unwrap().status(), 403);
}

/// An HTTP/1.1 answer under a transfer coding besides chunked (`gzip, chunked`) is not passed
/// on as if it had none: only chunked is undone and `Transfer-Encoding` is hop-by-hop, so the
/// client would read the still-encoded bytes as the content. It is answered 502 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_under_a_transfer_coding_besides_chunked_is_not_passed_on() {
    let (w, _a) = one_service([21, 11]).await;
    let mut c = w.h1(w.vip(1)).await;
    let r = c.get("/te-gzip").await;
    assert_eq!(r.status, 502, "{:?} {}", r.headers, r.body);
    assert_eq!(c.get("/x").await.status, 200, "a plain answer passes");
}

/// On a port declared HTTP, bytes that protocol detection does not take for HTTP are read as
/// HTTP/1.1 all the same and refused there, as Istio's waypoint reads a declared port: they
/// used to go to the application unparsed (a lower-case method, which an application may take,
/// a request line with two spaces), past routes and L7 policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_http_never_falls_back_to_tcp() {
    let w = World::new([21, 12]).await;
    let a = w.backend("a").await;
    w.service_declaring("svc", 1, &[&a], proto::istio::workload::AppProtocol::Http11);
    w.until_endpoints("svc", 1).await;
    for req in ["get /x HTTP/1.1\r\nHost: svc\r\n\r\n", "GET /x  HTTP/1.1\r\nHost: svc\r\n\r\n"] {
        let r = raw(&w, req.as_bytes()).await;
        assert_eq!(r.status(), 400, "{req:?}: {}", r.text);
    }
    assert_eq!(a.behaviour.connections.load(Ordering::Relaxed), 0, "the application was reached");
    // A client slow to send its first request is still served as HTTP.
    let mut io = w.tunnel(w.vip(1)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    io.write_all(b"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("traceparent: "), "not parsed by the waypoint: {text}");
}

/// An HTTP/2 client slow to send its preface on a port declared `http2` is still read as
/// HTTP/2: detection giving up on a declared port waits longer rather than guessing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_http2_preface_on_a_declared_port_is_read_as_http2() {
    let w = World::new([21, 13]).await;
    let a = w.backend("a").await;
    w.service_declaring("svc", 1, &[&a], proto::istio::workload::AppProtocol::Http2);
    w.until_endpoints("svc", 1).await;
    let io = w.tunnel(w.vip(1)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (mut s, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let _conn = Task(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = Request::builder().uri("http://svc/x").body(empty()).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), s.send_request(req)).await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "a");
}
