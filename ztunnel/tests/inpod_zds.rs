//! ZDS end to end: the agent's server and ztunnel's client over a real unix
//! seqpacket socket, with real namespace descriptors; plus a misbehaving
//! agent to prove the client answers garbage with error acks; the seqpacket
//! transport's descriptor handling; and what ztunnel's own pod handler
//! (`Pods`) accepts as a pod's namespace. Needs root (for the scratch
//! namespaces).

mod support;

use support::{Task, TempDir};

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use proto::istio::workload::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
    workload_request, workload_response,
};
use tokio::sync::mpsc;
use ztunnel::agent::zds_server::{ZdsServer, ZdsServerError};
use ztunnel::inpod::seqpacket::{SeqPacket, SeqPacketListener};
use ztunnel::inpod::{PodHandler, run_client};
use ztunnel::netns::{Netns, NetnsId, ScratchNetns};
use ztunnel::proxy::pods::Pods;

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq)]
enum Seen {
    /// uid, pod name, namespace the fd refers to, namespace a socket made in it lives in.
    Add(String, String, NetnsId, NetnsId),
    Del(String),
    Snapshot(HashSet<String>),
}

struct Recorder {
    tx: mpsc::UnboundedSender<Seen>,
    refuse: Mutex<HashSet<String>>,
}

impl PodHandler for Recorder {
    async fn add(&self, uid: String, info: Option<WorkloadInfo>, netns: Netns) -> Result<(), String> {
        if self.refuse.lock().unwrap().contains(&uid) {
            return Err(format!("no room for {uid}"));
        }
        // Prove the descriptor works: create a socket in it and ask which
        // namespace that socket's thread was in.
        let inside = netns
            .run(|| {
                let _l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                Netns::current().unwrap().id()
            })
            .map_err(|e| e.to_string())?;
        let name = info.map(|i| i.name).unwrap_or_default();
        self.tx.send(Seen::Add(uid, name, netns.id(), inside)).unwrap();
        Ok(())
    }

    async fn del(&self, uid: &str) {
        self.tx.send(Seen::Del(uid.to_owned())).unwrap();
    }

    async fn snapshot_done(&self, uids: HashSet<String>) {
        self.tx.send(Seen::Snapshot(uids)).unwrap();
    }
}

fn recorder() -> (Arc<Recorder>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Recorder { tx, refuse: Mutex::default() }), rx)
}

fn scratch(test: &str) -> ScratchNetns {
    ScratchNetns::create(&format!("{test}-{}-{}", std::process::id(), rand::random::<u16>())).unwrap()
}

fn info(name: &str) -> Option<WorkloadInfo> {
    Some(WorkloadInfo {
        name: name.into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
        windows_namespace: None,
    })
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("handler call in time").unwrap()
}

async fn wait_connected(server: &ZdsServer) {
    tokio::time::timeout(WAIT, async {
        while !server.connected().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("ztunnel connects");
}

#[tokio::test]
async fn snapshot_then_live_changes_then_snapshot_again() {
    let dir = TempDir::new("zds-flow");
    let path = dir.0.join("ztunnel.sock");
    let server = ZdsServer::new(WAIT);
    let _serve = Task(tokio::spawn(server.clone().serve(SeqPacketListener::bind(&path).unwrap())));
    let a = scratch("zds-a");
    let b = scratch("zds-b");

    // Enrolled before ztunnel connects: goes out in the snapshot.
    server.add("uid-a".into(), info("a"), a.netns().try_clone().unwrap()).await.unwrap();
    let (handler, mut rx) = recorder();
    let client = Task(tokio::spawn(run_client(path.clone(), handler.clone())));
    assert_eq!(next(&mut rx).await, Seen::Add("uid-a".into(), "a".into(), a.netns().id(), a.netns().id()));
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::from(["uid-a".to_owned()])));
    wait_connected(&server).await;

    // Live add and delete, each acknowledged before `add`/`del` return.
    server.add("uid-b".into(), info("b"), b.netns().try_clone().unwrap()).await.unwrap();
    assert_eq!(next(&mut rx).await, Seen::Add("uid-b".into(), "b".into(), b.netns().id(), b.netns().id()));
    assert!(server.del("uid-a").await);
    assert_eq!(next(&mut rx).await, Seen::Del("uid-a".into()));
    assert!(!server.del("uid-a").await, "second delete finds nothing");
    assert_eq!(next(&mut rx).await, Seen::Del("uid-a".into()));

    // A refused pod is reported to the caller and not kept.
    handler.refuse.lock().unwrap().insert("uid-c".into());
    let c = scratch("zds-c");
    let err = server.add("uid-c".into(), info("c"), c.netns().try_clone().unwrap()).await.unwrap_err();
    assert!(matches!(&err, ZdsServerError::Refused { uid, error } if uid == "uid-c" && error.contains("no room")));
    assert_eq!(server.pods().await, vec!["uid-b".to_owned()]);

    // ztunnel restarts: the new one gets the current set and SnapshotSent.
    drop(client);
    let (handler2, mut rx2) = recorder();
    let _client2 = Task(tokio::spawn(run_client(path.clone(), handler2)));
    assert_eq!(next(&mut rx2).await, Seen::Add("uid-b".into(), "b".into(), b.netns().id(), b.netns().id()));
    assert_eq!(next(&mut rx2).await, Seen::Snapshot(HashSet::from(["uid-b".to_owned()])));
}

