//! The protobuf codec of every fanout service and client: prost's, except
//! that a *request* that does not decode (bad bytes, invalid UTF-8 in a
//! string) is the caller's fault and answered INVALID_ARGUMENT, where prost's
//! codec answers INTERNAL. A *response* that does not decode stays INTERNAL:
//! the peer is broken, not the request.
//!
//! The generated code uses one codec type on both sides; which side decodes
//! shows in the message type: requests are the `*Request` messages and the
//! merger's `MergeInput` stream.

use std::marker::PhantomData;

use prost::{Message, Name};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A [`Codec`] for prost messages (`application/grpc+proto`).
#[derive(Debug, Clone)]
pub struct FanoutCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for FanoutCodec<T, U> {
    fn default() -> Self {
        Self {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for FanoutCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = FanoutEncoder<T>;
    type Decoder = FanoutDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        FanoutEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        FanoutDecoder(PhantomData)
    }
}

/// Encodes `T` with prost.
#[derive(Debug, Clone)]
pub struct FanoutEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for FanoutEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // EncodeBuf grows as needed, so encoding cannot run out of space.
        item.encode(buf)
            .map_err(|error| Status::internal(format!("cannot encode a message: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes `U` with prost; see the module docs for the status of a failure.
#[derive(Debug, Clone)]
pub struct FanoutDecoder<U>(PhantomData<U>);

impl<U: Message + Name + Default> Decoder for FanoutDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            let message = format!("cannot decode {}: {error}", U::NAME);
            if is_request::<U>() {
                Status::invalid_argument(message)
            } else {
                Status::internal(message)
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Whether `U` is sent by callers (decoded by servers).
fn is_request<U: Name>() -> bool {
    U::NAME.ends_with("Request") || U::NAME == "MergeInput"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::v1::{SearchRequest, SearchResponse};
    use crate::v1::{MergeInput, MergeOutput};

    #[test]
    fn requests_are_told_apart_from_responses() {
        assert!(is_request::<SearchRequest>());
        assert!(is_request::<MergeInput>());
        assert!(!is_request::<SearchResponse>());
        assert!(!is_request::<MergeOutput>());
    }
}
