//! istiod-lite: the mesh's control plane.
//!
//! - [`k8s`]: the Kubernetes, Istio and Gateway API object shapes we read.
//! - [`source`]: where objects come from: a directory of YAML, loaded and watched
//!   ([`source::dir`]), or the Kubernetes API through kube-rs watchers ([`source::kube`]);
//!   each bad document or object is a [`ConfigError`] naming where it is, the object and the
//!   field, and every other object still applies.
//! - [`model`]: every object, by kind and `namespace/name`.
//! - [`translate`]: pure functions from the model to Istio's `istio.workload.Address`
//!   (workloads and services) and `istio.security.Authorization`, and to the waypoint's
//!   `mesh.waypoint.v1` `Route`, `L7Policy` and `BackendPolicy` (with route status).
//! - [`translator`]: incremental translation: changes in, the resources they changed out, per
//!   type URL, named as Istio names them (workload uid, `<ns>/<hostname>`, `<ns>/<name>`).
//! - [`error`]: configuration errors and translation warnings.
//! - `fuzzing` (feature `fuzzing`): properties of reading user YAML, for the libFuzzer target
//!   in `fuzz/` and the corpus-replaying test.
//! - [`explain`]: what `meshctl explain` answers, computed by the code the mesh runs.
//! - [`deploy`]: Kubernetes mode: a Deployment, Service and ServiceAccount for every waypoint
//!   Gateway, and the Gateway's status.
//! - [`meshctl`]: what `meshctl proxy-status`, `certs` and `check` ask running components.
//! - [`ca`]: the mesh CA (root, CSR signing, who may have which identity: node bootstrap
//!   tokens from a file, or in Kubernetes mode a TokenReview of the caller's service-account
//!   token).
//! - [`serve`], [`config`], [`placement`]: running it all: directory → translator → xDS store,
//!   xDS and the CA over TLS on 15012 ([`tls`]; plaintext 15010 on request), metrics and debug
//!   JSON on 15014 ([`debug`]). 15012 serves once the first model is loaded (a proxy never
//!   sees an empty mesh, and the CA never refuses a pod for not knowing it yet).
//!
//! # Decisions
//!
//! - Every pod with an IP that has not finished (`Succeeded`/`Failed`) is a workload, as in
//!   istiod; `istio.io/dataplane-mode=ambient` on the pod or its namespace sets HBONE, `none`
//!   on the pod opts out. Health is the `Ready` condition, and a pod being deleted
//!   (`deletionTimestamp`) is UNHEALTHY whatever it says. A host-network pod is a workload
//!   with `network_mode: HOST_NETWORK`, never HBONE. See [`translate::workload`].
//! - A Service's endpoints are the pods its selector matches (as Istio builds workloads); a
//!   Service without a selector takes them from EndpointSlices whose endpoints name the pod in
//!   `targetRef`. Named target ports resolve per pod; a pod without the name leaves the port out.
//!   A missing `targetPort` means `port`, as the API server defaults it.
//! - Security objects never lose a setting: unknown fields and values are errors. A rejected
//!   one keeps its last good version, or, if it never had one, is enforced as a fail-closed
//!   stand-in (see [`source::fail_closed`]).
//! - Authorization semantics follow Istio's ztunnel conversion; see [`translate::authz`] and
//!   [`translate::peer_authn`] for the rules and the few deliberate differences (CUSTOM is
//!   enforced as DENY instead of being dropped).

#![forbid(unsafe_code)]

pub mod ca;
pub mod config;
pub mod debug;
pub mod deploy;
pub mod error;
pub mod explain;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod k8s;
pub mod meshctl;
pub mod model;
pub mod placement;
pub mod serve;
pub mod source;
pub mod tls;
pub mod translate;
pub mod translator;

pub use error::{ConfigError, Location, ObjectError, Warning};
pub use model::{Kind, Model, Object, ObjectKey};
pub use translate::MeshConfig;
pub use translator::{Change, Delta, ResourceDelta, Translator};
