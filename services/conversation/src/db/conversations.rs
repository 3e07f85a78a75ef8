//! Conversations: create, read, list, rename, archive.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{ConversationRow, OutboxRow};
use crate::pagination::PageRequest;

/// What [`create`] needs.
pub struct NewConversationRow<'a> {
    pub id: Uuid,
    pub owner_id: &'a str,
    pub title: Option<&'a str>,
    pub max_generations: i32,
    pub now: DateTime<Utc>,
}

/// Inserts the conversation. The caller opened the account first (see `credits`).
#[tracing::instrument(skip_all)]
pub async fn create(pool: &PgPool, new: NewConversationRow<'_>) -> sqlx::Result<ConversationRow> {
    sqlx::query_as(concat!(
        "INSERT INTO conversations \
             (id, owner_id, title, auto_titled, max_generations, created_at, last_activity_at) \
         VALUES ($1, $2, COALESCE($3, ''), $3 IS NULL, $4, $5, $5) \
         RETURNING ",
        conversation_columns!(),
        ""
    ))
    .bind(new.id)
    .bind(new.owner_id)
    .bind(new.title)
    .bind(new.max_generations)
    .bind(new.now)
    .fetch_one(pool)
    .await
}

/// The conversation if it exists and belongs to `owner_id`.
#[tracing::instrument(skip(pool))]
pub async fn get(pool: &PgPool, owner_id: &str, id: Uuid) -> sqlx::Result<Option<ConversationRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations WHERE id = $1 AND owner_id = $2"
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await
}

/// A page of the owner's conversations by last activity, one extra row to detect more.
#[tracing::instrument(skip(pool))]
pub async fn list(
    pool: &PgPool,
    owner_id: &str,
    include_archived: bool,
    page: &PageRequest,
) -> sqlx::Result<Vec<ConversationRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations \
         WHERE owner_id = $1 \
           AND ($2 OR status = 'active') \
           AND ($3::timestamptz IS NULL OR (last_activity_at, id) < ($3, $4)) \
         ORDER BY last_activity_at DESC, id DESC \
         LIMIT $5"
    ))
    .bind(owner_id)
    .bind(include_archived)
    .bind(page.after.map(|cursor| cursor.at))
    .bind(page.after.map(|cursor| cursor.id))
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await
}

/// Sets a user's title (for good: `auto_titled` becomes false) on an active conversation,
/// with its event in the outbox. `None` when it is not the owner's or not active.
#[tracing::instrument(skip(pool, event))]
pub async fn rename(
    pool: &PgPool,
    owner_id: &str,
    id: Uuid,
    title: &str,
    event: &OutboxRow,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<ConversationRow>> {
    sqlx::query_as(concat!(
        "WITH renamed AS ( \
             UPDATE conversations SET title = $3, auto_titled = false, \
                 last_activity_at = GREATEST(last_activity_at, $7) \
             WHERE id = $1 AND owner_id = $2 AND status = 'active' \
             RETURNING ",
        conversation_columns!(),
        " \
         ), announced AS ( \
             INSERT INTO outbox (id, subject, payload, created_at, traceparent) \
             SELECT $4, $5, $6, $7, $8 FROM renamed \
         ) \
         SELECT * FROM renamed"
    ))
    .bind(id)
    .bind(owner_id)
    .bind(title)
    .bind(event.id)
    .bind(&event.subject)
    .bind(&event.payload)
    .bind(now)
    .bind(&event.traceparent)
    .fetch_optional(pool)
    .await
}

/// Archives the owner's conversation (archiving twice is a no-op). `None` when not theirs.
#[tracing::instrument(skip(pool))]
pub async fn archive(
    pool: &PgPool,
    owner_id: &str,
    id: Uuid,
) -> sqlx::Result<Option<ConversationRow>> {
    sqlx::query_as(concat!(
        "UPDATE conversations SET status = 'archived' \
         WHERE id = $1 AND owner_id = $2 \
         RETURNING ",
        conversation_columns!(),
        ""
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await
}
