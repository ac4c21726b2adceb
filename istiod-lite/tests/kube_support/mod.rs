//! A mock Kubernetes API server on loopback that answers from recorded responses
//! (`tests/fixtures/kube/`): list requests get the recorded list (or error status) of their
//! path, watch requests (`?watch=true`) get a held-open chunked stream of the recorded watch
//! event lines the test pushes; writes (PATCH, POST, PUT) get their recorded response, or
//! their own body back (as a server-side apply of a new object would). Every request is
//! logged, with its method and body, for assertions. TokenReview POSTs are answered by
//! the recorded review of their token. Discovery (`/apis/<group>`, `/apis/<group>/<version>`)
//! is answered from the collections that have recorded responses, but those a test says are
//! not installed ([`MockApi::not_installed`]).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};
use tokio_stream::StreamExt as _;

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube")
}

fn read(fixture: &str) -> Bytes {
    let p = fixtures().join(fixture);
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display())))
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query parameters.
    pub query: BTreeMap<String, String>,
    /// The body of a write, as JSON.
    pub body: Option<serde_json::Value>,
}

impl Seen {
    /// Whether it was a watch.
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").is_some_and(|v| v == "true" || v == "1")
    }
}

#[derive(Default)]
struct WatchFeed {
    /// Lines pushed while no watch was open: sent to the next one.
    pending: Vec<Bytes>,
    /// The open watch, if any.
    live: Option<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct Route {
    /// Recorded list responses, served in order; the last one repeats.
    lists: VecDeque<(StatusCode, Bytes)>,
    watch: WatchFeed,
    /// Resource versions too old to watch from: such a watch request is answered 410 Gone.
    expired: HashSet<String>,
}

/// Where TokenReviews are posted.
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Route>>,
    /// Recorded answers to writes, by path.
    writes: Mutex<HashMap<String, (StatusCode, Bytes)>>,
    /// Recorded TokenReview answers by token.
    reviews: Mutex<HashMap<String, (StatusCode, Bytes)>>,
    /// TokenReview request bodies received.
    review_requests: Mutex<Vec<serde_json::Value>>,
    seen: Mutex<Vec<Seen>>,
    /// Collections whose CRD is not installed: absent from discovery, their requests 404.
    not_installed: Mutex<HashSet<String>>,
    changed: Notify,
    /// While true, connections are closed as soon as they are accepted (and open ones at once):
    /// the API server unreachable, its port kept so that no other test takes it.
    down: tokio::sync::watch::Sender<bool>,
}

/// The running mock; stops when dropped.
pub struct MockApi {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

type Body = BoxBody<Bytes, Infallible>;

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    Response::builder().status(status).header("content-type", "application/json").body(Full::new(body).boxed()).unwrap()
}

/// Answers a TokenReview POST with the recorded review of its token (500 if none).
fn review(state: &State, body: &[u8]) -> Response<Body> {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let token = request["spec"]["token"].as_str().unwrap_or("").to_owned();
    state.review_requests.lock().unwrap().push(request);
    match state.reviews.lock().unwrap().get(&token) {
        Some((status, body)) => json(*status, body.clone()),
        None => json(StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(b"{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"no recorded review for this token\",\"code\":500}")),
    }
}

