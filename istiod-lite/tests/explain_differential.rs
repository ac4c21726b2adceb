//! `meshctl explain` against enforcement, on a few thousand seeded cases.
//!
//! Each scenario is a fixed mesh (two ambient namespaces, one behind a waypoint for workloads,
//! one namespace outside the mesh, a service) plus a random set of `AuthorizationPolicy` and
//! `PeerAuthentication` objects: ALLOW/DENY/AUDIT/CUSTOM, root-namespace, namespace-wide and
//! selector policies, dry-run ones, every L4 source field and the L7 fields ztunnel cannot
//! check, port-level mTLS. For every connection (each source pod, each destination pod on two
//! ports, and the service), three verdicts must agree:
//!
//! - explain's;
//! - enforcement's: the translated resources converted as ztunnel's xDS client converts them,
//!   routed by ztunnel's router, then admitted as the destination's ztunnel admits (waypoint
//!   gate, then `State::authorize`), following `proxy/inbound.rs` and `inbound_plain.rs`;
//! - Istio's documented semantics, computed here from the objects themselves (with the
//!   deviations istiod-lite documents: CUSTOM is enforced as a DENY of its rules, a workload
//!   behind a waypoint admits only that waypoint, `remoteIpBlocks` are not checked).
//!
//! Policies with `targetRefs` go to the waypoint of namespace w. Explain does not evaluate
//! them (they may decide on the request) but must name exactly those the waypoint applies;
//! the waypoint's own evaluation (its compilation of the translated `L7Policy`, as opaque TCP
//! and for two requests) must agree with Istio's semantics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use istiod_lite::explain::explain;
use istiod_lite::source::parse_file;
use istiod_lite::{MeshConfig, Translator};
use ztunnel::proxy::route::{Route, route};
use ztunnel::state::convert::{self, Address};
use ztunnel::state::{ConnInfo, State, StateConfig, TunnelProtocol, Workload};

const ROOT: &str = "istio-system";

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// A pod of the fixed mesh.
struct Pod {
    ns: &'static str,
    name: &'static str,
    app: &'static str,
    sa: &'static str,
    ip: &'static str,
}

const PODS: [Pod; 7] = [
    Pod { ns: "a", name: "x-0", app: "x", sa: "sx", ip: "10.1.0.1" },
    Pod { ns: "a", name: "y-0", app: "y", sa: "sy", ip: "10.1.0.2" },
    Pod { ns: "b", name: "x-0", app: "x", sa: "sx", ip: "10.2.0.1" },
    Pod { ns: "b", name: "y-0", app: "y", sa: "default", ip: "10.2.0.2" },
    Pod { ns: "w", name: "x-0", app: "x", sa: "sx", ip: "10.3.0.1" },
    Pod { ns: "out", name: "z-0", app: "x", sa: "default", ip: "10.9.0.1" },
    Pod { ns: "w", name: "waypoint-0", app: "waypoint", sa: "waypoint", ip: "10.3.0.9" },
];
const WAYPOINT: usize = 6;
const SERVICE: &str = "a/svc";
const WSERVICE: &str = "w/wsvc";
const SERVICE_PORT: u16 = 80;
const SERVICE_TARGET: u16 = 8080;

fn in_mesh(p: &Pod) -> bool {
    matches!(p.ns, "a" | "b" | "w")
}

fn mesh_yaml() -> String {
    let mut y = String::new();
    for (ns, labels) in [
        (ROOT, ""),
        ("a", "{istio.io/dataplane-mode: ambient}"),
        ("b", "{istio.io/dataplane-mode: ambient}"),
        ("w", "{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}"),
        ("out", ""),
    ] {
        let labels = if labels.is_empty() { String::new() } else { format!("\n  labels: {labels}") };
        writeln!(y, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}{labels}").unwrap();
    }
    y.push_str(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: w\n  \
         labels: {istio.io/waypoint-for: all}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {name: mesh, \
         port: 15008, protocol: HBONE}\n",
    );
    for (i, p) in PODS.iter().enumerate() {
        let labels = if i == WAYPOINT {
            "{istio.io/dataplane-mode: none, gateway.networking.k8s.io/gateway-name: waypoint}".to_owned()
        } else {
            format!("{{app: {}}}", p.app)
        };
        writeln!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels: {labels}\nspec:\n  \
             nodeName: node-a\n  serviceAccountName: {}\n  containers:\n  - {{name: c, image: c}}\nstatus:\n  \
             podIP: {}\n  conditions:\n  - {{type: Ready, status: \"True\"}}",
            p.name, p.ns, p.sa, p.ip
        )
        .unwrap();
    }
    // a/local: node-local endpoints only (STRICT load balancing), a/y-0 on every source's node.
    // w/direct: a service of w that opts out of the waypoint; its pod still has it.
    for (ns, name, vip, app, extra) in [
        ("a", "svc", "10.96.0.1", "x", ""),
        ("w", "wsvc", "10.96.0.2", "x", ""),
        ("a", "local", "10.96.0.3", "y", "\n  internalTrafficPolicy: Local"),
        ("w", "direct", "10.96.0.4", "x", ""),
    ] {
        let labels = if name == "direct" { "\n  labels: {istio.io/use-waypoint: none}" } else { "" };
        writeln!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}{labels}\nspec:\n  clusterIP: \
             {vip}{extra}\n  selector: {{app: {app}}}\n  ports:\n  - {{name: tcp, port: {SERVICE_PORT}, targetPort: \
             {SERVICE_TARGET}}}"
        )
        .unwrap();
    }
    y
}

