//! istiod-lite: the mesh's control plane.
//!
//! - [`k8s`]: the Kubernetes, Istio and Gateway API object shapes we read.
//! - [`source`]: where objects come from (a directory of YAML, watched).
//! - [`model`]: every object, by kind and name.
//! - [`translate`]: pure functions from the model to Istio's `istio.workload.Address` and
//!   `istio.security.Authorization`.
//! - [`translator`]: incremental translation: one change in, the resources it changed out.
//! - [`error`]: configuration errors, located by file, document, object and field.
//! - [`ca`]: the mesh CA (root, CSR signing, who may have which identity).
//! - [`serve`], [`config`], [`placement`]: running it all: directory → translator → xDS store,
//!   xDS and the CA on one port.

#![forbid(unsafe_code)]

pub mod ca;
pub mod config;
pub mod error;
pub mod k8s;
pub mod model;
pub mod placement;
pub mod serve;
pub mod source;
pub mod translate;
pub mod translator;

pub use error::{ConfigError, Location, ObjectError, Warning};
pub use model::{Kind, Model, Object, ObjectKey};
pub use translate::MeshConfig;
pub use translator::{Change, Delta, ResourceDelta, Translator};
