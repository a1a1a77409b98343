//! `fanout loadgen scenario FILE.toml`: a benchmark as one command.
//!
//! The runner reads a [`Scenario`], builds (or reuses) the indexes its
//! variants need, starts every cluster itself as real processes on loopback
//! (variants with the same leaves share them; each distinct root
//! configuration gets its own root over those leaves), then runs the
//! variants interleaved, round after round (A B A B ...), so that whatever
//! the machine does meanwhile hits every variant alike. It writes, under the
//! output folder:
//!
//! - `runs/<variant>-r<round>[-<rate>].json` and `.hlog`: every run's report
//!   and HdrHistogram interval log;
//! - `comparison.md`: the table of every variant (rounds merged) with its
//!   ratios to the baseline, the highest sustainable rate of a sweep, and
//!   the ideal hedging bounds (printed on stdout too);
//! - `summary.json`: the same figures for scripts;
//! - `percentiles.png`: latency by percentile of every variant (and ideal);
//! - `logs/`: every process's output.
//!
//! - [`spec`]: the file format.
//! - [`table`]: merging rounds and writing the comparison.
//! - [`overload`]: scenarios with `[overload]`: the knee, then twice it and
//!   half it in one run per variant; goodput, status mix and recovery.

pub mod overload;
pub mod spec;
pub mod table;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fanout_cluster::certs::LocalTls;
use fanout_cluster::signals::StopSignals;
use fanout_cluster::{
    ChildOutput, Cluster, IndexSource, LEAF_SERVICE_NAME, Launcher, MERGER_SERVICE_NAME,
    ReadyIndex, Role, SEARCH_SERVICE_NAME, ensure_index, root_args, start_leaves,
    start_merger_with, wait_until_serving_over,
};
use tokio::time::Instant;

use crate::error::LoadgenError;
use crate::plot::plot_curves;
use crate::queries::QuerySet;
use crate::runner::{RunOptions, StopCondition, run_load_detailed};
use crate::schedule::Schedule;
use crate::target::{LoadTarget, RequestTemplate, TargetKind, TargetSpec};
pub use overload::OverloadReport;
pub use spec::{ClusterSpec, IdealSpec, LeavesSpec, LoadSpec, MergerPlacement, Scenario, Variant};
use table::{Comparison, RunResult};

/// Longest wait for a cluster's processes to announce and report SERVING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each group of processes may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to run a scenario, besides the scenario itself.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    /// The fanout binary the cluster processes are started from.
    pub executable: PathBuf,
    /// Where every output goes (created if missing).
    pub out_dir: PathBuf,
    /// Where indexes are built and kept between runs.
    pub data_dir: PathBuf,
    /// Threads of an index build.
    pub index_threads: usize,
    /// Overrides every variant's measured duration (e.g. a quick check).
    pub duration: Option<Duration>,
    /// Overrides the scenario's rounds.
    pub rounds: Option<u32>,
}

/// One group of processes: the leaves a set of variants shares, their
/// merger, and one root per distinct root configuration.
struct RunningCluster {
    leaves: LeavesSpec,
    processes: Cluster,
    /// (merger placement, root flags) -> root address.
    roots: BTreeMap<(MergerPlacement, Vec<String>), SocketAddr>,
    /// The CA and certificate of a cluster with TLS on every hop.
    tls: Option<ClusterTls>,
    /// Where a traced cluster's processes send their spans.
    traces: Option<fanout_cluster::otlp::OtlpReceiver>,
}

/// A TLS cluster's files (see [`LocalTls`]), and what its clients need.
struct ClusterTls(LocalTls);

impl ClusterTls {
    fn make(dir: &Path) -> anyhow::Result<ClusterTls> {
        LocalTls::make(dir, "fanout scenario").map(ClusterTls)
    }

    /// What a client presents and trusts (the certificate, for the leaves).
    fn client(&self) -> anyhow::Result<fanout_runtime::tls::ClientTls> {
        let LocalTls { ca, files } = &self.0;
        fanout_runtime::tls::ClientTls::load(ca, Some((&files.cert, &files.key)))
            .context("the cluster's CA and certificate")
    }

