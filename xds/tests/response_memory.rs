//! What a client keeps of the pushes it received, counted by the allocator: a large push (a
//! type's first sync, megabytes in a large mesh) must not stay allocated for the stream's life.

#[path = "support/counting.rs"]
mod counting;
mod support;

use prost::Message;
use prost_types::Any;
use support::*;
use xds::{Client, Names, ResourceStore, cache_handler};

/// A type whose resources the test's client decodes and drops.
const PADDED: &str = "type.googleapis.com/google.protobuf.Any";

/// A resource of about `bytes`: an `Any` wrapping padding.
fn padded(bytes: usize) -> Any {
    let padding = Any { type_url: "padding".into(), value: vec![7; bytes] };
    Any { type_url: PADDED.into(), value: padding.encode_to_vec() }
}

#[tokio::test]
async fn a_large_push_is_not_kept_for_the_life_of_its_stream() {
    let store = ResourceStore::new();
    // A first sync of 6 MiB, in one push.
    store.update(PADDED, (0..12).map(|i| (format!("big-{i}"), padded(512 << 10))), []);
    let server = RunningServer::any_port(store.clone()).await;
    let before = counting::live();
    // The client keeps nothing of a resource but its name and version.
    let (cache, handler) = cache_handler(|_: &str, _: Any| Ok::<(), String>(()));
    let client =
        Client::new(node("node-a~10.0.0.1")).subscribe(PADDED, Names::Wildcard, handler).spawn(server.endpoint());
    client_until(&client, "the first sync acked", |s| s.types[PADDED].acks == 1).await;
    for i in 0..3 {
        store.set(PADDED, &format!("small-{i}"), padded(100));
        client_until(&client, "a small push acked", |s| s.types[PADDED].acks == 2 + i).await;
    }
    until("the server has the last ACK", || server.server.stats().acks == 4).await;
    assert_eq!(cache.snapshot().len(), 15);
    let kept = counting::live() - before;
    // The connection and both ends' state take a few hundred KiB.
    assert!(kept < 1 << 20, "the client and server keep {} KiB after a 6 MiB push", kept >> 10);
    drop(client);
}
