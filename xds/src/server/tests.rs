//! The per-stream state machine without a transport.

use prost::Message;
use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tonic::Code;

use super::status::Counters;
use super::stream::{MAX_NAME_LEN, MAX_NAMES, StreamState};
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
        .map(|push| {
            // Decoded as a client would: the encoding is under test too.
            let r = DeltaDiscoveryResponse::decode(push.encode_to_vec().as_slice()).unwrap();
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

/// The xDS protocol's legacy wildcard: a type's first request that subscribes to nothing by
/// name is a subscription to "*", whatever else it unsubscribes from; unsubscribing from "*" in
/// that same request ends it, as it ends an explicit "*".
#[test]
fn a_first_request_that_unsubscribes_from_star_subscribes_to_nothing() {
    let store = store();
    let counters = Counters::default();
    let mut state = StreamState::new(1, None);
    state.handle_request(request(&[], &["*"]), &counters).unwrap();
    assert!(!state.status().types[T].wildcard);
    let pushes = push(&mut state, &store);
    assert_eq!(pushes.len(), 1, "the request is answered");
    assert!(pushes[0].0.is_empty() && pushes[0].1.is_empty(), "{pushes:?}");
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    store.set(T, "d", body(b"d"));
    assert!(push(&mut state, &store).is_empty(), "nothing of the type is sent");
    // Names subscribed later come, and only they.
    state.handle_request(request(&["b"], &[]), &counters).unwrap();
    assert_eq!(push(&mut state, &store)[0].0, ["b"]);

    // Unsubscribing from a name only, the first request is still the legacy wildcard.
    let mut state = StreamState::new(2, None);
    state.handle_request(request(&[], &["a"]), &counters).unwrap();
    assert!(state.status().types[T].wildcard);
    assert_eq!(push(&mut state, &store)[0].0, ["a", "b", "c", "d"]);
    // And a name both subscribed and unsubscribed in a first request is not subscribed.
    let mut state = StreamState::new(3, None);
    state.handle_request(request(&["a", "b"], &["a"]), &counters).unwrap();
    assert_eq!(push(&mut state, &store)[0].0, ["b"]);
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

    // What a stream keeps for its life is bounded in length: type URLs, and the names and
    // versions declared on resume, like subscribed names.
    let mut state = StreamState::new(1, None);
    let mut r = request(&[], &[]);
    r.type_url = format!("type.googleapis.com/{}", "t".repeat(MAX_NAME_LEN));
    let err = state.handle_request(r, &counters).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("DeltaDiscoveryRequest.type_url of 1044 bytes"), "{}", err.message());
    for (name, version) in
        [("n".repeat(MAX_NAME_LEN + 1), "v".to_owned()), ("n".to_owned(), "v".repeat(MAX_NAME_LEN + 1))]
    {
        let mut state = StreamState::new(1, None);
        let mut r = request(&[], &[]);
        r.initial_resource_versions = [(name, version)].into();
        let err = state.handle_request(r, &counters).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("DeltaDiscoveryRequest.initial_resource_versions of"), "{}", err.message());
    }
}

#[test]
fn names_per_type_are_bounded_on_a_stream() {
    let counters = Counters::default();
    let many = |from: usize, n: usize| (from..from + n).map(|i| format!("n{i}")).collect::<Vec<_>>();

    // Up to the limit over several requests; names already held do not count again.
    let mut state = StreamState::new(1, None);
    let mut r = request(&[], &[]);
    r.resource_names_subscribe = many(0, MAX_NAMES / 2);
    state.handle_request(r, &counters).unwrap();
    let mut r = request(&[], &[]);
    r.resource_names_subscribe = many(0, MAX_NAMES);
    state.handle_request(r, &counters).unwrap();
    state.handle_request(request(&["n0", "*"], &[]), &counters).unwrap();
    // One more: refused, naming the type and the limit; nothing beyond it is kept.
    let err = state.handle_request(request(&["one-more"], &[]), &counters).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains(T) && err.message().contains(&MAX_NAMES.to_string()), "{}", err.message());
    assert_eq!(state.status().types[T].names.len(), MAX_NAMES);
    // Unsubscribing makes room again.
    state.handle_request(request(&[], &["n0"]), &counters).unwrap();
    state.handle_request(request(&["one-more"], &[]), &counters).unwrap();
    // Another type has a limit of its own.
    let mut other = request(&["a"], &[]);
    other.type_url = "type.googleapis.com/test.Other".to_owned();
    state.handle_request(other, &counters).unwrap();

    // A name longer than any resource's: refused, saying how long.
    let mut state = StreamState::new(2, None);
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let err = state.handle_request(request(&[&long], &[]), &counters).unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains(&format!("{} bytes", MAX_NAME_LEN + 1)), "{}", err.message());
    let mut state = StreamState::new(3, None);
    state.handle_request(request(&[&"x".repeat(MAX_NAME_LEN)], &[]), &counters).unwrap();

    // Resume versions: as many as the limit on a wildcard stream, not one more.
    let versions = |n: usize| many(0, n).into_iter().map(|name| (name, "v0".to_owned())).collect();
    let mut state = StreamState::new(4, None);
    let mut r = request(&[], &[]);
    r.initial_resource_versions = versions(MAX_NAMES);
    state.handle_request(r, &counters).unwrap();
    assert_eq!(state.status().types[T].acked.len(), MAX_NAMES);
    let mut state = StreamState::new(5, None);
    let mut r = request(&[], &[]);
    r.initial_resource_versions = versions(MAX_NAMES + 1);
    let err = state.handle_request(r, &counters).unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("initial_resource_versions") && err.message().contains(T), "{}", err.message());
    // Versions of names not subscribed to are not kept, so do not count.
    let mut state = StreamState::new(6, None);
    let mut r = request(&["n0"], &[]);
    r.initial_resource_versions = versions(MAX_NAMES + 1);
    state.handle_request(r, &counters).unwrap();
    assert_eq!(state.status().types[T].acked.len(), 1);
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

