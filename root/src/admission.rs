//! Admission control: the root admits at most a limit of requests at once
//! and refuses the excess with RESOURCE_EXHAUSTED, so that an
//! overload makes some callers retry later instead of making every request
//! late (when all of them queue, each waits behind all the others and the
//! deadlines pass while the leaves still work for them: goodput collapses).
//!
//! A request over the limit may wait a little for a slot
//! ([`AdmissionSettings::max_queue_wait`], 50 ms; at most as many waiting as
//! the limit), so that a burst is queued briefly rather than refused; past
//! that it is refused.
//!
//! The limit ([`AdmissionPolicy::Adaptive`], the default) follows the
//! latency of the requests it admits, in the spirit of TCP Vegas and Netflix's
//! concurrency-limits: every [`WINDOW`] (with at least [`MIN_SAMPLES`]
//! answers), the median latency of the window's successful requests is
//! compared with the latency the cluster has when it is not congested (the
//! baseline):
//!
//! - above `tolerance` times the baseline, or a request missed its deadline,
//!   while at least half the limit was in flight: congestion, the limit
//!   shrinks by a tenth (multiplicative decrease). Far below the limit the
//!   root's admissions are not what makes requests slow (a leaf restarting,
//!   a slow replica: the hedges' business), and a smaller limit would only
//!   refuse the next burst, so nothing is learned (as in concurrency-limits'
//!   Vegas and Gradient2, which ignore application-limited windows);
//! - otherwise, if the limit was reached during the window, it grows by a
//!   tenth (at least one): the cluster had room;
//! - otherwise nothing is learned: the limit stays.
//!
//! The baseline follows the window medians only while the limit is not
//! reached (a slower query mix raises it), and otherwise only goes down:
//! under sustained overload every window is congested, and a baseline that
//! followed them would drift up and let the queue grow back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Code;

/// How often the adaptive limit is reconsidered.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Answers a window needs before it counts.
pub const MIN_SAMPLES: usize = 10;
/// Latency samples kept per window (a reservoir of the first ones).
const MAX_SAMPLES: usize = 512;

/// How many requests the root admits at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionPolicy {
    /// Every request is admitted.
    Off,
    /// At most this many at once.
    Fixed(u32),
    /// A limit that follows the latency of admitted requests.
    Adaptive,
}

impl std::str::FromStr for AdmissionPolicy {
    type Err = String;

    /// `off`, `adaptive` or `fixed:N`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(AdmissionPolicy::Off),
            "adaptive" => Ok(AdmissionPolicy::Adaptive),
            _ => {
                let limit = text
                    .strip_prefix("fixed:")
                    .and_then(|limit| limit.parse::<u32>().ok())
                    .filter(|limit| *limit > 0)
                    .ok_or_else(|| {
                        format!("expected off, adaptive or fixed:N with N > 0, got {text:?}")
                    })?;
                Ok(AdmissionPolicy::Fixed(limit))
            }
        }
    }
}

/// The admission settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionSettings {
    pub policy: AdmissionPolicy,
    /// The adaptive limit's range and start.
    pub min_limit: u32,
    pub max_limit: u32,
    pub initial_limit: u32,
    /// How many times the baseline latency a window's median may be before
    /// the window counts as congested.
    pub tolerance: f64,
    /// How long a request over the limit may wait for a slot before it is
    /// refused (zero: refused at once). A burst (the requests a client held
    /// back while the root restarted) queues briefly instead of being
    /// refused; at most `limit` requests wait, so an overload still meets
    /// refusals within this long.
    pub max_queue_wait: Duration,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            policy: AdmissionPolicy::Adaptive,
            min_limit: 4,
            max_limit: 4096,
            initial_limit: 32,
            tolerance: 2.0,
            max_queue_wait: Duration::from_millis(50),
        }
    }
}

impl AdmissionSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.min_limit == 0 || self.min_limit > self.max_limit {
            return Err(format!(
                "the admission limit's range {}..={} is empty or starts at 0",
                self.min_limit, self.max_limit
            ));
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return Err(format!(
                "the initial admission limit {} is outside {}..={}",
                self.initial_limit, self.min_limit, self.max_limit
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance > 1.0) {
            return Err(format!(
                "the admission tolerance must be above 1, got {}",
                self.tolerance
            ));
        }
        Ok(())
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    pub in_flight: u32,
    pub limit: u32,
}

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the root is overloaded: {} requests in flight, the limit is {}; retry later",
            self.in_flight, self.limit
        )
    }
}

