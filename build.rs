//! Compiles every `.proto` under `proto/` with protox (pure Rust, no `protoc` needed), keeps the
//! descriptor set for server reflection, and generates the tonic servers and clients.
//!
//! One deliberate difference between the two: in the generated Rust code, the `key` and `value`
//! of an Envoy descriptor entry are `bytes`, while reflection keeps Envoy's `string`. The wire
//! format is the same, so grpcurl and Envoy see Envoy's API; but a value that is not valid UTF-8
//! (a client's odd bytes copied into a header) decodes instead of failing the whole message, and
//! the hot path still decides and counts it (docs/rate-limiting.md, "No bypass").

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Type};

const PROTOS: &[&str] = &[
    "sluice/admin/v1/policy.proto",
    "sluice/admin/v1/explain.proto",
    "envoy/service/ratelimit/v3/rls.proto",
];

/// The message whose fields the generated code reads as bytes, and those fields.
const ENTRY_FILE: &str = "envoy/extensions/common/ratelimit/v3/ratelimit.proto";
const ENTRY_PATH: [&str; 2] = ["RateLimitDescriptor", "Entry"];
const ENTRY_FIELDS: [&str; 2] = ["key", "value"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("sluice_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Malformed messages become INVALID_ARGUMENT with an ErrorInfo, not INTERNAL.
        .codec_path("crate::grpc_codec::SluiceCodec")
        .compile_fds(entries_as_bytes(descriptors)?)?;
    Ok(())
}

/// The descriptor set with the descriptor entry's `key` and `value` turned into `bytes`.
fn entries_as_bytes(mut set: FileDescriptorSet) -> Result<FileDescriptorSet, Box<dyn Error>> {
    let file = set
        .file
        .iter_mut()
        .find(|f| f.name() == ENTRY_FILE)
        .ok_or(format!("{ENTRY_FILE} is not among the compiled files"))?;
    let outer = file
        .message_type
        .iter_mut()
        .find(|m| m.name() == ENTRY_PATH[0])
        .ok_or(format!("{ENTRY_FILE} has no message {}", ENTRY_PATH[0]))?;
    let entry = outer
        .nested_type
        .iter_mut()
        .find(|m| m.name() == ENTRY_PATH[1])
        .ok_or(format!(
            "{} has no nested message {}",
            ENTRY_PATH[0], ENTRY_PATH[1]
        ))?;
    for name in ENTRY_FIELDS {
        let field = entry
            .field
            .iter_mut()
            .find(|f| f.name() == name)
            .ok_or(format!("{} has no field {name}", ENTRY_PATH[1]))?;
        if field.r#type() != Type::String {
            return Err(format!("{}.{name} is expected to be a string", ENTRY_PATH[1]).into());
        }
        field.set_type(Type::Bytes);
    }
    Ok(set)
}
