//! Inbound plaintext (15006): connections to the pod from outside the mesh. They carry no
//! identity, so policy sees none: `PeerAuthentication` STRICT (translated by the control
//! plane into a DENY of connections without a principal) refuses them, PERMISSIVE lets
//! them through. A workload that has a waypoint refuses them all: they cannot have come
//! through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{Opened, Reporter, ResponseFlags, SecurityPolicy};
use crate::state::ConnInfo;

use super::admitted::Decided;
use super::inbound::REVOKED;
use super::outbound::{abort, copy_plain_until};
use super::sockets::original_dst;
use super::telemetry::{Ends, inbound_service};
use super::{Pod, PodSockets};

/// Accepts the pod's captured plaintext inbound connections until the task is dropped.
pub(crate) async fn serve<S: PodSockets>(pod: Arc<Pod<S>>, listener: TcpListener) {
    super::accept_loop(pod, listener, "inbound plaintext", |pod, tcp, client| async move {
        handle(&pod, tcp, client).await
    })
    .await;
}

async fn handle<S: PodSockets>(pod: &Pod<S>, tcp: TcpStream, client: SocketAddr) {
    let started = Instant::now();
    let metrics = &pod.inputs.metrics;
    let dst = match original_dst(&tcp) {
        Ok(d) => d,
        Err(e) => {
            metrics.denied(Reporter::Destination, "no_original_destination");
            tracing::warn!(pod = %pod.uid, %client, error = %e, "inbound connection without an original destination");
            return;
        }
    };
    if pod.inputs.cfg.is_own_port(dst.port()) {
        metrics.denied(Reporter::Destination, "destination_is_ztunnel");
        abort(tcp);
        return;
    }
    let state = pod.inputs.state.load();
    let src = state.workload_by_ip(client.ip()).cloned();
    let Some(me) = state.workload_by_uid(&pod.uid).cloned() else {
        metrics.denied(Reporter::Destination, "unknown_destination_workload");
        abort(tcp);
        return;
    };
    let service = inbound_service(&state, &me, dst.port()).cloned();
    let ends = Ends {
        src_addr: Some(client),
        src: src.as_deref(),
        src_identity: None,
        dst_addr: Some(dst),
        dst: Some(&me),
        dst_identity: Some(&pod.identity),
        service: service.as_deref(),
    };
    // Only the pod's own addresses are served. The capture takes whatever reaches the pod's
    // interfaces, so a packet for another address (a neighbour aiming at the pod's MAC, a
    // route through the pod) would otherwise be relayed from inside the pod, with the pod's
    // address as its source: an open relay past any network policy that trusts the pod. Not
    // counted in Istio's families, as Istio's ztunnel does with an unknown destination.
    if !me.addresses.contains(&dst.ip()) {
        metrics.denied(Reporter::Destination, "wrong_destination");
        let why = format!("{} is not an address of {}/{}", dst.ip(), me.namespace(), me.name);
        ends.log("inbound_plaintext", ResponseFlags::None, None, 0, 0, started.elapsed(), Some(&why));
        abort(tcp);
        return;
    }
    // Counted opened from here on, and closed with the reason if it goes no further (see
    // `inbound`).
    let opened = Opened::new(metrics, ends.labels(Reporter::Destination, SecurityPolicy::None));
    // Plaintext has no identity, so it is never the waypoint: a workload behind one refuses it,
    // also from clients outside the mesh (see `state::waypoint_gate`).
    if let Some(Err(denial)) = state.waypoint_gate(&me).map(|g| g.admit(None)) {
        metrics.denied(Reporter::Destination, denial.reason());
        opened.refused(ResponseFlags::Deny);
        ends.log("inbound_plaintext", ResponseFlags::Deny, Some(&denial), 0, 0, started.elapsed(), None);
        abort(tcp);
        return;
    }
    let verdict = state.authorize(&ConnInfo {
        src_identity: None,
        src_ip: client.ip(),
        dst_workload: &me,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    });
    let version = state.version();
    // Decided: the connection keeps only what it uses, not the whole snapshot.
    drop(state);
    let admitted = match verdict.allowed {
        true => pod.inputs.admitted().admit(
            Decided {
                src_identity: None,
                src_ip: client.ip(),
                dst: &me,
                dst_ip: dst.ip(),
                dst_port: dst.port(),
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
            ends.log("inbound_plaintext", ResponseFlags::Deny, Some(&refused), 0, 0, started.elapsed(), None);
            abort(tcp);
            return;
        }
    };
    let source = pod.inputs.cfg.transparent_inbound.then_some(client.ip());
    let app = match pod.connect(dst, source).await {
        Ok(t) => t,
        Err(e) => {
            metrics.denied(Reporter::Destination, "workload_unreachable");
            opened.refused(ResponseFlags::Connect);
            ends.log("inbound_plaintext", ResponseFlags::Connect, Some(&verdict), 0, 0, started.elapsed(), Some(&e));
            abort(tcp);
            return;
        }
    };
    let conn = opened.carried();
    let mut revoked_by = None;
    let revoked = async { revoked_by = Some(admission.revoked().await) };
    let (received, sent, err) = copy_plain_until(tcp, app, revoked).await;
    conn.close(received, sent);
    let (verdict, err) = match revoked_by {
        Some(by) => (by, Some(&REVOKED as &dyn std::fmt::Display)),
        None => (verdict, err.as_ref().map(|e| e as &dyn std::fmt::Display)),
    };
    ends.log("inbound_plaintext", ResponseFlags::None, Some(&verdict), received, sent, started.elapsed(), err);
}
