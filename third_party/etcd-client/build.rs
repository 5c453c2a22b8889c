//! lockd's only change to etcd-client 0.17.0: compile etcd's protos with protox, a protobuf
//! compiler in pure Rust, instead of a system `protoc`, so that building lockd needs nothing
//! beyond cargo (see the workspace's third_party/README.md).

#[cfg(feature = "build-server")]
fn should_build_server() -> bool {
    true
}

#[cfg(not(feature = "build-server"))]
fn should_build_server() -> bool {
    false
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "proto";
    println!("cargo:rerun-if-changed={proto_root}");

    let file_descriptors = protox::compile(
        [
            "proto/auth.proto",
            "proto/kv.proto",
            "proto/rpc.proto",
            "proto/v3election.proto",
            "proto/v3lock.proto",
        ],
        [proto_root],
    )?;
    tonic_prost_build::configure()
        .build_server(should_build_server())
        .compile_fds(file_descriptors)?;
    Ok(())
}
