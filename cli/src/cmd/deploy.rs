//! `fanout deploy`: what a deployment needs besides the serving roles.
//!
//! - `fanout deploy kubernetes`: renders the shard-dependent Kubernetes
//!   objects (the `fanout-deploy` library: one StatefulSet, headless Service
//!   and PodDisruptionBudget per shard, and the root's topology) into a
//!   folder, an overlay's `generated/`; with `--check`, compares the folder
//!   with a fresh render instead (exit 1 when they differ).
//! - `fanout deploy copy-shard`: the leaf pods' init container: copies
//!   `index.json` and one shard from the index image into the pod's volume,
//!   refusing an index of another shard count.
//! - `fanout deploy check-index DIR`: checks that DIR holds a finished index
//!   (the index image's build step).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use fanout_deploy::{KubernetesOptions, Resources, differences, preset, presets, render};
use fanout_leaf::{
    GLOBAL_STATS_FILE_NAME, INDEX_MANIFEST_FILE_NAME, IndexManifest, read_index_manifest,
    read_shard_manifest, shard_dir_name,
};

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub target: DeployTarget,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub enum DeployTarget {
    /// Render the shard-dependent Kubernetes objects (StatefulSets, headless
    /// Services, PodDisruptionBudgets, the root's topology) for S shards x R
    /// replicas into an overlay's generated/ folder (docs/kubernetes.md).
    Kubernetes(KubernetesArgs),
    /// Copy index.json and one shard of an index into a leaf's volume: the
    /// init container of the Kubernetes leaf pods.
    CopyShard(CopyShardArgs),
    /// Check that a folder holds a finished index (index.json, and every
    /// shard with its manifest and global statistics).
    CheckIndex(CheckIndexArgs),
}

fn preset_names() -> PossibleValuesParser {
    PossibleValuesParser::new(presets().into_iter().map(|(name, _)| name))
}

#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// Start from a committed overlay's options (`small`: 2 x 2; `production`:
    /// 8 x 3, mTLS, Guaranteed resources, zone spread); other flags change them.
    #[arg(long, value_parser = preset_names())]
    pub preset: Option<String>,
    /// S: the number of shards, one StatefulSet each (the index must have as
    /// many). Required without --preset.
    #[arg(long, required_unless_present = "preset")]
    pub shards: Option<u32>,
    /// R: leaf pods per shard. Required without --preset.
    #[arg(long, required_unless_present = "preset")]
    pub replicas: Option<u32>,
    /// The namespace (part of the shards' DNS names: the overlay's
    /// `namespace:` must be the same) [default: fanout].
    #[arg(long)]
    pub namespace: Option<String>,
    /// The cluster's DNS domain [default: cluster.local].
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// The fanout image [default: the one deploy/build-image tags].
    #[arg(long)]
    pub image: Option<String>,
    /// The index image of the generation to serve [default: fanout/index:g1].
    #[arg(long)]
    pub index_image: Option<String>,
    /// sizeLimit of the emptyDir holding a leaf pod's copy of its shard.
    #[arg(long)]
    pub index_size_limit: Option<String>,
    /// The leaves' --search-threads (best equal to their CPU limit).
    #[arg(long)]
    pub search_threads: Option<u32>,
    /// mTLS between root and leaves, from the Secret fanout-leaf-tls
    /// (`--tls=false` turns a preset's off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls: Option<bool>,
    /// Also spread each shard's replicas over zones, best effort.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub zone_spread: Option<bool>,
    /// A request of the leaf container, RESOURCE=QUANTITY (repeat it); any
    /// --leaf-request or --leaf-limit replaces all the default leaf resources.
    #[arg(long, value_name = "RESOURCE=QUANTITY")]
    pub leaf_request: Vec<String>,
    /// A limit of the leaf container, RESOURCE=QUANTITY (repeat it).
    #[arg(long, value_name = "RESOURCE=QUANTITY")]
    pub leaf_limit: Vec<String>,
    /// A request of the index-copying init container (repeat it); any
    /// --copy-request or --copy-limit replaces all its default resources.
    #[arg(long, value_name = "RESOURCE=QUANTITY")]
    pub copy_request: Vec<String>,
    /// A limit of the index-copying init container (repeat it).
    #[arg(long, value_name = "RESOURCE=QUANTITY")]
    pub copy_limit: Vec<String>,
    /// The folder to write (kustomization.yaml, shards.yaml, topology.toml);
    /// without it the files are printed.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write nothing: exit 1 when --out differs from a fresh render.
    #[arg(long, requires = "out")]
    pub check: bool,
}

