//! The delta ADS client: subscribes to type URLs, hands decoded resources to
//! a handler per type, ACKs or NACKs each push, and reconnects with backoff,
//! resuming from the versions it already holds.

mod call;
mod handler;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use proto::envoy::config::core::v3::Node;
use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use proto::google::rpc::Status as RpcStatus;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

pub use handler::{Cache, CacheHandler, Rejected, ResourceHandler, Update, cache_handler, cache_handler_per_resource};
use handler::{ErasedHandler, Refusal};

/// HTTP/2 ping interval on the client's connections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one attempt to reach the server may take. Without a bound, a server whose address
/// drops connection attempts (its node gone, a firewall) holds the client in one attempt for
/// the kernel's SYN retries, about two minutes on Linux, whatever the backoff says. Envoy's
/// documented ADS bootstrap allows 5 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to answer a stream's opening.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK we send.
const INVALID_ARGUMENT: i32 = 3;

/// Which resources of a type to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// Every resource of the type.
    Wildcard,
    /// Only these names. An empty set subscribes to nothing: no request is
    /// sent for the type.
    Explicit(BTreeSet<String>),
}

impl Names {
    /// Only the given names.
    pub fn explicit<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self::Explicit(names.into_iter().map(Into::into).collect())
    }
}

/// Reconnection delays: doubling from `initial` up to `max`, each randomized
/// to between half and all of its value so clients do not reconnect in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay after a failure.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(15) }
    }
}

impl Backoff {
    /// The delay after `delay`: doubled, at most `max`.
    pub fn next(&self, delay: Duration) -> Duration {
        delay.saturating_mul(2).min(self.max)
    }

