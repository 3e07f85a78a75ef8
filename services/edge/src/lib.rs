//! The edge: the only Atelier service that faces users.
//!
//! It serves `atelier.v1.ChatService` on one port as gRPC (HTTP/2) and grpc-web
//! (HTTP/1.1, for browsers, with CORS for the configured origins only), verifies each
//! call's JWT, rate-limits each user, and forwards the call to the conversation service
//! with the user, the service credential and the trace context. Reflection lists only the
//! public service, so internal APIs stay invisible from outside.

pub mod auth;
mod chat;
pub mod config;
mod error;
mod gatekeeper;
pub mod rate_limit;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use atelier_proto::CHAT_SERVICE_NAME;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::v1::chat_service_server::ChatServiceServer;
use atelier_runtime::grpc;
use atelier_runtime::internal_call::OutgoingCall;
use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tonic::transport::{Endpoint, Server};
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use crate::config::Config;

/// Serves the public API on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Lazy: the edge starts (and reports health) while the conversation service is still
    // coming up; calls meanwhile answer UNAVAILABLE.
    let channel = Endpoint::from_shared(config.conversation_url.clone())
        .with_context(|| format!("bad ATELIER_CONVERSATION_URL {:?}", config.conversation_url))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy();
    let conversation = ConversationServiceClient::with_interceptor(
        channel,
        OutgoingCall::new(&config.service_token)?,
    );
    let gatekeeper = gatekeeper::Gatekeeper {
        jwt: Arc::new(config.jwt.clone()),
        limiter: Arc::new(rate_limit::RateLimiter::new(config.rate_limit)),
    };
    let chat = ChatServiceServer::with_interceptor(chat::ChatApi { conversation }, gatekeeper);
    let (health, reflection_and_health) = grpc::health_and_reflection(&[CHAT_SERVICE_NAME])?;

    Server::builder()
        // Browsers speak grpc-web over HTTP/1.1; everyone else HTTP/2.
        .accept_http1(true)
        // Outermost: one span per call (preflights included), joined to the caller's trace.
        .layer(grpc::trace_layer())
        // CORS answers preflights before grpc-web translation, for listed origins only.
        .layer(cors(&config.cors_origins)?)
        // grpc-web framing to and from plain gRPC for the services behind it.
        .layer(GrpcWebLayer::new())
        .add_routes(reflection_and_health)
        .add_service(chat)
        .serve_with_incoming_shutdown(
            grpc::incoming(listener),
            grpc::serve_until(health, vec![CHAT_SERVICE_NAME], shutdown),
        )
        .await
        .context("the edge server failed")
}

fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let origins = origins
        .iter()
        .map(|origin| {
            HeaderValue::from_str(origin)
                .with_context(|| format!("ATELIER_CORS_ORIGINS: {origin:?} is not a header value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header = HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header("authorization"),
            header("content-type"),
            header("grpc-timeout"),
            header("x-grpc-web"),
            header("x-user-agent"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60)))
}
