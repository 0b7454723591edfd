//! Generates the tonic/prost code at build time with a vendored `protoc`, so a bare
//! `cargo build` works on a machine without protobuf tools installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_build::configure()
        .bytes(["."])
        .compile_protos(&["proto/raft.proto", "proto/chubby.proto", "proto/cell.proto"], &["proto"])?;
    Ok(())
}