fn nack(nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(proto::google::rpc::Status { code: 3, message: "bad".to_owned(), details: Vec::new() }),
        ..ack(nonce)
    }
}

fn full_diffs(state: &StreamState) -> u64 {
    state.status().types[T].full_diffs
}

/// A wildcard stream that has acknowledged everything in `store`.
fn synced(store: &ResourceStore, counters: &Counters) -> StreamState {
    let mut state = StreamState::new(1, None);
    state.handle_request(request(&["*"], &[]), counters).unwrap();
    let pushes = push(&mut state, store);
    assert_eq!(pushes.len(), 1);
    state.handle_request(ack(&pushes[0].2), counters).unwrap();
    state
}

fn many(n: usize) -> ResourceStore {
    let store = ResourceStore::new();
    store.update(T, (0..n).map(|i| (format!("r{i:05}"), body(format!("{i}").as_bytes()))), []);
    store
}

#[test]
fn a_change_after_many_resources_pushes_that_resource_from_the_change_log() {
    let store = many(3000);
    let counters = Counters::default();
    let mut state = synced(&store, &counters);
    assert_eq!(state.status().types[T].acked.len(), 3000);
    assert_eq!(full_diffs(&state), 1);
    store.set(T, "r01234", body(b"new"));
    let pushes = push(&mut state, &store);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, ["r01234"]);
    assert!(pushes[0].1.is_empty());
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    assert!(state.holds(T, "r01234", Some(&store.get(T, "r01234").unwrap().version)));
    // A new resource among the many, then nothing more to send.
    store.set(T, "r99999", body(b"added"));
    assert_eq!(push(&mut state, &store)[0].0, ["r99999"]);
    assert_eq!(full_diffs(&state), 1, "both pushes came from the change log");
}

#[test]
fn a_removal_from_the_change_log_is_pushed_once() {
    let store = many(100);
    let counters = Counters::default();
    let mut state = synced(&store, &counters);
    store.remove(T, "r00042");
    let pushes = push(&mut state, &store);
    assert_eq!(pushes.len(), 1);
    assert!(pushes[0].0.is_empty());
    assert_eq!(pushes[0].1, ["r00042"]);
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    assert!(state.holds(T, "r00042", None));
    assert!(push(&mut state, &store).is_empty());
    // Removed and added back with the content the client had dropped: it is owed again.
    store.set(T, "r00042", body(b"42"));
    assert_eq!(push(&mut state, &store)[0].0, ["r00042"]);
    assert_eq!(full_diffs(&state), 1);
}

#[test]
fn a_trimmed_change_log_falls_back_to_a_full_diff_that_is_still_exact() {
    let store = ResourceStore::with_change_log(2);
    store.update(T, (0..50).map(|i| (format!("r{i:02}"), body(&[i]))), []);
    let counters = Counters::default();
    let mut state = synced(&store, &counters);
    store.set(T, "r07", body(b"x"));
    store.set(T, "r08", body(b"x"));
    store.remove(T, "r09");
    let pushes = push(&mut state, &store);
    assert_eq!(full_diffs(&state), 2, "three changes in a log of two");
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, ["r07", "r08"]);
    assert_eq!(pushes[0].1, ["r09"]);
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    // Within the log's reach again.
    store.set(T, "r10", body(b"x"));
    assert_eq!(push(&mut state, &store)[0].0, ["r10"]);
    assert_eq!(full_diffs(&state), 2);
}

