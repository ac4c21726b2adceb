//! The HTTP path for one request: normalize the path, authorize (L7 policy), match a route
//! (none: the destination service itself), apply filters, pick a backend by weight and an
//! endpoint by the backend policy, forward over HBONE with timeouts and retries, and
//! account for it (metrics, access log) when the response body ends — or, for a protocol
//! upgrade the application accepts, when the spliced connection ends ([`super::upgrade`]).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use ztunnel::state::{AppProtocol, Endpoint};

use super::balance::{self, Picked, Prefer};
use super::body::{self, Counted, OnEnd, Tally};
use super::detect::Protocol;
use super::upstream::{Dest, Version};
use super::{Body, Destination, Downstream, Proxy, forward, upgrade};
use crate::authz::{self, Decision, Facts, HttpFacts};
use crate::headers::HOP_BY_HOP;
use crate::normalize::normalize;
use crate::state::Snapshot;
use crate::state::route::{self, Filter, HeaderModifier, Redirect, RequestView, Retry};
use crate::telemetry::span_tags::{self, RequestTags as SpanTags};
use crate::telemetry::{AccessLog, Metrics, RequestLabels, TraceParent};

/// Request bodies up to this size are buffered when a retry or mirror may replay them.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// How long the unread body of a request answered locally (403, 404, ...) is read off.
const LOCAL_REPLY_DRAIN: Duration = Duration::from_secs(1);

/// Returns `reply` after setting the unread request body to be read off in the background.
///
/// A local reply (403, 404, ...) leaves the request body unread; dropping it would make the
/// HTTP/2 server reset the stream, and a client still sending (curl, gRPC stubs) may then report
/// the reset instead of the answer. Reading what is left (bounded in size and time) lets the
/// stream close cleanly.
fn drained<T>(req_body: Body, reply: T) -> T {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LOCAL_REPLY_DRAIN, body::buffer(req_body, MAX_REPLAY_BODY)).await;
    });
    reply
}

/// Serves HTTP on one tunnelled stream until the client closes it.
pub async fn serve<S>(proxy: Arc<Proxy>, down: Arc<Downstream>, io: S, proto: Protocol)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = if proto == Protocol::Http2 { Version::H2 } else { Version::H1 };
    // When the drain starts, the connection ends gracefully: HTTP/1.1 closes once its request
    // in flight (if any) is answered, HTTP/2 sends GOAWAY and lets its streams finish.
    let drain = proxy.drain.started();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (proxy, down) = (proxy.clone(), down.clone());
        async move { Ok::<_, Infallible>(handle(proxy, down, req, version).await) }
    });
    // The two connection types share `graceful_shutdown` by name only.
    macro_rules! until_drained {
        ($conn:expr) => {{
            let mut conn = std::pin::pin!($conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = drain => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }};
    }
    let io = TokioIo::new(io);
    let r = match version {
        Version::H1 => {
            until_drained!(hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades())
        }
        Version::H2 => {
            // Extended CONNECT (RFC 8441) is how HTTP/2 clients open WebSockets.
            until_drained!(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(io, svc)
            )
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}

/// Everything accounted for a request, recorded once when its response is done.
struct Account {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    start: Instant,
    /// The request body's bytes, and whether it failed.
    request_body: Arc<Tally>,
    client: SocketAddr,
    method: ::http::Method,
    path: String,
    /// The rule that routed the request.
    route: Option<Arc<route::Rule>>,
    /// The authorization decision.
    decision: Option<Decision>,
    upstream: Option<SocketAddr>,
    /// The context sent upstream (the caller's trace, this request's span).
    trace: TraceParent,
    parent_span: Option<u64>,
    started: std::time::SystemTime,
    spans: Option<crate::telemetry::otlp::Exporter>,
    /// The span's request side: only for a sampled request with an exporter, so an
    /// unsampled one costs nothing more.
    span: Option<Box<SpanTags>>,
}

impl Account {
    /// The accounting of a request as it arrives: labels for the source and the CONNECT's
    /// destination; route, endpoint and status are filled in as they become known.
    fn new(
        proxy: &Proxy,
        down: &Downstream,
        snapshot: &Snapshot,
        parts: &::http::request::Parts,
        start: Instant,
    ) -> Self {
        let svc = down.dest.service();
        let grpc = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| route::is_grpc(v.as_bytes()));
        // The client's workload names the source only when it runs as the verified peer.
        let source_workload =
            snapshot.mesh.workload_by_ip(down.client.ip()).filter(|w| w.identity == down.peer).cloned();
        let labels = RequestLabels {
            source: Some(down.peer.clone()),
            source_workload,
            service: svc.cloned(),
            destination: None,
            request_protocol: if grpc { "grpc" } else { "http" },
            response_code: 0,
            grpc_response_status: None,
            response_flags: "-",
        };
        let parent = parts.headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
        let trace = TraceParent::child_of_parsed(parent);
        let spans = proxy.inputs.spans.as_ref().filter(|_| trace.sampled()).cloned();
        let span = spans.as_ref().map(|_| {
            let dest = svc.map(|s| (s.hostname.as_str(), down.dest.port()));
            Box::new(SpanTags::capture(parts, down.client.ip(), snapshot.source(), dest))
        });
        Account {
            metrics: proxy.inputs.metrics.clone(),
            labels,
            start,
            request_body: Arc::default(),
            client: down.client,
            method: parts.method.clone(),
            path: String::new(),
            route: None,
            decision: None,
            upstream: None,
            trace,
            parent_span: parent.map(|p| p.span_id),
            started: std::time::SystemTime::now(),
            spans,
            span,
        }
    }

    /// The labels of the endpoint a try was sent to.
    fn picked(&mut self, picked: &Picked) {
        self.upstream = Some(picked.addr);
        self.labels.destination = Some(picked.endpoint.workload.clone());
    }

    /// A response body carrying this accounting: it is recorded when the body ends.
    fn attach(self, r: Response<Body>) -> Response<Body> {
        let (p, b) = r.into_parts();
        Response::from_parts(p, Counted::new(b, Arc::default(), Some(Box::new(self))).boxed_unsync_compat())
    }
}

impl OnEnd for Account {
    /// A response cut off by the route's timeout after its head went out keeps that head's
    /// status (it is what the client got) and is flagged `UT`, as Envoy flags it: without the
    /// flag, a 200 whose body never completed reads as a success in logs and metrics.
    fn timed_out(&mut self) {
        self.labels.response_flags = "UT";
    }

    fn done(mut self: Box<Self>, bytes: u64, trailers: Option<&HeaderMap>) {
        if let Some(s) = trailers.and_then(|t| t.get("grpc-status")) {
            self.labels.grpc_response_status = Some(s.clone());
        }
        if let (Some(span), Some(m)) = (self.span.as_deref_mut(), trailers.and_then(|t| t.get("grpc-message"))) {
            span.grpc_message(m);
        }
        let elapsed = self.start.elapsed();
        // hyper drops a body it has seen end before it flushes the bytes it wrote, so this
        // hook runs ahead of the response's last bytes. Recording in a task of its own lets
        // them go first; the task runs on this worker right after.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move { self.record(elapsed, bytes) })),
            Err(_) => self.record(elapsed, bytes),
        }
    }
}

