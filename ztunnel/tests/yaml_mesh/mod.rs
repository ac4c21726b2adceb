//! Shared by the tests that take `AuthorizationPolicy` YAML through istiod-lite's parsing and
//! translation into ztunnel's state: the mesh builder, shop/db and identities.

// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::Path;

use hbone::Identity;
use istiod_lite::translate::{authz, workload};
use istiod_lite::{MeshConfig, Model};
use ztunnel::state::convert::policy_fail_closed;
use ztunnel::state::{Policy, State, StateConfig, Workload};

pub struct Mesh {
    pub state: State,
    pub errors: Vec<String>,
}

/// Parses Kubernetes YAML with istiod-lite, enforces fail-closed stand-ins of rejected security
/// objects (as `source::dir` does for objects never seen valid), translates pods and policies,
/// and converts the result exactly as ztunnel's xDS source does.
pub fn mesh(yaml: &str) -> Mesh {
    let parsed = istiod_lite::source::parse_file(Path::new("policies.yaml"), yaml);
    let errors = parsed.errors.iter().map(|e| e.to_string()).collect();
    let mut model = Model::default();
    for o in parsed.objects.into_iter().chain(parsed.fail_closed) {
        model.upsert(o.object);
    }
    let cfg = MeshConfig::default();
    let workloads: Vec<Workload> = model
        .pods
        .values()
        .filter_map(|p| workload::translate(&cfg, &model, p))
        .map(|(w, _)| Workload::try_from(w).expect("workload converts"))
        .collect();
    let policies: Vec<Policy> = model
        .authorization_policies
        .values()
        .filter_map(|p| authz::translate(&cfg, p).authorization)
        .map(|a| policy_fail_closed(a).expect("policy converts"))
        .collect();
    let state = State::new(StateConfig::default(), workloads, vec![], policies).expect("state builds");
    Mesh { state, errors }
}

/// shop/db (10.0.0.5, label app=db), in an ambient namespace.
pub const DB: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: shop
  labels:
    app: db
spec:
  nodeName: n1
  serviceAccountName: db
status:
  podIP: 10.0.0.5
  conditions:
  - {type: Ready, status: "True"}
"#;

pub const DB_UID: &str = "Kubernetes//Pod/shop/db";

/// The SPIFFE identity of `ns`/`sa` in trust domain `cluster.local`.
pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}
