//! Outbound (15001): connections a pod makes, found by their original destination, carried
//! over HBONE with the pod's identity or passed through when the destination is not meshed.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use hbone::tunnel::client::ConnectTarget;
use hbone::tunnel::copy::copy_bidirectional;
use hbone::tunnel::pool::PoolKey;
use tokio::net::{TcpListener, TcpStream};

use http::{HeaderName, HeaderValue};

use crate::metrics::{Opened, Reporter, ResponseFlags, SecurityPolicy};
use crate::state::{Workload, WorkloadType};

use super::route::{Route, route};
use super::sockets::original_dst;
use super::telemetry::Ends;
use super::{Pod, PodSockets};

/// Accepts the pod's captured outbound connections until the task is dropped.
pub(crate) async fn serve<S: PodSockets>(pod: Arc<Pod<S>>, listener: TcpListener) {
    super::accept_loop(pod, listener, "outbound", |pod, tcp, client| async move { handle(&pod, tcp, client).await })
        .await;
}

async fn handle<S: PodSockets>(pod: &Pod<S>, tcp: TcpStream, client: std::net::SocketAddr) {
    let started = Instant::now();
    let metrics = &pod.inputs.metrics;
    let dst = match original_dst(&tcp) {
        Ok(d) => d,
        Err(e) => {
            metrics.denied(Reporter::Source, "no_original_destination");
            tracing::warn!(pod = %pod.uid, %client, error = %e, "outbound connection without an original destination");
            return;
        }
    };
    // Aimed at ztunnel itself: the application dialled a ztunnel port of its own pod, which
    // is not redirected (loopback, or the pod's own address over lo), so the original
    // destination is the listener itself. Serving it would connect to ourselves, over and over.
    // The same port elsewhere (a server outside the mesh on 15008, say) is an ordinary
    // destination, as in Istio; a peer proxy refuses a tunnel to its own ports itself.
    if pod.inputs.cfg.is_own_port(dst.port()) && tcp.local_addr().map_or(true, |local| local == dst) {
        metrics.denied(Reporter::Source, "destination_is_ztunnel");
        tracing::info!(pod = %pod.uid, %client, %dst, "refusing connection addressed to a ztunnel port");
        abort(tcp);
        return;
    }
    let state = pod.inputs.state.load();
    let src = state.workload_by_uid(&pod.uid).cloned();
    let mut ends = Ends {
        src_addr: Some(client),
        src: src.as_deref(),
        src_identity: Some(&pod.identity),
        dst_addr: Some(dst),
        ..Ends::default()
    };
    let decision = route(&state, src.as_deref(), dst, pod.inputs.cfg.hbone_port);
    // Decided: the connection keeps only what it uses, not the whole snapshot.
    drop(state);
    match decision {
        Route::Hbone { workload, service, target, peer } => {
            let dst_identity = workload.identity().clone();
            ends.dst = Some(&workload);
            ends.service = service.as_deref();
            ends.dst_addr = Some(target);
            tunnel(pod, tcp, client, &mut ends, &dst_identity, target, peer, "outbound", started).await;
        }
        Route::Waypoint { waypoint, service, workload, target, peer } => {
            // The tunnel's peer (and expected identity) is the waypoint; the labels keep naming
            // what the application addressed, with the waypoint as the principal it reached.
            let dst_identity = waypoint.identity().clone();
            ends.dst = Some(workload.as_deref().unwrap_or(&waypoint));
            ends.service = service.as_deref();
            ends.dst_addr = Some(target);
            tunnel(pod, tcp, client, &mut ends, &dst_identity, target, peer, "outbound_waypoint", started).await;
        }
        Route::Passthrough { dst, workload, service } => {
            ends.dst = workload.as_deref();
            ends.service = service.as_deref();
            ends.dst_addr = Some(dst);
            // Counted opened before the connect, as Istio's ztunnel does; a failed connect is
            // counted closed with `CONNECT`.
            let opened = Opened::new(metrics, ends.labels(Reporter::Source, SecurityPolicy::None));
            let upstream = match pod.connect(dst, None).await {
                Ok(u) => u,
                Err(e) => {
                    metrics.denied(Reporter::Source, "passthrough_connect_failed");
                    opened.refused(ResponseFlags::Connect);
                    ends.log("passthrough", ResponseFlags::Connect, None, 0, 0, started.elapsed(), Some(&e));
                    abort(tcp);
                    return;
                }
            };
            let conn = opened.carried();
            let (sent, received, err) = copy_plain(tcp, upstream).await;
            conn.close(sent, received);
            ends.log(
                "passthrough",
                ResponseFlags::None,
                None,
                sent,
                received,
                started.elapsed(),
                err.as_ref().map(|e| e as _),
            );
        }
        Route::WaypointUnavailable { destination, waypoint, why } => {
            metrics.denied(Reporter::Source, "waypoint_unavailable");
            let why = format!("{destination} must be reached through waypoint {waypoint}, which is unusable: {why}");
            ends.log("outbound", ResponseFlags::None, None, 0, 0, started.elapsed(), Some(&why));
            abort(tcp);
        }
        Route::NoEndpoint { service } => {
            metrics.denied(Reporter::Source, "no_healthy_endpoint");
            ends.service = Some(&service);
            let why = format!("service {} has no healthy endpoint for port {}", service.hostname, dst.port());
            ends.log("outbound", ResponseFlags::None, None, 0, 0, started.elapsed(), Some(&why));
            abort(tcp);
        }
    }
}

