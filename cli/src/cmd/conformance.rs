//! `fanout conformance leaf ADDR` and `fanout conformance merger ADDR`: the
//! contract test kit (the `fanout-conformance` library) against a running
//! service of anyone's. Prints the table of checks; exits 0 when none
//! failed, 1 otherwise.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use fanout_conformance::{LeafOptions, MergerOptions, Workload};

#[derive(Debug, Clone, Args)]
pub struct ConformanceArgs {
    #[command(subcommand)]
    pub target: Target,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Target {
    /// Check a fanout.v1.Leaf server.
    Leaf(LeafArgs),
    /// Check a fanout.v1.Merger server.
    Merger(MergerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LeafArgs {
    /// The leaf: `host:port` or `http://host:port`.
    pub addr: String,
    /// The shard the leaf must say it serves.
    #[arg(long)]
    pub shard_id: Option<u32>,
    /// The leaf's process id: the last check sends it SIGTERM and watches
    /// its health turn NOT_SERVING (the leaf then stops).
    #[arg(long)]
    pub sigterm_pid: Option<i32>,
    /// A k-NN leaf's vector dimension (fanout.knn.v1; its Info does not say).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub knn_dim: Option<usize>,
    /// Heavy calls sent at once by the overload check.
    #[arg(long, default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub overload_calls: usize,
}

#[derive(Debug, Clone, Args)]
pub struct MergerArgs {
    /// The merger: `host:port` or `http://host:port`.
    pub addr: String,
    /// The payloads to merge.
    #[arg(long, value_enum, default_value = "search")]
    pub workload: WorkloadArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// fanout.search.v1: top k of ShardSearchResponse partials.
    Search,
    /// fanout.knn.v1: k nearest of KnnResponse partials.
    Knn,
}

impl From<WorkloadArg> for Workload {
    fn from(workload: WorkloadArg) -> Workload {
        match workload {
            WorkloadArg::Search => Workload::Search,
            // A merger never sees vectors, only distances.
            WorkloadArg::Knn => Workload::Knn { dim: 0 },
        }
    }
}

/// A checked `fanout conformance`.
pub enum ConformancePlan {
    Leaf(LeafOptions),
    Merger(MergerOptions),
}

impl ConformanceArgs {
    pub fn validate(self) -> anyhow::Result<ConformancePlan> {
        Ok(match self.target {
            Target::Leaf(args) => {
                let mut options = LeafOptions::new(super::grpc_url("ADDR", &args.addr)?);
                options.shard_id = args.shard_id;
                options.sigterm_pid = args.sigterm_pid;
                options.overload_calls = args.overload_calls;
                options.knn_dim = args.knn_dim;
                ConformancePlan::Leaf(options)
            }
            Target::Merger(args) => ConformancePlan::Merger(MergerOptions::new(
                super::grpc_url("ADDR", &args.addr)?,
                args.workload.into(),
            )),
        })
    }
}

pub async fn run(plan: ConformancePlan) -> anyhow::Result<ExitCode> {
    let report = match plan {
        ConformancePlan::Leaf(options) => fanout_conformance::check_leaf(&options).await,
        ConformancePlan::Merger(options) => fanout_conformance::check_merger(&options).await,
    };
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
