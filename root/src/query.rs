//! `fanout.v1.Root/Query`: any payload, fanned out unchanged through
//! `Leaf/Execute` and merged by the configured merger.

use std::sync::Arc;

use fanout_proto::v1::root_server::Root;
use fanout_proto::v1::{QueryRequest, QueryResponse};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::cluster::Cluster;
use crate::deadline::RequestDeadline;
use crate::error::RootError;
use crate::fanout::{FanOutRequest, fan_out_and_merge};
use crate::hedge::requested_policy;
use crate::metrics::RootMethod;
use crate::policy::CoveragePolicy;
use crate::request_id::request_id_for;

/// The generic Root service.
#[derive(Debug, Clone)]
pub struct QueryService {
    cluster: Arc<Cluster>,
}

impl QueryService {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }

    async fn fan_out_query(
        &self,
        started_at: Instant,
        request_id: &str,
        request: Request<QueryRequest>,
    ) -> Result<QueryResponse, RootError> {
        let cluster = &*self.cluster;
        let (metadata, _, request) = request.into_parts();
        let payload = match request.payload {
            Some(payload) if !payload.type_url.is_empty() => payload,
            Some(_) => {
                return Err(RootError::InvalidRequest(
                    "payload has no type url".to_owned(),
                ));
            }
            None => return Err(RootError::InvalidRequest("payload is missing".to_owned())),
        };
        let policy = CoveragePolicy::new(request.allow_partial, request.min_coverage)?;
        let hedge = requested_policy(request.hedge, request.hedge_delay_micros)
            .map_err(RootError::InvalidRequest)?;
        let deadline = RequestDeadline::for_request(
            started_at,
            &metadata,
            None,
            cluster.default_timeout,
            cluster.deadline_margin,
        )?;
        let result = fan_out_and_merge(
            cluster,
            FanOutRequest {
                payload,
                request_id,
                shard_deadline: deadline.deadline,
                deadline,
                policy,
                hedge_policy: cluster.hedge_policy(hedge),
            },
        )
        .await?;
        Ok(QueryResponse {
            payload: Some(result.merged),
            coverage: Some(result.coverage),
            shards: result.timings,
        })
    }
}

#[tonic::async_trait]
impl Root for QueryService {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let started_at = Instant::now();
        let timer = self.cluster.metrics.start_request(RootMethod::Query);
        let request_id = request_id_for(request.metadata());
        let type_url = request
            .get_ref()
            .payload
            .as_ref()
            .map(|payload| payload.type_url.clone())
            .unwrap_or_default();
        let span = tracing::info_span!("query", request_id = %request_id, payload = %type_url);
        let result = self
            .fan_out_query(started_at, &request_id, request)
            .instrument(span.clone())
            .await;
        match result {
            Ok(response) => {
                timer.finish(Code::Ok);
                Ok(Response::new(response))
            }
            Err(error) => {
                tracing::info!(parent: &span, %error, "query failed");
                let status = Status::from(error);
                timer.finish(status.code());
                Err(status)
            }
        }
    }
}
