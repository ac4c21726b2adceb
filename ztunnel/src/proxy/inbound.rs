//! Inbound HBONE (15008): tunnels from other proxies. The peer is verified by mesh TLS; a
//! workload with a waypoint admits only the waypoint's identity; each CONNECT is authorized
//! against the destination workload's policies, then delivered to the pod from inside its
//! namespace, from the original client's address.

use std::sync::Arc;
use std::time::Instant;

use hbone::tunnel::copy::copy_bidirectional_until;
use hbone::tunnel::server::{InboundConnect, Server};
use http::StatusCode;
use tokio::net::TcpListener;

use crate::log_budget::LogBudget;
use crate::metrics::{Opened, Reporter, ResponseFlags, SecurityPolicy};
use crate::state::ConnInfo;

use super::admitted::Decided;
use super::telemetry::{Ends, inbound_service};
use super::{Pod, PodSockets};

/// Serves HBONE for the pod until the task is dropped.
pub(crate) async fn serve<S: PodSockets>(pod: Arc<Pod<S>>, listener: TcpListener) {
    let tls = hbone::tls::server_config(&pod.inputs.certs, pod.identity.clone());
    let h2 = pod.inputs.cfg.pool.h2.clone();
    let handler_pod = pod.clone();
    let server = Server::new(tls, h2, move |req: InboundConnect| {
        let pod = handler_pod.clone();
        let live = pod.inputs.drain.track();
        async move {
            handle(&pod, req).await;
            drop(live);
        }
    })
    .limit_handshakes(pod.inputs.handshakes.clone());
    // Each connection is counted by the drain as well as each stream: when shutdown starts
    // it sends GOAWAY, and the process stays until the client has moved on (or the drain
    // deadline), so no stream the client sent before it saw the GOAWAY is cut.
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(pod = %pod.uid, error = %e, "HBONE accept failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        let live = pod.inputs.drain.track();
        let shutdown = pod.inputs.drain.started();
        let pod = pod.clone();
        tokio::spawn(async move {
            // A pod's listeners come up while its first certificate is still being issued (and
            // again when it is recreated): a peer that connects in that window waits for the
            // certificate instead of having its handshake refused. Without one by the
            // handshake deadline, the handshake refuses and logs why.
            let limit = pod.inputs.cfg.pool.h2.handshake_timeout;
            let _ = pod.inputs.certs.wait_for(&pod.identity, limit).await;
            if let Err(e) = server.serve_connection_until(tcp, peer, shutdown).await {
                if let Some(reason) = e.refusal_reason() {
                    pod.inputs.metrics.denied(Reporter::Destination, reason);
                }
                if let Some(skipped) = FAILED.admit() {
                    tracing::info!(error = %e, skipped, "HBONE connection refused or failed");
                }
            }
            drop(live);
        });
    }
}

/// Lines for failed HBONE connections: any client can fail a handshake on purpose, as often
/// as it connects.
static FAILED: LogBudget = LogBudget::per_second(10);

