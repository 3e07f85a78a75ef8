//! The floor under WatchEvents' memory: a bare tonic server-streaming RPC, nothing of
//! Atelier's behind it, in a process of its own (this program, run with
//! [`SERVE_FLAG`]).
//!
//! It answers `/atelier.v1.ChatService/WatchEvents` (so the same client opens it) with a
//! few heartbeats, then keeps the stream open and silent: what is left per stream is
//! hyper's, h2's and tonic's (the response body and its encode buffer). The encode
//! buffer's size is a parameter, to show what tonic's default (8 KiB) costs against a
//! smaller one; so is the number of heartbeats, because tonic writes each message after
//! the previous one in that buffer: one message touches its first page, a stream that
//! has sent more than the buffer holds has touched all of it (the heartbeats after the
//! first are padded to ~500 bytes and 20 ms apart, so 20 of them do what ~100 of the
//! edge's ~100-byte ones do in 25 minutes).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::time::SystemTime;

use atelier_proto::v1 as proto;
use futures::StreamExt as _;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};

/// `loadgen --bare-stream-server <port> <encode buffer bytes> <heartbeats>` serves until
/// killed.
pub const SERVE_FLAG: &str = "--bare-stream-server";

/// tonic's own default encode buffer.
pub const TONIC_DEFAULT_BUFFER: usize = 8 * 1024;

/// What the bare server does.
#[derive(Clone, Copy)]
pub struct Bare {
    /// The encode buffer's size, in bytes.
    pub buffer: usize,
    /// Heartbeats each stream sends before it falls silent.
    pub heartbeats: usize,
}

/// Serves the bare stream (and health) on 127.0.0.1:`port` until the process is killed.
pub async fn serve(port: u16, bare: Bare) -> anyhow::Result<()> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(BareWatch(bare))
        .serve_with_incoming(atelier_runtime::grpc::incoming(listener))
        .await?;
    Ok(())
}

/// Reads `<port> <buffer> <heartbeats>` after [`SERVE_FLAG`].
pub fn arguments(args: &[String]) -> anyhow::Result<Option<(u16, Bare)>> {
    let Some(at) = args.iter().position(|arg| arg == SERVE_FLAG) else {
        return Ok(None);
    };
    let value = |offset: usize| {
        args.get(at + offset).ok_or_else(|| {
            anyhow::anyhow!("{SERVE_FLAG} <port> <encode buffer bytes> <heartbeats>")
        })
    };
    let bare = Bare {
        buffer: value(2)?.parse()?,
        heartbeats: value(3)?.parse()?,
    };
    Ok(Some((value(1)?.parse()?, bare)))
}

/// Every call of the chat service is answered as WatchEvents, with heartbeats.
#[derive(Clone)]
struct BareWatch(Bare);

impl tonic::server::NamedService for BareWatch {
    const NAME: &'static str = atelier_proto::CHAT_SERVICE_NAME;
}

impl Service<http::Request<tonic::body::Body>> for BareWatch {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let codec =
            SizedCodec::<proto::WatchEventsResponse, proto::WatchEventsRequest>::new(self.0.buffer);
        let heartbeats = Heartbeats(self.0.heartbeats);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.server_streaming(heartbeats, request).await)
        })
    }
}

/// Bytes added to every heartbeat but the first.
const HEARTBEAT_PADDING: usize = 400;
/// Time between two heartbeats.
const HEARTBEAT_SPACING: std::time::Duration = std::time::Duration::from_millis(20);

/// This many heartbeats, then silence.
struct Heartbeats(usize);

type Responses = futures::stream::BoxStream<'static, Result<proto::WatchEventsResponse, Status>>;

impl tonic::server::ServerStreamingService<proto::WatchEventsRequest> for Heartbeats {
    type Response = proto::WatchEventsResponse;
    type ResponseStream = Responses;
    type Future = BoxFuture<tonic::Response<Responses>, Status>;

    fn call(&mut self, _: tonic::Request<proto::WatchEventsRequest>) -> Self::Future {
        // The edge's heartbeat, but for the user id.
        // The first is the edge's heartbeat (but for the user id); the others are padded
        // and spaced, so that tonic encodes each on its own, as it does the heartbeats of
        // an idle stream, and a few of them go once through the encode buffer.
        let heartbeat = |cursor: u64| proto::WatchEventsResponse {
            cursor,
            event: Some(proto::Event {
                id: uuid::Uuid::now_v7().to_string(),
                occurred_at: Some(SystemTime::now().into()),
                user_id: if cursor == 0 {
                    String::new()
                } else {
                    "x".repeat(HEARTBEAT_PADDING)
                },
                payload: Some(proto::event::Payload::Heartbeat(proto::Heartbeat {})),
                ..Default::default()
            }),
        };
        let count = self.0 as u64;
        let responses = futures::stream::unfold(0, move |cursor| async move {
            if cursor >= count {
                return None;
            }
            if cursor > 0 {
                tokio::time::sleep(HEARTBEAT_SPACING).await;
            }
            Some((Ok(heartbeat(cursor)), cursor + 1))
        })
        .chain(futures::stream::pending())
        .boxed();
        Box::pin(async move { Ok(tonic::Response::new(responses)) })
    }
}

/// Protobuf with an encode buffer of a chosen size (tonic-prost's codec, but for
/// [`BufferSettings`]).
struct SizedCodec<E, D> {
    buffer: usize,
    messages: PhantomData<fn(E) -> D>,
}

impl<E, D> SizedCodec<E, D> {
    fn new(buffer: usize) -> Self {
        Self {
            buffer,
            messages: PhantomData,
        }
    }

    fn settings(&self) -> BufferSettings {
        // tonic's default yield threshold (32 KiB).
        BufferSettings::new(self.buffer, 32 * 1024)
    }
}

impl<E, D> Codec for SizedCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = SizedEncoder<E>;
    type Decoder = SizedDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(self.settings(), PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SizedDecoder(self.settings(), PhantomData)
    }
}

struct SizedEncoder<E>(BufferSettings, PhantomData<fn(E)>);

impl<E: prost::Message> Encoder for SizedEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|err| Status::internal(err.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0
    }
}

struct SizedDecoder<D>(BufferSettings, PhantomData<fn() -> D>);

impl<D: prost::Message + Default> Decoder for SizedDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf)
            .map(Some)
            .map_err(|err| Status::internal(err.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0
    }
}
