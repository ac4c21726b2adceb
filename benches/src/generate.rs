//! A synthetic cluster for the control-plane scenario, written as Kubernetes YAML into
//! istiod-lite's config directory: ambient namespaces, each with its pods (running, with
//! addresses, spread over the nodes) and services selecting them, plus a few policies.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Sizes of the generated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    /// Namespaces (pods and services are spread evenly).
    pub namespaces: usize,
    /// Pods in all.
    pub pods: usize,
    /// Services in all.
    pub services: usize,
    /// Nodes the pods run on (`node-1` ...).
    pub nodes: usize,
    /// `AuthorizationPolicy` objects.
    pub policies: usize,
}

impl Cluster {
    /// Pods per namespace.
    pub fn pods_per_namespace(&self) -> usize {
        self.pods / self.namespaces
    }

    /// Services per namespace.
    pub fn services_per_namespace(&self) -> usize {
        self.services / self.namespaces
    }
}

/// Namespace `i`'s name.
pub fn namespace(i: usize) -> String {
    format!("bench-{i:02}")
}

/// The file holding namespace `i` and everything in it.
pub fn namespace_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{}.yaml", namespace(i)))
}

/// The file holding the policies.
pub fn policies_file(dir: &Path) -> PathBuf {
    dir.join("policies.yaml")
}

/// Address of pod `j` (counted over the whole cluster).
pub fn pod_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + (j / 62500) as u8, ((j / 250) % 250) as u8, (j % 250 + 1) as u8)
}

/// Namespace `i` as YAML, with pod `changed` (index within the namespace) at `changed_ip`
/// instead of its own address when given.
pub fn namespace_yaml(c: &Cluster, i: usize, changed: Option<(usize, Ipv4Addr)>) -> String {
    let ns = namespace(i);
    let (ppn, spn) = (c.pods_per_namespace(), c.services_per_namespace());
    let mut y = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    istio.io/dataplane-mode: ambient\n"
    );
    for p in 0..ppn {
        let j = i * ppn + p;
        let ip = match changed {
            Some((k, ip)) if k == p => ip,
            _ => pod_ip(j),
        };
        let svc = p % spn.max(1);
        let node = j % c.nodes + 1;
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{p}\n  namespace: {ns}\n  uid: \"uid-{ns}-{p}\"\n  labels:\n    app: svc-{svc}\nspec:\n  nodeName: node-{node}\n  serviceAccountName: sa-{svc}\n  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
        );
    }
    for s in 0..spn {
        let k = i * spn + s;
        let vip = Ipv4Addr::new(10, 96, (k / 250) as u8, (k % 250 + 1) as u8);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: {ns}\nspec:\n  clusterIP: {vip}\n  selector:\n    app: svc-{s}\n  ports:\n  - port: 80\n    targetPort: 8080\n"
        );
    }
    y
}

/// The policies as YAML; `round` changes the last one's allowed principal (a policy edit).
pub fn policies_yaml(c: &Cluster, round: usize) -> String {
    let mut y = String::new();
    for p in 0..c.policies {
        let ns = namespace(p % c.namespaces);
        let from = namespace((p + 1) % c.namespaces);
        let sa = if p + 1 == c.policies { format!("sa-edit-{round}") } else { "sa-0".into() };
        let _ = write!(
            y,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: policy-{p}\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      app: svc-{p}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/{from}/sa/{sa}\"]\n    to:\n    - operation:\n        ports: [\"8080\"]\n"
        );
    }
    y
}

/// The name istiod-lite gives the last (edited) policy's resource.
pub fn edited_policy(c: &Cluster) -> String {
    format!("{}/policy-{}", namespace((c.policies - 1) % c.namespaces), c.policies - 1)
}

/// Writes `contents` to `path` through a temporary file and a rename, so a watcher never
/// reads half a file.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Writes the whole cluster into `dir`.
pub fn write_all(c: &Cluster, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..c.namespaces {
        write_atomic(&namespace_file(dir, i), &namespace_yaml(c, i, None))?;
    }
    write_atomic(&policies_file(dir), &policies_yaml(c, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Cluster = Cluster { namespaces: 2, pods: 10, services: 4, nodes: 3, policies: 2 };

    #[test]
    fn addresses_are_unique_and_usable() {
        let ips: std::collections::HashSet<Ipv4Addr> = (0..10_000).map(pod_ip).collect();
        assert_eq!(ips.len(), 10_000);
        assert!(ips.iter().all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255));
    }

    #[test]
    fn documents_count_and_the_change_lands_on_one_pod() {
        let y = namespace_yaml(&SMALL, 1, None);
        assert_eq!(y.matches("kind: Pod\n").count(), 5);
        assert_eq!(y.matches("kind: Service\n").count(), 2);
        assert!(y.contains("name: pod-4\n  namespace: bench-01"));
        let changed = namespace_yaml(&SMALL, 1, Some((2, Ipv4Addr::new(10, 200, 0, 1))));
        assert_eq!(changed.matches("10.200.0.1").count(), 2, "podIP and podIPs");
        assert_eq!(changed.lines().filter(|l| !y.contains(l)).count(), 2);
        let p0 = policies_yaml(&SMALL, 0);
        assert_eq!(p0.matches("kind: AuthorizationPolicy").count(), 2);
        assert_ne!(p0, policies_yaml(&SMALL, 1));
        assert_eq!(edited_policy(&SMALL), "bench-01/policy-1");
        // Every document is YAML with the fields istiod-lite reads.
        for doc in y.split("---\n").chain(p0.split("---\n")).filter(|d| !d.trim().is_empty()) {
            let v: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
            assert!(v["apiVersion"].is_string() && v["kind"].is_string() && v["metadata"]["name"].is_string(), "{doc}");
        }
    }
}