impl Account {
    /// Records the finished request: its span, Istio's request metrics and the access line.
    fn record(self: Box<Self>, elapsed: Duration, bytes: u64) {
        let millis = elapsed.as_secs_f64() * 1000.0;
        let req_bytes = self.request_body.bytes();
        if let (Some(x), Some(tags)) = (&self.spans, &self.span) {
            let outcome = span_tags::Outcome {
                status: self.labels.response_code,
                flags: self.labels.response_flags,
                request_size: req_bytes,
                response_size: bytes,
                grpc_status: self.labels.grpc_response_status.as_ref(),
            };
            let (attributes, error) = span_tags::attributes(tags, &outcome, x.site());
            x.record(crate::telemetry::otlp::Span {
                trace_id: self.trace.trace_id,
                span_id: self.trace.span_id,
                parent: self.parent_span,
                name: tags.operation().to_owned(),
                start: self.started,
                end: self.started + elapsed,
                attributes,
                error,
            });
        }
        self.metrics.record(&self.labels, millis, req_bytes, bytes);
        AccessLog {
            src: self.labels.source_principal(),
            client: Some(self.client),
            method: self.method.as_str(),
            path: &self.path,
            status: self.labels.response_code,
            route: self.route.as_ref().map_or("-", |r| r.id.as_str()),
            policy: self.decision.as_ref().map_or("-", Decision::policy),
            allowed: self.decision.as_ref().is_none_or(|d| d.allowed),
            upstream: self.upstream,
            service: self.labels.destination_service(),
            flags: self.labels.response_flags,
            millis,
            trace_id: self.trace.trace_id,
        }
        .emit();
    }
}

fn local(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A local answer to a gRPC call, as gRPC clients read one: HTTP 200, trailers-only, the
/// status in `grpc-status` and the text in `grpc-message`. The code follows gRPC's mapping of
/// HTTP statuses, except that our 500s (no usable backend) are UNAVAILABLE, as the Gateway API
/// asks of a GRPCRoute whose backends are all invalid; with an HTTP status instead, a client
/// would read that as UNKNOWN.
fn grpc_local(status: StatusCode, text: &'static str) -> (Response<Body>, HeaderValue) {
    let code: &'static str = match status.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 500 | 502 | 503 | 504 => "14",
        _ => "2",
    };
    let code = HeaderValue::from_static(code);
    let mut r = Response::new(body::full(""));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", code.clone());
    // Our texts are plain ASCII, so the percent-encoding gRPC asks for changes nothing but
    // the trailing newline, which goes.
    h.insert("grpc-message", HeaderValue::from_static(text.trim_end()));
    (r, code)
}

/// Connection-specific headers never forwarded (RFC 9110 7.6.1).
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    // TE is connection-specific too, but its `trailers` says the client takes trailers (gRPC
    // needs it), and it is the one value HTTP/2 allows (RFC 9113 §8.2.2). It is kept as just
    // that, whatever else the client listed and in however many fields: an HTTP/2 backend
    // refuses a request carrying any other value, and the HTTP/2 client checks the first
    // field only. Read after the fields `Connection` lists are gone: a TE it names goes whole.
    let trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("trailers"));
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Host without port, lower case.
fn bare_host(authority: &str) -> String {
    let h = if authority.starts_with('[') {
        authority.split_once(']').map_or(authority, |(h, _)| &h[1..])
    } else {
        authority.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(authority, |(h, _)| h)
    };
    h.to_ascii_lowercase()
}

/// Where a request goes after routing; it borrows from the snapshot and the downstream.
struct Plan<'a> {
    /// Backend service FQDN (lower case) and port; `None` forwards to the destination workload.
    backend: Option<(Cow<'a, str>, u16)>,
    response_mods: Vec<HeaderModifier>,
    /// Mirror backends (borrowed from the snapshot's rule) and their percent.
    mirrors: Vec<(&'a route::Backend, u32)>,
    retry: Option<Retry>,
    request_timeout: Option<Duration>,
    backend_timeout: Option<Duration>,
    /// Path sent upstream when a URL rewrite changed it.
    path: Option<String>,
    /// The authority sent upstream and to mirrors: a URL rewrite's hostname (set while
    /// routing), else the client's as policy checked it (set by [`prepare`]). One value for
    /// both, so a mirror never carries a host the primary request did not.
    authority: Option<String>,
    /// The HTTP version spoken to the backend (chosen in [`prepare`]).
    upstream: Version,
}

/// Location for a redirect (Gateway API HTTPRequestRedirectFilter).
fn location(
    r: &Redirect,
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    prefix: Option<&str>,
    query: Option<&str>,
) -> String {
    let scheme_out = r.scheme.as_deref().unwrap_or(scheme);
    let host_out = r.hostname.as_deref().unwrap_or(host);
    let well_known = |s: &str| match s {
        "https" => 443,
        _ => 80,
    };
    let port_out = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) => well_known(s),
        (None, None) => port,
    };
    let path_out = r.path.as_ref().map_or_else(|| path.to_owned(), |m| m.apply(path, prefix));
    // An IPv6 literal (the request's host, which `bare_host` took out of its brackets) goes
    // back into them, or its colons would read as a port (RFC 3986 §3.2.2).
    let mut loc = if host_out.contains(':') {
        format!("{scheme_out}://[{host_out}]")
    } else {
        format!("{scheme_out}://{host_out}")
    };
    if port_out != well_known(scheme_out) {
        loc.push_str(&format!(":{port_out}"));
    }
    loc.push_str(&path_out);
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    loc
}