/// A checked `fanout deploy kubernetes`.
pub struct KubernetesPlan {
    options: KubernetesOptions,
    out: Option<PathBuf>,
    check: bool,
}

impl KubernetesArgs {
    pub fn validate(self) -> anyhow::Result<KubernetesPlan> {
        let mut options = match (&self.preset, self.shards, self.replicas) {
            (Some(name), _, _) => {
                preset(name).with_context(|| format!("no preset called {name:?}"))?
            }
            (None, Some(shards), Some(replicas)) => KubernetesOptions::new(
                shards,
                replicas,
                self.namespace.as_deref().unwrap_or("fanout"),
            ),
            (None, _, _) => bail!("give --shards and --replicas, or a --preset"),
        };
        if let Some(shards) = self.shards {
            options.shards = shards;
        }
        if let Some(replicas) = self.replicas {
            options.replicas = replicas;
        }
        let set = |target: &mut String, value: Option<String>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut options.namespace, self.namespace);
        set(&mut options.cluster_domain, self.cluster_domain);
        set(&mut options.image, self.image);
        set(&mut options.index_image, self.index_image);
        set(&mut options.index_size_limit, self.index_size_limit);
        if self.search_threads.is_some() {
            options.search_threads = self.search_threads;
        }
        if let Some(tls) = self.tls {
            options.tls = tls;
        }
        if let Some(zone_spread) = self.zone_spread {
            options.zone_spread = zone_spread;
        }
        if let Some(resources) = resources("--leaf", &self.leaf_request, &self.leaf_limit)? {
            options.leaf_resources = resources;
        }
        if let Some(resources) = resources("--copy", &self.copy_request, &self.copy_limit)? {
            options.index_copy_resources = resources;
        }
        options.validate().map_err(anyhow::Error::msg)?;
        Ok(KubernetesPlan {
            options,
            out: self.out,
            check: self.check,
        })
    }
}

/// The resources given by `<prefix>-request` and `<prefix>-limit`, or None
/// when neither was given.
fn resources(
    prefix: &str,
    requests: &[String],
    limits: &[String],
) -> anyhow::Result<Option<Resources>> {
    if requests.is_empty() && limits.is_empty() {
        return Ok(None);
    }
    let pair = |kind: &str, pair: &str| -> anyhow::Result<(String, String)> {
        let (resource, quantity) = pair.split_once('=').with_context(|| {
            format!("{prefix}-{kind} takes RESOURCE=QUANTITY (cpu=500m), not {pair:?}")
        })?;
        Ok((resource.to_owned(), quantity.to_owned()))
    };
    let mut resources = Resources::new();
    for request in requests {
        let (resource, quantity) = pair("request", request)?;
        resources = resources.request(&resource, &quantity);
    }
    for limit in limits {
        let (resource, quantity) = pair("limit", limit)?;
        resources = resources.limit(&resource, &quantity);
    }
    Ok(Some(resources))
}

#[derive(Debug, Clone, Args)]
pub struct CopyShardArgs {
    /// The index: the folder `fanout index --out` wrote (in the index image:
    /// /index-src).
    #[arg(long)]
    pub from: PathBuf,
    /// The leaf's volume; gets index.json and shard-<SHARD>/.
    #[arg(long)]
    pub to: PathBuf,
    /// The shard to copy.
    #[arg(long)]
    pub shard: u32,
    /// The shard count the deployment expects; an index of another is refused.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
}

/// A checked `fanout deploy copy-shard`.
pub struct CopyShardPlan {
    from: PathBuf,
    to: PathBuf,
    shard: u32,
    shards: u32,
}

