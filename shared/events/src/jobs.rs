//! Taking jobs from the work-queue stream: a durable pull consumer, bounded concurrency,
//! bounded redeliveries, keep-alives during long work, and a graceful drain.
//!
//! A job is acknowledged only when its handler says it is done, so a worker that dies
//! mid-job (or is killed) leaves it unacknowledged and JetStream redelivers it to another
//! worker after `ack_wait`. Handlers must therefore be idempotent; Atelier's are, because
//! every state change they cause goes through the conversation service's idempotent RPCs.
//! The attempt limit is the worker's, not the server's: the consumer redelivers without
//! limit, and from its `max_attempts`-th delivery on, [`Job::is_last_attempt`] tells the
//! handler to settle the job for good (fail the message and refund) rather than ask for a
//! retry. With the limit in the server (`max_deliver`), a delivery that a dead worker's
//! pull request swallowed still counted (nats-server before 2.10.16, PR #5338), and a job
//! could use up its deliveries with no worker seeing the last one: its message then stayed
//! unsettled, credits reserved, for good. Now a lost last attempt simply comes back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind};
use atelier_runtime::metrics::{Counter, Gauge, Registry};
use futures::StreamExt as _;
use std::sync::atomic::AtomicU64;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument as _;

/// One durable consumer of one job subject.
#[derive(Clone, Debug)]
pub struct JobConsumerConfig {
    /// Shared by every replica of a worker, so they split the jobs between them.
    pub durable_name: String,
    pub filter_subject: String,
    /// Deliveries after which the handler settles a job for good (see the module doc);
    /// JetStream itself redelivers without limit.
    pub max_attempts: i64,
    /// How long a delivered job may go without an ack or a keep-alive before it is
    /// redelivered.
    pub ack_wait: Duration,
    /// Jobs handled at once by this process: they wait on I/O, not on this CPU.
    pub concurrency: usize,
    /// How long a shutdown waits for running jobs before abandoning them to redelivery.
    pub drain_timeout: Duration,
    /// Whether the service the jobs need answers (see `atelier_runtime::upstream`): while
    /// it is `false` no job is fetched, so none is started that could only fail and come
    /// back. `None` always fetches.
    pub upstream_reachable: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Creates (or finds) the durable consumer on the jobs stream.
pub async fn consumer(
    js: &jetstream::Context,
    stream: &str,
    config: &JobConsumerConfig,
) -> anyhow::Result<JobConsumer> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|err| anyhow::anyhow!("jobs stream {stream}: {err}"))?;
    // Create or update: a consumer made by an older version, with a server-side
    // max_deliver, loses it here.
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(config.durable_name.clone()),
            filter_subject: config.filter_subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            // Unlimited: the attempt limit is the handler's (see the module doc).
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .map_err(|err| anyhow::anyhow!("consumer {}: {err}", config.durable_name))?;
    Ok(JobConsumer {
        pull: consumer,
        stream,
    })
}

/// A durable consumer and its stream (where its oldest job is looked up).
pub struct JobConsumer {
    pub pull: PullConsumer,
    stream: jetstream::stream::Stream,
}

/// How a job consumer is doing, for Prometheus: how many jobs wait and run, how old the
/// oldest unfinished one is (sampled every [`SAMPLE_EVERY`]), and how many deliveries
/// were redeliveries (a worker died, or a job asked to be retried). Clones share them.
#[derive(Clone, Debug, Default)]
pub struct JobMetrics {
    waiting: Gauge,
    unacknowledged: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    redelivered: Counter,
}

/// How often [`JobMetrics`]' gauges are read from the server.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

