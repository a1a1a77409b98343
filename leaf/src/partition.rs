//! Which shard a document belongs to.
//!
//! `shard_for_id(id, S) = fnv1a_64(utf8 bytes of id) mod S`, where FNV-1a 64
//! is the Fowler–Noll–Vo hash ([`fanout_runtime::hashing`], which says how it
//! is computed and pins its reference vectors). It is written out, not taken
//! from `std` (whose `DefaultHasher` may change between Rust releases),
//! because a document must land in the same shard in every build, on every
//! machine, for ever. The unit tests below pin shard assignments so that it
//! cannot change silently.

pub use fanout_runtime::hashing::fnv1a_64;

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
