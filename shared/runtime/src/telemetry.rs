//! Logging and tracing start-up, once per process.
//!
//! `tracing` is the only instrumentation API in the code. This module routes it to stderr
//! (text or JSON) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, to an OTLP collector.
//! The OpenTelemetry layer is installed even without an exporter so every span has a
//! trace id that crosses gRPC metadata (W3C `traceparent`): one message is one trace.

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes buffered spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("telemetry: could not flush spans: {err}");
        }
    }
}

/// Installs the global subscriber and the W3C trace-context propagator.
///
/// `RUST_LOG` filters (default `info`); `ATELIER_LOG_FORMAT=json` switches to JSON lines,
/// each with its spans' fields: within an RPC or a job, the `trace_id` a trace viewer
/// finds the whole message by ([`record_trace_id`]).
pub fn init(service_name: &'static str) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let mut provider = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name)
            .build(),
    );
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name));

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ATELIER_LOG_FORMAT").is_ok_and(|format| format == "json");
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only where a person reads a terminal, not in a file or
                    // a log collector.
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init()?;
    }
    Ok(TelemetryGuard { provider })
}

/// Records `span`'s OpenTelemetry trace id in its `trace_id` field (which the span must
/// declare, `Empty`), once its parent is set: log lines within it then carry the id.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// What the subscriber wrote.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl Write for Written {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("unpoisoned").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_within_a_span_carry_its_trace_id() {
        let provider = SdkTracerProvider::builder().build();
        let written = Written::default();
        let sink = written.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || sink.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", trace_id = tracing::field::Empty);
            record_trace_id(&span);
            let _inside = span.enter();
            tracing::info!("handled");
        });
        let text = String::from_utf8(written.0.lock().expect("unpoisoned").clone()).expect("utf-8");
        let at = text.find("\"trace_id\":\"").expect("a trace_id field") + 12;
        let id = &text[at..at + 32];
        assert!(
            id.chars().all(|c| c.is_ascii_hexdigit()) && id != "0".repeat(32),
            "{text}"
        );
    }
}
