//! The caller's deadline travels as the `grpc-timeout` header: an integer of at
//! most 8 digits and a unit (`H`ours, `M`inutes, `S`econds, `m`illis, `u`micros,
//! `n`anos). The root reads it, keeps a margin, and passes the rest on (tonic
//! encodes it from `Request::set_timeout`).

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The header name.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// Why a `grpc-timeout` value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    #[error("grpc-timeout {0:?} is not ASCII")]
    NotAscii(String),
    #[error("grpc-timeout {0:?} must be 1 to 8 digits followed by one of H M S m u n")]
    Malformed(String),
}

/// Parses a `grpc-timeout` value such as `150m` or `2S`.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, TimeoutError> {
    let malformed = || TimeoutError::Malformed(value.to_owned());
    if value.len() < 2 || !value.is_char_boundary(value.len() - 1) {
        return Err(malformed());
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let amount: u64 = digits.parse().map_err(|_| malformed())?;
    let duration = match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(malformed()),
    };
    Ok(duration)
}

/// The caller's timeout from request metadata, if it sent one.
pub fn timeout_from_metadata(metadata: &MetadataMap) -> Result<Option<Duration>, TimeoutError> {
    let Some(value) = metadata.get(GRPC_TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| TimeoutError::NotAscii(format!("{value:?}")))?;
    parse_grpc_timeout(text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2H").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_grpc_timeout("3M").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_grpc_timeout("4S").unwrap(), Duration::from_secs(4));
        assert_eq!(
            parse_grpc_timeout("150m").unwrap(),
            Duration::from_millis(150)
        );
        assert_eq!(
            parse_grpc_timeout("99999999u").unwrap(),
            Duration::from_micros(99_999_999)
        );
        assert_eq!(parse_grpc_timeout("7n").unwrap(), Duration::from_nanos(7));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "m", "10", "10x", "123456789m", "-5m", "1.5S", "ém"] {
            assert!(
                parse_grpc_timeout(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn reads_the_header_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(timeout_from_metadata(&metadata).unwrap(), None);
        metadata.insert(GRPC_TIMEOUT_HEADER, "250m".parse().unwrap());
        assert_eq!(
            timeout_from_metadata(&metadata).unwrap(),
            Some(Duration::from_millis(250))
        );
    }
}
