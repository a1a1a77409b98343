//! The scenario file: a TOML description of a cluster, a load, the variants
//! to compare and how to compare them. `loadgen/scenarios/` holds the shipped
//! ones; `loadgen/SCENARIOS.md` documents every key.
//!
//! A variant starts from the top-level `[cluster]` and `[load]` and overrides
//! any of their keys, so a file says once what its variants share and, per
//! variant, only what differs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fanout_runtime::duration::parse_duration;
use serde::Deserialize;

use crate::error::LoadgenError;
use crate::queries::{QueryFormat, QueryOrder};
use crate::schedule::ArrivalProcess;
use crate::target::{HedgeRequest, TargetKind};

/// A scenario file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    /// Times each variant runs; rounds alternate variants (A B A B).
    #[serde(default = "default_rounds")]
    rounds: u32,
    #[serde(default)]
    cluster: ClusterKeys,
    #[serde(default)]
    load: LoadKeys,
    #[serde(rename = "variant", default)]
    variants: Vec<VariantFile>,
    #[serde(default)]
    compare: CompareKeys,
    overload: Option<OverloadKeys>,
}

/// `[overload]`: the scenario finds the knee with its `load.rate` sweep (on
/// the baseline variant), then runs every variant through the knee rate,
/// twice it and half it, in one run each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverloadKeys {
    /// The knee is the highest rate of the sweep whose p99 stays under this.
    knee_p99: String,
    /// And whose errors stay under this share (default 0.01).
    knee_max_errors: Option<f64>,
    /// How long each of the three phases lasts.
    phase: String,
}

/// How an overload scenario runs; see [`crate::scenario::overload`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverloadSpec {
    pub knee_p99: Duration,
    pub knee_max_errors: f64,
    pub phase: Duration,
}

fn default_rounds() -> u32 {
    2
}

/// `[cluster]`, and the cluster keys of a `[[variant]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterKeys {
    corpus: Option<PathBuf>,
    shards: Option<u32>,
    replicas: Option<u32>,
    /// `embedded` or `process`.
    merger: Option<String>,
    /// `--search-threads` of every leaf.
    search_threads: Option<u32>,
    /// Flags of every leaf; `{shard}`, `{replica}` and `{leaf}` (a number
    /// unique in the cluster) are replaced, e.g. `seed={leaf}`.
    leaf_args: Option<Vec<String>>,
    root_args: Option<Vec<String>>,
    id_field: Option<String>,
    title_field: Option<String>,
    text_field: Option<String>,
    /// TLS on every hop (a CA made for the run; mutual TLS between the
    /// root and its leaves and merger; the load over TLS).
    tls: Option<bool>,
    /// Every process exports its spans over OTLP, every request sampled,
    /// to a receiver the run starts (which counts them).
    tracing: Option<bool>,
}

/// `[load]`, and the load keys of a `[[variant]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadKeys {
    /// `search` (the root) or `leaf` (shard 0's first replica, directly).
    target: Option<String>,
    /// Requests per second; a list makes a sweep (one run per rate).
    rate: Option<RateKey>,
    /// `constant` or `poisson`.
    arrivals: Option<String>,
    warmup: Option<String>,
    duration: Option<String>,
    timeout: Option<String>,
    queries: Option<PathBuf>,
    /// `auto`, `plain`, `benchmark-game` or `beir`.
    query_format: Option<String>,
    /// `file` or `shuffled`.
    order: Option<String>,
    seed: Option<u64>,
    k: Option<u32>,
    connections: Option<usize>,
    /// Per-request hedging: `default` (the root's), `off`, `adaptive`, `fixed:<ms>`.
    hedge: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RateKey {
    One(f64),
    Sweep(Vec<f64>),
}

/// A `[[variant]]` as written: its name, and cluster and load keys mixed
/// (serde cannot flatten two structs and still refuse unknown keys, so they
/// are split by name in [`VariantKeys::split`]).
#[derive(Debug, Clone, Deserialize)]
struct VariantFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(flatten)]
    rest: toml::Table,
}

/// The keys of `[cluster]`, which a variant may also set.
const CLUSTER_KEYS: &[&str] = &[
    "corpus",
    "shards",
    "replicas",
    "merger",
    "search_threads",
    "leaf_args",
    "root_args",
    "id_field",
    "title_field",
    "text_field",
    "tls",
    "tracing",
];