impl JobMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "jobs_waiting",
            "Jobs in the stream not yet delivered to any worker of this consumer.",
            self.waiting.clone(),
        );
        registry.register(
            "jobs_unacknowledged",
            "Jobs delivered and not yet acknowledged (running, or lost with a dead worker until their ack_wait).",
            self.unacknowledged.clone(),
        );
        registry.register(
            "jobs_oldest_age_seconds",
            "Age of the oldest job not yet acknowledged; 0 when there is none.",
            self.oldest_age.clone(),
        );
        registry.register(
            "jobs_redelivered",
            "Deliveries of a job that had been delivered before.",
            self.redelivered.clone(),
        );
    }

    pub fn redelivered(&self) -> u64 {
        self.redelivered.get()
    }

    /// Reads the consumer's state and the oldest unacknowledged job from the server.
    async fn sample(&self, consumer: &mut PullConsumer, stream: &jetstream::stream::Stream) {
        let info = match consumer.info().await {
            Ok(info) => info.clone(),
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the job consumer's state");
                return;
            }
        };
        self.waiting
            .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        self.unacknowledged
            .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
        // The stream is a work queue: an acknowledged job is deleted, so the first job of
        // this subject past the ack floor is the oldest one not yet acknowledged.
        let oldest = stream
            .get_first_raw_message_by_subject(
                &info.config.filter_subject,
                info.ack_floor.stream_sequence + 1,
            )
            .await;
        let age = match oldest {
            Ok(job) => {
                let stored = job.time.unix_timestamp_nanos();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |now| now.as_nanos().try_into().unwrap_or(i128::MAX));
                // Nanoseconds to seconds; a clock behind the server's reads as 0.
                (now - stored).max(0) as f64 / 1e9
            }
            Err(_) => 0.0,
        };
        self.oldest_age.set(age);
    }

    /// Samples every [`SAMPLE_EVERY`], forever.
    async fn sample_forever(&self, mut consumer: PullConsumer, stream: jetstream::stream::Stream) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.sample(&mut consumer, &stream).await;
        }
    }
}

/// A delivered job.
pub struct Job {
    message: jetstream::Message,
    delivered: i64,
    max_attempts: i64,
    ack_wait: Duration,
}

impl Job {
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// 1 for the first delivery.
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    /// The attempts are used up: settle the job for good. True for every delivery from
    /// the `max_attempts`-th on, so one whose settling failed (or was lost with its worker)
    /// is settled by the next.
    pub fn is_last_attempt(&self) -> bool {
        self.max_attempts > 0 && self.delivered >= self.max_attempts
    }

    /// Done: removes the job from the work queue.
    pub async fn ack(&self) {
        if let Err(err) = self.message.ack().await {
            // Unacknowledged, it comes back after ack_wait; the handler is idempotent.
            tracing::warn!(error = %err, "cannot acknowledge a job");
        }
    }

    /// Not done: deliver it again after `delay` (unless this was the last attempt).
    pub async fn retry_after(&self, delay: Duration) {
        if let Err(err) = self.message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %err, "cannot nak a job");
        }
    }

    /// Sends "still working" every third of `ack_wait` until the guard is dropped, so a
    /// slow provider call does not get the job redelivered to a second worker.
    pub fn keep_alive(&self) -> KeepAlive {
        let message = self.message.clone();
        let every = (self.ack_wait / 3).max(Duration::from_millis(100));
        KeepAlive(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(err) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %err, "keep-alive failed");
                }
            }
        }))
    }
}