// ---- Generated policies, kept as data for the oracle and rendered as YAML. ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Default)]
struct Source {
    principals: Vec<&'static str>,
    not_principals: Vec<&'static str>,
    namespaces: Vec<&'static str>,
    not_namespaces: Vec<&'static str>,
    ip_blocks: Vec<&'static str>,
    not_ip_blocks: Vec<&'static str>,
    remote_ip_blocks: Vec<&'static str>,
    not_remote_ip_blocks: Vec<&'static str>,
    service_accounts: Vec<&'static str>,
    not_service_accounts: Vec<&'static str>,
}

#[derive(Debug, Default)]
struct Operation {
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Vec<&'static str>,
    paths: Vec<&'static str>,
    hosts: Vec<&'static str>,
    not_methods: Vec<&'static str>,
    not_paths: Vec<&'static str>,
    not_hosts: Vec<&'static str>,
}

#[derive(Debug)]
struct When {
    key: &'static str,
    values: Vec<&'static str>,
    not: bool,
}

#[derive(Debug, Default)]
struct ARule {
    from: Option<Vec<Source>>,
    to: Option<Vec<Operation>>,
    when: Vec<When>,
}

/// What a waypoint policy targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Waypoint,
    WService,
}

#[derive(Debug)]
struct Authz {
    name: String,
    ns: &'static str,
    /// `targetRefs`: enforced by the waypoint, not ztunnel.
    target: Option<Target>,
    selector: Option<&'static str>,
    action: Act,
    dry_run: bool,
    rules: Option<Vec<ARule>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unset,
    Strict,
    Permissive,
    Disable,
}

#[derive(Debug)]
struct PeerAuthn {
    name: String,
    ns: &'static str,
    selector: Option<&'static str>,
    mode: Option<Mode>,
    ports: Vec<(u16, Mode)>,
}

const PRINCIPALS: [&str; 6] = [
    "cluster.local/ns/a/sa/sx",
    "cluster.local/ns/b/sa/default",
    "cluster.local/ns/w/sa/waypoint",
    "*",
    "cluster.local/ns/b/*",
    "*/sa/sx",
];
const NAMESPACES: [&str; 5] = ["a", "b", "w", "*", "out"];
const BLOCKS: [&str; 6] = ["10.1.0.0/16", "10.1.0.1", "10.2.0.2/32", "10.3.0.9", "10.9.0.0/16", "10.0.0.0/8"];
const PORTS: [u16; 3] = [8080, 9090, 7000];
/// `name` is in the policy's namespace.
const ACCOUNTS: [&str; 4] = ["sx", "b/default", "a/sy", "w/waypoint"];

fn some<T: Copy>(r: &mut Rng, pool: &[T]) -> Vec<T> {
    let mut v = vec![*r.pick(pool)];
    if r.chance(1, 4) {
        v.push(*r.pick(pool));
    }
    v
}

fn gen_source(r: &mut Rng) -> Source {
    let mut s = Source::default();
    for _ in 0..1 + r.below(2) {
        match r.below(11) {
            0 | 1 => s.principals = some(r, &PRINCIPALS),
            2 => s.not_principals = some(r, &PRINCIPALS),
            3 => s.namespaces = some(r, &NAMESPACES),
            4 => s.not_namespaces = some(r, &NAMESPACES),
            5 => s.ip_blocks = some(r, &BLOCKS),
            6 => s.not_ip_blocks = some(r, &BLOCKS),
            7 => s.remote_ip_blocks = some(r, &BLOCKS),
            8 => s.not_remote_ip_blocks = some(r, &BLOCKS),
            9 => s.service_accounts = some(r, &ACCOUNTS),
            _ => s.not_service_accounts = some(r, &ACCOUNTS),
        }
    }
    s
}

fn gen_operation(r: &mut Rng) -> Operation {
    let mut o = Operation::default();
    for _ in 0..1 + r.below(2) {
        match r.below(9) {
            0 | 1 => o.ports = some(r, &PORTS),
            2 => o.not_ports = some(r, &PORTS),
            3 => o.methods = vec!["GET"],
            4 => o.paths = vec!["/admin/*"],
            5 => o.hosts = vec!["h.example"],
            6 => o.not_methods = vec!["POST"],
            7 => o.not_paths = vec!["/public/*"],
            _ => o.not_hosts = vec!["*.internal"],
        }
    }
    o
}

fn gen_when(r: &mut Rng) -> When {
    let (key, values): (&str, Vec<&str>) = match r.below(6) {
        0 => ("request.headers[x-user]", vec!["u"]),
        5 => ("destination.ip", vec![*r.pick(&["10.1.0.0/16", "10.2.0.1", "10.96.0.1", "10.96.0.2", "10.3.0.1"])]),
        1 => ("source.ip", some(r, &BLOCKS)),
        2 => ("destination.port", vec![*r.pick(&["8080", "9090"])]),
        3 => ("source.namespace", some(r, &NAMESPACES)),
        _ => ("source.principal", some(r, &PRINCIPALS)),
    };
    When { key, values, not: r.chance(1, 3) }
}

fn gen_rule(r: &mut Rng) -> ARule {
    let mut rule = ARule::default();
    if r.chance(1, 2) {
        rule.from = Some((0..1 + r.below(2)).map(|_| gen_source(r)).collect());
    }
    if r.chance(1, 2) {
        rule.to = Some((0..1 + r.below(2)).map(|_| gen_operation(r)).collect());
    }
    if r.chance(1, 3) {
        rule.when.push(gen_when(r));
    }
    rule
}

