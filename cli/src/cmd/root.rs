//! `fanout root`: the public Search and Root APIs over a topology of leaves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fanout_root::auth::Authenticator;
use fanout_root::{
    AdmissionPolicy, AdmissionSettings, CrashSettings, DEFAULT_DEADLINE_MARGIN, DiscoverySettings,
    HedgePolicy, HedgeSettings, HedgeTimer, LatencyEstimate, RootConfig, RootServer,
    ShardCallerKind, Topology,
};
use fanout_runtime::tls::ClientTls;
use fanout_runtime::{announce, shutdown};
use tokio::net::TcpListener;

use crate::cmd::{
    QueryLimitArgs, ServerTlsArgs, ServerTlsPlan, bind_metrics, drain_options, grpc_url,
    serve_metrics,
};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("shards_from").required(true).multiple(false)
    .args(["topology", "shard"]))]
pub struct RootArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "FANOUT_LISTEN")]
    pub listen: SocketAddr,
    /// TOML topology file: `[[shards]]` tables with `id` and `replicas`.
    #[arg(long, env = "FANOUT_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// One shard's replicas, `ID=ADDR,ADDR`; repeat once per shard
    /// (in FANOUT_SHARD, separate shards with `;`). `dns:HOST:PORT` stands
    /// for every address HOST resolves to, re-resolved while the root runs.
    #[arg(
        long,
        value_name = "ID=ADDR,ADDR",
        env = "FANOUT_SHARD",
        value_delimiter = ';'
    )]
    pub shard: Vec<String>,
    /// URLs of merger processes (`http://127.0.0.1:7000`), tried in this
    /// order: a request's merge moves to the next one when its merger cannot
    /// be reached or breaks mid-merge. Without any, the root merges in-process.
    #[arg(
        long,
        value_name = "URL,URL",
        env = "FANOUT_MERGER",
        value_delimiter = ','
    )]
    pub merger: Vec<String>,
    /// What to do when no merger process can be reached: `none` (answer
    /// UNAVAILABLE) or `embedded` (merge in-process with the top-k merge;
    /// right only when the merger processes are top-k mergers, as `fanout
    /// merger` is).
    #[arg(long, default_value = "none", env = "FANOUT_MERGER_FALLBACK",
          value_parser = ["none", "embedded"])]
    pub merger_fallback: String,
    /// Time limit of a request whose caller sets none, in milliseconds.
    #[arg(long, default_value_t = 10_000, env = "FANOUT_DEFAULT_TIMEOUT_MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub default_timeout_ms: u64,
    /// Log a request that takes at least this long at WARN, with every
    /// shard's timing (the others get one INFO line each); 0: never.
    #[arg(long, default_value_t = 1000, env = "FANOUT_SLOW_REQUEST_MS")]
    pub slow_request_ms: u64,
    /// A result cache of complete search answers this many MiB large,
    /// keyed by the request and every shard's index generation (0: none).
    /// A request skips it with `no_cache`.
    #[arg(long, default_value_t = 0, env = "FANOUT_RESULT_CACHE_MB",
          value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub result_cache_mb: u64,
    /// With the cache: how often every shard is asked for its index
    /// generation, the longest a re-indexed shard can go unnoticed.
    #[arg(long, default_value_t = 1000, env = "FANOUT_RESULT_CACHE_CHECK_MS",
          value_parser = clap::value_parser!(u64).range(10..))]
    pub result_cache_check_ms: u64,
    /// On shutdown, report NOT_SERVING this long before refusing new calls.
    #[arg(long, default_value_t = 0, env = "FANOUT_DRAIN_DELAY_MS")]
    pub drain_delay_ms: u64,
    /// Hedging of shard calls: `off`, `fixed:<ms>` (fractions allowed),
    /// `adaptive` (a percentile of each shard's recent latency) or `tower`
    /// (tower's hedge middleware, a baseline for benchmarks: at most one
    /// hedge, after --hedge-percentile of the last second's latency once it
    /// holds 10 samples, no budget).
    #[arg(long, default_value = "adaptive", env = "FANOUT_HEDGE")]
    pub hedge: HedgeFlag,
    /// The percentile of recent shard latency an adaptive hedge waits for.
    #[arg(long, default_value_t = 95.0, env = "FANOUT_HEDGE_PERCENTILE")]
    pub hedge_percentile: f64,
    /// The shortest adaptive hedge delay, in microseconds.
    #[arg(long, default_value_t = 200, env = "FANOUT_HEDGE_FLOOR_US")]
    pub hedge_floor_us: u64,
    /// The longest adaptive hedge delay, in microseconds.
    #[arg(long, default_value_t = 500_000, env = "FANOUT_HEDGE_CEILING_US")]
    pub hedge_ceiling_us: u64,
    /// Hedges and retries allowed, in percent of primary shard calls.
    #[arg(long, default_value_t = 5.0, env = "FANOUT_HEDGE_BUDGET_PERCENT")]
    pub hedge_budget_percent: f64,
    /// Hedges and retries allowed per second on top of the percentage.
    #[arg(long, default_value_t = 10.0, env = "FANOUT_HEDGE_BUDGET_FLOOR")]
    pub hedge_budget_floor: f64,
    /// How attempts given up (overtaken by a hedge, timed out) enter the
    /// adaptive delay's latency estimate: `censored` (lower bounds,
    /// Kaplan-Meier) or `plain` (their time until given up, as a latency).
    #[arg(long, default_value = "censored", env = "FANOUT_HEDGE_ESTIMATE")]
    pub hedge_estimate: LatencyEstimate,
    /// Serve Prometheus metrics on `GET /metrics` at this address (its own
    /// port; port 0 picks a free one, printed on stdout). Off by default.
    #[arg(long, value_name = "ADDR", env = "FANOUT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub query_limits: QueryLimitArgs,
    /// The request-of-death policy: `on` (a request that kills the leaf
    /// replicas of several shards at once is not retried and is refused
    /// for --quarantine-s) or `off` (a call broken with its replica fails
    /// over like any retryable error).
    #[arg(long, default_value = "on", env = "FANOUT_CRASH_POLICY", value_parser = ["on", "off"])]
    pub crash_policy: String,
    /// How long a shard call whose replica broke mid-call waits, in
    /// milliseconds, for the other replicas lost with it before failing over
    /// (until no replica has been lost for this long).
    #[arg(long, default_value_t = CrashSettings::default().settle.as_millis() as u64,
          env = "FANOUT_CRASH_SETTLE_MS")]
    pub crash_settle_ms: u64,
    /// How many requests the root admits at once: `adaptive` (a limit that
    /// follows the latency of admitted requests), `fixed:N` or `off`; the
    /// excess is refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, default_value = "adaptive", env = "FANOUT_ADMISSION")]
    pub admission: AdmissionPolicy,
    /// The adaptive limit's bounds and start: MIN:INITIAL:MAX.
    #[arg(long, default_value = "4:32:4096", env = "FANOUT_ADMISSION_LIMITS")]
    pub admission_limits: String,
    /// How many times the uncongested latency a window's median latency may
    /// reach before the adaptive limit shrinks.
    #[arg(long, default_value_t = AdmissionSettings::default().tolerance, env = "FANOUT_ADMISSION_TOLERANCE")]
    pub admission_tolerance: f64,
    /// How long a request over the admission limit may wait for a slot, in
    /// milliseconds, before it is refused (0: refused at once).
    #[arg(long, default_value_t = AdmissionSettings::default().max_queue_wait.as_millis() as u64,
          env = "FANOUT_ADMISSION_QUEUE_MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub admission_queue_ms: u64,
    /// How long a request of death is refused, in seconds.
    #[arg(long, default_value_t = CrashSettings::default().quarantine.as_secs(),
          env = "FANOUT_QUARANTINE_S")]
    pub quarantine_s: u64,
    /// How often `dns:` replica names are resolved again, in milliseconds.
    #[arg(long, default_value_t = DiscoverySettings::default().dns_refresh.as_millis() as u64,
          env = "FANOUT_DNS_REFRESH_MS")]
    pub dns_refresh_ms: u64,
    /// `watch`: follow each replica's grpc.health.v1 status and send no new
    /// calls to one that says NOT_SERVING (draining); `off`: judge replicas
    /// by their calls alone.
    #[arg(long, default_value = "watch", env = "FANOUT_REPLICA_HEALTH",
          value_parser = ["watch", "off"])]
    pub replica_health: String,
    /// A tokens file (TOML, readable by its owner only): `Search` and
    /// `Root/Query` then need `authorization: Bearer <token>` with a token
    /// whose SHA-256 it lists, within that token's limits. Read again on
    /// SIGHUP. Health and reflection stay open.
    #[arg(long, env = "FANOUT_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// Call leaves and mergers over TLS, trusting this CA (PEM); the root
    /// presents --tls-cert/--tls-key to those that ask for a client
    /// certificate (mutual TLS).
    #[arg(long, env = "FANOUT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Validated `fanout root`.
