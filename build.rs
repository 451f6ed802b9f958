//! Generates the op envelope types from `schemas/` (the single source of truth) with a
//! pure-Rust protobuf compiler, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "schemas/docfold/op/v1/op.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["schemas"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