async fn handle<S: PodSockets>(pod: &Pod<S>, req: InboundConnect) {
    let started = Instant::now();
    let metrics = &pod.inputs.metrics;
    let state = pod.inputs.state.load();
    let peer = req.peer_identity().clone();
    // The original client as the peer states it in `forwarded`, believed only when it is the
    // address the tunnel comes from: a peer must not pick the source address that IP-based
    // policy sees and that we connect from (a source port is all it may add).
    let client = match req.forwarded_for() {
        Some(f) if f.ip() == req.peer_addr().ip() => f,
        Some(f) => {
            tracing::debug!(peer = %req.peer_addr(), claimed = %f, "ignoring a forwarded address that is not the peer's");
            req.peer_addr()
        }
        None => req.peer_addr(),
    };
    let authority = req.authority();
    let dst_identity = pod.identity.clone();
    let src = state.workload_by_ip(client.ip()).cloned();
    let Some(me) = state.workload_by_uid(&pod.uid).cloned() else {
        metrics.denied(Reporter::Destination, "unknown_destination_workload");
        tracing::warn!(pod = %pod.uid, %peer, "refusing tunnel: this pod is not in the state yet");
        req.refuse(StatusCode::SERVICE_UNAVAILABLE, "destination workload unknown to its proxy");
        return;
    };
    let service = inbound_service(&state, &me, authority.port()).cloned();
    let ends = Ends {
        src_addr: Some(client),
        src: src.as_deref(),
        src_identity: Some(&peer),
        dst_addr: Some(authority),
        dst: Some(&me),
        dst_identity: Some(&dst_identity),
        service: service.as_deref(),
    };
    // Port 0 is no destination: connecting there fails, which would read as the workload
    // being unreachable (503) when it is the request that is malformed.
    if authority.port() == 0 {
        metrics.denied(Reporter::Destination, "bad_authority");
        let why = format!(":authority {authority} has port 0, which names no destination");
        ends.log("inbound", ResponseFlags::None, None, 0, 0, started.elapsed(), Some(&why));
        req.refuse(StatusCode::BAD_REQUEST, &why);
        return;
    }
    if pod.inputs.cfg.is_own_port(authority.port()) {
        metrics.denied(Reporter::Destination, "destination_is_ztunnel");
        req.refuse(StatusCode::BAD_REQUEST, "the destination port is one of ztunnel's own");
        return;
    }
    if !me.addresses.contains(&authority.ip()) {
        metrics.denied(Reporter::Destination, "wrong_destination");
        let why = format!("{authority} is not an address of {}/{}", me.namespace(), me.name);
        ends.log("inbound", ResponseFlags::None, None, 0, 0, started.elapsed(), Some(&why));
        req.refuse(StatusCode::BAD_REQUEST, &why);
        return;
    }
    // A request for a destination that is this pod: counted opened from here on, as Istio's
    // ztunnel does (the malformed ones above are refused before it counts them), and closed
    // with the reason if it goes no further.
    let opened = Opened::new(metrics, ends.labels(Reporter::Destination, SecurityPolicy::MutualTls));
    // Before policy: a workload behind a waypoint is reached only through it (see
    // `state::waypoint_gate` for who counts as the waypoint, and why).
    if let Some(Err(denial)) = state.waypoint_gate(&me).map(|g| g.admit(Some(&peer))) {
        metrics.denied(Reporter::Destination, denial.reason());
        opened.refused(ResponseFlags::Deny);
        ends.log("inbound", ResponseFlags::Deny, Some(&denial), 0, 0, started.elapsed(), None);
        req.refuse(denial.status(), &denial.to_string());
        return;
    }
    let verdict = state.authorize(&ConnInfo {
        src_identity: Some(&peer),
        src_ip: client.ip(),
        dst_workload: &me,
        dst_ip: authority.ip(),
        dst_port: authority.port(),
    });
    let version = state.version();
    // Decided: the connection keeps only what it uses, not the whole snapshot.
    drop(state);
    let admitted = match verdict.allowed {
        true => pod.inputs.admitted().admit(
            Decided {
                src_identity: Some(&peer),
                src_ip: client.ip(),
                dst: &me,
                dst_ip: authority.ip(),
                dst_port: authority.port(),
                version,
            },
            &pod.inputs.state,
        ),
        false => Err(verdict.clone()),
    };
    let (verdict, mut admission) = match admitted {
        Ok(a) => (verdict, a),
        Err(refused) => {
            metrics.denied(Reporter::Destination, "policy");
            opened.refused(ResponseFlags::Deny);
            ends.log("inbound", ResponseFlags::Deny, Some(&refused), 0, 0, started.elapsed(), None);
            req.refuse(StatusCode::UNAUTHORIZED, &refused.to_string());
            return;
        }
    };
    let source = (pod.inputs.cfg.transparent_inbound && !client.ip().is_loopback()).then_some(client.ip());
    let app = match pod.connect(authority, source).await {
        Ok(t) => t,
        Err(e) => {
            metrics.denied(Reporter::Destination, "workload_unreachable");
            opened.refused(ResponseFlags::Connect);
            ends.log("inbound", ResponseFlags::Connect, Some(&verdict), 0, 0, started.elapsed(), Some(&e));
            req.refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("connect to {authority}: {e}"));
            return;
        }
    };
    let stream = match req.accept() {
        Ok(s) => s,
        Err(e) => {
            // The client went away while we connected (it cancelled, or its connection ended):
            // reset the workload's side, which would otherwise see a complete, empty exchange.
            // Counted closed with no flag (`opened` is dropped): it was neither refused nor failed.
            super::outbound::abort(app);
            ends.log("inbound", ResponseFlags::None, Some(&verdict), 0, 0, started.elapsed(), Some(&e));
            return;
        }
    };
    let conn = opened.carried();
    // For the destination, "received" is what came from the tunnel (the client's bytes).
    let mut revoked_by = None;
    let revoked = async { revoked_by = Some(admission.revoked().await) };
    let outcome = copy_bidirectional_until(app, stream, revoked).await;
    conn.close(outcome.from_tunnel, outcome.to_tunnel);
    let (verdict, err) = match revoked_by {
        Some(by) => (by, Some(&REVOKED as &dyn std::fmt::Display)),
        None => (verdict, outcome.result.as_ref().err().map(|e| e as &dyn std::fmt::Display)),
    };
    ends.log(
        "inbound",
        ResponseFlags::None,
        Some(&verdict),
        outcome.from_tunnel,
        outcome.to_tunnel,
        started.elapsed(),
        err,
    );
}

/// The access log's error for a connection closed by a policy change (the verdict beside it
/// names the policy).
pub(crate) const REVOKED: &str = "closed: the policy now refuses this connection";
