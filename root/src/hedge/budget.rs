//! The budget that hedges and retries share: a token bucket. Every primary
//! leaf call deposits `percent / 100` of a token, and a floor of tokens per
//! second trickles in regardless (so a quiet root can still hedge); a hedge
//! or a retry spends one whole token; the bucket holds at most one second's
//! floor (at least one token). When it is empty the extra call is not made
//! and counted as suppressed, so a latency regression adds at most
//! `percent` of the load plus the floor, never doubles it.
//!
//! Failing over comes before speculating: a hedge may spend only while the
//! bucket holds more than [`RETRY_RESERVE`] of its capacity beyond the
//! token, so that when a replica dies the retries of the calls it took with
//! it still find tokens, however busy hedging has been.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// The share of the bucket hedges leave to retries.
pub const RETRY_RESERVE: f64 = 0.2;

#[derive(Debug)]
pub struct HedgeBudget {
    percent: f64,
    floor_per_second: f64,
    capacity: f64,
    bucket: Mutex<Bucket>,
    spent: AtomicU64,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl HedgeBudget {
    /// `percent` of primary calls plus `floor_per_second`; starts full.
    pub fn new(percent: f64, floor_per_second: f64) -> Self {
        let capacity = floor_per_second.max(1.0);
        Self {
            percent: percent.max(0.0),
            floor_per_second: floor_per_second.max(0.0),
            capacity,
            bucket: Mutex::new(Bucket {
                tokens: capacity,
                refilled_at: Instant::now(),
            }),
            spent: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// A primary leaf call was made: deposits its share.
    pub fn record_primary_call(&self) {
        let deposit = self.percent / 100.0;
        self.with_bucket(|bucket, capacity| {
            bucket.tokens = (bucket.tokens + deposit).min(capacity);
        });
    }

    /// Takes a token for a retry; false (and counted as suppressed) when
    /// the bucket is empty.
    pub fn try_spend(&self) -> bool {
        self.spend_above(0.0)
    }

    /// Takes a token for a hedge; false (and counted as suppressed) unless
    /// the retries' reserve is left after it.
    pub fn try_spend_on_hedge(&self) -> bool {
        self.spend_above(self.capacity * RETRY_RESERVE)
    }

    /// [`try_spend_on_hedge`](Self::try_spend_on_hedge) for a hedge the
    /// budget refused once already: a refusal is not counted again (one
    /// call's hedge waiting for tokens is one suppression, however often it
    /// asks).
    pub fn try_spend_on_hedge_again(&self) -> bool {
        let spent = self.take_above(self.capacity * RETRY_RESERVE);
        if spent {
            self.spent.fetch_add(1, Ordering::Relaxed);
        }
        spent
    }

    fn spend_above(&self, reserve: f64) -> bool {
        let spent = self.take_above(reserve);
        let counter = if spent { &self.spent } else { &self.suppressed };
        counter.fetch_add(1, Ordering::Relaxed);
        spent
    }

    fn take_above(&self, reserve: f64) -> bool {
        self.with_bucket(|bucket, _| {
            if bucket.tokens >= 1.0 + reserve {
                bucket.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Tokens in the bucket now.
    pub fn tokens(&self) -> f64 {
        self.with_bucket(|bucket, _| bucket.tokens)
    }

    /// Extra calls allowed so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }

    /// Extra calls refused so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    fn with_bucket<T>(&self, update: impl FnOnce(&mut Bucket, f64) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of
        // two numbers; they are still usable.
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.refilled_at);
        bucket.tokens =
            (bucket.tokens + elapsed.as_secs_f64() * self.floor_per_second).min(self.capacity);
        bucket.refilled_at = now;
        update(&mut bucket, self.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn starts_full_and_suppresses_when_empty() {
        let budget = HedgeBudget::new(5.0, 10.0);
        for _ in 0..10 {
            assert!(budget.try_spend());
        }
        assert!(!budget.try_spend());
        assert!(!budget.try_spend());
        assert_eq!((budget.spent(), budget.suppressed()), (10, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_leave_a_reserve_for_retries() {
        let budget = HedgeBudget::new(0.0, 10.0);
        let mut hedges = 0;
        while budget.try_spend_on_hedge() {
            hedges += 1;
        }
        assert_eq!(hedges, 8, "2 of 10 tokens are kept for retries");
        assert!(budget.try_spend());
        assert!(budget.try_spend());
        assert!(!budget.try_spend());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_over_time_up_to_the_capacity() {
        let budget = HedgeBudget::new(0.0, 10.0);
        while budget.try_spend() {}
        advance(Duration::from_millis(99)).await;
        assert!(!budget.try_spend(), "0.99 of a token");
        advance(Duration::from_millis(2)).await;
        assert!(budget.try_spend(), "a token after 100 ms");
        advance(Duration::from_secs(60)).await;
        assert!(
            (budget.tokens() - 10.0).abs() < 1e-9,
            "capped at one second's floor"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn primary_calls_deposit_their_percentage() {
        let budget = HedgeBudget::new(5.0, 0.0);
        while budget.try_spend() {}
        for _ in 0..19 {
            budget.record_primary_call();
        }
        assert!(!budget.try_spend(), "19 calls give 0.95 of a token");
        budget.record_primary_call();
        assert!(budget.try_spend(), "20 calls give one");
        // A steady stream of 1000 primaries allows 50 extra calls, no more.
        let mut extra = 0;
        for _ in 0..1000 {
            budget.record_primary_call();
            if budget.try_spend() {
                extra += 1;
            }
        }
        assert_eq!(extra, 50);
    }
}