/// The requests in flight and the limit on them.
#[derive(Debug)]
pub struct Admission {
    settings: AdmissionSettings,
    in_flight: AtomicU32,
    /// The most requests in flight seen during the current window.
    peak_in_flight: AtomicU32,
    limit: AtomicU32,
    refused: AtomicU64,
    /// Requests waiting for a slot now.
    waiting: AtomicU32,
    /// Notified each time a request leaves.
    slot_freed: Notify,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started_at: Instant,
    latencies: Vec<Duration>,
    missed_deadlines: usize,
    /// The uncongested latency; `None` until the first window.
    baseline: Option<Duration>,
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Admission {
        let limit = match settings.policy {
            AdmissionPolicy::Off => u32::MAX,
            AdmissionPolicy::Fixed(limit) => limit,
            AdmissionPolicy::Adaptive => settings.initial_limit,
        };
        Admission {
            settings,
            in_flight: AtomicU32::new(0),
            peak_in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(limit),
            refused: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            slot_freed: Notify::new(),
            window: Mutex::new(Window {
                started_at: Instant::now(),
                latencies: Vec::with_capacity(MAX_SAMPLES),
                missed_deadlines: 0,
                baseline: None,
            }),
        }
    }

    /// Admits a request at once, or says why not (no wait). The permit
    /// counts it in flight until it is finished or dropped.
    #[cfg(test)]
    pub fn try_admit(&self) -> Result<AdmissionPermit<'_>, Overloaded> {
        self.take_slot().inspect_err(|_| {
            self.refused.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Admits a request, waiting for a slot up to
    /// [`AdmissionSettings::max_queue_wait`] (and not past `deadline`) when
    /// the limit is reached and fewer than `limit` requests wait already.
    pub async fn admit(&self, deadline: Instant) -> Result<AdmissionPermit<'_>, Overloaded> {
        let refused = match self.take_slot() {
            Ok(permit) => return Ok(permit),
            Err(refused) => refused,
        };
        let wait_until = (Instant::now() + self.settings.max_queue_wait).min(deadline);
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        if wait_until <= Instant::now() || waiting >= refused.limit {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(refused);
        }
        let timeout = tokio::time::sleep_until(wait_until);
        tokio::pin!(timeout);
        loop {
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so a slot freed in between wakes it.
            freed.as_mut().enable();
            let refused = match self.take_slot() {
                Ok(permit) => return Ok(permit),
                Err(refused) => refused,
            };
            tokio::select! {
                () = &mut freed => {}
                () = &mut timeout => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(refused);
                }
            }
        }
    }