struct Ctx<'a> {
    snapshot: &'a Snapshot,
    down: &'a Downstream,
}

/// An answer the waypoint gives itself instead of forwarding.
enum Local {
    /// Status, body text, response flags.
    Reply(StatusCode, &'static str, &'static str),
    /// A redirect to this `Location`.
    Redirect(StatusCode, String),
}

impl Local {
    fn respond(self, mut account: Account) -> Response<Body> {
        let resp = match self {
            Local::Reply(status, text, flags) => {
                account.labels.response_flags = flags;
                if account.labels.request_protocol == "grpc" {
                    let (resp, code) = grpc_local(status, text);
                    if let (Some(span), Some(m)) = (account.span.as_deref_mut(), resp.headers().get("grpc-message")) {
                        span.grpc_message(m);
                    }
                    account.labels.grpc_response_status = Some(code);
                    resp
                } else {
                    local(status, text)
                }
            }
            Local::Redirect(status, loc) => {
                let mut resp = local(status, "");
                if let Ok(v) = HeaderValue::from_str(&loc) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
        };
        account.labels.response_code = resp.status().as_u16();
        account.attach(resp)
    }
}

/// The request's target as the client sent it, path normalized.
struct Target<'u> {
    /// Borrowed from the request's URI unless normalizing changed it.
    path: Cow<'u, str>,
    query: Option<String>,
    /// Authority (or `Host`) as sent.
    authority: String,
    /// Host without port, lower case.
    host: String,
}

