//! Generates the node agent protocol (client and server) from `proto/` with protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_build::configure().compile_protos(&["proto/agent.proto"], &["proto"])?;
    Ok(())
}
