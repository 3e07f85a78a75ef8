//! One message is one trace: the context of the calling span leaves in `traceparent`
//! (client interceptor) and the receiving server's span joins that trace (request span).

use atelier_runtime::grpc::RpcSpan;
use atelier_runtime::internal_call::{OutgoingCall, ServiceToken};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::service::Interceptor as _;
use tower_http::trace::MakeSpan as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[test]
fn the_trace_id_crosses_an_internal_call() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let caller = tracing::info_span!("edge handler");
        let caller_trace = caller.context().span().span_context().trace_id();

        // The edge's outgoing call, made inside its handler span.
        let outgoing = caller.in_scope(|| {
            OutgoingCall::new(&ServiceToken::new("token"))
                .expect("ascii token")
                .call(tonic::Request::new(()))
                .expect("intercepted")
        });
        let traceparent = outgoing
            .metadata()
            .get("traceparent")
            .expect("traceparent sent")
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            traceparent.contains(&caller_trace.to_string()),
            "{traceparent}"
        );

        // The conversation service's request span for that call.
        let request = http::Request::builder()
            .uri("/atelier.conversation.v1.ConversationService/SendMessage")
            .header("traceparent", &traceparent)
            .body(())
            .expect("request");
        let server_span = RpcSpan.make_span(&request);
        let server_trace = server_span.context().span().span_context().trace_id();
        assert_eq!(server_trace, caller_trace);

        // Without a traceparent the server starts a trace of its own.
        let fresh = RpcSpan.make_span(
            &http::Request::builder()
                .uri("/x")
                .body(())
                .expect("request"),
        );
        assert_ne!(
            fresh.context().span().span_context().trace_id(),
            caller_trace
        );
    });
}

#[test]
fn health_checks_open_no_span() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let span_of = |path: &str| {
            RpcSpan.make_span(
                &http::Request::builder()
                    .uri(path)
                    .body(())
                    .expect("request"),
            )
        };
        assert!(span_of("/grpc.health.v1.Health/Check").is_none());
        assert!(span_of("/grpc.health.v1.Health/Watch").is_none());
        // Every other call, reflection included, is traced.
        assert!(!span_of("/atelier.v1.ChatService/GetBalance").is_none());
        assert!(!span_of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").is_none());
    });
}
