//! Delta ADS between our client and server over loopback, and raw streams
//! against the server, asserting on what crosses the wire.

mod support;

use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use proto::google::rpc::Status as RpcStatus;
use support::*;
use xds::{Names, ResourceStore};

fn store_with(entries: &[(&str, [u8; 4])]) -> ResourceStore {
    let store = ResourceStore::new();
    for (uid, ip) in entries {
        store.set(ADDRESS, uid, workload(uid, *ip));
    }
    store
}

fn version(store: &ResourceStore, name: &str) -> String {
    store.get(ADDRESS, name).unwrap().version.to_string()
}

#[tokio::test]
async fn ack_flow_fills_cache_and_server_records_versions() {
    let store = store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2])]);
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = address_client(server.endpoint(), Names::Wildcard);

    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.get("default/b").unwrap().ip, vec![10, 0, 0, 2]);

    until("server sees the ACK", || server.server.stats().acks == 1).await;
    let connections = server.server.connections();
    assert_eq!(connections.len(), 1);
    let conn = &connections[0];
    assert_eq!(conn.node_id, "node-a~10.0.0.1");
    assert_eq!(conn.node_cluster, "Kubernetes");
    let metadata = &conn.node.as_ref().unwrap().metadata.as_ref().unwrap().fields;
    assert_eq!(metadata["NODE_NAME"].kind, Some(prost_types::value::Kind::StringValue("node-a".to_owned())));
    assert!(conn.peer.unwrap().ip().is_loopback());
    let t = &conn.types[ADDRESS];
    assert!(t.wildcard);
    assert_eq!(t.pending_nonce, None);
    assert!(t.last_acked_nonce.is_some());
    assert_eq!(t.acked["default/a"], version(&store, "default/a"));
    assert_eq!(t.acked["default/b"], version(&store, "default/b"));
    // Debug output is JSON-serializable.
    let json = serde_json::to_value(&connections).unwrap();
    assert_eq!(json[0]["node_id"], "node-a~10.0.0.1");

    // One change: exactly one resource crosses the wire.
    store.set(ADDRESS, "default/a", workload("default/a", [10, 0, 0, 9]));
    let status = client_until(&client, "update acked", |s| s.types[ADDRESS].acks == 2).await;
    assert_eq!(status.types[ADDRESS].resources_received, 3);
    assert_eq!(cache.get("default/a").unwrap().ip, vec![10, 0, 0, 9]);
    assert_eq!(status.types[ADDRESS].versions["default/a"], version(&store, "default/a"));
    until("server sees the second ACK", || server.server.stats().acks == 2).await;
    assert_eq!(server.server.stats().resources_sent, 3);
    assert_eq!(server.server.connections()[0].types[ADDRESS].acked["default/a"], version(&store, "default/a"));
}

#[tokio::test]
async fn nack_keeps_last_good_state_and_is_not_resent_until_changed() {
    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = address_client(server.endpoint(), Names::Wildcard);
    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;
    let good_version = version(&store, "default/a");

    // A workload whose uid is not its resource name: the handler rejects it.
    store.set(ADDRESS, "default/a", workload("default/other", [10, 0, 0, 2]));
    let status = client_until(&client, "NACK", |s| s.types[ADDRESS].nacks == 1).await;
    let message = status.types[ADDRESS].last_nack.clone().unwrap();
    assert!(message.contains("default/a"), "{message}");
    assert!(message.contains("not the resource name"), "{message}");
    // Last good state kept, in the cache and in the versions resumed from.
    assert_eq!(cache.get("default/a").unwrap().ip, vec![10, 0, 0, 1]);
    assert_eq!(status.types[ADDRESS].versions["default/a"], good_version);

    until("server records the NACK", || server.server.stats().nacks == 1).await;
    let t = server.server.connections()[0].types[ADDRESS].clone();
    let nack = t.last_nack.expect("NACK recorded");
    assert!(nack.message.contains("not the resource name"));
    assert_eq!(nack.rejected["default/a"], version(&store, "default/a"));
    assert_eq!(t.acked["default/a"], good_version);
    assert_eq!(t.pending_nonce, None);

    // Setting the same bad content again is no change: nothing is resent.
    let pushes = server.server.stats().pushes;
    store.set(ADDRESS, "default/a", workload("default/other", [10, 0, 0, 2]));
    tokio::time::sleep(QUIET).await;
    assert_eq!(server.server.stats().pushes, pushes);
    assert_eq!(client.status().types[ADDRESS].pushes, 2);

    // A fix is pushed and accepted.
    store.set(ADDRESS, "default/a", workload("default/a", [10, 0, 0, 3]));
    client_until(&client, "fix acked", |s| s.types[ADDRESS].acks == 2).await;
    assert_eq!(cache.get("default/a").unwrap().ip, vec![10, 0, 0, 3]);
    until("server clears the NACK", || server.server.connections()[0].types[ADDRESS].last_nack.is_none()).await;
}

