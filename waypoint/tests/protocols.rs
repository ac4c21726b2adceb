//! Protocols through the waypoint: gRPC-shaped HTTP/2 routed by method with streaming
//! bodies and trailers, opaque TCP forwarded to an endpoint, and garbage that closes only its
//! own connection.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::istio::workload as pbw;
use proto::mesh::waypoint::v1 as pb;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routed_by_method_and_streamed() {
    let w = World::new([4, 1]).await;
    let a = w.backend("a").await;
    let b = w.backend("b").await;
    w.service("greeter", 1, &[&a]);
    w.service("greeter-b", 2, &[&b]);
    let grpc = |svc: &str, method: &str| pb::Match {
        grpc: Some(pb::GrpcMethodMatch {
            r#type: pb::MatchType::Exact as i32,
            service: svc.into(),
            method: method.into(),
        }),
        ..Default::default()
    };
    w.route(&pb::Route {
        namespace: "shop".into(),
        name: "greeter".into(),
        kind: pb::route::Kind::Grpc as i32,
        parents: vec![pb::ParentService { hostname: host("greeter"), port: 80 }],
        rules: vec![
            pb::Rule {
                matches: vec![grpc("helloworld.Greeter", "SayHelloStream")],
                backends: vec![pb::Backend { hostname: host("greeter-b"), port: 80, weight: 1, filters: vec![] }],
                ..Default::default()
            },
            // A backend istiod-lite could not resolve (empty hostname).
            pb::Rule {
                matches: vec![grpc("helloworld.Greeter", "Broken")],
                backends: vec![pb::Backend { hostname: String::new(), port: 0, weight: 1, filters: vec![] }],
                ..Default::default()
            },
            pb::Rule {
                matches: vec![grpc("helloworld.Greeter", "")],
                backends: vec![pb::Backend { hostname: host("greeter"), port: 80, weight: 1, filters: vec![] }],
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    w.until_endpoints("greeter-b", 1).await;
    w.settle().await;

    let Client::H2(mut s, _t) = w.h2(w.vip(1)).await else { unreachable!() };
    let call = |path: &str, body: ReqBody| {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://greeter{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap()
    };
    let r = s.send_request(call("/helloworld.Greeter/SayHello", full("unary"))).await.unwrap();
    assert_eq!(r.headers().get("x-backend").unwrap(), "a");
    let c = r.into_body().collect().await.unwrap();
    assert_eq!(c.trailers().unwrap().get("grpc-status").unwrap(), "0", "trailers are forwarded");

    // Streaming: each message comes back before the next is sent.
    let (tx, body) = channel_body();
    let r = s.send_request(call("/helloworld.Greeter/SayHelloStream", body)).await.unwrap();
    assert_eq!(r.headers().get("x-backend").unwrap(), "b");
    let mut resp: Incoming = r.into_body();
    for i in 0..5 {
        let msg = Bytes::from(format!("msg-{i}"));
        tx.send(msg.clone()).await.unwrap();
        let frame =
            tokio::time::timeout(Duration::from_secs(5), resp.frame()).await.expect("echo arrives while streaming");
        assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), msg);
    }
    drop(tx);
    let rest = resp.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap().get("grpc-status").unwrap(), "0");

    // The waypoint's own answers to gRPC calls are gRPC statuses (trailers-only), not HTTP
    // errors a client would read as UNKNOWN: a path no GRPCRoute matches is UNIMPLEMENTED, a
    // rule whose backend is invalid UNAVAILABLE (Gateway API).
    for (path, code) in [("/not-grpc", "12"), ("/helloworld.Greeter/Broken", "14")] {
        let r = s.send_request(call(path, full(""))).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers().get("content-type").unwrap(), "application/grpc", "{path}");
        assert_eq!(r.headers().get("grpc-status").unwrap(), code, "{path}");
        assert!(r.headers().contains_key("grpc-message"), "{path}");
    }
    let m = w.metrics_once(|m| m.contains("grpc_response_status=\"14\"")).await;
    assert!(m.contains("request_protocol=\"grpc\""), "{m}");
    assert!(m.contains("grpc_response_status=\"0\""), "{m}");
    assert!(m.contains("grpc_response_status=\"14\""), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_forwarded_and_garbage_contained() {
    let w = World::new([4, 2]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;

    // Opaque bytes: the backend's HTTP server answers 400 to them, which proves the bytes
    // reached it through the waypoint untouched.
    let mut t = w.tunnel(w.vip(1)).await;
    t.write_all(b"\x00\x01binary hello\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "the backend got the raw bytes: {text:?}");

    // L4 policy applies to TCP: a DENY on a path (L7 field) matches opaque TCP (fail closed).
    w.policy(&policy("deny-path", pb::l7_policy::Action::Deny, vec![to_paths(&["/secret"])]));
    w.settle().await;
    let mut t = w.tunnel(w.vip(1)).await;
    t.write_all(b"\x00\x01binary hello\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "denied TCP gets nothing: {:?}", String::from_utf8_lossy(&buf));
    // HTTP to other paths is still allowed.
    let mut ok = w.h1(w.vip(1)).await;
    assert_eq!(ok.get("/fine").await.status, 200);

    // Garbage: not TLS at all on the HBONE port; a malformed HTTP request inside a tunnel.
    let mut raw = tokio::net::TcpStream::connect(w.waypoint_addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n garbage \x00\xff").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "the waypoint closes a non-TLS connection");
    let mut t = w.tunnel(w.vip(1)).await;
    t.write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&buf));
    // Others are unharmed: the client opened before the garbage still works.
    assert_eq!(ok.get("/still-fine").await.status, 200);

    // CONNECT to an address the waypoint does not know is refused.
    let key =
        hbone::tunnel::pool::PoolKey { src: w.client_id.clone(), dst: w.waypoint_id.clone(), addr: w.waypoint_addr };
    let pool = hbone::tunnel::pool::Pool::new(
        Default::default(),
        {
            let s = hbone::CertStore::new(w.ca.roots());
            s.insert(w.ca.issue(&w.client_id, hbone::testing::DAY));
            s
        },
        None,
    );
    let unknown: SocketAddr = "10.255.255.1:80".parse().unwrap();
    let e = pool.connect(&key, &hbone::tunnel::client::ConnectTarget::new(unknown, None)).await.unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
}

/// The sum of a histogram's samples whose labels contain `needle`.
fn histogram_sum(metrics: &str, name: &str, needle: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_sum{{")) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Each word comes back from the upgraded backend `backend` prefixed with its name; closing
/// our side ends its echo, which closes its side.
async fn echoes_then_closes(mut io: impl AsyncRead + AsyncWrite + Unpin, backend: &str, words: &[&str]) {
    for word in words {
        io.write_all(word.as_bytes()).await.unwrap();
        let mut back = vec![0u8; backend.len() + 1 + word.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, format!("{backend}:{word}").as_bytes());
    }
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_routed_authorized_and_spliced() {
    let w = World::new([4, 3]).await;
    w.routed_pair("chat", "/ws", &["/ws/admin"]).await;

    let client = || async {
        let io = w.tunnel(w.vip(1)).await;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
        let t = Task(tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        }));
        (s, t)
    };

    // Routed by path to b, which switches protocols; then bytes cross both ways.
    let (mut s, _t) = client().await;
    let mut resp = s.send_request(websocket_get("/ws/echo")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["x-backend"], "b");
    assert_eq!(resp.headers()["upgrade"], "websocket");
    assert_eq!(resp.headers()["connection"], "upgrade");
    assert_eq!(resp.headers()["sec-websocket-accept"], WS_KEY, "the client's own key is answered");
    let io = TokioIo::new(hyper::upgrade::on(&mut resp).await.expect("the client's connection is upgraded"));
    echoes_then_closes(io, "b", &["hello", "again"]).await;

    // Accounted when the upgraded connection ended: code 101, the bytes that crossed it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let code = "response_code=\"101\"";
    let sent_down = loop {
        let m = w.metrics();
        if let Some(v) = histogram_sum(&m, "istio_response_bytes", code) {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "no 101 accounted: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sent_down, 14.0, "b:hello + b:again");
    assert_eq!(histogram_sum(&w.metrics(), "istio_request_bytes", code), Some(10.0), "hello + again");

    // L7 policy applies to the upgrade request.
    let (mut s, _t) = client().await;
    let denied = s.send_request(websocket_get("/ws/admin")).await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied.into_body().collect().await.unwrap().to_bytes(), "RBAC: access denied");

    // An application that does not switch answers as usual and the connection stays HTTP.
    let (mut s, _t) = client().await;
    let plain: http::Response<Incoming> = s.send_request(websocket_get("/plain")).await.unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    assert_eq!(plain.headers()["x-backend"], "a");
    plain.into_body().collect().await.unwrap();
    s.ready().await.unwrap();
    let again = s.send_request(get("/after").body(empty()).unwrap()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["x-path"], "/after");
}

/// `h2c` is not an upgrade the waypoint passes on (proxy/upgrade.rs): `Upgrade` is a list
/// (RFC 9110 §7.8), and h2c anywhere in it must not reach the application, or an h2c-capable
/// application switches the spliced connection to HTTP/2 and carries requests no policy sees
/// (h2c smuggling). Only a 101 naming the protocol asked for is spliced; a 101 to another
/// protocol is answered 502 and the client's connection stays HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_taken_out_of_an_upgrade_list_and_only_the_protocol_asked_for_is_spliced() {
    let w = World::new([4, 7]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    let mut c = w.h1(w.vip(1)).await;
    let req = get("/echo")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "websocket, h2c")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(empty())
        .unwrap();
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.seen_header("upgrade"), Some("websocket"), "the application was offered: {:?}", r.body);
    assert_eq!(r.seen_header("http2-settings"), None);

    let io = w.tunnel(w.vip(1)).await;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    let _t = Task(tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    }));
    let mut switch_to_h2c = websocket_get("/ws/echo");
    switch_to_h2c.headers_mut().insert("x-answer-upgrade", http::HeaderValue::from_static("h2c"));
    let r = s.send_request(switch_to_h2c).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "a 101 to h2c for a websocket upgrade was spliced");
    r.into_body().collect().await.unwrap();
    s.ready().await.unwrap();
    let again = s.send_request(get("/after").body(empty()).unwrap()).await.unwrap();
    assert_eq!(again.headers()["x-path"], "/after", "the connection stays HTTP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect_reaches_an_http1_websocket_server() {
    let w = World::new([4, 5]).await;
    let a = w.backend("a").await;
    w.service("chat", 1, &[&a]);
    w.policy(&policy("deny-ws-admin", pb::l7_policy::Action::Deny, vec![to_paths(&["/ws/admin"])]));
    w.until_endpoints("chat", 1).await;
    w.settle().await;

    let io = w.tunnel(w.vip(1)).await;
    let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    let _t = Task(tokio::spawn(async move {
        let _ = conn.await;
    }));
    // One exchange first, so the waypoint's SETTINGS (which allow extended CONNECT) are in.
    let warm = s.send_request(get(&format!("http://{}/warm", host("chat"))).body(empty()).unwrap()).await.unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    let connect = |path: &str, proto: &'static str| {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}{path}", host("chat")))
            .header("sec-websocket-version", "13")
            .body(empty())
            .unwrap();
        req.extensions_mut().insert(hyper::ext::Protocol::from_static(proto));
        req
    };

    // RFC 8441: 200 to the CONNECT, then the stream carries the WebSocket bytes. The HTTP/1.1
    // server got the handshake it insists on (it answers 400 otherwise), with a key the
    // waypoint made, whose answer does not reach the HTTP/2 client.
    let mut resp = s.send_request(connect("/ws/echo", "websocket")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-backend"], "a");
    assert_eq!(resp.headers()["x-path"], "/ws/echo");
    assert!(resp.headers().get("sec-websocket-accept").is_none(), "{:?}", resp.headers());
    assert!(resp.headers().get("upgrade").is_none() && resp.headers().get("connection").is_none());
    let ws = TokioIo::new(hyper::upgrade::on(&mut resp).await.expect("the stream is upgraded"));
    echoes_then_closes(ws, "a", &["hello", "over h2"]).await;
    assert_eq!(*a.behaviour.versions.lock().unwrap().last().unwrap(), http::Version::HTTP_11);

    // The same policy as for HTTP/1.1 clients: the path is denied.
    let denied = s.send_request(connect("/ws/admin", "websocket")).await.unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(denied.into_body().collect().await.unwrap().to_bytes(), "RBAC: access denied");
    // An application that answers without switching does not leave the client believing a
    // tunnel is open.
    let plain = s.send_request(connect("/plain", "websocket")).await.unwrap();
    assert_eq!(plain.status(), StatusCode::BAD_GATEWAY);
    // h2c cannot be an upgrade of the application's connection.
    let h2c = s.send_request(connect("/ws/echo", "h2c")).await.unwrap();
    assert_eq!(h2c.status(), StatusCode::BAD_REQUEST);
    // And the connection still serves requests.
    let after = s.send_request(get(&format!("http://{}/after", host("chat"))).body(empty()).unwrap()).await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_declared_protocol_decides_the_http_version_upstream() {
    let w = World::new([4, 4]).await;
    let a = w.backend("a").await;
    w.service_declaring("h2", 1, &[&a], pbw::AppProtocol::Http2);
    w.service_declaring("h1", 2, &[&a], pbw::AppProtocol::Http11);
    w.service_declaring("grpc", 3, &[&a], pbw::AppProtocol::Grpc);
    w.service("auto", 4, &[&a]);
    w.until_endpoints("auto", 1).await;
    w.settle().await;
    // The backend's echo starts with `<name> <method> <path> <version>`.
    for (vip, client_h2, want) in [
        (1, false, "HTTP/2.0"),
        (1, true, "HTTP/2.0"),
        (2, false, "HTTP/1.1"),
        (2, true, "HTTP/1.1"),
        (3, false, "HTTP/2.0"),
        (4, false, "HTTP/1.1"),
        (4, true, "HTTP/2.0"),
    ] {
        let mut c = if client_h2 { w.h2(w.vip(vip)).await } else { w.h1(w.vip(vip)).await };
        for _ in 0..2 {
            let req = get("/v?x=1").method("POST").header("x-probe", "p").body(full("payload")).unwrap();
            let r = c.send(req).await.unwrap();
            let first = r.body.lines().next().unwrap_or_default();
            let case = format!("service {vip}, client HTTP/{}: {}", if client_h2 { 2 } else { 1 }, r.body);
            assert_eq!(r.status, StatusCode::OK, "{case}");
            assert_eq!(first, format!("a POST /v?x=1 {want}"), "{case}");
            assert_eq!(r.seen_header("x-probe"), Some("p"), "{case}");
            if want == "HTTP/1.1" {
                assert_eq!(r.seen_header("host"), Some("svc.example"), "{case}");
            } else {
                assert_eq!(r.seen_header("host"), None, "HTTP/2 carries it as :authority: {case}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_tcp_is_forwarded_without_waiting_for_the_client_to_speak() {
    // Detection would wait half a minute for a first byte: only a declared port skips it.
    let w = World::with_detect_timeout([4, 5], Duration::from_secs(30)).await;
    let host = w.backend("host").await;
    // A server-first application (it greets before the client says anything) on that
    // workload's address, standing in for its HTTP server.
    let l = tokio::net::TcpListener::bind(SocketAddr::new(host.ip, 0)).await.unwrap();
    let banner_port = l.local_addr().unwrap().port();
    let _greeter = Task(tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                s.write_all(b"220 ready\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    }));
    // The same workload (its identity is its name's), its port now the greeter's.
    let db = std::sync::Arc::new(Backend {
        name: host.name.clone(),
        ip: host.ip,
        http_port: banner_port,
        behaviour: std::sync::Arc::default(),
    });
    w.backends.lock().unwrap().insert(host.name.clone(), db.clone());
    w.service_declaring("db", 1, &[&db], pbw::AppProtocol::Tcp);
    w.service("db-undeclared", 2, &[&db]);
    w.until_endpoints("db-undeclared", 1).await;
    w.settle().await;

    let mut t = w.tunnel(w.vip(1)).await;
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut greeting))
        .await
        .expect("the greeting arrives while the client is silent")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    t.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"hello");

    // Undeclared, the same application waits for detection: nothing comes while the client
    // is silent.
    let mut t = w.tunnel(w.vip(2)).await;
    let mut buf = [0u8; 11];
    assert!(
        tokio::time::timeout(Duration::from_secs(1), t.read_exact(&mut buf)).await.is_err(),
        "undeclared ports are sniffed first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_speaks_the_version_its_own_backend_declares() {
    let w = World::new([4, 6]).await;
    let a = w.backend("a").await;
    let m = w.backend("m").await;
    w.service_declaring("primary", 1, &[&a], pbw::AppProtocol::Http11);
    w.service_declaring("shadow", 2, &[&m], pbw::AppProtocol::Grpc);
    let mut copied = rule(vec![], vec![backend_ref("primary", 1)]);
    copied.filters = vec![mirror_filter("shadow", 100)];
    w.route(&route("primary", "primary", vec![copied]));
    w.until_endpoints("shadow", 1).await;
    w.settle().await;

    // An HTTP/2 client: the primary gets HTTP/1.1 as it declares, the mirror HTTP/2.
    let mut c = w.h2(w.vip(1)).await;
    let r =
        c.send(get("/copied?q=1").method("POST").header("x-probe", "p").body(full("payload")).unwrap()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.lines().next().unwrap(), "a POST /copied?q=1 HTTP/1.1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while m.behaviour.versions.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the mirror got a copy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*m.behaviour.versions.lock().unwrap(), [http::Version::HTTP_2]);
    assert_eq!(*a.behaviour.versions.lock().unwrap(), [http::Version::HTTP_11]);
}

/// The authority policy checks is the one forwarded, to the primary and to a mirror alike,
/// whatever version each speaks: a `Host` set by a RequestHeaderModifier does not replace it
/// (a URLRewrite hostname is the way to change it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_and_its_mirror_get_the_authority_policy_checked() {
    let w = World::new([4, 8]).await;
    let a = w.backend("a").await;
    let m = w.backend("m").await;
    w.service_declaring("primary", 1, &[&a], pbw::AppProtocol::Http11);
    w.service_declaring("shadow", 2, &[&m], pbw::AppProtocol::Http2);
    let set_host = pb::HeaderModifier {
        set: vec![pb::Header { name: "host".into(), value: "filtered.example".into() }],
        ..Default::default()
    };
    let mut copied = rule(vec![], vec![backend_ref("primary", 1)]);
    copied.filters = vec![
        pb::Filter { kind: Some(pb::filter::Kind::RequestHeaderModifier(set_host)) },
        mirror_filter("shadow", 100),
    ];
    w.route(&route("primary", "primary", vec![copied]));
    w.until_endpoints("shadow", 1).await;
    w.settle().await;

    // HTTP/1.1 in, HTTP/1.1 to the primary (its head could go as it came), HTTP/2 to the mirror.
    let mut c = w.h1(w.vip(1)).await;
    let r = c.send(get("/copied").method("POST").body(full("payload")).unwrap()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while m.behaviour.authorities.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the mirror got a copy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*a.behaviour.versions.lock().unwrap(), [http::Version::HTTP_11]);
    assert_eq!(*m.behaviour.versions.lock().unwrap(), [http::Version::HTTP_2]);
    assert_eq!(*a.behaviour.authorities.lock().unwrap(), ["svc.example"], "primary");
    assert_eq!(*m.behaviour.authorities.lock().unwrap(), ["svc.example"], "mirror");
}