#[tokio::test]
async fn client_reconnects_when_agent_starts_late() {
    let dir = TempDir::new("zds-late");
    let path = dir.0.join("ztunnel.sock");
    let (handler, mut rx) = recorder();
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = ZdsServer::new(WAIT);
    let _serve = Task(tokio::spawn(server.clone().serve(SeqPacketListener::bind(&path).unwrap())));
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::new()));
}

#[tokio::test]
async fn server_drops_a_ztunnel_that_never_acks() {
    let dir = TempDir::new("zds-mute");
    let path = dir.0.join("ztunnel.sock");
    let server = ZdsServer::new(Duration::from_millis(300));
    let _serve = Task(tokio::spawn(server.clone().serve(SeqPacketListener::bind(&path).unwrap())));
    let mute = SeqPacket::connect(&path).await.unwrap();
    mute.send(&ZdsHello { version: 1 }.encode_to_vec(), None).await.unwrap();
    let mut buf = [0u8; 256];
    let got = tokio::time::timeout(WAIT, mute.recv(&mut buf)).await.unwrap().unwrap();
    let req = WorkloadRequest::decode(&buf[..got.len]).unwrap();
    assert!(matches!(req.payload, Some(workload_request::Payload::SnapshotSent(_))));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!server.connected().await, "unacknowledged snapshot: not a live connection");
    // A pod added meanwhile is kept for the next ztunnel.
    let a = scratch("zds-mute");
    server.add("uid-a".into(), info("a"), a.netns().try_clone().unwrap()).await.unwrap();
    assert_eq!(server.pods().await, vec!["uid-a".to_owned()]);
}

/// Sends one request and returns the ack's error text.
async fn ask(conn: &SeqPacket, bytes: &[u8], fds: &[i32]) -> String {
    conn.send_fds(bytes, fds).await.unwrap();
    let mut buf = [0u8; 1024];
    let got = tokio::time::timeout(WAIT, conn.recv(&mut buf)).await.expect("ack in time").unwrap();
    assert!(got.fds.is_empty());
    match WorkloadResponse::decode(&buf[..got.len]).unwrap().payload {
        Some(workload_response::Payload::Ack(ack)) => ack.error,
        None => panic!("empty response"),
    }
}

fn add(uid: &str) -> Vec<u8> {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload { uid: uid.into(), workload_info: info(uid) })),
    }
    .encode_to_vec()
}

fn request(payload: workload_request::Payload) -> Vec<u8> {
    WorkloadRequest { payload: Some(payload) }.encode_to_vec()
}

/// Accepts ztunnel's next connection and reads its hello.
async fn accept_hello(listener: &SeqPacketListener) -> SeqPacket {
    let conn = tokio::time::timeout(WAIT, listener.accept()).await.expect("ztunnel connects in time").unwrap();
    let mut buf = [0u8; 64];
    let hello = tokio::time::timeout(WAIT, conn.recv(&mut buf)).await.expect("hello in time").unwrap();
    assert_eq!(ZdsHello::decode(&buf[..hello.len]).unwrap().version, 1);
    conn
}

/// ztunnel has closed `conn`: the next receive is the end of the stream.
async fn closed_by_ztunnel(conn: &SeqPacket, after: &str) {
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(WAIT, conn.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("ztunnel keeps the connection open after {after}"))
        .unwrap();
    assert_eq!(got.len, 0, "ztunnel closes the connection after {after}");
}