#[tokio::test]
async fn undecodable_body_is_nacked_with_the_resource_name() {
    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = address_client(server.endpoint(), Names::Wildcard);
    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;

    let garbage = prost_types::Any { type_url: ADDRESS.to_owned(), value: vec![0xff, 0xff, 0xff] };
    store.set(ADDRESS, "default/bad", garbage);
    let status = client_until(&client, "NACK", |s| s.types[ADDRESS].nacks == 1).await;
    let message = status.types[ADDRESS].last_nack.clone().unwrap();
    assert!(message.contains("default/bad"), "{message}");

    let wrong_type = prost_types::Any { type_url: proto::AUTHORIZATION_TYPE_URL.to_owned(), value: Vec::new() };
    store.set(ADDRESS, "default/bad", wrong_type);
    let status = client_until(&client, "second NACK", |s| s.types[ADDRESS].nacks == 2).await;
    let message = status.types[ADDRESS].last_nack.clone().unwrap();
    assert!(message.contains("istio.security.Authorization"), "{message}");
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn removal_reaches_client() {
    let store = store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2])]);
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = address_client(server.endpoint(), Names::Wildcard);
    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;
    assert_eq!(cache.len(), 2);

    assert!(store.remove(ADDRESS, "default/a"));
    let status = client_until(&client, "removal acked", |s| s.types[ADDRESS].acks == 2).await;
    assert_eq!(status.types[ADDRESS].removals_received, 1);
    assert!(cache.get("default/a").is_none());
    assert_eq!(cache.len(), 1);
    assert!(!status.types[ADDRESS].versions.contains_key("default/a"));
    until("server sees the ACK", || server.server.stats().acks == 2).await;
    assert_eq!(server.server.stats().removals_sent, 1);
    assert!(!server.server.connections()[0].types[ADDRESS].acked.contains_key("default/a"));
}

#[tokio::test]
async fn explicit_names_receive_only_those() {
    let store = store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2]), ("default/c", [10, 0, 0, 3])]);
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = address_client(server.endpoint(), Names::explicit(["default/a", "default/c", "default/z"]));
    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;
    let names: Vec<_> = cache.snapshot().into_keys().collect();
    assert_eq!(names, ["default/a", "default/c"]);

    // A change to an unsubscribed name sends nothing.
    until("server sees the ACK", || server.server.stats().acks == 1).await;
    store.set(ADDRESS, "default/b", workload("default/b", [10, 0, 1, 2]));
    tokio::time::sleep(QUIET).await;
    assert_eq!(server.server.stats().pushes, 1);

    // A subscribed name appearing later is sent.
    store.set(ADDRESS, "default/z", workload("default/z", [10, 0, 0, 26]));
    client_until(&client, "z acked", |s| s.types[ADDRESS].acks == 2).await;
    assert_eq!(cache.len(), 3);
    assert_eq!(client.status().types[ADDRESS].resources_received, 3);
}

