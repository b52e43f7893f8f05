//! Generates the NSM v1 gRPC API (client and server) from `proto/` with protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_build::configure().compile_protos(
        &[
            "proto/connectioncontext.proto",
            "proto/connection.proto",
            "proto/networkservice.proto",
            "proto/registry.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