/// How many of this process's descriptors refer to the same namespace as `ns`.
fn open_fds_to_netns(ns: &Netns) -> usize {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", ns.as_fd().as_raw_fd())).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| *t == target)
        .count()
}

/// Rule: a well-formed request that names a pod ztunnel cannot serve (its "namespace" is not
/// one, its uid is empty) is acked with the reason in `error`, and the session carries on.
#[tokio::test]
async fn client_refuses_a_pod_it_cannot_serve_and_carries_on() {
    let dir = TempDir::new("zds-refuse");
    let path = dir.0.join("ztunnel.sock");
    let listener = SeqPacketListener::bind(&path).unwrap();
    let (handler, mut rx) = recorder();
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    let conn = accept_hello(&listener).await;

    let pod = scratch("zds-refuse");
    let netfd = pod.netns().as_fd().as_raw_fd();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    assert!(ask(&conn, &add("p1"), &[devnull.as_raw_fd()]).await.contains("not a network namespace"));
    assert!(ask(&conn, &add(""), &[netfd]).await.contains("uid is empty"));

    // Same connection: the session still works.
    assert_eq!(ask(&conn, &add("p1"), &[netfd]).await, "");
    assert_eq!(next(&mut rx).await, Seen::Add("p1".into(), "p1".into(), pod.netns().id(), pod.netns().id()));
    let keep = request(workload_request::Payload::Keep(KeepWorkload { uid: "p0".into() }));
    assert_eq!(ask(&conn, &keep, &[]).await, "");
    assert_eq!(ask(&conn, &request(workload_request::Payload::SnapshotSent(SnapshotSent {})), &[]).await, "");
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::from(["p0".to_owned(), "p1".to_owned()])));
}

/// Rule: a request ztunnel cannot read (garbage, cut short, the wrong number of descriptors)
/// is acked with the reason, then ztunnel drops the connection and reconnects, so that the
/// agent's next snapshot puts both in step (a lost DelWorkload would otherwise leave its pod
/// served for good); as Istio's ztunnel. Pods are kept meanwhile (no handler call), and every
/// descriptor that came with a refused request is closed.
#[tokio::test]
async fn client_reconnects_after_an_unreadable_request() {
    let dir = TempDir::new("zds-unreadable");
    let path = dir.0.join("ztunnel.sock");
    let listener = SeqPacketListener::bind(&path).unwrap();
    let (handler, mut rx) = recorder();
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    let pod = scratch("zds-unreadable");
    let netfd = pod.netns().as_fd().as_raw_fd();
    let held = open_fds_to_netns(pod.netns());

    let big = add(&"x".repeat(20_000));
    let del = request(workload_request::Payload::Del(DelWorkload { uid: "p1".into() }));
    let cases: [(&str, Vec<u8>, Vec<RawFd>, &str); 5] = [
        ("garbage", b"\xff\xff\xff\xff garbage".to_vec(), vec![], "undecodable"),
        ("an oversized add", big, vec![netfd], "larger than"),
        ("an add without a namespace", add("p1"), vec![], "expected exactly 1"),
        ("an add with two", add("p1"), vec![netfd, netfd], "2 file descriptors"),
        ("a delete with a descriptor", del, vec![netfd], "unexpected file descriptor"),
    ];
    for (what, bytes, fds, want) in cases {
        let conn = accept_hello(&listener).await;
        let error = ask(&conn, &bytes, &fds).await;
        assert!(error.contains(want), "{what}: ack error {error:?} lacks {want:?}");
        closed_by_ztunnel(&conn, what).await;
    }
    assert_eq!(open_fds_to_netns(pod.netns()), held, "every received descriptor was closed");

    // The last reconnect is a working session.
    let conn = accept_hello(&listener).await;
    assert_eq!(ask(&conn, &add("p1"), &[netfd]).await, "");
    assert_eq!(next(&mut rx).await, Seen::Add("p1".into(), "p1".into(), pod.netns().id(), pod.netns().id()));
    assert!(rx.try_recv().is_err(), "no pod was dropped or added by the refused requests");
}

