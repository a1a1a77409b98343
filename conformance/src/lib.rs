//! The contract test kit for leaves and mergers, whoever wrote them and in
//! whatever language: `fanout conformance leaf ADDR` and `fanout conformance
//! merger ADDR` run these checks against a running service over gRPC and
//! print a [`Report`], one row per check (pass, FAIL, skip or note, with what
//! was seen).
//!
//! - [`leaf`]: the `fanout.v1.Leaf` contract (health, Info, the workload's
//!   payloads, the documented errors, deadlines, cancellation, concurrency,
//!   overload, drain on SIGTERM).
//! - [`merger`]: the `fanout.v1.Merger` streaming contract (one result after
//!   end, partials in any order, the documented errors, cut streams freed,
//!   deadlines, the optional early "enough").
//! - [`workload`]: the payloads the kit sends and how it judges the answers
//!   (the search workload, `fanout.search.v1`, and k nearest neighbours,
//!   `fanout.knn.v1`).
//! - [`report`]: the table.

pub mod leaf;
pub mod merger;
mod probe;
pub mod report;
pub mod workload;

pub use leaf::{LeafOptions, check_leaf};
pub use merger::{MergerOptions, check_merger};
pub use report::{Check, Report, Verdict};
pub use workload::Workload;