const POLICY_NS: [&str; 4] = [ROOT, "a", "b", "w"];

fn gen_authz(r: &mut Rng, i: usize) -> Authz {
    let action = match r.below(20) {
        0..8 => Act::Allow,
        8..15 => Act::Deny,
        15..17 => Act::Audit,
        _ => Act::Custom,
    };
    let rules = match r.below(10) {
        0 => None,
        n => Some((0..1 + n % 2).map(|_| gen_rule(r)).collect()),
    };
    if r.chance(1, 4) {
        // For the waypoint of namespace w (CUSTOM is refused there).
        let action = if action == Act::Custom { Act::Deny } else { action };
        let target = Some(*r.pick(&[Target::Waypoint, Target::WService]));
        let dry_run = r.chance(1, 8);
        return Authz { name: format!("ap{i}"), ns: "w", target, selector: None, action, dry_run, rules };
    }
    Authz {
        name: format!("ap{i}"),
        ns: POLICY_NS[r.below(POLICY_NS.len())],
        target: None,
        selector: r.chance(1, 2).then(|| *r.pick(&["x", "y"])),
        action,
        dry_run: r.chance(1, 6),
        rules,
    }
}

fn gen_mode(r: &mut Rng) -> Mode {
    *r.pick(&[Mode::Unset, Mode::Strict, Mode::Strict, Mode::Permissive, Mode::Disable])
}

fn gen_peer_authn(r: &mut Rng, i: usize) -> PeerAuthn {
    let ns = *r.pick(&POLICY_NS);
    // Selector policies in the root namespace are left out: their reach is not what this
    // test is about (istiod-lite applies them to no workload, like a namespace's own).
    let selector = (ns != ROOT && r.chance(1, 2)).then(|| *r.pick(&["x", "y"]));
    let mode = r.chance(4, 5).then(|| gen_mode(r));
    let ports =
        if selector.is_some() && r.chance(1, 2) { vec![(*r.pick(&[8080u16, 9090]), gen_mode(r))] } else { vec![] };
    PeerAuthn { name: format!("pa{i}"), ns, selector, mode, ports }
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("\"{x}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn render_authz(p: &Authz) -> String {
    let mut y = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {}\n  namespace: {}\n",
        p.name, p.ns
    );
    if p.dry_run {
        y.push_str("  annotations: {istio.io/dry-run: \"true\"}\n");
    }
    y.push_str("spec:\n");
    if let Some(app) = p.selector {
        writeln!(y, "  selector: {{matchLabels: {{app: {app}}}}}").unwrap();
    }
    match p.target {
        Some(Target::Waypoint) => {
            y.push_str("  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]\n")
        }
        Some(Target::WService) => y.push_str("  targetRefs: [{group: \"\", kind: Service, name: wsvc}]\n"),
        None => {}
    }
    let action = match p.action {
        Act::Allow => "ALLOW",
        Act::Deny => "DENY",
        Act::Audit => "AUDIT",
        Act::Custom => "CUSTOM\n  provider: {name: ext-authz}",
    };
    writeln!(y, "  action: {action}").unwrap();
    let Some(rules) = &p.rules else { return y };
    y.push_str("  rules:\n");
    if rules.is_empty() {
        y.push_str("  []\n");
    }
    for rule in rules {
        y.push_str("  - {}\n");
        let mut body = String::new();
        if let Some(from) = &rule.from {
            body.push_str("    from:\n");
            for s in from {
                let mut f = Vec::new();
                for (k, v) in [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                    ("serviceAccounts", &s.service_accounts),
                    ("notServiceAccounts", &s.not_service_accounts),
                ] {
                    if !v.is_empty() {
                        f.push(format!("{k}: {}", list(v)));
                    }
                }
                writeln!(body, "    - source: {{{}}}", f.join(", ")).unwrap();
            }
        }
        if let Some(to) = &rule.to {
            body.push_str("    to:\n");
            for o in to {
                let mut f = Vec::new();
                for (k, v) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                    if !v.is_empty() {
                        f.push(format!("{k}: {}", list(v)));
                    }
                }
                for (k, v) in [
                    ("methods", &o.methods),
                    ("paths", &o.paths),
                    ("hosts", &o.hosts),
                    ("notMethods", &o.not_methods),
                    ("notPaths", &o.not_paths),
                    ("notHosts", &o.not_hosts),
                ] {
                    if !v.is_empty() {
                        f.push(format!("{k}: {}", list(v)));
                    }
                }
                writeln!(body, "    - operation: {{{}}}", f.join(", ")).unwrap();
            }
        }
        if !rule.when.is_empty() {
            body.push_str("    when:\n");
            for w in &rule.when {
                let field = if w.not { "notValues" } else { "values" };
                writeln!(body, "    - {{key: \"{}\", {field}: {}}}", w.key, list(&w.values)).unwrap();
            }
        }
        if !body.is_empty() {
            // Replace the `{}` placeholder with the rule's fields.
            y.truncate(y.len() - "{}\n".len());
            y.push_str(body.trim_start());
        }
    }
    y
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Unset => "UNSET",
        Mode::Strict => "STRICT",
        Mode::Permissive => "PERMISSIVE",
        Mode::Disable => "DISABLE",
    }
}

