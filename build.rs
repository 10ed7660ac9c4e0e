//! Compiles `proto/` with the pure-Rust `protox` (no system `protoc`) and
//! writes the descriptor set that the coordinator serves for reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/smsmesh/v1/coordinator.proto",
        "proto/smsmesh/v1/node.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("smsmesh_descriptor.bin"), fds.encode_to_vec())?;
    // `Jobs` has a hand-written encoding (src/wire.rs): the coordinator's hot path.
    // Malformed requests are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .extern_path(".smsmesh.v1.Jobs", "crate::wire::Jobs")
        .compile_fds(fds)?;
    Ok(())
}
