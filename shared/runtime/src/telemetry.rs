//! Logging and tracing start-up, once per process.
//!
//! `tracing` is the only instrumentation API in the code. This module routes it to stderr
//! (text or JSON) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, to an OTLP collector.
//! The OpenTelemetry layer is installed even without an exporter so every span has a
//! trace id that crosses gRPC metadata (W3C `traceparent`): one message is one trace.

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, TracerProviderBuilder};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
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
/// `RUST_LOG` filters the logs (default `info`); `ATELIER_LOG_FORMAT=json` switches to
/// JSON lines, each with its spans' fields: within an RPC or a job, the `trace_id` a
/// trace viewer finds the whole message by ([`record_trace_id`]). Spans are exported over
/// OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service_name: &'static str) -> anyhow::Result<TelemetryGuard> {
    let mut provider = tracer_provider(service_name);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    install(service_name, provider.build())
}

/// Installs what [`init`] installs, but hands every span to `exporter` as it ends instead
/// of exporting over OTLP: for a test that runs services in this process and inspects
/// the spans they made (an in-memory exporter), through the same subscriber, filters and
/// propagator as a service.
pub fn init_with_exporter(
    service_name: &'static str,
    exporter: impl SpanExporter + 'static,
) -> anyhow::Result<TelemetryGuard> {
    let provider = tracer_provider(service_name)
        .with_simple_exporter(exporter)
        .build();
    install(service_name, provider)
}

fn tracer_provider(service_name: &'static str) -> TracerProviderBuilder {
    SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name)
            .build(),
    )
}

fn install(
    service_name: &'static str,
    provider: SdkTracerProvider,
) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // Spans are traced at `info` whatever `RUST_LOG` keeps of the logs: an operator who
    // quiets the logs to `warn` still gets every trace (and its ids in the logs left).
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name))
        .with_filter(LevelFilter::INFO);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = if std::env::var("ATELIER_LOG_FORMAT").is_ok_and(|format| format == "json") {
        LogFormat::Json
    } else {
        LogFormat::Text {
            // Colour codes only where a person reads a terminal, not in a file, a pipe
            // or a log collector.
            ansi: std::io::stderr().is_terminal(),
        }
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(log_layer(format, std::io::stderr).with_filter(filter))
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// How log lines are written.
#[derive(Clone, Copy, Debug)]
enum LogFormat {
    /// For people; `ansi` adds colour codes.
    Text { ansi: bool },
    /// One JSON object a line, with the fields of the spans it is in (`trace_id`), and
    /// never a colour code.
    Json,
}

/// The layer that writes log lines to `writer` in `format`.
fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text { ansi } => layer.with_ansi(ansi).boxed(),
        LogFormat::Json => layer.json().with_ansi(false).boxed(),
    }
}

/// The W3C trace context of the current span as HTTP headers (`traceparent`), for calls
/// to servers outside the mesh (an LLM, an image provider): one that traces joins the
/// message's trace. Empty outside a traced span.
pub fn trace_headers() -> http::HeaderMap {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let mut headers = http::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HttpInjector(&mut headers));
    });
    headers
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
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

    /// What `layer` writes for one line inside an `rpc` span with a trace id.
    fn one_line(format: LogFormat) -> String {
        let provider = SdkTracerProvider::builder().build();
        let written = Written::default();
        let sink = written.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(log_layer(format, move || sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", trace_id = tracing::field::Empty);
            record_trace_id(&span);
            let _inside = span.enter();
            tracing::info!("handled");
        });
        String::from_utf8(written.0.lock().expect("unpoisoned").clone()).expect("utf-8")
    }

    #[test]
    fn json_lines_within_a_span_carry_its_trace_id() {
        let text = one_line(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        let id = line["span"]["trace_id"].as_str().expect("a trace_id field");
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) && id != "0".repeat(32),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no colour codes in JSON: {text:?}");
    }

    #[test]
    fn http_calls_carry_the_current_spans_traceparent() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        assert!(trace_headers().is_empty(), "no span, no context");
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            use opentelemetry::trace::TraceContextExt as _;
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let span = tracing::info_span!("call");
            let _inside = span.enter();
            let context = span.context();
            let ids = context.span().span_context().clone();
            let headers = trace_headers();
            let traceparent = headers
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .expect("a traceparent");
            assert_eq!(
                traceparent,
                format!("00-{}-{}-01", ids.trace_id(), ids.span_id())
            );
        });
    }

    #[test]
    fn text_lines_have_colour_codes_only_when_asked() {
        let plain = one_line(LogFormat::Text { ansi: false });
        assert!(
            plain.contains("handled") && plain.contains("trace_id="),
            "{plain}"
        );
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let coloured = one_line(LogFormat::Text { ansi: true });
        assert!(coloured.contains('\x1b'), "{coloured:?}");
    }
}