fn handle(state: &State, req: &http::request::Parts, body: Bytes) -> Response<Body> {
    let write = req.method != hyper::Method::GET;
    let seen = Seen {
        method: req.method.to_string(),
        path: req.uri.path().to_owned(),
        query: parse_query(req.uri.query()),
        body: if write { serde_json::from_slice(&body).ok() } else { None },
    };
    if write {
        let path = seen.path.clone();
        state.seen.lock().unwrap().push(seen);
        state.changed.notify_waiters();
        let (status, answer) = state.writes.lock().unwrap().get(&path).cloned().unwrap_or((StatusCode::OK, body));
        return json(status, answer);
    }
    let watch = seen.is_watch();
    let path = seen.path.clone();
    let seen_rv = seen.query.get("resourceVersion").cloned();
    // Seen under the routes lock: a test that saw a watch request and then pushes to or ends
    // that watch waits for it to be registered.
    let mut routes = state.routes.lock().unwrap();
    state.seen.lock().unwrap().push(seen);
    state.changed.notify_waiters();
    let not_installed = state.not_installed.lock().unwrap().clone();
    if !routes.contains_key(&path)
        && let Some(answer) = discovery(&routes, &not_installed, &path)
    {
        return answer;
    }
    let route = match routes.get_mut(&path) {
        Some(route) if !not_installed.contains(&path) => route,
        _ => return json(StatusCode::NOT_FOUND, read("status/not-found.json")),
    };
    if watch {
        if seen_rv.as_ref().is_some_and(|rv| route.expired.contains(rv)) {
            return json(StatusCode::GONE, read("status/gone.json"));
        }
        if route.lists.front().is_some_and(|(s, _)| !s.is_success()) {
            let (s, b) = route.lists.front().cloned().unwrap();
            return json(s, b);
        }
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        for line in route.watch.pending.drain(..) {
            let _ = tx.send(line);
        }
        route.watch.live = Some(tx);
        let stream =
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    let (status, body) = if route.lists.len() > 1 {
        route.lists.pop_front().unwrap()
    } else {
        route.lists.front().cloned().unwrap_or((StatusCode::NOT_FOUND, read("status/not-found.json")))
    };
    json(status, body)
}

/// Kubernetes' order of versions: GA before beta before alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>();
    let major = digits(rest);
    let tail = &rest[major.len()..];
    let (level, minor) = match tail {
        "" => (3, String::new()),
        t if t.starts_with("beta") => (2, digits(&t[4..])),
        t if t.starts_with("alpha") => (1, digits(&t[5..])),
        _ => (0, String::new()),
    };
    (level, major.parse().unwrap_or(0), minor.parse().unwrap_or(0))
}

/// The discovery answer of `path` (`/apis/<group>` or `/apis/<group>/<version>`) from the
/// collections served; `None` for any other path.
fn discovery(routes: &HashMap<String, Route>, not_installed: &HashSet<String>, path: &str) -> Option<Response<Body>> {
    let parts: Vec<&str> = path.strip_prefix("/apis/")?.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    // (version, plural) of each collection of the group served.
    let served: Vec<(&str, &str)> = routes
        .iter()
        .filter(|(p, r)| !r.lists.is_empty() && !not_installed.contains(*p))
        .filter_map(|(p, _)| {
            let c: Vec<&str> = p.strip_prefix("/apis/")?.split('/').collect();
            (c.len() == 3 && c[0] == parts[0]).then(|| (c[1], c[2]))
        })
        .collect();
    let not_found = || json(StatusCode::NOT_FOUND, read("status/not-found.json"));
    if let [group, version] = parts[..] {
        let resources: Vec<serde_json::Value> = served
            .iter()
            .filter(|(v, _)| *v == version)
            .map(|(_, plural)| {
                serde_json::json!({"name": plural, "singularName": "", "namespaced": true, "kind": "", "verbs": ["list", "watch"]})
            })
            .collect();
        if resources.is_empty() {
            return Some(not_found());
        }
        let list = serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/{version}"), "resources": resources});
        return Some(json(StatusCode::OK, Bytes::from(list.to_string())));
    }
    let group = parts[0];
    let mut versions: Vec<&str> = served.iter().map(|(v, _)| *v).collect();
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    versions.dedup();
    let Some(preferred) = versions.first() else { return Some(not_found()) };
    let entry = |v: &str| serde_json::json!({"groupVersion": format!("{group}/{v}"), "version": v});
    let answer = serde_json::json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": group,
        "versions": versions.iter().map(|v| entry(v)).collect::<Vec<_>>(),
        "preferredVersion": entry(preferred),
    });
    Some(json(StatusCode::OK, Bytes::from(answer.to_string())))
}

