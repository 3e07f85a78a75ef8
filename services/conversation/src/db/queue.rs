//! The queue of messages waiting for a worker, for the queue reporter: every message with
//! status 'queued', in `(created_at, id)` order (the job stream's order), across all users.
//!
//! A run is one transaction, in this order: [`try_lock_reporter`], [`changed_positions`],
//! [`lock_still_queued`], [`queued_generations`], [`record`]. The lock comes before the
//! read of the generations, in its own statement, so that read sees every change committed
//! before the lock (see `db::pipeline`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Takes the reporter's transaction-scoped advisory lock `key` without waiting: false when
/// another replica's run holds it.
#[tracing::instrument(skip(tx))]
pub async fn try_lock_reporter(tx: &mut sqlx::PgConnection, key: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(key)
        .fetch_one(&mut *tx)
        .await
}

/// The queue as one run sees it.
#[derive(Debug)]
pub struct QueueView {
    /// Queued messages, counted up to the depth the run ranks.
    pub length: u64,
    /// The database's clock at the start of the transaction (what [`record`] stores).
    pub now: DateTime<Utc>,
    /// The messages whose position is not the one last reported (or that were never
    /// reported) and whose SendMessage outbox rows are all published, head first.
    pub changed: Vec<Changed>,
}

/// A queued message whose position moved since it was last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    pub message_id: Uuid,
    /// Messages ahead of it now.
    pub position: u32,
    /// What was last reported, and when; `None` if never.
    pub reported: Option<(u32, DateTime<Utc>)>,
}

#[derive(sqlx::FromRow)]
struct QueueRow {
    length: i64,
    now: DateTime<Utc>,
    id: Option<Uuid>,
    position: Option<i64>,
    queue_position: Option<i32>,
    queue_reported_at: Option<DateTime<Utc>>,
}

/// Ranks the first `depth` queued messages (an ordered scan of the partial index
/// `messages_queued`, a window function over it) and returns their count with those whose
/// rank is not the position last reported. A message whose SendMessage outbox rows are
/// not all published yet counts in the ranks but is not returned: its generation_queued
/// must not reach the stream before its message_created.
///
/// The depth bounds a run's cost when the queue is long (the workers are down): deeper
/// messages are reported once they come within it.
///
/// Always one row at least: the count, with no message when none changed.
#[tracing::instrument(skip(tx))]
pub async fn changed_positions(tx: &mut sqlx::PgConnection, depth: i64) -> sqlx::Result<QueueView> {
    let rows: Vec<QueueRow> = sqlx::query_as(
        "WITH head AS ( \
             SELECT id, created_at, queue_position, queue_reported_at \
             FROM messages WHERE status = 'queued' \
             ORDER BY created_at, id LIMIT $1 \
         ), queue AS ( \
             SELECT id, queue_position, queue_reported_at, \
                    row_number() OVER (ORDER BY created_at, id) - 1 AS position \
             FROM head \
         ) \
         SELECT c.length, now() AS now, q.id, q.position, q.queue_position, q.queue_reported_at \
         FROM (SELECT count(*) AS length FROM queue) c \
         LEFT JOIN queue q \
             ON q.queue_position IS DISTINCT FROM q.position \
            AND NOT EXISTS ( \
                SELECT 1 FROM outbox o \
                WHERE o.message_id = q.id AND o.published_at IS NULL) \
         ORDER BY q.position",
    )
    .bind(depth)
    .fetch_all(&mut *tx)
    .await?;
    let length = rows.first().map_or(0, |row| row.length);
    let now = rows.first().map_or_else(Utc::now, |row| row.now);
    let changed = rows
        .into_iter()
        .filter_map(|row| {
            let position = u32::try_from(row.position?).ok()?;
            let reported = match (row.queue_position, row.queue_reported_at) {
                (Some(position), Some(at)) => Some((u32::try_from(position).ok()?, at)),
                _ => None,
            };
            Some(Changed {
                message_id: row.id?,
                position,
                reported,
            })
        })
        .collect();
    Ok(QueueView {
        length: u64::try_from(length).unwrap_or(0),
        now,
        changed,
    })
}

/// A queued message locked for this run.
#[derive(Debug, sqlx::FromRow)]
pub struct LockedQueued {
    pub id: Uuid,
    pub owner_id: String,
    pub conversation_id: Uuid,
    /// The trace context of the SendMessage that created it.
    pub traceparent: Option<String>,
}

/// Locks the given messages that are still queued and were not reported since the caller
/// read them (`seen_reported_at`, index for index with `ids`), skipping any message another
/// transaction holds: a StartGeneration or a CancelGeneration in progress keeps it, and
/// this run must not wait for it. Head of the queue first.
#[tracing::instrument(skip_all, fields(messages = ids.len()))]
pub async fn lock_still_queued(
    tx: &mut sqlx::PgConnection,
    ids: &[Uuid],
    seen_reported_at: &[Option<DateTime<Utc>>],
) -> sqlx::Result<Vec<LockedQueued>> {
    sqlx::query_as(
        "SELECT m.id, m.owner_id, m.conversation_id, m.traceparent \
         FROM messages m \
         JOIN unnest($1::uuid[], $2::timestamptz[]) AS seen(id, reported_at) ON m.id = seen.id \
         WHERE m.status = 'queued' AND m.queue_reported_at IS NOT DISTINCT FROM seen.reported_at \
         ORDER BY m.created_at, m.id \
         FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(ids)
    .bind(seen_reported_at)
    .fetch_all(&mut *tx)
    .await
}

/// The queued generations of each locked message, in position order. Must follow the
/// lock in the same transaction (see the module's doc).
#[tracing::instrument(skip_all, fields(messages = message_ids.len()))]
pub async fn queued_generations(
    tx: &mut sqlx::PgConnection,
    message_ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, Vec<Uuid>)>> {
    sqlx::query_as(
        "SELECT message_id, array_agg(id ORDER BY position) FROM generations \
         WHERE message_id = ANY($1) AND status = 'queued' \
         GROUP BY message_id",
    )
    .bind(message_ids)
    .fetch_all(&mut *tx)
    .await
}

/// Records the positions just published (index for index with `ids`), at the
/// transaction's time.
#[tracing::instrument(skip_all, fields(messages = ids.len()))]
pub async fn record(
    tx: &mut sqlx::PgConnection,
    ids: &[Uuid],
    positions: &[i32],
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE messages m SET queue_position = r.position, queue_reported_at = now() \
         FROM unnest($1::uuid[], $2::integer[]) AS r(id, position) \
         WHERE m.id = r.id",
    )
    .bind(ids)
    .bind(positions)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