    fn take_slot(&self) -> Result<AdmissionPermit<'_>, Overloaded> {
        let limit = self.limit.load(Ordering::Relaxed);
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        if in_flight > limit {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(Overloaded {
                in_flight: in_flight - 1,
                limit,
            });
        }
        self.peak_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        Ok(AdmissionPermit {
            admission: self,
            admitted_at: Instant::now(),
        })
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.slot_freed.notify_one();
    }

    /// The limit now (`u32::MAX` when admission is off).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn policy(&self) -> AdmissionPolicy {
        self.settings.policy
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // A few numbers, consistent between statements.
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn finished(&self, latency: Duration, code: Code) {
        self.leave();
        if self.settings.policy != AdmissionPolicy::Adaptive {
            return;
        }
        let mut window = self.window();
        match code {
            Code::Ok if window.latencies.len() < MAX_SAMPLES => window.latencies.push(latency),
            Code::Ok => {}
            Code::DeadlineExceeded => window.missed_deadlines += 1,
            // Refusals, bad requests, failed shards: nothing about congestion.
            _ => {}
        }
        let now = Instant::now();
        let samples = window.latencies.len() + window.missed_deadlines;
        if now.duration_since(window.started_at) < WINDOW || samples < MIN_SAMPLES {
            return;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let peak = self
            .peak_in_flight
            .swap(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        let next = self.next_limit(&mut window, limit, peak);
        self.limit.store(next, Ordering::Relaxed);
        window.started_at = now;
        window.latencies.clear();
        window.missed_deadlines = 0;
    }

    /// The limit after a window (see the module docs).
    fn next_limit(&self, window: &mut Window, limit: u32, peak_in_flight: u32) -> u32 {
        let settings = &self.settings;
        let binding = peak_in_flight >= limit;
        let pressed = u64::from(peak_in_flight) * 2 >= u64::from(limit);
        let median = median(&mut window.latencies);
        let baseline = match (window.baseline, median) {
            (None, Some(median)) => median,
            (Some(baseline), Some(median)) if !binding => {
                // Follow the cluster's own latency while it is not congested.
                baseline.mul_f64(0.9) + median.mul_f64(0.1)
            }
            (Some(baseline), Some(median)) => baseline.min(median),
            (Some(baseline), None) => baseline,
            (None, None) => return limit,
        };
        window.baseline = Some(baseline);
        let congested = pressed
            && (window.missed_deadlines > 0
                || median.is_some_and(|median| median > baseline.mul_f64(settings.tolerance)));
        let next = if congested {
            (f64::from(limit) * 0.9).floor() as u32
        } else if binding {
            limit.saturating_add((limit / 10).max(1))
        } else {
            limit
        };
        next.clamp(settings.min_limit, settings.max_limit)
    }
}

fn median(latencies: &mut [Duration]) -> Option<Duration> {
    if latencies.is_empty() {
        return None;
    }
    let middle = latencies.len() / 2;
    let (_, median, _) = latencies.select_nth_unstable(middle);
    Some(*median)
}

/// One admitted request; [`finish`](Self::finish) it with its status code.
/// Dropped unfinished (the caller went away), it only leaves the count.
#[must_use = "finish the permit with the request's status code"]
pub struct AdmissionPermit<'a> {
    admission: &'a Admission,
    admitted_at: Instant,
}

impl AdmissionPermit<'_> {
    pub fn finish(self, code: Code) {
        let latency = self.admitted_at.elapsed();
        let admission = self.admission;
        std::mem::forget(self);
        admission.finished(latency, code);
    }
}

impl Drop for AdmissionPermit<'_> {
    fn drop(&mut self) {
        self.admission.leave();
    }
}

