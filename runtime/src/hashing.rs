//! The two small hash functions fanout writes out itself, each once:
//!
//! - FNV-1a 64 ([`fnv1a_64`], [`Fnv1a64`] for several pieces as one
//!   stream): the Fowler–Noll–Vo hash. Start from the offset basis
//!   `0xcbf29ce484222325`, and for every byte XOR it in, then multiply by
//!   the prime `0x100000001b3` (wrapping). It is written out here, not taken
//!   from `std` (whose `DefaultHasher` may change between Rust releases),
//!   because its values are part of the on-disk contract: a document lands
//!   in shard `fnv1a_64(id) mod S` (`fanout_leaf::partition`), the global
//!   statistics file ends in an FNV-1a checksum, and a cached index is named
//!   by one; all of them must come out the same in every build, on every
//!   machine, for ever. The unit tests pin the reference vectors so that it
//!   cannot change silently.
//! - SplitMix64 ([`splitmix64`], [`SplitMix64`]): Steele, Lea and Flood's
//!   mixer, which turns a counter or a seed into well-spread bits. Fault
//!   injection's seeded draws and the load generator's PRNG seeding use it,
//!   so that a seed means the same run everywhere.
//!
//! And one that must differ every time: [`unique_random_u64`], for ids
//! (request ids, trace ids), not for anything that must be reproducible.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The golden-ratio increment SplitMix64 adds to its state at every step
/// (`2^64 / φ`, odd).
pub const SPLITMIX64_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hasher = Fnv1a64::default();
    hasher.update(bytes);
    hasher.finish()
}

/// FNV-1a 64 fed incrementally, for hashing several pieces as one stream.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(FNV_OFFSET_BASIS)
    }
}

impl Fnv1a64 {
    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// SplitMix64's output for the state `state`: the state advanced by
/// [`SPLITMIX64_GAMMA`], then mixed. As a function of a seed or a counter it
/// is a stateless hash; [`SplitMix64`] is the generator that walks it.
pub fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(SPLITMIX64_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 generator: small, seeded, not for anything that needs
/// unpredictability.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        let value = splitmix64(self.state);
        self.state = self.state.wrapping_add(SPLITMIX64_GAMMA);
        value
    }
}

/// A new value at every call, different in every process: a counter hashed
/// with the process's random `RandomState` (seeded from the OS). Unique
/// enough for ids; not a secret, and not reproducible by design.
pub fn unique_random_u64() -> u64 {
    use std::hash::BuildHasher;
    static RANDOM_STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let sequence = ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    RANDOM_STATE
        .get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one(sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_reference_vectors() {
        // From the FNV reference test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn incremental_hashing_equals_one_shot_hashing() {
        let mut hasher = Fnv1a64::default();
        hasher.update(b"foo");
        hasher.update(b"bar");
        assert_eq!(hasher.finish(), fnv1a_64(b"foobar"));
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for seed 0 and seed 1234567 of the reference
        // implementation (Vigna's splitmix64.c, as used to seed xoshiro).
        let mut zero = SplitMix64::new(0);
        assert_eq!(zero.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(zero.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(zero.next_u64(), 0x06c4_5d18_8009_454f);
        let mut seeded = SplitMix64::new(1_234_567);
        assert_eq!(seeded.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(seeded.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }
}
