//! The outbox table: rows written with the change they announce, published by the relay.

use std::time::Duration;

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

/// Unpublished rows on `subjects` older than `before`, oldest first (at most a sweep's
/// worth): the rows an instance committed and did not live to publish. Reads the small
/// partial index of unpublished rows; locks nothing (a row published twice is dropped by
/// JetStream as a duplicate).
#[tracing::instrument(skip_all)]
pub async fn unpublished_before<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    subjects: &[&str],
    before: Uuid,
) -> sqlx::Result<Vec<OutboxRow>> {
    let rows: Vec<RowColumns> = sqlx::query_as(
        "SELECT id, subject, payload, traceparent FROM outbox \
         WHERE published_at IS NULL AND id < $2 AND subject = ANY($1) \
         ORDER BY id \
         LIMIT 200",
    )
    .bind(subjects)
    .bind(before)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(outbox_row).collect())
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