    fn target(&self) -> crate::target::TargetTls {
        let LocalTls { ca, files } = &self.0;
        crate::target::TargetTls {
            ca: ca.clone(),
            identity: Some((files.cert.clone(), files.key.clone())),
        }
    }
}

impl RunningCluster {
    /// Where `variant`'s load goes.
    fn target_addr(&self, variant: &Variant) -> anyhow::Result<SocketAddr> {
        match variant.load.target {
            TargetKind::Leaf => self
                .processes
                .process(Role::Leaf {
                    shard_id: 0,
                    replica: 0,
                })
                .map(|leaf| leaf.addr)
                .context("shard 0 has no leaf"),
            _ => self
                .roots
                .get(&(variant.cluster.merger, variant.cluster.root_args.clone()))
                .copied()
                .context("the variant's root did not start"),
        }
    }
}

/// What a scenario produced: a comparison of variants, or an overload report.
#[derive(Debug, Clone)]
pub enum ScenarioOutcome {
    Comparison(Comparison),
    Overload(OverloadReport),
}

impl ScenarioOutcome {
    pub fn to_markdown(&self) -> String {
        match self {
            ScenarioOutcome::Comparison(comparison) => comparison.to_markdown(),
            ScenarioOutcome::Overload(report) => report.to_markdown(),
        }
    }

    fn to_json_pretty(&self) -> String {
        match self {
            ScenarioOutcome::Comparison(comparison) => comparison.to_json_pretty(),
            ScenarioOutcome::Overload(report) => report.to_json_pretty(),
        }
    }
}

/// Runs `scenario` (see the module docs) and returns its comparison.
pub async fn run_scenario(
    scenario: &Scenario,
    options: &ScenarioOptions,
) -> anyhow::Result<ScenarioOutcome> {
    let rounds = options.rounds.unwrap_or(scenario.rounds);
    let runs_dir = options.out_dir.join("runs");
    let logs_dir = options.out_dir.join("logs");
    for dir in [&runs_dir, &logs_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Every variant's queries are read before anything starts: a bad file
    // fails in a second, not after the clusters came up.
    let queries: Vec<QuerySet> = scenario
        .variants
        .iter()
        .map(|variant| load_queries(&variant.load))
        .collect::<anyhow::Result<_>>()?;

    // Before any child starts: on SIGINT, SIGTERM or SIGHUP, stop them all.
    let mut signals = StopSignals::register()?;
    let mut clusters: Vec<RunningCluster> = Vec::new();
    let outcome = {
        let work = async {
            let variant_cluster =
                start_clusters(scenario, options, &logs_dir, &mut clusters).await?;
            match &scenario.overload {
                Some(spec) => overload::run_overload(
                    scenario,
                    spec,
                    rounds,
                    &runs_dir,
                    &clusters,
                    &variant_cluster,
                    &queries,
                )
                .await
                .map(ScenarioOutcome::Overload),
                None => run_rounds(
                    scenario,
                    options,
                    rounds,
                    &runs_dir,
                    &clusters,
                    &variant_cluster,
                    &queries,
                )
                .await
                .map(ScenarioOutcome::Comparison),
            }
        };
        tokio::select! {
            outcome = work => outcome,
            signal = signals.recv() => Err(anyhow::anyhow!("{signal}: the scenario was interrupted")),
        }
    };
    for (index, cluster) in clusters.iter_mut().enumerate() {
        cluster.processes.stop(STOP_GRACE).await;
        if let Some(traces) = &cluster.traces {
            eprintln!(
                "scenario: cluster {index} exported {} spans",
                traces.count()
            );
        }
    }
    let comparison = outcome?;
    let markdown = comparison.to_markdown();
    let table_path = options.out_dir.join("comparison.md");
    std::fs::write(&table_path, &markdown)
        .with_context(|| format!("cannot write {}", table_path.display()))?;
    let summary_path = options.out_dir.join("summary.json");
    std::fs::write(&summary_path, comparison.to_json_pretty())
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    if let ScenarioOutcome::Comparison(comparison) = &comparison {
        let plot_path = options.out_dir.join("percentiles.png");
        plot_curves(
            &comparison.curves(),
            &plot_path,
            Some(&format!("{}: latency by percentile", scenario.name)),
        )?;
    }
    Ok(comparison)
}

fn load_queries(load: &LoadSpec) -> anyhow::Result<QuerySet> {
    let queries = QuerySet::from_file(&load.queries, load.query_format, None)?;
    Ok(queries.ordered(load.order, load.seed))
}

/// Builds the indexes and starts every cluster; returns, per variant, the
/// index of its cluster in `clusters`.
async fn start_clusters(
    scenario: &Scenario,
    options: &ScenarioOptions,
    logs_dir: &Path,
    clusters: &mut Vec<RunningCluster>,
) -> anyhow::Result<Vec<usize>> {
    let mut variant_cluster = vec![0; scenario.variants.len()];
    for (group_index, (leaves, members)) in scenario.leaf_groups().into_iter().enumerate() {
        let index = ensure_index(
            &IndexSource {
                corpus: leaves.corpus.clone(),
                shards: leaves.shards,
                id_field: leaves.id_field.clone(),
                title_field: leaves.title_field.clone(),
                text_field: leaves.text_field.clone(),
            },
            &options.data_dir,
            false,
            options.index_threads,
        )
        .await
        .with_context(|| format!("cannot build the index of {}", leaves.corpus.display()))?;
        let group_logs = logs_dir.join(format!("cluster-{group_index}"));
        std::fs::create_dir_all(&group_logs)
            .with_context(|| format!("cannot create {}", group_logs.display()))?;
        let tls = if leaves.tls {
            Some(ClusterTls::make(&group_logs.join("tls"))?)
        } else {
            None
        };
        let mut launcher = Launcher::new(
            options.executable.clone(),
            "text",
            ChildOutput::Files { dir: group_logs },
        );
        let traces = if leaves.tracing {
            let receiver = fanout_cluster::otlp::OtlpReceiver::start_counting()
                .await
                .context("cannot start the OTLP receiver")?;
            launcher.env.extend([
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    receiver.endpoint().into(),
                ),
                ("FANOUT_TRACE_SAMPLE_RATIO".into(), "1".into()),
            ]);
            Some(receiver)
        } else {
            None
        };
        let variants: Vec<&Variant> = members
            .iter()
            .map(|member| &scenario.variants[*member])
            .collect();
        clusters.push(RunningCluster {
            leaves: leaves.clone(),
            processes: Cluster::default(),
            roots: BTreeMap::new(),
            tls,
            traces,
        });
        let cluster = clusters.last_mut().expect("just pushed");
        start_cluster(cluster, &launcher, &index, &variants).await?;
        for member in members {
            variant_cluster[member] = group_index;
        }
        eprintln!(
            "scenario: cluster {group_index} is up: {} shards x {} replicas over {}, {} root(s)",
            leaves.shards,
            leaves.replicas,
            leaves.corpus.display(),
            cluster.roots.len()
        );
    }
    Ok(variant_cluster)
}

