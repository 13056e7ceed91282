//! Generates the protobuf types from `proto/dnstap.proto` and `proto/forward.proto` with protox (pure Rust), so a
//! fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/dnstap.proto");
    println!("cargo:rerun-if-changed=proto/forward.proto");
    println!("cargo:rerun-if-changed=proto/build.rs");
    let descriptors = protox::compile(["proto/dnstap.proto", "proto/forward.proto"], ["proto"])?;
    prost_build::Config::new()
        // Payload fields stay zero-copy slices of the frame buffer.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
