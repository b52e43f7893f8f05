//! Generates, with protoc, the node agent protocol (client and server) and the kubelet's device
//! plugin API (the plugin's server and the registration client; the other halves for tests).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_build::configure().compile_protos(
        &["proto/agent.proto", "proto/deviceplugin/v1beta1.proto"],
        &["proto"],
    )?;
    Ok(())
}
