use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

use tracing::Instrument as _;

use crate::trace::TraceContext;

/// A publish that did not reach the stream; the caller keeps the message to try again.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish to {subject} failed: {reason}")]
    Failed { subject: String, reason: String },
}

/// Publishes to JetStream and waits for the stream's acknowledgement.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes `payload` on `subject` with `message_id` as `Nats-Msg-Id`, in an
    /// `events.publish` span of the current trace (its consumer's span is that span's
    /// child), and returns the stream sequence once stored (or the sequence of the
    /// earlier copy, for a duplicate).
    pub async fn publish(
        &self,
        subject: String,
        message_id: &str,
        payload: Bytes,
    ) -> Result<u64, PublishError> {
        let span = tracing::info_span!(
            "events.publish",
            otel.kind = "producer",
            subject = %subject,
        );
        let trace = TraceContext::of(&span);
        async { self.send(subject, message_id, payload, &trace).await?.await }
            .instrument(span)
            .await
    }

    /// Sends like [`Publisher::publish`] but returns before the stream's acknowledgement:
    /// await the returned future for it. Messages sent on one connection are stored in the
    /// order they were sent, so a batch can be sent at once and its acks awaited after.
    ///
    /// The message carries `trace` (normally the publishing span's, see
    /// [`TraceContext::of`]): its consumer's span becomes that span's child.
    pub async fn send(
        &self,
        subject: String,
        message_id: &str,
        payload: Bytes,
        trace: &TraceContext,
    ) -> Result<impl Future<Output = Result<u64, PublishError>> + use<>, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        trace.inject(&mut headers);
        let failed = |reason: String| PublishError::Failed {
            subject: subject.clone(),
            reason,
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|err| failed(err.to_string()))?;
        Ok(async move {
            ack.await
                .map(|ack| ack.sequence)
                .map_err(|err| PublishError::Failed {
                    subject,
                    reason: err.to_string(),
                })
        })
    }
}
