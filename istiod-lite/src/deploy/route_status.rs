//! Kubernetes mode: route status (`status.parents`, as [`crate::translate::route`] computes
//! it) written back to each `HTTPRoute` / `GRPCRoute` with a server-side apply of the status
//! subresource, whenever it changes.
//!
//! A route the source rejected whole (a bad `hostnames` or `parentRefs` entry, every rule
//! invalid, a field we do not know) is not in the model, but its status is written all the
//! same, from what the source could read of it ([`RefusedRoute`]): each of its parents says
//! `Accepted` False with the problem ([`route::refused`]), so `kubectl get` shows why it is not
//! served. Once the route is valid its translated status replaces that. A route whose
//! `parentRefs` cannot be read at all gets nothing: there is no parent to write for; the
//! source's report (log, `/debug/errors`) is then the only word of it.
//!
//! The apply replaces `status.parents` as a whole (the list is atomic in the Gateway API
//! schema): on a route that is also attached to another controller's Gateway, that
//! controller's entry is rewritten on its next reconcile. Routes written by no one else (mesh
//! routes to Services) are the common case.
//!
//! Each apply carries the conditions that hold now and nothing else: a condition that no
//! longer holds (`PartiallyInvalid` once the dropped rules are fixed, which the Gateway API
//! says must then not be set at all) is left out, and server-side apply removes what this field
//! manager applied before and no longer applies.
//!
//! A condition's `lastTransitionTime` is when its status last changed, as `metav1.Condition`
//! defines it, not when it was last written: a new generation, reason or message rewrites the
//! condition but keeps its time while the status stays. The times are this writer's memory,
//! and a route it has not written since it started takes them from its entries in the route's
//! status as read ([`read_transitions`]); if that status is already what would be written,
//! nothing is written. So a restart neither resets the times nor rewrites every route, and a
//! route that lost its parents while istiod-lite was away still has our old entries taken away.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::FIELD_MANAGER;
use crate::model::{Kind, ObjectKey};
use crate::source::kube::{KubeStatus, RefusedRoute, RejectedObject};
use crate::translate::route::{self, ParentStatus};
use crate::translator::Translator;

/// `controllerName` of our entries (Istio's, so tooling that looks for it finds them).
pub const CONTROLLER_NAME: &str = "istio.io/gateway-controller";

/// The longest condition message the API server takes (`metav1.Condition`); a longer one would
/// get the whole status refused. A list of dropped rules with long regexes can get there.
const MESSAGE_MAX: usize = 32_768;