/// Leaves (and a merger if a variant wants one) first, then one root per
/// distinct root configuration of `variants`.
async fn start_cluster(
    cluster: &mut RunningCluster,
    launcher: &Launcher,
    index: &ReadyIndex,
    variants: &[&Variant],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let leaves = cluster.leaves.clone();
    let server_tls = |mutual: bool| {
        cluster
            .tls
            .as_ref()
            .map(|tls| tls.0.server_args(mutual))
            .unwrap_or_default()
    };
    let leaf_tls = server_tls(true);
    let merger_tls = server_tls(true);
    let client_tls = cluster.tls.as_ref().map(ClusterTls::client).transpose()?;
    start_leaves(
        &mut cluster.processes,
        launcher,
        index,
        leaves.replicas,
        |shard, replica| {
            let mut args = leaf_args(&leaves, shard, replica);
            args.extend(leaf_tls.iter().cloned());
            args
        },
    )?;
    let needs_merger = variants.iter().any(|variant| {
        variant.load.target == TargetKind::Search
            && variant.cluster.merger == MergerPlacement::Process
    });
    if needs_merger {
        start_merger_with(&mut cluster.processes, launcher, &merger_tls)?;
    }
    cluster.processes.admit_all(deadline).await?;
    for process in &cluster.processes.processes {
        let service = match process.role {
            Role::Merger => MERGER_SERVICE_NAME,
            _ => LEAF_SERVICE_NAME,
        };
        wait_until_serving_over(process.addr, client_tls.as_ref(), service, deadline)
            .await
            .with_context(|| format!("{} did not become ready", process.role.label()))?;
    }

    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut root_count = 0;
    for variant in variants {
        if variant.load.target != TargetKind::Search {
            continue;
        }
        let key = (variant.cluster.merger, variant.cluster.root_args.clone());
        if cluster.roots.contains_key(&key) {
            continue;
        }
        let mut args = root_args(&cluster.processes, index.manifest.shard_count, any_port)?;
        if variant.cluster.merger == MergerPlacement::Embedded {
            // Drop `--merger URL`: this root merges in process.
            if let Some(at) = args.iter().position(|arg| arg == "--merger") {
                args.drain(at..at + 2);
            }
        }
        args.extend(variant.cluster.root_args.iter().map(OsString::from));
        if let Some(tls) = &cluster.tls {
            args.extend(tls.0.root_args());
        }
        let role = Role::Root { index: root_count };
        root_count += 1;
        cluster.processes.start(launcher, role, &args)?;
        cluster.processes.admit_all(deadline).await?;
        let addr = cluster
            .processes
            .process(role)
            .context("the root is missing from the cluster")?
            .addr;
        wait_until_serving_over(addr, client_tls.as_ref(), SEARCH_SERVICE_NAME, deadline)
            .await
            .with_context(|| {
                format!("the root of variant {} did not become ready", variant.name)
            })?;
        cluster.roots.insert(key, addr);
    }
    Ok(())
}

