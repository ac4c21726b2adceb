//! Guards the ztunnel integration tests share: a scratch directory and a task, both removed
//! when the test ends, also when it fails.
#![allow(dead_code)]

use std::path::PathBuf;

/// A directory under the system temp dir, unique to this run, deleted on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory named after `test`.
    pub fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("{test}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Aborts a spawned task when dropped, so nothing outlives its test.
pub struct Task(pub tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub mod fake_api;

/// Inputs of a pod proxy for loopback tests: kernel-chosen ports, no socket mark, delivery
/// from ztunnel's own address; the registry holds its metrics.
pub fn loopback_inputs(
    state: ztunnel::state::StateHandle,
    certs: hbone::CertStore,
) -> (ztunnel::proxy::ProxyInputs, prometheus_client::registry::Registry) {
    loopback_inputs_with(state, certs, |_| {})
}

/// [`loopback_inputs`] with `tweak` applied to the configuration.
pub fn loopback_inputs_with(
    state: ztunnel::state::StateHandle,
    certs: hbone::CertStore,
    tweak: impl FnOnce(&mut ztunnel::proxy::ProxyConfig),
) -> (ztunnel::proxy::ProxyInputs, prometheus_client::registry::Registry) {
    let mut registry = prometheus_client::registry::Registry::default();
    let mut cfg = ztunnel::proxy::ProxyConfig {
        mark: None,
        transparent_inbound: false,
        outbound_port: 0,
        inbound_plain_port: 0,
        hbone_port: 0,
        ..ztunnel::proxy::ProxyConfig::default()
    };
    tweak(&mut cfg);
    let metrics = ztunnel::metrics::Metrics::register(&mut registry);
    let inputs = ztunnel::proxy::ProxyInputs::new(
        state,
        certs,
        metrics,
        std::sync::Arc::new(cfg),
        Default::default(),
        &tokio::runtime::Handle::current(),
    );
    (inputs, registry)
}

/// Echoes each connection on `listener` until the peer's FIN, then sends its own.
pub fn echo_on(listener: std::net::TcpListener) -> Task {
    use tokio::io::AsyncWriteExt;
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    Task(tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    }))
}

/// The proxy of one enrolled pod, workload `<namespace>/<sa>` (service account `sa`) at `ip`,
/// started in `pod`'s namespace on the real ports (inbound not transparent), with a
/// certificate from a CA of its own; the registry holds its metrics.
pub fn start_in_pod(
    pod: &ztunnel::netns::ScratchNetns,
    namespace: &str,
    sa: &str,
    ip: &str,
) -> (ztunnel::proxy::PodProxy, prometheus_client::registry::Registry) {
    use std::sync::Arc;
    let yaml = format!(
        "workloads:\n- {{name: {sa}, namespace: {namespace}, serviceAccount: {sa}, addresses: [\"{ip}\"], protocol: HBONE}}\n"
    );
    let state = ztunnel::state::file::parse(&yaml, ztunnel::state::StateConfig::default()).unwrap();
    let ca = hbone::testing::TestCa::new("pod");
    let identity = hbone::testing::id(namespace, sa);
    let certs = hbone::CertStore::new(ca.roots());
    certs.insert(ca.issue(&identity, hbone::testing::DAY));
    let mut registry = prometheus_client::registry::Registry::default();
    let inputs = ztunnel::proxy::ProxyInputs::new(
        ztunnel::state::StateHandle::new(state),
        certs,
        ztunnel::metrics::Metrics::register(&mut registry),
        Arc::new(ztunnel::proxy::ProxyConfig { transparent_inbound: false, ..Default::default() }),
        Default::default(),
        &tokio::runtime::Handle::current(),
    );
    let sockets = ztunnel::proxy::netns_sockets::InPodSockets::new(
        Arc::new(pod.netns().try_clone().unwrap()),
        Arc::new(ztunnel::netns::Netns::current().unwrap()),
    );
    let uid = format!("Kubernetes//Pod/{namespace}/{sa}");
    (ztunnel::proxy::PodProxy::start(uid, identity, sockets, inputs).unwrap(), registry)
}

/// Dials `dst` from inside `ns`, writes `payload`, half-closes and reads what comes back.
pub fn exchange(ns: &ztunnel::netns::Netns, dst: std::net::SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut s = ns.run(move || std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3))).unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map(|_| got)
}

/// The registry's text once the first `line_prefix` line ends in ` <value>`, or after 5 s
/// (the caller's assertions then say what was there).
pub async fn metrics_once(registry: &prometheus_client::registry::Registry, line_prefix: &str, value: &str) -> String {
    let suffix = format!(" {value}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = ztunnel::metrics::encode(registry);
        let done = text.lines().find(|l| l.starts_with(line_prefix)).is_some_and(|l| l.ends_with(&suffix));
        if done || std::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A TCP relay to `upstream` that holds back any client bytes containing `needle` until `gate`
/// is closed (from then on nothing is held), and notifies `held` when it starts holding them.
pub async fn gated_relay(
    upstream: std::net::SocketAddr,
    needle: &'static [u8],
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    held: std::sync::Arc<tokio::sync::Notify>,
) -> (std::net::SocketAddr, Task) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let (gate, held) = (gate.clone(), held.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf[..n].windows(needle.len()).any(|w| w == needle) {
                        held.notify_one();
                        // Never granted a permit: closing it is what lets everything through.
                        let _ = gate.acquire().await;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, Task(task))
}

/// A Kubernetes client for `api` whose requests pass a [`gated_relay`] holding back those
/// containing `needle`: the client, the gate (close it to let everything through), the
/// notification that a request is held, and the relay's task.
pub async fn gated_api(
    api: &fake_api::FakeApi,
    needle: &'static [u8],
) -> (kube::Client, std::sync::Arc<tokio::sync::Semaphore>, std::sync::Arc<tokio::sync::Notify>, Task) {
    let upstream: std::net::SocketAddr = api
        .kubeconfig()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: http://").map(str::to_owned))
        .expect("server in kubeconfig")
        .parse()
        .unwrap();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = std::sync::Arc::new(tokio::sync::Notify::new());
    let (relay, task) = gated_relay(upstream, needle, gate.clone(), held.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(format!("http://{relay}").parse().unwrap())).unwrap();
    (client, gate, held, task)
}

/// An agent on the file source `dir/cluster/pods.yaml` (written from `yaml`), with its sockets
/// and state under `dir`, leaving the host's probe rules alone.
pub fn files_agent(dir: &TempDir, yaml: &str) -> ztunnel::agent::AgentConfig {
    std::fs::create_dir_all(dir.0.join("cluster")).unwrap();
    std::fs::write(dir.0.join("cluster/pods.yaml"), yaml).unwrap();
    ztunnel::agent::AgentConfig {
        zds_socket: dir.0.join("ztunnel.sock"),
        cni_socket: dir.0.join("cni.sock"),
        enrollment: dir.0.join("cluster"),
        state_dir: dir.0.join("state"),
        capture_dns: false,
        zds_timeout_ms: 2000,
        enrollment_source: ztunnel::agent::EnrollmentSource::Files,
        node_name: None,
        kubeconfig: None,
        no_probe_snat: true,
        host_netns: None,
    }
}
