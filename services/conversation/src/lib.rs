//! The conversation service: the only process that opens a PostgreSQL connection.
//!
//! It owns conversations, messages, generations, credits and the outbox, and serves them
//! on an internal port (`atelier.conversation.v1.ConversationService`) to the edge and the
//! workers. Its hot path, SendMessage, is one transaction of one statement: see
//! [`messages::send`] and [`db::messages::insert_new`].

pub mod catalog;
pub mod config;
mod conversations;
mod credits;
pub mod db;
mod error;
mod favorites;
mod inheritance;
mod messages;
pub mod metrics;
mod models;
pub mod outbox;
mod pagination;
mod pipeline;
pub mod queue;
mod readiness;
pub mod reaper;
pub mod relay;
mod requests;
mod service;
mod text;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use atelier_proto::CONVERSATION_SERVICE_NAME;
use atelier_proto::conversation::v1::conversation_service_server::ConversationServiceServer;
use atelier_proto::limits;
use atelier_runtime::internal_call::RequireServiceToken;
use atelier_runtime::{grpc, load};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

pub use crate::config::Config;
pub use crate::messages::automatic_title;

/// What every handler shares.
pub struct State {
    pub pool: PgPool,
    pub config: Config,
    pub relay: Arc<relay::Relay>,
    /// Asks the queue reporter for a run: after a change to the queue.
    pub queue: queue::Nudge,
    /// What `/metrics` shows.
    pub metrics: metrics::ConversationMetrics,
}

/// Serves the conversation service on `listener` until `shutdown` resolves, then drains
/// in-flight calls and closes the pool.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = db::connect(config.database.clone(), config.max_connections)
        .await
        .context("cannot connect to PostgreSQL")?;
    if config.run_migrations {
        db::MIGRATOR
            .run(&pool)
            .await
            .context("cannot apply the database migrations")?;
    }
    let token = RequireServiceToken(config.service_token.clone());
    let subjects = atelier_events::Subjects::of(&config.nats)?;
    // Connects in the background: SendMessage answers while NATS is down.
    let nats = atelier_events::connect(&config.nats, "atelier-conversation").await?;
    let nudge = queue::Nudge::default();
    let metrics = metrics::ConversationMetrics::default();
    let (relay, relay_tasks) =
        relay::Relay::new(pool.clone(), nats, subjects, nudge.clone(), metrics.clone());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(
        Arc::clone(&relay).sweep_until(config.sweep_interval, until_stopped(stopped.clone())),
    );
    let reporter = queue::Reporter::new(
        pool.clone(),
        Arc::clone(&relay),
        config.queue_report_interval,
        nudge.clone(),
    );
    let reporter = tokio::spawn(reporter.run_until(until_stopped(stopped.clone())));
    let (reaper_interval, stale_after, metrics_addr) = (
        config.reaper_interval,
        config.reaper_stale_after,
        config.metrics_addr,
    );
    let state = Arc::new(State {
        pool: pool.clone(),
        config,
        relay,
        queue: nudge,
        metrics: metrics.clone(),
    });
    let ready = readiness::watch_database(
        pool.clone(),
        readiness::PING_INTERVAL,
        until_stopped(stopped.clone()),
    );
    let reaper = tokio::spawn(reaper::run_until(
        Arc::clone(&state),
        reaper_interval,
        stale_after,
        until_stopped(stopped.clone()),
    ));
    let mut registry = atelier_runtime::metrics::registry();
    metrics.register(&mut registry);
    atelier_runtime::metrics::serve_if_configured(metrics_addr, registry, until_stopped(stopped))
        .await?;

    let (health, reflection_and_health) = grpc::health_and_reflection(
        atelier_proto::FILE_DESCRIPTOR_SET,
        &[CONVERSATION_SERVICE_NAME],
    )?;
    // Message size limits: atelier_proto::limits, which has the table of every hop.
    let api = InterceptedService::new(
        ConversationServiceServer::new(service::ConversationApi { state })
            .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_MESSAGE_BYTES),
        token,
    );
    // TLS, and mutual TLS with the mesh's CA, when configured (atelier_runtime::tls).
    atelier_runtime::tls::current()
        .serve(Server::builder(), atelier_runtime::tls::Port::Internal)?
        // Every call's latency and status, refusals and timeouts included: outermost.
        .layer(metrics.rpc.layer())
        // Bounded load (atelier_runtime::load): past MAX_IN_FLIGHT running calls the next
        // is refused at once with UNAVAILABLE, never queued; a stuck call ends after
        // REQUEST_TIMEOUT. Before the rest, so a refusal costs nothing.
        .timeout(load::REQUEST_TIMEOUT)
        .layer(load::ShedLoadLayer::default())
        // Then one span per RPC, joined to the caller's trace.
        .layer(grpc::trace_layer())
        .add_routes(reflection_and_health)
        .add_service(api)
        .serve_with_incoming_shutdown(
            grpc::incoming(listener),
            // SERVING only while the database answers (see `readiness`).
            grpc::serve_while_ready(health, vec![CONVERSATION_SERVICE_NAME], ready, async move {
                shutdown.await;
                let _ = stop.send(true);
            }),
        )
        .await
        .context("the conversation server failed")?;
    let _ = sweeper.await;
    let _ = reporter.await;
    let _ = reaper.await;
    // Every handle on the relay went with the server: its last marks are written (bounded,
    // in case a connection task still holds one; an unmarked row is only published again).
    let _ = tokio::time::timeout(Duration::from_secs(5), relay_tasks.finished()).await;
    pool.close().await;
    Ok(())
}

async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}
