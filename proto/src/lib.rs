//! fanout's gRPC contracts and their generated code.
//!
//! - [`v1`]: the generic contracts: [`v1::leaf_client`]/[`v1::leaf_server`]
//!   (what every leaf implements), [`v1::merger_client`]/[`v1::merger_server`]
//!   (what every merge service implements), [`v1::root_client`]/[`v1::root_server`]
//!   (the generic public query API), and the shared [`v1::Coverage`].
//! - [`search::v1`]: the reference workload, distributed BM25 search: the public
//!   `Search` service and the payloads that travel inside `Leaf/Execute` and `Merger/Merge`;
//!   [`search::limits`]: what a search query may cost, checked by root and leaf alike.
//! - [`knn::v1`]: a second workload, brute-force k nearest neighbours (its leaf
//!   and merger are Python, `python/fanout_py`): the payloads of
//!   `fanout.v1.Root/Query`, `Leaf/Execute` and `Merger/Merge`, for clients and tests.
//! - [`any`]: packing and unpacking `google.protobuf.Any` payloads by type URL.
//! - [`codec`]: the protobuf codec of every service (undecodable requests are
//!   INVALID_ARGUMENT).
//! - [`hedge`]: the `fixed:<ms>` spelling of a fixed hedge delay, read the same
//!   by the root's flag and the load generator's.
//! - [`retry`]: which leaf errors may be retried on another replica.
//! - [`status`]: status code names as the gRPC specification spells them, and
//!   status messages bounded in length ([`status::quote`], [`status::bounded`]).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.

pub mod any;
pub mod codec;
pub mod hedge;
pub mod retry;
#[doc(hidden)]
pub mod search_limits;
pub mod status;

pub mod v1 {
    tonic::include_proto!("fanout.v1");
}

pub mod search {
    pub mod v1 {
        tonic::include_proto!("fanout.search.v1");
    }
    pub use crate::search_limits as limits;
}

pub mod knn {
    pub mod v1 {
        tonic::include_proto!("fanout.knn.v1");
    }
}

/// Encoded `FileDescriptorSet` of every fanout contract, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fanout_descriptor.bin"));

pub use prost_types::Any;