fn render_peer_authn(p: &PeerAuthn) -> String {
    let mut y = format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n",
        p.name, p.ns
    );
    if let Some(app) = p.selector {
        writeln!(y, "  selector: {{matchLabels: {{app: {app}}}}}").unwrap();
    }
    if let Some(m) = p.mode {
        writeln!(y, "  mtls: {{mode: {}}}", mode_name(m)).unwrap();
    }
    if !p.ports.is_empty() {
        y.push_str("  portLevelMtls:\n");
        for (port, m) in &p.ports {
            writeln!(y, "    {port}: {{mode: {}}}", mode_name(*m)).unwrap();
        }
    }
    y
}

// ---- Istio's semantics, from the objects. ----

/// What the destination's ztunnel knows of the peer.
struct Peer<'a> {
    /// `(namespace, service account)` of an mTLS peer.
    id: Option<(&'a str, &'a str)>,
    ip: IpAddr,
}

fn wild(pattern: &str, v: &str) -> bool {
    if pattern == "*" {
        !v.is_empty()
    } else if let Some(s) = pattern.strip_prefix('*') {
        v.ends_with(s)
    } else if let Some(p) = pattern.strip_suffix('*') {
        v.starts_with(p)
    } else {
        v == pattern
    }
}

fn in_block(block: &str, ip: IpAddr) -> bool {
    let (net, len) = block.split_once('/').unwrap_or((block, "32"));
    let (IpAddr::V4(net), IpAddr::V4(ip)) = (net.parse::<IpAddr>().unwrap(), ip) else { return false };
    let len: u32 = len.parse().unwrap();
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Positive list: empty holds; else the value must exist and match one.
fn any(list: &[&str], v: Option<&str>, f: fn(&str, &str) -> bool) -> bool {
    list.is_empty() || v.is_some_and(|v| list.iter().any(|p| f(p, v)))
}

/// Negative list: no value matches (a missing value matches nothing).
fn none(list: &[&str], v: Option<&str>, f: fn(&str, &str) -> bool) -> bool {
    !v.is_some_and(|v| list.iter().any(|p| f(p, v)))
}

fn ip_any(list: &[&str], ip: IpAddr) -> bool {
    list.is_empty() || list.iter().any(|b| in_block(b, ip))
}

fn rule_uses_l7(rule: &ARule) -> bool {
    let from =
        rule.from.iter().flatten().any(|s| !(s.remote_ip_blocks.is_empty() && s.not_remote_ip_blocks.is_empty()));
    let to = rule.to.iter().flatten().any(|o| {
        let l7 = [&o.methods, &o.paths, &o.hosts, &o.not_methods, &o.not_paths, &o.not_hosts];
        l7.iter().any(|v| !v.is_empty())
    });
    from || to || rule.when.iter().any(|w| w.key.starts_with("request."))
}

/// Whether the L4 part of `rule` matches; L7 parts hold (ztunnel's reading in a DENY).
/// An HTTP request on the connection.
#[derive(Debug)]
struct Req {
    host: &'static str,
    method: &'static str,
    path: &'static str,
    /// The `x-user` header.
    user: Option<&'static str>,
}

/// Two requests: one that every positive L7 value of the generator matches, one that every
/// negated one does.
const REQUESTS: [Req; 2] = [
    Req { host: "h.example", method: "GET", path: "/admin/x", user: Some("u") },
    Req { host: "api.internal", method: "POST", path: "/public/a", user: None },
];

/// What the evaluator knows of the HTTP layer.
#[derive(Clone, Copy)]
enum L7<'a> {
    /// ztunnel: nothing; the caller has already left out ALLOW rules using L7 fields, and in
    /// a DENY they hold.
    Ztunnel,
    /// A waypoint on opaque TCP: an L7 field never matches in an ALLOW and always in a DENY.
    Tcp(Act),
    /// A waypoint with a request.
    Request(&'a Req),
}

impl L7<'_> {
    /// The value of an L7 field: `field` on the request, or what it counts as without one.
    fn field(self, field: impl Fn(&Req) -> bool) -> bool {
        match self {
            L7::Ztunnel => true,
            L7::Tcp(action) => action != Act::Allow,
            L7::Request(r) => field(r),
        }
    }
}

fn operation_l7(o: &Operation, l7: L7<'_>) -> bool {
    let l7_fields = [&o.methods, &o.paths, &o.hosts, &o.not_methods, &o.not_paths, &o.not_hosts];
    if l7_fields.iter().all(|v| v.is_empty()) {
        return true;
    }
    l7.field(|r| {
        let host = |h: &&str| wild(&h.to_ascii_lowercase(), &r.host.to_ascii_lowercase());
        (o.hosts.is_empty() || o.hosts.iter().any(host))
            && !o.not_hosts.iter().any(host)
            && (o.methods.is_empty() || o.methods.iter().any(|m| wild(m, r.method)))
            && !o.not_methods.iter().any(|m| wild(m, r.method))
            && (o.paths.is_empty() || o.paths.iter().any(|p| wild(p, r.path)))
            && !o.not_paths.iter().any(|p| wild(p, r.path))
    })
}