/// HBONE from the pod's identity to `peer` (expected to be `dst_identity`), `:authority` =
/// `target`, then bytes both ways with metrics and an access-log line.
#[allow(clippy::too_many_arguments)]
async fn tunnel<'a, S: PodSockets>(
    pod: &Pod<S>,
    tcp: TcpStream,
    client: std::net::SocketAddr,
    ends: &mut Ends<'a>,
    dst_identity: &'a hbone::Identity,
    target: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    direction: &'static str,
    started: Instant,
) {
    let metrics = &pod.inputs.metrics;
    ends.dst_identity = Some(dst_identity);
    let key = PoolKey { src: pod.identity.clone(), dst: dst_identity.clone(), addr: peer };
    let mut request = ConnectTarget::new(target, Some(client));
    if let Some(baggage) = ends.src.and_then(baggage) {
        request.headers.insert(BAGGAGE, baggage);
    }
    request.headers.insert(TRACEPARENT, traceparent());
    // Counted opened before the tunnel is asked for; a tunnel that cannot be had (whatever the
    // cause, the peer's refusal included: the peer reports its own reason) is counted closed
    // with `CONNECT`, the cause being in `ztunnel_connections_denied_total` and the log.
    let opened = Opened::new(metrics, ends.labels(Reporter::Source, SecurityPolicy::MutualTls));
    let stream = match pod.pool.connect(&key, &request).await {
        Ok(s) => s,
        Err(e) => {
            metrics.denied(Reporter::Source, refusal_reason(&e));
            opened.refused(ResponseFlags::Connect);
            ends.log(direction, ResponseFlags::Connect, None, 0, 0, started.elapsed(), Some(&e));
            abort(tcp);
            return;
        }
    };
    let conn = opened.carried();
    let outcome = copy_bidirectional(tcp, stream).await;
    conn.close(outcome.to_tunnel, outcome.from_tunnel);
    let err = outcome.result.as_ref().err().map(|e| e as &dyn std::fmt::Display);
    ends.log(direction, ResponseFlags::None, None, outcome.to_tunnel, outcome.from_tunnel, started.elapsed(), err);
}

const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The source workload as W3C `baggage`, in the keys Istio's ztunnel sends: the far end (a
/// waypoint, or the destination's proxy) learns from it who the client is beyond its identity,
/// for its telemetry. `None` when a field cannot be a header value (never, for names that
/// Kubernetes accepts).
fn baggage(src: &Workload) -> Option<HeaderValue> {
    let kind = match src.workload_type {
        WorkloadType::Deployment => "deployment",
        WorkloadType::Cronjob => "cronjob",
        WorkloadType::Pod => "pod",
        WorkloadType::Job => "job",
    };
    let value = format!(
        "k8s.cluster.name={},k8s.namespace.name={},k8s.{kind}.name={},service.name={},service.version={}",
        src.cluster_id,
        src.namespace(),
        src.metric_name(),
        src.canonical_name,
        src.canonical_revision,
    );
    HeaderValue::try_from(value).ok()
}

/// A W3C `traceparent` starting a trace for this connection (not sampled: ztunnel records no
/// spans), so that what the far end traces hangs off one trace per connection.
fn traceparent() -> HeaderValue {
    let (trace, span) = (rand::random::<u128>().max(1), rand::random::<u64>().max(1));
    HeaderValue::try_from(format!("00-{trace:032x}-{span:016x}-00")).expect("hex digits are header text")
}

/// TCP to TCP, half-close carried both ways; returns bytes each way and the error, if any.
pub(crate) async fn copy_plain(a: TcpStream, b: TcpStream) -> (u64, u64, Option<std::io::Error>) {
    copy_plain_until(a, b, std::future::pending()).await
}

/// As [`copy_plain`], and ends early when `stop` completes, resetting both sockets; the
/// bytes counted then are those read from each side so far (some may not have been written
/// on when the copy stopped).
pub(crate) async fn copy_plain_until(
    mut a: TcpStream,
    mut b: TcpStream,
    stop: impl Future<Output = ()>,
) -> (u64, u64, Option<std::io::Error>) {
    let mut ca = Counted { io: &mut a, read: 0 };
    let mut cb = Counted { io: &mut b, read: 0 };
    let copied = tokio::select! {
        biased;
        r = tokio::io::copy_bidirectional(&mut ca, &mut cb) => Some(r),
        () = stop => None,
    };
    let (ab, ba) = (ca.read, cb.read);
    match copied {
        Some(Ok((ab, ba))) => (ab, ba, None),
        Some(Err(e)) => {
            let _ = a.set_zero_linger();
            let _ = b.set_zero_linger();
            (ab, ba, Some(e))
        }
        None => {
            let _ = a.set_zero_linger();
            let _ = b.set_zero_linger();
            (ab, ba, Some(std::io::Error::other("stopped")))
        }
    }
}

/// A socket that counts the bytes read from it, so a copy cut short still knows how much it
/// moved.
struct Counted<'a> {
    io: &'a mut TcpStream,
    read: u64,
}

impl tokio::io::AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.io).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl tokio::io::AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// Refuses a captured connection the way a failed connect looks to the application: RST.
pub(crate) fn abort(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

fn refusal_reason(e: &hbone::tunnel::client::ConnectError) -> &'static str {
    use hbone::tunnel::client::ConnectError as E;
    match e {
        E::Refused { status, .. } if status.as_u16() == 401 => "denied_by_destination_policy",
        E::Refused { .. } => "refused_by_destination",
        E::NoCertificate(_) => "no_certificate",
        E::Tls { .. } => "tls_failed",
        E::Tcp { .. } | E::HandshakeTimeout(_) => "connect_failed",
        E::Http2 { .. } => "http2_failed",
        E::AnswerTimeout { .. } => "connect_unanswered",
    }
}
