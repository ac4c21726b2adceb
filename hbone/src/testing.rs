//! Test helpers: a throwaway CA that issues SPIFFE workload certificates.
//!
//! For tests only (feature `testing`); the production CA lives in istiod-lite.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use std::net::SocketAddr;

/// The certificate builder [`TestCa::issue_pem_with`] hands to its caller.
pub use rcgen;

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::certs::{TrustRoots, WorkloadCert};
use crate::identity::Identity;
use crate::store::CertStore;
use crate::tunnel::client::ConnectTarget;
use crate::tunnel::copy::copy_bidirectional;
use crate::tunnel::pool::{Pool, PoolConfig, PoolKey};
use crate::tunnel::server::{Handler, InboundConnect};

/// A self-signed root able to issue workload certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new root named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::OrganizationName, name);
        let root = params.self_signed(&key).expect("self-signed root");
        TestCa { root_pem: root.pem(), issuer: Issuer::new(params, key) }
    }

    /// The root as trust roots.
    pub fn roots(&self) -> TrustRoots {
        TrustRoots::from_pem(self.root_pem.as_bytes()).expect("own root parses")
    }

    /// The root certificate in PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A certificate for `id` valid from an hour ago for `validity`.
    pub fn issue(&self, id: &Identity, validity: Duration) -> WorkloadCert {
        let now = SystemTime::now();
        self.issue_between(id, now - Duration::from_secs(3600), now + validity)
    }

    /// A certificate for `id` valid between the given times (in the past for expired ones).
    pub fn issue_between(&self, id: &Identity, not_before: SystemTime, not_after: SystemTime) -> WorkloadCert {
        let (chain, key) = self.issue_pem(id, not_before, not_after);
        WorkloadCert::from_pem(chain.as_bytes(), key.as_bytes()).expect("issued certificate loads")
    }

    /// PEM chain and key for `id`, as a CA would hand them out.
    pub fn issue_pem(&self, id: &Identity, not_before: SystemTime, not_after: SystemTime) -> (String, String) {
        self.issue_pem_with(id.as_str(), |params| {
            params.not_before = not_before.into();
            params.not_after = not_after.into();
        })
    }

    /// PEM chain and key for a leaf whose one URI SAN is `uri` (not necessarily a valid
    /// identity), valid from an hour ago for a day, with the profile of a workload certificate
    /// (digitalSignature, serverAuth + clientAuth, not a CA) as `edit` leaves it. For tests of
    /// what verifiers make of certificates a mesh CA would not issue.
    pub fn issue_pem_with(&self, uri: &str, edit: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("a valid IA5 string"))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + DAY).into();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        (cert.pem(), key.serialize_pem())
    }
}

/// One day.
pub const DAY: Duration = Duration::from_secs(86400);

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// One CA, a client store holding `client`'s certificate and a server store holding `server`'s.
pub struct Mesh {
    /// The mesh root.
    pub ca: TestCa,
    /// The client workload's identity.
    pub client: Identity,
    /// The server workload's identity.
    pub server: Identity,
    /// Certificates of the client side.
    pub client_store: CertStore,
    /// Certificates of the server side.
    pub server_store: CertStore,
}

impl Mesh {
    /// A fresh CA with one client and one server identity.
    pub fn new() -> Self {
        let ca = TestCa::new("mesh root");
        let client = id("default", "client");
        let server = id("backend", "server");
        let client_store = CertStore::new(ca.roots());
        client_store.insert(ca.issue(&client, DAY));
        let server_store = CertStore::new(ca.roots());
        server_store.insert(ca.issue(&server, DAY));
        Mesh { ca, client, server, client_store, server_store }
    }

    /// A pool on the client side.
    pub fn pool(&self) -> Pool {
        Pool::new(PoolConfig::default(), self.client_store.clone(), None)
    }

    /// The pool key from client to server at `addr`.
    pub fn key(&self, addr: SocketAddr) -> PoolKey {
        PoolKey { src: self.client.clone(), dst: self.server.clone(), addr }
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new()
    }
}

/// What the forwarding handler saw of each request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Verified peer identity.
    pub peer: Identity,
    /// Requested destination.
    pub authority: SocketAddr,
    /// Original client.
    pub forwarded_for: Option<SocketAddr>,
}

/// The inbound side of a node proxy: connect to the authority, answer 503 if that fails,
/// then pump bytes.
pub fn forwarder(seen: Option<mpsc::UnboundedSender<Seen>>) -> impl Handler {
    move |req: InboundConnect| {
        let seen = seen.clone();
        async move {
            if let Some(seen) = seen {
                let _ = seen.send(Seen {
                    peer: req.peer_identity().clone(),
                    authority: req.authority(),
                    forwarded_for: req.forwarded_for(),
                });
            }
            match TcpStream::connect(req.authority()).await {
                Ok(tcp) => {
                    let Ok(stream) = req.accept() else { return };
                    copy_bidirectional(tcp, stream).await;
                }
                Err(e) => req.refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("connect failed: {e}")),
            }
        }
    }
}

/// The outbound side of a node proxy: every TCP connection accepted becomes a tunnel to
/// `authority` through `key`.
pub async fn outbound(pool: Pool, key: PoolKey, authority: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let (pool, key) = (pool.clone(), key.clone());
            tokio::spawn(async move {
                match pool.connect(&key, &ConnectTarget::new(authority, Some(peer))).await {
                    Ok(stream) => {
                        copy_bidirectional(tcp, stream).await;
                    }
                    Err(e) => panic!("tunnel failed: {e}"),
                }
            });
        }
    });
    addr
}

/// A backend that echoes everything until EOF, then closes its side.
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}
