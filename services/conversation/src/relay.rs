//! The outbox relay: moves committed outbox rows to NATS JetStream.
//!
//! Rows reach NATS two ways. Right after a commit the handler hands its rows to the relay
//! in-process: SendMessage does not wait (the fast path never waits on the broker), the
//! worker-facing RPCs do (so one message's events enter the stream in causal order before
//! the worker's next step). A sweeper publishes whatever is still unpublished a few seconds
//! later (a crash between commit and publish, NATS down), locking rows with
//! `FOR UPDATE SKIP LOCKED` so several replicas share the work without publishing a row
//! twice at once. Should a row be published twice anyway (a crash between the publish and
//! marking it), its `Nats-Msg-Id` (the row id) makes JetStream drop the copy.

use std::sync::Arc;
use std::time::Duration;

use atelier_events::{Publisher, Subjects};
use sqlx::PgPool;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::db::{self, OutboxRow};

/// Rows younger than this are left to their in-process hand-off.
const SWEEP_GRACE: Duration = Duration::from_secs(2);
/// Rows per sweep transaction.
const SWEEP_BATCH: i64 = 200;
/// Published rows are kept this long (for inspection), then deleted by the sweeper.
const KEEP_PUBLISHED: Duration = Duration::from_secs(24 * 60 * 60);

pub struct Relay {
    pool: PgPool,
    subjects: Subjects,
    js: async_nats::jetstream::Context,
    publisher: Publisher,
    /// The streams exist (checked once per process, retried until NATS answers).
    streams: OnceCell<()>,
}

impl Relay {
    pub fn new(pool: PgPool, client: async_nats::Client, subjects: Subjects) -> Arc<Self> {
        let js = async_nats::jetstream::new(client);
        Arc::new(Self {
            pool,
            subjects,
            publisher: Publisher::new(js.clone()),
            js,
            streams: OnceCell::new(),
        })
    }

    /// Publishes `rows` in order and marks those that reached the stream. Stops at the
    /// first failure (a later row must not overtake an earlier one); the sweeper retries.
    /// Returns whether every row was published.
    pub async fn publish(&self, rows: &[OutboxRow]) -> bool {
        if rows.is_empty() {
            return true;
        }
        let mut published = Vec::with_capacity(rows.len());
        for row in rows {
            match self.publish_one(row).await {
                Ok(()) => published.push(row.id),
                Err(err) => {
                    tracing::warn!(error = %err, outbox_id = %row.id, "publish failed; the sweeper will retry");
                    break;
                }
            }
        }
        if let Err(err) = db::outbox::mark_published(&self.pool, &published).await {
            // Unmarked rows are published again by the sweeper and dropped by NATS as
            // duplicates: harmless.
            tracing::warn!(error = %err, "cannot mark outbox rows published");
        }
        published.len() == rows.len()
    }

    /// [`Relay::publish`] on a task of its own, for handlers that must not wait.
    pub fn hand_off(self: &Arc<Self>, rows: Vec<OutboxRow>) {
        let relay = Arc::clone(self);
        tokio::spawn(async move {
            relay.publish(&rows).await;
        });
    }

    async fn publish_one(&self, row: &OutboxRow) -> anyhow::Result<()> {
        self.streams
            .get_or_try_init(|| async {
                atelier_events::ensure_streams(&self.js, &self.subjects).await
            })
            .await?;
        self.publisher
            .publish(
                self.subjects.absolute(&row.subject),
                &row.id.to_string(),
                row.payload.clone().into(),
            )
            .await?;
        Ok(())
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
        let mut published: Vec<Uuid> = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Err(err) = self.publish_one(row).await {
                tracing::debug!(error = %err, "sweep stopped: NATS unavailable");
                break;
            }
            published.push(row.id);
        }
        db::outbox::mark_published(&mut *tx, &published).await?;
        db::outbox::delete_published_before(&mut *tx, KEEP_PUBLISHED).await?;
        tx.commit().await?;
        Ok(published.len())
    }
}
