//! The title worker: consumes title jobs and gives conversations an LLM title unless the
//! user renamed them.
//!
//! SendMessage already gave a new conversation an automatic title (its first prompt,
//! truncated) and queued a title job in the same transaction, so a title is never
//! missing and never on the fast path. This worker only improves it: it asks the LLM for
//! a short title (with a deadline), checks the answer, and hands it to the conversation
//! service's ApplyTitle, which sets it only while the title is still automatic, so a
//! user's rename always wins, however the two race. The conversation service then
//! publishes `title_updated`.
//!
//! Without an LLM (heuristic mode, the default) the automatic title is the title: jobs
//! are acknowledged and nothing changes.
//!
//! The process serves gRPC health and reflection from the first moment, whatever the
//! state of NATS: the job consumer is set up in the background and retried until it
//! works (see `worker::consume`), because a worker that crash-loops while the broker
//! restarts helps nobody.

pub mod config;
mod suggest;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use atelier_events::Subjects;
use atelier_events::jobs::{JobConsumerConfig, JobMetrics};
use atelier_llm::LlmClient;
use atelier_proto::CONVERSATION_SERVICE_NAME;
use atelier_proto::conversation::v1::conversation_service_client::ConversationServiceClient;
use atelier_runtime::internal_call::OutgoingCall;
use atelier_runtime::metrics::RpcMetrics;
use atelier_runtime::upstream::{ChannelSettings, Upstream};
use tokio::net::TcpListener;

pub use crate::config::Config;

/// The longest an ApplyTitle call may take; it is one indexed UPDATE.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves health on `listener` and consumes title jobs until `shutdown` resolves; then
/// stops taking jobs, waits up to `drain_timeout` for the running ones, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let subjects = Subjects::of(&config.mesh.nats)?;
    let llm = config
        .llm
        .clone()
        .map(LlmClient::new)
        .transpose()
        .context("bad LLM settings")?;
    // Balanced over every conversation instance that answers; the worker starts while
    // they are still coming up, and takes no jobs while none answers.
    let upstream = Upstream::new(
        &config.mesh.conversation.urls,
        CONVERSATION_SERVICE_NAME,
        ChannelSettings {
            request_timeout: Some(APPLY_TIMEOUT),
            ..ChannelSettings::default()
        },
    )
    .await?;
    let conversation = ConversationServiceClient::with_interceptor(
        upstream.channel(),
        OutgoingCall::new(&config.mesh.service_token)?,
    );
    let worker = Arc::new(worker::Worker {
        llm,
        conversation,
        title_deadline: config.title_deadline,
    });
    let source = worker::Source {
        nats: config.mesh.nats.clone(),
        jobs: JobConsumerConfig {
            durable_name: worker::DURABLE_NAME.to_owned(),
            filter_subject: subjects.title_jobs(),
            max_attempts: config.max_deliver,
            ack_wait: config.ack_wait,
            concurrency: config.concurrency,
            drain_timeout: config.drain_timeout,
            upstream_reachable: Some(upstream.reachable()),
        },
        metrics: JobMetrics::default(),
        subjects,
    };

    let rpc_metrics = RpcMetrics::default();
    let mut registry = atelier_runtime::metrics::registry();
    rpc_metrics.register(&mut registry);
    source.metrics.register(&mut registry);
    if let Some(llm) = &worker.llm {
        llm.register_metrics(&mut registry);
    }
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    atelier_runtime::metrics::serve_if_configured(config.metrics_addr, registry, async move {
        let _ = metrics_stopped.await;
    })
    .await?;
    let _stop_metrics_on_return = metrics_stop;

    // One trigger for both halves. If the server fails, its future (and the sender with
    // it) is dropped, which stops the jobs as well.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // SERVING once the job consumer is set up, and while NATS stays connected.
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let consuming = tokio::spawn(worker::consume(worker, source, ready_tx, stopped));
    let served = atelier_runtime::grpc::serve_frame(listener, &rpc_metrics, ready, async move {
        shutdown.await;
        let _ = stop.send(true);
    })
    .await;
    if let Err(err) = consuming.await {
        tracing::error!(error = %err, "the title job loop panicked");
    }
    served
}
