//! Generates the op envelope and snapshot types from `schemas/` (the single source of truth) with a
//! pure-Rust protobuf compiler, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["schemas/docfold/op/v1/op.proto", "schemas/docfold/state/v1/snapshot.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["schemas"])?;
    prost_build::Config::new()
        // Snapshots reuse the envelope's InsertRun: one generated type, in `op::wire`.
        .extern_path(".docfold.op.v1", "crate::op::wire")
        .compile_fds(descriptors)?;
    Ok(())
}