fn rule_matches(policy_ns: &str, rule: &ARule, peer: &Peer<'_>, dst_ip: IpAddr, port: u16, l7: L7<'_>) -> bool {
    let principal = peer.id.map(|(ns, sa)| format!("cluster.local/ns/{ns}/sa/{sa}"));
    let principal = principal.as_deref();
    let ns = peer.id.map(|(ns, _)| ns);
    let from = rule.from.as_ref().is_none_or(|from| {
        from.iter().any(|s| {
            any(&s.principals, principal, wild)
                && none(&s.not_principals, principal, wild)
                && any(&s.namespaces, ns, wild)
                && none(&s.not_namespaces, ns, wild)
                && ip_any(&s.ip_blocks, peer.ip)
                && !s.not_ip_blocks.iter().any(|b| in_block(b, peer.ip))
                && (s.service_accounts.is_empty() || s.service_accounts.iter().any(|a| account(policy_ns, a, peer)))
                && !s.not_service_accounts.iter().any(|a| account(policy_ns, a, peer))
        })
    });
    let to = rule.to.as_ref().is_none_or(|to| {
        to.iter().any(|o| {
            (o.ports.is_empty() || o.ports.contains(&port)) && !o.not_ports.contains(&port) && operation_l7(o, l7)
        })
    });
    let when = rule.when.iter().all(|w| {
        let port_s = port.to_string();
        let hit = match w.key {
            "source.ip" => w.values.iter().any(|b| in_block(b, peer.ip)),
            "destination.ip" => w.values.iter().any(|b| in_block(b, dst_ip)),
            "destination.port" => w.values.iter().any(|v| wild(v, &port_s)),
            "source.namespace" => ns.is_some_and(|n| w.values.iter().any(|v| wild(v, n))),
            "source.principal" => principal.is_some_and(|p| w.values.iter().any(|v| wild(v, p))),
            "request.headers[x-user]" => {
                return l7.field(|r| r.user.is_some_and(|u| w.values.iter().any(|v| wild(v, u))) != w.not);
            }
            _ => unreachable!("{}", w.key),
        };
        hit != w.not
    });
    from && to && when
}

/// `serviceAccounts` entry `a` (`name` in the policy's namespace, or `namespace/name`) names
/// the peer's identity.
fn account(policy_ns: &str, a: &str, peer: &Peer<'_>) -> bool {
    let (ns, sa) = a.split_once('/').unwrap_or((policy_ns, a));
    peer.id == Some((ns, sa))
}

fn applies(p_ns: &str, selector: Option<&str>, dst: &Pod) -> bool {
    (p_ns == ROOT || p_ns == dst.ns) && selector.is_none_or(|app| app == dst.app)
}

fn effective_mode(pas: &[PeerAuthn], dst: &Pod, port: u16) -> Mode {
    let oldest = |f: &dyn Fn(&PeerAuthn) -> bool| pas.iter().filter(|p| f(p)).min_by(|a, b| a.name.cmp(&b.name));
    let known = |m: Option<Mode>| m.filter(|m| *m != Mode::Unset);
    let workload = oldest(&|p| p.ns == dst.ns && p.selector.is_some_and(|app| app == dst.app));
    let namespace = oldest(&|p| p.ns == dst.ns && p.selector.is_none());
    let mesh = oldest(&|p| p.ns == ROOT && p.selector.is_none());
    let port_mode = workload.and_then(|w| known(w.ports.iter().find(|(p, _)| *p == port).map(|(_, m)| *m)));
    port_mode
        .or_else(|| workload.and_then(|w| known(w.mode)))
        .or_else(|| namespace.and_then(|n| known(n.mode)))
        .or_else(|| mesh.and_then(|m| known(m.mode)))
        .unwrap_or(Mode::Permissive)
}

/// Istio's verdict at the destination's ztunnel.
fn istio_allows(aps: &[Authz], pas: &[PeerAuthn], dst: &Pod, peer: &Peer<'_>, dst_ip: IpAddr, port: u16) -> bool {
    if peer.id.is_none() && effective_mode(pas, dst, port) == Mode::Strict {
        return false;
    }
    let enforced = aps.iter().filter(|p| p.target.is_none() && !p.dry_run && applies(p.ns, p.selector, dst));
    let mut allows = 0;
    let mut allowed = false;
    for p in enforced {
        let rules = p.rules.as_deref().unwrap_or_default();
        match p.action {
            Act::Audit => {}
            Act::Deny | Act::Custom => {
                if rules.iter().any(|r| rule_matches(p.ns, r, peer, dst_ip, port, L7::Ztunnel)) {
                    return false;
                }
            }
            Act::Allow => {
                allows += 1;
                allowed |=
                    rules.iter().any(|r| !rule_uses_l7(r) && rule_matches(p.ns, r, peer, dst_ip, port, L7::Ztunnel));
            }
        }
    }
    allows == 0 || allowed
}

/// Istio's verdict at the waypoint of namespace w, for a connection from `src` (in the mesh)
/// addressed to `dst_ip` (the service's VIP when `to_service`), as TCP or with `req`. As
/// istiod-lite documents: `remoteIpBlocks` cannot be checked there either, so an ALLOW rule
/// using them matches nothing and in a DENY they hold.
fn istio_waypoint(aps: &[Authz], src: &Pod, to_service: bool, dst_ip: IpAddr, port: u16, req: Option<&Req>) -> bool {
    let peer = Peer { id: Some((src.ns, src.sa)), ip: src.ip.parse().unwrap() };
    let applied = aps.iter().filter(|p| {
        !p.dry_run
            && match p.target {
                Some(Target::Waypoint) => true,
                Some(Target::WService) => to_service,
                None => false,
            }
    });
    let uses_remote = |r: &ARule| {
        r.from.iter().flatten().any(|s| !(s.remote_ip_blocks.is_empty() && s.not_remote_ip_blocks.is_empty()))
    };
    let mut allows = 0;
    let mut allowed = false;
    for p in applied {
        let l7 = match req {
            Some(r) => L7::Request(r),
            None => L7::Tcp(p.action),
        };
        let hit = |r: &ARule| rule_matches(p.ns, r, &peer, dst_ip, port, l7);
        let rules = p.rules.as_deref().unwrap_or_default();
        match p.action {
            Act::Audit => {}
            Act::Deny | Act::Custom => {
                if rules.iter().any(hit) {
                    return false;
                }
            }
            Act::Allow => {
                allows += 1;
                allowed |= rules.iter().any(|r| !uses_remote(r) && hit(r));
            }
        }
    }
    allows == 0 || allowed
}