struct VariantKeys {
    name: String,
    description: String,
    cluster: ClusterKeys,
    load: LoadKeys,
}

impl VariantKeys {
    fn split(file: &VariantFile) -> Result<VariantKeys, String> {
        let (cluster, load): (toml::Table, toml::Table) = file
            .rest
            .clone()
            .into_iter()
            .partition(|(key, _)| CLUSTER_KEYS.contains(&key.as_str()));
        let in_variant =
            |error: toml::de::Error| format!("variant {:?}: {}", file.name, error.message());
        Ok(VariantKeys {
            name: file.name.clone(),
            description: file.description.clone(),
            cluster: cluster.try_into().map_err(in_variant)?,
            load: load.try_into().map_err(in_variant)?,
        })
    }
}

/// `[compare]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareKeys {
    /// The variant every other is divided by (default: the first).
    baseline: Option<String>,
    /// With a rate sweep: the p99 a rate must keep to count as sustainable.
    p99_target: Option<String>,
    /// Ideal hedging bounds to compute: `{ variant = "adaptive", from = "off" }`.
    #[serde(default)]
    ideal: Vec<IdealKeys>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdealKeys {
    /// The hedged variant whose hedge rate and latency are compared.
    variant: String,
    /// The hedging-off variant whose shard timings are resampled.
    from: String,
}

/// A scenario, validated: every variant complete.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub rounds: u32,
    pub variants: Vec<Variant>,
    pub baseline: String,
    pub p99_target: Option<Duration>,
    pub ideals: Vec<IdealSpec>,
    /// Set: an overload scenario (the rates of `load.rate` find the knee).
    pub overload: Option<OverloadSpec>,
}

/// One thing measured: a cluster and a load.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub cluster: ClusterSpec,
    pub load: LoadSpec,
}

/// Where the merge runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MergerPlacement {
    Embedded,
    Process,
}

/// The leaves of a variant: variants with equal leaves share the processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeavesSpec {
    pub corpus: PathBuf,
    pub shards: u32,
    pub replicas: u32,
    pub search_threads: Option<u32>,
    pub leaf_args: Vec<String>,
    pub id_field: String,
    pub title_field: String,
    pub text_field: String,
    /// TLS on every hop.
    pub tls: bool,
    /// Spans exported over OTLP by every process, all sampled.
    pub tracing: bool,
}

/// A variant's whole cluster: its leaves, its merger, its root's flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterSpec {
    pub leaves: LeavesSpec,
    pub merger: MergerPlacement,
    pub root_args: Vec<String>,
}

/// A variant's load.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    pub target: TargetKind,
    /// One rate, or several for a sweep.
    pub rates: Vec<f64>,
    pub arrivals: ArrivalProcess,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub queries: PathBuf,
    pub query_format: QueryFormat,
    pub order: QueryOrder,
    pub seed: u64,
    pub k: u32,
    pub connections: usize,
    pub hedge: HedgeRequest,
}

/// Compare `variant`'s measured latency with the ideal computed from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdealSpec {
    pub variant: String,
    pub from: String,
}