/// One leaf's flags: its search threads and the scenario's leaf flags with
/// `{shard}`, `{replica}` and `{leaf}` replaced.
fn leaf_args(leaves: &LeavesSpec, shard: u32, replica: u32) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(threads) = leaves.search_threads {
        args.push(OsString::from("--search-threads"));
        args.push(OsString::from(threads.to_string()));
    }
    let leaf = shard * leaves.replicas + replica;
    args.extend(leaves.leaf_args.iter().map(|arg| {
        OsString::from(
            arg.replace("{shard}", &shard.to_string())
                .replace("{replica}", &replica.to_string())
                .replace("{leaf}", &leaf.to_string()),
        )
    }));
    args
}

/// Every round, every rate, every variant in turn; returns the comparison.
async fn run_rounds(
    scenario: &Scenario,
    options: &ScenarioOptions,
    rounds: u32,
    runs_dir: &Path,
    clusters: &[RunningCluster],
    variant_cluster: &[usize],
    queries: &[QuerySet],
) -> anyhow::Result<Comparison> {
    let keep_samples: Vec<bool> = scenario
        .variants
        .iter()
        .map(|variant| {
            scenario
                .ideals
                .iter()
                .any(|ideal| ideal.from == variant.name)
        })
        .collect();
    let most_rates = scenario
        .variants
        .iter()
        .map(|variant| variant.load.rates.len())
        .max()
        .unwrap_or(1);
    let mut results: Vec<RunResult> = Vec::new();
    let mut targets: Vec<Option<LoadTarget>> = vec![None; scenario.variants.len()];
    for round in 0..rounds {
        for rate_index in 0..most_rates {
            for (variant_index, variant) in scenario.variants.iter().enumerate() {
                let Some(&rate) = variant.load.rates.get(rate_index) else {
                    continue;
                };
                let target = match &targets[variant_index] {
                    Some(target) => target.clone(),
                    None => {
                        let cluster = &clusters[variant_cluster[variant_index]];
                        let tls = cluster.tls.as_ref().map(ClusterTls::target);
                        let target = connect(variant, cluster.target_addr(variant)?, tls).await?;
                        targets[variant_index] = Some(target.clone());
                        target
                    }
                };
                let sweep = variant.load.rates.len() > 1;
                let stem = if sweep {
                    format!("{}-r{}-{}", variant.name, round + 1, rate)
                } else {
                    format!("{}-r{}", variant.name, round + 1)
                };
                let schedule = Schedule::new(
                    rate,
                    variant.load.arrivals,
                    variant.load.seed.wrapping_add(u64::from(round)),
                )?;
                let mut run_options = RunOptions::new(StopCondition::Duration(
                    options.duration.unwrap_or(variant.load.duration),
                ));
                run_options.label = Some(stem.clone());
                run_options.warmup = variant.load.warmup;
                run_options.timeout = variant.load.timeout;
                run_options.hdr_log = Some(runs_dir.join(format!("{stem}.hlog")));
                run_options.keep_shard_samples = keep_samples[variant_index];
                let outcome = run_load_detailed(
                    &target,
                    &schedule,
                    &queries[variant_index],
                    &run_options,
                    std::future::pending(),
                )
                .await?;
                outcome
                    .report
                    .write_json(&runs_dir.join(format!("{stem}.json")))?;
                let latency = &outcome.report.latency;
                eprintln!(
                    "scenario: round {}/{rounds} {:<16} {:>7} req/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} requests, {} errors{}",
                    round + 1,
                    variant.name,
                    rate,
                    latency.p50_us as f64 / 1e3,
                    latency.p99_us as f64 / 1e3,
                    latency.slowest_us as f64 / 1e3,
                    outcome.report.count,
                    outcome.report.errors,
                    if outcome.report.generator.behind_schedule {
                        " (the generator fell behind)"
                    } else {
                        ""
                    },
                );
                results.push(RunResult {
                    variant: variant_index,
                    rate,
                    round,
                    outcome,
                });
            }
        }
    }
    Comparison::build(scenario, results)
}

