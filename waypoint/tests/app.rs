//! The whole waypoint as the binary starts it: certificate from istiod-lite's CA, state from
//! a real xDS server, readiness only after both, the config dump and the metrics endpoint,
//! and an HBONE listener presenting the waypoint's identity.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hbone::{CertStore, Identity};
use istiod_lite::ca::{CaService, CaSigner, NodeTokens};
use prost::Message;
use proto::mesh::waypoint::v1 as pb;
use xds::{ResourceStore, XdsServer};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path).header("host", "x").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let r = s.send_request(req).await.unwrap();
    let status = r.status().as_u16();
    let body = http_body_util::BodyExt::collect(r.into_body()).await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_ca_and_xds_and_reports_ready() {
    let dir = std::env::temp_dir().join(format!("waypoint-app-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());

    // CA: shop/wp and frontend/web run on node1.
    let signer = Arc::new(CaSigner::load_or_generate(&dir.join("ca"), "cluster.local").unwrap());
    let tokens = NodeTokens::from(HashMap::from([("node1-token".to_owned(), "node1".to_owned())]));
    let placement = |id: &Identity, node: &str| {
        node == "node1" && matches!((id.namespace(), id.service_account()), ("shop", "wp") | ("frontend", "web"))
    };
    let ca = CaService::new(signer.clone(), tokens, Arc::new(placement)).into_server();
    let ca_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca_addr = ca_l.local_addr().unwrap();
    let ca_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ca)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(ca_l)),
    );

    // xDS, empty at first: the waypoint must not be ready before its first state.
    let store = ResourceStore::new();
    let xds_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = xds_l.local_addr().unwrap();
    let server = XdsServer::new(store.clone());
    let xds_task = tokio::spawn(async move {
        let _ = server.serve(xds_l, std::future::pending()).await;
    });

    std::fs::write(dir.join("token"), "node1-token\n").unwrap();
    std::fs::write(dir.join("root.pem"), signer.root_pem()).unwrap();
    let ca_url = format!("http://{ca_addr}");
    let xds_url = format!("http://{xds_addr}");
    let token = dir.join("token");
    let root = dir.join("root.pem");
    let cfg = waypoint::config::Config::try_parse_from([
        "waypoint",
        "--gateway",
        "shop/wp",
        "--node-name",
        "node1",
        "--xds-address",
        &xds_url,
        "--ca-address",
        &ca_url,
        "--ca-token-file",
        token.to_str().unwrap(),
        "--ca-root-file",
        root.to_str().unwrap(),
        "--hbone-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--readiness-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let running = waypoint::app::start(cfg, tokio::runtime::Handle::current(), None).await.unwrap();

    let (status, body) = http_get(running.readiness_addr, "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    let route = pb::Route {
        namespace: "shop".into(),
        name: "r".into(),
        parents: vec![pb::ParentService { hostname: "svc.shop.svc.cluster.local".into(), port: 80 }],
        ..Default::default()
    };
    store.set(
        proto::WAYPOINT_ROUTE_TYPE_URL,
        "shop/HTTPRoute/r",
        prost_types::Any { type_url: proto::WAYPOINT_ROUTE_TYPE_URL.into(), value: route.encode_to_vec() },
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(running.readiness_addr, "/healthz/ready").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, dump) = http_get(running.admin_addr, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert!(dump["waypoint"]["routes"]["svc.shop.svc.cluster.local:80"].is_array(), "{dump:#}");
    assert_eq!(dump["certificates"][0]["identity"], "spiffe://cluster.local/ns/shop/sa/wp");
    let (status, metrics) = http_get(running.metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    // Published with the state: no policy runs as a fail-closed stand-in.
    assert!(metrics.lines().any(|l| l == "waypoint_policies_stand_in 0"), "{metrics}");

    // A mesh client reaches the HBONE listener, which proves the waypoint's identity; an
    // unknown destination is refused with 400.
    let client_id = Identity::new("cluster.local", "frontend", "web").unwrap();
    let client_store = CertStore::new(hbone::TrustRoots::from_pem(signer.root_pem().as_bytes()).unwrap());
    let channel = tonic::transport::Endpoint::from_shared(ca_url).unwrap().connect_lazy();
    ztunnel::ca_client::CaClient::new(channel, "node1-token", client_store.clone(), Duration::from_secs(3600))
        .fetch(&client_id)
        .await
        .unwrap();
    let pool = hbone::tunnel::pool::Pool::new(Default::default(), client_store, None);
    let key = hbone::tunnel::pool::PoolKey {
        src: client_id,
        dst: Identity::new("cluster.local", "shop", "wp").unwrap(),
        addr: running.hbone_addr,
    };
    let target = hbone::tunnel::client::ConnectTarget::new("10.1.2.3:80".parse().unwrap(), None);
    let e = pool.connect(&key, &target).await.unwrap_err();
    assert!(e.to_string().contains("400"), "TLS and identity succeeded, the destination is unknown: {e}");

    // SIGTERM's path: readiness fails at once, the HBONE listener closes, and shutdown ends
    // as soon as nothing is open (the pooled connection above gets GOAWAY and closes).
    let mut running = running;
    running.start_drain();
    let (status, body) = http_get(running.readiness_addr, "/healthz/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    let started = tokio::time::Instant::now();
    let left = running.shutdown(Duration::from_secs(10)).await;
    assert_eq!(left, 0);
    assert!(started.elapsed() < Duration::from_secs(5), "the drain waited for nothing: {:?}", started.elapsed());
    ca_task.abort();
    xds_task.abort();
}
