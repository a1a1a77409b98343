//! The root server: builds its parts (lazy channels to every leaf replica,
//! the shard caller, the mergers, the admission limit, the metrics), learns
//! shard sizes in the background, and serves `Search` and `Root` with
//! health, reflection and compression.

use std::future::Future;
use std::sync::Arc;

use fanout_merger::{MergerSet, TopKMerge};
use fanout_proto::search::v1::search_server::SearchServer;
use fanout_proto::v1::root_server::RootServer as RootServiceServer;
use fanout_runtime::metrics::Registry;
use fanout_runtime::serve::{DrainOptions, GrpcService, ServerTransport};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::admission::Admission;
use crate::cache::ResultCache;
use crate::config::RootConfig;
use crate::discovery;
use crate::error::RootError;
use crate::fanout::FanOut;
use crate::front::{Front, RequestRules};
use crate::metrics::{MetricSources, RootMetrics};
use crate::query::QueryService;
use crate::replica::ReplicaSet;
use crate::search::SearchService;
use crate::selector::SelectorOptions;
use crate::shard_caller::ShardCalls;
use crate::shards::{Shards, learn_doc_counts, watch_generations};
use crate::topology::Topology;

/// The largest `Search` request the root decodes (a query is at most a few
/// KiB; see the query limits); larger ones get RESOURCE_EXHAUSTED.
pub const MAX_SEARCH_REQUEST_BYTES: usize = 1024 * 1024;
/// The largest `Root/Query` request the root decodes.
pub const MAX_QUERY_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How long start-up waits for the first resolution of the `dns:` names.
const FIRST_RESOLUTION_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long start-up waits for a SERVING replica of every shard.
const WARM_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Returns once every shard has a replica whose health is SERVING.
async fn every_shard_serving(shards: &Shards) {
    loop {
        let serving = shards.sets.iter().all(|set| {
            set.members()
                .iter()
                .any(|replica| replica.state().health() == crate::selector::Health::Serving)
        });
        if serving {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The root service, ready to serve.
#[derive(Debug)]
pub struct RootServer {
    fan_out: Arc<FanOut>,
    front: Arc<Front>,
    drain: DrainOptions,
    transport: ServerTransport,
    _doc_count_learner: AbortOnDropHandle<()>,
    /// Re-resolves the shards' `dns:` names (when there are any).
    _resolver: Option<AbortOnDropHandle<()>>,
    /// The result cache, and the poll of the shards' generations it needs.
    cache: Option<Arc<ResultCache>>,
    _generation_watcher: Option<AbortOnDropHandle<()>>,
}

impl RootServer {
    /// Validates `config`, creates a lazily connected channel per leaf
    /// replica and the merger endpoint. Nothing is contacted yet, so leaves
    /// that are down do not stop the root from starting.
    /// Serves over `transport` (TLS, a health listener of its own) instead
    /// of plaintext.
    pub fn with_transport(mut self, transport: ServerTransport) -> RootServer {
        self.transport = transport;
        self
    }

    pub async fn new(config: RootConfig) -> Result<RootServer, RootError> {
        config.validate()?;
        let topology = Topology::validated(config.topology.shards)?;
        let selector_options = SelectorOptions {
            latency_estimate: config.hedge.estimate,
            ..SelectorOptions::default()
        };
        let sets = topology
            .shards
            .iter()
            .map(|shard| {
                ReplicaSet::connect_lazily_with(
                    shard,
                    selector_options,
                    config.discovery.watch_health,
                    config.client_tls.clone(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let merger = if config.mergers.is_empty() {
            MergerSet::embedded(Arc::new(TopKMerge))
        } else {
            let remote = MergerSet::remote_with(&config.mergers, config.client_tls.as_ref())
                .await
                .map_err(|error| RootError::MergerConnect {
                    url: config.mergers.join(","),
                    reason: error.to_string(),
                })?;
            if config.merger_fallback {
                remote.with_fallback(Arc::new(TopKMerge))
            } else {
                remote
            }
        };
        let shard_count = sets.len();
        let metrics = Arc::new(RootMetrics::new(shard_count));
        let shards = Arc::new(Shards::new(sets));
        let calls = Arc::new(ShardCalls::new(
            config.shard_caller,
            shard_count,
            config.hedge,
            config.crash,
            metrics.shard_call_table(),
        ));
        let admission = Arc::new(Admission::new(config.admission));
        metrics.collect_from(MetricSources {
            shards: Arc::clone(&shards),
            calls: Arc::clone(&calls),
            admission: Arc::clone(&admission),
            merger: merger.clone(),
        });
        let resolver = if shards.has_dns_sources() {
            // The first answers before serving, so the first requests find
            // replicas; a name that does not resolve yet (its containers
            // still starting) is retried in the background.
            let resolver = fanout_runtime::dns::system_resolver();
            let first = tokio::time::timeout(
                FIRST_RESOLUTION_LIMIT,
                discovery::resolve_all(&shards, &resolver),
            );
            if !first.await.unwrap_or(false) {
                tracing::warn!(
                    "some shards' DNS names do not resolve yet; retrying in the background"
                );
            }
            Some(AbortOnDropHandle::new(tokio::spawn(
                discovery::keep_resolving(Arc::clone(&shards), config.discovery),
            )))
        } else {
            None
        };
        if config.discovery.watch_health {
            // Connections to the leaves come up before the first request
            // does (a restarted root would otherwise meet the burst its
            // clients held back with every connection still opening).
            let warm = tokio::time::timeout(WARM_UP_LIMIT, every_shard_serving(&shards));
            if warm.await.is_err() {
                tracing::warn!(
                    "not every shard has a SERVING replica after {WARM_UP_LIMIT:?}; serving anyway"
                );
            }
        }
        let learner = AbortOnDropHandle::new(tokio::spawn(learn_doc_counts(Arc::clone(&shards))));
        let cache = (config.result_cache.max_bytes > 0).then(|| {
            let cache = Arc::new(ResultCache::new(
                config.result_cache.max_bytes,
                metrics.cache_counters(),
            ));
            metrics.collect_cache(&cache);
            cache
        });
        let generation_watcher = cache.as_ref().map(|_| {
            AbortOnDropHandle::new(tokio::spawn(watch_generations(
                Arc::clone(&shards),
                config.result_cache.generation_poll,
            )))
        });
        Ok(RootServer {
            fan_out: Arc::new(FanOut {
                shards,
                calls,
                merger,
            }),
            front: Arc::new(Front {
                rules: RequestRules {
                    default_timeout: config.default_timeout,
                    deadline_margin: config.deadline_margin,
                    query_limits: config.query_limits,
                },
                admission,
                metrics,
                auth: config.auth.clone(),
                request_log: crate::request_log::RequestLog {
                    slow_threshold: config.slow_request,
                },
            }),
            drain: config.drain,
            transport: ServerTransport::default(),
            _doc_count_learner: learner,
            _resolver: resolver,
            cache,
            _generation_watcher: generation_watcher,
        })
    }

    /// The root's metrics, for a `/metrics` endpoint.
    pub fn metrics_registry(&self) -> Arc<Registry> {
        self.front.metrics.registry()
    }

    /// Serves `fanout.search.v1.Search` and `fanout.v1.Root` on `listener`
    /// until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RootError> {
        let search = SearchServer::new(SearchService::new(
            Arc::clone(&self.fan_out),
            Arc::clone(&self.front),
            self.cache.clone(),
        ))
        .max_decoding_message_size(MAX_SEARCH_REQUEST_BYTES)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip);
        let root = RootServiceServer::new(QueryService::new(
            Arc::clone(&self.fan_out),
            Arc::clone(&self.front),
        ))
        .max_decoding_message_size(MAX_QUERY_REQUEST_BYTES)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip);
        let routes = Routes::new(search).add_service(root);
        let service_names = vec![
            <SearchServer<SearchService> as NamedService>::NAME,
            <RootServiceServer<QueryService> as NamedService>::NAME,
        ];
        GrpcService::new(routes, service_names)
            .with_transport(self.transport)
            .serve(listener, self.drain, shutdown)
            .await?;
        Ok(())
    }
}
