//! `fanout.search.v1.Search`: validate, fan the shard query out with the
//! top-k merge (phase one), fetch the stored fields of the global winners
//! (phase two), answer with hits, coverage and per-shard timings.

use std::sync::Arc;
use std::time::Duration;

use fanout_proto::search::limits::{QueryLimits, check_query};
use fanout_proto::search::v1::search_server::Search;
use fanout_proto::search::v1::{
    QueryMode, SearchRequest, SearchResponse, ShardSearchRequest, ShardSearchResponse,
};
use fanout_proto::status::quote;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::cache::{CacheKey, ResultCache};
use crate::deadline::RequestDeadline;
use crate::error::RequestError;
use crate::fanout::FanOut;
use crate::fanout::{FanOutRequest, fan_out_and_merge};
use crate::fetch::{FetchOptions, FetchPhase, fetch_hits};
use crate::front::Front;
use crate::hedge::{HedgePolicy, requested_policy};
use crate::metrics::RootMethod;
use crate::policy::CoveragePolicy;
use crate::request_id::request_id_for;

/// Hits when a request asks for `k = 0`.
pub const DEFAULT_K: u32 = 10;
/// The most hits one request may ask for.
pub const MAX_K: u32 = 10_000;
/// Stored fields a hit can return.
pub const FETCHABLE_FIELDS: [&str; 3] = ["id", "title", "text"];
/// The most filters one search may carry (the leaves' limit too).
pub const MAX_FILTERS: usize = 64;
/// Fields returned when a request names none.
pub const DEFAULT_FIELDS: [&str; 2] = ["id", "title"];
/// With `allow_partial`, the share of the time phase one may use: shards
/// still running then are given up so that phase two has time to fetch the
/// fields of what did arrive. Without it phase one may use all the time
/// (a shard that is merely slow must not fail the request).
pub const PHASE_ONE_SHARE_WITH_PARTIAL: f64 = 0.8;

/// The Search service.
#[derive(Debug, Clone)]
pub struct SearchService {
    fan_out: Arc<FanOut>,
    front: Arc<Front>,
    /// The result cache, when the root has one.
    cache: Option<Arc<ResultCache>>,
}

/// A search request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedSearch {
    pub shard_request: ShardSearchRequest,
    pub fetch: FetchOptions,
    pub policy: CoveragePolicy,
    /// `timeout_millis`, when set.
    pub timeout: Option<Duration>,
    /// The request's own hedging policy, when set.
    pub hedge: Option<HedgePolicy>,
}

/// Checks a request and turns it into what the leaves and phase two need;
/// nothing over `limits` ever reaches a leaf.
pub fn validate_search(
    request: SearchRequest,
    limits: &QueryLimits,
) -> Result<ValidatedSearch, RequestError> {
    let invalid = |message: String| Err(RequestError::InvalidRequest(message));
    let Ok(mode) = QueryMode::try_from(request.mode) else {
        return invalid(format!("unknown query mode {}", request.mode));
    };
    // Measured first: a huge query is refused before it is even trimmed.
    check_query(&request.query, mode, limits)
        .map_err(|exceeded| RequestError::InvalidRequest(exceeded.to_string()))?;
    if request.query.trim().is_empty() {
        return invalid("query is empty".to_owned());
    }
    let k = if request.k == 0 { DEFAULT_K } else { request.k };
    if k > MAX_K {
        return invalid(format!("k must be between 1 and {MAX_K}, got {k}"));
    }
    if request.filters.len() > MAX_FILTERS {
        return invalid(format!(
            "{} filters, more than the limit of {MAX_FILTERS}",
            request.filters.len()
        ));
    }
    if let Some(filter) = request.filters.iter().find(|filter| filter.field != "id") {
        return invalid(format!(
            "cannot filter on field {}: only \"id\" can be filtered on",
            quote(&filter.field)
        ));
    }
    if let Some(after) = &request.search_after
        && after.score.is_nan()
    {
        return invalid("search_after score is NaN".to_owned());
    }
    let mut fields: Vec<String> = Vec::new();
    for field in &request.fields {
        if !FETCHABLE_FIELDS.contains(&field.as_str()) {
            return invalid(format!(
                "unknown field {}: expected one of {}",
                quote(field),
                FETCHABLE_FIELDS.join(", ")
            ));
        }
        if !fields.contains(field) {
            fields.push(field.clone());
        }
    }
    if fields.is_empty() {
        fields = DEFAULT_FIELDS
            .iter()
            .map(|field| (*field).to_owned())
            .collect();
    }
    let policy = CoveragePolicy::new(request.allow_partial, request.min_coverage)?;
    let hedge = requested_policy(request.hedge, request.hedge_delay_micros)
        .map_err(RequestError::InvalidRequest)?;
    let timeout = (request.timeout_millis > 0)
        .then(|| Duration::from_millis(u64::from(request.timeout_millis)));
    Ok(ValidatedSearch {
        shard_request: ShardSearchRequest {
            query: request.query.clone(),
            mode: mode as i32,
            k,
            filters: request.filters,
            search_after: request.search_after,
        },
        fetch: FetchOptions {
            fields,
            snippets: request.snippets,
            query: request.query,
            mode,
        },
        policy,
        timeout,
        hedge,
    })
}

