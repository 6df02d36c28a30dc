//! Generates the onair.v1 gRPC code with a vendored protoc (no system install needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let protos = [
        "../../proto/onair/v1/registry.proto",
        "../../proto/onair/v1/signaling.proto",
        "../../proto/onair/v1/recorder.proto",
    ]
    .map(std::path::PathBuf::from);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("onair_descriptor.bin")).compile_with_config(
        config,
        &protos,
        &[std::path::PathBuf::from("../../proto"), include],
    )?;
    for p in protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}