pub struct RootPlan {
    config: RootConfig,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    tls: ServerTlsPlan,
}

impl RootArgs {
    pub fn validate(self) -> anyhow::Result<RootPlan> {
        let topology = match (&self.topology, self.shard.is_empty()) {
            (Some(path), true) => Topology::from_toml_file(path)
                .with_context(|| format!("bad --topology {}", path.display()))?,
            (None, false) => Topology::from_shard_flags(&self.shard).context("bad --shard")?,
            _ => bail!(
                "give either --topology FILE or --shard ID=ADDR,... (one per shard), not both"
            ),
        };
        let mergers = self
            .merger
            .iter()
            .map(|merger| grpc_url("--merger", merger))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.merger_fallback == "embedded" && mergers.is_empty() {
            bail!(
                "--merger-fallback embedded needs --merger: without one the merge is embedded anyway"
            );
        }
        let mut config = RootConfig {
            topology,
            mergers,
            merger_fallback: self.merger_fallback == "embedded",
            default_timeout: Duration::from_millis(self.default_timeout_ms),
            deadline_margin: DEFAULT_DEADLINE_MARGIN,
            slow_request: (self.slow_request_ms > 0)
                .then(|| Duration::from_millis(self.slow_request_ms)),
            result_cache: fanout_root::ResultCacheSettings {
                max_bytes: (self.result_cache_mb as usize) << 20,
                generation_poll: Duration::from_millis(self.result_cache_check_ms),
            },
            drain: drain_options(self.drain_delay_ms),
            shard_caller: self.hedge.caller(),
            hedge: HedgeSettings {
                policy: self.hedge.policy(),
                percentile: self.hedge_percentile,
                floor: Duration::from_micros(self.hedge_floor_us),
                ceiling: Duration::from_micros(self.hedge_ceiling_us),
                budget_percent: self.hedge_budget_percent,
                budget_floor_per_second: self.hedge_budget_floor,
                timer: HedgeTimer::Precise,
                estimate: self.hedge_estimate,
            },
            query_limits: self.query_limits.limits(),
            admission: admission_settings(
                self.admission,
                &self.admission_limits,
                self.admission_tolerance,
                Duration::from_millis(self.admission_queue_ms),
            )?,
            crash: CrashSettings {
                enabled: self.crash_policy == "on",
                settle: Duration::from_millis(self.crash_settle_ms),
                quarantine: Duration::from_secs(self.quarantine_s),
                ..CrashSettings::default()
            },
            discovery: DiscoverySettings {
                dns_refresh: Duration::from_millis(self.dns_refresh_ms),
                watch_health: self.replica_health == "watch",
            },
            auth: None,
            client_tls: None,
        };
        if let Some(path) = &self.auth_tokens {
            let auth = Authenticator::load(path).context("bad --auth-tokens")?;
            config.auth = Some(Arc::new(auth));
        }
        if let Some(ca) = &self.tls_ca {
            let identity = self
                .tls
                .tls_cert
                .as_deref()
                .zip(self.tls.tls_key.as_deref());
            let client =
                ClientTls::load(ca, identity).context("bad --tls-ca, --tls-cert or --tls-key")?;
            config.client_tls = Some(client);
        }
        let tls = self.tls.validate()?;
        config.validate().context("bad root configuration")?;
        Ok(RootPlan {
            config,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            tls,
        })
    }
}