#[tokio::test]
async fn subscription_changes_on_a_raw_stream() {
    let store = store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2])]);
    let server = RunningServer::any_port(store.clone()).await;
    let mut raw = RawStream::open(server.addr, subscribe(ADDRESS, &["default/a"])).await;
    let first = raw.recv().await;
    assert_eq!(names(&first), ["default/a"]);
    raw.ack(&first).await;
    raw.quiet().await;

    // Subscribe to b: only b is sent.
    raw.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.to_owned(),
        resource_names_subscribe: vec!["default/b".to_owned()],
        ..Default::default()
    })
    .await;
    let second = raw.recv().await;
    assert_eq!(names(&second), ["default/b"]);
    raw.ack(&second).await;

    // Unsubscribe from a: its later removal is not the client's business.
    raw.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.to_owned(),
        resource_names_unsubscribe: vec!["default/a".to_owned()],
        ..Default::default()
    })
    .await;
    until("server applies the unsubscribe", || server.server.connections()[0].types[ADDRESS].names == ["default/b"])
        .await;
    store.remove(ADDRESS, "default/a");
    raw.quiet().await;

    // Switching to wildcard with "*" brings every other resource.
    store.set(ADDRESS, "default/c", workload("default/c", [10, 0, 0, 3]));
    raw.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.to_owned(),
        resource_names_subscribe: vec!["*".to_owned()],
        ..Default::default()
    })
    .await;
    let third = raw.recv().await;
    assert_eq!(names(&third), ["default/c"]);
    assert!(third.removed_resources.is_empty());
}

#[tokio::test]
async fn one_push_in_flight_per_type_and_updates_coalesce() {
    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let server = RunningServer::any_port(store.clone()).await;
    let mut raw = RawStream::open(server.addr, subscribe(ADDRESS, &[])).await;
    let first = raw.recv().await;
    assert_eq!(names(&first), ["default/a"]);

    // A slow client: many changes while the first push is unanswered.
    for i in 2..=6 {
        store.set(ADDRESS, "default/a", workload("default/a", [10, 0, 0, i]));
    }
    store.set(ADDRESS, "default/b", workload("default/b", [10, 0, 1, 1]));
    store.set(ADDRESS, "default/gone", workload("default/gone", [10, 0, 1, 2]));
    store.remove(ADDRESS, "default/gone");
    raw.quiet().await;
    let t = server.server.connections()[0].types[ADDRESS].clone();
    assert_eq!(t.pending_nonce.as_deref(), Some(first.nonce.as_str()));
    assert_eq!(server.server.stats().pushes, 1);

    // The ACK releases one push with the latest state only.
    raw.ack(&first).await;
    let second = raw.recv().await;
    assert_eq!(names(&second), ["default/a", "default/b"]);
    let a = second.resources.iter().find(|r| r.name == "default/a").unwrap();
    assert_eq!(a.version, version(&store, "default/a"));
    assert_eq!(a.resource.as_ref().unwrap(), &workload("default/a", [10, 0, 0, 6]));
    assert!(second.removed_resources.is_empty());
    raw.ack(&second).await;
    raw.quiet().await;
    assert_eq!(server.server.stats().resources_sent, 3);

    // A stale or unknown nonce releases nothing.
    store.set(ADDRESS, "default/b", workload("default/b", [10, 0, 1, 9]));
    let third = raw.recv().await;
    store.set(ADDRESS, "default/b", workload("default/b", [10, 0, 1, 10]));
    raw.ack(&second).await;
    raw.quiet().await;
    raw.ack(&third).await;
    let fourth = raw.recv().await;
    assert_eq!(names(&fourth), ["default/b"]);
}

