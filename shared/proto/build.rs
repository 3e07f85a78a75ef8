//! Compiles every .proto under the workspace's proto/ with protox (no system protoc) and
//! writes the descriptor sets that the gRPC servers hand to reflection: every file, for
//! the internal ports, and the public API alone, for the edge.

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
/// The public API's package directory: these files, with what they import, are all the
/// edge's reflection may describe.
const PUBLIC_DIR: &str = "atelier/v1/";
/// What a public file may import besides other public files: the well-known types.
const PUBLIC_IMPORTS_DIR: &str = "google/protobuf/";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let path = |file: &&str| format!("{PROTO_ROOT}/{file}");
    let files: Vec<String> = FILES.iter().map(path).collect();
    let descriptors = protox::compile(&files, [PROTO_ROOT])?;
    std::fs::write(
        out_dir.join("atelier_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    // protox adds every import, so this set holds the public files and what they need,
    // and nothing an internal file declares.
    let public_files: Vec<String> = FILES
        .iter()
        .filter(|file| file.starts_with(PUBLIC_DIR))
        .map(path)
        .collect();
    let public = protox::compile(&public_files, [PROTO_ROOT])?;
    for file in &public.file {
        let name = file.name();
        // A public file importing an internal one would publish it through reflection.
        anyhow::ensure!(
            name.starts_with(PUBLIC_DIR) || name.starts_with(PUBLIC_IMPORTS_DIR),
            "the public API imports {name}, which is not public"
        );
    }
    std::fs::write(
        out_dir.join("atelier_public_descriptor.bin"),
        public.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small first encode buffers, for long-lived streams (see src/codec.rs).
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