/// Istio's end-to-end verdict (waypoint gate included).
fn istio_verdict(aps: &[Authz], pas: &[PeerAuthn], src: &Pod, dst: &Pod, port: u16) -> bool {
    if !in_mesh(dst) {
        return true;
    }
    let peer = if dst.ns == "w" {
        if !in_mesh(src) {
            return false;
        }
        let w = &PODS[WAYPOINT];
        Peer { id: Some((w.ns, w.sa)), ip: w.ip.parse().unwrap() }
    } else {
        Peer { id: in_mesh(src).then_some((src.ns, src.sa)), ip: src.ip.parse().unwrap() }
    };
    istio_allows(aps, pas, dst, &peer, dst.ip.parse().unwrap(), port)
}

// ---- Enforcement: the proxies' own code on what they would be sent. ----

/// The state ztunnel's xDS client builds from the translator's resources.
fn ztunnel_state(t: &Translator) -> State {
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    for (name, a) in t.addresses() {
        match Address::from_resource(name, a.clone()).unwrap() {
            Address::Workload(w) => workloads.push(w),
            Address::Service(s) => services.push(s),
        }
    }
    let policies = t.authorizations().iter().map(|(n, a)| convert::policy_resource(n, a.clone()).unwrap()).collect();
    let cfg = StateConfig { root_namespace: t.config().root_namespace.clone(), ..StateConfig::default() };
    State::new(cfg, workloads, services, policies).unwrap()
}

/// The destination ztunnel's admission (`proxy/inbound.rs`, `inbound_plain.rs`).
fn admits(state: &State, peer: Option<&hbone::Identity>, src_ip: IpAddr, dst: &Workload, target: SocketAddr) -> bool {
    if let Some(Err(_)) = state.waypoint_gate(dst).map(|g| g.admit(peer)) {
        return false;
    }
    state
        .authorize(&ConnInfo {
            src_identity: peer,
            src_ip,
            dst_workload: dst,
            dst_ip: target.ip(),
            dst_port: target.port(),
        })
        .allowed
}

/// What the waypoint does with a connection it handles: the policies it applies (sorted), and
/// its decision for the connection as opaque TCP and for one HTTP request on it.
#[derive(Debug)]
struct AtWaypoint {
    policies: Vec<String>,
    tcp: bool,
    requests: [bool; 2],
}

/// The waypoint of namespace w (Gateway `w/waypoint`), with the waypoint's own compilation,
/// placement rule (its Gateway, or the service addressed) and evaluation.
fn at_waypoint(t: &Translator, src: &Workload, service: Option<&str>, target: SocketAddr) -> AtWaypoint {
    use proto::mesh::waypoint::v1::target::Kind;
    use waypoint::authz::{Facts, HttpFacts, Policy, evaluate};
    let mut applied: Vec<(String, Policy)> = t
        .l7_policies()
        .values()
        .filter(|p| {
            p.targets.iter().any(|tg| match &tg.kind {
                Some(Kind::Gateway(g)) => g == "w/waypoint",
                Some(Kind::Service(h)) => Some(h.as_str()) == service,
                None => false,
            })
        })
        .map(|p| {
            (format!("{}/{}", p.namespace, p.name), Policy::compile(p).unwrap_or_else(|e| Policy::stand_in(p, &e)))
        })
        .collect();
    applied.sort_by(|a, b| a.0.cmp(&b.0));
    let headers = REQUESTS.map(|r| {
        let mut h = http::HeaderMap::new();
        if let Some(u) = r.user {
            h.insert("x-user", http::HeaderValue::from_static(u));
        }
        h
    });
    let request = |i: usize| HttpFacts {
        host: REQUESTS[i].host,
        method: REQUESTS[i].method,
        path: REQUESTS[i].path,
        headers: &headers[i],
    };
    let facts = |http| Facts {
        principal: Some(ztunnel::state::policy::principal(src.identity())),
        namespace: Some(src.namespace()),
        source_ip: Some(src.addresses[0]),
        destination_ip: Some(target.ip()),
        port: target.port(),
        http,
    };
    let decide = |http| evaluate(applied.iter().map(|(_, p)| p), &facts(http)).allowed;
    AtWaypoint {
        tcp: decide(None),
        requests: [decide(Some(request(0))), decide(Some(request(1)))],
        policies: applied.into_iter().map(|(k, _)| k).collect(),
    }
}