/// Rule: KeepWorkload or a second SnapshotSent after the snapshot break the protocol: acked
/// with the reason, then the connection is dropped and made again (a new snapshot follows).
#[tokio::test]
async fn client_reconnects_after_a_request_out_of_protocol() {
    let dir = TempDir::new("zds-order");
    let path = dir.0.join("ztunnel.sock");
    let listener = SeqPacketListener::bind(&path).unwrap();
    let (handler, mut rx) = recorder();
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    let snap = request(workload_request::Payload::SnapshotSent(SnapshotSent {}));
    let keep = request(workload_request::Payload::Keep(KeepWorkload { uid: "p0".into() }));
    for (what, bytes, want) in [
        ("a keep after the snapshot", keep, "after SnapshotSent"),
        ("a second snapshot", snap.clone(), "second SnapshotSent"),
    ] {
        let conn = accept_hello(&listener).await;
        assert_eq!(ask(&conn, &snap, &[]).await, "");
        assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::new()));
        let error = ask(&conn, &bytes, &[]).await;
        assert!(error.contains(want), "{what}: ack error {error:?} lacks {want:?}");
        closed_by_ztunnel(&conn, what).await;
    }
    accept_hello(&listener).await;
}

/// Rule: the reconnect backoff starts over only after a session that got its snapshot; an
/// agent that accepts and then sends garbage every time is not reconnected to ten times a
/// second (100 ms, 200 ms, 400 ms, 800 ms ... up to 5 s).
#[tokio::test]
async fn a_misbehaving_agent_gets_a_growing_backoff() {
    let dir = TempDir::new("zds-backoff");
    let path = dir.0.join("ztunnel.sock");
    let listener = SeqPacketListener::bind(&path).unwrap();
    let (handler, _rx) = recorder();
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    let started = std::time::Instant::now();
    let mut connections = 0;
    while let Ok(Ok(conn)) =
        tokio::time::timeout_at((started + Duration::from_millis(1600)).into(), listener.accept()).await
    {
        connections += 1;
        let mut buf = [0u8; 64];
        conn.recv(&mut buf).await.unwrap();
        assert!(ask(&conn, b"\xff garbage", &[]).await.contains("undecodable"));
    }
    // 0, +0.1, +0.3, +0.7, +1.5 s: five; with a fixed 100 ms pause, about fifteen.
    assert!((2..=5).contains(&connections), "{connections} connections in 1.6 s");
}

/// Rule: a pod the agent replays after a reconnect counts as named in the snapshot even when
/// ztunnel cannot (re)start it then: SnapshotSent must not tear down what still serves it.
/// Istio's ztunnel records the uid for the snapshot before starting the proxy.
#[tokio::test]
async fn a_replayed_pod_that_fails_to_start_is_in_the_snapshot() {
    let dir = TempDir::new("zds-replay-refused");
    let path = dir.0.join("ztunnel.sock");
    let listener = SeqPacketListener::bind(&path).unwrap();
    let (handler, mut rx) = recorder();
    handler.refuse.lock().unwrap().insert("p1".into());
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    let conn = accept_hello(&listener).await;
    let pod = scratch("zds-replay-refused");
    assert!(ask(&conn, &add("p1"), &[pod.netns().as_fd().as_raw_fd()]).await.contains("no room"));
    assert_eq!(ask(&conn, &request(workload_request::Payload::SnapshotSent(SnapshotSent {})), &[]).await, "");
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::from(["p1".to_owned()])));
}

