//! The `control-plane` scenario: release istiod-lite on a generated cluster (1,000 services,
//! 10,000 pods in 50 ambient namespaces, a few policies) in its file source, and 50 simulated
//! node proxies in this process: each the `xds` crate's delta ADS client subscribing to
//! Address and Authorization by wildcard, as ztunnel does, over istiod-lite's plaintext port
//! (127.0.0.1:15010 inside the sandbox; TLS is left out so the figures are the control
//! plane's, not the handshake's).
//!
//! Measured: time from starting the 50 clients to every one holding the full state; then,
//! round by round, time from one pod's file being rewritten (its address changed) to every
//! client having applied the new workload (a client ACKs right after applying), and the same
//! for one policy edited; istiod-lite's peak RSS (VmHWM) and CPU time. There is no baseline
//! without a mesh here: the `baseline` and `ratio` objects are empty and the targets are
//! absolute.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::envoy::config::core::v3::Node;
use serde_json::json;
use xds::{Client, ClientHandle, Names, ResourceHandler, Update};

use crate::generate::{self, Cluster};
use crate::procfs;
use crate::report::{Against, Bound, Report, Target};
use crate::stats::Summary;

const PLAINTEXT: &str = "127.0.0.1:15010";
const MONITORING: &str = "127.0.0.1:15014";

/// Sizes and repeats.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The generated cluster.
    pub cluster: Cluster,
    /// Simulated proxies.
    pub clients: usize,
    /// Pod changes and policy changes measured (each).
    pub rounds: usize,
}

impl Settings {
    /// The full run.
    pub fn full() -> Settings {
        Settings {
            cluster: Cluster { namespaces: 50, pods: 10_000, services: 1_000, nodes: 50, policies: 5 },
            clients: 50,
            rounds: 7,
        }
    }

    /// `--quick`: the same cluster and clients (the targets are about that size), fewer changes.
    pub fn quick() -> Settings {
        Settings { rounds: 3, ..Settings::full() }
    }
}

/// What one client has seen, shared between its two handlers and the measuring task.
#[derive(Default)]
struct Seen {
    addresses: HashSet<String>,
    policies: HashSet<String>,
    /// When the client first held at least the expected counts.
    synced_at: Option<Instant>,
    /// When the watched resource (see [`Watch`]) last arrived.
    watched_at: Option<Instant>,
}

/// The counts that make a full state, and the resource whose arrival is being timed.
#[derive(Default)]
struct Watch {
    addresses: usize,
    policies: usize,
    name: Option<String>,
}

/// Both handlers of one client: they record into the same [`Seen`].
struct Probe {
    seen: Arc<Mutex<Seen>>,
    watch: Arc<Mutex<Watch>>,
    /// Authorization (else Address).
    policies: bool,
}

impl<M: prost::Message + Default + 'static> ResourceHandler for ProbeOf<M> {
    type Message = M;

    fn apply(&mut self, updates: Vec<Update<M>>, removals: Vec<String>) -> Result<(), String> {
        let now = Instant::now();
        let p = &self.0;
        let watch = p.watch.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = p.seen.lock().unwrap_or_else(|e| e.into_inner());
        let hit = watch.name.as_ref().is_some_and(|w| {
            updates.iter().any(|u| {
                u.name == *w || (u.name.ends_with(w.as_str()) && u.name[..u.name.len() - w.len()].ends_with('/'))
            })
        });
        let set = if p.policies { &mut seen.policies } else { &mut seen.addresses };
        for r in removals {
            set.remove(&r);
        }
        for u in updates {
            set.insert(u.name);
        }
        if hit {
            seen.watched_at = Some(now);
        }
        if seen.synced_at.is_none()
            && watch.addresses > 0
            && seen.addresses.len() >= watch.addresses
            && seen.policies.len() >= watch.policies
        {
            seen.synced_at = Some(now);
        }
        Ok(())
    }
}

/// A probe for one message type.
struct ProbeOf<M>(Probe, std::marker::PhantomData<fn() -> M>);

