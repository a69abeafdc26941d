//! Compiles the `.proto` files with protox (pure Rust, no system `protoc`), generates the
//! tonic clients and servers, and writes the encoded file descriptor set that the node's gRPC
//! reflection service serves (`FILE_DESCRIPTOR_SET`). With the `etcd` feature it also
//! generates tonic clients for the subset of etcd's v3 API in `proto/etcd/` (kept out of the
//! descriptor set: nodes do not serve it).

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
        "proto/weft/fabric/v1/tokens.proto",
        "proto/weft/fabric/v1/schedules.proto",
        "proto/weft/cluster/v1/forward.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true).open_files(files)?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("weft_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    if std::env::var_os("CARGO_FEATURE_ETCD").is_some() {
        let files = ["proto/etcd/etcdserverpb/rpc.proto", "proto/etcd/mvccpb/kv.proto"];
        for file in &files {
            println!("cargo:rerun-if-changed={file}");
        }
        let mut compiler = protox::Compiler::new(["proto"])?;
        compiler.include_imports(true).open_files(files)?;
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(false)
            .compile_fds(compiler.file_descriptor_set())?;
    }
    Ok(())
}
