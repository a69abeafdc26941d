//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`) and generates the
//! tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/weft/cluster/v1/raft.proto",
        "proto/weft/fabric/v1/state.proto",
        "proto/weft/fabric/v1/values.proto",
        "proto/weft/fabric/v1/cluster.proto",
        "proto/weft/fabric/v1/executions.proto",
        "proto/weft/fabric/v1/streams.proto",
        "proto/weft/fabric/v1/leases.proto",
        "proto/weft/fabric/v1/scaling.proto",
        "proto/weft/cluster/v1/forward.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
