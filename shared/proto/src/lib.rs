//! Every Atelier protobuf type and gRPC stub, generated once from `proto/`.
//!
//! Services never run codegen themselves: they depend on this crate. [`FILE_DESCRIPTOR_SET`]
//! feeds server reflection on the internal ports, and [`PUBLIC_FILE_DESCRIPTOR_SET`] on
//! the edge, so grpcurl and buf curl can call any service without the .proto files.

pub mod codec;
pub mod limits;

// Generated code is prost's, not ours to restyle.
/// The public API: resources, the event envelope and `ChatService`.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("atelier.v1");
}

/// Payloads of the jobs carried by the ATELIER_JOBS stream.
pub mod jobs {
    pub mod v1 {
        tonic::include_proto!("atelier.jobs.v1");
    }
}

/// The conversation service's internal API.
pub mod conversation {
    pub mod v1 {
        tonic::include_proto!("atelier.conversation.v1");
    }
}

/// The intent service's internal API.
pub mod intent {
    pub mod v1 {
        tonic::include_proto!("atelier.intent.v1");
    }
}

/// The enhancement service's internal API.
pub mod enhancement {
    pub mod v1 {
        tonic::include_proto!("atelier.enhancement.v1");
    }
}

/// The encoded `FileDescriptorSet` of every file above, for server reflection on the
/// internal ports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/atelier_descriptor.bin"));

/// The encoded `FileDescriptorSet` of the public API alone (`atelier/v1/*.proto` and the
/// well-known types they import), for reflection on the edge: the internal packages are
/// not in it, so the public port cannot describe them. `build.rs` refuses to build when a
/// public file imports an internal one.
pub const PUBLIC_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/atelier_public_descriptor.bin"));

/// The fully qualified name of the public service, as reflection and health report it.
pub const CHAT_SERVICE_NAME: &str = "atelier.v1.ChatService";
/// The fully qualified name of the conversation service's internal API.
pub const CONVERSATION_SERVICE_NAME: &str = "atelier.conversation.v1.ConversationService";
/// The fully qualified name of the intent service's API.
pub const INTENT_SERVICE_NAME: &str = "atelier.intent.v1.IntentService";
/// The fully qualified name of the enhancement service's API.
pub const ENHANCEMENT_SERVICE_NAME: &str = "atelier.enhancement.v1.EnhancementService";

/// The `ErrorInfo` reasons a client can act on, part of the public API contract. Each
/// RESOURCE_EXHAUSTED status carries one, so a client tells "buy credits" from "slow
/// down" without parsing messages, and so does the FAILED_PRECONDITION of a reused
/// idempotency key, to tell it from an archived conversation.
pub mod error_reason {
    /// The `ErrorInfo.domain` of every Atelier error.
    pub const DOMAIN: &str = "atelier.v1";
    /// The balance does not cover the message's cost.
    pub const CREDITS_EXHAUSTED: &str = "CREDITS_EXHAUSTED";
    /// The conversation's image budget (max_generations) would be exceeded.
    pub const GENERATION_LIMIT_REACHED: &str = "GENERATION_LIMIT_REACHED";
    /// Too many calls: wait for the RetryInfo delay.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// Too many failed authentications (missing, malformed or refused tokens) from the
    /// caller's network address: every call from it is refused until the RetryInfo delay
    /// has passed, valid tokens included. Fix the token before retrying.
    pub const AUTH_RATE_LIMITED: &str = "AUTH_RATE_LIMITED";
    /// A WatchEvents stream fell behind and was closed: reconnect with the `resume_after`
    /// in the ErrorInfo metadata.
    pub const SLOW_CONSUMER: &str = "SLOW_CONSUMER";
    /// A WatchEvents stream was closed by the server (it drains): reconnect, to another
    /// instance, with the `resume_after` in the ErrorInfo metadata.
    pub const STREAM_CLOSED: &str = "STREAM_CLOSED";
    /// The user already has as many WatchEvents streams open on this server as it keeps
    /// for one user: close one (a leaked stream, another tab) or wait for the RetryInfo
    /// delay.
    pub const TOO_MANY_STREAMS: &str = "TOO_MANY_STREAMS";
    /// A SendMessage reused a `client_request_id` of this conversation for a different
    /// request (another prompt or other settings). Nothing was written or charged. The
    /// ErrorInfo metadata names the first request's message (`message_id`) and the fields
    /// that differ (`fields`, comma-separated protobuf paths). Send a new request with a
    /// new key; resend the first request unchanged to get its message.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
}

/// The style presets `GenerationSettings.style_preset` accepts (empty means none).
pub const STYLE_PRESETS: &[&str] = &[
    "photographic",
    "digital-art",
    "anime",
    "cinematic",
    "watercolor",
    "line-art",
    "pixel-art",
];
