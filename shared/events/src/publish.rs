use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use opentelemetry::propagation::Injector;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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

    /// Publishes `payload` on `subject` with `message_id` as `Nats-Msg-Id` and the current
    /// span's trace context, and returns the stream sequence once stored (or the sequence
    /// of the earlier copy, for a duplicate).
    pub async fn publish(
        &self,
        subject: String,
        message_id: &str,
        payload: Bytes,
    ) -> Result<u64, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
        });
        let failed = |reason: String| PublishError::Failed {
            subject: subject.clone(),
            reason,
        };
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|err| failed(err.to_string()))?
            .await
            .map_err(|err| failed(err.to_string()))?;
        Ok(ack.sequence)
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}