#[tokio::test]
async fn raw_nack_is_recorded_and_not_resent_until_something_changes() {
    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let server = RunningServer::any_port(store.clone()).await;
    let mut raw = RawStream::open(server.addr, subscribe(ADDRESS, &[])).await;
    let first = raw.recv().await;
    raw.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.to_owned(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus { code: 3, message: "bad workload".to_owned(), details: Vec::new() }),
        ..Default::default()
    })
    .await;
    raw.quiet().await;
    let t = server.server.connections()[0].types[ADDRESS].clone();
    assert_eq!(t.nacks, 1);
    assert_eq!(t.last_nack.as_ref().unwrap().message, "bad workload");
    assert_eq!(t.last_nack.as_ref().unwrap().nonce, first.nonce);
    assert!(t.acked.is_empty());
    assert_eq!(server.server.stats().pushes, 1);

    // A change resends everything the client lacks, the rejected one included.
    store.set(ADDRESS, "default/b", workload("default/b", [10, 0, 0, 2]));
    let second = raw.recv().await;
    assert_eq!(names(&second), ["default/a", "default/b"]);
}

#[tokio::test]
async fn reconnect_after_server_restart_resumes_with_initial_versions() {
    let store = store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2]), ("default/c", [10, 0, 0, 3])]);
    let first = RunningServer::any_port(store.clone()).await;
    let addr = first.addr;
    let (client, cache) = address_client(first.endpoint(), Names::Wildcard);
    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;
    first.stop().await;
    client_until(&client, "disconnect noticed", |s| !s.connected).await;

    // The restarted control plane rebuilds its store: a unchanged, b changed,
    // c gone, d new.
    let rebuilt =
        store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 22]), ("default/d", [10, 0, 0, 4])]);
    let second = RunningServer::start(rebuilt.clone(), addr).await;
    let status = client_until(&client, "resumed push acked", |s| s.streams == 2 && s.types[ADDRESS].acks == 2).await;
    assert_eq!(status.types[ADDRESS].resumed_with, 3);

    // Only what changed crossed the wire.
    let stats = second.server.stats();
    assert_eq!(stats.streams, 1);
    assert_eq!(stats.resources_sent, 2);
    assert_eq!(stats.removals_sent, 1);
    let t = &status.types[ADDRESS];
    assert_eq!(t.resources_received, 3 + 2);
    assert_eq!(t.removals_received, 1);
    let names: Vec<_> = cache.snapshot().into_keys().collect();
    assert_eq!(names, ["default/a", "default/b", "default/d"]);
    assert_eq!(cache.get("default/b").unwrap().ip, vec![10, 0, 0, 22]);
    let expected: std::collections::BTreeMap<_, _> =
        rebuilt.versions(ADDRESS).into_iter().map(|(n, v)| (n, v.to_string())).collect();
    assert_eq!(t.versions, expected);
}

#[tokio::test]
async fn reconnect_after_stream_drop_sends_nothing_unchanged() {
    let store = store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2])]);
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = address_client(server.endpoint(), Names::Wildcard);
    client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1).await;
    until("server sees the ACK", || server.server.stats().acks == 1).await;

    server.server.disconnect_all();
    let status = client_until(&client, "resumed", |s| s.streams == 2 && s.types[ADDRESS].acks == 2).await;
    assert!(status.last_error.unwrap().contains("closed the stream"));
    assert_eq!(status.types[ADDRESS].resumed_with, 2);
    // The resumed stream's first answer is empty: nothing changed.
    assert_eq!(status.types[ADDRESS].resources_received, 2);
    assert_eq!(server.server.stats().resources_sent, 2);
    assert_eq!(server.server.stats().streams, 2);
    until("one stream left", || server.server.connections().len() == 1).await;

    store.set(ADDRESS, "default/b", workload("default/b", [10, 0, 0, 9]));
    client_until(&client, "update acked", |s| s.types[ADDRESS].acks == 3).await;
    assert_eq!(server.server.stats().resources_sent, 3);
    assert_eq!(cache.get("default/b").unwrap().ip, vec![10, 0, 0, 9]);
}

