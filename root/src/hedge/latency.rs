//! A shard's recent attempt latency, in microseconds: two HdrHistograms that
//! take turns (the current one fills; at each rotation it becomes the
//! previous one and a fresh one starts), so the percentiles cover between
//! one and two rotation periods of history and follow changes.
//!
//! An attempt given up before it answered (overtaken by a hedge, cancelled,
//! timed out) tells only that its latency exceeds the time it ran: a
//! *censored* observation. Recording it as a latency would pull the estimate
//! toward the times at which attempts happen to be given up: down for a
//! second hedge dropped a moment after it was sent, up for a straggler cut
//! off at the hedge delay plus the hedge's own latency. Leaving it out would
//! let the estimate drift low (the slow attempts are exactly the ones given
//! up). So censored attempts go to histograms of their own, and percentiles
//! are read off the Kaplan-Meier estimate of the latency distribution: an
//! attempt counts as "still running" up to the time it was given up, and only
//! answers move the estimate.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// How attempts given up without an answer enter the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatencyEstimate {
    /// As censored lower bounds, percentiles from the Kaplan-Meier estimate.
    #[default]
    Censored,
    /// As if their time until given up were their latency (the simpler
    /// estimate, kept to compare against).
    Plain,
}

impl std::str::FromStr for LatencyEstimate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "censored" => Ok(LatencyEstimate::Censored),
            "plain" => Ok(LatencyEstimate::Plain),
            _ => Err(format!("expected censored or plain, got {text:?}")),
        }
    }
}

/// The largest latency recorded (longer ones count as this).
const HIGHEST_MICROS: u64 = 60_000_000;
/// Fewer samples than this give no percentile.
pub const MIN_SAMPLES: u64 = 20;

#[derive(Debug)]
pub struct RotatingLatencyHistogram {
    /// Attempts that answered, this period.
    current: Histogram<u64>,
    /// The previous period plus the current one, kept up to date.
    combined: Histogram<u64>,
    /// Attempts given up after running this long (lower bounds), this period.
    current_censored: Histogram<u64>,
    /// The same over the previous period plus the current one.
    combined_censored: Histogram<u64>,
    rotated_at: Instant,
    period: Duration,
    estimate: LatencyEstimate,
}

impl RotatingLatencyHistogram {
    /// A histogram with the [`LatencyEstimate::Censored`] estimate.
    #[cfg(test)]
    pub fn new(period: Duration) -> Self {
        Self::with_estimate(period, LatencyEstimate::Censored)
    }

    pub fn with_estimate(period: Duration, estimate: LatencyEstimate) -> Self {
        // Bounds and precision are constants that hdrhistogram accepts.
        let empty = Histogram::new_with_bounds(1, HIGHEST_MICROS, 2)
            .expect("constant histogram bounds are valid");
        Self {
            current: empty.clone(),
            combined: empty.clone(),
            current_censored: empty.clone(),
            combined_censored: empty,
            rotated_at: Instant::now(),
            period,
            estimate,
        }
    }

    /// An attempt that answered after `latency`.
    pub fn record(&mut self, latency: Duration) {
        self.rotate_if_due();
        let micros = clamped_micros(latency);
        self.current.saturating_record(micros);
        self.combined.saturating_record(micros);
    }

    /// An attempt given up after running `at_least` without an answer.
    pub fn record_censored(&mut self, at_least: Duration) {
        if self.estimate == LatencyEstimate::Plain {
            return self.record(at_least);
        }
        self.rotate_if_due();
        let micros = clamped_micros(at_least);
        self.current_censored.saturating_record(micros);
        self.combined_censored.saturating_record(micros);
    }

