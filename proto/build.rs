//! Compiles `capprof/v1/*.proto` with protox (a protobuf compiler in Rust, so no `protoc` is
//! needed) and generates the prost messages and tonic services from the descriptors.

use std::{error::Error, path::Path};

const PROTO_ROOT: &str = "capprof";
const PROTOS: &[&str] = &["capprof/v1/capprof.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, [Path::new(".")])
        .map_err(|error| format!("compiling {PROTOS:?}: {error:?}"))?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
