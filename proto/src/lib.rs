//! fanout's gRPC contracts and their generated code.
//!
//! - [`v1`]: the generic contracts: [`v1::leaf_client`]/[`v1::leaf_server`]
//!   (what every leaf implements), [`v1::merger_client`]/[`v1::merger_server`]
//!   (what every merge service implements), [`v1::root_client`]/[`v1::root_server`]
//!   (the generic public query API), and the shared [`v1::Coverage`].
//! - [`search::v1`]: the reference workload, distributed BM25 search: the public
//!   `Search` service and the payloads that travel inside `Leaf/Execute` and `Merger/Merge`.
//! - [`any`]: packing and unpacking `google.protobuf.Any` payloads by type URL.
//! - [`retry`]: which leaf errors may be retried on another replica.
//! - [`status`]: status code names as the gRPC specification spells them.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.

pub mod any;
pub mod retry;
pub mod status;

pub mod v1 {
    tonic::include_proto!("fanout.v1");
}

pub mod search {
    pub mod v1 {
        tonic::include_proto!("fanout.search.v1");
    }
}

/// Encoded `FileDescriptorSet` of every fanout contract, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fanout_descriptor.bin"));

pub use prost_types::Any;