    /// The latency at `percentile` (0..=100) over the last one to two
    /// periods; `None` with fewer than [`MIN_SAMPLES`] attempts. When the
    /// percentile lies beyond every answer (too many attempts were given up
    /// to tell), the longest time seen, a lower bound of it.
    pub fn percentile(&mut self, percentile: f64) -> Option<Duration> {
        self.rotate_if_due();
        if self.len() < MIN_SAMPLES {
            return None;
        }
        let quantile = (percentile / 100.0).clamp(0.0, 1.0);
        let micros = if self.combined_censored.is_empty() {
            self.combined.value_at_quantile(quantile)
        } else {
            kaplan_meier_quantile(&self.combined, &self.combined_censored, quantile)
        };
        Some(Duration::from_micros(micros))
    }

    /// Attempts recorded, answered or given up.
    pub fn len(&self) -> u64 {
        self.combined.len() + self.combined_censored.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rotate_if_due(&mut self) {
        let since = self.rotated_at.elapsed();
        if since < self.period {
            return;
        }
        if since >= self.period * 2 {
            // Both periods are stale.
            for histogram in [
                &mut self.current,
                &mut self.combined,
                &mut self.current_censored,
                &mut self.combined_censored,
            ] {
                histogram.reset();
            }
        } else {
            self.combined = self.current.clone();
            self.current.reset();
            self.combined_censored = self.current_censored.clone();
            self.current_censored.reset();
        }
        self.rotated_at = Instant::now();
    }
}

fn clamped_micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, HIGHEST_MICROS)
}