    /// `delay` scaled by a random factor in [0.5, 1].
    pub fn jittered(&self, delay: Duration) -> Duration {
        delay.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Why a stream ended; kept as text in [`ClientStatus::last_error`].
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server could not be reached.
    #[error("connecting to the xDS server failed")]
    Connect(#[source] tonic::transport::Error),
    /// The server could not be reached in time.
    #[error("connecting to the xDS server took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// The server refused or ended the stream with an error.
    #[error("xDS stream failed: {0}")]
    Rpc(#[source] tonic::Status),
    /// The server did not answer the stream's opening in time.
    #[error("xDS server did not open the stream within {0:?}")]
    OpenTimeout(Duration),
    /// The server ended the stream without an error.
    #[error("xDS server closed the stream")]
    Closed,
    /// The bearer token could not be read (or is not a valid header value).
    #[error("reading the xDS token {path}: {why}")]
    Token {
        /// The token file.
        path: std::path::PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// What the client holds and has done, per type URL.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClientStatus {
    /// A stream is open.
    pub connected: bool,
    /// Streams opened so far.
    pub streams: u64,
    /// Why the last stream ended.
    pub last_error: Option<String>,
    /// Per type URL.
    pub types: BTreeMap<String, ClientTypeStatus>,
}

/// One type URL on the client.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClientTypeStatus {
    /// A push has been answered (the state is as complete as the server's
    /// first answer made it).
    pub synced: bool,
    /// Versions of the resources held, by name: what a resumed stream declares.
    pub versions: BTreeMap<String, String>,
    /// `initial_resource_versions` sent on the last stream.
    pub resumed_with: usize,
    /// Pushes received.
    pub pushes: u64,
    /// Resources received, over all pushes.
    pub resources_received: u64,
    /// Removals received, over all pushes.
    pub removals_received: u64,
    /// Pushes accepted.
    pub acks: u64,
    /// Pushes rejected, whole or (per-resource handlers) in part.
    pub nacks: u64,
    /// Message of the last rejection.
    pub last_nack: Option<String>,
    /// Resources a per-resource handler did not apply, and so does not hold, by name, with why
    /// (cut short if long). A name leaves once a version of it is applied or it is removed.
    pub rejected: BTreeMap<String, String>,
}

struct Subscription {
    type_url: String,
    names: Names,
    handler: Box<dyn ErasedHandler>,
}

/// A delta ADS client under construction; [`Client::spawn`] starts it.
pub struct Client {
    node: Node,
    backoff: Backoff,
    subscriptions: Vec<Subscription>,
    token_file: Option<std::path::PathBuf>,
}

impl Client {
    /// A client that identifies itself as `node` in each stream's first request.
    pub fn new(node: Node) -> Self {
        Self { node, backoff: Backoff::default(), subscriptions: Vec::new(), token_file: None }
    }

    /// Sends the token in `path` as `authorization: Bearer <token>` on every stream; the file
    /// is read again for each, as projected tokens rotate. Only for TLS channels: the header
    /// is a credential.
    pub fn bearer_token_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// The `authorization` header of a stream's opening, if a token is set.
    fn authorization(&self) -> Result<Option<http::HeaderValue>, StreamError> {
        let Some(path) = &self.token_file else { return Ok(None) };
        let fail = |why: String| StreamError::Token { path: path.clone(), why };
        let token = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| fail("not a valid header value".into()))?;
        Ok(Some(value))
    }

    /// Replaces the reconnection backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Subscribes to `names` of `type_url`, delivered to `handler`.
    pub fn subscribe<H: ResourceHandler>(mut self, type_url: impl Into<String>, names: Names, handler: H) -> Self {
        self.subscriptions.push(Subscription { type_url: type_url.into(), names, handler: Box::new(handler) });
        self
    }

    /// Starts the client on the current tokio runtime, connecting to
    /// `endpoint` in plaintext and reconnecting whenever the stream ends.
    /// HTTP/2 keepalive pings are turned on (every 30 s, 10 s to answer) so a
    /// server that vanished without closing the connection is noticed. Each
    /// attempt to connect is given 5 s.
    pub fn spawn(self, endpoint: Endpoint) -> ClientHandle {
        let endpoint = endpoint
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        self.spawn_with(move || {
            let endpoint = endpoint.clone();
            async move { endpoint.connect().await }
        })
    }

    /// Starts the client on the current tokio runtime, opening each stream on
    /// a channel from `connect` (for example
    /// `endpoint.connect_with_connector(tls_connector)` for TLS). Each attempt
    /// is given 5 s, then counts as failed.
    pub fn spawn_with<C, F>(self, connect: C) -> ClientHandle
    where
        C: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<Channel, tonic::transport::Error>> + Send + 'static,
    {
        let initial = ClientStatus {
            types: self.subscriptions.iter().map(|s| (s.type_url.clone(), ClientTypeStatus::default())).collect(),
            ..ClientStatus::default()
        };
        let (status_tx, status) = watch::channel(initial);
        let task = tokio::spawn(self.run(connect, status_tx));
        ClientHandle { status, task }
    }

    async fn run<C, F>(mut self, mut connect: C, status: watch::Sender<ClientStatus>)
    where
        C: FnMut() -> F + Send,
        F: Future<Output = Result<Channel, tonic::transport::Error>> + Send,
    {
        let mut delay = self.backoff.initial;
        loop {
            let mut progressed = false;
            let error = match tokio::time::timeout(CONNECT_TIMEOUT, connect()).await {
                Ok(Ok(channel)) => self.stream_once(channel, &status, &mut progressed).await,
                Ok(Err(e)) => StreamError::Connect(e),
                Err(_) => StreamError::ConnectTimeout(CONNECT_TIMEOUT),
            };
            tracing::warn!(error = %error, "xDS stream ended; reconnecting");
            status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(error_chain(&error));
            });
            if progressed {
                delay = self.backoff.initial;
            }
            tokio::time::sleep(self.backoff.jittered(delay)).await;
            delay = self.backoff.next(delay);
        }
    }

