//! Compiles the .proto contracts with protox (pure Rust, no system protoc),
//! generates the prost messages and tonic services, and writes the encoded
//! file descriptor set that the reflection services serve.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/fanout/v1/common.proto",
    "proto/fanout/v1/leaf.proto",
    "proto/fanout/v1/merger.proto",
    "proto/fanout/v1/root.proto",
    "proto/fanout/search/v1/search.proto",
    "proto/fanout/knn/v1/knn.proto",
];

/// Messages with a `serde::Serialize` derive (none of them holds an `Any`).
const SERIALIZED: &[&str] = &[
    ".fanout.search.v1.SearchResponse",
    ".fanout.search.v1.Hit",
    ".fanout.v1.Coverage",
    ".fanout.v1.ShardFailure",
    ".fanout.v1.ShardTiming",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let file_descriptors = protox::compile(PROTOS, ["proto"])?;

    // compile_fds does not write the descriptor set: reflection needs it.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("fanout_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;

    // Type names let payloads be packed into `Any` with their type URL.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");
    // The public search answer serialises to JSON from its own fields (as
    // `fanout search --json` prints it), so a new field needs no code; maps
    // are ordered, so the output is stable.
    config.btree_map([".fanout.search.v1.Hit.fields"]);
    for message in SERIALIZED {
        config.type_attribute(message, "#[derive(serde::Serialize)]");
    }
    tonic_prost_build::configure()
        .codec_path("crate::codec::FanoutCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(file_descriptors, config)?;
    Ok(())
}
