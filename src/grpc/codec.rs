//! The protobuf codec of the generated services: prost's, except that a
//! request that does not decode is the client's fault, INVALID_ARGUMENT
//! (prost's codec answers INTERNAL, as if Warren had failed), and with
//! smaller first buffers.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// `application/grpc+proto` via prost, with decode errors as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(ProstCodec::<T, U>::raw_decoder(buffers()))
    }
}

/// Each stream's encode and decode buffers start at 2 KiB, not tonic's
/// 8 KiB: a buffer grows to the messages it carries, and an idle stream
/// (thousands of open subscriptions) then holds a quarter as much. The
/// threshold past which an encoder yields is tonic's.
fn buffers() -> BufferSettings {
    BufferSettings::new(2048, 32 * 1024)
}

/// prost's decoder with its errors as INVALID_ARGUMENT.
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
