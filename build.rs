//! Compiles `proto/` with protox (no `protoc` needed), generates the tonic
//! stubs, and writes the encoded descriptor set to OUT_DIR for reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos: Vec<PathBuf> = fs::read_dir("proto/segd/v1")?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let mut protos: Vec<PathBuf> = protos
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    protos.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // prost only writes `file_descriptor_set_path` when it runs protoc, so
    // encode the set ourselves; reflection serves it.
    fs::write(
        out.join("segd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Decode errors become INVALID_ARGUMENT (see src/codec.rs).
        .codec_path("crate::codec::SegdCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