impl CopyShardArgs {
    pub fn validate(self) -> anyhow::Result<CopyShardPlan> {
        if self.shard >= self.shards {
            bail!(
                "--shard {} is not below --shards {}",
                self.shard,
                self.shards
            );
        }
        Ok(CopyShardPlan {
            from: self.from,
            to: self.to,
            shard: self.shard,
            shards: self.shards,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckIndexArgs {
    /// The folder `fanout index --out` wrote.
    pub dir: PathBuf,
}

/// A checked `fanout deploy`.
pub enum DeployPlan {
    Kubernetes(Box<KubernetesPlan>),
    CopyShard(CopyShardPlan),
    CheckIndex(PathBuf),
}

impl DeployArgs {
    pub fn validate(self) -> anyhow::Result<DeployPlan> {
        Ok(match self.target {
            DeployTarget::Kubernetes(args) => DeployPlan::Kubernetes(Box::new(args.validate()?)),
            DeployTarget::CopyShard(args) => DeployPlan::CopyShard(args.validate()?),
            DeployTarget::CheckIndex(args) => DeployPlan::CheckIndex(args.dir),
        })
    }
}

pub async fn run(plan: DeployPlan) -> anyhow::Result<ExitCode> {
    match plan {
        DeployPlan::Kubernetes(plan) => kubernetes(*plan),
        DeployPlan::CopyShard(plan) => {
            tokio::task::spawn_blocking(move || copy_shard(&plan)).await?
        }
        DeployPlan::CheckIndex(dir) => {
            let index = check_index(&dir)?;
            println!(
                "{}: a finished index, generation {}, {} shards, {} documents",
                dir.display(),
                index.generation,
                index.shard_count,
                index.doc_count
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn kubernetes(plan: KubernetesPlan) -> anyhow::Result<ExitCode> {
    let KubernetesPlan {
        options,
        out,
        check,
    } = plan;
    let files = render(&options);
    let Some(out) = out else {
        for (name, content) in &files {
            println!("# ==> {name} <==\n{content}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    if check {
        let stale = differences(&out, &files);
        if stale.is_empty() {
            println!("{} is what fanout deploy kubernetes renders", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        for problem in &stale {
            eprintln!("stale: {problem}");
        }
        eprintln!(
            "regenerate with: fanout deploy kubernetes {} --out {}",
            options.command_line(),
            out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, content) in &files {
        let path = out.join(name);
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    for extra in differences(&out, &files) {
        eprintln!("warning: {extra}");
    }
    println!(
        "wrote {} shards x {} replicas (namespace {}) to {}",
        options.shards,
        options.replicas,
        options.namespace,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks that `dir` holds a finished index: `index.json`, and every shard
/// it lists with a manifest of the same build and its global statistics.
fn check_index(dir: &Path) -> anyhow::Result<IndexManifest> {
    // The leaf's error names the file and the reason (as its message: its
    // source would print the reason twice).
    let index = read_index_manifest(dir)
        .map_err(|error| anyhow::anyhow!("{} holds no finished index: {error}", dir.display()))?;
    for entry in &index.shards {
        let shard_dir = dir.join(&entry.dir);
        let shard = read_shard_manifest(&shard_dir)?;
        if shard.generation != index.generation
            || shard.shard_count != index.shard_count
            || shard.shard_id != entry.shard_id
        {
            bail!(
                "{} is shard {} of {} of generation {:?}, but {} lists it as shard {} of {} of generation {:?}",
                shard_dir.display(),
                shard.shard_id,
                shard.shard_count,
                shard.generation,
                dir.join(INDEX_MANIFEST_FILE_NAME).display(),
                entry.shard_id,
                index.shard_count,
                index.generation
            );
        }
        let stats = shard_dir.join(GLOBAL_STATS_FILE_NAME);
        if !stats.is_file() {
            bail!(
                "{} is missing: rebuild the index with fanout index",
                stats.display()
            );
        }
    }
    Ok(index)
}

/// The copy: into `<to>/.staging` first, then the shard and `index.json`
/// renamed into place, `index.json` last (as the build writes it), so that
/// a leaf never opens half a copy and a restarted copy starts over.
fn copy_shard(plan: &CopyShardPlan) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let CopyShardPlan {
        from,
        to,
        shard,
        shards,
    } = plan;
    let index = check_index(from)?;
    if index.shard_count != *shards {
        bail!(
            "{} is an index of {} shards, but this deployment has {shards}: build the index \
             with --shards {shards}, or render the manifests for {} shards",
            from.display(),
            index.shard_count,
            index.shard_count
        );
    }
    let entry = &index.shards[*shard as usize];
    let name = shard_dir_name(*shard);
    let target = to.join(&name);
    let in_place = read_index_manifest(to)
        .is_ok_and(|copied| copied.generation == index.generation)
        && read_shard_manifest(&target).is_ok_and(|copied| copied.generation == index.generation);
    if in_place {
        println!(
            "shard {shard} of {shards} (generation {}) is already in {}",
            index.generation,
            target.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let staging = to.join(".staging");
    remove_if_present(&staging)?;
    remove_if_present(&to.join(INDEX_MANIFEST_FILE_NAME))?;
    remove_if_present(&target)?;
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let bytes = copy_tree(&from.join(&entry.dir), &staging.join(&name))?;
    copy_file(
        &from.join(INDEX_MANIFEST_FILE_NAME),
        &staging.join(INDEX_MANIFEST_FILE_NAME),
    )?;
    rename(&staging.join(&name), &target)?;
    rename(
        &staging.join(INDEX_MANIFEST_FILE_NAME),
        &to.join(INDEX_MANIFEST_FILE_NAME),
    )?;
    std::fs::remove_dir(&staging)
        .with_context(|| format!("cannot remove {}", staging.display()))?;
    println!(
        "shard {shard} of {shards} (generation {}, {} documents, {:.1} MiB) copied to {} in {:.1?}",
        index.generation,
        entry.doc_count,
        bytes as f64 / 1048576.0,
        target.display(),
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => Err(error),
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    removed.with_context(|| format!("cannot remove {}", path.display()))
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<u64> {
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

/// Copies the folder `from` to `to` (which must not exist): folders and
/// regular files only. Returns the bytes copied.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut bytes = 0;
    let entries =
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let source = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", source.display()))?;
        let destination = to.join(entry.file_name());
        if kind.is_dir() {
            bytes += copy_tree(&source, &destination)?;
        } else if kind.is_file() {
            bytes += copy_file(&source, &destination)?;
        } else {
            bail!(
                "{} is neither a file nor a folder: not part of an index",
                source.display()
            );
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::Cli;

    fn plan(args: &[&str]) -> anyhow::Result<KubernetesPlan> {
        let mut all = vec!["fanout", "deploy", "kubernetes"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        let crate::cmd::Command::Deploy(DeployArgs {
            target: DeployTarget::Kubernetes(args),
        }) = cli.command
        else {
            panic!("parsed as another subcommand");
        };
        args.validate()
    }

    #[test]
    fn every_command_line_in_a_header_renders_the_same_options() {
        let mut custom = KubernetesOptions::new(5, 3, "search");
        custom.cluster_domain = "corp.example".into();
        custom.image = "registry.example/fanout:1".into();
        custom.index_size_limit = "9Gi".into();
        custom.zone_spread = true;
        custom.leaf_resources = Resources::guaranteed(&[("cpu", "2"), ("memory", "4Gi")]);
        let mut cases: Vec<KubernetesOptions> =
            presets().into_iter().map(|(_, options)| options).collect();
        cases.push(custom);
        cases.push(KubernetesOptions::new(1, 1, "fanout"));
        for options in cases {
            let line = options.command_line();
            let args: Vec<&str> = line.split(' ').collect();
            let parsed = plan(&args).unwrap_or_else(|error| panic!("{line}: {error:#}"));
            assert_eq!(parsed.options, options, "{line}");
        }
    }

    #[test]
    fn a_preset_takes_overrides() {
        let plan = plan(&["--preset", "production", "--shards", "12", "--tls=false"]).unwrap();
        assert_eq!(plan.options.shards, 12);
        assert!(!plan.options.tls);
        assert_eq!(plan.options.replicas, 3);
        assert!(plan.options.zone_spread);
    }

    #[test]
    fn bad_shapes_and_flags_are_refused() {
        assert!(plan(&["--shards", "2"]).is_err(), "--replicas is required");
        assert!(plan(&["--preset", "huge"]).is_err());
        assert!(plan(&["--shards", "2", "--replicas", "2", "--check"]).is_err());
        let error = plan(&["--shards", "0", "--replicas", "2"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("shards must be in 1..=1000"), "{error}");
        let error = plan(&["--shards", "2", "--replicas", "2", "--leaf-limit", "cpu"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("RESOURCE=QUANTITY"), "{error}");
        let error = plan(&["--shards", "2", "--replicas", "2", "--leaf-limit", "cpu=1"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("needs a cpu request"), "{error}");
    }

    #[test]
    fn copy_shard_needs_a_shard_below_the_count() {
        let args = CopyShardArgs {
            from: "a".into(),
            to: "b".into(),
            shard: 2,
            shards: 2,
        };
        assert!(args.validate().is_err());
    }
}
