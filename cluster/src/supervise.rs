//! How `fanout up` restarts a child that died: after a delay that doubles
//! with each restart in a row (from [`RestartBackoff::INITIAL`] up to
//! [`RestartBackoff::MAX`]), back to the first delay once the child has run
//! for [`RestartBackoff::STABLE`].

use std::collections::HashMap;
use std::time::Duration;

use crate::process::Role;

/// The restart delays of every child, by role.
#[derive(Debug, Default)]
pub struct RestartBackoff {
    /// Restarts in a row, by role.
    restarts: HashMap<Role, u32>,
}

impl RestartBackoff {
    pub const INITIAL: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(10);
    /// A child that ran this long before dying starts again at once.
    pub const STABLE: Duration = Duration::from_secs(30);

    /// The delay before restarting `role`, which ran for `ran_for`, and the
    /// number of this restart in a row (1 for the first).
    pub fn next_delay(&mut self, role: Role, ran_for: Duration) -> (Duration, u32) {
        let restarts = self.restarts.entry(role).or_default();
        if ran_for >= Self::STABLE {
            *restarts = 0;
        }
        *restarts += 1;
        let doublings = (*restarts - 1).min(16);
        let delay = Self::INITIAL.saturating_mul(1 << doublings).min(Self::MAX);
        (delay, *restarts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets_after_a_stable_run() {
        let mut backoff = RestartBackoff::default();
        let leaf = Role::Leaf {
            shard_id: 0,
            replica: 1,
        };
        let quick = Duration::from_millis(50);
        let delays: Vec<Duration> = (0..9).map(|_| backoff.next_delay(leaf, quick).0).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[6], Duration::from_millis(6400));
        assert_eq!(delays[8], RestartBackoff::MAX);
        // Another role has its own count.
        assert_eq!(
            backoff.next_delay(Role::Merger, quick),
            (RestartBackoff::INITIAL, 1)
        );
        assert_eq!(
            backoff.next_delay(leaf, RestartBackoff::STABLE),
            (RestartBackoff::INITIAL, 1)
        );
    }
}
