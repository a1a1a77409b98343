//! `fanout.v1.Root/Query`: any payload, fanned out unchanged through
//! `Leaf/Execute` and merged by the configured merger.

use std::sync::Arc;

use fanout_proto::v1::root_server::Root;
use fanout_proto::v1::{QueryRequest, QueryResponse};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::deadline::RequestDeadline;
use crate::error::RequestError;
use crate::fanout::FanOut;
use crate::fanout::{FanOutRequest, fan_out_and_merge};
use crate::front::Front;
use crate::hedge::requested_policy;
use crate::metrics::RootMethod;
use crate::policy::CoveragePolicy;
use crate::request_id::request_id_for;

/// The longest payload type URL the root accepts (the leaves' limit too).
pub const MAX_TYPE_URL_BYTES: usize = 512;

/// The generic Root service.
#[derive(Debug, Clone)]
pub struct QueryService {
    fan_out: Arc<FanOut>,
    front: Arc<Front>,
}

impl QueryService {
    pub fn new(fan_out: Arc<FanOut>, front: Arc<Front>) -> Self {
        Self { fan_out, front }
    }

    async fn fan_out_query(
        &self,
        started_at: Instant,
        request_id: &str,
        request: Request<QueryRequest>,
    ) -> Result<QueryResponse, RequestError> {
        let rules = &self.front.rules;
        let (metadata, _, request) = request.into_parts();
        let payload = match request.payload {
            Some(payload) if payload.type_url.len() > MAX_TYPE_URL_BYTES => {
                return Err(RequestError::InvalidRequest(format!(
                    "payload type url is {} bytes long, more than the limit of {MAX_TYPE_URL_BYTES}",
                    payload.type_url.len()
                )));
            }
            Some(payload) if !payload.type_url.is_empty() => payload,
            Some(_) => {
                return Err(RequestError::InvalidRequest(
                    "payload has no type url".to_owned(),
                ));
            }
            None => {
                return Err(RequestError::InvalidRequest(
                    "payload is missing".to_owned(),
                ));
            }
        };
        let policy = CoveragePolicy::new(request.allow_partial, request.min_coverage)?;
        let hedge = requested_policy(request.hedge, request.hedge_delay_micros)
            .map_err(RequestError::InvalidRequest)?;
        let deadline = RequestDeadline::for_request(
            started_at,
            &metadata,
            None,
            rules.default_timeout,
            rules.deadline_margin,
        )?;
        let result = fan_out_and_merge(
            &self.fan_out,
            FanOutRequest {
                payload,
                request_id,
                shard_deadline: deadline.deadline,
                deadline,
                policy,
                hedge_policy: hedge,
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
        let timer = self.front.metrics.start_request(RootMethod::Query);
        if let Err(status) = self.front.authenticate(request.metadata()) {
            timer.finish(status.code());
            return Err(status);
        }
        let admission_deadline = self.front.admission_deadline(request.metadata());
        let permit = match self.front.admission.admit(admission_deadline).await {
            Ok(permit) => permit,
            Err(overloaded) => {
                timer.finish(Code::ResourceExhausted);
                return Err(Status::resource_exhausted(overloaded.to_string()));
            }
        };
        let request_id = request_id_for(request.metadata());
        let type_url = request
            .get_ref()
            .payload
            .as_ref()
            .map(|payload| fanout_proto::status::quote(&payload.type_url))
            .unwrap_or_default();
        let span = tracing::info_span!(
            "query",
            request_id = %request_id,
            payload = %type_url,
            trace_id = tracing::field::Empty,
            otel.kind = "server",
        );
        fanout_runtime::trace_context::adopt_caller(&span, request.metadata());
        let result = self
            .fan_out_query(started_at, &request_id, request)
            .instrument(span.clone())
            .await;
        let log = &self.front.request_log;
        match result {
            Ok(response) => {
                permit.finish(Code::Ok);
                timer.finish(Code::Ok);
                let coverage = response.coverage.as_ref();
                if coverage.is_some_and(|coverage| coverage.partial) {
                    self.front.metrics.partial_answer(RootMethod::Query);
                }
                log.answered(
                    &span,
                    "query",
                    coverage,
                    &response.shards,
                    false,
                    started_at.elapsed(),
                );
                Ok(Response::new(response))
            }
            Err(error) => {
                let status = Status::from(error);
                log.failed(&span, "query", &status, started_at.elapsed());
                permit.finish(status.code());
                timer.finish(status.code());
                Err(status)
            }
        }
    }
}
