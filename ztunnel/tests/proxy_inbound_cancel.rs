//! A tunnel cancelled by its client while the destination's ztunnel is still connecting to the
//! workload: the workload's connection, once made, is reset, not closed cleanly, so the
//! application never takes it for a complete (empty) exchange.

mod support;

use std::time::Duration;

use hbone::CertStore;
use hbone::testing::{DAY, TestCa, id};
use hbone::tunnel::client::ConnectTarget;
use hbone::tunnel::pool::{Pool, PoolConfig, PoolKey};
use tokio::io::AsyncReadExt;
use ztunnel::proxy::{HostSockets, PodProxy};
use ztunnel::state::{StateConfig, StateHandle, file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_cancelled_during_the_workload_connect_resets_the_workload() {
    let yaml = "workloads:\n- {name: web, namespace: shop, serviceAccount: web, addresses: [\"127.0.0.1\"], protocol: HBONE}\n";
    let handle = StateHandle::new(file::parse(yaml, StateConfig::default()).unwrap());
    let ca = TestCa::new("cancel");
    let (web, client) = (id("shop", "web"), id("tools", "client"));
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    certs.insert(ca.issue(&client, DAY));
    let (inputs, _registry) = support::loopback_inputs(handle, certs.clone());
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();

    // The workload: a listener whose accept queue is full, so the proxy's SYN goes unanswered
    // until the queue has room (the kernel retries it after a second).
    let backlog = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    backlog.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    backlog.listen(0).unwrap();
    let app: std::net::TcpListener = backlog.into();
    let app_addr = app.local_addr().unwrap();
    // With a backlog of 0 the queue holds one connection.
    let filler = std::net::TcpStream::connect(app_addr).unwrap();

    let pool = Pool::new(PoolConfig::default(), certs, None);
    let key = PoolKey { src: client, dst: web, addr: pod.addrs.hbone };
    // A first, refused, CONNECT leaves the HBONE connection pooled: what is cancelled below is
    // the request alone, not a handshake.
    let warm_up = pool.connect(&key, &ConnectTarget::new("127.0.0.1:0".parse().unwrap(), None)).await;
    assert!(warm_up.is_err(), "port 0 is refused");
    // The client gives up (drops the request: RST_STREAM) while the proxy waits on the workload.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(400), pool.connect(&key, &ConnectTarget::new(app_addr, None))).await;
    assert!(cancelled.is_err(), "the CONNECT is still waiting on the workload: {cancelled:?}");

    // Room in the queue: the proxy's retried SYN completes. Its connection is the one after the
    // filler.
    app.set_nonblocking(false).unwrap();
    let queued = app.accept().unwrap().0;
    let accept = tokio::task::spawn_blocking(move || app.accept().map(|(s, _)| s));
    let from_proxy = tokio::time::timeout(Duration::from_secs(8), accept)
        .await
        .expect("the proxy's connection arrives")
        .unwrap()
        .unwrap();
    from_proxy.set_nonblocking(true).unwrap();
    let mut from_proxy = tokio::net::TcpStream::from_std(from_proxy).unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), from_proxy.read(&mut [0u8; 16])).await.expect("ended");
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the workload's connection is reset, not ended cleanly"
    );
    drop((filler, queued));
}
