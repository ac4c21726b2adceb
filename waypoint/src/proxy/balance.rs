//! Endpoint choice: the service's backend policy (least request by default: the better of two
//! random picks by in-flight requests; round robin; random; consistent hash on a header,
//! by rendezvous hashing so that an endpoint leaving only moves its own keys) over the
//! endpoints not ejected by passive outlier detection.
//!
//! Outlier detection: `consecutive_errors` 5xx answers or connect failures in a row eject an
//! endpoint for `ejection × 2^(previous ejections)`; the last endpoint not ejected is never
//! ejected, and when every endpoint is ejected all are used again.
//!
//! Before any of that, the service's own load balancing (Istio's `Service.load_balancing`)
//! decides which endpoints may be used, with the waypoint's own workload as the source: the
//! endpoint list comes from [`MeshState::endpoints_for`] (declared port, health policy, this
//! network, capacity, STRICT locality), and FAILOVER is applied here as priority levels, with
//! the load each level takes computed as Envoy does for Istio's waypoints ([`level_loads`]): a
//! level whose endpoints are all available takes everything; as its endpoints are ejected,
//! traffic spills to the next level gradually (a level keeps 1.4 × the share of its endpoints that
//! are available), not all at once when the last one goes. The policy then picks among the chosen
//! level's available endpoints.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rand::Rng;
use tokio::time::Instant;
use ztunnel::state::{Endpoint, LoadBalancing, LoadBalancingMode, Service, State as MeshState, Workload};

use crate::state::{BackendPolicy, LoadBalancer};

/// Live statistics of one endpoint (kept across snapshots).
#[derive(Debug, Default)]
pub struct EndpointStats {
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since the balancer's epoch until which the endpoint is ejected.
    ejected_until: AtomicU64,
}

impl EndpointStats {
    /// Requests currently sent to the endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An endpoint picked for one try.
#[derive(Debug)]
pub struct Picked {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its address (`ip:target port`).
    pub addr: SocketAddr,
    /// Its statistics.
    pub stats: Arc<EndpointStats>,
    /// In-flight guard.
    pub guard: InFlight,
}

/// The locality preference of one pick: the service's load balancing and the source (the
/// waypoint's own workload, when the state has it). Borrowed from the snapshot: nothing is
/// cloned per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prefer<'a> {
    /// FAILOVER preferences to rank endpoints by; `None`: every endpoint alike.
    failover: Option<&'a LoadBalancing>,
    src: Option<&'a Workload>,
}

impl<'a> Prefer<'a> {
    /// No preference (an endpoint addressed directly, a service without FAILOVER).
    pub fn none() -> Prefer<'a> {
        Prefer::default()
    }

    /// The preference of `svc` for connections from `src`. Only FAILOVER ranks here: STRICT is
    /// already applied to the endpoint list ([`MeshState::endpoints_for`]), and PASSTHROUGH (connect to the
    /// address dialled) has nothing to mean for a waypoint, which always reaches an endpoint
    /// over HBONE: it balances over all of them, like STANDARD.
    pub fn of(svc: &'a Service, src: Option<&'a Workload>) -> Prefer<'a> {
        let lb = &svc.load_balancing;
        let failover = (lb.mode == LoadBalancingMode::Failover && lb.ranked()).then_some(lb);
        Prefer { failover, src }
    }

    /// The priority of `ep`: higher is closer (0 for all without FAILOVER or without a source).
    fn rank(&self, ep: &Workload) -> usize {
        self.failover.map_or(0, |lb| lb.rank(self.src, ep))
    }
}