impl Scenario {
    /// Reads and validates a scenario file; relative paths in it are taken
    /// from the file's folder.
    pub fn load(path: &Path) -> Result<Scenario, LoadgenError> {
        let text = std::fs::read_to_string(path).map_err(|error| LoadgenError::Scenario {
            path: path.to_path_buf(),
            reason: format!("cannot read it: {error}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Scenario::parse(&text, base).map_err(|reason| LoadgenError::Scenario {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses scenario TOML; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Scenario, String> {
        let file: ScenarioFile = toml::from_str(text).map_err(|error| error.to_string())?;
        if file.name.trim().is_empty() {
            return Err("`name` must not be empty".to_string());
        }
        if file.rounds == 0 {
            return Err("`rounds` must be at least 1".to_string());
        }
        if file.variants.is_empty() {
            return Err("a scenario needs at least one [[variant]]".to_string());
        }
        let mut names = BTreeSet::new();
        let mut variants = Vec::with_capacity(file.variants.len());
        for written in &file.variants {
            let keys = &VariantKeys::split(written)?;
            if !is_plain_name(&keys.name) {
                return Err(format!(
                    "variant name {:?} must be letters, digits, '-', '_' or '.'",
                    keys.name
                ));
            }
            if !names.insert(keys.name.clone()) {
                return Err(format!("two variants are named {:?}", keys.name));
            }
            let variant = complete_variant(&file, keys, base)
                .map_err(|reason| format!("variant {:?}: {reason}", keys.name))?;
            variants.push(variant);
        }
        let known = |name: &str, key: &str| -> Result<String, String> {
            if names.contains(name) {
                Ok(name.to_string())
            } else {
                Err(format!("{key} names no variant: {name:?}"))
            }
        };
        let baseline = match &file.compare.baseline {
            Some(name) => known(name, "compare.baseline")?,
            None => variants[0].name.clone(),
        };
        let p99_target = file
            .compare
            .p99_target
            .as_deref()
            .map(|text| {
                parse_duration(text).map_err(|error| format!("compare.p99_target: {error}"))
            })
            .transpose()?;
        let overload = match &file.overload {
            None => None,
            Some(keys) => {
                let knee_p99 = parse_duration(&keys.knee_p99)
                    .map_err(|error| format!("overload.knee_p99: {error}"))?;
                let phase = parse_duration(&keys.phase)
                    .map_err(|error| format!("overload.phase: {error}"))?;
                let knee_max_errors = keys.knee_max_errors.unwrap_or(0.01);
                if !(0.0..1.0).contains(&knee_max_errors) {
                    return Err(format!(
                        "overload.knee_max_errors must be in [0, 1), not {knee_max_errors}"
                    ));
                }
                if phase.is_zero() {
                    return Err("overload.phase must be above zero".to_string());
                }
                if let Some(variant) = variants
                    .iter()
                    .find(|variant| variant.load.target != TargetKind::Search)
                {
                    return Err(format!(
                        "an overload scenario loads the root: variant {:?} targets a leaf",
                        variant.name
                    ));
                }
                Some(OverloadSpec {
                    knee_p99,
                    knee_max_errors,
                    phase,
                })
            }
        };
        let has_sweep = variants.iter().any(|variant| variant.load.rates.len() > 1);
        if has_sweep && p99_target.is_none() && overload.is_none() {
            return Err("a rate sweep needs compare.p99_target".to_string());
        }
        let mut ideals = Vec::new();
        for ideal in &file.compare.ideal {
            let spec = IdealSpec {
                variant: known(&ideal.variant, "compare.ideal.variant")?,
                from: known(&ideal.from, "compare.ideal.from")?,
            };
            let from = variants
                .iter()
                .find(|variant| variant.name == spec.from)
                .expect("checked above");
            if from.load.target != TargetKind::Search {
                return Err(format!(
                    "compare.ideal.from {:?} must target search (its shard timings are resampled)",
                    spec.from
                ));
            }
            ideals.push(spec);
        }
        Ok(Scenario {
            name: file.name,
            description: file.description,
            rounds: file.rounds,
            variants,
            baseline,
            p99_target,
            ideals,
            overload,
        })
    }

    /// Variants that share leaves, as (leaves, variant indexes), in first-use order.
    pub fn leaf_groups(&self) -> Vec<(LeavesSpec, Vec<usize>)> {
        let mut groups: Vec<(LeavesSpec, Vec<usize>)> = Vec::new();
        for (index, variant) in self.variants.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(leaves, _)| *leaves == variant.cluster.leaves)
            {
                Some((_, members)) => members.push(index),
                None => groups.push((variant.cluster.leaves.clone(), vec![index])),
            }
        }
        groups
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The variant's keys over the file's, checked.
fn complete_variant(
    file: &ScenarioFile,
    keys: &VariantKeys,
    base: &Path,
) -> Result<Variant, String> {
    let cluster = &file.cluster;
    let own = &keys.cluster;
    let pick = |mine: &Option<String>, shared: &Option<String>| mine.clone().or(shared.clone());
    let corpus = own
        .corpus
        .clone()
        .or(cluster.corpus.clone())
        .ok_or("no cluster.corpus")?;
    let shards = own.shards.or(cluster.shards).unwrap_or(1);
    let replicas = own.replicas.or(cluster.replicas).unwrap_or(1);
    if !(1..=64).contains(&shards) {
        return Err(format!("shards must be 1..=64, not {shards}"));
    }
    if !(1..=8).contains(&replicas) {
        return Err(format!("replicas must be 1..=8, not {replicas}"));
    }
    let merger = match pick(&own.merger, &cluster.merger).as_deref() {
        None | Some("embedded") => MergerPlacement::Embedded,
        Some("process") => MergerPlacement::Process,
        Some(other) => return Err(format!("merger must be embedded or process, not {other:?}")),
    };
    let search_threads = own.search_threads.or(cluster.search_threads);
    if search_threads == Some(0) {
        return Err("search_threads must be at least 1".to_string());
    }
    let leaves = LeavesSpec {
        corpus: base.join(corpus),
        shards,
        replicas,
        search_threads,
        leaf_args: own
            .leaf_args
            .clone()
            .or(cluster.leaf_args.clone())
            .unwrap_or_default(),
        id_field: pick(&own.id_field, &cluster.id_field).unwrap_or_else(|| "id".to_string()),
        title_field: pick(&own.title_field, &cluster.title_field)
            .unwrap_or_else(|| "title".to_string()),
        text_field: pick(&own.text_field, &cluster.text_field)
            .unwrap_or_else(|| "text".to_string()),
        tls: own.tls.or(cluster.tls).unwrap_or(false),
        tracing: own.tracing.or(cluster.tracing).unwrap_or(false),
    };
    let cluster_spec = ClusterSpec {
        leaves,
        merger,
        root_args: own
            .root_args
            .clone()
            .or(cluster.root_args.clone())
            .unwrap_or_default(),
    };
    let load = complete_load(&file.load, &keys.load, base)?;
    Ok(Variant {
        name: keys.name.clone(),
        description: keys.description.clone(),
        cluster: cluster_spec,
        load,
    })
}

fn complete_load(shared: &LoadKeys, own: &LoadKeys, base: &Path) -> Result<LoadSpec, String> {
    let pick = |mine: &Option<String>, theirs: &Option<String>| mine.clone().or(theirs.clone());
    let duration_key = |name: &str, value: Option<String>, default: &str| {
        parse_duration(value.as_deref().unwrap_or(default))
            .map_err(|error| format!("{name}: {error}"))
    };
    let target = match pick(&own.target, &shared.target).as_deref() {
        None | Some("search") => TargetKind::Search,
        Some("leaf") => TargetKind::Leaf,
        Some(other) => return Err(format!("target must be search or leaf, not {other:?}")),
    };
    let rates = match own.rate.clone().or(shared.rate.clone()) {
        None => return Err("no load.rate".to_string()),
        Some(RateKey::One(rate)) => vec![rate],
        Some(RateKey::Sweep(rates)) => rates,
    };
    if rates.is_empty() || rates.iter().any(|rate| !(rate.is_finite() && *rate > 0.0)) {
        return Err(format!("rates must be positive numbers, not {rates:?}"));
    }
    let arrivals = match pick(&own.arrivals, &shared.arrivals).as_deref() {
        None | Some("poisson") => ArrivalProcess::Poisson,
        Some("constant") => ArrivalProcess::Constant,
        Some(other) => {
            return Err(format!(
                "arrivals must be constant or poisson, not {other:?}"
            ));
        }
    };
    let query_format = match pick(&own.query_format, &shared.query_format).as_deref() {
        None | Some("auto") => QueryFormat::Auto,
        Some("plain") => QueryFormat::Text,
        Some("benchmark-game") => QueryFormat::BenchmarkGame,
        Some("beir") => QueryFormat::Beir,
        Some(other) => {
            return Err(format!(
                "query_format must be auto, plain, benchmark-game or beir, not {other:?}"
            ));
        }
    };
    let order = match pick(&own.order, &shared.order).as_deref() {
        None | Some("shuffled") => QueryOrder::Shuffled,
        Some("file") => QueryOrder::InOrder,
        Some(other) => return Err(format!("order must be file or shuffled, not {other:?}")),
    };
    let hedge = pick(&own.hedge, &shared.hedge)
        .as_deref()
        .unwrap_or("default")
        .parse()
        .map_err(|error| format!("hedge: {error}"))?;
    let queries = own
        .queries
        .clone()
        .or(shared.queries.clone())
        .ok_or("no load.queries")?;
    let k = own.k.or(shared.k).unwrap_or(10);
    if !(1..=10_000).contains(&k) {
        return Err(format!("k must be 1..=10000, not {k}"));
    }
    let connections = own.connections.or(shared.connections).unwrap_or(4);
    if connections == 0 {
        return Err("connections must be at least 1".to_string());
    }
    Ok(LoadSpec {
        target,
        rates,
        arrivals,
        warmup: duration_key("warmup", pick(&own.warmup, &shared.warmup), "3s")?,
        duration: duration_key("duration", pick(&own.duration, &shared.duration), "20s")?,
        timeout: duration_key("timeout", pick(&own.timeout, &shared.timeout), "5s")?,
        queries: base.join(queries),
        query_format,
        order,
        seed: own.seed.or(shared.seed).unwrap_or(1),
        k,
        connections,
        hedge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEDGING: &str = r#"
        name = "hedging"
        rounds = 3

        [cluster]
        corpus = "corpus.jsonl.gz"
        shards = 8
        replicas = 3
        leaf_args = ["--fault", "seed={leaf}", "--fault", "straggler=0.01x10"]

        [load]
        rate = 30
        queries = "queries.txt"

        [[variant]]
        name = "off"
        root_args = ["--hedge", "off"]

        [[variant]]
        name = "adaptive"
        root_args = ["--hedge", "adaptive"]

        [[variant]]
        name = "leaf"
        target = "leaf"
        shards = 1

        [compare]
        baseline = "off"
        ideal = [{ variant = "adaptive", from = "off" }]
    "#;

    #[test]
    fn variants_inherit_the_shared_keys_and_override_their_own() {
        let scenario = Scenario::parse(HEDGING, Path::new("/bench")).unwrap();
        assert_eq!(scenario.rounds, 3);
        assert_eq!(scenario.baseline, "off");
        let [off, adaptive, leaf] = &scenario.variants[..] else {
            panic!("three variants");
        };
        assert_eq!(off.cluster.leaves.shards, 8);
        assert_eq!(
            off.cluster.leaves.corpus,
            Path::new("/bench/corpus.jsonl.gz")
        );
        assert_eq!(off.cluster.root_args, ["--hedge", "off"]);
        assert_eq!(adaptive.cluster.leaves, off.cluster.leaves);
        assert_eq!(leaf.cluster.leaves.shards, 1);
        assert_eq!(leaf.load.target, TargetKind::Leaf);
        assert_eq!(leaf.load.rates, [30.0]);
        assert_eq!(off.load.queries, Path::new("/bench/queries.txt"));
        assert_eq!(off.load.duration, Duration::from_secs(20));
        // off and adaptive share their leaves; leaf has its own.
        let groups = scenario.leaf_groups();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].1, [0, 1]);
        assert_eq!(groups[1].1, [2]);
        assert_eq!(
            scenario.ideals,
            [IdealSpec {
                variant: "adaptive".into(),
                from: "off".into()
            }]
        );
    }

    #[test]
    fn mistakes_are_named() {
        let error = |text: &str| Scenario::parse(text, Path::new(".")).unwrap_err();
        let minimal =
            "name = \"x\"\n[cluster]\ncorpus = \"c\"\n[load]\nrate = 10\nqueries = \"q\"\n";
        assert!(error("name = \"x\"").contains("variant"));
        assert!(
            error(&format!("{minimal}[[variant]]\nname = \"a\"\nshards = 0\n"))
                .contains("shards must be 1..=64")
        );
        assert!(
            error(&format!(
                "{minimal}[[variant]]\nname = \"a\"\n[[variant]]\nname = \"a\"\n"
            ))
            .contains("two variants")
        );
        assert!(
            error(&format!(
                "{minimal}[[variant]]\nname = \"a\"\nrate = [10, 20]\n"
            ))
            .contains("p99_target")
        );
        assert!(
            error(&format!("{minimal}[[variant]]\nname = \"a\"\nbogus = 1\n")).contains("bogus")
        );
        assert!(
            error(&format!(
                "{minimal}[[variant]]\nname = \"a\"\n[compare]\nbaseline = \"b\"\n"
            ))
            .contains("compare.baseline")
        );
        assert!(error(&format!("{minimal}[[variant]]\nname = \"a b\"\n")).contains("variant name"));
        assert!(
            error(&format!(
                "{minimal}[[variant]]\nname = \"a\"\nhedge = \"sometimes\"\n"
            ))
            .contains("hedge")
        );
        let bare = error(&format!(
            "{minimal}[[variant]]\nname = \"a\"\nduration = \"30\"\n"
        ));
        assert!(
            bare.contains("duration") && bare.contains("no unit"),
            "{bare}"
        );
    }
}