fn node(n: usize) -> Node {
    use prost_types::{Struct, Value, value::Kind};
    let field = |v: &str| Value { kind: Some(Kind::StringValue(v.to_owned())) };
    Node {
        id: format!("ztunnel~bench-node-{n}"),
        metadata: Some(Struct {
            fields: [
                ("NODE_NAME".to_owned(), field(&format!("node-{n}"))),
                ("CLUSTER_ID".to_owned(), field("Kubernetes")),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

struct Sim {
    seen: Vec<Arc<Mutex<Seen>>>,
    watch: Arc<Mutex<Watch>>,
    handles: Vec<ClientHandle>,
}

fn start_clients(count: usize, watch: &Arc<Mutex<Watch>>) -> anyhow::Result<Sim> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{PLAINTEXT}"))?;
    let mut sim = Sim { seen: Vec::new(), watch: watch.clone(), handles: Vec::new() };
    for n in 1..=count {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let probe = |policies| Probe { seen: seen.clone(), watch: watch.clone(), policies };
        let client = Client::new(node(n))
            .subscribe(
                proto::ADDRESS_TYPE_URL,
                Names::Wildcard,
                ProbeOf::<proto::istio::workload::Address>(probe(false), std::marker::PhantomData),
            )
            .subscribe(
                proto::AUTHORIZATION_TYPE_URL,
                Names::Wildcard,
                ProbeOf::<proto::istio::security::Authorization>(probe(true), std::marker::PhantomData),
            );
        sim.handles.push(client.spawn(endpoint.clone()));
        sim.seen.push(seen);
    }
    Ok(sim)
}

impl Sim {
    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Seen> {
        self.seen[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds for every client; the latest time it reports.
    async fn wait_all(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Seen) -> Option<Instant>,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            let times: Vec<Option<Instant>> = (0..self.seen.len()).map(|i| done(&self.lock(i))).collect();
            if times.iter().all(Option::is_some) {
                return Ok(times.into_iter().flatten().max().unwrap_or_else(Instant::now));
            }
            if Instant::now() > deadline {
                let waiting = times.iter().filter(|t| t.is_none()).count();
                let errors: Vec<String> = self.handles.iter().filter_map(|h| h.status().last_error).take(3).collect();
                bail!(
                    "{waiting} of {} clients still waiting for {what} after {limit:?}; errors: {errors:?}",
                    self.seen.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Times one change: `apply` writes it, then every client must receive resource `name`.
    async fn time_change(&self, name: String, apply: impl FnOnce() -> std::io::Result<()>) -> anyhow::Result<Duration> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner()).name = Some(name.clone());
        for i in 0..self.seen.len() {
            self.lock(i).watched_at = None;
        }
        let at = Instant::now();
        apply().context("writing the change")?;
        let last = self.wait_all(&name, Duration::from_secs(10), |s| s.watched_at).await?;
        Ok(last.saturating_duration_since(at))
    }
}

/// Runs the scenario (inside the sandbox).
pub fn run(settings: &Settings, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let topo = e2e::Topology::builder().nodes(1).build().context("building the topology")?;
    let dir = topo.state_dir().join("control-plane");
    let config = dir.join("config");
    let c = settings.cluster;
    generate::write_all(&c, &config).context("generating the cluster")?;
    let tokens: String = (1..=c.nodes).map(|n| format!("node-{n}: bootstrap-token-of-node-{n}\n")).collect();
    std::fs::write(dir.join("tokens.yaml"), tokens)?;
    let binary = e2e::mesh::bin("istiod-lite")?;
    let node = topo.node(1);
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let istiod = node.netns.spawn([
        path(&binary),
        "--config-dir".into(),
        path(&config),
        "--ca-dir".into(),
        path(&dir.join("ca")),
        "--bootstrap-tokens".into(),
        path(&dir.join("tokens.yaml")),
        "--tls-addr".into(),
        "127.0.0.1:15012".into(),
        "--plaintext-addr".into(),
        PLAINTEXT.into(),
        "--monitoring-addr".into(),
        MONITORING.into(),
    ])?;
    let pid = istiod.pid();
    node.netns
        .wait_for_tcp(PLAINTEXT.parse()?, Duration::from_secs(30))
        .with_context(|| format!("istiod-lite not serving; its log:\n{}", istiod.log()))?;
    eprintln!("istiod-lite up ({} pods, {} services) in {:.1?}", c.pods, c.services, started.elapsed());

    let s = settings.clone();
    let measured = node
        .netns
        .spawn_thread("xds-clients", move || -> anyhow::Result<Measured> {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(measure(&s, &config, pid))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))???;
    let mem = procfs::memory(pid)?;
    let cpu_total = procfs::cpu_time(pid)?.as_secs_f64();

    let mut report = Report::new("control-plane", quick, settings.rounds);
    report.settings = [
        ("namespaces", json!(c.namespaces)),
        ("pods", json!(c.pods)),
        ("services", json!(c.services)),
        ("policies", json!(c.policies)),
        ("clients", json!(settings.clients)),
        ("address_resources", json!(measured.addresses)),
        ("authorization_resources", json!(measured.policies)),
        ("transport", json!("plaintext delta ADS on 127.0.0.1:15010")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    report.cost("first_sync_50_clients_s", "s", Summary::of(&[measured.first_sync])?);
    report.cost("pod_change_all_acked_ms", "ms", Summary::of(&measured.pod_changes)?);
    report.cost("policy_change_all_acked_ms", "ms", Summary::of(&measured.policy_changes)?);
    report.cost("istiod_peak_rss_mb", "MiB", Summary::of(&[mem.peak as f64 / 1048576.0])?);
    report.cost("istiod_cpu_s_first_sync", "CPU s", Summary::of(&[measured.sync_cpu])?);
    report.cost("istiod_cpu_s_total", "CPU s", Summary::of(&[cpu_total])?);
    report.notes.push(format!(
        "changes are timed from the file's rename to the last of {} clients applying the changed resource (each ACKs right after); istiod-lite's directory watcher wakes on inotify events (its 50 ms poll is only the fallback)",
        settings.clients
    ));
    report.notes.push("no baseline: the control plane has no no-mesh counterpart; its targets are absolute".into());
    report.targets = targets();
    report.settings.insert("elapsed_secs".into(), json!(started.elapsed().as_secs()));
    drop(istiod);
    topo.teardown().context("tearing the topology down")?;
    Ok(report)
}

/// Issue 6's control-plane targets; never relaxed here.
pub fn targets() -> Vec<Target> {
    let t = |metric, bound, target, label| Target { metric, against: Against::Mesh, bound, target, label };
    vec![
        t("first_sync_50_clients_s", Bound::AtMost, 2.0, "first full sync of 50 clients, s"),
        t("pod_change_all_acked_ms", Bound::AtMost, 100.0, "pod change ACKed by all, ms"),
        t("istiod_peak_rss_mb", Bound::AtMost, 200.0, "istiod-lite peak RSS, MiB"),
    ]
}

struct Measured {
    addresses: usize,
    policies: usize,
    first_sync: f64,
    sync_cpu: f64,
    pod_changes: Vec<f64>,
    policy_changes: Vec<f64>,
}

async fn measure(s: &Settings, config: &Path, pid: u32) -> anyhow::Result<Measured> {
    let c = s.cluster;
    // A first client learns what a full state is once istiod-lite has loaded the directory:
    // all pods and services as Address resources, every policy.
    let watch = Arc::new(Mutex::new(Watch::default()));
    let scout = start_clients(1, &watch)?;
    let expected = c.pods + c.services;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (addresses, policies) = loop {
        let (a, p) = {
            let seen = scout.lock(0);
            (seen.addresses.len(), seen.policies.len())
        };
        if a >= expected && p >= c.policies {
            // Let a push still in flight land, then take what it holds as complete.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let seen = scout.lock(0);
            break (seen.addresses.len(), seen.policies.len());
        }
        if Instant::now() > deadline {
            bail!(
                "a single client holds {a} addresses and {p} policies after 60 s; expected {expected} and {}",
                c.policies
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(scout);
    {
        let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
        w.addresses = addresses;
        w.policies = policies;
    }
    // Let the scout's stream close before timing the real ones.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cpu0 = procfs::cpu_time(pid)?;
    let t0 = Instant::now();
    let sim = start_clients(s.clients, &watch)?;
    let done = sim.wait_all("a full state", Duration::from_secs(60), |seen| seen.synced_at).await?;
    let first_sync = done.saturating_duration_since(t0).as_secs_f64();
    let sync_cpu = procfs::cpu_time(pid)?.saturating_sub(cpu0).as_secs_f64();
    eprintln!("{} clients fully synced ({addresses} addresses, {policies} policies) in {first_sync:.3} s", s.clients);

    let (ns, pod) = (7 % c.namespaces, 123 % c.pods_per_namespace());
    let pod_name = format!("{}/pod-{pod}", generate::namespace(ns));
    let mut pod_changes = Vec::new();
    let mut policy_changes = Vec::new();
    for round in 0..s.rounds {
        // Spread the edits over the poll period rather than always just after a poll.
        tokio::time::sleep(Duration::from_millis(300 + 37 * round as u64)).await;
        let ip = Ipv4Addr::new(10, 200, 0, (round + 1) as u8);
        let file = generate::namespace_file(config, ns);
        let yaml = generate::namespace_yaml(&c, ns, Some((pod, ip)));
        let took = sim.time_change(pod_name.clone(), || generate::write_atomic(&file, &yaml)).await?;
        pod_changes.push(took.as_secs_f64() * 1000.0);

        tokio::time::sleep(Duration::from_millis(300 + 53 * round as u64)).await;
        let file = generate::policies_file(config);
        let yaml = generate::policies_yaml(&c, round + 1);
        let took = sim.time_change(generate::edited_policy(&c), || generate::write_atomic(&file, &yaml)).await?;
        policy_changes.push(took.as_secs_f64() * 1000.0);
        eprintln!(
            "change round {}: pod {:.0} ms, policy {:.0} ms",
            round + 1,
            pod_changes[round],
            policy_changes[round]
        );
    }
    Ok(Measured { addresses, policies, first_sync, sync_cpu, pod_changes, policy_changes })
}
