//! The bridge from async code to a rayon pool for CPU-bound work (tantivy
//! searches). Async tasks never block: they hand the work to the pool and
//! await a oneshot. If the caller has gone (its future was dropped, say a
//! cancelled gRPC call) before the work starts, the work is skipped; work
//! already running can poll [`Cancellation::is_cancelled`] and stop early.
//!
//! Work that panics costs its caller an error ([`TaskGone`]), not the
//! process: rayon aborts on a panic in a spawned job, so every job runs
//! under `catch_unwind`, and the panic is logged and counted
//! ([`CpuPoolStats::panicked`]). The work is read-only over state that
//! outlives it (a shard's searcher), so nothing is left half-changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::oneshot;

/// Stack of each worker: recursive work (parsing a query, walking its tree)
/// has room well beyond what the query limits let through.
pub const WORKER_STACK_BYTES: usize = 16 * 1024 * 1024;

/// A rayon pool plus counters of what happened to the work sent to it.
#[derive(Clone)]
pub struct CpuPool {
    pool: Arc<rayon::ThreadPool>,
    stats: Arc<CpuPoolStats>,
}

/// Counters of a [`CpuPool`].
#[derive(Debug, Default)]
pub struct CpuPoolStats {
    /// Tasks queued or running now.
    pub in_flight: AtomicUsize,
    /// Tasks that ran to completion (whether or not anybody still waited).
    pub completed: AtomicU64,
    /// Tasks skipped because their caller was gone before they started.
    pub skipped: AtomicU64,
    /// Completed tasks whose caller was gone when they finished: wasted work.
    pub abandoned: AtomicU64,
    /// Tasks that panicked (their callers got [`TaskGone`]).
    pub panicked: AtomicU64,
}

/// The caller went away before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cpu pool task was cancelled or its worker panicked")]
pub struct TaskGone;

/// Lets running work notice that nobody waits for it any more.
pub struct Cancellation<'a, T> {
    sender: &'a oneshot::Sender<T>,
}

impl<T> Cancellation<'_, T> {
    /// True once the caller's future has been dropped.
    pub fn is_cancelled(&self) -> bool {
        self.sender.is_closed()
    }
}

impl CpuPool {
    /// A pool of `threads` workers named `{name}-{index}`, each with a stack
    /// of [`WORKER_STACK_BYTES`].
    pub fn new(name: &str, threads: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let name = name.to_owned();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .stack_size(WORKER_STACK_BYTES)
            .thread_name(move |index| format!("{name}-{index}"))
            .build()?;
        Ok(Self {
            pool: Arc::new(pool),
            stats: Arc::default(),
        })
    }

    /// The rayon pool itself, for APIs that take one (tantivy's executor).
    pub fn rayon(&self) -> &rayon::ThreadPool {
        &self.pool
    }

    pub fn stats(&self) -> &CpuPoolStats {
        &self.stats
    }

    /// Queues `work` on the pool now and returns a future of its result.
    /// Dropping that future before the work starts skips it.
    pub fn run<T, F>(&self, work: F) -> impl Future<Output = Result<T, TaskGone>> + Send + 'static
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&Cancellation<'a, T>) -> T + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        let stats = Arc::clone(&self.stats);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.pool.spawn(move || {
            let _in_flight = InFlightGuard(&stats);
            if sender.is_closed() {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                work(&Cancellation { sender: &sender })
            }));
            let output = match output {
                Ok(output) => output,
                Err(panic) => {
                    stats.panicked.fetch_add(1, Ordering::Relaxed);
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|message| (*message).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(%message, "cpu pool work panicked; its caller gets an error");
                    // Dropping the sender answers the caller with TaskGone.
                    return;
                }
            };
            // Counted before the send, so a caller that sees the output also sees the count.
            stats.completed.fetch_add(1, Ordering::Relaxed);
            if sender.send(output).is_err() {
                stats.abandoned.fetch_add(1, Ordering::Relaxed);
            }
        });
        async move { receiver.await.map_err(|_| TaskGone) }
    }
}

struct InFlightGuard<'a>(&'a CpuPoolStats);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_work_and_returns_its_output() {
        let pool = CpuPool::new("test", 1).unwrap();
        assert_eq!(pool.run(|_| 6 * 7).await, Ok(42));
        assert_eq!(pool.stats().completed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn work_that_panics_is_an_error_and_the_pool_goes_on() {
        let pool = CpuPool::new("test", 1).unwrap();
        let panicked = pool.run(|_| -> u32 { panic!("a bug in the work") }).await;
        assert_eq!(panicked, Err(TaskGone));
        assert_eq!(pool.run(|_| 7).await, Ok(7), "the worker survived");
        assert_eq!(pool.stats().panicked.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn skips_work_whose_caller_is_gone() {
        let pool = CpuPool::new("test", 1).unwrap();
        // Occupy the only worker so the next task waits in the queue.
        let barrier = Arc::new(Barrier::new(2));
        let blocker = {
            let barrier = Arc::clone(&barrier);
            pool.run(move |_| {
                barrier.wait();
            })
        };
        let blocker = tokio::spawn(blocker);
        let ran = Arc::new(AtomicU64::new(0));
        let queued = {
            let ran = Arc::clone(&ran);
            pool.run(move |_| {
                ran.fetch_add(1, Ordering::Relaxed);
            })
        };
        // The task is queued behind the blocker; its caller goes away.
        drop(queued);
        barrier.wait();
        blocker.await.unwrap().unwrap();
        // The pool has one worker: once this runs, the dropped task has been seen.
        pool.run(|_| ()).await.unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(pool.stats().skipped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn running_work_sees_cancellation() {
        let pool = CpuPool::new("test", 1).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (saw_cancel_tx, saw_cancel_rx) = std::sync::mpsc::channel();
        let task = pool.run(move |cancellation| {
            started_tx.send(()).unwrap();
            for _ in 0..10_000 {
                if cancellation.is_cancelled() {
                    saw_cancel_tx.send(true).unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            saw_cancel_tx.send(false).unwrap();
        });
        let handle = tokio::spawn(task);
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        handle.abort();
        let saw_cancel = tokio::task::spawn_blocking(move || saw_cancel_rx.recv().unwrap())
            .await
            .unwrap();
        assert!(saw_cancel);
    }
}
