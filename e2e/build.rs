//! Compiles the test gRPC service (`proto/shop/echo.proto`) with protox (no `protoc`) into
//! prost messages and tonic client and server stubs. It lives here, not in the `proto` crate,
//! because only the tests speak it; the mesh's own wire types stay there.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::Compiler::new([&root])?.open_files(["shop/echo.proto"])?.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Callers bring their own channel: the client's socket is made inside a pod's namespace.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