/// Stops the keep-alives of a job when dropped.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A job consumer's readiness once its consumer is set up (see
/// `atelier_runtime::grpc::serve_frame`): keeps `ready` equal to whether `client` is
/// connected, checked every second, for as long as the returned guard lives, and sets it
/// false when the guard is dropped.
pub fn ready_while_connected(
    client: async_nats::Client,
    ready: tokio::sync::watch::Sender<bool>,
) -> ReadyWhileConnected {
    let reporter = {
        let ready = ready.clone();
        tokio::spawn(async move {
            loop {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                ready.send_if_modified(|ready| std::mem::replace(ready, connected) != connected);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    ReadyWhileConnected {
        _reporter: AbortOnDrop(reporter),
        ready,
    }
}

/// See [`ready_while_connected`].
pub struct ReadyWhileConnected {
    _reporter: AbortOnDrop,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Drop for ReadyWhileConnected {
    fn drop(&mut self) {
        self.ready.send_replace(false);
    }
}

/// Runs `handle` on every job of `consumer`, at most `config.concurrency` at once, until
/// `shutdown` resolves; then stops taking jobs and waits up to `drain_timeout` for the
/// running ones. A job still running after that is dropped unacknowledged: JetStream
/// redelivers it. Returns only at shutdown (or when the permits are closed, never).
pub async fn run<Handle, Handled>(
    consumer: JobConsumer,
    config: JobConsumerConfig,
    metrics: JobMetrics,
    shutdown: impl Future<Output = ()>,
    handle: Handle,
) -> anyhow::Result<()>
where
    Handle: Fn(Job) -> Handled,
    Handled: Future<Output = ()> + Send + 'static,
{
    let JobConsumer {
        pull: consumer,
        stream,
    } = consumer;
    let sampler = {
        let (metrics, consumer) = (metrics.clone(), consumer.clone());
        tokio::spawn(async move { metrics.sample_forever(consumer, stream).await })
    };
    let _stop_sampling = AbortOnDrop(sampler);
    let capacity = config.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(capacity));
    let mut running = JoinSet::new();
    let mut abandoned_if_unfinished: Vec<(tokio::task::AbortHandle, Unfinished)> = Vec::new();
    let mut shutdown = std::pin::pin!(shutdown);
    // Set once `shutdown` has resolved: a finished future must not be polled again.
    let mut stopping = false;
    let mut upstream_reachable = config.upstream_reachable.clone();
    while !stopping {
        if let Some(reachable) = &mut upstream_reachable
            && !*reachable.borrow_and_update()
        {
            tracing::warn!("the upstream service is unreachable: taking no jobs until it is back");
            let back = tokio::select! {
                () = &mut shutdown => break,
                back = reachable.wait_for(|reachable| *reachable) => back.is_ok(),
            };
            if back {
                tracing::info!("the upstream service is back: taking jobs again");
            } else {
                // Its prober is gone (the process is stopping): stop gating.
                upstream_reachable = None;
            }
            continue;
        }
        // Wait for room, then fetch only as many jobs as there is room for: a job is
        // delivered (and its ack_wait runs) only when it can start at once.
        let first = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => permit?,
        };
        let free = 1 + permits.available_permits();
        let fetched = tokio::select! {
            () = &mut shutdown => break,
            fetched = consumer.fetch().max_messages(free).expires(FETCH_WAIT).messages() => fetched,
        };
        let mut batch = match fetched {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, "cannot fetch jobs; retrying");
                drop(first);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut permit = Some(first);
        loop {
            let next = tokio::select! {
                () = &mut shutdown => {
                    stopping = true;
                    None
                }
                next = batch.next() => next,
            };
            let Some(next) = next else { break };
            let message = match next {
                Ok(message) => message,
                Err(err) => {
                    tracing::debug!(error = %err, "fetch ended");
                    break;
                }
            };
            let permit = match permit.take() {
                Some(permit) => permit,
                // Fetched no more than the free permits, so this does not wait.
                None => Arc::clone(&permits).acquire_owned().await?,
            };
            let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
            if delivered > 1 {
                metrics.redelivered.inc();
            }
            // The consumer's side of the publish: a child of the publisher's span.
            let span = tracing::info_span!(
                "job",
                otel.kind = "consumer",
                subject = %message.subject,
                delivered,
                trace_id = tracing::field::Empty,
            );
            crate::TraceContext::from_headers(message.headers.as_ref()).adopt(&span);
            // Where to hand the job back if a shutdown abandons it (see below).
            let unfinished = Unfinished {
                client: message.context.client(),
                reply: message.reply.clone(),
            };
            let job = Job {
                message,
                delivered,
                max_attempts: config.max_attempts,
                ack_wait: config.ack_wait,
            };
            let handled = handle(job);
            let task = running.spawn(
                async move {
                    handled.await;
                    drop(permit);
                }
                .instrument(span),
            );
            abandoned_if_unfinished.push((task, unfinished));
        }
        // Reap finished tasks so the set does not grow.
        while running.try_join_next().is_some() {}
        abandoned_if_unfinished.retain(|(task, _)| !task.is_finished());
    }
    tracing::info!(running = running.len(), "draining jobs");
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        running.abort_all();
        // Handed back at once (a nak), so another worker takes them now rather than after
        // their ack_wait. A job that settled just before the abort ignores the nak.
        let abandoned: Vec<Unfinished> = abandoned_if_unfinished
            .into_iter()
            .filter(|(task, _)| !task.is_finished())
            .map(|(_, unfinished)| unfinished)
            .collect();
        tracing::warn!(
            abandoned = abandoned.len(),
            "jobs handed back for redelivery"
        );
        for unfinished in &abandoned {
            unfinished.hand_back().await;
        }
    }
    Ok(())
}

/// Aborts a background task when the job loop ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running job's way back to the stream, kept beside its task.
struct Unfinished {
    client: async_nats::Client,
    reply: Option<async_nats::Subject>,
}

impl Unfinished {
    /// Naks the job: JetStream redelivers it at once.
    async fn hand_back(&self) {
        let Some(reply) = &self.reply else { return };
        let nak = bytes::Bytes::from_static(b"-NAK");
        let sent = async {
            self.client.publish(reply.clone(), nak).await?;
            self.client.flush().await?;
            anyhow::Ok(())
        };
        if let Err(err) = tokio::time::timeout(Duration::from_secs(2), sent)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            tracing::warn!(error = %err, "cannot hand a job back; it returns after its ack_wait");
        }
    }
}

/// How long one fetch waits for jobs before asking again.
const FETCH_WAIT: Duration = Duration::from_secs(5);
