//! Message size limits, one place for every hop.
//!
//! A gRPC peer refuses a message larger than its decoding limit, and tonic, grpc-go,
//! grpc-java and grpc-web all default to 4 MiB. The hops, and what each side sets:
//!
//! | hop | sender sets | receiver sets |
//! | --- | --- | --- |
//! | client to edge | (the client's own) | edge server decodes at most [`MAX_CLIENT_REQUEST_BYTES`] |
//! | edge to client | edge server encodes at most [`MAX_MESSAGE_BYTES`] | (the client's own, 4 MiB by default) |
//! | edge to conversation | edge client encodes at most [`MAX_MESSAGE_BYTES`] | conversation server decodes at most [`MAX_MESSAGE_BYTES`] |
//! | conversation to edge | conversation server encodes at most [`MAX_MESSAGE_BYTES`] | edge client decodes at most [`MAX_MESSAGE_BYTES`] |
//!
//! The workers' calls (generation and title to conversation, generation to intent and
//! enhancement) keep tonic's defaults: 4 MiB decoding, which is [`MAX_MESSAGE_BYTES`], and
//! no encoding limit. Their largest message, a RecordIntent of 8000-character prompts, is
//! under 100 KiB.
//!
//! What keeps responses far below the hard limit is the page budget: a list response is
//! built to fit [`PAGE_BYTES`], signed URLs included ([`SIGNED_URL_BYTES`] each), and a
//! single message, the largest item, is bounded by its fields' limits to about 311 KB (the
//! conversation service's `pagination` tests build the worst case).

/// The largest message any Atelier process sends or accepts, on every hop but the public
/// requests: 4 MiB, the default receive limit of gRPC clients in every language, so that
/// whatever the edge sends, a client with default settings accepts. Set explicitly, so
/// that a new tonic default changes nothing here. A response over it is refused by the
/// sender (OUT_OF_RANGE) instead of being sent to a peer that would refuse it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest request the edge decodes from a client: 64 KiB. A request above it is
/// OUT_OF_RANGE before any handler runs, so no client can make the edge buffer megabytes.
///
/// The largest request whose fields are within their limits is a SendMessage with a
/// 4000-character prompt, a 2000-character negative prompt and a 100-character
/// `client_request_id`, all of 4-byte characters: under 25 KiB (the conversation service's
/// `requests` tests encode it). The rest is room for the characters that normalisation
/// removes (spaces around a prompt, invisible characters), which do not count.
pub const MAX_CLIENT_REQUEST_BYTES: usize = 64 * 1024;

/// The byte budget of one page of a list RPC (ListConversations, ListMessages,
/// ListFavorites), as the client receives it: the conversation service stops adding items
/// before the encoded response, with [`SIGNED_URL_BYTES`] for each completed image, would
/// exceed it, and answers a shorter page with a `next_page_token`.
///
/// 1 MiB, a quarter of [`MAX_MESSAGE_BYTES`]: well inside every client's limit, also as
/// grpc-web text (base64, a third larger), and the rest is a margin for signed URLs longer
/// than their allowance. A page holds at most 400 completed images (100 messages of 4), so
/// URLs of up to 8 KiB each still fit the hard limit.
pub const PAGE_BYTES: usize = 1024 * 1024;

/// What the edge may add to one completed generation after the conversation service
/// answered: `image_url` (up to about 1000 bytes) and `image_url_expires_at`, with their
/// tags and the length prefixes they lengthen. A local URL is the edge's public HTTP root
/// plus at most about 470 bytes (`/images/`, the base64url of a user id of up to 255
/// bytes, the generation id, `.png`, the expiry and a 43-character signature); an S3
/// presigned URL without a session token is under 1000 bytes too.
pub const SIGNED_URL_BYTES: usize = 1024;
