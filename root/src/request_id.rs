//! The id that ties together the logs and leaf calls of one request: the
//! caller's `x-request-id` when it sends a usable one, else a fresh one.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::metadata::MetadataMap;

/// Metadata key a caller may set to choose the request id.
pub const REQUEST_ID_METADATA_KEY: &str = "x-request-id";
const LONGEST_CALLER_ID: usize = 128;

/// The caller's request id, or a new random one (16 hex digits).
pub fn request_id_for(metadata: &MetadataMap) -> String {
    let from_caller = metadata
        .get(REQUEST_ID_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= LONGEST_CALLER_ID);
    match from_caller {
        Some(id) => id.to_owned(),
        None => new_request_id(),
    }
}

fn new_request_id() -> String {
    static RANDOM_STATE: OnceLock<RandomState> = OnceLock::new();
    static ISSUED: AtomicU64 = AtomicU64::new(0);
    let sequence = ISSUED.fetch_add(1, Ordering::Relaxed);
    let random = RANDOM_STATE
        .get_or_init(RandomState::new)
        .hash_one(sequence);
    format!("{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_the_callers_id_or_makes_distinct_ones() {
        let mut metadata = MetadataMap::new();
        let first = request_id_for(&metadata);
        let second = request_id_for(&metadata);
        assert_eq!(first.len(), 16);
        assert_ne!(first, second);
        metadata.insert(REQUEST_ID_METADATA_KEY, "abc-123".parse().unwrap());
        assert_eq!(request_id_for(&metadata), "abc-123");
    }
}
