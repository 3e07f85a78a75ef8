//! The outbox relay: moves committed outbox rows to NATS JetStream.
//!
//! Rows reach NATS two ways. Right after a commit the handler hands its rows to the relay
//! in-process: SendMessage does not wait (the fast path never waits on the broker): its
//! rows go to one background task that takes every hand-off waiting and publishes them in
//! a batch. The worker-facing RPCs publish their own rows and wait (so one message's events
//! enter the stream in causal order before the worker's next step). Either way a batch is
//! sent at once and its acknowledgements awaited after: NATS stores one connection's
//! messages in the order sent.
//!
//! Marking rows published is nobody's critical path: a second background task takes the
//! ids of every stored row waiting and marks them in one statement, so under load the
//! relay costs a fraction of a statement per message and no caller waits for it.
//!
//! A sweeper publishes whatever is still unpublished a few seconds later (a crash between
//! commit and publish, NATS down), locking rows with `FOR UPDATE SKIP LOCKED` so several
//! replicas share the work without publishing a row twice at once. Should a row be
//! published twice anyway (a crash between the publish and its mark), its `Nats-Msg-Id`
//! (the row id) makes JetStream drop the copy.
//!
//! Once rows are marked (by the marker or the sweeper) the queue reporter is nudged: it
//! reports a message only after its SendMessage rows are marked published. The reporter's
//! own events have no outbox row; [`Relay::publish_unrecorded`] sends them.

use std::sync::Arc;
use std::time::Duration;

use atelier_events::{Publisher, Subjects, TraceContext};
use sqlx::PgPool;
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinHandle;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::db::{self, OutboxRow};
use crate::metrics::ConversationMetrics;
use crate::queue::Nudge;

/// Rows younger than this are left to their in-process hand-off.
const SWEEP_GRACE: Duration = Duration::from_secs(2);
/// Rows per sweep transaction.
const SWEEP_BATCH: i64 = 200;
/// Published rows are kept this long (for inspection), then deleted by the sweeper.
const KEEP_PUBLISHED: Duration = Duration::from_secs(24 * 60 * 60);
/// Hand-offs waiting for the background publisher; past this the sweeper takes over.
const HAND_OFF_QUEUE: usize = 4096;
/// Published batches waiting to be marked; past this the sweeper publishes them again and
/// JetStream drops the copies.
const MARK_QUEUE: usize = 4096;
/// Rows per background batch.
const HAND_OFF_BATCH: usize = 512;

pub struct Relay {
    pool: PgPool,
    subjects: Subjects,
    js: async_nats::jetstream::Context,
    publisher: Publisher,
    /// The streams exist (checked once per process, retried until NATS answers).
    streams: OnceCell<()>,
    hand_offs: mpsc::Sender<Vec<OutboxRow>>,
    marks: mpsc::Sender<Vec<Uuid>>,
    /// Nudged once rows are marked published.
    marked: Nudge,
    /// Records each stored row's lag.
    metrics: ConversationMetrics,
}

/// The relay's background tasks: they end once the relay is dropped, after finishing
/// what they were given.
pub struct Background(Vec<JoinHandle<()>>);

impl Background {
    pub async fn finished(self) {
        for task in self.0 {
            let _ = task.await;
        }
    }
}

impl Relay {
    /// The relay and its background tasks (the hand-off publisher and the marker). `marked`
    /// is nudged each time rows are marked published.
    pub fn new(
        pool: PgPool,
        client: async_nats::Client,
        subjects: Subjects,
        marked: Nudge,
        metrics: ConversationMetrics,
    ) -> (Arc<Self>, Background) {
        let js = async_nats::jetstream::new(client);
        let (hand_offs, hand_off_queue) = mpsc::channel(HAND_OFF_QUEUE);
        let (marks, mark_queue) = mpsc::channel(MARK_QUEUE);
        let marker = tokio::spawn(mark_published(pool.clone(), mark_queue, marked.clone()));
        let relay = Arc::new(Self {
            pool,
            subjects,
            publisher: Publisher::new(js.clone()),
            js,
            streams: OnceCell::new(),
            hand_offs,
            marks,
            marked,
            metrics,
        });
        let publisher = tokio::spawn(publish_hand_offs(Arc::downgrade(&relay), hand_off_queue));
        (relay, Background(vec![publisher, marker]))
    }

    /// Publishes `rows` in order and waits for the stream; the rows it stored are marked
    /// in the background, the sweeper retries the rest. Returns whether every row was
    /// published.
    pub async fn publish(&self, rows: &[OutboxRow]) -> bool {
        if rows.is_empty() {
            return true;
        }
        let published = self.send_batch(rows).await;
        let all = published.len() == rows.len();
        if !published.is_empty() && self.marks.try_send(published).is_err() {
            // Unmarked rows are published again by the sweeper and dropped by NATS as
            // duplicates: harmless.
            tracing::debug!("mark queue full; the sweeper will publish again");
        }
        all
    }

    /// [`Relay::publish`] after `earlier`: the older unpublished rows of the same subjects
    /// that `db::outbox::insert` found, which another instance committed and then died
    /// before publishing (a worker's retry reached this instance instead). Publishing them
    /// first keeps each message's events in commit order (a `generation_started` never
    /// follows its `generation_completed`); if their instance is alive after all, its own
    /// publish of them is a duplicate JetStream drops (same `Nats-Msg-Id`).
    pub async fn publish_after(&self, earlier: Vec<OutboxRow>, rows: &[OutboxRow]) -> bool {
        if earlier.is_empty() {
            return self.publish(rows).await;
        }
        tracing::info!(
            rows = earlier.len(),
            "publishing rows another instance left unpublished first"
        );
        let batch: Vec<OutboxRow> = earlier.into_iter().chain(rows.iter().cloned()).collect();
        self.publish(&batch).await
    }

