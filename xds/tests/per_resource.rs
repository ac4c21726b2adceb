//! A per-resource handler ([`xds::cache_handler_per_resource`]) against our server: what a push
//! applied in part leaves in the client's cache and in the versions it resumes from.

mod support;

use support::*;
use xds::{Client, ClientHandle, Names, ResourceStore, cache_handler_per_resource};

fn per_resource_client(server: &RunningServer) -> (ClientHandle, xds::Cache<CachedWorkload>) {
    let (cache, handler) = cache_handler_per_resource(convert);
    let handle = Client::new(node("node-a~10.0.0.1"))
        .backoff(fast_backoff())
        .subscribe(ADDRESS, Names::Wildcard, handler)
        .spawn(server.endpoint());
    (handle, cache)
}

fn held(cache: &xds::Cache<CachedWorkload>) -> Vec<String> {
    cache.snapshot().into_keys().collect()
}

/// A server holding `default/a` and `default/b` and a client of it, brought to: `default/a`
/// rejected (a good version of it dropped), `default/c` new and applied beside it in the same
/// NACKed push.
async fn reject_a_and_apply_c() -> (ResourceStore, RunningServer, ClientHandle, xds::Cache<CachedWorkload>) {
    let store = ResourceStore::new();
    store.set(ADDRESS, "default/a", workload("default/a", [10, 0, 0, 1]));
    store.set(ADDRESS, "default/b", workload("default/b", [10, 0, 0, 2]));
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = per_resource_client(&server);
    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;
    store.update(
        ADDRESS,
        [
            // A workload whose uid is not its resource name: the handler refuses it.
            ("default/a".to_owned(), workload("default/other", [10, 0, 0, 9])),
            ("default/c".to_owned(), workload("default/c", [10, 0, 0, 3])),
        ],
        [],
    );
    let status = client_until(&client, "the NACK", |s| s.types[ADDRESS].nacks == 1).await;
    assert!(status.types[ADDRESS].last_nack.as_ref().unwrap().contains("\"default/a\""));
    assert_eq!(held(&cache), ["default/b", "default/c"], "a dropped, c applied");
    (store, server, client, cache)
}

/// A push applied in part is recorded as applied in part: the versions a resumed stream declares
/// are what the cache holds. Declaring the dropped resource's old version would keep it from
/// ever being sent again once the control plane reverts it (versions are digests of the
/// content), and leaving out the one applied beside it would keep its removal from ever being
/// sent: a deleted workload kept for good.
#[tokio::test]
async fn a_resumed_stream_declares_what_a_partly_rejected_push_left() {
    let (store, server, client, cache) = reject_a_and_apply_c().await;
    let status = client.status();
    let versions: Vec<_> = status.types[ADDRESS].versions.keys().cloned().collect();
    assert_eq!(versions, ["default/b", "default/c"], "the versions are what the cache holds");
    assert_eq!(
        status.types[ADDRESS].versions["default/c"],
        store.get(ADDRESS, "default/c").unwrap().version.to_string()
    );

    // The control plane rolls a back (the version it had) and deletes c; then the stream drops.
    store.update(ADDRESS, [("default/a".to_owned(), workload("default/a", [10, 0, 0, 1]))], ["default/c".to_owned()]);
    server.server.disconnect_all();
    client_until(&client, "resumed", |s| s.streams == 2 && s.connected).await;
    until("a back and c gone after the resume", || held(&cache) == ["default/a", "default/b"]).await;
    assert_eq!(cache.get("default/a").unwrap().ip, vec![10, 0, 0, 1]);
    let status = client_until(&client, "the resumed stream acked", |s| s.types[ADDRESS].acks >= 2).await;
    let expected: std::collections::BTreeMap<_, _> =
        store.versions(ADDRESS).into_iter().map(|(n, v)| (n, v.to_string())).collect();
    assert_eq!(status.types[ADDRESS].versions, expected);
}

/// The same without a new stream: after a NACK the server cannot tell which names of the
/// rejected push the client kept, so a rollback of the dropped resource (same content, same
/// version as acknowledged before) and the removal of one applied beside it (never
/// acknowledged) are still sent on that stream.
#[tokio::test]
async fn a_rollback_and_a_removal_after_a_partly_rejected_push_reach_the_client_on_the_same_stream() {
    let (store, _server, client, cache) = reject_a_and_apply_c().await;

    store.update(ADDRESS, [("default/a".to_owned(), workload("default/a", [10, 0, 0, 1]))], ["default/c".to_owned()]);
    until("a back and c gone on the same stream", || held(&cache) == ["default/a", "default/b"]).await;
    assert_eq!(client.status().streams, 1);
}