async fn wait_connections(server: &ZdsServer, want: usize) {
    tokio::time::timeout(WAIT, async {
        while server.connections().await != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{want} ztunnels connected"));
}

/// Nothing more arrives on `rx` for a while (a flapping client would replay).
async fn quiet(rx: &mut mpsc::UnboundedReceiver<Seen>) {
    if let Ok(Some(seen)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected handler call {seen:?}");
    }
}

#[tokio::test]
async fn two_ztunnels_are_served_at_once() {
    let dir = TempDir::new("zds-two");
    let path = dir.0.join("ztunnel.sock");
    let server = ZdsServer::new(WAIT);
    let _serve = Task(tokio::spawn(server.clone().serve(SeqPacketListener::bind(&path).unwrap())));
    let a = scratch("zds-two-a");
    let b = scratch("zds-two-b");
    server.add("uid-a".into(), info("a"), a.netns().try_clone().unwrap()).await.unwrap();

    // The old ztunnel, then the new one beside it: both get the full snapshot.
    let (old, mut old_rx) = recorder();
    let old_client = Task(tokio::spawn(run_client(path.clone(), old.clone())));
    assert_eq!(next(&mut old_rx).await, Seen::Add("uid-a".into(), "a".into(), a.netns().id(), a.netns().id()));
    assert_eq!(next(&mut old_rx).await, Seen::Snapshot(HashSet::from(["uid-a".to_owned()])));
    wait_connections(&server, 1).await;
    let (new, mut new_rx) = recorder();
    let _new_client = Task(tokio::spawn(run_client(path.clone(), new.clone())));
    assert_eq!(next(&mut new_rx).await, Seen::Add("uid-a".into(), "a".into(), a.netns().id(), a.netns().id()));
    assert_eq!(next(&mut new_rx).await, Seen::Snapshot(HashSet::from(["uid-a".to_owned()])));
    wait_connections(&server, 2).await;
    // The old one was neither replaced nor made to reconnect.
    quiet(&mut old_rx).await;

    // Live changes reach both, acknowledged by both before add/del return.
    server.add("uid-b".into(), info("b"), b.netns().try_clone().unwrap()).await.unwrap();
    for rx in [&mut old_rx, &mut new_rx] {
        assert_eq!(rx.try_recv().unwrap(), Seen::Add("uid-b".into(), "b".into(), b.netns().id(), b.netns().id()));
    }
    assert!(server.del("uid-a").await);
    for rx in [&mut old_rx, &mut new_rx] {
        assert_eq!(rx.try_recv().unwrap(), Seen::Del("uid-a".into()));
    }

    // One refusal is enough to refuse the pod; the one that took it is told to drop it.
    new.refuse.lock().unwrap().insert("uid-c".into());
    let c = scratch("zds-two-c");
    let err = server.add("uid-c".into(), info("c"), c.netns().try_clone().unwrap()).await.unwrap_err();
    assert!(matches!(&err, ZdsServerError::Refused { uid, .. } if uid == "uid-c"), "{err}");
    assert_eq!(next(&mut old_rx).await, Seen::Add("uid-c".into(), "c".into(), c.netns().id(), c.netns().id()));
    assert_eq!(next(&mut old_rx).await, Seen::Del("uid-c".into()));
    assert_eq!(next(&mut new_rx).await, Seen::Del("uid-c".into()));
    assert_eq!(server.pods().await, vec!["uid-b".to_owned()]);
    assert_eq!(server.connections().await, 2, "a refusal does not end a connection");

    // The old ztunnel goes away: noticed at once, and the new one is undisturbed.
    drop(old_client);
    wait_connections(&server, 1).await;
    let d = scratch("zds-two-d");
    server.add("uid-d".into(), info("d"), d.netns().try_clone().unwrap()).await.unwrap();
    assert_eq!(next(&mut new_rx).await, Seen::Add("uid-d".into(), "d".into(), d.netns().id(), d.netns().id()));
    quiet(&mut new_rx).await;
    assert!(old_rx.try_recv().is_err(), "the departed ztunnel hears nothing");
    assert_eq!(server.connections().await, 1);
}

#[tokio::test]
async fn a_ztunnel_that_stops_acking_is_dropped_alone() {
    let dir = TempDir::new("zds-stall");
    let path = dir.0.join("ztunnel.sock");
    let server = ZdsServer::new(Duration::from_millis(300));
    let _serve = Task(tokio::spawn(server.clone().serve(SeqPacketListener::bind(&path).unwrap())));
    let (handler, mut rx) = recorder();
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::new()));

    // A second ztunnel that acknowledges its snapshot, then goes silent.
    let stall = SeqPacket::connect(&path).await.unwrap();
    stall.send(&ZdsHello { version: 1 }.encode_to_vec(), None).await.unwrap();
    let mut buf = [0u8; 256];
    let got = tokio::time::timeout(WAIT, stall.recv(&mut buf)).await.unwrap().unwrap();
    let req = WorkloadRequest::decode(&buf[..got.len]).unwrap();
    assert!(matches!(req.payload, Some(workload_request::Payload::SnapshotSent(_))));
    let ack = WorkloadResponse { payload: Some(workload_response::Payload::Ack(Default::default())) };
    stall.send(&ack.encode_to_vec(), None).await.unwrap();
    wait_connections(&server, 2).await;

    let a = scratch("zds-stall");
    let started = std::time::Instant::now();
    server.add("uid-a".into(), info("a"), a.netns().try_clone().unwrap()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "bounded by the ack timeout: {:?}", started.elapsed());
    assert_eq!(next(&mut rx).await, Seen::Add("uid-a".into(), "a".into(), a.netns().id(), a.netns().id()));
    assert_eq!(server.connections().await, 1, "the silent ztunnel is dropped");
    // It did get the request (with the namespace), then the agent hung up.
    let got = tokio::time::timeout(WAIT, stall.recv(&mut buf)).await.unwrap().unwrap();
    assert_eq!(got.fds.len(), 1);
    let closed = tokio::time::timeout(WAIT, stall.recv(&mut buf)).await.unwrap().unwrap();
    assert_eq!(closed.len, 0, "connection closed by the agent");

    // The other one carries on.
    assert!(server.del("uid-a").await);
    assert_eq!(next(&mut rx).await, Seen::Del("uid-a".into()));
}