impl MockApi {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start() -> MockApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                if *st.down.borrow() {
                    continue;
                }
                let mut down = st.down.subscribe();
                let st = st.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move {
                            if req.method() == hyper::Method::POST && req.uri().path() == TOKEN_REVIEWS {
                                let query = parse_query(req.uri().query());
                                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                st.seen.lock().unwrap().push(Seen {
                                    method: "POST".to_owned(),
                                    path: TOKEN_REVIEWS.to_owned(),
                                    query,
                                    body: serde_json::from_slice(&body).ok(),
                                });
                                return Ok::<_, Infallible>(review(&st, &body));
                            }
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            Ok::<_, Infallible>(handle(&st, &parts, body))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = down.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        MockApi { addr, state, task }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig naming this server, with no credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {}\n\
             contexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\n\
             current-context: mock\nusers:\n- name: mock\n  user: {{}}\n",
            self.url()
        )
    }

    /// A client of this server, as a kubeconfig naming `http://127.0.0.1:<port>` would give.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Adds a recorded list response for `path` (served after those added before).
    pub fn list(&self, path: &str, fixture: &str) -> &Self {
        self.respond(path, StatusCode::OK, fixture)
    }

    /// Answers writes to `path` with a recorded object (e.g. a Service with its cluster IP).
    pub fn on_write(&self, path: &str, fixture: &str) -> &Self {
        self.on_write_status(path, StatusCode::OK, fixture)
    }

    /// Answers writes to `path` with `status` and a recorded body (an API `Status` for errors).
    pub fn on_write_status(&self, path: &str, status: StatusCode, fixture: &str) -> &Self {
        self.state.writes.lock().unwrap().insert(path.to_owned(), (status, read(fixture)));
        self
    }

    /// Writes so far (PATCH, POST, PUT).
    pub fn writes(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.method != "GET").collect()
    }

    /// Adds a recorded response with another status (an API `Status` body).
    pub fn respond(&self, path: &str, status: StatusCode, fixture: &str) -> &Self {
        self.state.routes.lock().unwrap().entry(path.to_owned()).or_default().lists.push_back((status, read(fixture)));
        self
    }

    /// The cluster of the fixtures (every kind listed, Gateway API installed), for every path
    /// that has no recorded response yet.
    pub fn cluster(&self) -> &Self {
        for (path, fixture) in [
            ("/api/v1/namespaces", "list/namespaces.json"),
            ("/api/v1/nodes", "list/nodes.json"),
            ("/api/v1/pods", "list/pods.json"),
            ("/api/v1/services", "list/services.json"),
            ("/apis/discovery.k8s.io/v1/endpointslices", "list/endpointslices.json"),
            ("/apis/security.istio.io/v1/authorizationpolicies", "list/authorizationpolicies.json"),
            ("/apis/security.istio.io/v1/peerauthentications", "list/peerauthentications.json"),
            ("/apis/gateway.networking.k8s.io/v1/gateways", "list/gateways.json"),
            ("/apis/gateway.networking.k8s.io/v1/httproutes", "list/httproutes.json"),
            ("/apis/gateway.networking.k8s.io/v1/grpcroutes", "list/grpcroutes.json"),
            ("/apis/gateway.networking.k8s.io/v1beta1/referencegrants", "list/referencegrants.json"),
        ] {
            if !self.state.routes.lock().unwrap().contains_key(path) {
                self.list(path, fixture);
            }
        }
        self
    }

    /// Sends the recorded watch event lines of `fixture` on the watch of `path` (or the next
    /// one, if none is open).
    pub fn push_watch(&self, path: &str, fixture: &str) {
        let text = read(fixture);
        let mut routes = self.state.routes.lock().unwrap();
        let feed = &mut routes.entry(path.to_owned()).or_default().watch;
        for line in text.split_inclusive(|b| *b == b'\n') {
            let line = Bytes::copy_from_slice(line);
            let undelivered = match &feed.live {
                Some(tx) => tx.send(line).err().map(|e| e.0),
                None => Some(line),
            };
            if let Some(line) = undelivered {
                feed.live = None;
                feed.pending.push(line);
            }
        }
    }

    /// Takes the collection of `path` (`/apis/<group>/<version>/<plural>`) out of discovery,
    /// its requests answered 404, as when its CRD is not installed or not at that version.
    pub fn not_installed(&self, path: &str) -> &Self {
        self.state.not_installed.lock().unwrap().insert(path.to_owned());
        self
    }

    /// Installs the collection of `path` again (see [`MockApi::not_installed`]).
    pub fn install(&self, path: &str) -> &Self {
        self.state.not_installed.lock().unwrap().remove(path);
        self
    }

    /// Takes the API server away (every connection closed, new ones closed at once) or
    /// brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.down.send_replace(down);
    }

    /// Replaces the recorded list responses of `path` with `fixture`.
    pub fn replace_list(&self, path: &str, fixture: &str) -> &Self {
        self.state.routes.lock().unwrap().entry(path.to_owned()).or_default().lists.clear();
        self.list(path, fixture)
    }

    /// Ends the open watch of `path` (as the API server does after its timeout, or as a
    /// connection reset does); lines pushed later wait for the next watch.
    pub fn end_watch(&self, path: &str) {
        self.state.routes.lock().unwrap().entry(path.to_owned()).or_default().watch.live = None;
    }

    /// Answers watches of `path` from `resource_version` with HTTP 410 Gone, as an API server
    /// does once that version has left its history.
    pub fn expire(&self, path: &str, resource_version: &str) {
        self.state.routes.lock().unwrap().entry(path.to_owned()).or_default().expired.insert(resource_version.into());
    }

    /// Answers TokenReviews of `token` with the recorded `fixture` (status `status`).
    pub fn token_review(&self, token: &str, status: StatusCode, fixture: &str) -> &Self {
        self.state.reviews.lock().unwrap().insert(token.to_owned(), (status, read(fixture)));
        self
    }

    /// The TokenReview request bodies received so far.
    pub fn review_requests(&self) -> Vec<serde_json::Value> {
        self.state.review_requests.lock().unwrap().clone()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Waits until the requests seen satisfy `pred`; panics after `timeout`.
    pub async fn wait_seen(&self, what: &str, timeout: Duration, pred: impl Fn(&[Seen]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            if pred(&self.state.seen.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}; requests: {:#?}", self.seen());
            }
        }
    }

    /// Watch requests of `path` so far.
    pub fn watches(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path && s.method == "GET" && s.is_watch()).collect()
    }

    /// List requests of `path` so far.
    pub fn lists(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path && s.method == "GET" && !s.is_watch()).collect()
    }
}