/// Why `svc` has no endpoint for `port` from `src` (only asked once none was found): a metric
/// label and a log line's words.
pub fn no_endpoint_reason(
    mesh: &MeshState,
    src: Option<&Workload>,
    svc: &Service,
    port: u16,
) -> (&'static str, &'static str) {
    if !svc.ports.contains_key(&port) {
        return ("port_not_declared", "the service does not declare the port");
    }
    let lb = &svc.load_balancing;
    if lb.mode == LoadBalancingMode::Strict && lb.ranked() && !mesh.endpoints(svc, port).is_empty() {
        return match src {
            None => ("strict_source_unknown", "STRICT load balancing, and the waypoint's own workload is not known"),
            Some(_) => ("strict_locality", "STRICT load balancing, and no endpoint shares the waypoint's locality"),
        };
    }
    ("no_usable_endpoint", "no endpoint is ready on this network and serves the port")
}

/// Endpoint selection and outlier state shared by all requests.
#[derive(Debug)]
pub struct Balancer {
    epoch: Instant,
    stats: RwLock<HashMap<SocketAddr, Arc<EndpointStats>>>,
    cursors: Mutex<HashMap<String, usize>>,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer { epoch: Instant::now(), stats: RwLock::default(), cursors: Mutex::default() }
    }
}

/// The address of an endpoint: its first IP and target port.
pub fn endpoint_addr(e: &Endpoint) -> Option<SocketAddr> {
    e.workload.addresses.first().map(|ip| SocketAddr::new(*ip, e.port))
}

impl Balancer {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The statistics of `addr`.
    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        if let Some(s) = self.stats.read().unwrap_or_else(PoisonError::into_inner).get(&addr) {
            return s.clone();
        }
        self.stats.write().unwrap_or_else(PoisonError::into_inner).entry(addr).or_default().clone()
    }

    fn ejected(&self, s: &EndpointStats, now: u64) -> bool {
        s.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Picks an endpoint of `service` among `endpoints`, avoiding `avoid` (a previous try)
    /// when there is another choice. With a FAILOVER `prefer`, only the available endpoints of
    /// one rank are considered, the rank chosen by the ranks' loads ([`level_loads`]); when
    /// every endpoint is ejected, all those of the best rank present.
    pub fn pick(
        &self,
        service: &str,
        endpoints: &[Endpoint],
        policy: &BackendPolicy,
        prefer: Prefer<'_>,
        hash_value: Option<&[u8]>,
        avoid: Option<SocketAddr>,
    ) -> Option<Picked> {
        let now = self.now_ms();
        type Entry<'e> = (&'e Endpoint, SocketAddr, Arc<EndpointStats>, usize, bool);
        let all: Vec<Entry<'_>> = endpoints
            .iter()
            .filter_map(|e| {
                let a = endpoint_addr(e)?;
                let stats = self.stats(a);
                let ejected = self.ejected(&stats, now);
                Some((e, a, stats, prefer.rank(&e.workload), ejected))
            })
            .collect();
        // The priority level to use: chosen by the levels' loads, by the hash of the request
        // when there is one (so a key keeps its level as it keeps its endpoint); all ejected,
        // the best level present, its endpoints used again.
        let (rank, take_ejected) = match choose_level(all.iter().map(|x| (x.3, x.4)), hash_value) {
            Some(r) => (r, false),
            None => (all.iter().map(|x| x.3).max()?, true),
        };
        let mut healthy: Vec<&Entry<'_>> = all.iter().filter(|x| x.3 == rank && (take_ejected || !x.4)).collect();
        if healthy.len() > 1
            && let Some(avoid) = avoid
        {
            healthy.retain(|x| x.1 != avoid);
        }
        let n = healthy.len();
        let i = match policy.load_balancer {
            LoadBalancer::LeastRequest if n > 1 => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                if healthy[b].2.in_flight() < healthy[a].2.in_flight() { b } else { a }
            }
            LoadBalancer::LeastRequest => 0,
            LoadBalancer::RoundRobin => {
                let mut c = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
                let cur = c.entry(service.to_owned()).or_insert(0);
                *cur = cur.wrapping_add(1);
                *cur % n
            }
            LoadBalancer::Random => rand::rng().random_range(0..n),
            LoadBalancer::ConsistentHash => match hash_value {
                Some(v) => (0..n)
                    .max_by_key(|&i| {
                        let mut h = std::hash::DefaultHasher::new();
                        v.hash(&mut h);
                        healthy[i].1.hash(&mut h);
                        h.finish()
                    })
                    .unwrap_or(0),
                None => rand::rng().random_range(0..n),
            },
        };
        let (e, addr, stats, ..) = healthy[i];
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Picked { endpoint: (*e).clone(), addr: *addr, stats: stats.clone(), guard: InFlight(stats.clone()) })
    }

    /// Records the outcome of a try: `failed` for a 5xx or connect failure. `endpoints` is
    /// the service's endpoint list (to never eject the last one).
    pub fn outcome(&self, picked: &Picked, failed: bool, policy: &BackendPolicy, endpoints: &[Endpoint]) {
        let s = &picked.stats;
        if !failed {
            s.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.consecutive_errors {
            return;
        }
        let now = self.now_ms();
        let others_available = endpoints
            .iter()
            .filter_map(endpoint_addr)
            .filter(|a| *a != picked.addr)
            .any(|a| !self.ejected(&self.stats(a), now));
        if !others_available {
            return;
        }
        let times = s.ejections.fetch_add(1, Ordering::Relaxed).min(10);
        // The ejection time is the control plane's: saturate rather than overflow.
        let base = u64::try_from(policy.ejection.as_millis()).unwrap_or(u64::MAX);
        let millis = base.saturating_mul(1u64 << times);
        s.ejected_until.store(now.saturating_add(millis), Ordering::Relaxed);
        s.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(endpoint = %picked.addr, ejection_ms = millis, failures = n, "endpoint ejected");
    }
}