/// The smallest latency `t` whose Kaplan-Meier estimate `P(latency <= t)`
/// reaches `quantile`, from answered and censored attempts (histograms of one
/// configuration, so their buckets line up). At a tie, answers come first:
/// an attempt given up at `t` was still running at `t`.
fn kaplan_meier_quantile(
    answered: &Histogram<u64>,
    censored: &Histogram<u64>,
    quantile: f64,
) -> u64 {
    let mut answers = answered
        .iter_recorded()
        .map(|step| (step.value_iterated_to(), step.count_at_value()))
        .peekable();
    let mut given_up = censored
        .iter_recorded()
        .map(|step| (step.value_iterated_to(), step.count_at_value()))
        .peekable();
    let mut at_risk = (answered.len() + censored.len()) as f64;
    let mut survival = 1.0f64;
    loop {
        let next_answer = answers.peek().map(|(value, _)| *value);
        let next_given_up = given_up.peek().map(|(value, _)| *value);
        let answer_next = match (next_answer, next_given_up) {
            (None, None) => return answered.max().max(censored.max()),
            (Some(answer_at), Some(given_up_at)) => answer_at <= given_up_at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if answer_next {
            let (answer_at, count) = answers.next().expect("peeked");
            survival *= 1.0 - count as f64 / at_risk;
            at_risk -= count as f64;
            if 1.0 - survival >= quantile - 1e-12 {
                return answer_at;
            }
        } else {
            let (_, count) = given_up.next().expect("peeked");
            at_risk -= count as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn percentiles_need_samples_and_keep_microseconds() {
        let mut histogram = RotatingLatencyHistogram::new(Duration::from_secs(10));
        for _ in 0..(MIN_SAMPLES - 1) {
            histogram.record(Duration::from_micros(250));
        }
        assert_eq!(histogram.percentile(95.0), None);
        histogram.record(Duration::from_micros(250));
        let p95 = histogram.percentile(95.0).unwrap();
        assert!(
            (Duration::from_micros(248)..=Duration::from_micros(252)).contains(&p95),
            "{p95:?}: sub-millisecond precision"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_latency_rotates_out() {
        let mut histogram = RotatingLatencyHistogram::new(Duration::from_secs(10));
        for _ in 0..100 {
            histogram.record(Duration::from_millis(50));
        }
        advance(Duration::from_secs(11)).await;
        for _ in 0..100 {
            histogram.record(Duration::from_millis(1));
        }
        // Both periods count: half are 50 ms.
        assert!(histogram.percentile(95.0).unwrap() >= Duration::from_millis(49));
        advance(Duration::from_secs(10)).await;
        for _ in 0..30 {
            histogram.record(Duration::from_millis(1));
        }
        // The 50 ms period is gone.
        assert!(histogram.percentile(95.0).unwrap() < Duration::from_millis(2));
        advance(Duration::from_secs(25)).await;
        assert_eq!(histogram.percentile(50.0), None, "all stale");
        assert!(histogram.is_empty());
    }

    fn micros(histogram: &mut RotatingLatencyHistogram, percentile: f64) -> u64 {
        histogram.percentile(percentile).unwrap().as_micros() as u64
    }

    #[tokio::test(start_paused = true)]
    async fn without_censoring_kaplan_meier_is_the_plain_quantile() {
        let mut plain = RotatingLatencyHistogram::new(Duration::from_secs(10));
        for latency in 1..=1_000u64 {
            plain.record(Duration::from_micros(latency * 10));
        }
        let answered = plain.combined.clone();
        let nothing_censored = Histogram::new_from(&answered);
        for quantile in [0.5, 0.9, 0.95, 0.99, 1.0] {
            assert_eq!(
                kaplan_meier_quantile(&answered, &nothing_censored, quantile),
                answered.value_at_quantile(quantile),
                "q {quantile}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_dropped_early_do_not_pull_the_estimate_down() {
        // 95 attempts answer at 1 ms, 5 at 10 ms; 50 hedges are dropped 100 µs
        // after they were sent (another attempt won): as latencies they would
        // make p95 1 ms; as "at least 100 µs" they leave it at 10 ms.
        let mut histogram = RotatingLatencyHistogram::new(Duration::from_secs(10));
        for _ in 0..95 {
            histogram.record(Duration::from_millis(1));
        }
        for _ in 0..5 {
            histogram.record(Duration::from_millis(10));
        }
        for _ in 0..50 {
            histogram.record_censored(Duration::from_micros(100));
        }
        let p95 = micros(&mut histogram, 95.5);
        assert!((9_900..=10_100).contains(&p95), "p95.5 {p95} µs");
        assert!(micros(&mut histogram, 50.0) <= 1_010);
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_cut_off_by_hedges_still_count_as_slow() {
        // 97 answers at 1 ms; 3 stragglers given up at 4 ms (a hedge won):
        // P(latency <= 1 ms) = 0.97, so p95 is 1 ms and p98 lies beyond every
        // answer: the estimate is the longest time seen, a lower bound.
        let mut histogram = RotatingLatencyHistogram::new(Duration::from_secs(10));
        for _ in 0..97 {
            histogram.record(Duration::from_millis(1));
        }
        for _ in 0..3 {
            histogram.record_censored(Duration::from_millis(4));
        }
        assert!(micros(&mut histogram, 95.0) <= 1_010);
        let p98 = micros(&mut histogram, 98.0);
        assert!((3_960..=4_040).contains(&p98), "p98 {p98} µs");
        // Left out, they would have let p98 drift down to 1 ms.
        assert_eq!(histogram.len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_plain_estimate_takes_given_up_attempts_as_latencies() {
        let mut histogram = RotatingLatencyHistogram::with_estimate(
            Duration::from_secs(10),
            LatencyEstimate::Plain,
        );
        for _ in 0..95 {
            histogram.record(Duration::from_millis(1));
        }
        for _ in 0..5 {
            histogram.record(Duration::from_millis(10));
        }
        for _ in 0..50 {
            histogram.record_censored(Duration::from_micros(100));
        }
        // The early drops pull p95.5 down to 1 ms (the censored estimate keeps 10 ms).
        assert!(micros(&mut histogram, 95.5) <= 1_010);
        assert_eq!("plain".parse(), Ok(LatencyEstimate::Plain));
        assert!("guess".parse::<LatencyEstimate>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn censored_attempts_rotate_out_too() {
        let mut histogram = RotatingLatencyHistogram::new(Duration::from_secs(10));
        for _ in 0..30 {
            histogram.record_censored(Duration::from_millis(50));
        }
        advance(Duration::from_secs(21)).await;
        for _ in 0..30 {
            histogram.record(Duration::from_millis(1));
        }
        assert!(micros(&mut histogram, 99.0) <= 1_010);
    }
}