/// How long a test waits for the source.
pub const WAIT: Duration = Duration::from_secs(15);

/// istiod-lite's Kubernetes source running against a mock, from a fresh translator; stops
/// when dropped.
pub struct Source {
    pub translator: Arc<Mutex<istiod_lite::Translator>>,
    pub status: tokio::sync::watch::Receiver<istiod_lite::source::kube::KubeStatus>,
    pub deltas: mpsc::UnboundedReceiver<istiod_lite::Delta>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    /// Started, not waited for.
    pub fn start(mock: &MockApi) -> Source {
        let translator = Arc::new(Mutex::new(istiod_lite::Translator::new(istiod_lite::MeshConfig::default())));
        let (status, deltas, fut) = istiod_lite::source::kube::watch(mock.client(), translator.clone());
        Source { translator, status, deltas, task: tokio::spawn(fut) }
    }

    /// Started, every kind synced and every watch open (so events pushed now reach it), and
    /// the deltas so far dropped.
    pub async fn synced(mock: &MockApi) -> Source {
        let mut s = Source::start(mock);
        s.ready().await;
        let n = istiod_lite::source::kube::WATCHED.len();
        mock.wait_seen("every watch open", WAIT, |seen| seen.iter().filter(|s| s.is_watch()).count() >= n).await;
        s.drain();
        s
    }

    /// The status once `pred` holds; fails the test after [`WAIT`].
    pub async fn wait(
        &mut self,
        what: &str,
        pred: impl Fn(&istiod_lite::source::kube::KubeStatus) -> bool,
    ) -> istiod_lite::source::kube::KubeStatus {
        let got = match tokio::time::timeout(WAIT, self.status.wait_for(|s| pred(s))).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        got.unwrap_or_else(|| panic!("timed out waiting for {what}; status: {:#?}", *self.status.borrow()))
    }

    /// The status once every kind is synced or not installed.
    pub async fn ready(&mut self) -> istiod_lite::source::kube::KubeStatus {
        self.wait("every kind synced or not installed", istiod_lite::source::kube::KubeStatus::ready).await
    }

    /// Every delta queued now.
    pub fn drain(&mut self) -> Vec<istiod_lite::Delta> {
        std::iter::from_fn(|| self.deltas.try_recv().ok()).collect()
    }

    /// The next delta; fails the test after [`WAIT`].
    pub async fn next_delta(&mut self) -> istiod_lite::Delta {
        tokio::time::timeout(WAIT, self.deltas.recv()).await.expect("a delta in time").expect("source running")
    }

    /// The next delta that changes addresses.
    pub async fn next_address_delta(&mut self) -> istiod_lite::Delta {
        loop {
            let d = self.next_delta().await;
            let a = d.of(proto::ADDRESS_TYPE_URL);
            if !a.upserts.is_empty() || !a.removals.is_empty() {
                return d;
            }
        }
    }

    /// Asserts no delta comes within a short while (for events that must change nothing).
    pub async fn no_delta(&mut self) {
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), self.deltas.recv()).await {
            panic!("unexpected delta: {d:#?}");
        }
    }
}
