//! A small Kubernetes API server on loopback for the agent's enrollment tests: it holds
//! Namespaces and Pods (JSON as the API returns them), answers GET, list (with the
//! `spec.nodeName` field selector) and watch for exactly the paths the agent uses, and sends
//! watch events when a test changes an object. Every request is logged.
//!
//! Unlike istiod-lite's replaying mock, state lives here, so a test can change a label and see
//! the agent react to the resulting watch event.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Pod,
}

struct Watcher {
    kind: Kind,
    node: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (kind, namespace, name) -> object.
    objects: BTreeMap<(Kind, String, String), Value>,
    watchers: Vec<Watcher>,
    /// Kinds whose watches deliver nothing (the watch is "behind").
    stalled: Vec<Kind>,
    /// `path?query` of every request.
    seen: Vec<String>,
}

/// The running server; stops when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn not_found(what: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn node_of(obj: &Value) -> Option<&str> {
    obj["spec"]["nodeName"].as_str()
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%3d", "=")))
        .collect()
}

fn handle(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let q = query(req.uri().query());
    let mut st = state.lock().unwrap();
    st.seen.push(format!("{path}?{}", req.uri().query().unwrap_or("")));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (kind, ns, name) = match parts.as_slice() {
        ["api", "v1", "namespaces"] => (Kind::Namespace, None, None),
        ["api", "v1", "namespaces", n] => (Kind::Namespace, None, Some(*n)),
        ["api", "v1", "pods"] => (Kind::Pod, None, None),
        ["api", "v1", "namespaces", ns, "pods", n] => (Kind::Pod, Some(*ns), Some(*n)),
        _ => return not_found(&path),
    };
    if let Some(name) = name {
        let key = (kind, ns.unwrap_or_default().to_owned(), name.to_owned());
        return match st.objects.get(&key) {
            Some(obj) => respond(StatusCode::OK, obj),
            None => not_found(&path),
        };
    }
    let node = q.get("fieldSelector").and_then(|f| f.strip_prefix("spec.nodeName=")).map(str::to_owned);
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let (tx, rx) = mpsc::unbounded_channel();
        st.watchers.push(Watcher { kind, node, tx });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((k, _, _), obj)| *k == kind && (node.is_none() || node.as_deref() == node_of(obj)))
        .map(|(_, o)| o.clone())
        .collect();
    let list_kind = if kind == Kind::Pod { "PodList" } else { "NamespaceList" };
    respond(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": list_kind, "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

impl FakeApi {
    /// Starts on an ephemeral loopback port.
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let st = st.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let resp = handle(&st, &req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeApi { addr, state, task }
    }

    /// A kubeconfig file's text naming this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        )
    }

    /// A client of this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(format!("http://{}", self.addr).parse().unwrap())).unwrap()
    }

    /// Creates or replaces a Namespace with these labels.
    pub fn namespace(&self, name: &str, labels: Value) {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels}, "spec": {}, "status": {"phase": "Active"}});
        self.put(Kind::Namespace, "", name, obj);
    }

    /// Creates or replaces a Pod on `node`.
    pub fn pod(&self, namespace: &str, name: &str, node: &str, labels: Value, service_account: &str) {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "labels": labels},
            "spec": {"nodeName": node, "serviceAccountName": service_account,
                     "containers": [{"name": "app", "image": "example/app:1"}]},
            "status": {"phase": "Running"}});
        self.put(Kind::Pod, namespace, name, obj);
    }

    /// Replaces the annotations of a pod made by [`FakeApi::pod`] (a MODIFIED event).
    pub fn annotate_pod(&self, namespace: &str, name: &str, annotations: Value) {
        let key = (Kind::Pod, namespace.to_owned(), name.to_owned());
        let mut obj = self.state.lock().unwrap().objects[&key].clone();
        obj["metadata"]["annotations"] = annotations;
        self.put(Kind::Pod, namespace, name, obj);
    }

    /// Stops delivering pod watch events (the list still answers).
    pub fn stall_pod_watch(&self) {
        self.state.lock().unwrap().stalled.push(Kind::Pod);
    }

    fn put(&self, kind: Kind, namespace: &str, name: &str, mut obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let key = (kind, namespace.to_owned(), name.to_owned());
        let kind_of_event = if st.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        st.objects.insert(key, obj.clone());
        if st.stalled.contains(&kind) {
            return;
        }
        let line = Bytes::from(format!("{}\n", json!({"type": kind_of_event, "object": obj})));
        let node = node_of(&obj).map(str::to_owned);
        st.watchers.retain(|w| {
            if w.kind != kind || (w.node.is_some() && w.node != node) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
    }

    /// `path?query` of every request so far.
    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Number of open watches.
    pub fn watches(&self) -> usize {
        self.state.lock().unwrap().watchers.iter().filter(|w| !w.tx.is_closed()).count()
    }
}
