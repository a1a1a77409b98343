//! The launcher thread: it walks the schedule and, at each intended send
//! instant, spawns the request as its own tokio task, never waiting for an
//! earlier response; it waits only for the in-flight cap, and counts how
//! late that made it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc};

use crate::queries::QuerySet;
use crate::schedule::ArrivalOffsets;
use crate::target::LoadTarget;

use super::recorder::Completion;
use super::{StopCondition, micros, new_histogram};

/// The launcher checks for a stop request at least this often while it sleeps.
const LAUNCHER_WAKE_SLICE: Duration = Duration::from_millis(50);

/// What the launcher thread needs; moved into it.
pub(super) struct LaunchPlan {
    pub(super) runtime: Handle,
    pub(super) target: LoadTarget,
    pub(super) queries: QuerySet,
    pub(super) offsets: ArrivalOffsets,
    pub(super) start: Instant,
    pub(super) warmup: Duration,
    pub(super) stop: StopCondition,
    pub(super) timeout: Duration,
    pub(super) late_threshold: Duration,
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) max_in_flight: usize,
    pub(super) stop_requested: Arc<AtomicBool>,
    pub(super) launched_total: Arc<AtomicU64>,
    pub(super) completions: mpsc::UnboundedSender<Completion>,
}

/// What the launcher saw of its own punctuality (measured launches only).
pub(super) struct LaunchStats {
    pub(super) launched_measured: u64,
    pub(super) lag: Histogram<u64>,
    pub(super) late_launches: u64,
    pub(super) in_flight_cap_waits: u64,
    pub(super) max_in_flight_observed: u64,
    pub(super) stopped_early: bool,
}

pub(super) fn launch_on_schedule(plan: LaunchPlan) -> LaunchStats {
    let mut stats = LaunchStats {
        launched_measured: 0,
        lag: new_histogram(),
        late_launches: 0,
        in_flight_cap_waits: 0,
        max_in_flight_observed: 0,
        stopped_early: false,
    };
    for (request_number, offset) in (0u64..).zip(plan.offsets) {
        let measured = offset >= plan.warmup;
        let schedule_done = match plan.stop {
            StopCondition::Duration(duration) => offset >= plan.warmup + duration,
            StopCondition::Requests(requests) => measured && stats.launched_measured >= requests,
        };
        if schedule_done {
            break;
        }
        let intended = plan.start + offset;
        if !sleep_until(intended, &plan.stop_requested) || plan.completions.is_closed() {
            stats.stopped_early = true;
            break;
        }
        let permit = match plan.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if measured {
                    stats.in_flight_cap_waits += 1;
                }
                // Waiting here is the point: the cap holds back every later launch,
                // and their lateness shows in their latency and in the report.
                match plan
                    .runtime
                    .block_on(plan.in_flight.clone().acquire_owned())
                {
                    Ok(permit) => permit,
                    Err(_closed) => break, // never closed; nothing left to do if it were
                }
            }
        };
        let launched = Instant::now();
        if measured {
            let lag = launched.saturating_duration_since(intended);
            stats.lag.saturating_record(micros(lag));
            if lag > plan.late_threshold {
                stats.late_launches += 1;
            }
            let in_flight_now = (plan.max_in_flight - plan.in_flight.available_permits()) as u64;
            stats.max_in_flight_observed = stats.max_in_flight_observed.max(in_flight_now);
            stats.launched_measured += 1;
        }
        plan.launched_total.fetch_add(1, Ordering::Relaxed);
        let target = plan.target.clone();
        let query = plan.queries.query_for(request_number).clone();
        let completions = plan.completions.clone();
        let timeout = plan.timeout;
        plan.runtime.spawn(async move {
            let outcome = target.call(&query, timeout, request_number).await;
            let completed = Instant::now();
            drop(permit);
            // The receiver is gone only when the run was dropped; nothing to record then.
            let _ = completions.send(Completion {
                intended,
                completed,
                measured,
                outcome,
            });
        });
    }
    stats
}

/// Sleeps until `deadline` with the OS timer; false when a stop was requested first.
fn sleep_until(deadline: Instant, stop_requested: &AtomicBool) -> bool {
    loop {
        if stop_requested.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(LAUNCHER_WAKE_SLICE));
    }
}
