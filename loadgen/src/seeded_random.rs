//! A small seeded PRNG (xoshiro256**, seeded through SplitMix64 from
//! [`fanout_runtime::hashing`]) so schedules and query orders are
//! reproducible from `--seed` without a third-party crate. Not for anything that
//! needs unpredictability.

use fanout_runtime::hashing::SplitMix64;

/// xoshiro256** (Blackman and Vigna), state expanded from a 64-bit seed with SplitMix64.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: [u64; 4],
}

impl SeededRandom {
    pub fn new(seed: u64) -> SeededRandom {
        let mut splitmix = SplitMix64::new(seed);
        SeededRandom {
            state: [
                splitmix.next_u64(),
                splitmix.next_u64(),
                splitmix.next_u64(),
                splitmix.next_u64(),
            ],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = self.state[1] << 17;
        self.state[2] ^= self.state[0];
        self.state[3] ^= self.state[1];
        self.state[1] ^= self.state[2];
        self.state[0] ^= self.state[3];
        self.state[2] ^= shifted;
        self.state[3] = self.state[3].rotate_left(45);
        result
    }

    /// A uniform value in `[0, 1)` with 53 random bits.
    pub fn next_unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform value in `0..bound` (`bound` > 0), without modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below needs a positive bound");
        let rejection_zone = u64::MAX - (u64::MAX % bound);
        loop {
            let value = self.next_u64();
            if value < rejection_zone {
                return value % bound;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for index in (1..items.len()).rev() {
            let other = self.below(index as u64 + 1) as usize;
            items.swap(index, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let first: Vec<u64> = {
            let mut random = SeededRandom::new(7);
            (0..8).map(|_| random.next_u64()).collect()
        };
        let again: Vec<u64> = {
            let mut random = SeededRandom::new(7);
            (0..8).map(|_| random.next_u64()).collect()
        };
        let other: Vec<u64> = {
            let mut random = SeededRandom::new(8);
            (0..8).map(|_| random.next_u64()).collect()
        };
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn unit_values_are_uniform_enough() {
        let mut random = SeededRandom::new(1);
        let samples = 100_000;
        let mut buckets = [0u32; 10];
        for _ in 0..samples {
            let value = random.next_unit_f64();
            assert!((0.0..1.0).contains(&value));
            buckets[(value * 10.0) as usize] += 1;
        }
        for count in buckets {
            assert!((9_500..10_500).contains(&count), "bucket holds {count}");
        }
    }

    #[test]
    fn shuffle_permutes() {
        let mut items: Vec<u32> = (0..100).collect();
        SeededRandom::new(3).shuffle(&mut items);
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