/// `--hedge`: a hedging policy, or tower's hedge as a benchmark baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeFlag {
    Policy(HedgePolicy),
    Tower,
}

impl HedgeFlag {
    fn caller(self) -> ShardCallerKind {
        match self {
            HedgeFlag::Policy(_) => ShardCallerKind::Hedged,
            HedgeFlag::Tower => ShardCallerKind::TowerBaseline,
        }
    }

    /// The root's default policy; under tower, for requests that ask for
    /// adaptive hedging by name.
    fn policy(self) -> HedgePolicy {
        match self {
            HedgeFlag::Policy(policy) => policy,
            HedgeFlag::Tower => HedgePolicy::Adaptive,
        }
    }
}

impl std::str::FromStr for HedgeFlag {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tower" => Ok(HedgeFlag::Tower),
            policy => policy
                .parse()
                .map(HedgeFlag::Policy)
                .map_err(|_| format!("expected off, adaptive, tower or fixed:<ms>, got {text:?}")),
        }
    }
}

/// `--admission-limits MIN:INITIAL:MAX` and the rest of the admission flags.
fn admission_settings(
    policy: AdmissionPolicy,
    limits: &str,
    tolerance: f64,
    max_queue_wait: Duration,
) -> anyhow::Result<AdmissionSettings> {
    let parts: Vec<u32> = limits
        .split(':')
        .map(|part| part.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--admission-limits {limits:?}: expected MIN:INITIAL:MAX"))?;
    let [min_limit, initial_limit, max_limit] = parts[..] else {
        bail!("--admission-limits {limits:?}: expected MIN:INITIAL:MAX");
    };
    Ok(AdmissionSettings {
        policy,
        min_limit,
        initial_limit,
        max_limit,
        tolerance,
        max_queue_wait,
    })
}

pub async fn run(plan: RootPlan) -> anyhow::Result<ExitCode> {
    let RootPlan {
        config,
        listen,
        metrics_listen,
        tls,
    } = plan;
    let transport = tls.transport().await?;
    let shard_count = config.topology.shards.len();
    let merger = if config.mergers.is_empty() {
        "embedded".to_owned()
    } else {
        config.mergers.join(",")
    };
    let auth = config.auth.clone();
    let server = RootServer::new(config)
        .await
        .context("cannot start the root")?;
    if let Some(auth) = auth {
        shutdown::on_sighup("the tokens", move || {
            auth.reload()
                .map(|active| format!("tokens reloaded, {active} in force"))
                .map_err(|error| error.to_string())
        });
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let metrics = bind_metrics(metrics_listen).await?;
    tracing::info!(
        %local_addr,
        shard_count,
        %merger,
        "root serving"
    );
    announce::announce_listening("root", local_addr);
    let _metrics_task = serve_metrics("root", metrics, server.metrics_registry());
    server
        .with_transport(transport)
        .serve(listener, shutdown::signal())
        .await
        .context("the root stopped with an error")?;
    Ok(ExitCode::SUCCESS)
}