#[tokio::test]
async fn client_backs_off_while_server_is_down_then_connects() {
    // Reserve a port, then free it: nothing listens there yet.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (client, cache) = address_client(endpoint(addr), Names::Wildcard);
    let status = client_until(&client, "a failed attempt", |s| s.last_error.is_some()).await;
    assert!(!status.connected);
    assert!(status.last_error.unwrap().contains("connecting"));

    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let _server = RunningServer::start(store, addr).await;
    client_until(&client, "synced", |s| s.types[ADDRESS].acks == 1).await;
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn request_without_type_url_ends_only_that_stream() {
    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let server = RunningServer::any_port(store.clone()).await;
    let mut bad = RawStream::open(server.addr, subscribe("", &[])).await;
    let err = tokio::time::timeout(WAIT, bad.responses.message()).await.unwrap().expect_err("stream refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("type_url"), "{}", err.message());

    let (client, _cache) = address_client(server.endpoint(), Names::Wildcard);
    client_until(&client, "synced", |s| s.types[ADDRESS].acks == 1).await;
}

/// A stream may keep at most 100,000 subscribed names per type (`MAX_NAMES` in
/// xds/src/server/stream.rs): names accumulate over a stream's requests, each of which may carry
/// 4 MiB of them, so without a bound one client could grow the server's memory at will. A
/// request beyond it ends the stream with RESOURCE_EXHAUSTED naming the type and the limit, as
/// for too many types; the server stays up for other streams.
#[tokio::test]
async fn subscribed_names_per_type_are_bounded_per_stream() {
    const PER_REQUEST: usize = 60_000;
    const REQUESTS: usize = 2;
    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let server = RunningServer::any_port(store.clone()).await;
    let names = |i: usize| (i * PER_REQUEST..(i + 1) * PER_REQUEST).map(|n| format!("x{n:07}")).collect::<Vec<_>>();
    let mut first = subscribe(ADDRESS, &[]);
    first.resource_names_subscribe = names(0);
    let mut raw = RawStream::open(server.addr, first).await;
    // Nothing of what was asked exists: the first push is empty, but comes.
    let empty = raw.recv().await;
    assert!(empty.resources.is_empty());
    for i in 1..REQUESTS {
        raw.send(DeltaDiscoveryRequest {
            type_url: ADDRESS.to_owned(),
            resource_names_subscribe: names(i),
            ..Default::default()
        })
        .await;
    }
    // ACK the first push and ask for a name that exists: were the names above all kept, its
    // push would come.
    raw.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.to_owned(),
        response_nonce: empty.nonce.clone(),
        resource_names_subscribe: vec!["default/a".to_owned()],
        ..Default::default()
    })
    .await;
    match tokio::time::timeout(WAIT, raw.responses.message()).await.expect("an answer in time") {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains(ADDRESS) && status.message().contains("100000"), "{status:?}");
        }
        Ok(Some(push)) => panic!(
            "{} resources pushed after the server kept {:?} subscribed names of one type on one stream",
            push.resources.len(),
            server.server.connections().iter().map(|c| c.types[ADDRESS].names.len()).max()
        ),
        Ok(None) => panic!("stream ended OK"),
    }

    let (client, _cache) = address_client(server.endpoint(), Names::Wildcard);
    client_until(&client, "synced", |s| s.types[ADDRESS].acks == 1).await;
}

