//! The W3C trace context in NATS message headers: the one place that writes it (publish)
//! and reads it (the job loop, the edge's live events), so a message's consumer span is a
//! child of its publisher's span, across processes.
//!
//! The header is the standard `traceparent` (and `tracestate` when there is one), written
//! by the global propagator `atelier_runtime::telemetry` installs.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A span's trace context, kept to parent work that happens after the span ended (an
/// event handed to a stream after it was received), or read from a message's headers.
#[derive(Clone, Debug, Default)]
pub struct TraceContext(opentelemetry::Context);

impl TraceContext {
    /// `span`'s context: what its children join.
    pub fn of(span: &tracing::Span) -> Self {
        Self(span.context())
    }

    /// The publisher's context in `headers`; empty (a new trace) when there is none or
    /// it is not valid.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Self {
        match headers {
            Some(headers) => Self(opentelemetry::global::get_text_map_propagator(
                |propagator| propagator.extract(&HeaderExtractor(headers)),
            )),
            None => Self::default(),
        }
    }

    /// Whether it names a span (it does not when no OpenTelemetry layer is installed, or
    /// the headers carried none).
    pub fn is_valid(&self) -> bool {
        use opentelemetry::trace::TraceContextExt as _;
        self.0.span().span_context().is_valid()
    }

    /// Makes this context the parent of `span` (before it is entered) and records the
    /// trace id in the span's `trace_id` field, if it declares one, for the logs.
    pub fn adopt(&self, span: &tracing::Span) {
        // An empty context leaves the span the root of a new trace.
        let _ = span.set_parent(self.0.clone());
        atelier_runtime::telemetry::record_trace_id(span);
    }

    /// Links `span` to this context: a related trace that is not its parent (a cancel's
    /// span to the job it stops). Nothing when this context names no span.
    pub fn link(&self, span: &tracing::Span) {
        use opentelemetry::trace::TraceContextExt as _;
        let linked = self.0.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }

    /// Writes this context into `headers` as `traceparent`.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&self.0, &mut HeaderInjector(headers));
        });
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

/// The context a stored `traceparent` (an outbox row's) names; empty when it is absent or
/// not valid.
pub fn from_traceparent(traceparent: Option<&str>) -> TraceContext {
    let Some(traceparent) = traceparent else {
        return TraceContext::default();
    };
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContext(opentelemetry::global::get_text_map_propagator(
        |propagator| propagator.extract(&carrier),
    ))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use atelier_testkit::SpanCollector;
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// A consumer span joined to the headers a publisher's span wrote is that span's
    /// child, in its trace; a stored `traceparent` names the same span.
    #[test]
    fn a_consumer_span_is_the_child_of_the_publishers() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let finished = SpanCollector::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(finished.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let sent = tracing::subscriber::with_default(subscriber, || {
            let publisher = tracing::info_span!("publish");
            let mut headers = HeaderMap::new();
            TraceContext::of(&publisher).inject(&mut headers);
            let sent = publisher.context().span().span_context().clone();
            let stored = from_traceparent(
                headers
                    .get("traceparent")
                    .map(async_nats::HeaderValue::as_str),
            );
            assert!(stored.is_valid());
            assert_eq!(stored.0.span().span_context().span_id(), sent.span_id());

            let consumer = tracing::info_span!("consume", trace_id = tracing::field::Empty);
            TraceContext::from_headers(Some(&headers)).adopt(&consumer);
            sent
        });
        let spans = finished.spans();
        let consumer = spans
            .iter()
            .find(|span| span.name == "consume")
            .expect("the consumer span ended");
        assert_eq!(consumer.span_context.trace_id(), sent.trace_id());
        assert_eq!(consumer.parent_span_id, sent.span_id());
        assert!(consumer.parent_span_is_remote);
        assert!(!TraceContext::from_headers(None).is_valid());
    }
}
