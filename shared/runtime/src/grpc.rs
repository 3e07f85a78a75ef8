//! The frame every Atelier gRPC server shares: health, reflection, the request span, and
//! the listener set-up. Each service still builds its own `Server::builder()` in one
//! function with a comment per layer; this module supplies the parts.

use std::future::Future;

use opentelemetry::propagation::Extractor;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_http::classify::{GrpcCode, GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.Health";
/// The path of every health RPC: `/grpc.health.v1.Health/Check` and `/Watch`.
const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";
const REFLECTION_SERVICE_NAMES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// INVALID_ARGUMENT for a request that breaks field rules: every violation in the message
/// (for people reading grpcurl output) and as `google.rpc.BadRequest` details (for
/// clients that point at the field).
pub fn invalid_argument(violations: Vec<tonic_types::FieldViolation>) -> tonic::Status {
    use tonic_types::StatusExt as _;
    let summary = violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ");
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        summary,
        tonic_types::ErrorDetails::with_bad_request(violations),
    )
}

/// Whether `status` was made on this side by the transport (the connection was refused,
/// reset or closed before the server answered) rather than sent by the server. tonic
/// keeps the transport error as the source of such a status, and never sets a source on
/// one read from a response. A caller maps these to UNAVAILABLE (the server may have died
/// mid-call: retry, on another instance if there is one), never to INTERNAL.
pub fn cut_by_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Health and reflection for a server that serves `services` (fully qualified names),
/// describing the types of `descriptors` (an encoded `FileDescriptorSet`).
///
/// Reflection lists only those services (plus health and reflection), and describes only
/// the files of `descriptors` (plus health's, reflection's and the `google.rpc` error
/// details): the edge passes [`atelier_proto::PUBLIC_FILE_DESCRIPTOR_SET`], so an internal
/// API can be neither listed nor described on the public port; internal ports pass
/// [`atelier_proto::FILE_DESCRIPTOR_SET`]. Both reflection versions are served: grpcurl
/// 1.8 speaks only v1alpha, newer clients v1.
pub fn health_and_reflection(
    descriptors: &[u8],
    services: &[&str],
) -> anyhow::Result<(HealthReporter, Routes)> {
    let (reporter, health) = tonic_health::server::health_reporter();

    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.BadRequest, ErrorInfo, RetryInfo: lets grpcurl print error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        for name in services
            .iter()
            .copied()
            .chain([HEALTH_SERVICE_NAME])
            .chain(REFLECTION_SERVICE_NAMES)
        {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let routes = Routes::new(health)
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?);
    Ok((reporter, routes))
}

/// Marks `services` SERVING now and NOT_SERVING once `shutdown` resolves, keeps serving
/// for the drain grace ([`crate::shutdown::drain_grace`]), then returns: pass the result
/// to `serve_with_incoming_shutdown`, so load balancers and probes see NOT_SERVING (rather
/// than a refused connection) and stop routing here before the port closes and in-flight
/// calls drain.
pub async fn serve_until(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    shutdown: impl Future<Output = ()>,
) {
    serve_until_with_grace(reporter, services, shutdown, crate::shutdown::drain_grace()).await;
}

/// [`serve_until`] for a service that can serve only while something it depends on
/// answers (the conversation service and its database): `services` and the overall `""`
/// entry are SERVING while `ready` is true and NOT_SERVING while it is false, so probes
/// and the callers' balancers (`crate::upstream`) send calls elsewhere meanwhile.
pub async fn serve_while_ready(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    mut ready: tokio::sync::watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let status = if *ready.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in services.iter().copied().chain([""]) {
            reporter.set_service_status(name, status).await;
        }
        tokio::select! {
            () = &mut shutdown => break,
            changed = ready.changed() => {
                if changed.is_err() {
                    // Nobody reports readiness any more: keep the last status.
                    shutdown.as_mut().await;
                    break;
                }
            }
        }
    }
    drain(reporter, services, crate::shutdown::drain_grace()).await;
}

