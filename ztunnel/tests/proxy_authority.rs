//! What a pod's HBONE listener answers for each `:authority` it may be asked for (DESIGN §3:
//! `400` for a malformed request or authority, `503` when the destination cannot be reached),
//! with ztunnel's real ports configured so that only the authority decides.

mod support;

use hbone::CertStore;
use hbone::testing::{DAY, TestCa, id};
use hbone::tunnel::client::{ConnectError, ConnectTarget};
use hbone::tunnel::pool::{Pool, PoolConfig, PoolKey};
use ztunnel::proxy::{HostSockets, PodProxy};
use ztunnel::state::{StateConfig, StateHandle, file};

/// Ports free right now, for the pod's listeners (which must not be 0 here: 0 would make port 0
/// one of "ztunnel's own").
fn free_ports() -> [u16; 3] {
    let held: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    [ports[0], ports[1], ports[2]]
}

fn status(r: Result<hbone::tunnel::stream::H2Stream, ConnectError>) -> (u16, String) {
    match r {
        Err(ConnectError::Refused { status, reason, .. }) => (status.as_u16(), reason),
        Ok(_) => (200, String::new()),
        Err(e) => panic!("no answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorities_get_the_status_they_mean() {
    let yaml = "workloads:\n- {name: web, namespace: shop, serviceAccount: web, addresses: [\"127.0.0.1\"], protocol: HBONE}\n";
    let handle = StateHandle::new(file::parse(yaml, StateConfig::default()).unwrap());
    let ca = TestCa::new("authority");
    let (web, client) = (id("shop", "web"), id("tools", "client"));
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    certs.insert(ca.issue(&client, DAY));
    let [outbound, plain, hbone] = free_ports();
    let (inputs, registry) = support::loopback_inputs_with(handle, certs.clone(), |cfg| {
        cfg.outbound_port = outbound;
        cfg.inbound_plain_port = plain;
        cfg.hbone_port = hbone;
    });
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();
    let pool = Pool::new(PoolConfig::default(), certs, None);
    let key = PoolKey { src: client, dst: web, addr: pod.addrs.hbone };
    let ask = |authority: &str| {
        let target = ConnectTarget::new(authority.parse().unwrap(), None);
        let (pool, key) = (&pool, &key);
        async move { status(pool.connect(key, &target).await) }
    };

    // Port 0 is a malformed authority, not an unreachable workload.
    let (code, reason) = ask("127.0.0.1:0").await;
    assert_eq!(code, 400, "{reason}");
    assert!(reason.contains("port 0"), "{reason}");
    // One of ztunnel's own ports on the pod: refused as such.
    let (code, reason) = ask(&format!("127.0.0.1:{plain}")).await;
    assert_eq!(code, 400, "{reason}");
    // Not this pod's address.
    let (code, reason) = ask("127.0.0.2:80").await;
    assert_eq!(code, 400, "{reason}");
    // A well-formed authority nobody listens on: unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (code, reason) = ask(&format!("127.0.0.1:{closed_port}")).await;
    assert_eq!(code, 503, "{reason}");

    let metrics = ztunnel::metrics::encode(&registry);
    for reason in ["bad_authority", "destination_is_ztunnel", "wrong_destination", "workload_unreachable"] {
        let line = format!("ztunnel_connections_denied_total{{reporter=\"destination\",reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
}