    /// Publishes events that have no outbox row (the queue reporter's) in order and waits
    /// for the stream; nothing is marked and nothing is retried. True only if every event
    /// was stored. While the connection to NATS is down it publishes nothing: a message
    /// waiting in the client's buffer could reach the stream after the caller gave up on
    /// it, and after events that must follow it.
    pub async fn publish_unrecorded(&self, events: &[OutboxRow]) -> bool {
        if events.is_empty() {
            return true;
        }
        if self.js.client().connection_state() != async_nats::connection::State::Connected {
            tracing::debug!("NATS is not connected; nothing published");
            return false;
        }
        self.send_batch(events).await.len() == events.len()
    }

    /// Queues `rows` for the background publisher, for handlers that must not wait. A full
    /// queue (NATS far behind) leaves them to the sweeper.
    pub fn hand_off(&self, rows: Vec<OutboxRow>) {
        if self.hand_offs.try_send(rows).is_err() {
            tracing::debug!("relay queue full; the sweeper will publish");
        }
    }

    /// Sends every row, then awaits the acknowledgements in order; returns the ids the
    /// stream stored. Sending stops at the first failure, so a row can only be stored
    /// after the rows before it or not at all (until the sweeper republishes it).
    async fn send_batch(&self, rows: &[OutboxRow]) -> Vec<Uuid> {
        if let Err(err) = self
            .streams
            .get_or_try_init(|| async {
                atelier_events::ensure_streams(&self.js, &self.subjects).await
            })
            .await
        {
            tracing::warn!(error = %err, "NATS unavailable; publishing later");
            return Vec::new();
        }
        let mut acks = Vec::with_capacity(rows.len());
        for row in rows {
            // The row's publish, from send to the stream's ack, in the trace of the request
            // that wrote the row (possibly in another process, before a restart): the
            // message's consumer joins the trace as this span's child.
            let span = tracing::info_span!(
                "outbox.publish",
                otel.kind = "producer",
                subject = %row.subject,
                id = %row.id,
                trace_id = tracing::field::Empty,
            );
            let stored = atelier_events::trace::from_traceparent(row.traceparent.as_deref());
            stored.adopt(&span);
            let publishing = TraceContext::of(&span);
            // Without an OpenTelemetry layer (some tests) the span has no context: the
            // stored one still keeps the message in its request's trace.
            let trace = if publishing.is_valid() {
                publishing
            } else {
                stored
            };
            let sent = self
                .publisher
                .send(
                    self.subjects.absolute(&row.subject),
                    &row.id.to_string(),
                    row.payload.clone().into(),
                    &trace,
                )
                .instrument(span.clone())
                .await;
            match sent {
                Ok(ack) => acks.push((row.id, ack, span)),
                Err(err) => {
                    span.in_scope(|| {
                        tracing::warn!(error = %err, id = %row.id, "publish failed; publishing later");
                    });
                    break;
                }
            }
        }
        let mut stored = Vec::with_capacity(acks.len());
        for (id, ack, span) in acks {
            match ack.instrument(span).await {
                Ok(_) => {
                    self.metrics.outbox_row_stored(id);
                    stored.push(id);
                }
                Err(err) => {
                    tracing::warn!(error = %err, %id, "publish not acknowledged; publishing later")
                }
            }
        }
        stored
    }

    /// Sweeps every `interval` until `shutdown` resolves.
    pub async fn sweep_until(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            match self.sweep_once().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "sweeper published outbox rows"),
                Err(err) => tracing::warn!(error = %err, "outbox sweep failed"),
            }
        }
    }

    /// One sweep: publishes a batch of old unpublished rows, in order, under row locks.
    pub async fn sweep_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows = db::outbox::lock_unpublished(&mut tx, SWEEP_GRACE, SWEEP_BATCH).await?;
        let published = if rows.is_empty() {
            Vec::new()
        } else {
            self.send_batch(&rows).await
        };
        db::outbox::mark_published(&mut *tx, &published).await?;
        db::outbox::delete_published_before(&mut *tx, KEEP_PUBLISHED).await?;
        tx.commit().await?;
        if !published.is_empty() {
            self.marked.nudge();
        }
        Ok(published.len())
    }
}

/// The background publisher of hand-offs: takes every hand-off waiting (up to a batch) and
/// publishes them together.
async fn publish_hand_offs(
    relay: std::sync::Weak<Relay>,
    mut queue: mpsc::Receiver<Vec<OutboxRow>>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = first;
        while batch.len() < HAND_OFF_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let Some(relay) = relay.upgrade() else { return };
        relay.publish(&batch).await;
    }
}

/// The background marker: takes every published batch waiting and marks it in one
/// statement, then nudges `marked`. Ends when the relay is gone and the queue is empty.
async fn mark_published(pool: PgPool, mut queue: mpsc::Receiver<Vec<Uuid>>, marked: Nudge) {
    while let Some(first) = queue.recv().await {
        let mut ids = first;
        while let Ok(more) = queue.try_recv() {
            ids.extend(more);
        }
        match db::outbox::mark_published(&pool, &ids).await {
            Ok(()) => marked.nudge(),
            Err(err) => tracing::warn!(error = %err, "cannot mark outbox rows published"),
        }
    }
}
