//! Compiles every `.proto` under `switchboard/` with protox (pure Rust, no system
//! `protoc`), then generates prost types, tonic clients and servers, and pbjson
//! serde impls that follow the proto3 JSON mapping.

use std::path::{Path, PathBuf};

use prost::Message;

fn proto_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut files = Vec::new();
    proto_files(&root.join("switchboard"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=switchboard");

    let descriptors = protox::compile(&files, [&root])?;
    let descriptor_bytes = descriptors.encode_to_vec();
    let descriptor_path = out_dir.join("switchboard_descriptor.bin");
    std::fs::write(&descriptor_path, &descriptor_bytes)?;

    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .type_attribute(".", "#[allow(clippy::all, missing_docs)]")
        .file_descriptor_set_path(&descriptor_path)
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".switchboard"])?;
    Ok(())
}
