//! The extension point: what a merge is. Implement [`Merge`] (one value per
//! merger, shared by every request) and [`MergeState`] (one value per request)
//! and the crate gives you an embedded merge for the root
//! ([`MergerEndpoint::Embedded`](crate::MergerEndpoint::Embedded)) and a gRPC
//! merge service ([`serve`](crate::serve)) speaking `fanout.v1.Merger`.
//!
//! The calls follow the streaming contract of `merger.proto`: one
//! [`Merge::start`] per request, one [`MergeState::add`] per shard that
//! answered, in arrival order, then one [`MergeState::finish`]. Calls on one
//! state never overlap. They run on async worker threads, so each must be
//! quick: merge incrementally in `add` instead of buffering every partial.
//!
//! # Example: a merge that counts the shards that answered
//!
//! It answers a `google.protobuf.UInt64Value` and tells the root it has heard
//! enough once `quorum` shards answered, so the root cancels the stragglers.
//!
//! ```
//! use std::sync::Arc;
//!
//! use fanout_merger::{Merge, MergeState, MergerEndpoint, Progress};
//! use fanout_proto::v1::{MergeEnd, MergeStart, ShardPartial};
//!
//! struct CountingMerge {
//!     quorum: u32,
//! }
//!
//! struct CountingState {
//!     quorum: u32,
//!     answered: u64,
//! }
//!
//! impl Merge for CountingMerge {
//!     fn start(&self, _start: &MergeStart) -> Result<Box<dyn MergeState>, tonic::Status> {
//!         Ok(Box::new(CountingState { quorum: self.quorum, answered: 0 }))
//!     }
//! }
//!
//! impl MergeState for CountingState {
//!     fn add(&mut self, _partial: ShardPartial) -> Result<Progress, tonic::Status> {
//!         self.answered += 1;
//!         if self.answered == u64::from(self.quorum) {
//!             return Ok(Progress::Enough(format!("{} shards answered", self.answered)));
//!         }
//!         Ok(Progress::Continue)
//!     }
//!
//!     fn finish(self: Box<Self>, _end: MergeEnd) -> Result<prost_types::Any, tonic::Status> {
//!         Ok(fanout_proto::any::pack(&self.answered))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tonic::Status> {
//! // The root's side, here with the merge in-process.
//! let merger = MergerEndpoint::Embedded(Arc::new(CountingMerge { quorum: 2 }));
//! let mut session = merger.open(MergeStart { shard_count: 3, ..Default::default() }, None).await?;
//! session.add_partial(ShardPartial { shard_id: 0, ..Default::default() }).await?;
//! session.add_partial(ShardPartial { shard_id: 2, ..Default::default() }).await?;
//! assert_eq!(session.enough().await, "2 shards answered");
//! let result = session.finish(MergeEnd::default()).await?;
//! assert_eq!(fanout_proto::any::unpack::<u64>(&result).unwrap(), 2);
//! # Ok(())
//! # }
//! ```

use fanout_proto::v1::{MergeEnd, MergeStart, ShardPartial};

/// What a merge says after taking one partial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Keep sending partials.
    Continue,
    /// Further partials cannot change the result (the reason is for logs):
    /// the root may cancel the shards still running and send `end`. Partials
    /// already on their way may still arrive and must be accepted.
    Enough(String),
}

/// A merge: shared by every request, it starts one [`MergeState`] per request.
pub trait Merge: Send + Sync + 'static {
    /// Starts the merge of one request. `start.request` is the payload the
    /// root fanned out; an unusable one is answered with INVALID_ARGUMENT.
    fn start(&self, start: &MergeStart) -> Result<Box<dyn MergeState>, tonic::Status>;
}

/// The merge of one request, fed the partials in arrival order.
pub trait MergeState: Send {
    /// Takes the partial of one shard. An error ends the merge: the root sees
    /// it as the status of the whole merge.
    fn add(&mut self, partial: ShardPartial) -> Result<Progress, tonic::Status>;

    /// Called once after the last partial; `end` holds the final coverage.
    /// Returns the merged payload the root answers with.
    fn finish(self: Box<Self>, end: MergeEnd) -> Result<prost_types::Any, tonic::Status>;
}