    /// Runs one stream to its end. `progressed` is set once the server has
    /// answered, which resets the backoff.
    async fn stream_once(
        &mut self,
        mut channel: Channel,
        status: &watch::Sender<ClientStatus>,
        progressed: &mut bool,
    ) -> StreamError {
        // One request per type is the most ever queued: the first
        // subscriptions, then at most one answer per push received.
        let (requests, outbound) = mpsc::channel(self.subscriptions.len() + 1);
        let mut first = true;
        for sub in &self.subscriptions {
            if matches!(&sub.names, Names::Explicit(names) if names.is_empty()) {
                // On the wire an empty first subscription means wildcard.
                continue;
            }
            let initial_resource_versions: std::collections::HashMap<_, _> = status
                .borrow()
                .types
                .get(&sub.type_url)
                .map(|t| t.versions.clone().into_iter().collect())
                .unwrap_or_default();
            let resumed_with = initial_resource_versions.len();
            status.send_modify(|s| {
                s.types.entry(sub.type_url.clone()).or_default().resumed_with = resumed_with;
            });
            let request = DeltaDiscoveryRequest {
                node: std::mem::take(&mut first).then(|| self.node.clone()),
                type_url: sub.type_url.clone(),
                // An empty first subscription is the wildcard every server understands.
                resource_names_subscribe: match &sub.names {
                    Names::Wildcard => Vec::new(),
                    Names::Explicit(names) => names.iter().cloned().collect(),
                },
                initial_resource_versions,
                ..Default::default()
            };
            // Cannot fail: the receiver is alive and the channel has room.
            let _ = requests.try_send(request);
        }
        let authorization = match self.authorization() {
            Ok(value) => value,
            Err(e) => return e,
        };
        let open = call::open(&mut channel, authorization, outbound);
        let mut responses = match tokio::time::timeout(OPEN_TIMEOUT, open).await {
            Ok(Ok(pushes)) => pushes,
            Ok(Err(e)) => return StreamError::Rpc(e),
            Err(_) => return StreamError::OpenTimeout(OPEN_TIMEOUT),
        };
        status.send_modify(|s| {
            s.connected = true;
            s.streams += 1;
        });
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return StreamError::Closed,
                Err(e) => return StreamError::Rpc(e),
            };
            *progressed = true;
            let answer = self.handle(response, status);
            if requests.send(answer).await.is_err() {
                return StreamError::Closed;
            }
        }
    }

    /// Applies one push and builds its ACK or NACK.
    fn handle(
        &mut self,
        response: DeltaDiscoveryResponse,
        status: &watch::Sender<ClientStatus>,
    ) -> DeltaDiscoveryRequest {
        let DeltaDiscoveryResponse {
            mut resources,
            type_url,
            nonce,
            mut removed_resources,
            removed_resource_names,
            ..
        } = response;
        removed_resources.extend(removed_resource_names.into_iter().map(|r| r.name));
        let received = (resources.len() as u64, removed_resources.len() as u64);
        let subscription = self.subscriptions.iter_mut().find(|s| s.type_url == type_url);
        let broken = malformed(&resources, &removed_resources);
        if let Some(Subscription { names: Names::Explicit(names), .. }) = &subscription {
            // The delta protocol: a client ignores resources it did not ask for. Applied, they
            // would sit in the cache as if asked for, and be declared on every resume.
            resources.retain(|r| names.contains(&r.name));
        }
        let applied: Vec<(String, String)> = resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
        let result = match (subscription, broken) {
            (Some(sub), None) => sub.handler.apply_raw(&type_url, resources, removed_resources.clone()),
            (Some(_), Some(why)) => Err(Refusal::Push(why)),
            (None, _) => Err(Refusal::Push(format!("not subscribed to {type_url:?}"))),
        };
        let message = result.as_ref().err().map(Refusal::message);
        status.send_modify(|s| {
            let t = s.types.entry(type_url.clone()).or_default();
            t.pushes += 1;
            t.resources_received += received.0;
            t.removals_received += received.1;
            t.synced = true;
            // The versions are what the handler holds, so that a resumed stream declares
            // exactly that: after a push applied in part, the rest of it is held and the
            // rejected resources are not (at any version).
            let rejected = match &result {
                Ok(()) => &[][..],
                Err(Refusal::Resources(rejected)) => rejected.as_slice(),
                Err(Refusal::Push(_)) => {
                    t.nacks += 1;
                    t.last_nack = message.clone();
                    return;
                }
            };
            for name in &removed_resources {
                t.versions.remove(name);
                t.rejected.remove(name);
            }
            for (name, version) in applied {
                t.rejected.remove(&name);
                t.versions.insert(name, version);
            }
            for r in rejected {
                t.versions.remove(&r.name);
                t.rejected.insert(r.name.clone(), handler::clip(&r.why, handler::MAX_QUOTED).into_owned());
            }
            if rejected.is_empty() {
                t.acks += 1;
            } else {
                t.nacks += 1;
                t.last_nack = message.clone();
            }
        });
        match &result {
            Ok(()) => {}
            Err(Refusal::Push(_)) => {
                tracing::warn!(%type_url, %nonce, error = %message.as_deref().unwrap_or(""), "rejecting xDS push");
            }
            Err(Refusal::Resources(rejected)) => {
                let error = message.as_deref().unwrap_or("");
                let count = rejected.len();
                tracing::warn!(%type_url, %nonce, rejected = count, %error, "rejecting xDS resources; the rest applies");
                // Every one by name, which the bounded message may not have room for.
                for r in rejected {
                    let error = handler::clip(&r.why, handler::MAX_QUOTED);
                    tracing::debug!(%type_url, %nonce, resource = %r.name, %error, "rejected xDS resource");
                }
            }
        }
        let error_detail = message.map(|message| RpcStatus { code: INVALID_ARGUMENT, message, details: Vec::new() });
        DeltaDiscoveryRequest { type_url, response_nonce: nonce, error_detail, ..Default::default() }
    }
}

