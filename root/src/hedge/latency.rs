//! A shard's recent attempt latency, in microseconds: two HdrHistograms that
//! take turns (the current one fills; at each rotation it becomes the
//! previous one and a fresh one starts), so the percentiles cover between
//! one and two rotation periods of history and follow changes.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The largest latency recorded (longer ones count as this).
const HIGHEST_MICROS: u64 = 60_000_000;
/// Fewer samples than this give no percentile.
pub const MIN_SAMPLES: u64 = 20;

#[derive(Debug)]
pub struct RotatingLatencyHistogram {
    current: Histogram<u64>,
    /// The previous period plus the current one, kept up to date.
    combined: Histogram<u64>,
    rotated_at: Instant,
    period: Duration,
}

impl RotatingLatencyHistogram {
    pub fn new(period: Duration) -> Self {
        // Bounds and precision are constants that hdrhistogram accepts.
        let empty = Histogram::new_with_bounds(1, HIGHEST_MICROS, 2)
            .expect("constant histogram bounds are valid");
        Self {
            current: empty.clone(),
            combined: empty,
            rotated_at: Instant::now(),
            period,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.rotate_if_due();
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_MICROS);
        self.current.saturating_record(micros);
        self.combined.saturating_record(micros);
    }

    /// The latency at `percentile` (0..=100) over the last one to two
    /// periods; `None` with fewer than [`MIN_SAMPLES`] samples.
    pub fn percentile(&mut self, percentile: f64) -> Option<Duration> {
        self.rotate_if_due();
        if self.combined.len() < MIN_SAMPLES {
            return None;
        }
        let micros = self
            .combined
            .value_at_quantile((percentile / 100.0).clamp(0.0, 1.0));
        Some(Duration::from_micros(micros))
    }

    pub fn len(&self) -> u64 {
        self.combined.len()
    }

    pub fn is_empty(&self) -> bool {
        self.combined.is_empty()
    }

    fn rotate_if_due(&mut self) {
        let since = self.rotated_at.elapsed();
        if since < self.period {
            return;
        }
        if since >= self.period * 2 {
            // Both periods are stale.
            self.current.reset();
            self.combined.reset();
        } else {
            self.combined = self.current.clone();
            self.current.reset();
        }
        self.rotated_at = Instant::now();
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
}
