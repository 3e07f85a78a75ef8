//! The edge: the only Atelier service that faces users.
//!
//! It serves `atelier.v1.ChatService` on one port as gRPC (HTTP/2) and grpc-web
//! (HTTP/1.1, for browsers, with CORS for the configured origins only), verifies each
//! call's JWT (with a shared secret, a public key, or an identity provider's key set),
//! rate-limits each user and each address that fails to authenticate, and forwards the
//! call to the conversation service with the user, the service credential and the trace
//! context. Reflection lists and describes only the public API, so internal APIs stay
//! invisible from outside.
//!
//! It also serves what the conversation service cannot: WatchEvents, from NATS
//! ([`watch`]), and signed image URLs ([`links`]), with the images themselves, the web
//! client and its `/config.json` on a plain HTTP port of its own ([`http`]).

pub mod auth;
mod chat;
pub mod config;
mod error;
mod gatekeeper;
pub mod http;
mod links;
pub mod rate_limit;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderName, HeaderValue, Method};
use anyhow::Context as _;
use atelier_images::ImageUrls;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::limits;
use atelier_proto::v1::chat_service_server::ChatServiceServer;
use atelier_proto::{CHAT_SERVICE_NAME, CONVERSATION_SERVICE_NAME};
use atelier_runtime::internal_call::OutgoingCall;
use atelier_runtime::metrics::RpcMetrics;
use atelier_runtime::upstream::{ChannelSettings, Upstream};
use atelier_runtime::{grpc, load};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_web::GrpcWebLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use crate::config::Config;

/// Serves the public API on `listener` and the HTTP port on the configured address until
/// `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.addr))?;
    serve(config, listener, http, shutdown).await
}

