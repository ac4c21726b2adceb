//! Forwarding one request to a backend service: endpoint choice per try, per-try and
//! whole-request timeouts, retries with exponential backoff and jitter (only with a `Retry`,
//! only with a body that can be replayed or was never sent), outlier bookkeeping.

use std::net::SocketAddr;
use std::time::Duration;

use ::http::request::Parts;
use ::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::Rng;
use tokio::time::Instant;
use ztunnel::state::Endpoint;

use super::balance::{Picked, Prefer};
use super::body::{self, Buffered, Tally};
use super::upstream::{Dest, UpstreamError, Version};
use super::{Body, Proxy};
use crate::state::BackendPolicy;
use crate::state::route::Retry;

/// A local answer when no upstream response can be returned.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    /// Status.
    pub status: StatusCode,
    /// Body text.
    pub text: &'static str,
    /// Response flags for metrics and logs.
    pub flags: &'static str,
}

impl Failure {
    fn new(status: StatusCode, text: &'static str, flags: &'static str) -> Self {
        Failure { status, text, flags }
    }
}

/// What forwarding needs.
pub struct Attempt<'a> {
    /// The data path.
    pub proxy: &'a Proxy,
    /// The upstream request head (copied for each try that may be followed by another).
    pub parts: Parts,
    /// The buffered body, replayable.
    pub replay: Option<&'a Buffered>,
    /// The body when not buffered (sent at most once).
    pub stream_body: Option<Body>,
    /// The backend's endpoints.
    pub endpoints: &'a [Endpoint],
    /// The backend's hostname (balancer state key).
    pub backend_host: &'a str,
    /// The backend policy.
    pub policy: &'a BackendPolicy,
    /// The backend service's locality preference (FAILOVER priority levels).
    pub prefer: Prefer<'a>,
    /// Retries, if the rule has them.
    pub retry: Option<&'a Retry>,
    /// Per-try timeout.
    pub backend_timeout: Option<Duration>,
    /// End of the whole request.
    pub deadline: Option<Instant>,
    /// HTTP version to the application.
    pub version: Version,
    /// The original client.
    pub client: SocketAddr,
    /// The request asks to switch protocols: it gets a connection of its own.
    pub upgrade: bool,
    /// What the client's body did: a request that failed because it failed is the client's
    /// error, answered 400, and no mark against the endpoint.
    pub client_body: &'a Tally,
}

/// A response from the backend, and when its body must have ended: the request's deadline or
/// the try's (`backendRequest` covers the response until it is complete), the sooner.
pub type Forwarded = (Response<Incoming>, Option<Instant>);

/// Forwards with retries; `on_pick` sees each endpoint picked (for accounting).
pub async fn forward(mut a: Attempt<'_>, mut on_pick: impl FnMut(&Picked)) -> Result<Forwarded, Failure> {
    let hash_value = a.policy.hash_header.as_ref().and_then(|h| a.parts.headers.get(h)).map(|v| v.as_bytes().to_vec());
    let attempts = a.retry.map_or(0, |r| r.attempts).saturating_add(1);
    let mut last: Option<SocketAddr> = None;
    let mut outcome: Result<Forwarded, Failure> =
        Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n", "UH"));
    for attempt in 0..attempts {
        if attempt > 0 {
            let base = a.retry.map_or(Duration::from_millis(25), |r| r.backoff);
            let exp = base.saturating_mul(1 << (attempt - 1).min(10));
            let wait = exp.mul_f64(rand::rng().random_range(0.5..1.0));
            // A wait beyond the clock's range is past any deadline.
            if a.deadline.is_some_and(|d| Instant::now().checked_add(wait).is_none_or(|t| t >= d)) {
                outcome = Err(Failure::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "UT"));
                break;
            }
            tokio::time::sleep(wait).await;
        }
        let Some(picked) =
            a.proxy.balancer.pick(a.backend_host, a.endpoints, a.policy, a.prefer, hash_value.as_deref(), last)
        else {
            outcome = Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n", "UH"));
            break;
        };
        last = Some(picked.addr);
        on_pick(&picked);
        let w = &picked.endpoint.workload;
        let dest = Dest { addr: picked.addr, identity: &w.identity, version: a.version, client: Some(a.client) };
        let retriable = a.retry.is_some() && attempt + 1 < attempts;
        let mut head = if attempt + 1 < attempts {
            a.parts.clone()
        } else {
            std::mem::replace(&mut a.parts, Request::new(()).into_parts().0)
        };
        head.extensions = ::http::Extensions::new();
        let try_once = async {
            let sender = if a.upgrade {
                a.proxy.upstreams.dedicated(dest).await?
            } else {
                a.proxy.upstreams.sender(dest).await?
            };
            let body = match (a.replay, a.stream_body.take()) {
                (Some(b), _) => b.replay(),
                (None, Some(b)) => b,
                (None, None) => body::full(""),
            };
            sender.send(Request::from_parts(head, body)).await
        };
        // When this try's response must be complete; beyond the clock's range, never.
        let try_deadline = a.backend_timeout.and_then(|t| Instant::now().checked_add(t));
        let body_deadline = match (a.deadline, try_deadline) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        let per_try = async {
            match a.backend_timeout {
                Some(t) => tokio::time::timeout(t, try_once).await.ok(),
                None => Some(try_once.await),
            }
        };
        let r = match a.deadline {
            Some(d) => match tokio::time::timeout_at(d, per_try).await {
                Ok(r) => r,
                Err(_) => {
                    a.proxy.balancer.outcome(&picked, false, a.policy, a.endpoints);
                    outcome = Err(Failure::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "UT"));
                    break;
                }
            },
            None => per_try.await,
        };
        match r {
            None => {
                // One try timed out.
                a.proxy.balancer.outcome(&picked, true, a.policy, a.endpoints);
                outcome = Err(Failure::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n", "UT"));
                let retry_504 = a.retry.is_some_and(|r| r.codes.contains(&504));
                if retriable && retry_504 && a.replay.is_some() {
                    continue;
                }
                break;
            }
            Some(Ok(resp)) => {
                let code = resp.status().as_u16();
                a.proxy.balancer.outcome(&picked, code >= 500, a.policy, a.endpoints);
                let retry_code = a.retry.is_some_and(|r| r.codes.contains(&code));
                if retriable && retry_code && a.replay.is_some() {
                    tracing::debug!(attempt, code, endpoint = %picked.addr, "retrying");
                    outcome = Ok((resp, body_deadline));
                    continue;
                }
                outcome = Ok((resp, body_deadline));
                break;
            }
            Some(Err(e)) if a.client_body.failed() => {
                // Counting it against the endpoint would let any client get healthy endpoints
                // ejected with malformed bodies; and no retry can send the body it lacks.
                tracing::debug!(error = %e, "the client's request body failed");
                outcome = Err(Failure::new(StatusCode::BAD_REQUEST, "bad request body\n", "DPE"));
                break;
            }
            Some(Err(e)) => {
                a.proxy.balancer.outcome(&picked, true, a.policy, a.endpoints);
                tracing::info!(error = %e, attempt, "upstream request failed");
                let flags = if matches!(e, UpstreamError::Request { .. }) { "UC" } else { "UF" };
                outcome = Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n", flags));
                // A body that was streamed is gone unless the failure came before sending it.
                let body_ok = a.replay.is_some() || a.stream_body.is_some();
                if retriable && body_ok && (e.before_request() || a.replay.is_some()) {
                    continue;
                }
                break;
            }
        }
    }

    outcome
}
