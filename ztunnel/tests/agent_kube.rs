//! Enrollment from the Kubernetes API, against a fake API server on loopback: decisions from
//! the watched namespaces and this node's pods, a GET for a pod the watch has not delivered,
//! refusals for what the API does not know, and the agent enrolling and unenrolling running
//! pods (real namespaces, real redirection) when a namespace label changes. The agent test
//! needs root.

mod support;

use support::TempDir;
use support::fake_api::FakeApi;

use std::time::Duration;

use serde_json::json;
use ztunnel::agent::enroll::{DnsCapture, PodFacts};
use ztunnel::agent::kube_enroll::{KubeEnrollError, KubeEnrollment};
use ztunnel::agent::redirect;
use ztunnel::agent::{Agent, AgentConfig, EnrollmentSource};
use ztunnel::cni::{CniCommand, CniEvent};
use ztunnel::netns::{Netns, ScratchNetns};

const WAIT: Duration = Duration::from_secs(10);

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cluster(api: &FakeApi) {
    api.namespace("mesh", json!({"istio.io/dataplane-mode": "ambient"}));
    api.namespace("plain", json!({"team": "x"}));
    api.pod("mesh", "web", "node-a", json!({"app": "web"}), "web-sa");
    api.pod("mesh", "legacy", "node-a", json!({"istio.io/dataplane-mode": "none"}), "default");
    api.pod("plain", "lone", "node-a", json!({"istio.io/dataplane-mode": "ambient"}), "lone-sa");
    api.pod("mesh", "elsewhere", "node-b", json!({}), "default");
}

