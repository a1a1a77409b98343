//! How the root calls its shards, chosen once at start-up: its own hedged
//! call ([`crate::shard_call`]), or, for a benchmark, tower's hedge
//! ([`crate::baselines::tower_hedge`]); and what every shard call needs
//! besides its request: the hedging settings and the budget hedges and
//! retries share, the crash policy's memory, and the shard's counters in the
//! root's metrics.

use std::sync::Arc;

use fanout_proto::Any;
use tokio::time::Instant;
use tracing::Instrument;

use crate::baselines::tower_hedge::TowerHedges;
use crate::crash::{CrashSettings, CrashWatch, Fingerprint};
use crate::hedge::{HedgeBudget, HedgePolicy, HedgeSettings};
use crate::replica::{Replica, ReplicaSet};
use crate::shard_call::{
    CrashContext, HedgeGate, ShardCall, ShardCallCounters, ShardCallMetrics, ShardCallOutcome,
    ShardHedging, ShardPhase, call_shard,
};

/// Which shard caller a root uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardCallerKind {
    /// fanout's own: hedged after an adaptive or fixed delay, up to R-1
    /// hedges, within the budget, failing over on retryable errors.
    #[default]
    Hedged,
    /// tower's `hedge` middleware, as a baseline for benchmarks (`--hedge
    /// tower`): requests that set no hedging policy of their own go through it.
    TowerBaseline,
}

enum Caller {
    Hedged,
    Tower(TowerHedges),
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Caller::Hedged => "Hedged",
            Caller::Tower(_) => "TowerBaseline",
        })
    }
}

/// One request's call to one shard, before the caller is picked.
pub struct ShardRequest<'a> {
    pub replica_set: &'a ReplicaSet,
    pub payload: &'a Any,
    pub request_id: &'a str,
    pub deadline: Instant,
    /// The replica to try first, if it is still a member.
    pub preferred_replica: Option<&'a Arc<Replica>>,
    /// The request's own hedging policy, if it set one.
    pub requested_policy: Option<HedgePolicy>,
    pub counters: &'a ShardCallCounters,
    pub fingerprint: Fingerprint,
    pub hedge_gate: Option<&'a HedgeGate>,
    /// Which phase of the request this call belongs to (its span's `phase`).
    pub phase: ShardPhase,
}

/// The shard caller and what it shares between requests.
#[derive(Debug)]
pub struct ShardCalls {
    caller: Caller,
    pub hedge: HedgeSettings,
    /// Shared by every request's hedges and retries.
    pub budget: HedgeBudget,
    /// Calls lost with their replicas, and the requests of death found.
    pub crash: CrashWatch,
    /// `[shard][phase]`: the lifetime counts in the root's metrics.
    metrics: Vec<[ShardCallMetrics; 2]>,
}

impl ShardCalls {
    pub fn new(
        kind: ShardCallerKind,
        shard_count: usize,
        hedge: HedgeSettings,
        crash: CrashSettings,
        metrics: Vec<[ShardCallMetrics; 2]>,
    ) -> ShardCalls {
        let caller = match kind {
            ShardCallerKind::Hedged => Caller::Hedged,
            ShardCallerKind::TowerBaseline => Caller::Tower(TowerHedges::new(shard_count)),
        };
        ShardCalls {
            caller,
            budget: HedgeBudget::new(hedge.budget_percent, hedge.budget_floor_per_second),
            hedge,
            crash: CrashWatch::new(crash),
            metrics,
        }
    }

    /// Fresh counters of one shard call, which also count into the root's
    /// metrics of that shard and phase.
    pub fn counters(&self, shard: usize, phase: ShardPhase) -> ShardCallCounters {
        let index = match phase {
            ShardPhase::FanOut => 0,
            ShardPhase::Fetch => 1,
        };
        ShardCallCounters::reporting_to(self.metrics.get(shard).map(|phases| phases[index].clone()))
    }

    /// Makes one shard call, through the caller chosen at start-up, in a
    /// `shard_call` span (the parent of its attempts' spans).
    pub async fn call(&self, request: ShardRequest<'_>) -> ShardCallOutcome {
        let span = tracing::debug_span!(
            "shard_call",
            shard_id = request.replica_set.shard_id,
            phase = request.phase.label(),
            outcome = tracing::field::Empty,
        );
        let counters = request.counters;
        let outcome = self.call_in_span(request).instrument(span.clone()).await;
        span.record("outcome", outcome.name());
        if let ShardCallOutcome::Answered(answer) = &outcome {
            counters.answered_in(answer.latency);
        }
        outcome
    }

    async fn call_in_span(&self, request: ShardRequest<'_>) -> ShardCallOutcome {
        let policy = request.requested_policy.unwrap_or(self.hedge.policy);
        let members = request.replica_set.members();
        let preferred_replica = request.preferred_replica.and_then(|preferred| {
            members
                .iter()
                .position(|member| Arc::ptr_eq(member, preferred))
        });
        let call = ShardCall {
            replica_set: request.replica_set,
            members: &members,
            payload: request.payload,
            request_id: request.request_id,
            deadline: request.deadline,
            preferred_replica,
            hedging: ShardHedging {
                policy,
                settings: &self.hedge,
                budget: &self.budget,
            },
            counters: request.counters,
            crash: Some(CrashContext {
                watch: &self.crash,
                fingerprint: request.fingerprint,
            }),
            hedge_gate: request.hedge_gate,
        };
        match (&self.caller, request.requested_policy) {
            // A request that asks for a policy of its own gets fanout's.
            (Caller::Tower(towers), None) => towers.call_shard(call).await,
            _ => call_shard(call).await,
        }
    }
}