/// A raw gRPC codec: sends the given bytes as the message, returns responses' bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// A request that does not decode as a DeltaDiscoveryRequest ends the stream with an error
/// status saying so, never with OK (gRPC: OK is "not an error; returned on success"). The code
/// is the one gRPC's status code table gives for "Error parsing request proto": INTERNAL.
#[tokio::test]
async fn undecodable_request_ends_the_stream_with_an_error_status() {
    let store = store_with(&[("default/a", [10, 0, 0, 1])]);
    let server = RunningServer::any_port(store.clone()).await;
    let mut grpc = tonic::client::Grpc::new(server.endpoint().connect().await.expect("connect"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    // Field 1 (node), length-delimited, claiming 100 bytes of which two follow.
    tx.send(vec![0x0a, 0x64, 0xff, 0xff]).await.unwrap();
    let answer = tokio::time::timeout(WAIT, async {
        grpc.ready().await.map_err(|e| tonic::Status::unknown(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
        );
        let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        grpc.streaming(request, path, Raw).await?.into_inner().message().await
    })
    .await
    .expect("an answer in time");
    match answer {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
            assert!(status.message().contains("cannot read the request"), "{status:?}");
        }
        Ok(Some(bytes)) => panic!("a push in answer to garbage: {} bytes", bytes.len()),
        Ok(None) => panic!("the stream ended with grpc-status OK after an undecodable request"),
    }
    drop(tx);

    // The server is fine for everyone else.
    let (client, _cache) = address_client(server.endpoint(), Names::Wildcard);
    client_until(&client, "synced", |s| s.types[ADDRESS].acks == 1).await;
}

/// The delta protocol's answers to subscription changes (Envoy's xDS protocol, "Incremental
/// xDS"): a name that does not exist is answered with its removal, a name subscribed again is
/// sent again although the server thinks the client holds it, and a name unsubscribed while the
/// wildcard still covers it is sent again so the client knows to keep it.
#[tokio::test]
async fn every_subscription_change_is_answered() {
    let store = store_with(&[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2])]);
    let server = RunningServer::any_port(store.clone()).await;
    let mut raw = RawStream::open(server.addr, subscribe(ADDRESS, &["default/a", "default/missing"])).await;
    let first = raw.recv().await;
    assert_eq!(names(&first), ["default/a"]);
    assert_eq!(first.removed_resources, ["default/missing"], "a requested name that does not exist");
    raw.ack(&first).await;
    raw.quiet().await;

    let request = |subscribe: &[&str], unsubscribe: &[&str]| DeltaDiscoveryRequest {
        type_url: ADDRESS.to_owned(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    };
    // Subscribing again to a name held at the latest version: sent again.
    raw.send(request(&["default/a"], &[])).await;
    let again = raw.recv().await;
    assert_eq!((names(&again), again.removed_resources.len()), (vec!["default/a".to_owned()], 0));
    raw.ack(&again).await;

    // A name that does not exist, asked for later: its removal.
    raw.send(request(&["default/nothing"], &[])).await;
    let missing = raw.recv().await;
    assert!(missing.resources.is_empty());
    assert_eq!(missing.removed_resources, ["default/nothing"]);
    raw.ack(&missing).await;
    raw.quiet().await;

    // Wildcard beside the name a: b arrives. Then unsubscribing a, which the wildcard still
    // covers: a is sent again, so the client keeps it.
    raw.send(request(&["*"], &[])).await;
    let wildcard = raw.recv().await;
    assert_eq!(names(&wildcard), ["default/b"]);
    raw.ack(&wildcard).await;
    raw.quiet().await;
    raw.send(request(&[], &["default/a"])).await;
    let kept = raw.recv().await;
    assert_eq!((names(&kept), kept.removed_resources.len()), (vec!["default/a".to_owned()], 0));
    raw.ack(&kept).await;
    raw.quiet().await;
    // Unsubscribing a name it does not hold, without wildcard, needs no answer.
    raw.send(request(&[], &["*", "default/nothing"])).await;
    raw.quiet().await;
}

/// A pod as istiod describes it to ztunnel: every field a real `Workload` carries.
fn pod(i: usize) -> (String, prost_types::Any) {
    use proto::istio::workload::{Address, Port, PortList, Workload, WorkloadType, address};
    let (namespace, app) = (format!("shop-{:02}", i % 50), format!("checkout-{i:05}"));
    let name = format!("{app}-7d9f8b6c5d-x2x4z");
    let uid = format!("Kubernetes//Pod/{namespace}/{name}");
    let service = format!("{namespace}/{app}.{namespace}.svc.cluster.local");
    let ports = PortList { ports: vec![Port { service_port: 80, target_port: 8080, ..Default::default() }] };
    let workload = Workload {
        uid: uid.clone(),
        name,
        namespace,
        addresses: vec![vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into()],
        trust_domain: "cluster.local".into(),
        service_account: app.clone(),
        node: format!("ip-10-0-{}-{}.eu-west-1.compute.internal", i % 200, i % 250),
        canonical_name: app.clone(),
        canonical_revision: "v1".into(),
        workload_type: WorkloadType::Pod as i32,
        workload_name: app,
        cluster_id: "Kubernetes".into(),
        services: [(service, ports)].into(),
        ..Default::default()
    };
    let address = Address { r#type: Some(address::Type::Workload(workload)) };
    (uid, prost_types::Any::from_msg(&address).unwrap())
}

/// A first sync of 10,000 pods is one push larger than tonic's default 4 MiB message limit
/// (stock istiod sends it so too): the client takes it, rather than failing the stream and
/// reconnecting to the same push forever.
#[tokio::test]
async fn a_first_sync_of_ten_thousand_pods_reaches_the_client() {
    let store = ResourceStore::new();
    let pods: Vec<_> = (0..10_000).map(pod).collect();
    // What one push carries per resource, at least: name, version and body.
    let size: usize = pods.iter().map(|(uid, body)| uid.len() + 32 + body.type_url.len() + body.value.len()).sum();
    assert!(size > 4 << 20, "the push is {size} bytes, within the default limit");
    store.update(ADDRESS, pods, []);
    let server = RunningServer::any_port(store.clone()).await;
    let (client, cache) = address_client(server.endpoint(), Names::Wildcard);
    let status =
        client_until(&client, "first push acked", |s| s.types[ADDRESS].acks == 1 || s.last_error.is_some()).await;
    assert_eq!(status.last_error, None);
    assert_eq!(cache.len(), 10_000);
}

/// A client resuming with every resource of a large mesh declares them all in its first
/// request: 50,000 pods are more than 4 MiB of `initial_resource_versions` (tonic's default
/// limit for a request), well within the names a stream may declare. The server reads it and,
/// nothing having changed, sends nothing again.
#[tokio::test]
async fn a_resume_declaring_fifty_thousand_resources_is_read() {
    let store = ResourceStore::new();
    store.update(ADDRESS, (0..50_000).map(pod), []);
    let server = RunningServer::any_port(store.clone()).await;
    let mut first = subscribe(ADDRESS, &[]);
    first.initial_resource_versions = store.versions(ADDRESS).into_iter().map(|(n, v)| (n, v.to_string())).collect();
    let size = prost::Message::encoded_len(&first);
    assert!(size > 4 << 20, "the request is {size} bytes, within the default limit");
    let mut raw = RawStream::open(server.addr, first).await;
    let answer = raw.recv().await;
    assert_eq!((answer.resources.len(), answer.removed_resources.len()), (0, 0));
    let acked = server.server.connections()[0].types[ADDRESS].acked.len();
    assert_eq!(acked, 50_000);
}

/// A server whose address drops connection attempts (here a listener whose accept queue is
/// full, so the kernel ignores further SYNs) does not hold the client for the kernel's SYN
/// retries: the attempt gives up after 5 s and the client tries again.
#[tokio::test]
async fn a_connection_attempt_never_answered_gives_up() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let _fills_the_queue = tokio::net::TcpStream::connect(addr).await.unwrap();
    // No connect timeout of the endpoint's own.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let (client, _cache) = address_client(endpoint, Names::Wildcard);
    let status = client_until(&client, "a failed attempt", |s| s.last_error.is_some()).await;
    let error = status.last_error.unwrap();
    assert!(error.contains("connecting to the xDS server took longer than 5s"), "{error}");
}
