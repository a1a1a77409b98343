//! The root server: builds the cluster (lazy channels to every leaf replica,
//! the merger), learns shard sizes in the background, and serves `Search`
//! and `Root` with health, reflection and compression.

use std::future::Future;
use std::sync::Arc;

use fanout_merger::{MergerEndpoint, TopKMerge};
use fanout_proto::search::v1::search_server::SearchServer;
use fanout_proto::v1::root_server::RootServer as RootServiceServer;
use fanout_runtime::metrics::Registry;
use fanout_runtime::serve::{DrainOptions, GrpcService};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::cluster::Cluster;
use crate::config::RootConfig;
use crate::error::RootError;
use crate::hedge::HedgeBudget;
use crate::metrics::RootMetrics;
use crate::query::QueryService;
use crate::replica::ReplicaSet;
use crate::search::SearchService;
use crate::selector::SelectorOptions;
use crate::shard_info::{ShardDocCounts, learn_doc_counts};
use crate::topology::Topology;

/// The root service, ready to serve.
#[derive(Debug)]
pub struct RootServer {
    cluster: Arc<Cluster>,
    drain: DrainOptions,
    _doc_count_learner: AbortOnDrop,
}

/// Aborts a background task when its owner goes away.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RootServer {
    /// Validates `config`, creates a lazily connected channel per leaf
    /// replica and the merger endpoint. Nothing is contacted yet, so leaves
    /// that are down do not stop the root from starting.
    pub async fn new(config: RootConfig) -> Result<RootServer, RootError> {
        config.validate()?;
        let topology = Topology::validated(config.topology.shards)?;
        let selector_options = SelectorOptions {
            latency_estimate: config.hedge.estimate,
            ..SelectorOptions::default()
        };
        let shards = topology
            .shards
            .iter()
            .map(|shard| ReplicaSet::connect_lazily_with(shard, selector_options))
            .collect::<Result<Vec<_>, _>>()?;
        let merger =
            match &config.merger {
                None => MergerEndpoint::Embedded(Arc::new(TopKMerge)),
                Some(url) => MergerEndpoint::connect(url).await.map_err(|error| {
                    RootError::MergerConnect {
                        url: url.clone(),
                        reason: error.to_string(),
                    }
                })?,
            };
        let shard_count = shards.len();
        let cluster = Arc::new(Cluster {
            doc_counts: ShardDocCounts::unknown(shards.len()),
            shards,
            merger,
            default_timeout: config.default_timeout,
            deadline_margin: config.deadline_margin,
            hedge_budget: HedgeBudget::new(
                config.hedge.budget_percent,
                config.hedge.budget_floor_per_second,
            ),
            hedge: config.hedge,
            metrics: RootMetrics::new(shard_count),
        });
        cluster.metrics.collect_from(&cluster);
        let learner = tokio::spawn(learn_doc_counts(Arc::clone(&cluster)));
        Ok(RootServer {
            cluster,
            drain: config.drain,
            _doc_count_learner: AbortOnDrop(learner),
        })
    }

    /// The root's metrics, for a `/metrics` endpoint.
    pub fn metrics_registry(&self) -> Arc<Registry> {
        self.cluster.metrics.registry()
    }

    /// Serves `fanout.search.v1.Search` and `fanout.v1.Root` on `listener`
    /// until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RootError> {
        let search = SearchServer::new(SearchService::new(Arc::clone(&self.cluster)))
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let root = RootServiceServer::new(QueryService::new(Arc::clone(&self.cluster)))
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let routes = Routes::new(search).add_service(root);
        let service_names = vec![
            <SearchServer<SearchService> as NamedService>::NAME,
            <RootServiceServer<QueryService> as NamedService>::NAME,
        ];
        GrpcService::new(routes, service_names)
            .serve(listener, self.drain, shutdown)
            .await?;
        Ok(())
    }
}
