//! The protobuf codec of Sluice's own gRPC services (RLS and the admin API): prost's, except that a
//! message that does not decode is INVALID_ARGUMENT with a `google.rpc.ErrorInfo` (reason
//! [`MALFORMED_REQUEST`]) instead of tonic-prost's bare INTERNAL, which reads as "Sluice is broken"
//! in Envoy's stats and in a client's retry logic. The generated servers and clients name this
//! codec (`codec_path` in `build.rs`).

use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.reason` of a request whose bytes are not the message the method takes.
pub const MALFORMED_REQUEST: &str = "MALFORMED_REQUEST";
/// `ErrorInfo.domain` of every error Sluice answers (the admin API's too).
pub const ERROR_DOMAIN: &str = "sluice";

/// INVALID_ARGUMENT carrying an `ErrorInfo` with `reason`, the way every Sluice service answers
/// a request it will not take.
pub fn invalid_argument(reason: &'static str, message: impl Into<String>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason,
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// prost's codec with malformed messages answered as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct SluiceCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for SluiceCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for SluiceCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SluiceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SluiceDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`] with the decode error mapped; see the module doc.
#[derive(Debug, Clone)]
pub struct SluiceDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for SluiceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic-prost answers every decode failure, and only those, with INTERNAL.
        self.0.decode(buf).map_err(|status| {
            invalid_argument(
                MALFORMED_REQUEST,
                format!(
                    "the request is not a valid {} message: {}",
                    std::any::type_name::<U>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("protobuf"),
                    status.message()
                ),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_the_reason() {
        let status = invalid_argument(MALFORMED_REQUEST, "bad bytes");
        assert_eq!(status.code(), Code::InvalidArgument);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            (MALFORMED_REQUEST, ERROR_DOMAIN)
        );
    }
}
