//! Compiles Warren's `proto/` (pure Rust, no `protoc`) into a gRPC client.
//!
//! The load test builds its own client from the proto instead of linking the
//! `warren` library, so it measures Warren only over the wire and builds even
//! while Warren's sources are mid-change.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(["warren/v1/bus.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        // The server side is for `warren-floor`, the transport-only peer.
        .build_server(true)
        .generate_default_stubs(true)
        .bytes(".warren.v1.Message.body")
        .compile_fds(fds)?;
    Ok(())
}
