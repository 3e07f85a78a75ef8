//! The codec of every generated client and server: prost's, with a 1 KiB first encode
//! buffer instead of tonic's 8 KiB.
//!
//! tonic allocates that buffer for the life of each response stream. A WatchEvents stream
//! lives for hours and sends small events (a heartbeat is under 100 bytes), so 8 KiB was
//! the largest single cost of an idle stream: at 10,000 streams on one edge, about 70 MiB
//! for nothing (BENCHMARKS.md, "WatchEvents"). A larger message grows the buffer as it
//! needs; unary calls, whose buffer lives for one message, lose nothing measurable.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first size of a message's encode buffer.
const ENCODE_BUFFER: usize = 1024;
/// How much encoded data a stream buffers before it yields to the transport (tonic's own
/// default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with a small first buffer; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        // A request's decode buffer lives only while it is read: tonic's default.
        ProstDecoder::default()
    }
}
