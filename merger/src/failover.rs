//! No single point of failure in the merge: the root's [`MergerSet`] holds
//! the merger processes it may use, in order of preference, and optionally
//! an in-process merge to fall back on. A request's [`FailoverSession`]
//! keeps what it sent (the start and every partial) and, when its merger
//! cannot be reached or breaks mid-merge, replays them into the next one.
//!
//! - A merger is *unreachable* when the call fails on the transport (no
//!   connection, the connection reset mid-stream), answers UNAVAILABLE, or
//!   says it is out of room (RESOURCE_EXHAUSTED). Any other status (an
//!   INVALID_ARGUMENT about the request, a DEADLINE_EXCEEDED) is the merge's
//!   answer and is not failed over.
//! - A merger found unreachable is tried last for [`COOL_DOWN`], so the
//!   requests after it go straight to one that works.
//! - The embedded fallback ([`MergerSet::with_fallback`]) runs only when
//!   every merger process failed: it is for the reference top-k merge, whose
//!   result a `fanout merger` process would give too; a custom merge that
//!   no in-process merge can stand in for has none, and its requests fail
//!   with UNAVAILABLE.
//!
//! [`MergerSet::counts`] says how many merges each endpoint took and how
//! many failed over, for the root's metrics.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fanout_proto::v1::{MergeEnd, MergeStart, ShardPartial};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::endpoint::{MergeSession, MergerEndpoint};
use crate::error::MergerError;
use crate::merge::Merge;

/// How long a merger found unreachable is tried only after the others.
pub const COOL_DOWN: Duration = Duration::from_secs(1);

/// One place a merge can run, and what it has done.
#[derive(Debug)]
struct Target {
    /// The merger's URL, or "embedded".
    label: String,
    endpoint: MergerEndpoint,
    /// Until when it is tried only after the others.
    cooling_until: Mutex<Option<Instant>>,
    sessions: AtomicU64,
    failures: AtomicU64,
}

impl Target {
    fn new(label: String, endpoint: MergerEndpoint) -> Target {
        Target {
            label,
            endpoint,
            cooling_until: Mutex::new(None),
            sessions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn is_cooling(&self, now: Instant) -> bool {
        let cooling = self
            .cooling_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cooling.is_some_and(|until| until > now)
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut cooling = self
            .cooling_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *cooling = Some(Instant::now() + COOL_DOWN);
    }
}

/// The merges of one endpoint, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeTargetCounts {
    /// A merger's URL, or "embedded".
    pub label: String,
    /// Merges (or replays of one) it was given.
    pub sessions: u64,
    /// Of those, how many found it unreachable.
    pub failures: u64,
}

/// The mergers a root may use; see the module docs.
#[derive(Debug, Clone)]
pub struct MergerSet {
    targets: Arc<Vec<Target>>,
    /// Requests whose merge moved to another endpoint.
    failovers: Arc<AtomicU64>,
}

impl MergerSet {
    /// The merge runs in-process, always.
    pub fn embedded(merge: Arc<dyn Merge>) -> MergerSet {
        MergerSet::from_targets(vec![Target::new(
            "embedded".to_owned(),
            MergerEndpoint::Embedded(merge),
        )])
    }

    /// Merger processes at `urls`, tried in this order (see
    /// [`MergerEndpoint::connect`]); nothing is contacted yet.
    pub async fn remote(urls: &[String]) -> Result<MergerSet, MergerError> {
        Self::remote_with(urls, None).await
    }

    /// [`remote`](Self::remote), over TLS when `tls` is given.
    pub async fn remote_with(
        urls: &[String],
        tls: Option<&fanout_runtime::tls::ClientTls>,
    ) -> Result<MergerSet, MergerError> {
        let mut targets = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = MergerEndpoint::connect_with(url, tls).await?;
            targets.push(Target::new(url.clone(), endpoint));
        }
        Ok(MergerSet::from_targets(targets))
    }

    /// The same set, merging in-process with `merge` when no merger process
    /// can be reached.
    pub fn with_fallback(self, merge: Arc<dyn Merge>) -> MergerSet {
        let mut targets: Vec<Target> = match Arc::try_unwrap(self.targets) {
            Ok(targets) => targets,
            Err(shared) => shared
                .iter()
                .map(|target| Target::new(target.label.clone(), target.endpoint.clone()))
                .collect(),
        };
        targets.push(Target::new(
            "embedded".to_owned(),
            MergerEndpoint::Embedded(merge),
        ));
        MergerSet::from_targets(targets)
    }

