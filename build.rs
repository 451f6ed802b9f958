//! Generates the op envelope, dead letter and snapshot types from `schemas/` (the single source of truth)
//! with a pure-Rust protobuf compiler, so building needs no `protoc`.

const OP: &str = "schemas/docfold/op/v1/op.proto";
const SNAPSHOT: &str = "schemas/docfold/state/v1/snapshot.proto";
const DEAD_LETTER: &str = "schemas/docfold/dlq/v1/dead_letter.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in [OP, SNAPSHOT, DEAD_LETTER] {
        println!("cargo:rerun-if-changed={proto}");
    }
    prost_build::Config::new().compile_fds(protox::compile([OP, DEAD_LETTER], ["schemas"])?)?;
    prost_build::Config::new()
        // Snapshots reuse the envelope's InsertRun: one generated type, in `op::wire`.
        .extern_path(".docfold.op.v1", "crate::op::wire")
        .compile_fds(protox::compile([SNAPSHOT], ["schemas"])?)?;
    Ok(())
}