/// Envoy's overprovisioning factor, as a percentage: a level keeps all of its load while at least
/// 1/1.4 (71%) of its endpoints are available.
const OVERPROVISIONING_PERCENT: u64 = 140;

/// The share of requests (in hundredths, summing to 100) each priority level takes, given each
/// level's endpoints and how many of them are available, best level first. Envoy's priority
/// load: a level's health is its available share × 1.4, at most 100; the best level takes its
/// health, the next takes its own health of what is left, and so on; when the levels' health
/// adds up to less than 100, each level takes its health in proportion instead. `None` when no
/// endpoint is available at all.
pub fn level_loads(levels: &[(usize, usize)]) -> Option<Vec<u64>> {
    let health: Vec<u64> = levels
        .iter()
        .map(
            |&(total, available)| {
                if total == 0 { 0 } else { (OVERPROVISIONING_PERCENT * available as u64 / total as u64).min(100) }
            },
        )
        .collect();
    let sum: u64 = health.iter().sum();
    if sum == 0 {
        // A level can have an available endpoint and still a health of 0 in whole percents (1
        // of 150 available, × 1.4: 0.93%): with no load anywhere, the caller would fall back to
        // ejected endpoints while this one is up. The best such level takes everything instead.
        let first = levels.iter().position(|&(_, available)| available > 0)?;
        return Some((0..levels.len()).map(|i| if i == first { 100 } else { 0 }).collect());
    }
    if sum < 100 {
        // Largest remainder, so the shares add up to exactly 100.
        let mut loads: Vec<u64> = health.iter().map(|h| h * 100 / sum).collect();
        let short = 100 - loads.iter().sum::<u64>();
        if let Some(best) = loads.iter_mut().zip(&health).filter(|(_, h)| **h > 0).map(|(l, _)| l).next() {
            *best += short;
        }
        return Some(loads);
    }
    let mut left = 100;
    Some(
        health
            .iter()
            .map(|&h| {
                let take = h.min(left);
                left -= take;
                take
            })
            .collect(),
    )
}

