//! The outbox table: rows written with the change they announce, published by the relay.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::OutboxRow;

/// `id, subject, payload, traceparent`, as the relay's reads select them.
type RowColumns = (Uuid, String, Vec<u8>, Option<String>);

fn outbox_row((id, subject, payload, traceparent): RowColumns) -> OutboxRow {
    OutboxRow {
        id,
        subject,
        payload,
        traceparent,
    }
}

/// Marks rows as published.
#[tracing::instrument(skip_all, fields(rows = ids.len()))]
pub async fn mark_published<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    ids: &[Uuid],
) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(executor)
    .await?;
    Ok(())
}

/// Inserts outbox rows in the caller's transaction and returns, from the same statement,
/// the unpublished rows on the same subjects older than them (at most a sweep's worth):
/// rows an instance committed and did not live to publish, which the caller publishes
/// first (`Relay::publish_after`). Left to the sweeper, they would reach the stream
/// seconds later, after these. The read sees the statement's snapshot, not the rows it
/// inserts; it uses the small partial index of unpublished rows and locks nothing (a
/// row published twice is dropped by JetStream as a duplicate).
#[tracing::instrument(skip_all, fields(rows = rows.len()))]
pub async fn insert(
    tx: &mut sqlx::PgConnection,
    rows: &[OutboxRow],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<OutboxRow>> {
    let Some(first) = rows.iter().map(|row| row.id).min() else {
        return Ok(Vec::new());
    };
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let subjects: Vec<&str> = rows.iter().map(|row| row.subject.as_str()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|row| row.payload.as_slice()).collect();
    let traceparents: Vec<Option<&str>> =
        rows.iter().map(|row| row.traceparent.as_deref()).collect();
    let earlier: Vec<RowColumns> = sqlx::query_as(
        "WITH inserted AS ( \
             INSERT INTO outbox (id, subject, payload, created_at, traceparent) \
             SELECT id, subject, payload, $4, traceparent \
             FROM unnest($1::uuid[], $2::text[], $3::bytea[], $5::text[]) \
                 AS o(id, subject, payload, traceparent) \
         ) \
         SELECT id, subject, payload, traceparent FROM outbox \
         WHERE published_at IS NULL AND id < $6 AND subject = ANY($2::text[]) \
         ORDER BY id \
         LIMIT 200",
    )
    .bind(&ids)
    .bind(&subjects)
    .bind(&payloads)
    .bind(now)
    .bind(&traceparents)
    .bind(first)
    .fetch_all(&mut *tx)
    .await?;
    Ok(earlier.into_iter().map(outbox_row).collect())
}

/// Locks up to `limit` unpublished rows older than `grace`, oldest first, skipping rows
/// another sweeper holds.
#[tracing::instrument(skip(tx))]
pub async fn lock_unpublished(
    tx: &mut sqlx::PgConnection,
    grace: Duration,
    limit: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    let rows: Vec<RowColumns> = sqlx::query_as(
        "SELECT id, subject, payload, traceparent FROM outbox \
         WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1) \
         ORDER BY id \
         LIMIT $2 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(outbox_row).collect())
}

/// Deletes rows published longer ago than `age`.
pub async fn delete_published_before<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    age: Duration,
) -> sqlx::Result<u64> {
    let result =
        sqlx::query("DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)")
            .bind(age.as_secs_f64())
            .execute(executor)
            .await?;
    Ok(result.rows_affected())
}