async fn handle(
    proxy: Arc<Proxy>,
    down: Arc<Downstream>,
    mut req: Request<Incoming>,
    version: Version,
) -> Response<Body> {
    let start = Instant::now();
    let (upgrade, refused) = match version {
        Version::H1 => (upgrade::requested(req.version(), req.headers()), None),
        Version::H2 => match upgrade::extended_connect(&mut req) {
            Ok(u) => (u, None),
            Err(e) => (None, Some(e)),
        },
    };
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let snapshot = proxy.inputs.state.load();
    let (mut parts, incoming) = req.into_parts();
    let mut account = Account::new(&proxy, &down, &snapshot, &parts, start);
    let req_body: Body = Counted::new(body::boxed(incoming), account.request_body.clone(), None).boxed_unsync_compat();
    if let Some(e) = refused {
        tracing::debug!(error = %e, "refusing extended CONNECT");
        let reply = Local::Reply(StatusCode::BAD_REQUEST, "unsupported :protocol\n", "-").respond(account);
        return drained(req_body, reply);
    }
    // A transfer coding the HTTP/1.1 server did not undo (see `chunked_alone`) is refused,
    // and the connection closes after the answer: its body is not read for another request.
    if version == Version::H1 && !crate::headers::chunked_alone(&parts.headers) {
        tracing::debug!(te = ?parts.headers.get(header::TRANSFER_ENCODING), "refusing a transfer coding");
        account.path = parts.uri.path().to_owned();
        let mut reply =
            Local::Reply(StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding\n", "-").respond(account);
        reply.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return reply;
    }
    // Malformed in HTTP/2, and read differently by policy and an application that trims (see
    // `has_padded_value`).
    if version == Version::H2 && crate::headers::has_padded_value(&parts.headers) {
        tracing::debug!("refusing an HTTP/2 field value with leading or trailing whitespace");
        account.path = parts.uri.path().to_owned();
        let reply = Local::Reply(StatusCode::BAD_REQUEST, "malformed header field\n", "-").respond(account);
        return drained(req_body, reply);
    }
    if version == Version::H2 {
        crate::headers::join_cookies(&mut parts.headers);
    }
    let ctx = Ctx { snapshot: &snapshot, down: &down };
    let prepared = prepare(&proxy, &ctx, &mut parts, &mut account, version, upgrade.is_some());
    let (mut plan, (endpoints, backend_host, prefer)) = match prepared {
        Ok(p) => p,
        Err(local) => return drained(req_body, local.respond(account)),
    };
    if let Some(proto) = &upgrade {
        upgrade::keep(&mut parts.headers, proto.clone());
        // Neither can be replayed on a connection that changes protocol.
        plan.retry = None;
        plan.mirrors.clear();
    }

    // Bodies are buffered only when something may replay them.
    let replay_needed = plan.retry.is_some() || !plan.mirrors.is_empty();
    let (replay, mut stream_body) = if replay_needed {
        match body::buffer(req_body, MAX_REPLAY_BODY).await {
            Ok(b) => (Some(b), None),
            Err(b) => (None, Some(b)),
        }
    } else {
        (None, Some(req_body))
    };
    let mirrors: Vec<&route::Backend> = plan
        .mirrors
        .iter()
        .filter(|(_, percent)| rand::rng().random_range(0..100) < *percent)
        .map(|&(m, _)| m)
        .collect();
    let authority = plan.authority.as_deref().unwrap_or_default();
    match (&replay, stream_body.take()) {
        (Some(b), _) => {
            for m in mirrors {
                spawn_mirror(&proxy, &ctx, m, &parts, authority, b.replay(), plan.upstream);
            }
        }
        // Too large to buffer: the mirrors get the body as it streams to the backend.
        (None, Some(streaming)) if !mirrors.is_empty() => {
            let (primary, copies) = body::tee(streaming, mirrors.len());
            for (m, copy) in mirrors.into_iter().zip(copies) {
                spawn_mirror(&proxy, &ctx, m, &parts, authority, copy, plan.upstream);
            }
            stream_body = Some(primary);
        }
        (None, streaming) => stream_body = streaming,
    }

    let client_body = account.request_body.clone();
    let attempt = forward::Attempt {
        proxy: &proxy,
        parts,
        replay: replay.as_ref(),
        stream_body,
        endpoints: &endpoints,
        backend_host: &backend_host,
        policy: snapshot.backend_policy(&backend_host),
        prefer,
        retry: plan.retry.as_ref(),
        backend_timeout: plan.backend_timeout,
        // A timeout beyond the clock's range (the control plane's number) is none.
        deadline: plan.request_timeout.and_then(|t| start.checked_add(t)),
        version: plan.upstream,
        client: down.client,
        upgrade: upgrade.is_some(),
        client_body: &client_body,
    };
    let outcome = forward::forward(attempt, |picked| account.picked(picked)).await;
    match outcome {
        Err(forward::Failure { status, text, flags }) => Local::Reply(status, text, flags).respond(account),
        Ok((resp, _)) if on_upgrade.is_some() && upgrade.as_ref().is_some_and(|u| upgrade::switched(&resp, u)) => {
            let client = on_upgrade.expect("checked by the guard");
            // The spliced connection outlives this request's stream: it counts for the drain
            // on its own.
            let live = proxy.drain.track();
            switch_protocols(resp, client, &plan.response_mods, account, live, version)
        }
        // A 101 to a protocol nobody asked for (or to no upgrade at all) is not passed on: the
        // client would take its connection for switched while the waypoint still reads HTTP.
        Ok((resp, _)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            tracing::debug!(upgrade = ?resp.headers().get(header::UPGRADE), asked = ?upgrade, "the application switched to a protocol not asked for");
            Local::Reply(StatusCode::BAD_GATEWAY, "upstream switched to a protocol not asked for\n", "UPE")
                .respond(account)
        }
        // An HTTP/2 client reads any 2xx to its CONNECT as an open tunnel: one the application
        // did not open must not look like one.
        Ok((resp, _)) if version == Version::H2 && upgrade.is_some() && resp.status().is_success() => {
            tracing::debug!(status = %resp.status(), "the application answered an upgrade without switching protocols");
            Local::Reply(StatusCode::BAD_GATEWAY, "upstream did not switch protocols\n", "UPE").respond(account)
        }
        // The HTTP/1.1 client undid chunked only, and `Transfer-Encoding` goes with the other
        // hop-by-hop fields: the client would read the still-encoded bytes as the content.
        Ok((resp, _)) if plan.upstream == Version::H1 && !crate::headers::chunked_alone(resp.headers()) => {
            tracing::debug!(te = ?resp.headers().get(header::TRANSFER_ENCODING), "the application answered with a transfer coding not supported");
            Local::Reply(StatusCode::BAD_GATEWAY, "upstream transfer coding not supported\n", "UPE").respond(account)
        }
        Ok((resp, body_deadline)) => {
            let (mut p, b) = resp.into_parts();
            strip_hop_by_hop(&mut p.headers);
            for m in &plan.response_mods {
                m.apply(&mut p.headers);
            }
            account.labels.response_code = p.status.as_u16();
            if let Some(s) = p.headers.get("grpc-status") {
                account.labels.grpc_response_status = Some(s.clone());
            }
            // The route's timeouts cover the response until its body is complete (Gateway API
            // HTTPRouteTimeouts), not only until its head.
            let b = match body_deadline {
                Some(d) => body::until(body::boxed(b), d),
                None => body::boxed(b),
            };
            account.attach(Response::from_parts(p, b))
        }
    }
}

/// The application agreed to switch protocols: the client gets the 101 (an HTTP/2 client's
/// extended CONNECT a 200), and the upgraded connection and the client's stream are spliced in
/// the background; the request is accounted when that ends.
fn switch_protocols(
    mut resp: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    response_mods: &[HeaderModifier],
    mut account: Account,
    live: ztunnel::drain::ConnGuard,
    downstream: Version,
) -> Response<Body> {
    let app = hyper::upgrade::on(&mut resp);
    let (mut p, _) = resp.into_parts();
    let proto = p.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut p.headers);
    for m in response_mods {
        m.apply(&mut p.headers);
    }
    match (downstream, proto) {
        // HTTP/2 has no connection-level headers: the stream itself is what was upgraded.
        (Version::H2, _) => upgrade::to_h2_accept(&mut p),
        (Version::H1, Some(proto)) => upgrade::keep(&mut p.headers, proto),
        (Version::H1, None) => {}
    }
    account.labels.response_code = p.status.as_u16();
    tokio::spawn(async move {
        let (crossed, err) = upgrade::splice(client, app).await;
        if let Some(e) = err {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
        account.request_body.add(crossed.up);
        Box::new(account).done(crossed.down, None);
        drop(live);
    });
    Response::from_parts(p, body::full(""))
}

/// Everything decided before the body is touched: normalized target, authorization, route,
/// filters, the upstream request head, and the endpoints. `Err`: answer locally.
fn prepare<'a>(
    proxy: &Proxy,
    ctx: &Ctx<'a>,
    parts: &mut ::http::request::Parts,
    account: &mut Account,
    downstream: Version,
    upgrade: bool,
) -> Result<(Plan<'a>, Endpoints<'a>), Local> {
    // Istio ("Authorization Policy Normalization"): a method not in upper case is refused with
    // 400, so `delete` cannot pass a DENY on `DELETE` to an application that upper-cases it.
    if parts.method.as_str().bytes().any(|b| !b.is_ascii_uppercase()) {
        tracing::debug!(method = %parts.method, "refusing a method not in upper case");
        account.path = parts.uri.path().to_owned();
        return Err(Local::Reply(StatusCode::BAD_REQUEST, "bad request method\n", "-"));
    }
    // A CONNECT still here (extended CONNECT became an upgrade above) asks for a tunnel to its
    // target: the waypoint opens none, since its bytes would pass no L7 policy, and forwards
    // none, so the application is not asked to open one on the client's behalf either.
    if parts.method == ::http::Method::CONNECT {
        tracing::debug!(uri = %parts.uri, "refusing CONNECT");
        account.path = parts.uri.path().to_owned();
        return Err(Local::Reply(StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported\n", "-"));
    }
    // The asterisk-form target (`OPTIONS * HTTP/1.1`, `:path: *`) asks about the server as a
    // whole, and only OPTIONS may use it (RFC 9112 §3.2.4, RFC 9113 §8.3.1); any other method
    // with it is malformed. `OPTIONS *` itself is answered 404 here, before policy and routing,
    // as Envoy answers it in Istio's waypoints, so a workload moving between the two sees the
    // same answer. Forwarding it was the alternative, and it does not fit: no route can match
    // a target that is not a path (a `/` prefix would have to pretend it is one), and one pod
    // picked behind the service is not "the server" the client asks about; the waypoint
    // answering 200 with an `Allow` would claim methods it cannot know the application takes.
    if parts.uri.path() == "*" {
        account.path = "*".to_owned();
        return Err(if parts.method == ::http::Method::OPTIONS {
            Local::Reply(StatusCode::NOT_FOUND, "OPTIONS * is not forwarded\n", "-")
        } else {
            tracing::debug!(method = %parts.method, "refusing the asterisk-form target on a method other than OPTIONS");
            Local::Reply(StatusCode::BAD_REQUEST, "bad request target\n", "-")
        });
    }
    // Path normalization: policy, routing and the backend all see the normalized path. The
    // URI is shared, not copied: the path can borrow from it while the head is rewritten.
    let uri = parts.uri.clone();
    let path = match normalize(uri.path()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(path = parts.uri.path(), error = %e, "refusing request path");
            account.path = parts.uri.path().to_owned();
            return Err(Local::Reply(StatusCode::BAD_REQUEST, "bad request path\n", "-"));
        }
    };
    account.path = path.as_ref().to_owned();
    if let Some(span) = account.span.as_deref_mut() {
        span.normalized(&path, parts.uri.query());
    }
    // Policy sees the authority that is forwarded: one that is not a valid authority, or that
    // carries userinfo (RFC 9110 §4.2.4, RFC 9113 §8.3.1), is refused.
    let Some(authority) = checked_authority(parts).filter(|_| host_fields_ok(parts)) else {
        tracing::debug!(uri = %parts.uri, host = ?parts.headers.get(header::HOST), "refusing request authority");
        return Err(Local::Reply(StatusCode::BAD_REQUEST, "bad request authority\n", "-"));
    };
    // A target that carries its authority (HTTP/2's `:authority`, HTTP/1.1's absolute form)
    // names the host, whatever `Host` says, and that authority is what is forwarded (RFC 9112
    // §3.2.2, RFC 9113 §8.3.1). A `Host` that differs is replaced before policy reads headers:
    // a `request.headers[host]` condition would otherwise judge a host the application never
    // sees.
    if parts.uri.authority().is_some()
        && !parts.headers.get_all(header::HOST).iter().all(|h| h.as_bytes() == authority.as_bytes())
    {
        let Ok(v) = HeaderValue::from_str(&authority) else {
            return Err(Local::Reply(StatusCode::BAD_REQUEST, "bad request authority\n", "-"));
        };
        tracing::debug!(host = ?parts.headers.get(header::HOST), %authority, "Host replaced by the target's authority");
        parts.headers.insert(header::HOST, v);
    }
    let target = Target { path, query: parts.uri.query().map(str::to_owned), host: bare_host(&authority), authority };

    authorize(proxy, ctx, parts, &target, account)?;
    let mut plan = route_plan(ctx, parts, &target, account)?;
    let Target { path, query, authority, .. } = target;
    plan.authority.get_or_insert(authority);
    // The backend's service, looked up once for both its declared version and its endpoints.
    let backend = plan.backend.take().map(|(host, port)| {
        let service = ctx.snapshot.service_by_host(&host);
        Backend { host, port, service }
    });
    // The version spoken to the backend: what its service port declares (Istio's explicit
    // protocol selection), else what the client speaks. An upgrade always goes as HTTP/1.1,
    // the only version it exists in.
    let declared = backend.as_ref().and_then(|b| declared_version(b.service?, b.port));
    plan.upstream = if upgrade { Version::H1 } else { declared.unwrap_or(downstream) };
    upstream_head(parts, &plan, &path, query.as_deref(), account)?;
    let endpoints = endpoints(ctx, backend, account)?;
    Ok((plan, endpoints))
}

/// L7 authorization; a denial is counted per policy.
fn authorize(
    proxy: &Proxy,
    ctx: &Ctx<'_>,
    parts: &::http::request::Parts,
    t: &Target<'_>,
    account: &mut Account,
) -> Result<(), Local> {
    let down = ctx.down;
    let facts = Facts {
        principal: down.peer.as_str().strip_prefix("spiffe://"),
        namespace: Some(down.peer.namespace()),
        source_ip: Some(down.client.ip()),
        destination_ip: Some(down.target.ip()),
        port: down.dest.port(),
        http: Some(HttpFacts {
            host: &t.authority,
            method: parts.method.as_str(),
            path: &t.path,
            headers: &parts.headers,
        }),
    };
    let svc = down.dest.service().map(|s| s.hostname.as_str());
    let decision = authz::evaluate(ctx.snapshot.policies_for(svc), &facts);
    for a in &decision.audited {
        tracing::info!(target: "access", audit_policy = %a, method = %parts.method, path = &*t.path, "AUDIT policy matched");
    }
    let allowed = decision.allowed;
    if !allowed {
        proxy.inputs.metrics.denied(decision.policy());
    }
    account.decision = Some(decision);
    if allowed { Ok(()) } else { Err(Local::Reply(StatusCode::FORBIDDEN, "RBAC: access denied", "-")) }
}

/// Route lookup, backend by weight and the filters (request headers are modified in place).
fn route_plan<'a>(
    ctx: &Ctx<'a>,
    parts: &mut ::http::request::Parts,
    t: &Target<'_>,
    account: &mut Account,
) -> Result<Plan<'a>, Local> {
    let down = ctx.down;
    let view = RequestView {
        method: &parts.method,
        path: &t.path,
        query: t.query.as_deref(),
        headers: &parts.headers,
        host: &t.host,
    };
    let entry = match &down.dest {
        Destination::Service(s, port) => match ctx.snapshot.routes(&s.hostname, *port) {
            Some(table) => match route::find(table, &view) {
                Some(e) => Some(e),
                None => return Err(Local::Reply(StatusCode::NOT_FOUND, "no route matched\n", "NR")),
            },
            None => None,
        },
        Destination::Workload(..) => None,
    };
    let mut plan = Plan {
        backend: None,
        response_mods: Vec::new(),
        mirrors: Vec::new(),
        retry: None,
        request_timeout: None,
        backend_timeout: None,
        path: None,
        authority: None,
        upstream: Version::H1,
    };
    let Some(e) = entry else {
        plan.backend = down.dest.service().map(|s| (lower(&s.hostname), down.dest.port()));
        return Ok(plan);
    };
    let rule = &e.rule;
    account.route = Some(rule.clone());
    if let Some(span) = account.span.as_deref_mut() {
        span.routed(rule, &e.matcher, down.dest.port());
    }
    plan.retry = rule.retry.clone();
    plan.request_timeout = rule.request_timeout;
    plan.backend_timeout = rule.backend_timeout;
    let backend = if rule.backends.is_empty() || rule.total_weight == 0 {
        None
    } else {
        let mut x = rand::rng().random_range(0..rule.total_weight);
        rule.backends.iter().find(|b| {
            if x < u64::from(b.weight) {
                true
            } else {
                x -= u64::from(b.weight);
                false
            }
        })
    };
    let filters = rule.filters.iter().chain(backend.into_iter().flat_map(|b| b.filters.iter()));
    for f in filters {
        match f {
            Filter::RequestHeaders(m) => m.apply(&mut parts.headers),
            Filter::ResponseHeaders(m) => plan.response_mods.push(m.clone()),
            Filter::Redirect(r) => {
                let scheme = parts.uri.scheme_str().unwrap_or("http");
                let prefix = e.matcher.prefix();
                let loc = location(r, scheme, &t.host, down.dest.port(), &t.path, prefix, t.query.as_deref());
                return Err(Local::Redirect(r.status, loc));
            }
            Filter::Rewrite(r) => {
                if let Some(h) = &r.hostname {
                    plan.authority = Some(h.clone());
                }
                if let Some(m) = &r.path {
                    plan.path = Some(m.apply(&t.path, e.matcher.prefix()));
                }
            }
            Filter::Mirror { backend, percent } => plan.mirrors.push((backend, *percent)),
        }
    }
    match backend {
        Some(b) => plan.backend = Some((lower(&b.hostname), b.port)),
        None => return Err(Local::Reply(StatusCode::INTERNAL_SERVER_ERROR, "no backend\n", "NR")),
    }
    Ok(plan)
}