fn bounded(message: &str) -> &str {
    let mut end = message.len().min(MESSAGE_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// When each condition took its status: (parent as written, condition type) → (status, time).
pub type Transitions = BTreeMap<(String, &'static str), (bool, String)>;

/// The transition times of `parents`' conditions: kept from `before` where a condition has the
/// same status as then, else `now`.
pub fn transitions(parents: &[ParentStatus], before: Option<&Transitions>, now: &str) -> Transitions {
    parents
        .iter()
        .flat_map(|p| p.conditions.iter().map(move |c| (p, c)))
        .map(|(p, c)| {
            let key = (p.parent_ref.clone(), c.type_);
            let time = match before.and_then(|b| b.get(&key)) {
                Some((status, time)) if *status == c.status => time.clone(),
                _ => now.to_owned(),
            };
            (key, (c.status, time))
        })
        .collect()
}

/// `parentRef` of an entry, as written.
fn parent_ref_json(p: &ParentStatus) -> Value {
    let mut parent_ref = json!({"group": p.group, "kind": p.kind, "namespace": p.namespace, "name": p.name});
    if let Some(port) = p.port {
        parent_ref["port"] = json!(port);
    }
    if let Some(section) = &p.section_name {
        parent_ref["sectionName"] = json!(section);
    }
    parent_ref
}

/// Our entries (by `controllerName`) of a route's `status.parents` as read.
fn ours(previous: &Value) -> impl Iterator<Item = &Value> {
    previous.as_array().into_iter().flatten().filter(|e| e["controllerName"] == CONTROLLER_NAME)
}

/// The transition times that our entries in `previous` (a route's `status.parents` as read)
/// give `parents`' conditions: those whose entry for the same `parentRef` has a condition of
/// the same type and status. A time that is not a string is not taken.
pub fn read_transitions(parents: &[ParentStatus], previous: &Value) -> Transitions {
    let mut times = Transitions::new();
    for p in parents {
        let parent_ref = parent_ref_json(p);
        let Some(entry) = ours(previous).find(|e| e["parentRef"] == parent_ref) else { continue };
        for c in &p.conditions {
            let status = if c.status { "True" } else { "False" };
            let time = entry["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|old| old["type"] == c.type_ && old["status"] == status)
                .and_then(|old| old["lastTransitionTime"].as_str());
            if let Some(time) = time {
                times.insert((p.parent_ref.clone(), c.type_), (c.status, time.to_owned()));
            }
        }
    }
    times
}

/// The server-side apply body of a route's status, each condition with its time from `times`
/// (`now` for one it lacks).
pub fn status_body(
    route: &ObjectKey,
    parents: &[ParentStatus],
    generation: i64,
    times: &Transitions,
    now: &str,
) -> Value {
    let parents: Vec<Value> = parents
        .iter()
        .map(|p| {
            let parent_ref = parent_ref_json(p);
            let conditions: Vec<Value> = p
                .conditions
                .iter()
                .map(|c| {
                    let time = times.get(&(p.parent_ref.clone(), c.type_)).map_or(now, |(_, t)| t.as_str());
                    json!({
                        "type": c.type_,
                        "status": if c.status { "True" } else { "False" },
                        "reason": c.reason,
                        "message": bounded(&c.message),
                        "observedGeneration": generation,
                        "lastTransitionTime": time,
                    })
                })
                .collect();
            json!({"parentRef": parent_ref, "controllerName": CONTROLLER_NAME, "conditions": conditions})
        })
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": route.kind.as_str(),
        "metadata": {"name": route.name, "namespace": route.namespace},
        "status": {"parents": parents},
    })
}

fn plural(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::HttpRoute => Some("httproutes"),
        Kind::GrpcRoute => Some("grpcroutes"),
        _ => None,
    }
}

/// A route's parents' status and the generation it describes.
pub type RouteStatus = (Vec<ParentStatus>, i64);

/// What was written of each route: its status, and when each condition took its status.
pub type Written = BTreeMap<ObjectKey, (RouteStatus, Transitions)>;

/// Writes the status of every route, translated or `rejected` by the source, whose status
/// differs from `written` (what this writer last wrote, with the generation it described), and
/// records what it wrote. A failed write is logged and retried next time.
pub async fn sync(
    client: &kube::Client,
    translator: &Arc<Mutex<Translator>>,
    rejected: &BTreeMap<ObjectKey, Arc<RejectedObject>>,
    written: &mut Written,
) -> usize {
    // Each route's status now, and for a route not written since the start, its
    // `status.parents` as read.
    let current: BTreeMap<ObjectKey, (RouteStatus, Option<Value>)> = {
        let t = translator.lock().unwrap_or_else(|p| p.into_inner());
        let model = t.model();
        let mut current: BTreeMap<_, _> = t
            .route_status()
            .iter()
            .map(|(k, parents)| {
                let nn = (k.namespace.clone(), k.name.clone());
                let route =
                    if k.kind == Kind::GrpcRoute { model.grpc_routes.get(&nn) } else { model.http_routes.get(&nn) };
                let generation = route.and_then(|r| r.metadata.generation).unwrap_or(0);
                let previous = if written.contains_key(k) {
                    None
                } else {
                    route
                        .and_then(|r| r.status.as_ref())
                        .and_then(|s| serde_json::to_value(s).ok())
                        .and_then(|mut s| s.get_mut("parents").map(Value::take))
                };
                (k.clone(), ((parents.clone(), generation), previous))
            })
            .collect();
        for (key, r) in rejected {
            let Some(RefusedRoute { generation, parent_refs, status_parents }) = &r.route else { continue };
            // In the model too: a valid version came after the rejection this set still holds.
            if !current.contains_key(key) {
                let parents = route::refused(model, &key.namespace, parent_refs, &r.error.to_string());
                let previous = if written.contains_key(key) { None } else { status_parents.clone() };
                current.insert(key.clone(), ((parents, *generation), previous));
            }
        }
        current
    };
    written.retain(|k, _| current.contains_key(k));
    let now =
        k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default().to_string();
    let mut n = 0;
    for (key, (status, previous)) in current {
        let Some(plural) = plural(key.kind) else { continue };
        let before = written.get(&key);
        // A route with no parent of ours gets nothing, unless it had some: then an empty
        // list takes away our entries, which would otherwise go on saying Accepted.
        let had_parents =
            before.is_some_and(|(s, _)| !s.0.is_empty()) || previous.as_ref().is_some_and(|p| ours(p).next().is_some());
        if (status.0.is_empty() && !had_parents) || before.is_some_and(|(s, _)| *s == status) {
            continue;
        }
        let (parents, generation) = &status;
        let read = previous.as_ref().map(|p| read_transitions(parents, p));
        let times = transitions(parents, before.map(|(_, t)| t).or(read.as_ref()), &now);
        let body = status_body(&key, parents, *generation, &times, &now);
        if previous.is_some_and(|p| p == body["status"]["parents"]) {
            // Already so on the object (written before a restart): nothing to write.
            written.insert(key, (status, times));
            continue;
        }
        let ar = ApiResource {
            group: "gateway.networking.k8s.io".into(),
            version: "v1".into(),
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: key.kind.as_str().into(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &ar);
        match api.patch_status(&key.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await {
            Ok(_) => {
                written.insert(key, (status, times));
                n += 1;
            }
            Err(e) => {
                tracing::warn!(route = %key, error = %e, "writing route status failed; retried on the next change")
            }
        }
    }
    n
}

/// Writes route status after every change the source reports on `changes`, until the sender
/// is gone; nothing before every kind is synced ([`KubeStatus::ready`]). Until then the model
/// is partial: a route listed before its parent Service would be written `Accepted` False
/// (`NoMatchingParent`), and then True again a moment later, at every start.
pub async fn writer(
    client: kube::Client,
    translator: Arc<Mutex<Translator>>,
    mut changes: watch::Receiver<KubeStatus>,
) {
    let mut written = BTreeMap::new();
    while changes.changed().await.is_ok() {
        // Changes come in bursts (a list is many events): let a burst settle into one pass.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let rejected = {
            let status = changes.borrow_and_update();
            if !status.ready() {
                continue;
            }
            status.rejected.clone()
        };
        sync(&client, &translator, &rejected, &mut written).await;
    }
}