/// Whether the destination's ztunnel admits the connection, and what the waypoint did with it
/// first, if it went through one.
fn enforced(t: &Translator, state: &State, src: &Pod, dialed: SocketAddr) -> (bool, Option<AtWaypoint>) {
    let src_w = state.workloads().find(|w| w.namespace() == src.ns && w.name == src.name).unwrap();
    let src_ip = src_w.addresses[0];
    if src_w.protocol == TunnelProtocol::Hbone {
        match route(state, Some(src_w), dialed, 15008) {
            Route::Hbone { workload, target, .. } => {
                (admits(state, Some(src_w.identity()), src_ip, &workload, target), None)
            }
            // The waypoint (no policy of its own here) forwards to the workload under its
            // own identity.
            Route::Waypoint { waypoint, workload, service, target, .. } => {
                let l7 = at_waypoint(t, src_w, service.as_ref().map(|s| s.hostname.as_str()), target);
                let (dst, target) = match (workload, service) {
                    (Some(w), _) => (w, target),
                    (None, Some(s)) => {
                        let ep = state.pick_endpoint_for(Some(&waypoint), &s, target.port()).unwrap();
                        let ip = ep.workload.addresses[0];
                        (ep.workload, SocketAddr::new(ip, ep.port))
                    }
                    (None, None) => panic!("a waypoint route to nothing"),
                };
                (admits(state, Some(waypoint.identity()), waypoint.addresses[0], &dst, target), Some(l7))
            }
            Route::Passthrough { .. } => (true, None),
            _ => (false, None),
        }
    } else {
        // Not captured at the source: plaintext (a service address translated to an endpoint
        // by the node, as kube-proxy does), captured on arrival if the destination is in the
        // mesh.
        let dialed = match state.service_by_vip(dialed.ip()) {
            Some(s) => {
                // Node-local endpoints for a node-local service, as kube-proxy picks.
                let ep = state.pick_endpoint_for(Some(src_w), s, dialed.port()).unwrap();
                SocketAddr::new(ep.workload.addresses[0], ep.port)
            }
            None => dialed,
        };
        match state.workload_by_ip(dialed.ip()) {
            Some(dst) if dst.protocol == TunnelProtocol::Hbone => (admits(state, None, src_ip, dst, dialed), None),
            _ => (true, None),
        }
    }
}

/// The translator with the objects of `yaml`, which must all be valid.
fn translator(yaml: &str, what: &str) -> Translator {
    let parsed = parse_file(Path::new("scenario.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{what}: {:?}\n{yaml}", parsed.errors);
    // As the file loader does: the waypoint's Service a controller would create.
    let mut objects = parsed.objects;
    objects.extend(istiod_lite::source::waypoint_service::synthesize(&objects));
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(objects.into_iter().map(|l| l.object).collect());
    t
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.ns, p.name)
}

