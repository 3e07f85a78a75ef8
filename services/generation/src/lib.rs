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
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use atelier_events::jobs::{self, JobConsumerConfig, JobMetrics};
use atelier_events::{Publisher, Subjects};
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_proto::enhancement::v1::enhancement_service_client::EnhancementServiceClient;
use atelier_proto::intent::v1::intent_service_client::IntentServiceClient;
use atelier_proto::{CONVERSATION_SERVICE_NAME, ENHANCEMENT_SERVICE_NAME, INTENT_SERVICE_NAME};
use atelier_runtime::internal_call::OutgoingCall;
use atelier_runtime::mesh::ServiceInstances;
use atelier_runtime::metrics::RpcMetrics;
use atelier_runtime::upstream::{ChannelSettings, Upstream};
use tokio::net::TcpListener;

pub use crate::config::Config;
use crate::worker::{Providers, Worker};

/// Serves health on `listener` and handles jobs until `shutdown` resolves; then stops
/// taking jobs and lets the running ones finish (or leaves them to redelivery).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Everything that can be wrong in the config fails here, before serving: a worker
    // that reports healthy must be able to work.
    let metrics_addr = config.metrics_addr;
    let prepared = prepare(config).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let rpc_metrics = RpcMetrics::default();
    let mut registry = atelier_runtime::metrics::registry();
    rpc_metrics.register(&mut registry);
    prepared.jobs.register(&mut registry);
    prepared.worker.metrics.register(&mut registry);
    atelier_runtime::metrics::serve_if_configured(
        metrics_addr,
        registry,
        until_stopped(stopped.clone()),
    )
    .await?;
    // Both run inside this future (not spawned): dropping it, as a crash would, ends them
    // and their jobs at once, unacknowledged.
    // SERVING once the job consumer is set up, and while NATS stays connected.
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let frame = atelier_runtime::grpc::serve_frame(
        listener,
        &rpc_metrics,
        ready,
        until_stopped(stopped.clone()),
    );
    let jobs = take_jobs(prepared, ready_tx, until_stopped(stopped));
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (served, worked, ()) = tokio::join!(frame, jobs, signal);
    served.and(worked)
}

/// The worker, built from the config without touching the network (NATS connects in the
/// background).
struct Prepared {
    worker: Arc<Worker>,
    js: async_nats::jetstream::Context,
    consumer_config: JobConsumerConfig,
    jobs: JobMetrics,
}

async fn prepare(config: Config) -> anyhow::Result<Prepared> {
    let subjects = Subjects::of(&config.mesh.nats)?;
    let nats = atelier_events::connect(&config.mesh.nats, "atelier-generation").await?;
    // Balanced over every conversation instance that answers; while none does, the worker
    // takes no jobs (it could neither record nor finish them).
    let conversation = balanced(&config.mesh.conversation, CONVERSATION_SERVICE_NAME).await?;
    // Intent and enhancement too: a dead instance of either leaves the rotation, and the
    // worker falls back (heuristics, the plain prompt) only when none answers.
    let intent = balanced(&config.intent, INTENT_SERVICE_NAME).await?;
    let enhancement = balanced(&config.enhancement, ENHANCEMENT_SERVICE_NAME).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let consumer_config = JobConsumerConfig {
        durable_name: "generation".to_owned(),
        filter_subject: subjects.generate_jobs(),
        max_attempts: config.max_deliver,
        ack_wait: config.ack_wait,
        concurrency: config.concurrency,
        drain_timeout: config.drain_timeout,
        upstream_reachable: Some(conversation.reachable()),
    };
    let store = config.storage.open()?;
    let token = OutgoingCall::new(&config.mesh.service_token)?;
    let worker = Arc::new(Worker {
        conversation: ConversationServiceClient::with_interceptor(
            conversation.channel(),
            token.clone(),
        ),
        intent: IntentServiceClient::with_interceptor(intent.channel(), token.clone()),
        enhancement: EnhancementServiceClient::with_interceptor(enhancement.channel(), token),
        providers: Providers::from_config(&config.providers)?,
        store,
        publisher: Publisher::new(js.clone()),
        nats,
        subjects,
        config,
        metrics: worker::WorkerMetrics::default(),
    });
    Ok(Prepared {
        worker,
        js,
        consumer_config,
        jobs: JobMetrics::default(),
    })
}

/// Sets up the consumer (retrying while NATS is unreachable) and runs the job loop.
async fn take_jobs(
    prepared: Prepared,
    ready: tokio::sync::watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Prepared {
        worker,
        js,
        consumer_config,
        jobs: job_metrics,
    } = prepared;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    let consumer = loop {
        let attempt = async {
            atelier_events::ensure_streams(&js, &worker.subjects).await?;
            jobs::consumer(&js, &worker.subjects.jobs_stream(), &consumer_config).await
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
    tracing::info!("taking generation jobs");
    let _ready = jobs::ready_while_connected(worker.nats.clone(), ready);
    jobs::run(
        consumer,
        consumer_config,
        job_metrics,
        shutdown,
        move |job| worker::handle(Arc::clone(&worker), job),
    )
    .await
}

/// A hung call must not hold a job (and its keep-alives) forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A balanced channel to the instances of `service`, with the worker's call timeout.
async fn balanced(instances: &ServiceInstances, service: &'static str) -> anyhow::Result<Upstream> {
    Upstream::new(
        &instances.urls,
        service,
        ChannelSettings {
            request_timeout: Some(CALL_TIMEOUT),
            ..ChannelSettings::default()
        },
    )
    .await
}

async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}
