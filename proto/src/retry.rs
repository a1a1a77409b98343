//! Which leaf errors may be retried on another replica.
//!
//! UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED are retryable; every other code
//! is not (INVALID_ARGUMENT above all: another replica would say the same). A
//! leaf may override the default with the metadata `fanout-retryable: true|false`.

use tonic::{Code, Status};

/// Metadata key a leaf sets to override the default retryability of its error.
pub const RETRYABLE_METADATA_KEY: &str = "fanout-retryable";

/// Whether a failed leaf call may be tried again on another replica.
pub fn is_retryable(status: &Status) -> bool {
    if let Some(value) = status.metadata().get(RETRYABLE_METADATA_KEY) {
        match value.to_str() {
            Ok("true") => return true,
            Ok("false") => return false,
            _ => {}
        }
    }
    is_retryable_code(status.code())
}

/// The default retryability of a status code.
pub fn is_retryable_code(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted
    )
}

/// Marks `status` as retryable (or not), overriding the default for its code.
pub fn with_retryable(mut status: Status, retryable: bool) -> Status {
    let value = if retryable { "true" } else { "false" };
    status.metadata_mut().insert(
        RETRYABLE_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(value),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_retryability_follows_the_code() {
        assert!(is_retryable(&Status::unavailable("down")));
        assert!(is_retryable(&Status::resource_exhausted("busy")));
        assert!(!is_retryable(&Status::invalid_argument("bad query")));
        assert!(!is_retryable(&Status::internal("bug")));
    }

    #[test]
    fn metadata_overrides_the_code() {
        assert!(!is_retryable(&with_retryable(
            Status::unavailable("x"),
            false
        )));
        assert!(is_retryable(&with_retryable(Status::internal("x"), true)));
    }
}