/// How many of this process's descriptors refer to `path`.
fn open_fds_to(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

/// Rule: every descriptor the kernel installs for a received message is owned by the
/// receiver and closed with it, also when the message carried more than `recv`'s control
/// buffer holds (8). unix(7): under MSG_CTRUNC the kernel closes only the excess and still
/// installs the ones that fit; nix's `RecvMsg::cmsgs()` refuses truncated control data, so
/// they must be walked by hand. Both ends of ZDS use this `recv`; the message is reported
/// truncated (and refused by the ZDS client).
#[tokio::test]
async fn recv_owns_every_descriptor_of_a_message_with_too_many() {
    let dir = TempDir::new("seqpacket-fds");
    let marker = dir.0.join("marker");
    std::fs::write(&marker, b"x").unwrap();
    let marker = std::fs::canonicalize(&marker).unwrap();
    let sock = dir.0.join("s.sock");
    let listener = SeqPacketListener::bind(&sock).unwrap();
    let (client, server) = tokio::join!(SeqPacket::connect(&sock), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());

    let file = std::fs::File::open(&marker).unwrap();
    let dups: Vec<OwnedFd> = (0..12).map(|_| file.try_clone().unwrap().into()).collect();
    let raw: Vec<RawFd> = dups.iter().map(|f| f.as_raw_fd()).collect();
    client.send_fds(b"hello", &raw).await.unwrap();
    drop(dups);
    // Only `file` refers to the marker now (the in-flight ones are in the socket).
    let mut buf = [0u8; 64];
    let msg = tokio::time::timeout(WAIT, server.recv(&mut buf)).await.expect("message in time").unwrap();
    assert!(msg.truncated, "12 descriptors do not fit in the control buffer");
    assert_eq!(msg.fds.len(), 8, "the descriptors that fit are handed over");
    drop(msg);
    assert_eq!(open_fds_to(&marker), 1, "every installed descriptor is closed with the message");
}

/// Rule: when the agent restarts, ztunnel keeps serving its pods (no handler call while the
/// agent is away), reconnects promptly once the agent is back (the backoff
/// starts over after a session that got its snapshot), and only the new snapshot decides.
#[tokio::test]
async fn an_agent_restart_keeps_the_pods_until_the_next_snapshot() {
    let dir = TempDir::new("zds-restart");
    let path = dir.0.join("ztunnel.sock");
    let (handler, mut rx) = recorder();
    let _client = Task(tokio::spawn(run_client(path.clone(), handler)));
    let pod = scratch("zds-restart");
    let netfd = pod.netns().as_fd().as_raw_fd();
    let snap = request(workload_request::Payload::SnapshotSent(SnapshotSent {}));
    {
        let listener = SeqPacketListener::bind(&path).unwrap();
        let conn = accept_hello(&listener).await;
        assert_eq!(ask(&conn, &add("p1"), &[netfd]).await, "");
        assert_eq!(ask(&conn, &snap, &[]).await, "");
        assert_eq!(next(&mut rx).await, Seen::Add("p1".into(), "p1".into(), pod.netns().id(), pod.netns().id()));
        assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::from(["p1".to_owned()])));
    }
    // The agent is gone for a while: nothing happens to the pods.
    std::fs::remove_file(&path).unwrap();
    quiet(&mut rx).await;
    let listener = SeqPacketListener::bind(&path).unwrap();
    let back = std::time::Instant::now();
    let conn = accept_hello(&listener).await;
    assert!(back.elapsed() < Duration::from_millis(2500), "reconnected after {:?}", back.elapsed());
    let keep = request(workload_request::Payload::Keep(KeepWorkload { uid: "p1".into() }));
    assert_eq!(ask(&conn, &keep, &[]).await, "");
    assert_eq!(ask(&conn, &snap, &[]).await, "");
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::from(["p1".to_owned()])));
}

