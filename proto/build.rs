//! Compiles kubelet's gRPC APIs with protox (pure Rust): no `protoc` on any builder's
//! machine. The device plugin API (package `v1beta1`) and the PodResources API (package
//! `v1`) are compiled together; each package becomes its own generated file.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/deviceplugin/v1beta1/api.proto",
        "proto/podresources/v1/api.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