#[test]
fn changes_during_an_outstanding_push_are_coalesced_into_the_next() {
    let store = many(100);
    let counters = Counters::default();
    let mut state = synced(&store, &counters);
    // Two changes before the stream looks: one push with both.
    store.set(T, "r00001", body(b"one"));
    store.set(T, "r00002", body(b"two"));
    let pushes = push(&mut state, &store);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, ["r00001", "r00002"]);
    // While that push is unanswered: nothing more is sent.
    store.set(T, "r00002", body(b"two again"));
    store.set(T, "r00003", body(b"three"));
    store.remove(T, "r00004");
    assert!(push(&mut state, &store).is_empty());
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    let pushes = push(&mut state, &store);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, ["r00002", "r00003"], "r00001 was acknowledged as it is");
    assert_eq!(pushes[0].1, ["r00004"]);
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    assert!(push(&mut state, &store).is_empty());
    let acked = &state.status().types[T].acked;
    let stored: std::collections::BTreeMap<String, String> =
        store.versions(T).into_iter().map(|(n, v)| (n, v.to_string())).collect();
    assert_eq!(acked, &stored);
    assert_eq!(full_diffs(&state), 1);
}

#[test]
fn a_rejected_push_is_not_resent_alone_but_rides_along_with_the_next_change() {
    let store = many(100);
    let counters = Counters::default();
    let mut state = synced(&store, &counters);
    store.set(T, "r00010", body(b"bad"));
    store.remove(T, "r00011");
    let pushes = push(&mut state, &store);
    state.handle_request(nack(&pushes[0].2), &counters).unwrap();
    assert!(push(&mut state, &store).is_empty(), "resending the rejected push would be rejected again");
    let old = store.get(T, "r00012").unwrap().version;
    store.set(T, "r00012", body(b"other"));
    let pushes = push(&mut state, &store);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, ["r00010", "r00012"], "the rejected resource is still owed");
    assert_eq!(pushes[0].1, ["r00011"], "so is the rejected removal");
    state.handle_request(nack(&pushes[0].2), &counters).unwrap();
    assert!(state.holds(T, "r00012", Some(&old)), "a NACK leaves the client's versions");
    // A new version of a rejected resource is news by itself.
    store.set(T, "r00010", body(b"fixed"));
    let pushes = push(&mut state, &store);
    assert_eq!(pushes[0].0, ["r00010", "r00012"]);
    assert_eq!(pushes[0].1, ["r00011"]);
    state.handle_request(ack(&pushes[0].2), &counters).unwrap();
    assert!(push(&mut state, &store).is_empty());
    assert!(state.holds(T, "r00011", None));
    assert_eq!(state.status().types[T].nacks, 2);
    assert_eq!(full_diffs(&state), 1);
}

#[test]
fn incremental_diffs_agree_with_the_store_over_random_changes() {
    // Small log so some rounds fall back to the full diff; a fixed LCG so a
    // failure reproduces.
    let store = ResourceStore::with_change_log(8);
    store.update(T, (0..40).map(|i| (format!("r{i:02}"), body(&[i]))), []);
    let counters = Counters::default();
    let mut state = StreamState::new(1, None);
    state.handle_request(request(&["*"], &[]), &counters).unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % bound
    };
    let stored = |store: &ResourceStore| -> std::collections::BTreeMap<String, String> {
        store.versions(T).into_iter().map(|(n, v)| (n, v.to_string())).collect()
    };
    for round in 0..400 {
        // Now and then a burst longer than the log.
        let changes = if next(10) == 0 { 12 } else { next(4) };
        for _ in 0..changes {
            let name = format!("r{:02}", next(48));
            if next(4) == 0 {
                store.remove(T, &name);
            } else {
                store.set(T, &name, body(&[u8::try_from(next(3)).unwrap()]));
            }
        }
        for (_, _, nonce) in push(&mut state, &store) {
            let answer = if next(5) == 0 { nack(&nonce) } else { ack(&nonce) };
            state.handle_request(answer, &counters).unwrap();
        }
        // Acknowledge until nothing is owed: the client then holds the store exactly.
        if round % 10 == 9 {
            store.set(T, "sync", body(&round.to_string().into_bytes()));
            while let Some((_, _, nonce)) = push(&mut state, &store).pop() {
                state.handle_request(ack(&nonce), &counters).unwrap();
            }
            assert_eq!(state.status().types[T].acked, stored(&store), "round {round}");
        }
    }
    let full = full_diffs(&state);
    assert!(full > 1 && full < 200, "{full} full diffs: the log should serve most rounds");
}
