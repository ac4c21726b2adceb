//! Watch events of one kind → model changes, with the directory source's rules for bad
//! objects: a rejected security object keeps its last good version, or is enforced as its
//! fail-closed stand-in if it never had one; any other rejected object leaves the model.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::DynamicObject;

use super::convert::{Rejected, Remains, convert, key_of};
use super::{RejectedObject, Watched};
use crate::model::{Kind, Model, Object, ObjectKey};
use crate::translator::Change;

fn is_security(kind: Kind) -> bool {
    matches!(kind, Kind::AuthorizationPolicy | Kind::PeerAuthentication)
}

fn has(model: &Model, key: &ObjectKey) -> bool {
    let nn = (key.namespace.clone(), key.name.clone());
    match key.kind {
        Kind::Namespace => model.namespaces.contains_key(&key.name),
        Kind::Node => model.nodes.contains_key(&key.name),
        Kind::Pod => model.pods.contains_key(&nn),
        Kind::Service => model.services.contains_key(&nn),
        Kind::EndpointSlice => model.endpoint_slices.contains_key(&nn),
        Kind::AuthorizationPolicy => model.authorization_policies.contains_key(&nn),
        Kind::PeerAuthentication => model.peer_authentications.contains_key(&nn),
        Kind::Gateway => model.gateways.contains_key(&nn),
        Kind::HttpRoute => model.http_routes.contains_key(&nn),
        Kind::GrpcRoute => model.grpc_routes.contains_key(&nn),
        Kind::ReferenceGrant => model.reference_grants.contains_key(&nn),
    }
}

/// One converted object of a list or event.
type Converted = (Result<Object, Rejected>, Option<String>);

/// The state of one kind's watch between events.
#[derive(Debug, Default)]
pub(super) struct KindState {
    /// Objects of the list in progress (between `Init` and `InitDone`).
    listing: Option<Vec<Converted>>,
}

/// What one event does: changes to apply, and how the set of rejected objects changes.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Changes for the translator.
    pub changes: Vec<Change>,
    /// Objects newly rejected (replacing any earlier rejection of the same key).
    pub rejected: Vec<Arc<RejectedObject>>,
    /// Keys no longer rejected.
    pub cleared: Vec<ObjectKey>,
    /// For a completed list: every earlier rejection of this kind is void.
    pub clear_kind: bool,
}

/// Splits a rejection into its report and the change it makes.
fn rejected(model: &Model, r: Rejected, resource_version: Option<String>) -> (Arc<RejectedObject>, Option<Change>) {
    let Rejected { key, error, remains } = r;
    let (stand_in, route) = match remains.map(|r| *r) {
        Some(Remains::StandIn(o)) => (Some(o), None),
        Some(Remains::Route(route)) => (None, Some(route)),
        None => (None, None),
    };
    let change = on_rejected(model, &key, stand_in);
    (Arc::new(RejectedObject { object: key, resource_version, error, route }), change)
}

/// The change a rejected object makes: keep what the model has of a security object, or
/// put in its stand-in; drop anything else.
fn on_rejected(model: &Model, key: &ObjectKey, stand_in: Option<Object>) -> Option<Change> {
    if !is_security(key.kind) {
        return has(model, key).then(|| Change::Delete(key.clone()));
    }
    if has(model, key) {
        tracing::warn!(object = %key, "invalid; keeping its last good version");
        return None;
    }
    tracing::warn!(object = %key, "invalid and never valid; enforcing its fail-closed stand-in");
    stand_in.map(Change::Upsert)
}

impl KindState {
    /// A list starts.
    pub fn init(&mut self) {
        self.listing = Some(Vec::new());
    }

    /// An object of the list in progress.
    pub fn init_apply(&mut self, w: &Watched, obj: &DynamicObject) {
        let rv = obj.metadata.resource_version.clone();
        self.listing.get_or_insert_with(Vec::new).push((convert(w, obj), rv));
    }

    /// The list is complete: the model's objects of this kind become exactly the listed ones.
    pub fn init_done(&mut self, w: &Watched, model: &Model) -> Outcome {
        let listed = self.listing.take().unwrap_or_default();
        let keys: BTreeSet<ObjectKey> = listed
            .iter()
            .map(|(r, _)| match r {
                Ok(o) => o.key(),
                Err(r) => r.key.clone(),
            })
            .collect();
        let mut out = Outcome { clear_kind: true, ..Outcome::default() };
        // Objects deleted while we were not watching.
        out.changes
            .extend(model.keys().into_iter().filter(|k| k.kind == w.kind && !keys.contains(k)).map(Change::Delete));
        for (r, rv) in listed {
            match r {
                Ok(o) => out.changes.push(Change::Upsert(o)),
                Err(r) => {
                    let (report, change) = rejected(model, r, rv);
                    out.rejected.push(report);
                    out.changes.extend(change);
                }
            }
        }
        out
    }