/// The head of the upstream request: hop-by-hop headers gone, trace context, rewritten
/// target and `Host` (HTTP/1.1) or `:authority` (HTTP/2), the version spoken to the
/// application.
fn upstream_head(
    parts: &mut ::http::request::Parts,
    plan: &Plan<'_>,
    path: &str,
    query: Option<&str>,
    account: &mut Account,
) -> Result<(), Local> {
    let version = plan.upstream;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert("traceparent", account.trace.header_value());
    if let Some(p) = &plan.path {
        account.path.clone_from(p);
    }
    let path = plan.path.as_deref().unwrap_or(path);
    let authority = plan.authority.as_deref().unwrap_or_default();
    if let (Some(span), Some(a)) = (account.span.as_deref_mut(), plan.authority.as_deref()) {
        span.rewritten_authority(a);
    }
    if path == parts.uri.path() && already_in_form(parts, version, authority) {
        // The client's target, in the form the application's version wants: sent as it came.
        return Ok(());
    }
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    if retarget(parts, version, authority, &pq) {
        Ok(())
    } else {
        Err(Local::Reply(StatusCode::BAD_REQUEST, "bad request target\n", "-"))
    }
}

/// Whether the request's target is already what [`retarget`] would make of it with
/// `authority`: origin-form with that `Host` for HTTP/1.1; an `http` absolute URI with that
/// authority and no `Host` for HTTP/2. The `Host` is compared because a RequestHeaderModifier
/// may have set it after policy checked the authority.
fn already_in_form(parts: &::http::request::Parts, version: Version, authority: &str) -> bool {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match version {
        Version::H1 => {
            parts.version == ::http::Version::HTTP_11
                && parts.uri.authority().is_none()
                && hosts.next().is_some_and(|h| h.as_bytes() == authority.as_bytes())
                && hosts.next().is_none()
        }
        Version::H2 => {
            parts.version == ::http::Version::HTTP_2
                && parts.uri.scheme_str() == Some("http")
                && parts.uri.authority().is_some_and(|a| a.as_str() == authority)
                && hosts.next().is_none()
        }
    }
}