    fn from_targets(targets: Vec<Target>) -> MergerSet {
        MergerSet {
            targets: Arc::new(targets),
            failovers: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Requests whose merge failed over to another endpoint so far.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// What each endpoint did so far, in order of preference.
    pub fn counts(&self) -> Vec<MergeTargetCounts> {
        self.targets
            .iter()
            .map(|target| MergeTargetCounts {
                label: target.label.clone(),
                sessions: target.sessions.load(Ordering::Relaxed),
                failures: target.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Endpoints in the order to try them now: those not cooling down first,
    /// each group in the configured order with an embedded fallback last (so
    /// while every merger process cools down, the fallback goes first).
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let (mut warm, mut cooling): (Vec<usize>, Vec<usize>) =
            (0..self.targets.len()).partition(|&index| !self.targets[index].is_cooling(now));
        let embedded_last = |indexes: &mut Vec<usize>| {
            // A stable sort: the configured order stays within each kind.
            indexes.sort_by_key(|&index| {
                matches!(self.targets[index].endpoint, MergerEndpoint::Embedded(_))
            });
        };
        embedded_last(&mut warm);
        embedded_last(&mut cooling);
        warm.extend(cooling);
        warm
    }

    /// Starts the merge of one request on the first endpoint that takes it.
    /// `timeout` is the time left for the request.
    pub async fn open(
        &self,
        start: MergeStart,
        timeout: Option<Duration>,
    ) -> Result<FailoverSession, Status> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let replay = (self.targets.len() > 1).then(|| Replay {
            start: start.clone(),
            partials: Vec::new(),
        });
        let mut session = FailoverSession {
            set: self.clone(),
            order: self.order(),
            next: 0,
            current: None,
            replay,
            deadline,
            failed_over: false,
        };
        session.open_next(start).await?;
        Ok(session)
    }
}

/// What a session sent, to replay into another merger.
struct Replay {
    start: MergeStart,
    partials: Vec<ShardPartial>,
}

/// The merge of one request, from the root's side, moving to the next
/// endpoint of its [`MergerSet`] when its merger is unreachable. The same
/// calls as [`MergeSession`].
pub struct FailoverSession {
    set: MergerSet,
    /// Indexes of the endpoints to try, in order.
    order: Vec<usize>,
    /// The next position in `order` to try.
    next: usize,
    /// The session now in use, and its endpoint's index.
    current: Option<(MergeSession, usize)>,
    /// `None` when there is nowhere to fail over to.
    replay: Option<Replay>,
    deadline: Option<Instant>,
    failed_over: bool,
}

impl std::fmt::Debug for FailoverSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverSession")
            .field("current", &self.current.as_ref().map(|(_, index)| index))
            .finish_non_exhaustive()
    }
}

/// Whether a merger's failure means it cannot be reached (fail over) rather
/// than its answer about the request.
pub fn is_unreachable(status: &Status) -> bool {
    // A status made on this side from a transport error carries its source.
    let from_transport = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted => true,
        Code::Cancelled | Code::Unknown | Code::Internal => from_transport,
        _ => false,
    }
}

