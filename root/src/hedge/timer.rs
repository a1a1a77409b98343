//! Hedge timers that fire on time below a millisecond. tokio's timer wheel
//! has millisecond ticks: a 300 us sleep ends after 1 to 2 ms. The precise
//! timer sleeps on tokio until two milliseconds before the deadline (cheap,
//! cancelled by dropping like any sleep), then hands the rest to one
//! dedicated thread that waits with the operating system's fine-grained
//! timeout and wakes the task at the deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How a hedge waits for its moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeTimer {
    /// tokio's timer alone: millisecond ticks; works with a paused clock.
    Tokio,
    /// tokio until the last millisecond, then the precise timer thread.
    Precise,
}

/// Handing over to the precise thread within this of the deadline.
/// (two ticks: tokio may end a sleep up to a tick late, and a sleep whose
/// deadline has passed still waits for the next tick).
const HAND_OVER: Duration = Duration::from_millis(2);

impl HedgeTimer {
    pub async fn sleep_until(self, deadline: Instant) {
        match self {
            HedgeTimer::Tokio => tokio::time::sleep_until(deadline).await,
            HedgeTimer::Precise => {
                if let Some(early) = deadline.checked_sub(HAND_OVER)
                    && early > Instant::now()
                {
                    tokio::time::sleep_until(early).await;
                }
                if Instant::now() >= deadline {
                    return;
                }
                let (wake, woken) = oneshot::channel();
                if precise_timer_thread()
                    .send((Reverse(deadline.into_std()), WakeUp(wake)))
                    .is_err()
                {
                    // The timer thread is gone (it never exits): fall back.
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
                let _ = woken.await;
            }
        }
    }
}

struct WakeUp(oneshot::Sender<()>);

impl PartialEq for WakeUp {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WakeUp {}
impl PartialOrd for WakeUp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for WakeUp {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

type Entry = (Reverse<std::time::Instant>, WakeUp);

fn precise_timer_thread() -> &'static mpsc::Sender<Entry> {
    static SENDER: OnceLock<mpsc::Sender<Entry>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Entry>();
        std::thread::Builder::new()
            .name("fanout-hedge-timer".to_owned())
            .spawn(move || run_precise_timer(receiver))
            // Without the thread there is no root: spawning fails only when
            // the process is out of threads at startup.
            .expect("the hedge timer thread starts");
        sender
    })
}

fn run_precise_timer(receiver: mpsc::Receiver<Entry>) {
    let mut due: BinaryHeap<Entry> = BinaryHeap::new();
    loop {
        let now = std::time::Instant::now();
        while due.peek().is_some_and(|(Reverse(at), _)| *at <= now) {
            if let Some((_, WakeUp(wake))) = due.pop() {
                let _ = wake.send(());
            }
        }
        let next = match due.peek() {
            Some((Reverse(at), _)) => receiver.recv_timeout(at.saturating_duration_since(now)),
            None => receiver
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(entry) => due.push(entry),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lateness (actual - intended wake-up) of `samples` sleeps of `delay`.
    async fn lateness(timer: HedgeTimer, delay: Duration, samples: usize) -> Vec<Duration> {
        let mut late = Vec::with_capacity(samples);
        for _ in 0..samples {
            let deadline = Instant::now() + delay;
            timer.sleep_until(deadline).await;
            late.push(Instant::now().saturating_duration_since(deadline));
        }
        late.sort();
        late
    }

    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_timer_is_exact_with_a_paused_clock() {
        let started = Instant::now();
        HedgeTimer::Tokio
            .sleep_until(started + Duration::from_millis(3))
            .await;
        assert_eq!(started.elapsed(), Duration::from_millis(3));
    }

    /// Real time: prints the lateness of both timers for sub-millisecond
    /// delays; the precise timer must fire well within a tick.
    #[tokio::test]
    async fn the_precise_timer_fires_sub_millisecond_delays_on_time() {
        let delay = Duration::from_micros(300);
        let tokio_late = lateness(HedgeTimer::Tokio, delay, 200).await;
        let precise_late = lateness(HedgeTimer::Precise, delay, 200).await;
        let longer_late = lateness(HedgeTimer::Precise, Duration::from_micros(2_500), 100).await;
        for (name, late) in [
            ("tokio 300us", &tokio_late),
            ("precise 300us", &precise_late),
            ("precise 2.5ms", &longer_late),
        ] {
            println!(
                "hedge timer lateness {name}: p50 {:?} p90 {:?} p99 {:?} max {:?}",
                quantile(late, 0.5),
                quantile(late, 0.9),
                quantile(late, 0.99),
                late[late.len() - 1]
            );
        }
        // Within one tick of tokio's millisecond timer, and better than it in
        // the same run (ratios, not absolute figures, on a shared machine).
        assert!(quantile(&precise_late, 0.5) < Duration::from_millis(1));
        assert!(quantile(&longer_late, 0.5) < Duration::from_millis(1));
        assert!(quantile(&precise_late, 0.5) < quantile(&tokio_late, 0.5));
    }
}