impl SearchService {
    pub fn new(fan_out: Arc<FanOut>, front: Arc<Front>, cache: Option<Arc<ResultCache>>) -> Self {
        Self {
            fan_out,
            front,
            cache,
        }
    }

    /// The cache and this search's key in it, unless the root has no cache
    /// or the request skips it (`no_cache`, or a shard whose generation is
    /// unknown: counted as bypassed).
    fn cache_slot(
        &self,
        search: &ValidatedSearch,
        no_cache: bool,
    ) -> Option<(&ResultCache, CacheKey, Vec<Arc<str>>)> {
        let cache = self.cache.as_deref()?;
        let generations = self.fan_out.shards.generations.snapshot();
        match CacheKey::of(search, &generations).filter(|_| !no_cache) {
            Some(key) => Some((cache, key, generations)),
            None => {
                cache.counters.bypassed.inc();
                None
            }
        }
    }

    async fn search_in_two_phases(
        &self,
        started_at: Instant,
        request_id: &str,
        request: Request<SearchRequest>,
    ) -> Result<SearchResponse, RequestError> {
        let rules = &self.front.rules;
        let (metadata, _, request) = request.into_parts();
        let no_cache = request.no_cache;
        let search = validate_search(request, &rules.query_limits)?;
        let deadline = RequestDeadline::for_request(
            started_at,
            &metadata,
            search.timeout,
            rules.default_timeout,
            rules.deadline_margin,
        )?;
        let shard_deadline = if search.policy.allow_partial {
            deadline.shortened_to(PHASE_ONE_SHARE_WITH_PARTIAL).deadline
        } else {
            deadline.deadline
        };
        let cache_slot = self.cache_slot(&search, no_cache);
        if let Some((cache, key, _)) = &cache_slot
            && let Some(stored) = cache.get(key)
        {
            let mut response = SearchResponse::clone(&stored);
            response.cached = true;
            response.took_micros = started_at.elapsed().as_micros() as u64;
            return Ok(response);
        }
        let k = search.shard_request.k as usize;
        let phase_one = fan_out_and_merge(
            &self.fan_out,
            FanOutRequest {
                payload: fanout_proto::any::pack(&search.shard_request),
                request_id,
                shard_deadline,
                deadline,
                policy: search.policy,
                hedge_policy: search.hedge,
            },
        )
        .await?;
        let mut merged: ShardSearchResponse = fanout_proto::any::unpack(&phase_one.merged)
            .map_err(|error| {
                RequestError::Internal(format!(
                    "the merger's answer is not a search result: {error}"
                ))
            })?;
        merged.hits.truncate(k);

        let mut coverage = phase_one.coverage;
        let mut timings = phase_one.timings;
        let hits = fetch_hits(
            FetchPhase {
                shards: &self.fan_out.shards,
                calls: &self.fan_out.calls,
                answers: &phase_one.answers,
                options: &search.fetch,
                request_id,
                deadline: deadline.deadline,
                policy: search.policy,
                hedge_policy: search.hedge,
                fingerprint: phase_one.fingerprint,
            },
            merged.hits,
            &mut coverage,
            &mut timings,
        )
        .instrument(tracing::debug_span!("fetch"))
        .await?;
        let response = SearchResponse {
            hits,
            total_hits: merged.total_hits,
            coverage: Some(coverage),
            shards: timings,
            took_micros: started_at.elapsed().as_micros() as u64,
            cached: false,
        };
        if let Some((cache, key, generations)) = cache_slot {
            // Only a complete answer, every shard of it from the generation
            // the key names.
            let complete = !response
                .coverage
                .as_ref()
                .is_some_and(|coverage| coverage.partial);
            let same_generations = phase_one.answers.len() == generations.len()
                && phase_one
                    .answers
                    .iter()
                    .zip(&generations)
                    .all(|(answer, generation)| {
                        answer
                            .as_ref()
                            .is_some_and(|answer| *answer.generation == **generation)
                    });
            if complete && same_generations {
                cache.insert(
                    key,
                    SearchResponse {
                        shards: Vec::new(),
                        took_micros: 0,
                        ..response.clone()
                    },
                );
            }
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl Search for SearchService {
    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let started_at = Instant::now();
        let timer = self.front.metrics.start_request(RootMethod::Search);
        let authorized =
            self.front
                .authenticate(request.metadata())
                .and_then(|tenant| match tenant {
                    Some(tenant) => {
                        let search = request.get_ref();
                        tenant.check_search(
                            search.k,
                            DEFAULT_K,
                            search.mode == QueryMode::Syntax as i32,
                        )
                    }
                    None => Ok(()),
                });
        if let Err(status) = authorized {
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
        let span = tracing::info_span!(
            "search",
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            otel.kind = "server",
        );
        fanout_runtime::trace_context::adopt_caller(&span, request.metadata());
        let result = self
            .search_in_two_phases(started_at, &request_id, request)
            .instrument(span.clone())
            .await;
        let log = &self.front.request_log;
        match result {
            Ok(response) => {
                permit.finish(Code::Ok);
                timer.finish(Code::Ok);
                let coverage = response.coverage.as_ref();
                if coverage.is_some_and(|coverage| coverage.partial) {
                    self.front.metrics.partial_answer(RootMethod::Search);
                }
                log.answered(
                    &span,
                    "search",
                    coverage,
                    &response.shards,
                    response.cached,
                    started_at.elapsed(),
                );
                Ok(Response::new(response))
            }
            Err(error) => {
                let status = Status::from(error);
                log.failed(&span, "search", &status, started_at.elapsed());
                permit.finish(status.code());
                timer.finish(status.code());
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> SearchRequest {
        SearchRequest {
            query: query.to_owned(),
            ..SearchRequest::default()
        }
    }

    fn invalid_message(request: SearchRequest) -> String {
        let error = validate_search(request, &QueryLimits::DEFAULT).unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        status.message().to_owned()
    }

    #[test]
    fn applies_the_defaults() {
        let search = validate_search(request("rust"), &QueryLimits::DEFAULT).unwrap();
        assert_eq!(search.shard_request.k, DEFAULT_K);
        assert_eq!(search.fetch.fields, vec!["id", "title"]);
        assert_eq!(search.timeout, None);
        assert!(!search.policy.allow_partial);
    }

    #[test]
    fn refuses_queries_over_the_limits_before_anything_else() {
        let deep = SearchRequest {
            mode: QueryMode::Syntax as i32,
            ..request(&format!("{}rust", "(".repeat(1000)))
        };
        assert_eq!(
            invalid_message(deep),
            "query nests deeper than the limit of 32 levels (max query depth)"
        );
        let long = request(&"x".repeat(40_000));
        assert!(invalid_message(long).starts_with("query is 40000 bytes long"));
        let message = invalid_message(SearchRequest {
            fields: vec!["y".repeat(5000)],
            ..request("rust")
        });
        assert!(message.len() < 200, "{message}");
        let message = invalid_message(SearchRequest {
            filters: vec![fanout_proto::search::v1::TermFilter::default(); MAX_FILTERS + 1],
            ..request("rust")
        });
        assert!(message.contains("limit of 64"), "{message}");
    }

    #[test]
    fn rejects_an_empty_query() {
        assert_eq!(invalid_message(request("")), "query is empty");
        assert_eq!(invalid_message(request(" \t\n")), "query is empty");
    }

    #[test]
    fn bounds_k() {
        let message = invalid_message(SearchRequest {
            k: MAX_K + 1,
            ..request("rust")
        });
        assert!(message.contains("between 1 and 10000"), "{message}");
        let search = validate_search(
            SearchRequest {
                k: MAX_K,
                ..request("rust")
            },
            &QueryLimits::DEFAULT,
        )
        .unwrap();
        assert_eq!(search.shard_request.k, MAX_K);
    }

    #[test]
    fn checks_fields_mode_and_min_coverage() {
        let message = invalid_message(SearchRequest {
            fields: vec!["title".into(), "body".into()],
            ..request("rust")
        });
        assert!(message.contains("\"body\""), "{message}");
        let message = invalid_message(SearchRequest {
            mode: 7,
            ..request("rust")
        });
        assert!(message.contains("mode"), "{message}");
        let message = invalid_message(SearchRequest {
            allow_partial: true,
            min_coverage: 1.5,
            ..request("rust")
        });
        assert!(message.contains("min_coverage"), "{message}");
        let search = validate_search(
            SearchRequest {
                fields: vec!["text".into(), "text".into(), "id".into()],
                timeout_millis: 250,
                mode: QueryMode::Syntax as i32,
                ..request("title:rust")
            },
            &QueryLimits::DEFAULT,
        )
        .unwrap();
        assert_eq!(search.fetch.fields, vec!["text", "id"]);
        assert_eq!(search.timeout, Some(Duration::from_millis(250)));
        assert_eq!(search.shard_request.mode, QueryMode::Syntax as i32);
    }
}
