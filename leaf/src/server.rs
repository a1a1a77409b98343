//! Serving one shard over gRPC: [`LeafServer::open`] loads the shard (index,
//! manifest, global statistics) and starts its search pool;
//! [`LeafServer::serve`] serves `fanout.v1.Leaf` with health, reflection and
//! compression on a listener the caller bound, until `shutdown` resolves.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use fanout_proto::search::limits::QueryLimits;
use fanout_proto::v1::leaf_server::LeafServer as LeafGrpcServer;
use fanout_runtime::cpu_pool::CpuPool;
use fanout_runtime::serve::{DrainOptions, GrpcService, ServerTransport};
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::LeafError;
use crate::fault::FaultPlan;
use crate::manifest::ShardManifest;
use crate::service::{LeafAdmission, LeafService};
use crate::shard::ShardSearcher;

/// The largest Execute request a leaf decodes (a fetch of 10,000 hits is
/// well under 1 MiB); larger ones are refused with RESOURCE_EXHAUSTED.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How to run a leaf.
#[derive(Debug, Clone)]
pub struct LeafConfig {
    /// A shard directory written by `build_index` (`<out_dir>/shard-<i>`).
    pub shard_dir: PathBuf,
    /// Threads of the search pool; 0 means one per core.
    pub search_threads: usize,
    pub drain: DrainOptions,
    /// What a query may cost.
    pub query_limits: QueryLimits,
    /// How much work the leaf takes on before refusing more.
    pub admission: LeafAdmission,
}

impl LeafConfig {
    /// The defaults for the shard in `shard_dir`: one search thread per
    /// core, no drain delay, the default limits.
    pub fn new(shard_dir: impl Into<PathBuf>) -> LeafConfig {
        LeafConfig {
            shard_dir: shard_dir.into(),
            search_threads: 0,
            drain: DrainOptions::default(),
            query_limits: QueryLimits::DEFAULT,
            admission: LeafAdmission::default(),
        }
    }
}

/// A leaf ready to serve its shard.
pub struct LeafServer {
    shard: Arc<ShardSearcher>,
    service: LeafService,
    drain: DrainOptions,
    transport: ServerTransport,
}

impl LeafServer {
    /// Opens the shard and starts the search pool. Fails when the shard
    /// directory is not a fanout shard or its global statistics belong to
    /// another build.
    pub fn open(config: LeafConfig) -> Result<LeafServer, LeafError> {
        config
            .query_limits
            .validate()
            .map_err(LeafError::InvalidConfig)?;
        let shard = Arc::new(
            ShardSearcher::open(&config.shard_dir)?.with_query_limits(config.query_limits),
        );
        let search_threads = if config.search_threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            config.search_threads
        };
        let pool = CpuPool::new(
            &format!("leaf-{}-search", shard.manifest().shard_id),
            search_threads,
        )?;
        tracing::info!(
            shard = shard.manifest().shard_id,
            shard_count = shard.manifest().shard_count,
            generation = %shard.manifest().generation,
            docs = shard.doc_count(),
            search_threads,
            "shard opened"
        );
        let service = LeafService::new(Arc::clone(&shard), pool, search_threads, config.admission);
        Ok(LeafServer {
            shard,
            service,
            drain: config.drain,
            transport: ServerTransport::default(),
        })
    }

    /// Injects `faults` around every call (tests and benchmarks only).
    pub fn with_faults(mut self, faults: FaultPlan) -> LeafServer {
        if faults.is_active() {
            tracing::warn!(?faults, "fault injection is on");
        }
        self.service = self.service.with_faults(faults);
        self
    }

    /// The leaf's metrics, for a `/metrics` endpoint.
    pub fn metrics_registry(&self) -> Arc<fanout_runtime::metrics::Registry> {
        self.service.metrics_registry()
    }

    pub fn manifest(&self) -> &ShardManifest {
        self.shard.manifest()
    }

    /// Serves over `transport` (TLS, a health listener of its own) instead
    /// of plaintext.
    pub fn with_transport(mut self, transport: ServerTransport) -> LeafServer {
        self.transport = transport;
        self
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), LeafError> {
        let leaf = LeafGrpcServer::new(self.service)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip);
        let routes = Routes::new(leaf);
        let service_names = vec![<LeafGrpcServer<LeafService> as NamedService>::NAME];
        GrpcService::new(routes, service_names)
            .with_transport(self.transport)
            .serve(listener, self.drain, shutdown)
            .await?;
        Ok(())
    }
}