#[test]
fn explain_agrees_with_enforcement_and_istio_semantics() {
    let started = std::time::Instant::now();
    let mesh = mesh_yaml();
    let mut rng = Rng(0x5eed_2026);
    let mut cases = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut outcomes = BTreeMap::<(bool, bool), usize>::new();
    let mut waypoint_outcomes = BTreeMap::<(bool, [bool; 2]), usize>::new();
    for scenario in 0..300 {
        let aps: Vec<Authz> = (0..1 + rng.below(4)).map(|i| gen_authz(&mut rng, i)).collect();
        let pas: Vec<PeerAuthn> = (0..rng.below(3)).map(|i| gen_peer_authn(&mut rng, i)).collect();
        let mut yaml = mesh.clone();
        let mut policies_yaml = String::new();
        for p in &aps {
            policies_yaml.push_str(&render_authz(p));
        }
        for p in &pas {
            policies_yaml.push_str(&render_peer_authn(p));
        }
        yaml.push_str(&policies_yaml);
        let t = translator(&yaml, &format!("scenario {scenario}"));
        let state = ztunnel_state(&t);

        let sources = PODS.iter().filter(|p| p.name != "waypoint-0");
        for src in sources {
            let mut asks: Vec<(String, Option<u16>, SocketAddr, &Pod, u16)> = Vec::new();
            for dst in PODS.iter().filter(|p| p.name != "waypoint-0") {
                for port in [8080, 9090] {
                    let addr = SocketAddr::new(dst.ip.parse().unwrap(), port);
                    asks.push((pod_key(dst), Some(port), addr, dst, port));
                }
            }
            // The service: one endpoint, a/x-0, on the target port.
            let vip = SocketAddr::new("10.96.0.1".parse().unwrap(), SERVICE_PORT);
            asks.push((SERVICE.to_owned(), Some(SERVICE_PORT), vip, &PODS[0], SERVICE_TARGET));
            // The service behind the waypoint: one endpoint, w/x-0.
            let vip = SocketAddr::new("10.96.0.2".parse().unwrap(), SERVICE_PORT);
            asks.push((WSERVICE.to_owned(), Some(SERVICE_PORT), vip, &PODS[4], SERVICE_TARGET));
            // No port asked: the service's (first) port.
            asks.push((WSERVICE.to_owned(), None, vip, &PODS[4], SERVICE_TARGET));
            let vip = SocketAddr::new("10.96.0.4".parse().unwrap(), SERVICE_PORT);
            asks.push(("w/direct".to_owned(), Some(SERVICE_PORT), vip, &PODS[4], SERVICE_TARGET));
            asks.push(("w/direct".to_owned(), None, vip, &PODS[4], SERVICE_TARGET));
            let vip = SocketAddr::new("10.96.0.3".parse().unwrap(), SERVICE_PORT);
            asks.push(("a/local".to_owned(), Some(SERVICE_PORT), vip, &PODS[1], SERVICE_TARGET));
            for (dst_key, port, dialed, dst, dst_port) in asks {
                cases += 1;
                let e = explain(&t, &pod_key(src), &dst_key, port).unwrap();
                let (real, l7) = enforced(&t, &state, src, dialed);
                if let Some(l7) = &l7 {
                    *waypoint_outcomes.entry((l7.tcp, l7.requests)).or_default() += 1;
                    // The waypoint's own verdicts against Istio's semantics.
                    let to_service = dst_key == WSERVICE;
                    // Through a service without a waypoint, the workload's waypoint sees the
                    // connection addressed to the pod.
                    let (wp_ip, wp_port) = match dst_key.as_str() {
                        "w/direct" => (dst.ip.parse().unwrap(), dst_port),
                        _ => (dialed.ip(), dialed.port()),
                    };
                    let at = |req| istio_waypoint(&aps, src, to_service, wp_ip, wp_port, req);
                    let istio = (at(None), [at(Some(&REQUESTS[0])), at(Some(&REQUESTS[1]))]);
                    if (l7.tcp, l7.requests) != istio {
                        failures.push(format!(
                            "scenario {scenario}: {} -> {dst_key}:{} at the waypoint (TCP, requests) {:?}, Istio \
                             {istio:?}\n{policies_yaml}",
                            pod_key(src),
                            port.unwrap_or(0),
                            (l7.tcp, l7.requests)
                        ));
                    }
                    // Explain does not evaluate the waypoint's policies (they may decide on
                    // the request), but must name every one that applies, and no other; an
                    // "allowed" must say they come first.
                    let named = e.allowed && !l7.policies.is_empty() && !e.verdict.contains("not evaluated here");
                    if e.waypoint_policies != l7.policies || named {
                        failures.push(format!(
                            "scenario {scenario}: {} -> {dst_key}:{} explain names waypoint policies {:?} ({}), the \
                             waypoint applies {:?} (TCP allowed {}, requests allowed {:?})\n{policies_yaml}",
                            pod_key(src),
                            port.unwrap_or(0),
                            e.waypoint_policies,
                            e.verdict,
                            l7.policies,
                            l7.tcp,
                            l7.requests
                        ));
                    }
                } else if !e.waypoint_policies.is_empty() {
                    failures.push(format!(
                        "scenario {scenario}: {} -> {dst_key}: explain names waypoint policies {:?} without a waypoint",
                        pod_key(src),
                        e.waypoint_policies
                    ));
                }
                let istio = istio_verdict(&aps, &pas, src, dst, dst_port);
                *outcomes.entry((real, istio)).or_default() += 1;
                if e.allowed != real || real != istio {
                    failures.push(format!(
                        "scenario {scenario}: {} -> {dst_key}:{} explain {} ({}), enforcement {real}, Istio {istio}\n{policies_yaml}",
                        pod_key(src),
                        port.unwrap_or(0),
                        e.allowed,
                        e.verdict
                    ));
                }
            }
        }
    }
    eprintln!(
        "{cases} cases, outcomes (enforced, Istio) {outcomes:?}, at the waypoint (TCP, request) \
         {waypoint_outcomes:?}, {:?}",
        started.elapsed()
    );
    // The waypoint must be seen refusing, or naming its policies proves little.
    let waypoint_denied: usize =
        waypoint_outcomes.iter().filter(|((tcp, req), _)| !tcp || req.contains(&false)).map(|(_, n)| n).sum();
    assert!(waypoint_denied > 100, "waypoint outcomes {waypoint_outcomes:?}");
    assert!(cases >= 3000, "only {cases} cases");
    // The generator must reach both verdicts plenty, or the comparison proves little.
    let allowed = outcomes.get(&(true, true)).copied().unwrap_or(0);
    let denied = outcomes.get(&(false, false)).copied().unwrap_or(0);
    assert!(allowed > cases / 10 && denied > cases / 10, "outcomes {outcomes:?}");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases disagree; first:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
}

/// Istio ANDs the fields of a source; a waypoint had `serviceAccounts` ORed with `principals`,
/// so an ALLOW asking for both let either through.
#[test]
fn waypoint_source_requires_both_principals_and_service_accounts() {
    let policies = [
        // No peer is both `sx` and `a/sy`: allows nothing.
        "{principals: [\"*/sa/sx\"], serviceAccounts: [\"a/sy\"]}",
        // Only a/sy is both.
        "{principals: [\"cluster.local/ns/a/*\"], serviceAccounts: [\"a/sy\", \"b/default\"]}",
    ];
    let mut expected = Vec::new();
    for (source, allowed) in policies.iter().zip([[false, false], [false, true]]) {
        let yaml = format!(
            "{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: \
             w\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}]\n  action: \
             ALLOW\n  rules:\n  - from:\n    - source: {source}\n",
            mesh_yaml()
        );
        let t = translator(&yaml, source);
        let state = ztunnel_state(&t);
        let target = SocketAddr::new(PODS[4].ip.parse().unwrap(), 8080);
        let got = [&PODS[0], &PODS[1]].map(|p| {
            let w = state.workloads().find(|w| w.namespace() == p.ns && w.name == p.name).unwrap();
            at_waypoint(&t, w, None, target).tcp
        });
        expected.push((source, got, allowed));
    }
    for (source, got, want) in expected {
        assert_eq!(got, want, "a/x-0 (sx), a/y-0 (sy) through the waypoint with ALLOW from {source}");
    }
}
