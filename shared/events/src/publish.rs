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
        self.send(subject, message_id, payload, None).await?.await
    }

    /// Sends like [`Publisher::publish`] but returns before the stream's acknowledgement:
    /// await the returned future for it. Messages sent on one connection are stored in the
    /// order they were sent, so a batch can be sent at once and its acks awaited after.
    ///
    /// `traceparent` is the trace the message belongs to when it was captured earlier
    /// (an outbox row); `None` uses the current span's.
    pub async fn send(
        &self,
        subject: String,
        message_id: &str,
        payload: Bytes,
        traceparent: Option<&str>,
    ) -> Result<impl Future<Output = Result<u64, PublishError>> + use<>, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", message_id);
        match traceparent {
            Some(traceparent) => headers.insert("traceparent", traceparent),
            None => {
                let context = tracing::Span::current().context();
                opentelemetry::global::get_text_map_propagator(|propagator| {
                    propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
                });
            }
        }
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

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// The W3C `traceparent` of the current span, to store with work published later.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier.remove("traceparent")
}