#[tokio::test]
async fn decides_from_watches_and_fetches_what_is_missing() {
    let api = FakeApi::start().await;
    cluster(&api);
    let kube = KubeEnrollment::start(api.client(), "node-a");
    let mut changes = kube.changes();
    eventually("the first lists", || kube.cached("mesh", "web").is_some() && kube.cached("plain", "lone").is_some())
        .await;
    assert_eq!(
        kube.cached("mesh", "web"),
        Some(PodFacts {
            enrolled: true,
            service_account: "web-sa".into(),
            uid: Some("uid-mesh-web".into()),
            dns_capture: DnsCapture::Unset
        })
    );
    assert!(!kube.cached("mesh", "legacy").unwrap().enrolled);
    assert!(kube.cached("plain", "lone").unwrap().enrolled);
    // Only this node's pods are watched.
    assert_eq!(kube.cached("mesh", "elsewhere"), None);
    let pod_requests: Vec<String> = api.seen().into_iter().filter(|s| s.starts_with("/api/v1/pods?")).collect();
    assert!(!pod_requests.is_empty());
    for r in &pod_requests {
        assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-a"), "{r}");
    }
    assert!(pod_requests.iter().any(|r| r.contains("watch=true")), "{pod_requests:?}");

    // A namespace label change arrives by watch and is announced.
    changes.borrow_and_update();
    api.namespace("plain", json!({"istio.io/dataplane-mode": "ambient"}));
    tokio::time::timeout(WAIT, changes.changed()).await.expect("change announced").unwrap();
    eventually("the label change", || kube.cached("mesh", "web").is_some()).await;
    let gets_before = api.seen().len();
    assert!(kube.pod("plain", "lone").await.unwrap().enrolled);
    assert_eq!(api.seen().len(), gets_before, "a cached pod needs no request");

    // The DNS capture annotation arrives by watch too, and is announced.
    changes.borrow_and_update();
    api.annotate_pod("mesh", "web", json!({"ambient.istio.io/dns-capture": "false"}));
    tokio::time::timeout(WAIT, changes.changed()).await.expect("annotation change announced").unwrap();
    eventually("the annotation", || {
        kube.cached("mesh", "web").is_some_and(|p| p.dns_capture == DnsCapture::Set(false))
    })
    .await;

    // A pod the watch has not delivered when its ADD comes: fetched, not guessed.
    api.stall_pod_watch();
    api.pod("mesh", "late", "node-a", json!({}), "late-sa");
    assert_eq!(kube.cached("mesh", "late"), None);
    let late = kube.pod("mesh", "late").await.unwrap();
    assert_eq!(
        late,
        PodFacts {
            enrolled: true,
            service_account: "late-sa".into(),
            uid: Some("uid-mesh-late".into()),
            dns_capture: DnsCapture::Unset
        }
    );
    assert!(api.seen().iter().any(|s| s.starts_with("/api/v1/namespaces/mesh/pods/late?")), "{:?}", api.seen());

    // What the API does not know refuses the decision, naming the object.
    match kube.pod("mesh", "ghost").await {
        Err(e @ KubeEnrollError::NotFound { .. }) => assert!(e.to_string().contains("Pod mesh/ghost"), "{e}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    api.pod("nowhere", "p", "node-a", json!({}), "default");
    match kube.pod("nowhere", "p").await {
        Err(e @ KubeEnrollError::NotFound { .. }) => assert!(e.to_string().contains("Namespace nowhere"), "{e}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_api_refuses() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap())).unwrap();
    let kube = KubeEnrollment::start(client, "node-a");
    let err = kube.pod("mesh", "web").await.unwrap_err();
    assert!(matches!(err, KubeEnrollError::Get { .. }), "{err:?}");
    assert!(err.to_string().contains("getting Pod mesh/web"), "{err}");
}

fn scratch(test: &str) -> ScratchNetns {
    ScratchNetns::create(&format!("{test}-{}-{}", std::process::id(), rand::random::<u16>())).unwrap()
}

fn event(command: CniCommand, container: &str, ns: &ScratchNetns, namespace: &str, pod: &str) -> CniEvent {
    CniEvent {
        command,
        container_id: container.into(),
        netns: ns.path(),
        ifname: "eth0".into(),
        pod_namespace: Some(namespace.into()),
        pod_name: Some(pod.into()),
        pod_uid: None,
    }
}

fn installed(ns: &Netns) -> bool {
    redirect::installed(ns).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrolls_and_unenrolls_running_pods_on_label_changes() {
    let api = FakeApi::start().await;
    cluster(&api);
    let dir = TempDir::new("agent-kube");
    std::fs::write(dir.0.join("kubeconfig"), api.kubeconfig()).unwrap();
    let config = kube_config(&dir, Some("node-a"));
    let agent = Agent::start(config).await.unwrap();
    let web = scratch("kube-web");
    let other = scratch("kube-other");

    // Enrolled at ADD from the namespace label (no ztunnel connected: ADD still succeeds).
    let reply = agent.handle(event(CniCommand::Add, "c-web", &web, "mesh", "web")).await;
    assert!(reply.ok && reply.enrolled, "{reply:?}");
    assert!(installed(web.netns()));
    api.pod("plain", "other", "node-a", json!({}), "default");
    let reply = agent.handle(event(CniCommand::Add, "c-other", &other, "plain", "other")).await;
    assert!(reply.ok && !reply.enrolled, "{reply:?}");
    assert!(!installed(other.netns()));

    // The namespace leaves the mesh: the running pod loses its redirection.
    api.namespace("mesh", json!({}));
    eventually("web unenrolled", || !installed(web.netns())).await;
    // ... and comes back.
    api.namespace("mesh", json!({"istio.io/dataplane-mode": "ambient"}));
    eventually("web enrolled again", || installed(web.netns())).await;
    // A pod not enrolled at ADD is enrolled when its namespace joins.
    api.namespace("plain", json!({"istio.io/dataplane-mode": "ambient"}));
    eventually("other enrolled", || installed(other.netns())).await;
    // The pod's own opt-out wins over its namespace.
    api.pod("plain", "other", "node-a", json!({"istio.io/dataplane-mode": "none"}), "default");
    eventually("other opted out", || !installed(other.netns())).await;

    // A pod the API does not know is refused.
    let ghost = scratch("kube-ghost");
    let reply = agent.handle(event(CniCommand::Add, "c-ghost", &ghost, "mesh", "ghost")).await;
    assert!(!reply.ok && reply.error.as_deref().unwrap_or("").contains("does not exist"), "{reply:?}");
    assert!(!installed(ghost.netns()));

    let reply = agent.handle(event(CniCommand::Del, "c-web", &web, "mesh", "web")).await;
    assert!(reply.ok && reply.enrolled);
    assert!(!installed(web.netns()));
    agent.handle(event(CniCommand::Del, "c-other", &other, "plain", "other")).await;
    // Deleted pods are forgotten: a label change no longer touches them.
    api.namespace("plain", json!({"istio.io/dataplane-mode": "ambient"}));
    api.pod("plain", "other", "node-a", json!({}), "default");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!installed(other.netns()));
    agent.shutdown().await;
}

/// An agent on the API source, its files in `dir` (kubeconfig at `dir/kubeconfig`), on node
/// `node`, leaving the host's probe rules alone (the test's own namespace is the host's).
fn kube_config(dir: &TempDir, node: Option<&str>) -> AgentConfig {
    AgentConfig {
        zds_socket: dir.0.join("ztunnel.sock"),
        cni_socket: dir.0.join("cni.sock"),
        enrollment: dir.0.join("unused"),
        state_dir: dir.0.join("state"),
        capture_dns: false,
        zds_timeout_ms: 1000,
        enrollment_source: EnrollmentSource::Kube,
        node_name: node.map(str::to_owned),
        kubeconfig: Some(dir.0.join("kubeconfig")),
        no_probe_snat: true,
        host_netns: None,
    }
}

#[tokio::test]
async fn api_source_needs_a_node_and_a_usable_kubeconfig() {
    let dir = TempDir::new("agent-kube-config");
    let mut config = kube_config(&dir, None);
    let err = Agent::start(config.clone()).await.err().expect("no node name");
    assert!(err.to_string().contains("--node-name"), "{err}");
    config.node_name = Some("node-a".into());
    std::fs::write(dir.0.join("kubeconfig"), "clusters: [oops").unwrap();
    let err = Agent::start(config).await.err().expect("broken kubeconfig");
    assert!(err.to_string().contains(&dir.0.join("kubeconfig").display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_does_not_enroll_a_pod_deleted_while_its_add_is_deciding() {
    use ztunnel::agent::enroll::Source;

    let api = FakeApi::start().await;
    cluster(&api);
    let (client, gate, held, relay_task) = support::gated_api(&api, b"/api/v1/namespaces/mesh/pods/slow").await;
    let kube = KubeEnrollment::start(client, "node-a");
    eventually("the first lists", || kube.cached("mesh", "web").is_some()).await;
    // A pod the watch has not delivered: its ADD has to GET it, and the relay holds that GET.
    api.stall_pod_watch();
    api.pod("mesh", "slow", "node-a", json!({}), "slow-sa");

    let dir = TempDir::new("agent-kube-race");
    let mut config = kube_config(&dir, Some("node-a"));
    config.kubeconfig = None;
    let agent = Agent::start_with(config, Source::Kube(kube)).await.unwrap();
    let pod = scratch("kube-race");

    let add = {
        let agent = agent.clone();
        let ev = event(CniCommand::Add, "c-slow", &pod, "mesh", "slow");
        tokio::spawn(async move { agent.handle(ev).await })
    };
    tokio::time::timeout(WAIT, held.notified()).await.expect("the ADD's GET reached the relay");
    // The runtime gives up on the sandbox while the ADD is still deciding.
    let del = tokio::time::timeout(WAIT, agent.handle(event(CniCommand::Del, "c-slow", &pod, "mesh", "slow")))
        .await
        .expect("DEL answered");
    assert!(del.ok, "{del:?}");
    gate.close();
    let add = tokio::time::timeout(WAIT, add).await.expect("ADD answered").unwrap();
    assert!(!add.ok && add.error.as_deref().unwrap_or("").contains("deleted"), "{add:?}");
    assert!(!installed(pod.netns()), "a deleted pod got redirection rules");
    assert!(agent.zds().pods().await.is_empty(), "a deleted pod was handed to ztunnel");
    let records = std::fs::read_dir(dir.0.join("state/pods")).unwrap().count();
    assert_eq!(records, 0, "a deleted pod was recorded");

    // An ADD of the same container after that (a retried sandbox) is decided normally.
    let again = tokio::time::timeout(WAIT, agent.handle(event(CniCommand::Add, "c-slow", &pod, "mesh", "slow")))
        .await
        .expect("second ADD answered");
    assert!(again.ok && again.enrolled, "{again:?}");
    assert!(agent.handle(event(CniCommand::Del, "c-slow", &pod, "mesh", "slow")).await.ok);
    assert!(!installed(pod.netns()));
    agent.shutdown().await;
    drop(relay_task);
}