/// Rule: connecting to an agent that does not accept (its listen backlog full: wedged, or
/// starting) returns at once with `WouldBlock` instead of parking a thread in a blocking
/// `connect(2)` until the agent accepts; the client then retries on its backoff, and a
/// shutdown is never held up by a stuck connect.
#[tokio::test]
async fn connect_to_a_full_backlog_returns_at_once() {
    let dir = TempDir::new("seqpacket-backlog");
    let sock = dir.0.join("s.sock");
    let _listener = SeqPacketListener::bind(&sock).unwrap();
    let mut connected = Vec::new();
    let mut would_block = 0;
    for i in 0..40 {
        let attempt = tokio::time::timeout(Duration::from_secs(2), SeqPacket::connect(&sock)).await;
        match attempt.unwrap_or_else(|_| panic!("connect {i} blocked on the full backlog")) {
            Ok(c) => connected.push(c),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                would_block += 1;
            }
        }
    }
    assert!(!connected.is_empty() && would_block > 0, "{} connected, {would_block} refused", connected.len());
}

/// ztunnel's pod handler with loopback inputs (kernel-chosen ports); `host` is what it
/// takes for its own network namespace.
fn pods(host: Netns) -> Pods {
    let ca = hbone::testing::TestCa::new("zds-pods");
    let certs = hbone::CertStore::new(ca.roots());
    let (inputs, _registry) = support::loopback_inputs(ztunnel::state::StateHandle::default(), certs);
    Pods::new(inputs, "cluster.local".into(), "Kubernetes".into(), host, &ztunnel::readiness::Ready::default(), None)
}

/// Whether something accepts on 127.0.0.1:`port` inside `ns`.
fn listening_in(ns: &Netns, port: u16) -> bool {
    ns.run(move || std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), WAIT).is_ok()).unwrap()
}

/// Rule: a pod uid handed over again with a *different* network namespace (its sandbox was
/// recreated while ztunnel was not connected, so the snapshot after the reconnect carries the
/// new one) is served in the new namespace; the same namespace again is a no-op replay.
/// Reference: Istio ztunnel, statemanager.rs `add_workload_inner` ("inodes are different, we
/// have a new netns ... drain the old proxy and add this one").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readded_pod_with_a_new_netns_is_served_in_the_new_one() {
    let old = scratch("pods-old");
    let new = scratch("pods-new");
    let pods = pods(Netns::current().unwrap());
    let port = |pods: &Pods| pods.list().into_iter().find(|(uid, _)| uid == "uid-1").expect("pod is served").1;
    let result = async {
        pods.add("uid-1".into(), info("web"), old.netns().try_clone().unwrap()).await.unwrap();
        let first = port(&pods);
        assert!(listening_in(old.netns(), first.outbound.port()), "first add serves the old netns");
        pods.add("uid-1".into(), info("web"), old.netns().try_clone().unwrap()).await.unwrap();
        assert_eq!(port(&pods).outbound, first.outbound, "a replay with the same netns keeps the listeners");
        pods.add("uid-1".into(), info("web"), new.netns().try_clone().unwrap()).await.unwrap();
        listening_in(new.netns(), port(&pods).outbound.port())
    }
    .await;
    pods.stop_all();
    assert!(result, "after a re-add with a new netns the pod's listeners are in the new netns");
}

/// Rule: ztunnel never binds a pod's capture listeners (0.0.0.0:15001/15006/15008 in
/// production) in its own network namespace: a pod there is on the host network, and Istio
/// never redirects those (cni/pkg/util/podutil.go `PodRedirectionEnabled`: "we would be
/// writing these rules into the host network namespace, effectively breaking the host").
/// A scratch namespace stands in for ztunnel's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_refuses_its_own_netns_as_a_pod() {
    let host = scratch("pods-host");
    let pods = pods(host.netns().try_clone().unwrap());
    let result = pods.add("uid-host".into(), info("web"), host.netns().try_clone().unwrap()).await;
    let served = pods.list();
    pods.stop_all();
    let err = result.expect_err("a pod netns equal to ztunnel's own is refused");
    assert!(err.contains("ztunnel's own"), "{err}");
    assert!(served.is_empty(), "nothing is served: {served:?}");
}
