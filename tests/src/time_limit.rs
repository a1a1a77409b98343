//! Every await in a cross-process test is bounded: a process that never
//! answers must fail the test, not hang it.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;

/// Awaits `future` for at most `limit`; `what` names it in the error.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow!("{what}: no result within {limit:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fails_when_the_future_outlives_the_limit() {
        let slow = tokio::time::sleep(Duration::from_secs(10));
        let error = within(Duration::from_secs(1), "slow thing", slow)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("slow thing"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn passes_the_value_through() {
        let value = within(Duration::from_secs(1), "quick", async { 7 }).await;
        assert_eq!(value.unwrap(), 7);
    }
}
