//! Generates the client of Envoy's Rate Limit Service v3 from the workspace's own definition in
//! `proto/` (the same files the server compiles; nothing is copied), with protox, so no `protoc` is
//! needed. Only the client: the layer never serves RLS.

use std::{error::Error, path::PathBuf};

const RLS: &str = "envoy/service/ratelimit/v3/rls.proto";

fn main() -> Result<(), Box<dyn Error>> {
    let protos = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", protos.display());
    let descriptors = protox::compile([RLS], [&protos])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
