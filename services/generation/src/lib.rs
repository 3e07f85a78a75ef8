//! The generation service: the worker that turns queued messages into stored images.
//!
//! It takes generation jobs from JetStream (a durable pull consumer shared by every
//! replica, many jobs at once since they wait on I/O), resolves intent and enhancement in
//! parallel, calls the image provider of the message's model, stores the images through
//! `object_store` and reports each step to the conversation service; see [`worker`]. It
//! holds no state a restart could lose: an unacknowledged job is redelivered.
//!
//! The process also serves gRPC health and reflection, so probes treat it like every
//! other service.

pub mod config;
pub mod providers;
pub mod storage;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use atelier_events::jobs::{self, JobConsumerConfig};
use atelier_events::{Publisher, Subjects};
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::enhancement::v1::enhancement_service_client::EnhancementServiceClient;
use atelier_proto::intent::v1::intent_service_client::IntentServiceClient;
use atelier_runtime::internal_call::OutgoingCall;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

pub use crate::config::Config;
use crate::config::Storage;
use crate::storage::ImageStore;
use crate::worker::{Providers, Worker};

/// Serves health on `listener` and handles jobs until `shutdown` resolves; then stops
/// taking jobs and lets the running ones finish (or leaves them to redelivery).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let frame = tokio::spawn(atelier_runtime::grpc::serve_frame(
        listener,
        until_stopped(stopped.clone()),
    ));
    let jobs = tokio::spawn(take_jobs(config, until_stopped(stopped)));
    shutdown.await;
    let _ = stop.send(true);
    let served = frame.await.context("the health server panicked")?;
    let worked = jobs.await.context("the job loop panicked")?;
    served.and(worked)
}

/// Sets up (retrying while NATS is unreachable) and runs the job loop.
async fn take_jobs(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let subjects = Subjects::new(&config.subject_prefix)?;
    let nats = atelier_events::connect(&config.nats_url, "atelier-generation").await?;
    let js = async_nats::jetstream::new(nats.clone());
    let consumer_config = JobConsumerConfig {
        durable_name: "generation".to_owned(),
        filter_subject: subjects.generate_jobs(),
        max_deliver: config.max_deliver,
        ack_wait: config.ack_wait,
        concurrency: config.concurrency,
        drain_timeout: config.drain_timeout,
    };
    let mut backoff = Duration::from_millis(200);
    let consumer = loop {
        let attempt = async {
            atelier_events::ensure_streams(&js, &subjects).await?;
            jobs::consumer(&js, &subjects.jobs_stream(), &consumer_config).await
        };
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            consumer = attempt => match consumer {
                Ok(consumer) => break consumer,
                Err(err) => tracing::warn!(error = %err, "job consumer not ready; retrying"),
            },
        }
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };

    let store = match &config.storage {
        Storage::Local(dir) => ImageStore::local(dir)?,
        Storage::S3FromEnv => ImageStore::s3_from_env()?,
    };
    let token = OutgoingCall::new(&config.service_token)?;
    let worker = Arc::new(Worker {
        conversation: ConversationServiceClient::with_interceptor(
            lazy(&config.conversation_url)?,
            token.clone(),
        ),
        intent: IntentServiceClient::with_interceptor(lazy(&config.intent_url)?, token.clone()),
        enhancement: EnhancementServiceClient::with_interceptor(
            lazy(&config.enhancement_url)?,
            token,
        ),
        providers: Providers::from_config(&config.providers)?,
        store,
        publisher: Publisher::new(js),
        nats,
        subjects,
        config,
    });
    tracing::info!("taking generation jobs");
    jobs::run(consumer, consumer_config, shutdown, move |job| {
        worker::handle(Arc::clone(&worker), job)
    })
    .await
}

fn lazy(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad service URL {url:?}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy())
}

async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}