/// [`run`] on listeners the caller bound: `grpc` for the API, `http` for images, the web
/// client and its config.
pub async fn serve(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http_url = match &config.http.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{}", http.local_addr()?),
    };
    let grpc_url = match &config.http.public_grpc_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{}", grpc.local_addr()?),
    };
    // Balanced over every conversation instance that answers (atelier_runtime::upstream);
    // the edge starts (and reports health) while they are still coming up, and calls
    // meanwhile answer UNAVAILABLE.
    let channel = Upstream::new(
        &config.mesh.conversation.urls,
        CONVERSATION_SERVICE_NAME,
        ChannelSettings {
            // Every call the edge forwards is unary: one stuck upstream must not hold a
            // client's call (and its slot here) past the server's own bound.
            request_timeout: Some(load::REQUEST_TIMEOUT),
            ..ChannelSettings::default()
        },
    )
    .await?
    .channel();
    // Message size limits: atelier_proto::limits, which has the table of every hop.
    let conversation = ConversationServiceClient::with_interceptor(
        channel,
        OutgoingCall::new(&config.mesh.service_token)?,
    )
    .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(limits::MAX_MESSAGE_BYTES);
    let store = config
        .images
        .storage
        .open()
        .context("cannot open the image store")?;
    let urls = Arc::new(match store.signer() {
        Some(signer) => ImageUrls::presigned(signer, config.images.url_lifetime),
        None => ImageUrls::local(
            &http_url,
            config.images.url_secret.expose().as_bytes(),
            config.images.url_lifetime,
        ),
    });
    let links = links::ImageLinks::new(Arc::clone(&urls));
    // Connects in the background: the API answers while NATS is down; WatchEvents then
    // answers UNAVAILABLE until it is back.
    let nats = atelier_events::connect(&config.mesh.nats, "atelier-edge").await?;
    let subjects = atelier_events::Subjects::of(&config.mesh.nats)?;
    let draining = CancellationToken::new();
    let watch_metrics = watch::WatchMetrics::default();
    let watch = Arc::new(watch::Watch::new(
        nats,
        subjects,
        links.clone(),
        config.watch.clone(),
        draining.clone(),
        watch_metrics.clone(),
    ));
    let rpc_metrics = RpcMetrics::default();
    let mut registry = atelier_runtime::metrics::registry();
    rpc_metrics.register(&mut registry);
    watch_metrics.register(&mut registry);
    let metrics_stopped = draining.clone();
    atelier_runtime::metrics::serve_if_configured(config.metrics_addr, registry, async move {
        metrics_stopped.cancelled().await;
    })
    .await?;

    let site = Arc::new(http::Site {
        urls,
        store,
        config_json: Bytes::from(serde_json::json!({ "grpcWebUrl": grpc_url }).to_string()),
        web_dir: config.http.web_dir.clone(),
    });
    let http_server = tokio::spawn(http::serve(http, site, draining.clone()));

    // The key set's refresher (for an identity provider) runs as long as this function:
    // past the drain, so calls still in flight can verify.
    let stop_keys = CancellationToken::new();
    let _stop_keys_on_return = stop_keys.clone().drop_guard();
    let guard = Arc::new(gatekeeper::Guard {
        authenticator: config.jwt.start(stop_keys)?,
        users: rate_limit::RateLimiter::new(config.rate_limit),
        failures: rate_limit::RateLimiter::bounded(
            config.auth_failure_limit,
            gatekeeper::MAX_FAILING_ADDRESSES,
        ),
    });
    let chat = gatekeeper::Gatekeeper::new(
        ChatServiceServer::new(chat::ChatApi {
            conversation,
            links,
            watch,
        })
        .max_decoding_message_size(limits::MAX_CLIENT_REQUEST_BYTES)
        .max_encoding_message_size(limits::MAX_MESSAGE_BYTES),
        guard,
    );
    // Reflection describes the public API only: internal packages are not even in the
    // descriptor set it serves.
    let (health, reflection_and_health) = grpc::health_and_reflection(
        atelier_proto::PUBLIC_FILE_DESCRIPTOR_SET,
        &[CHAT_SERVICE_NAME],
    )?;
    let mut origins = config.cors_origins.clone();
    // The web client the edge serves itself calls the API from the HTTP port's origin.
    origins.push(http_url);

    // TLS when the edge has a certificate (atelier_runtime::tls); never a client
    // certificate from browsers.
    let served = atelier_runtime::tls::current()
        .serve(Server::builder(), atelier_runtime::tls::Port::Public)?
        // Browsers speak grpc-web over HTTP/1.1; everyone else HTTP/2.
        .accept_http1(true)
        // WatchEvents streams stay open for hours: find the connections of clients that
        // vanished without closing them, so their streams end and free their buffers.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Every call's latency and status, refusals and timeouts included: outermost.
        .layer(rpc_metrics.layer())
        // Bounded load (atelier_runtime::load): past MAX_IN_FLIGHT running calls the next
        // is refused at once with UNAVAILABLE, never queued; a stuck call ends after
        // REQUEST_TIMEOUT. Before the rest, so a refusal costs nothing.
        .timeout(load::REQUEST_TIMEOUT)
        .layer(load::ShedLoadLayer::default())
        // Then one span per call (preflights included), joined to the caller's trace.
        .layer(grpc::trace_layer())
        // CORS answers preflights before grpc-web translation, for listed origins only.
        .layer(cors(&origins)?)
        // grpc-web framing to and from plain gRPC for the services behind it.
        .layer(GrpcWebLayer::new())
        .add_routes(reflection_and_health)
        // ChatService behind the gatekeeper: no call reaches a handler unauthenticated.
        .add_service(chat)
        .serve_with_incoming_shutdown(
            grpc::incoming(grpc),
            grpc::serve_until(health, vec![CHAT_SERVICE_NAME], async move {
                shutdown.await;
                // Streams end now (UNAVAILABLE, with their cursor), so the drain below
                // waits only for unary calls.
                draining.cancel();
            }),
        )
        .await
        .context("the edge server failed");
    let _ = http_server.await;
    served
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