    /// An object was added or modified (`converted` by [`convert`]).
    pub fn apply(
        &mut self,
        converted: Result<Object, Rejected>,
        resource_version: Option<String>,
        model: &Model,
    ) -> Outcome {
        let mut out = Outcome::default();
        match converted {
            Ok(o) => {
                out.cleared.push(o.key());
                out.changes.push(Change::Upsert(o));
            }
            Err(r) => {
                let (report, change) = rejected(model, r, resource_version);
                out.rejected.push(report);
                out.changes.extend(change);
            }
        }
        out
    }

    /// An object was deleted (whatever its last content, valid or not).
    pub fn delete(&mut self, w: &Watched, obj: &DynamicObject) -> Outcome {
        let key = key_of(w, obj);
        Outcome { cleared: vec![key.clone()], changes: vec![Change::Delete(key)], ..Outcome::default() }
    }
}

/// Applies an outcome's rejections to the current set.
pub(super) fn update_rejected(set: &mut BTreeMap<ObjectKey, Arc<RejectedObject>>, kind: Kind, out: &Outcome) {
    if out.clear_kind {
        set.retain(|k, _| k.kind != kind);
    }
    for k in &out.cleared {
        set.remove(k);
    }
    for r in &out.rejected {
        set.insert(r.object.clone(), r.clone());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::source::kube::WATCHED;

    fn policies() -> &'static Watched {
        WATCHED.iter().find(|w| w.kind == Kind::AuthorizationPolicy).unwrap()
    }

    fn policy(name: &str, action: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": action, "rules": [{}]}
        }))
        .unwrap()
    }

    fn apply(model: &mut Model, out: &Outcome) {
        for c in &out.changes {
            match c {
                Change::Upsert(o) => {
                    model.upsert(o.clone());
                }
                Change::Delete(k) => {
                    model.remove(k);
                }
            }
        }
    }

    fn names(model: &Model) -> Vec<String> {
        model.keys().into_iter().map(|k| k.name).collect()
    }

    #[test]
    fn a_relist_replaces_the_kind_even_after_an_aborted_list() {
        let w = policies();
        let mut model = Model::default();
        let mut state = KindState::default();
        state.init();
        state.init_apply(w, &policy("allow-old", "ALLOW"));
        state.init_apply(w, &policy("deny-a", "DENY"));
        let out = state.init_done(w, &model);
        apply(&mut model, &out);
        assert_eq!(names(&model), ["allow-old", "deny-a"]);

        // Disconnected: `allow-old` deleted, `deny-b` added. A first re-list fails after one
        // page (its objects must not count), the next one completes.
        state.init();
        state.init_apply(w, &policy("allow-old", "ALLOW"));
        state.init();
        state.init_apply(w, &policy("deny-a", "DENY"));
        state.init_apply(w, &policy("deny-b", "DENY"));
        let out = state.init_done(w, &model);
        apply(&mut model, &out);
        assert_eq!(names(&model), ["deny-a", "deny-b"], "a stale ALLOW or a lost DENY");
        assert!(out.clear_kind && out.rejected.is_empty());
    }

    #[test]
    fn a_policy_that_turns_bad_keeps_its_last_good_version_as_in_the_directory_source() {
        let w = policies();
        let mut model = Model::default();
        let mut state = KindState::default();
        let good = policy("deny-a", "DENY");
        let out = state.apply(convert(w, &good), None, &model);
        apply(&mut model, &out);
        let mut bad = policy("deny-a", "DENY");
        bad.data["spec"]["rules"] = json!([{"from": [{"source": {"principal": ["x"]}}]}]);
        let out = state.apply(convert(w, &bad), Some("2".into()), &model);
        apply(&mut model, &out);
        assert_eq!(out.rejected.len(), 1, "reported");
        assert!(out.rejected[0].to_string().contains("spec.rules[0].from[0].source"), "{}", out.rejected[0]);
        let kept = &model.authorization_policies[&("shop".to_owned(), "deny-a".to_owned())];
        assert!(kept.spec.rules[0].from.is_none(), "the good version stays: {kept:?}");
        // And through a re-list.
        state.init();
        state.init_apply(w, &bad);
        let out = state.init_done(w, &model);
        apply(&mut model, &out);
        assert_eq!((names(&model), out.rejected.len()), (vec!["deny-a".to_owned()], 1));
    }
}
