//! The per-stream state machine without a transport.

use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Code;

use super::status::Counters;
use super::stream::StreamState;
use crate::store::ResourceStore;

const T: &str = "type.googleapis.com/test.T";

fn body(value: &[u8]) -> prost_types::Any {
    prost_types::Any { type_url: T.to_owned(), value: value.to_vec() }
}

fn request(subscribe: &[&str], unsubscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: T.to_owned(),
        resource_names_subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn ack(nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { type_url: T.to_owned(), response_nonce: nonce.to_owned(), ..Default::default() }
}

/// Pushes due now, as (sorted names, removals, nonce).
fn push(state: &mut StreamState, store: &ResourceStore) -> Vec<(Vec<String>, Vec<String>, String)> {
    let counters = Counters::default();
    state
        .collect_pushes(&store.read(), store.revision(), &counters)
        .into_iter()
        .map(|r| {
            let mut names: Vec<_> = r.resources.into_iter().map(|r| r.name).collect();
            names.sort();
            (names, r.removed_resources, r.nonce)
        })
        .collect()
}

fn store() -> ResourceStore {
    let store = ResourceStore::new();
    for name in ["a", "b", "c"] {
        store.set(T, name, body(name.as_bytes()));
    }
    store
}

#[test]
fn explicit_star_is_wildcard_and_unsubscribing_it_keeps_explicit_names() {
    let store = store();
    let counters = Counters::default();
    let mut state = StreamState::new(1, None);
    state.handle_request(request(&["*", "b"], &[]), &counters).unwrap();
    let pushes = push(&mut state, &store);
    assert_eq!(pushes[0].0, ["a", "b", "c"]);
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    state.handle_request(request(&[], &["*"]), &counters).unwrap();
    let status = state.status();
    let t = &status.types[T];
    assert!(!t.wildcard);
    assert_eq!(t.acked.keys().collect::<Vec<_>>(), ["b"]);
    // Nothing owed: the client drops unsubscribed resources itself.
    assert!(push(&mut state, &store).is_empty());
    store.remove(T, "a");
    assert!(push(&mut state, &store).is_empty());
    store.remove(T, "b");
    let pushes = push(&mut state, &store);
    assert_eq!(pushes[0].1, ["b"]);
}

#[test]
fn resume_versions_only_count_for_subscribed_names_and_owe_removals() {
    let store = store();
    let counters = Counters::default();
    let mut state = StreamState::new(1, None);
    let mut first = request(&["a", "gone"], &[]);
    first.initial_resource_versions = [
        ("a".to_owned(), store.get(T, "a").unwrap().version.to_string()),
        ("gone".to_owned(), "v0".to_owned()),
        ("c".to_owned(), "v0".to_owned()),
    ]
    .into();
    state.handle_request(first, &counters).unwrap();
    let status = state.status();
    assert_eq!(status.types[T].acked.keys().collect::<Vec<_>>(), ["a", "gone"]);
    let pushes = push(&mut state, &store);
    assert_eq!(pushes.len(), 1);
    assert!(pushes[0].0.is_empty(), "a is current, c not subscribed");
    assert_eq!(pushes[0].1, ["gone"]);
}

#[test]
fn bad_requests_are_refused_with_the_field() {
    let counters = Counters::default();
    let mut state = StreamState::new(1, None);
    let err = state.handle_request(DeltaDiscoveryRequest::default(), &counters).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for i in 0..64 {
        let mut r = request(&[], &[]);
        r.type_url = format!("type.googleapis.com/t{i}");
        state.handle_request(r, &counters).unwrap();
    }
    let err = state.handle_request(request(&[], &[]), &counters).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains(T), "{}", err.message());
}

#[test]
fn holds_answers_what_status_says_without_building_it() {
    let store = store();
    let counters = Counters::default();
    let mut state = StreamState::new(1, None);
    state.handle_request(request(&["a", "b"], &[]), &counters).unwrap();
    let pushes = push(&mut state, &store);
    let va = store.get(T, "a").unwrap().version;
    assert!(!state.holds(T, "a", Some(&va)), "pushed but not yet acknowledged");
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    assert!(state.holds(T, "a", Some(&va)));
    assert!(!state.holds(T, "a", Some("another-version")));
    assert!(!state.holds(T, "a", None), "held, so not removed");
    assert!(state.holds(T, "c", Some("any")), "not subscribed: nothing to wait for");
    assert!(state.holds("type.googleapis.com/other", "a", None), "type not subscribed");
    assert_eq!(state.status().types[T].acked["a"], &*va);
}