/// `s` in lower case, borrowed when it already is (hostnames in the snapshot are).
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(s.to_ascii_lowercase()) } else { Cow::Borrowed(s) }
}

/// The request's authority, the URI's (HTTP/2, absolute form) else `Host`, if it is one the
/// waypoint forwards: `None` when `Host` is not a valid authority (bytes that are not ASCII,
/// say), or when the authority carries userinfo, which a sender must not generate and
/// `:authority` must not include (RFC 9110 §4.2.4, RFC 9113 §8.3.1): a host policy would
/// compare `u@host` while the application reads `host`. No authority at all is `Some("")`.
fn checked_authority(parts: &::http::request::Parts) -> Option<String> {
    let authority = match (parts.uri.authority(), parts.headers.get(header::HOST)) {
        (Some(a), _) => a.as_str().to_owned(),
        (None, Some(h)) if h.is_empty() => String::new(),
        (None, Some(h)) => ::http::uri::Authority::try_from(h.as_bytes()).ok()?.as_str().to_owned(),
        (None, None) => String::new(),
    };
    (!authority.contains('@')).then_some(authority)
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a `Host` field, or with more than one, is
/// answered 400 (whatever the form of its target); HTTP/1.0 needs none, and HTTP/2 carries
/// `:authority` instead. More than one is refused in any version: the authority is taken from
/// the first, while a `request.headers[host]` condition would read them all joined.
fn host_fields_ok(parts: &::http::request::Parts) -> bool {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    hosts.next().is_none() && (first.is_some() || parts.version != ::http::Version::HTTP_11)
}

/// Puts the request's target, host and version in the form `version` wants: origin-form and
/// `Host` for HTTP/1.1, an absolute URI (its authority is `:authority`) and no `Host` for
/// HTTP/2. `false` if `authority` and `pq` make no URI, or `authority` no `Host`: a request
/// left with the `Host` it had would go with an authority other than the one mirrored.
fn retarget(parts: &mut ::http::request::Parts, version: Version, authority: &str, pq: &str) -> bool {
    let uri = match version {
        Version::H2 => Uri::builder().scheme("http").authority(authority).path_and_query(pq).build(),
        Version::H1 => Uri::builder().path_and_query(pq).build(),
    };
    let Ok(uri) = uri else { return false };
    match version {
        // A request from an HTTP/1.1 client converted to HTTP/2 carries its host in the URI.
        Version::H2 => {
            parts.headers.remove(header::HOST);
        }
        Version::H1 => {
            let Ok(v) = HeaderValue::from_str(authority) else { return false };
            parts.headers.insert(header::HOST, v);
        }
    }
    parts.uri = uri;
    parts.version = match version {
        Version::H1 => ::http::Version::HTTP_11,
        Version::H2 => ::http::Version::HTTP_2,
    };
    true
}

/// The HTTP version a service port declares, if it declares one.
fn declared_version(svc: &ztunnel::state::Service, port: u16) -> Option<Version> {
    match svc.app_protocol(port)? {
        AppProtocol::Http11 => Some(Version::H1),
        AppProtocol::Http2 | AppProtocol::Grpc => Some(Version::H2),
        AppProtocol::Tcp | AppProtocol::Tls => None,
    }
}

/// The plan's backend service with its service as looked up.
struct Backend<'a> {
    /// FQDN, lower case: the balancer's and the backend policies' key.
    host: Cow<'a, str>,
    port: u16,
    /// `None`: no such service.
    service: Option<&'a Arc<ztunnel::state::Service>>,
}