async fn connect(
    variant: &Variant,
    addr: SocketAddr,
    tls: Option<crate::target::TargetTls>,
) -> anyhow::Result<LoadTarget> {
    let spec = TargetSpec {
        tls,
        kind: variant.load.target,
        addr: addr.to_string(),
        connections: variant.load.connections,
        request: RequestTemplate {
            k: variant.load.k,
            hedge: variant.load.hedge,
            ..RequestTemplate::default()
        },
    };
    LoadTarget::connect(spec)
        .await
        .with_context(|| format!("cannot connect to variant {}'s target", variant.name))
}

/// Reads and checks a scenario file and the files it names, without
/// starting anything.
pub fn load_checked(path: &Path) -> Result<Scenario, LoadgenError> {
    let scenario = Scenario::load(path)?;
    check_files(&scenario).map_err(|error| LoadgenError::Scenario {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    Ok(scenario)
}

/// Checks that every variant's corpus and queries are readable files,
/// without starting anything.
pub fn check_files(scenario: &Scenario) -> anyhow::Result<()> {
    for variant in &scenario.variants {
        let corpus = &variant.cluster.leaves.corpus;
        if !corpus.is_file() {
            bail!(
                "variant {}: the corpus {} is not a readable file",
                variant.name,
                corpus.display()
            );
        }
        if !variant.load.queries.is_file() {
            bail!(
                "variant {}: the queries {} are not a readable file",
                variant.name,
                variant.load.queries.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scenarios_parse_and_name_bundled_corpora() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&folder).expect("loadgen/scenarios exists") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_none_or(|extension| extension != "toml") {
                continue;
            }
            let scenario =
                Scenario::load(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            for variant in &scenario.variants {
                assert!(
                    variant.cluster.leaves.corpus.is_file(),
                    "{}: {} is not bundled",
                    path.display(),
                    variant.cluster.leaves.corpus.display()
                );
            }
            names.push(scenario.name);
        }
        names.sort();
        assert_eq!(
            names,
            [
                "fanout-scaling",
                "hedging-idle",
                "hedging-inherent",
                "hedging-pareto",
                "hedging-stragglers",
                "hedging-stragglers-4x3",
                "overhead",
                "overload",
                "result-cache",
                "throughput",
                "tls-overhead",
                "tracing-overhead"
            ]
        );
    }

    #[test]
    fn leaf_flags_get_their_placeholders_replaced() {
        let leaves = LeavesSpec {
            corpus: PathBuf::from("c"),
            shards: 4,
            replicas: 3,
            search_threads: Some(2),
            leaf_args: vec!["--fault".into(), "seed={leaf}:{shard}.{replica}".into()],
            id_field: "id".into(),
            title_field: "title".into(),
            text_field: "text".into(),
            tls: false,
            tracing: false,
        };
        let args = leaf_args(&leaves, 2, 1);
        assert_eq!(
            args,
            ["--search-threads", "2", "--fault", "seed=7:2.1"].map(OsString::from)
        );
    }
}