/// Why a push cannot be applied at all, whatever the handler: a resource without a name, a
/// name carried twice, or a name both updated and removed. The delta protocol makes each an
/// error of the server's, which clients NACK; applying it would keep whichever copy came last
/// while the server believes the client holds the other, or a resource nobody can name.
fn malformed(resources: &[Resource], removed: &[String]) -> Option<String> {
    let mut names = std::collections::HashSet::with_capacity(resources.len());
    for r in resources {
        if r.name.is_empty() {
            return Some(format!(
                "a resource of version {:?} has no name",
                handler::clip(&r.version, handler::MAX_QUOTED)
            ));
        }
        if !names.insert(r.name.as_str()) {
            return Some(format!("resource {:?} is in the push twice", handler::clip(&r.name, handler::MAX_QUOTED)));
        }
    }
    // The same removal twice (in removed_resources and removed_resource_names, say) is harmless.
    removed.iter().find(|n| names.contains(n.as_str())).map(|n| {
        format!("resource {:?} is both updated and removed in the push", handler::clip(n, handler::MAX_QUOTED))
    })
}

/// Renders an error with its sources, for a status line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// A running client. Dropping it stops the client.
#[derive(Debug)]
pub struct ClientHandle {
    status: watch::Receiver<ClientStatus>,
    task: JoinHandle<()>,
}

