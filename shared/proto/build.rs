//! Compiles every .proto under the workspace's proto/ with protox (no system protoc) and
//! writes the descriptor set that the gRPC servers hand to reflection.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../../proto";
const FILES: &[&str] = &[
    "atelier/v1/resources.proto",
    "atelier/v1/events.proto",
    "atelier/v1/chat_service.proto",
    "atelier/jobs/v1/jobs.proto",
    "atelier/conversation/v1/conversation_service.proto",
    "atelier/intent/v1/intent_service.proto",
    "atelier/enhancement/v1/enhancement_service.proto",
];

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let files: Vec<String> = FILES.iter().map(|f| format!("{PROTO_ROOT}/{f}")).collect();
    let descriptors = protox::compile(&files, [PROTO_ROOT])?;
    std::fs::write(
        out_dir.join("atelier_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small first encode buffers, for long-lived streams (see src/codec.rs).
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