/// The rank of the priority level a request goes to, given each endpoint's (rank, ejected);
/// `None` when every endpoint is ejected. One level (no FAILOVER, or every endpoint alike) is
/// chosen without counting.
fn choose_level(endpoints: impl Iterator<Item = (usize, bool)> + Clone, hash: Option<&[u8]>) -> Option<usize> {
    let first = endpoints.clone().next()?.0;
    if endpoints.clone().all(|(rank, _)| rank == first) {
        return endpoints.clone().any(|(_, ejected)| !ejected).then_some(first);
    }
    // (rank, total, available), best rank first.
    let mut levels: Vec<(usize, usize, usize)> = Vec::new();
    for (rank, ejected) in endpoints {
        match levels.iter_mut().find(|l| l.0 == rank) {
            Some(l) => {
                l.1 += 1;
                l.2 += usize::from(!ejected);
            }
            None => levels.push((rank, 1, usize::from(!ejected))),
        }
    }
    levels.sort_by_key(|l| std::cmp::Reverse(l.0));
    let loads = level_loads(&levels.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>())?;
    let mut point = match hash {
        Some(v) => {
            let mut h = std::hash::DefaultHasher::new();
            v.hash(&mut h);
            h.finish() % 100
        }
        None => rand::rng().random_range(0..100),
    };
    for (level, load) in levels.iter().zip(loads) {
        if point < load {
            return Some(level.0);
        }
        point -= load;
    }
    levels.iter().find(|l| l.2 > 0).map(|l| l.0)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use ztunnel::state::{Locality, LocalityScope, NetworkAddress, StateConfig, TunnelProtocol, WorkloadType};

    use super::*;
    use crate::state::LoadBalancer;

    const KEY: &str = "shop/api.shop.svc.cluster.local";

    fn workload(name: &str, ip: &str, node: &str, zone: &str) -> Workload {
        Workload {
            uid: name.into(),
            name: name.into(),
            identity: hbone::Identity::new("cluster.local", "shop", name).unwrap(),
            addresses: vec![ip.parse().unwrap()],
            node: node.into(),
            network: String::new(),
            network_mode: ztunnel::state::NetworkMode::Standard,
            protocol: TunnelProtocol::Hbone,
            canonical_name: name.into(),
            canonical_revision: "latest".into(),
            workload_name: name.into(),
            workload_type: WorkloadType::Deployment,
            cluster_id: "Kubernetes".into(),
            waypoint: None,
            services: BTreeMap::from([(KEY.to_owned(), BTreeMap::from([(80, 8080)]))]),
            authorization_policies: Vec::new(),
            healthy: true,
            locality: Locality { region: "r1".into(), zone: zone.into(), subzone: String::new() },
            capacity: 1,
        }
    }

    /// The waypoint itself: not an endpoint of the service.
    fn waypoint(node: &str, zone: &str) -> Workload {
        let mut w = workload("waypoint", "10.0.0.100", node, zone);
        w.services.clear();
        w
    }

    fn service(mode: LoadBalancingMode, prefs: &[LocalityScope]) -> Service {
        Service {
            name: "api".into(),
            namespace: "shop".into(),
            hostname: "api.shop.svc.cluster.local".into(),
            vips: vec![NetworkAddress { network: String::new(), address: "10.96.0.1".parse().unwrap() }],
            ports: BTreeMap::from([(80, 8080)]),
            app_protocols: BTreeMap::new(),
            subject_alt_names: Vec::new(),
            waypoint: None,
            load_balancing: LoadBalancing { mode, routing_preference: prefs.to_vec(), allow_unhealthy: false },
        }
    }

    fn mesh(workloads: Vec<Workload>, svc: &Service) -> MeshState {
        MeshState::new(StateConfig::default(), workloads, vec![svc.clone()], Vec::new()).unwrap()
    }

    fn policy(lb: LoadBalancer) -> BackendPolicy {
        BackendPolicy { load_balancer: lb, consecutive_errors: 1, ..BackendPolicy::default() }
    }

    /// Which endpoints (by name) `n` picks reach.
    fn picks(
        b: &Balancer,
        eps: &[Endpoint],
        p: &BackendPolicy,
        prefer: Prefer<'_>,
        n: usize,
    ) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..n {
            let picked = b.pick("api", eps, p, prefer, None, None).unwrap();
            *seen.entry(picked.endpoint.workload.name.clone()).or_default() += 1;
        }
        seen
    }

    fn eject(b: &Balancer, eps: &[Endpoint], p: &BackendPolicy, name: &str) {
        let e = eps.iter().find(|e| e.workload.name == name).unwrap();
        let addr = endpoint_addr(e).unwrap();
        let stats = b.stats(addr);
        let picked = Picked { endpoint: e.clone(), addr, stats: stats.clone(), guard: InFlight(stats.clone()) };
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        b.outcome(&picked, true, p, eps);
        assert!(b.ejected(&stats, b.now_ms()), "{name} ejected");
    }

    fn names(eps: &[Endpoint]) -> Vec<&str> {
        eps.iter().map(|e| e.workload.name.as_str()).collect()
    }

    #[test]
    fn failover_uses_the_best_rank_with_an_endpoint_not_ejected() {
        let svc = service(LoadBalancingMode::Failover, &[LocalityScope::Region, LocalityScope::Zone]);
        let here = waypoint("node-a", "z1");
        let mut far = workload("far", "10.0.0.4", "node-d", "z9");
        far.locality.region = "r2".into();
        let m = mesh(
            vec![
                workload("near-1", "10.0.0.1", "node-a", "z1"),
                workload("near-2", "10.0.0.2", "node-b", "z1"),
                workload("region", "10.0.0.3", "node-c", "z2"),
                far,
                here.clone(),
            ],
            &svc,
        );
        let src = Some(&here);
        let eps = m.endpoints_for(src, &svc, 80);
        assert_eq!(names(&eps), ["far", "near-1", "near-2", "region"], "FAILOVER filters nothing out");
        let prefer = Prefer::of(&svc, src);
        for lb in [LoadBalancer::LeastRequest, LoadBalancer::RoundRobin, LoadBalancer::Random] {
            let b = Balancer::default();
            let p = policy(lb);
            let seen = picks(&b, &eps, &p, prefer, 40);
            assert_eq!(seen.keys().len(), 2, "{lb:?}: {seen:?}");
            assert!(seen.contains_key("near-1") && seen.contains_key("near-2"), "{lb:?}: {seen:?}");

            // Half the zone ejected: the zone keeps 1.4 × 50% = 70% of the requests, 30% spill
            // to the region (Envoy's overprovisioning, as in Istio's waypoints), none further.
            eject(&b, &eps, &p, "near-1");
            let seen = picks(&b, &eps, &p, prefer, 2000);
            let (zone, region) = (seen.get("near-2").copied().unwrap_or(0), seen.get("region").copied().unwrap_or(0));
            assert_eq!(zone + region, 2000, "{lb:?}: {seen:?}");
            assert!((1250..=1550).contains(&zone) && (450..=750).contains(&region), "{lb:?}: {seen:?}");
            // The whole zone ejected: the region's, then the farthest.
            eject(&b, &eps, &p, "near-2");
            assert_eq!(picks(&b, &eps, &p, prefer, 10), HashMap::from([("region".into(), 10)]), "{lb:?}");
            eject(&b, &eps, &p, "region");
            assert_eq!(picks(&b, &eps, &p, prefer, 10), HashMap::from([("far".into(), 10)]), "{lb:?}");
        }

        // Every endpoint ejected (as after a restart of all): the best rank is used again, not
        // the whole list.
        let b = Balancer::default();
        for e in &eps {
            b.stats(endpoint_addr(e).unwrap()).ejected_until.store(u64::MAX, Ordering::Relaxed);
        }
        let seen = picks(&b, &eps, &policy(LoadBalancer::RoundRobin), prefer, 10);
        assert_eq!(seen, HashMap::from([("near-1".into(), 5), ("near-2".into(), 5)]));

        // Without its own workload the waypoint prefers nothing: every locality alike.
        let eps = m.endpoints_for(None, &svc, 80);
        let seen = picks(&Balancer::default(), &eps, &policy(LoadBalancer::RoundRobin), Prefer::of(&svc, None), 40);
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn level_loads_spill_as_envoys_priority_load() {
        // (endpoints, available) per level, best first.
        assert_eq!(level_loads(&[(2, 2), (1, 1)]), Some(vec![100, 0]), "a whole level takes everything");
        assert_eq!(level_loads(&[(2, 1), (1, 1)]), Some(vec![70, 30]), "half a level: 1.4 × 50%");
        assert_eq!(level_loads(&[(3, 2), (2, 1), (1, 1)]), Some(vec![93, 7, 0]), "the spill stops where it is taken");
        assert_eq!(level_loads(&[(4, 3), (1, 1)]), Some(vec![100, 0]), "75% available × 1.4 is over 100%");
        assert_eq!(level_loads(&[(2, 0), (1, 1), (1, 1)]), Some(vec![0, 100, 0]), "an empty level takes nothing");
        // Below 100% together: each in proportion to its health, adding up to 100.
        assert_eq!(level_loads(&[(2, 1), (5, 0)]), Some(vec![100, 0]));
        assert_eq!(level_loads(&[(4, 1), (4, 1)]), Some(vec![50, 50]));
        assert_eq!(level_loads(&[(3, 1), (7, 1)]), Some(vec![70, 30]), "46 and 20 of 66, in whole percents");
        assert_eq!(level_loads(&[(2, 0), (1, 0)]), None);
    }

    #[test]
    fn a_level_whose_health_rounds_to_zero_still_takes_the_load_over_ejected_endpoints() {
        // 1 of 150 available: 140 × 1 / 150 is 0 in whole percents, yet an endpoint is there.
        assert_eq!(level_loads(&[(150, 1), (2, 0)]), Some(vec![100, 0]));
        assert_eq!(level_loads(&[(2, 0), (150, 1), (300, 2)]), Some(vec![0, 100, 0]), "the best one available");
        // Through choose_level: the zone's one available endpoint, never the ejected ones.
        let zone = std::iter::once((1, false)).chain(std::iter::repeat_n((1, true), 149));
        let endpoints: Vec<(usize, bool)> = zone.chain([(0, true), (0, true)]).collect();
        for hash in [None, Some(&b"user-1"[..])] {
            assert_eq!(choose_level(endpoints.iter().copied(), hash), Some(1), "{hash:?}");
        }
    }

    #[test]
    fn failover_keeps_consistent_hashing_within_the_best_rank() {
        let svc = service(LoadBalancingMode::Failover, &[LocalityScope::Zone]);
        let here = waypoint("node-a", "z1");
        let m = mesh(
            vec![
                workload("near-1", "10.0.0.1", "node-a", "z1"),
                workload("near-2", "10.0.0.2", "node-b", "z1"),
                workload("far", "10.0.0.3", "node-c", "z2"),
            ],
            &svc,
        );
        let eps = m.endpoints_for(Some(&here), &svc, 80);
        let p = BackendPolicy {
            load_balancer: LoadBalancer::ConsistentHash,
            hash_header: Some(http::HeaderName::from_static("x-user")),
            ..BackendPolicy::default()
        };
        let b = Balancer::default();
        for user in 0..50 {
            let key = format!("user-{user}");
            let one = b.pick("api", &eps, &p, Prefer::of(&svc, Some(&here)), Some(key.as_bytes()), None).unwrap();
            let two = b.pick("api", &eps, &p, Prefer::of(&svc, Some(&here)), Some(key.as_bytes()), None).unwrap();
            assert_eq!(one.addr, two.addr, "{key} sticks");
            assert_ne!(one.endpoint.workload.name, "far", "{key}");
        }
    }

    #[test]
    fn strict_admits_only_what_shares_every_scope_and_says_why_not() {
        let svc = service(LoadBalancingMode::Strict, &[LocalityScope::Node]);
        let here = waypoint("node-a", "z1");
        let m = mesh(
            vec![workload("local", "10.0.0.1", "node-a", "z1"), workload("other", "10.0.0.2", "node-b", "z1")],
            &svc,
        );
        let eps = m.endpoints_for(Some(&here), &svc, 80);
        assert_eq!(names(&eps), ["local"]);
        let seen = picks(&Balancer::default(), &eps, &policy(LoadBalancer::Random), Prefer::of(&svc, Some(&here)), 20);
        assert_eq!(seen, HashMap::from([("local".into(), 20)]));

        let elsewhere = waypoint("node-z", "z1");
        assert!(m.endpoints_for(Some(&elsewhere), &svc, 80).is_empty());
        assert_eq!(no_endpoint_reason(&m, Some(&elsewhere), &svc, 80).0, "strict_locality");
        assert!(m.endpoints_for(None, &svc, 80).is_empty(), "the waypoint's own workload unknown: fail closed");
        assert_eq!(no_endpoint_reason(&m, None, &svc, 80).0, "strict_source_unknown");
        assert!(m.endpoints_for(Some(&here), &svc, 81).is_empty());
        assert_eq!(no_endpoint_reason(&m, Some(&here), &svc, 81).0, "port_not_declared");
    }

    #[test]
    fn other_networks_unready_endpoints_and_modes_without_preference() {
        let mut remote = workload("remote", "10.0.0.3", "node-a", "z1");
        remote.network = "west".into();
        let mut sick = workload("sick", "10.0.0.2", "node-a", "z1");
        sick.healthy = false;
        let all =
            vec![workload("b", "10.0.0.1", "node-b", "z2"), workload("c", "10.0.0.4", "node-a", "z1"), sick, remote];
        let here = waypoint("node-a", "z1");
        // STANDARD ignores preferences; PASSTHROUGH (dial the address the client dialled) cannot
        // mean anything to a waypoint, which balances over the endpoints as for STANDARD.
        for mode in [LoadBalancingMode::Standard, LoadBalancingMode::Passthrough] {
            let mut svc = service(mode, &[LocalityScope::Node]);
            let m = mesh(all.clone(), &svc);
            let eps = m.endpoints_for(Some(&here), &svc, 80);
            assert_eq!(names(&eps), ["b", "c"], "{mode:?}: never another network, never unready");
            let seen =
                picks(&Balancer::default(), &eps, &policy(LoadBalancer::RoundRobin), Prefer::of(&svc, Some(&here)), 10);
            assert_eq!(seen, HashMap::from([("b".into(), 5), ("c".into(), 5)]), "{mode:?}");
            svc.load_balancing.allow_unhealthy = true;
            let m = mesh(all.clone(), &svc);
            assert_eq!(names(&m.endpoints_for(Some(&here), &svc, 80)), ["b", "c", "sick"], "{mode:?}: ALLOW_ALL");
        }
        let svc = service(LoadBalancingMode::Standard, &[]);
        let m = mesh(all[2..].to_vec(), &svc);
        assert!(m.endpoints_for(Some(&here), &svc, 80).is_empty());
        assert_eq!(no_endpoint_reason(&m, Some(&here), &svc, 80).0, "no_usable_endpoint");
    }

    /// The ejection time comes from the control plane: however long it is, and however often
    /// an endpoint is ejected (the time doubles each time), the arithmetic saturates (the
    /// endpoint stays out) instead of overflowing on the request's path.
    #[test]
    fn a_very_long_ejection_saturates() {
        let svc = service(LoadBalancingMode::Standard, &[]);
        let m = mesh(vec![workload("a", "10.0.0.1", "n", "z"), workload("b", "10.0.0.2", "n", "z")], &svc);
        let eps = m.endpoints_for(None, &svc, 80);
        for ejection in [std::time::Duration::MAX, std::time::Duration::from_secs(1 << 50)] {
            let b = Balancer::default();
            let p = BackendPolicy { ejection, ..policy(LoadBalancer::RoundRobin) };
            for _ in 0..12 {
                eject(&b, &eps, &p, "a");
            }
            assert_eq!(picks(&b, &eps, &p, Prefer::none(), 4), HashMap::from([("b".into(), 4)]), "{ejection:?}");
        }
    }
}