/// Counts a request among the waiting ones while it lives.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(limit: u32) -> Admission {
        Admission::new(AdmissionSettings {
            policy: AdmissionPolicy::Fixed(limit),
            ..AdmissionSettings::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_limit_waits_briefly_for_a_slot() {
        let admission = fixed(1);
        let far = Instant::now() + Duration::from_secs(10);
        let first = admission.admit(far).await.unwrap();
        // A slot frees 20 ms later: the waiting request gets it.
        let (second, ()) = tokio::join!(admission.admit(far), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            first.finish(Code::Ok);
        });
        let second = second.expect("admitted once the slot was free");
        assert_eq!(admission.refused(), 0);

        // No slot within the wait: refused after 50 ms, not before.
        let started = Instant::now();
        let refused = admission.admit(far).await.err().expect("refused");
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!((refused.in_flight, refused.limit), (1, 1));
        // Nor past the request's own deadline.
        let started = Instant::now();
        let soon = started + Duration::from_millis(5);
        assert!(admission.admit(soon).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        assert_eq!(admission.refused(), 2);
        drop(second);
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_wait_than_the_limit_and_none_when_the_wait_is_zero() {
        let admission = fixed(2);
        let far = Instant::now() + Duration::from_secs(10);
        let _held = [
            admission.admit(far).await.unwrap(),
            admission.admit(far).await.unwrap(),
        ];
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            admission.admit(far),
            admission.admit(far),
            admission.admit(far)
        );
        // Two may wait (the limit); the third is refused at once; the two
        // waiting ones are refused when their wait ends.
        assert!(a.is_err() && b.is_err() && c.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(admission.refused(), 3);

        let at_once = Admission::new(AdmissionSettings {
            policy: AdmissionPolicy::Fixed(1),
            max_queue_wait: Duration::ZERO,
            ..AdmissionSettings::default()
        });
        let _held = at_once.admit(far).await.unwrap();
        let started = Instant::now();
        assert!(at_once.admit(far).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    fn adaptive() -> Admission {
        Admission::new(AdmissionSettings {
            initial_limit: 10,
            ..AdmissionSettings::default()
        })
    }

    /// Admits `concurrency` requests at once, then finishes them all after
    /// `latency` (paused clock): one window's worth of traffic at that load.
    async fn window_of(admission: &Admission, concurrency: u32, latency: Duration, code: Code) {
        let permits: Vec<_> = (0..concurrency)
            .filter_map(|_| admission.try_admit().ok())
            .collect();
        tokio::time::advance(latency).await;
        for permit in permits {
            permit.finish(code);
        }
        tokio::time::advance(WINDOW).await;
    }

    #[test]
    fn parses_the_policies() {
        assert_eq!("off".parse(), Ok(AdmissionPolicy::Off));
        assert_eq!("adaptive".parse(), Ok(AdmissionPolicy::Adaptive));
        assert_eq!("fixed:8".parse(), Ok(AdmissionPolicy::Fixed(8)));
        assert!("fixed:0".parse::<AdmissionPolicy>().is_err());
        assert!("lots".parse::<AdmissionPolicy>().is_err());
    }

    #[test]
    fn a_fixed_limit_refuses_the_excess_at_once_and_a_dropped_permit_frees_its_place() {
        let admission = Admission::new(AdmissionSettings {
            policy: AdmissionPolicy::Fixed(2),
            ..AdmissionSettings::default()
        });
        let first = admission.try_admit().unwrap();
        let second = admission.try_admit().unwrap();
        let refused = admission.try_admit().err().unwrap();
        assert_eq!(
            refused,
            Overloaded {
                in_flight: 2,
                limit: 2
            }
        );
        assert_eq!(
            refused.to_string(),
            "the root is overloaded: 2 requests in flight, the limit is 2; retry later"
        );
        drop(first);
        let third = admission.try_admit().unwrap();
        second.finish(Code::Ok);
        third.finish(Code::Ok);
        assert_eq!((admission.in_flight(), admission.refused()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_grows_while_it_binds_without_congestion() {
        let admission = adaptive();
        for _ in 0..5 {
            window_of(&admission, 10, Duration::from_millis(5), Code::Ok).await;
        }
        assert!(admission.limit() > 10, "{}", admission.limit());
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_stays_when_it_does_not_bind() {
        let admission = adaptive();
        for _ in 0..5 {
            window_of(&admission, 5, Duration::from_millis(5), Code::Ok).await;
        }
        assert_eq!(admission.limit(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn congestion_shrinks_the_limit_and_the_baseline_does_not_drift_up() {
        let admission = adaptive();
        window_of(&admission, 10, Duration::from_millis(5), Code::Ok).await;
        let grown = admission.limit();
        // Latency triples while the limit binds: it shrinks, window after
        // window, down to the floor; a baseline following the congested
        // windows would have stopped it.
        for _ in 0..40 {
            let concurrency = admission.limit();
            window_of(&admission, concurrency, Duration::from_millis(30), Code::Ok).await;
        }
        assert!(
            admission.limit() < grown,
            "{} !< {grown}",
            admission.limit()
        );
        assert_eq!(admission.limit(), AdmissionSettings::default().min_limit);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_far_below_the_limit_leave_it_alone() {
        let admission = Admission::new(AdmissionSettings {
            initial_limit: 40,
            ..AdmissionSettings::default()
        });
        // The baseline: a light load, answered in 5 ms.
        window_of(&admission, 19, Duration::from_millis(5), Code::Ok).await;
        // A replica restarting makes the light load slow, and some of it
        // late: the root's limit is not the cause, so it stays.
        for _ in 0..40 {
            window_of(&admission, 19, Duration::from_millis(30), Code::Ok).await;
            window_of(
                &admission,
                19,
                Duration::from_millis(5),
                Code::DeadlineExceeded,
            )
            .await;
        }
        assert_eq!(admission.limit(), 40);
        // The same slowness with half the limit in flight shrinks it.
        window_of(&admission, 20, Duration::from_millis(30), Code::Ok).await;
        assert_eq!(admission.limit(), 36);
    }

    #[tokio::test(start_paused = true)]
    async fn missed_deadlines_count_as_congestion() {
        let admission = adaptive();
        window_of(&admission, 10, Duration::from_millis(5), Code::Ok).await;
        let before = admission.limit();
        window_of(
            &admission,
            10,
            Duration::from_millis(5),
            Code::DeadlineExceeded,
        )
        .await;
        assert!(admission.limit() < before);
    }
}
