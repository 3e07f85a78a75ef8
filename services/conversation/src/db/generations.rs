//! Generations (images): the batch read behind ListMessages, and favourites.

use sqlx::PgPool;
use uuid::Uuid;

use super::GenerationRow;
use crate::pagination::PageRequest;

/// Every generation of the given messages, in message then position order: one statement
/// for a whole page of messages.
#[tracing::instrument(skip_all, fields(messages = message_ids.len()))]
pub async fn of_messages(pool: &PgPool, message_ids: &[Uuid]) -> sqlx::Result<Vec<GenerationRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        generation_columns!(),
        " FROM generations \
         WHERE message_id = ANY($1) \
         ORDER BY message_id, position"
    ))
    .bind(message_ids)
    .fetch_all(pool)
    .await
}

/// The owner's generation, `None` when it does not exist or is not theirs.
#[tracing::instrument(skip(pool))]
pub async fn get(pool: &PgPool, owner_id: &str, id: Uuid) -> sqlx::Result<Option<GenerationRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        generation_columns!(),
        " FROM generations WHERE id = $1 AND owner_id = $2"
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await
}

/// Marks or unmarks a completed generation as favourite. `None` when it is not the owner's
/// or not completed; the caller tells the two apart.
#[tracing::instrument(skip(pool))]
pub async fn set_favorite(
    pool: &PgPool,
    owner_id: &str,
    id: Uuid,
    favorite: bool,
) -> sqlx::Result<Option<GenerationRow>> {
    sqlx::query_as(concat!(
        "UPDATE generations SET is_favorite = $3 \
         WHERE id = $1 AND owner_id = $2 AND status = 'completed' \
         RETURNING ",
        generation_columns!(),
        ""
    ))
    .bind(id)
    .bind(owner_id)
    .bind(favorite)
    .fetch_optional(pool)
    .await
}

/// A page of the owner's favourites, newest first, one extra row to detect more.
#[tracing::instrument(skip(pool))]
pub async fn favorites(
    pool: &PgPool,
    owner_id: &str,
    page: &PageRequest,
) -> sqlx::Result<Vec<GenerationRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        generation_columns!(),
        " FROM generations \
         WHERE owner_id = $1 AND is_favorite \
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3)) \
         ORDER BY created_at DESC, id DESC \
         LIMIT $4"
    ))
    .bind(owner_id)
    .bind(page.after.map(|cursor| cursor.at))
    .bind(page.after.map(|cursor| cursor.id))
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await
}