/// [`serve_until`] with an explicit drain grace.
pub async fn serve_until_with_grace(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    shutdown: impl Future<Output = ()>,
    grace: std::time::Duration,
) {
    for name in &services {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    shutdown.await;
    drain(reporter, services, grace).await;
}

/// NOT_SERVING for `services` and `""`, then the drain grace.
async fn drain(reporter: HealthReporter, services: Vec<&'static str>, grace: std::time::Duration) {
    for name in services.iter().copied().chain([""]) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    if !grace.is_zero() {
        tracing::info!(
            grace_ms = grace.as_millis(),
            "NOT_SERVING; draining after the grace"
        );
        tokio::time::sleep(grace).await;
    }
}

/// The accepted connections of `listener`, with Nagle off: these are small RPCs where
/// delaying a packet costs a round trip.
pub fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Opens a span per request, named after the RPC and joined to the caller's trace when the
/// request carries a W3C `traceparent`. A failed RPC is logged at ERROR only when the
/// service failed ([`failures_of_the_service`]): a caller's mistake is its answer, not an
/// incident, and paging on it would drown the real ones.
pub fn trace_layer() -> TraceLayer<SharedClassifier<GrpcErrorsAsFailures>, RpcSpan> {
    TraceLayer::new(SharedClassifier::new(failures_of_the_service())).make_span_with(RpcSpan)
}

/// The statuses that answer what the caller asked or holds (a bad field, a missing or
/// foreign resource, no credits, a reused key, a bad token, the caller's own cancel or
/// deadline, an unknown method) count as successes; the rest (INTERNAL, UNKNOWN,
/// UNAVAILABLE, DATA_LOSS) are failures of the service.
pub fn failures_of_the_service() -> GrpcErrorsAsFailures {
    [
        GrpcCode::Cancelled,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Unauthenticated,
    ]
    .into_iter()
    .fold(
        GrpcErrorsAsFailures::new(),
        GrpcErrorsAsFailures::with_success,
    )
}

/// The [`MakeSpan`] of [`trace_layer`].
#[derive(Clone, Copy, Debug)]
pub struct RpcSpan;

impl<B> MakeSpan<B> for RpcSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> Span {
        let method = request.uri().path();
        // Probes ask every few seconds on every instance: as traces they would bury the
        // messages' traces in a viewer (and in sampling budgets) while saying nothing a
        // probe's own result and the RPC metrics do not.
        if method.starts_with(HEALTH_PATH_PREFIX) {
            return Span::none();
        }
        let span = tracing::info_span!(
            "rpc",
            // What a trace viewer shows: the RPC, as OpenTelemetry names a server span.
            otel.name = method.trim_start_matches('/'),
            otel.kind = "server",
            rpc.method = %method,
            user_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // A request without a valid traceparent simply starts a new trace.
        let _ = span.set_parent(parent);
        crate::telemetry::record_trace_id(&span);
        span
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Serves only health and reflection until `shutdown`: the frame of a service whose own
/// RPCs are not yet part of the mesh, so orchestration, probes and the local scripts
/// already treat it like every other service.
///
/// The health is SERVING only while `ready` is true: for a job consumer, while its
/// consumer is set up and NATS connected.
pub async fn serve_frame(
    listener: tokio::net::TcpListener,
    rpc_metrics: &crate::metrics::RpcMetrics,
    ready: tokio::sync::watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, reflection_and_health) =
        health_and_reflection(atelier_proto::FILE_DESCRIPTOR_SET, &[])?;
    crate::tls::current()
        .serve(
            tonic::transport::Server::builder(),
            crate::tls::Port::Internal,
        )?
        // Latency and status of every call, as every server.
        .layer(rpc_metrics.layer())
        // Bounded load, as every server (see `crate::load`).
        .timeout(crate::load::REQUEST_TIMEOUT)
        .layer(crate::load::ShedLoadLayer::default())
        .layer(trace_layer())
        .add_routes(reflection_and_health)
        .serve_with_incoming_shutdown(
            incoming(listener),
            serve_while_ready(health, vec![], ready, shutdown),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tower_http::classify::{ClassifiedResponse, ClassifyResponse};

    use super::*;

    fn failed(code: tonic::Code) -> bool {
        let response = http::Response::builder()
            .header("grpc-status", (code as i32).to_string())
            .body(())
            .expect("response");
        match failures_of_the_service().classify_response(&response) {
            ClassifiedResponse::Ready(outcome) => outcome.is_err(),
            ClassifiedResponse::RequiresEos(_) => panic!("a trailers-only answer is ready"),
        }
    }

    #[tokio::test]
    async fn a_stopping_server_answers_not_serving_during_the_grace() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (health, routes) =
            health_and_reflection(atelier_proto::FILE_DESCRIPTOR_SET, &["test.Api"])
                .expect("health");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    incoming(listener),
                    serve_until_with_grace(
                        health,
                        vec!["test.Api"],
                        async {
                            let _ = stopped.await;
                        },
                        std::time::Duration::from_secs(1),
                    ),
                ),
        );
        let status = async || {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("url")
                .connect()
                .await
                .expect("a new connection is still accepted");
            let mut client = HealthClient::new(channel);
            client
                .check(HealthCheckRequest {
                    service: "test.Api".to_owned(),
                })
                .await
                .expect("answered")
                .into_inner()
                .status()
        };
        assert_eq!(status().await, ServingStatus::Serving.into());
        let _ = stop.send(());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(status().await, ServingStatus::NotServing.into());
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("stops after the grace")
            .expect("joined")
            .expect("served");
    }

    #[test]
    fn only_failures_of_the_service_are_failures() {
        use tonic::Code;
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert!(failed(code), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Cancelled,
            Code::DeadlineExceeded,
        ] {
            assert!(!failed(code), "{code:?}");
        }
    }
}
