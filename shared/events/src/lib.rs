//! The NATS JetStream side of Atelier: the stream topology, subject names, and one way to
//! publish.
//!
//! Two streams, both named from a configurable prefix so tests (and tenants) run side by
//! side on one server:
//!
//! - `<PREFIX>_JOBS`, work-queue retention, subjects `<prefix>.jobs.>`: each job is
//!   delivered to one worker and removed once acknowledged.
//! - `<PREFIX>_EVENTS`, limits retention (24 h), subjects `<prefix>.events.user.*`: every
//!   user's events, replayable from a cursor; RePublished to `<prefix>.live.user.*` for
//!   the edges' core subscriptions.
//!
//! Every publish carries `Nats-Msg-Id` (the outbox row id: a republish inside the
//! duplicate window is dropped by the server) and the W3C trace context, and awaits the
//! stream's acknowledgement before the next, so one producer's messages enter the stream
//! in order.

pub mod jobs;
mod publish;
pub mod subjects;
mod topology;

pub use publish::{PublishError, Publisher, current_traceparent};
pub use subjects::Subjects;
pub use topology::ensure_streams;

/// Connects to NATS in the background: the caller gets a client at once, and publishes
/// fail (to be retried) until the server is reachable. A service must start, and its
/// fast path must answer, while NATS is down.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(2))
        .connect(url)
        .await?)
}
