//! Which shard a document belongs to.
//!
//! `shard_for_id(id, S) = fnv1a_64(utf8 bytes of id) mod S`, where FNV-1a 64
//! is the Fowler–Noll–Vo hash: start from the offset basis
//! `0xcbf29ce484222325`, and for every byte XOR it in, then multiply by the
//! prime `0x100000001b3` (wrapping). It is written out here, not taken from
//! `std` (whose `DefaultHasher` may change between Rust releases), because a
//! document must land in the same shard in every build, on every machine, for
//! ever. The unit tests pin fixed values so that it cannot change silently.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// FNV-1a 64 fed incrementally, for hashing several pieces as one stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(FNV_OFFSET_BASIS)
    }
}

impl Fnv1a64 {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// The shard (0..shard_count) holding the document with this id:
/// FNV-1a 64 of the id's UTF-8 bytes, modulo `shard_count`.
/// A `shard_count` of 0 is treated as 1.
pub fn shard_for_id(id: &str, shard_count: u32) -> u32 {
    let shard_count = u64::from(shard_count.max(1));
    // The remainder is below shard_count, itself a u32.
    (fnv1a_64(id.as_bytes()) % shard_count) as u32
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
    fn shard_assignment_is_pinned() {
        // Changing these values re-shards every index ever built: don't.
        let pinned = [
            ("a", 4, 0),
            ("foobar", 4, 0),
            ("foobar", 7, 6),
            ("0ad", 4, 2),
            ("4983", 4, 3),
            ("zlib1g", 16, 8),
        ];
        for (id, shards, expected) in pinned {
            assert_eq!(
                shard_for_id(id, shards),
                expected,
                "id {id:?} over {shards} shards"
            );
        }
        assert_eq!(shard_for_id("anything", 1), 0);
        assert_eq!(shard_for_id("anything", 0), 0);
    }

    #[test]
    fn ids_spread_evenly_over_the_shards() {
        let shard_count = 8;
        let docs = 80_000;
        let mut counts = vec![0u32; shard_count as usize];
        for number in 0..docs {
            counts[shard_for_id(&format!("doc-{number}"), shard_count) as usize] += 1;
        }
        let expected = docs / shard_count;
        for (shard, count) in counts.iter().enumerate() {
            let deviation = (f64::from(*count) - f64::from(expected)).abs() / f64::from(expected);
            assert!(
                deviation < 0.05,
                "shard {shard} holds {count} of {docs} ids: {counts:?}"
            );
        }
    }
}