/// The endpoints of the planned backend (the destination workload when not routed to a
/// service, `backend` being `None`), the backend's hostname and its locality preference. A
/// service with no endpoint to use is answered 503 here, counted and logged with the reason.
fn endpoints<'a>(ctx: &Ctx<'a>, backend: Option<Backend<'a>>, account: &mut Account) -> Result<Endpoints<'a>, Local> {
    match backend {
        Some(Backend { host, port, service: Some(s) }) => {
            account.labels.service = Some(s.clone());
            if let Some(span) = account.span.as_deref_mut() {
                span.backend(&s.hostname, port);
            }
            let (mesh, src) = (&ctx.snapshot.mesh, ctx.snapshot.source());
            let endpoints = mesh.endpoints_for(src, s, port);
            if endpoints.is_empty() {
                let (reason, why) = balance::no_endpoint_reason(mesh, src, s, port);
                account.metrics.no_endpoint(&s.hostname, reason);
                tracing::info!(service = s.hostname, port, reason = why, "no endpoint for the request");
                return Err(Local::Reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n", "UH"));
            }
            Ok((endpoints, host, Prefer::of(s, src)))
        }
        Some(Backend { service: None, .. }) => {
            Err(Local::Reply(StatusCode::INTERNAL_SERVER_ERROR, "unknown backend service\n", "NR"))
        }
        None => match &ctx.down.dest {
            Destination::Workload(w, port) => {
                Ok((vec![Endpoint { workload: w.clone(), port: *port }], Cow::Borrowed(""), Prefer::none()))
            }
            Destination::Service(..) => Ok((Vec::new(), Cow::Borrowed(""), Prefer::none())),
        },
    }
}

/// A backend's endpoints, hostname and locality preference.
type Endpoints<'a> = (Vec<Endpoint>, Cow<'a, str>, Prefer<'a>);

/// Sends a copy of the request (its head as forwarded, `authority` the one it is forwarded
/// with) to an endpoint of the mirror backend; the answer is read and dropped, failures only
/// logged.
fn spawn_mirror(
    proxy: &Arc<Proxy>,
    ctx: &Ctx<'_>,
    backend: &route::Backend,
    parts: &::http::request::Parts,
    authority: &str,
    body: Body,
    version: Version,
) {
    // The hostname was made lower case when the route was compiled.
    let Some(svc) = ctx.snapshot.service_by_host(&backend.hostname) else {
        tracing::debug!(backend = backend.hostname, "mirror backend unknown");
        return;
    };
    // Picked now, while the snapshot (the source, the service's preferences) is at hand.
    let src = ctx.snapshot.source();
    let endpoints = ctx.snapshot.mesh.endpoints_for(src, svc, backend.port);
    let policy = ctx.snapshot.backend_policy(&svc.hostname);
    let Some(picked) = proxy.balancer.pick(&svc.hostname, &endpoints, policy, Prefer::of(svc, src), None, None) else {
        tracing::debug!(backend = backend.hostname, "mirror backend has no endpoint");
        return;
    };
    let proxy = proxy.clone();
    let client = ctx.down.client;
    let mut parts = parts.clone();
    parts.extensions = ::http::Extensions::new();
    // The copy goes in the version its own backend declares, like any request would.
    let version = match declared_version(svc, backend.port) {
        Some(v) if v != version => {
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            if !retarget(&mut parts, v, authority, &pq) {
                return;
            }
            v
        }
        _ => version,
    };
    tokio::spawn(async move {
        let identity = picked.endpoint.workload.identity.clone();
        let dest = Dest { addr: picked.addr, identity: &identity, version, client: Some(client) };
        let r = async {
            let s = proxy.upstreams.sender(dest).await?;
            s.send(Request::from_parts(parts, body)).await
        }
        .await;
        match r {
            // Read off and dropped, never kept (the answer may be endless).
            Ok(resp) => body::discard(resp.into_body(), body::MIRROR_ANSWER_READ).await,
            Err(e) => tracing::debug!(error = %e, "mirror request failed"),
        }
    });
}

/// `boxed_unsync` for our own body types.
trait BoxedCompat {
    fn boxed_unsync_compat(self) -> Body;
}

impl<B> BoxedCompat for B
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = super::BoxError> + Send + 'static,
{
    fn boxed_unsync_compat(self) -> Body {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Location of a redirect (Gateway API HTTPRequestRedirectFilter): the scheme's
    /// well-known port left out, the service port otherwise; an IPv6 host in brackets.
    #[test]
    fn redirect_locations() {
        let redirect = |scheme: Option<&str>, hostname: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(str::to_owned),
            hostname: hostname.map(str::to_owned),
            path: None,
            port,
            status: StatusCode::FOUND,
        };
        let cases = [
            (redirect(None, None, None), "svc.local", 80, "http://svc.local/a?q=1"),
            (redirect(None, None, None), "svc.local", 8080, "http://svc.local:8080/a?q=1"),
            (redirect(Some("https"), None, None), "svc.local", 8080, "https://svc.local/a?q=1"),
            (redirect(Some("https"), None, Some(8443)), "svc.local", 80, "https://svc.local:8443/a?q=1"),
            (redirect(None, Some("other.local"), Some(80)), "svc.local", 8080, "http://other.local/a?q=1"),
            (redirect(None, None, None), &bare_host("[FD00::1]:8080"), 8080, "http://[fd00::1]:8080/a?q=1"),
            (redirect(Some("https"), None, None), "fd00::1", 80, "https://[fd00::1]/a?q=1"),
        ];
        for (r, host, port, want) in cases {
            let loc = location(&r, "http", host, port, "/a", None, Some("q=1"));
            assert_eq!(loc, want, "{r:?} {host} {port}");
            assert!(loc.parse::<Uri>().is_ok_and(|u| u.host().is_some()), "{loc}");
        }
    }

    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    /// What crosses a hop: the connection-specific fields go (those `Connection` names too),
    /// `TE` comes back as `trailers` alone when the client listed it; framing fields the proxy
    /// keeps (`content-length`, `trailer`) and everything else stay.
    #[test]
    fn only_connection_specific_fields_are_stripped() {
        let mut h = fields(&[
            ("connection", "keep-alive, x-private"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-private", "1"),
            ("te", "gzip;q=0.5"),
            ("te", "Trailers"),
            ("content-length", "3"),
            ("trailer", "grpc-status"),
            ("host", "shop.local"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                ("content-length", "3"),
                ("host", "shop.local"),
                ("te", "trailers"),
                ("trailer", "grpc-status"),
                ("x-kept", "1")
            ]
        );
        // A `TE` the `Connection` field names goes whole; one without `trailers` goes too.
        for te in [&[("connection", "te"), ("te", "trailers")][..], &[("te", "gzip")]] {
            let mut h = fields(te);
            strip_hop_by_hop(&mut h);
            assert!(h.is_empty(), "{te:?} left {h:?}");
        }
    }

    fn head(version: ::http::Version, uri: &str, hosts: &[&str]) -> ::http::request::Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// A head sent as it came must be exactly what `retarget` would have made of it, and
    /// every head `retarget` would change must be rebuilt.
    #[test]
    fn a_head_already_in_form_is_what_retarget_makes() {
        use ::http::Version as V;
        let cases = [
            (head(V::HTTP_11, "/a/b?x=1", &["shop.local:8080"]), Version::H1, true),
            (head(V::HTTP_11, "/a/b", &["shop.local", "evil.local"]), Version::H1, false),
            (head(V::HTTP_11, "/a/b", &[]), Version::H1, false),
            (head(V::HTTP_11, "/a/b", &["shop.local"]), Version::H2, false),
            (head(V::HTTP_2, "http://shop.local/a/b?x=1", &[]), Version::H2, true),
            (head(V::HTTP_2, "https://shop.local/a/b", &[]), Version::H2, false),
            (head(V::HTTP_2, "http://shop.local/a/b", &["shop.local"]), Version::H2, false),
            (head(V::HTTP_2, "http://shop.local/a/b", &[]), Version::H1, false),
        ];
        for (parts, version, in_form) in cases {
            let what = format!("{:?} {} {:?} -> {version:?}", parts.version, parts.uri, parts.headers);
            let authority = checked_authority(&parts).unwrap();
            assert_eq!(already_in_form(&parts, version, &authority), in_form, "{what}");
            let mut rebuilt = head(parts.version, &parts.uri.to_string(), &[]);
            rebuilt.headers = parts.headers.clone();
            let pq = parts.uri.path_and_query().unwrap().as_str();
            assert!(retarget(&mut rebuilt, version, &authority, pq), "{what}");
            let same = rebuilt.uri == parts.uri
                && rebuilt.version == parts.version
                && rebuilt.headers.get_all(header::HOST).iter().eq(parts.headers.get_all(header::HOST).iter());
            assert_eq!(
                same, in_form,
                "{what}: retarget made {:?} {} {:?}",
                rebuilt.version, rebuilt.uri, rebuilt.headers
            );
        }
        // A head carrying an authority other than the one to forward (a `Host` a header filter
        // set, say) is rebuilt.
        assert!(!already_in_form(&head(V::HTTP_11, "/a", &["filtered.local"]), Version::H1, "shop.local"));
        assert!(!already_in_form(&head(V::HTTP_2, "http://filtered.local/a", &[]), Version::H2, "shop.local"));
    }
}