impl ClientHandle {
    /// The client's status now.
    pub fn status(&self) -> ClientStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub fn watch(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Stops the client, as dropping the handle does; the cache it filled
    /// keeps its last state.
    pub fn stop(self) {}
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::Any;
    use proto::envoy::service::discovery::v3::Resource;

    use super::*;

    const TYPE: &str = "type.googleapis.com/google.protobuf.Duration";

    fn resource(name: &str, seconds: i64) -> Resource {
        let body = Any { type_url: TYPE.into(), value: prost_types::Duration { seconds, nanos: 0 }.encode_to_vec() };
        Resource { name: name.into(), version: format!("v{seconds}"), resource: Some(body), ..Default::default() }
    }

    fn push(nonce: &str, resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: TYPE.into(),
            nonce: nonce.into(),
            resources,
            removed_resources: removed.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// Negative durations do not convert.
    fn convert(_: &str, d: prost_types::Duration) -> Result<i64, String> {
        if d.seconds < 0 { Err(format!("{} is negative", d.seconds)) } else { Ok(d.seconds) }
    }

    fn versions(status: &watch::Sender<ClientStatus>) -> Vec<(String, String)> {
        status.borrow().types[TYPE].versions.clone().into_iter().collect()
    }

    #[test]
    fn a_push_applied_in_part_is_nacked_and_recorded_as_applied_in_part() {
        let (cache, handler) = cache_handler_per_resource(convert);
        let mut client = Client::new(Node::default()).subscribe(TYPE, Names::Wildcard, handler);
        let (status, _) = watch::channel(ClientStatus::default());
        let ack = client.handle(push("1", vec![resource("a", 1), resource("b", 2), resource("c", 3)], &[]), &status);
        assert_eq!((ack.response_nonce.as_str(), ack.error_detail), ("1", None));

        // a replaced by a version that does not convert, d new, c removed.
        let nack = client.handle(push("2", vec![resource("a", -1), resource("d", 4)], &["c"]), &status);
        assert_eq!(nack.response_nonce, "2", "the NACK answers the push it rejects");
        let detail = nack.error_detail.expect("a NACK");
        assert!(detail.message.contains("resource \"a\": -1 is negative"), "{}", detail.message);
        let held: Vec<_> = cache.snapshot().into_iter().map(|(n, v)| (n, *v)).collect();
        assert_eq!(held, [("b".into(), 2), ("d".into(), 4)]);
        // What a resumed stream declares: what is held. Not a's old version (a rollback to it
        // would never be sent again), and d (else its removal would never be sent).
        assert_eq!(versions(&status), [("b".into(), "v2".into()), ("d".into(), "v4".into())]);
        let counts = status.borrow().types.get(TYPE).map(|t| (t.acks, t.nacks));
        assert_eq!(counts, Some((1, 1)));

        // A later good version of the rejected name applies and is acknowledged.
        let ack = client.handle(push("3", vec![resource("a", 5)], &[]), &status);
        assert_eq!(ack.error_detail, None);
        assert_eq!(
            versions(&status),
            [("a".into(), "v5".into()), ("b".into(), "v2".into()), ("d".into(), "v4".into())]
        );
    }

    /// A handler refusing every negative duration with a reason of `why_len` bytes.
    fn long_reasons(why_len: usize) -> impl ResourceHandler<Message = prost_types::Duration> {
        let convert = move |_: &str, d: prost_types::Duration| {
            if d.seconds < 0 { Err(format!("negative {}", "x".repeat(why_len))) } else { Ok(d.seconds) }
        };
        cache_handler_per_resource(convert).1
    }

    #[test]
    fn a_nack_names_the_rejected_resources_within_a_bounded_message() {
        let mut client = Client::new(Node::default()).subscribe(TYPE, Names::Wildcard, long_reasons(100_000));
        let (status, _) = watch::channel(ClientStatus::default());
        let bad: Vec<_> = (0..5_000).map(|i| resource(&format!("ns/workload-{i:04}"), -1)).collect();
        let nack = client.handle(push("1", bad, &[]), &status);
        let message = nack.error_detail.expect("a NACK").message;
        assert!(message.len() <= handler::MAX_NACK_MESSAGE, "{} bytes", message.len());
        assert!(
            message.starts_with("5000 resources rejected: resource \"ns/workload-0000\": negative xxx"),
            "{message}"
        );
        // Reasons are cut short so that more resources are named; then names alone; then a count.
        assert!(message.contains("; resource \"ns/workload-0001\": negative"), "{message}");
        assert!(message.contains("; also \"ns/workload-"), "{message}");
        let named = message.matches("\"ns/workload-").count();
        assert!(named > 50, "{named} named: {message}");
        assert!(message.ends_with(&format!("; and {} more", 5_000 - named)), "{message}");
        assert_eq!(status.borrow().types[TYPE].last_nack.as_deref(), Some(message.as_str()));

        // A push refused whole (all or nothing) is bounded too.
        let mut client = Client::new(Node::default()).subscribe(
            TYPE,
            Names::Wildcard,
            cache_handler(
                |_: &str, d: prost_types::Duration| {
                    if d.seconds < 0 { Err("y".repeat(100_000)) } else { Ok(d.seconds) }
                },
            )
            .1,
        );
        let nack = client.handle(push("1", vec![resource("a", -1)], &[]), &status);
        assert!(nack.error_detail.expect("a NACK").message.len() <= handler::MAX_NACK_MESSAGE);
    }

    #[test]
    fn the_status_names_every_rejected_resource_until_it_applies_or_goes() {
        let mut client = Client::new(Node::default()).subscribe(TYPE, Names::Wildcard, long_reasons(10));
        let (status, _) = watch::channel(ClientStatus::default());
        let mut push_1: Vec<_> = (0..1_000).map(|i| resource(&format!("bad-{i:04}"), -1)).collect();
        push_1.push(resource("good", 1));
        client.handle(push("1", push_1, &[]), &status);
        let rejected = status.borrow().types[TYPE].rejected.clone();
        assert_eq!(rejected.len(), 1_000);
        assert_eq!(rejected["bad-0999"], format!("negative {}", "x".repeat(10)));
        // One fixed, one removed: both leave the list; a push with nothing wrong is acknowledged
        // although others are still rejected.
        let ack = client.handle(push("2", vec![resource("bad-0000", 2)], &["bad-0001"]), &status);
        assert_eq!(ack.error_detail, None);
        let t = status.borrow().types[TYPE].clone();
        assert_eq!(t.rejected.len(), 998);
        assert!(!t.rejected.contains_key("bad-0000") && !t.rejected.contains_key("bad-0001"));
        assert_eq!(t.versions.keys().collect::<Vec<_>>(), ["bad-0000", "good"]);
    }

    #[test]
    fn backoff_doubles_to_max_with_bounded_jitter() {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(700) };
        let mut delay = backoff.initial;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(delay.as_millis());
            delay = backoff.next(delay);
        }
        assert_eq!(seen, [100, 200, 400, 700, 700]);
        for _ in 0..100 {
            let j = backoff.jittered(Duration::from_millis(400));
            assert!(j >= Duration::from_millis(200) && j <= Duration::from_millis(400));
        }
    }
}
