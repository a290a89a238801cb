//! Generates the Rust types, client and server of Weir's own `.proto` files (the control-plane
//! watch stream). `protox` compiles the files in pure Rust, so no `protoc` is needed to build.

use std::path::Path;

/// Weir's own protocol files, relative to this crate.
const PROTOS: &[&str] = &["weir/controlplane/v1/control_plane.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let include = Path::new(".");
    let descriptors = protox::compile(PROTOS, [include])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // BTreeMap keeps labels ordered, which is what the control plane stores and compares.
        .btree_map(".weir.controlplane.v1.Hello.labels")
        .compile_fds(descriptors)?;
    Ok(())
}
