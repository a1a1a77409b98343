//! Payloads travel as `google.protobuf.Any`: a type URL naming the message and
//! its encoded bytes. These helpers pack and unpack them with the conventional
//! `type.googleapis.com/<full.message.Name>` URL.

use prost::{Message, Name};
use prost_types::Any;

/// The type URL fanout uses for message `M`.
pub fn type_url<M: Name>() -> String {
    M::type_url()
}

/// Packs `message` into an `Any` carrying its type URL.
pub fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// Why a payload could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackError {
    /// The payload holds another message type.
    WrongType { expected: String, found: String },
    /// The bytes do not decode as the expected message.
    Malformed { type_url: String, reason: String },
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnpackError::WrongType { expected, found } => {
                write!(f, "expected a payload of type {expected}, found {found:?}")
            }
            UnpackError::Malformed { type_url, reason } => {
                write!(f, "payload of type {type_url} does not decode: {reason}")
            }
        }
    }
}

impl std::error::Error for UnpackError {}

/// Whether `any` carries a message of type `M`.
pub fn is<M: Name>(any: &Any) -> bool {
    any.type_url == M::type_url()
}

/// Unpacks `any` as message `M`, checking the type URL first.
pub fn unpack<M: Message + Name + Default>(any: &Any) -> Result<M, UnpackError> {
    let expected = M::type_url();
    if any.type_url != expected {
        return Err(UnpackError::WrongType {
            expected,
            found: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(|error| UnpackError::Malformed {
        type_url: any.type_url.clone(),
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::v1::{ShardSearchRequest, ShardSearchResponse};

    #[test]
    fn pack_then_unpack_round_trips() {
        let request = ShardSearchRequest {
            query: "rust search".into(),
            k: 7,
            ..Default::default()
        };
        let any = pack(&request);
        assert_eq!(
            any.type_url,
            "type.googleapis.com/fanout.search.v1.ShardSearchRequest"
        );
        assert_eq!(unpack::<ShardSearchRequest>(&any).unwrap(), request);
    }

    #[test]
    fn unpack_rejects_another_type() {
        let any = pack(&ShardSearchRequest::default());
        let error = unpack::<ShardSearchResponse>(&any).unwrap_err();
        assert!(matches!(error, UnpackError::WrongType { .. }), "{error}");
    }

    #[test]
    fn unpack_reports_malformed_bytes() {
        let any = Any {
            type_url: type_url::<ShardSearchRequest>(),
            value: vec![0xff, 0xff, 0xff],
        };
        let error = unpack::<ShardSearchRequest>(&any).unwrap_err();
        assert!(matches!(error, UnpackError::Malformed { .. }), "{error}");
    }
}
