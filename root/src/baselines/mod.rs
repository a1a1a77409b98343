//! Baselines for benchmarks, beside the core and never on its path: a root
//! started with one calls its shards through the baseline instead of
//! [`crate::shard_call`], so that a benchmark compares both over the same
//! cluster and the same replica choice (see the `shard_caller` module).
//!
//! - [`tower_hedge`]: tower's `hedge` middleware (`fanout root --hedge tower`).

pub mod tower_hedge;
