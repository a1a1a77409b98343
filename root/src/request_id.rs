//! The id that ties together the logs and leaf calls of one request: the
//! caller's `x-request-id` when it sends a usable one, else a fresh one.

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
    format!("{:016x}", fanout_runtime::hashing::unique_random_u64())
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