impl FailoverSession {
    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// Counts this request as failed over (once).
    fn note_failover(&mut self) {
        if !self.failed_over {
            self.failed_over = true;
            self.set.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens the next endpoint that takes `start`; on the last failure, its
    /// status.
    async fn open_next(&mut self, start: MergeStart) -> Result<(), Status> {
        let mut last_failure = None;
        while let Some(&index) = self.order.get(self.next) {
            self.next += 1;
            let target = &self.set.targets[index];
            target.sessions.fetch_add(1, Ordering::Relaxed);
            let mut start = start.clone();
            if let Some(remaining) = self.remaining() {
                if remaining.is_zero() {
                    return Err(MergerError::DeadlineExceeded.into());
                }
                start.timeout_micros = remaining.as_micros().max(1) as u64;
            }
            match target.endpoint.open(start, self.remaining()).await {
                Ok(session) => {
                    self.current = Some((session, index));
                    if last_failure.is_some() {
                        self.note_failover();
                    }
                    return Ok(());
                }
                Err(status) if is_unreachable(&status) && self.replay.is_some() => {
                    tracing::warn!(merger = %target.label, %status, "merger unreachable; trying the next");
                    target.failed();
                    last_failure = Some(status);
                }
                Err(status) => {
                    if is_unreachable(&status) {
                        target.failed();
                    }
                    return Err(status);
                }
            }
        }
        Err(last_failure.unwrap_or_else(|| Status::unavailable("no merger to try")))
    }

    /// After the current merger failed with `status`: the next endpoint,
    /// given everything sent so far; `status` itself if it is not a
    /// failure to fail over or nothing is left.
    async fn fail_over(&mut self, failed: usize, status: Status) -> Result<(), Status> {
        self.current = None;
        if !is_unreachable(&status) || self.replay.is_none() {
            return Err(status);
        }
        let target = &self.set.targets[failed];
        tracing::warn!(merger = %target.label, %status, "merger broke mid-merge; failing over");
        target.failed();
        loop {
            let Some(replay) = &self.replay else {
                return Err(status);
            };
            let (start, partials) = (replay.start.clone(), replay.partials.clone());
            if self.next >= self.order.len() {
                return Err(Status::unavailable(fanout_proto::status::bounded(format!(
                    "no merger could be reached: {}",
                    status.message()
                ))));
            }
            self.open_next(start).await?;
            self.note_failover();
            let mut replayed = Ok(());
            if let Some((session, _)) = self.current.as_mut() {
                for partial in partials {
                    if let Err(status) = session.add_partial(partial).await {
                        replayed = Err(status);
                        break;
                    }
                }
            }
            match replayed {
                Ok(()) => return Ok(()),
                Err(again) if is_unreachable(&again) => {
                    if let Some((_, index)) = self.current.take() {
                        self.set.targets[index].failed();
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Hands one shard's partial to the merge.
    pub async fn add_partial(&mut self, partial: ShardPartial) -> Result<(), Status> {
        let Some((session, index)) = self.current.as_mut() else {
            return Err(Status::unavailable("no merger"));
        };
        let index = *index;
        match &mut self.replay {
            Some(replay) => {
                replay.partials.push(partial.clone());
                match session.add_partial(partial).await {
                    Ok(()) => Ok(()),
                    // The replay includes this partial: once it is through, done.
                    Err(status) => self.fail_over(index, status).await,
                }
            }
            None => session.add_partial(partial).await,
        }
    }

    /// Resolves when the merger says further partials cannot change the
    /// result (see [`MergeSession::enough`]).
    pub async fn enough(&mut self) -> String {
        match self.current.as_mut() {
            Some((session, _)) => session.enough().await,
            None => std::future::pending().await,
        }
    }

    /// Ends the merge with the final coverage and returns the merged payload.
    pub async fn finish(mut self, end: MergeEnd) -> Result<prost_types::Any, Status> {
        loop {
            let Some((session, index)) = self.current.take() else {
                return Err(Status::unavailable("no merger"));
            };
            match session.finish(end.clone()).await {
                Ok(merged) => return Ok(merged),
                Err(status) => self.fail_over(index, status).await?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopKMerge;
    use fanout_proto::search::v1::{ShardHit, ShardSearchRequest, ShardSearchResponse};

    fn start() -> MergeStart {
        MergeStart {
            request: Some(fanout_proto::any::pack(&ShardSearchRequest {
                k: 2,
                ..Default::default()
            })),
            shard_count: 2,
            ..Default::default()
        }
    }

    fn partial(shard_id: u32, score: f32) -> ShardPartial {
        ShardPartial {
            shard_id,
            payload: Some(fanout_proto::any::pack(&ShardSearchResponse {
                hits: vec![ShardHit {
                    id: format!("d{shard_id}"),
                    score,
                    ..Default::default()
                }],
                total_hits: 1,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    async fn unreachable_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        address.to_string()
    }

    #[tokio::test]
    async fn a_merger_that_is_down_falls_back_to_the_embedded_merge_and_cools_down() {
        let set = MergerSet::remote(&[unreachable_url().await])
            .await
            .unwrap()
            .with_fallback(Arc::new(TopKMerge));
        let mut session = set
            .open(start(), Some(Duration::from_secs(5)))
            .await
            .unwrap();
        session.add_partial(partial(0, 1.0)).await.unwrap();
        session.add_partial(partial(1, 2.0)).await.unwrap();
        let merged: ShardSearchResponse =
            fanout_proto::any::unpack(&session.finish(MergeEnd::default()).await.unwrap()).unwrap();
        assert_eq!(merged.hits.len(), 2);
        assert_eq!(merged.hits[0].id, "d1");
        let counts = set.counts();
        assert_eq!((counts[0].sessions, counts[0].failures), (1, 1));
        assert_eq!(
            (counts[1].label.as_str(), counts[1].sessions),
            ("embedded", 1)
        );
        assert_eq!(set.failovers(), 1);
        // While the merger cools down, the next request goes to the fallback first.
        assert_eq!(set.order(), vec![1, 0]);
    }

    #[tokio::test]
    async fn without_a_fallback_an_unreachable_merger_is_unavailable() {
        let set = MergerSet::remote(&[unreachable_url().await]).await.unwrap();
        let status = set
            .open(start(), Some(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status}");
    }

    #[tokio::test]
    async fn the_merges_answer_is_not_failed_over() {
        let set = MergerSet::embedded(Arc::new(TopKMerge)).with_fallback(Arc::new(TopKMerge));
        let mut bad_start = start();
        bad_start.request = None;
        let status = set.open(bad_start, None).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(set.counts()[1].sessions, 0, "the fallback was not tried");
    }

    #[test]
    fn unreachable_is_told_from_an_answer() {
        assert!(is_unreachable(&Status::unavailable("down")));
        assert!(is_unreachable(&Status::resource_exhausted("full")));
        assert!(!is_unreachable(&Status::invalid_argument("bad")));
        assert!(!is_unreachable(&Status::cancelled("the merger cancelled")));
        let mut reset = Status::cancelled("h2 protocol error");
        reset.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_unreachable(&reset));
    }
}
