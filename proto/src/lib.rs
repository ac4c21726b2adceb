//! Protobuf wire types shared by the mesh.
//!
//! Every message here is wire-compatible with the public definition of the
//! same package, so our binaries talk to a stock istiod or ztunnel:
//!
//! - [`istio::workload`]: workload discovery (`Address`, `Workload`,
//!   `Service`), served over delta xDS as [`ADDRESS_TYPE_URL`].
//! - [`istio::security`]: L4 authorization policy, served as
//!   [`AUTHORIZATION_TYPE_URL`].
//! - [`istio::workload::zds`]: ZDS, the pod hand-off from node agent to
//!   ztunnel.
//! - [`istio::v1::auth`]: the Istio CA (`IstioCertificateService`).
//! - [`mesh::waypoint::v1`]: our own waypoint configuration (routes, L7
//!   policy, load balancing), served over the same delta xDS stream.
//! - [`envoy::service::discovery::v3`]: the aggregated discovery service and
//!   its (delta) request and response messages, with the parts of
//!   [`envoy::config::core::v3`] and [`google::rpc`] they use.
//!
//! `google.protobuf` well-known types are [`prost_types`]. `bytes` fields are
//! [`prost::bytes::Bytes`]. Services come with tonic client and server stubs;
//! clients take any channel (`XClient::new(service)`), no `connect()` helper
//! is generated.

#![forbid(unsafe_code)]

/// Type URL of `istio.workload.Address`, the workload discovery resource.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// Type URL of `istio.security.Authorization`, the L4 policy resource.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of `mesh.waypoint.v1.Route`, an HTTPRoute or GRPCRoute for waypoints.
pub const WAYPOINT_ROUTE_TYPE_URL: &str = "type.googleapis.com/mesh.waypoint.v1.Route";

/// Type URL of `mesh.waypoint.v1.L7Policy`, an AuthorizationPolicy enforced by waypoints.
pub const WAYPOINT_POLICY_TYPE_URL: &str = "type.googleapis.com/mesh.waypoint.v1.L7Policy";

/// Type URL of `mesh.waypoint.v1.BackendPolicy`, how a waypoint balances a service.
pub const WAYPOINT_BACKEND_TYPE_URL: &str = "type.googleapis.com/mesh.waypoint.v1.BackendPolicy";

/// Includes the code generated for one protobuf package.
macro_rules! generated {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}

/// Istio APIs.
pub mod istio {
    /// Workload discovery: package `istio.workload`.
    #[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
    pub mod workload {
        generated!("istio.workload");

        /// Pod hand-off from the node agent to ztunnel: package `istio.workload.zds`.
        pub mod zds {
            generated!("istio.workload.zds");
        }
    }

    /// L4 authorization policy: package `istio.security`.
    #[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
    pub mod security {
        generated!("istio.security");
    }

    /// Package `istio.v1`.
    pub mod v1 {
        /// The Istio certificate authority: package `istio.v1.auth`.
        #[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
        pub mod auth {
            generated!("istio.v1.auth");
        }
    }
}

/// Our own APIs.
pub mod mesh {
    /// Package `mesh.waypoint`.
    pub mod waypoint {
        /// Waypoint configuration (routes, L7 policy, load balancing): package `mesh.waypoint.v1`.
        #[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
        pub mod v1 {
            generated!("mesh.waypoint.v1");
        }
    }
}

/// Envoy APIs (subset).
pub mod envoy {
    /// Package `envoy.config`.
    pub mod config {
        /// Package `envoy.config.core`.
        pub mod core {
            /// Node identity and shared types: package `envoy.config.core.v3` (subset).
            #[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
            pub mod v3 {
                generated!("envoy.config.core.v3");
            }
        }
    }

    /// Package `envoy.service`.
    pub mod service {
        /// Package `envoy.service.discovery`.
        pub mod discovery {
            /// Aggregated discovery: package `envoy.service.discovery.v3`.
            #[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
            pub mod v3 {
                generated!("envoy.service.discovery.v3");
            }
        }
    }
}

/// Google APIs (subset).
pub mod google {
    /// Package `google.rpc`.
    #[allow(missing_docs, unused_qualifications, rust_2018_idioms, clippy::all, clippy::pedantic)]
    pub mod rpc {
        generated!("google.rpc");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_name_the_generated_messages() {
        use prost::Name;
        assert_eq!(ADDRESS_TYPE_URL, istio::workload::Address::type_url());
        assert_eq!(AUTHORIZATION_TYPE_URL, istio::security::Authorization::type_url());
    }
}
