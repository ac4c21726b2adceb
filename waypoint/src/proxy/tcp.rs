//! Opaque TCP through the waypoint: L4 authorization only (fields that need HTTP fail closed,
//! see [`crate::authz`]), then bytes both ways to an endpoint picked by the backend policy.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::balance::{self, Prefer};
use super::{Destination, Downstream, Proxy};
use crate::authz::{Facts, evaluate};

/// Forwards `io` to an endpoint of the destination.
pub async fn forward<S>(proxy: Arc<Proxy>, down: Arc<Downstream>, mut io: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let snapshot = proxy.inputs.state.load();
    let principal = down.peer.as_str().strip_prefix("spiffe://");
    let facts = Facts {
        principal,
        namespace: Some(down.peer.namespace()),
        source_ip: Some(down.client.ip()),
        destination_ip: Some(down.target.ip()),
        port: down.dest.port(),
        http: None,
    };
    let svc_host = down.dest.service().map(|s| s.hostname.as_str());
    let decision = evaluate(snapshot.policies_for(svc_host), &facts);
    if !decision.allowed {
        proxy.inputs.metrics.denied(decision.policy());
        tracing::info!(target: "access", src_identity = %down.peer, policy = decision.policy(), "TCP connection denied");
        return;
    }
    let src = snapshot.source();
    let (endpoints, policy_host, prefer) = match &down.dest {
        Destination::Service(s, port) => {
            let endpoints = snapshot.mesh.endpoints_for(src, s, *port);
            if endpoints.is_empty() {
                let (reason, why) = balance::no_endpoint_reason(&snapshot.mesh, src, s, *port);
                proxy.inputs.metrics.no_endpoint(&s.hostname, reason);
                tracing::info!(target: "access", src_identity = %down.peer, service = s.hostname, port, reason = why, "TCP: no endpoint");
                return;
            }
            (endpoints, s.hostname.clone(), Prefer::of(s, src))
        }
        Destination::Workload(w, port) => {
            (vec![ztunnel::state::Endpoint { workload: w.clone(), port: *port }], String::new(), Prefer::none())
        }
    };
    let policy = snapshot.backend_policy(&policy_host).clone();
    let Some(picked) = proxy.balancer.pick(&policy_host, &endpoints, &policy, prefer, None, None) else {
        tracing::info!(target: "access", src_identity = %down.peer, service = policy_host, "TCP: no endpoint");
        return;
    };
    drop(snapshot);
    let identity = picked.endpoint.workload.identity.clone();
    let mut up = match proxy.upstreams.tcp(picked.addr, &identity, Some(down.client)).await {
        Ok(s) => s,
        Err(e) => {
            proxy.balancer.outcome(&picked, true, &policy, &endpoints);
            tracing::info!(target: "access", src_identity = %down.peer, error = %e, "TCP: upstream failed");
            return;
        }
    };
    proxy.balancer.outcome(&picked, false, &policy, &endpoints);
    let r = tokio::io::copy_bidirectional(&mut io, &mut up).await;
    tracing::info!(
        target: "access",
        src_identity = %down.peer,
        src_addr = %down.client,
        upstream = %picked.addr,
        sent = r.as_ref().map(|x| x.1).unwrap_or(0),
        received = r.as_ref().map(|x| x.0).unwrap_or(0),
        "TCP connection"
    );
}
