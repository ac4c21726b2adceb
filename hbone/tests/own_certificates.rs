//! Our own certificates are held to the rules peers check them by when they enter the store:
//! one a peer would refuse (wrong SPIFFE ID, not a leaf SVID, key not the leaf's, outside its
//! validity) is refused at insert, naming the identity and what is wrong, and the previous
//! certificate goes on being presented, so tunnels keep working.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::CertStore;
use hbone::store::OwnCertProblem;
use hbone::testing::rcgen::{BasicConstraints, IsCa, KeyUsagePurpose};
use hbone::tunnel::client::ConnectTarget;
use hbone::tunnel::pool::{Pool, PoolConfig};
use support::*;
use tokio::sync::mpsc;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_peers_would_refuse_is_kept_out_and_tunnels_go_on_with_the_previous_one() {
    let mesh = Mesh::new();
    let client_store = CertStore::new(mesh.ca.roots());
    client_store.insert_for(&mesh.client, mesh.ca.issue(&mesh.client, DAY)).unwrap();
    let installed = client_store.get(&mesh.client).unwrap();
    let now = SystemTime::now();

    // What a CA might answer instead of a workload certificate for the client.
    let other = id("default", "other");
    let bad = [
        ("another identity", mesh.ca.issue_pem(&other, now - HOUR, now + DAY), other.as_str()),
        (
            "a CA certificate",
            mesh.ca.issue_pem_with(mesh.client.as_str(), |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
            }),
            "keyCertSign",
        ),
        (
            "no digitalSignature",
            mesh.ca.issue_pem_with(mesh.client.as_str(), |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
            "digitalSignature",
        ),
        ("expired", mesh.ca.issue_pem(&mesh.client, now - 2 * DAY, now - HOUR), "expired at"),
    ];
    for (what, (chain, key), field) in bad {
        let err = client_store.insert_pem(&mesh.client, chain.as_bytes(), key.as_bytes()).expect_err(what);
        let text = err.to_string();
        assert!(text.contains(mesh.client.as_str()) && text.contains(field), "{what}: {text}");
        if what == "another identity" {
            assert!(matches!(&err.problem, OwnCertProblem::WrongIdentity { found } if *found == other), "{err:?}");
        }
        assert!(Arc::ptr_eq(&client_store.get(&mesh.client).unwrap(), &installed), "{what}: previous one kept");
    }
    assert!(client_store.get(&other).is_none());

    // The server still takes the client: the certificate presented is the one kept.
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = TestServer::start(&mesh.server_store, mesh.server.clone(), forwarder(Some(tx))).await;
    let pool = Pool::new(PoolConfig::default(), client_store, None);
    let backend = echo_backend().await;
    let stream = pool.connect(&mesh.key(server.addr), &ConnectTarget::new(backend, None)).await.unwrap();
    assert_eq!(seen.recv().await.unwrap().peer, mesh.client);
    drop(stream);
}
