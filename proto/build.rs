//! Compiles the `.proto` files under `proto/` with protox (pure Rust, no
//! `protoc`) and generates prost messages plus tonic client and server stubs.

use std::path::PathBuf;

/// Every file we compile, relative to the `proto/` include root.
const PROTOS: &[&str] = &[
    "istio/workload/workload.proto",
    "istio/workload/zds/zds.proto",
    "istio/security/authorization.proto",
    "istio/v1/auth/ca.proto",
    "google/rpc/status.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/service/discovery/v3/ads.proto",
    "mesh/waypoint/v1/waypoint.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=build.rs");

    // Source info carries the proto comments through to rustdoc. Well-known
    // `google.protobuf` imports resolve from protox's built-in copies; they are
    // included in the set because prost-build inspects imported messages, but
    // no code is generated for them: they map to `prost_types` (prost-build's
    // default extern path).
    let fds = protox::Compiler::new([&root])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    // `prost::Name` impls give every message its full name and type URL.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect()` helpers: they need tonic's `transport` feature, and
        // callers bring their own channel (any tower service over HTTP/2).
        .build_transport(false)
        // `bytes` fields decode as zero-copy slices of the received buffer.
        .bytes(".")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
