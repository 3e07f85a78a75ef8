//! Messages: the SendMessage transaction, and the reads behind ListMessages and GetMessage.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{MessageRow, OutboxRow};
use crate::pagination::PageRequest;

/// Everything SendMessage writes, decided before the database is touched: ids, seeds,
/// prices and outbox payloads are all known up front, so the write is one statement.
pub struct NewMessageRows<'a> {
    pub owner_id: &'a str,
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    pub content: &'a str,
    pub model: &'a str,
    pub width: i32,
    pub height: i32,
    pub style_preset: &'a str,
    pub seed: Option<i64>,
    pub negative_prompt: &'a str,
    pub client_request_id: Option<&'a str>,
    /// [`crate::inheritance::Unset::to_column`].
    pub unset_settings: Vec<&'static str>,
    pub cost: i64,
    pub price_per_image: i64,
    pub generation_ids: Vec<Uuid>,
    pub generation_seeds: Vec<i64>,
    /// The title the conversation gets if this is its first message and it is auto-titled.
    pub automatic_title: &'a str,
    /// Written in every case.
    pub outbox: Vec<OutboxRow>,
    /// Written only if this message sets the automatic title (its title job and event).
    pub outbox_if_titled: Vec<OutboxRow>,
    pub now: DateTime<Utc>,
}

/// What the SendMessage statement did.
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Written; to be committed. `titled`: the conditional outbox rows were written too.
    Accepted { titled: bool },
    /// A message with this client_request_id exists already: nothing was written.
    Replay(Uuid),
    /// The conversation is missing, not the owner's, archived or at its image limit;
    /// nothing was written. The caller reads the conversation to say which.
    ConversationRefused,
    /// The conversation was updated but the balance does not cover the cost: roll back.
    CreditsRefused,
}

/// The SendMessage write, as one statement inside the caller's transaction:
///
/// 1. the conversation's owner, status and image budget are checked and its counters
///    bumped in one conditional UPDATE (no read-then-write race: a concurrent sender waits
///    for the row lock and re-checks the condition);
/// 2. the credits are reserved in one conditional UPDATE (`balance >= cost`), only if 1 held;
/// 3. the message, its generations, the reservation's ledger row and the outbox rows are
///    inserted, only if 2 held. The outbox rows name the message (`outbox.message_id`): the
///    queue reporter waits for them to be published before it reports the message.
///
/// Lock order is always conversation then account, so concurrent senders cannot deadlock.
/// Data-modifying CTEs run to completion whether read or not; the final SELECT reports
/// which steps happened.
#[tracing::instrument(skip_all, fields(conversation_id = %rows.conversation_id, message_id = %rows.message_id))]
pub async fn insert_new(
    tx: &mut sqlx::PgConnection,
    rows: &NewMessageRows<'_>,
) -> sqlx::Result<SendOutcome> {
    let outbox = rows.outbox.iter().map(|row| (row, false));
    let titled = rows.outbox_if_titled.iter().map(|row| (row, true));
    let (mut outbox_ids, mut subjects, mut payloads, mut only_if_titled) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (row, conditional) in outbox.chain(titled) {
        outbox_ids.push(row.id);
        subjects.push(row.subject.as_str());
        payloads.push(row.payload.as_slice());
        only_if_titled.push(conditional);
    }

    let (existing, conversation_accepted, credits_reserved, titled): (
        Option<Uuid>,
        bool,
        bool,
        bool,
    ) =
        sqlx::query_as(
            "WITH existing AS ( \
                 SELECT id FROM messages \
                 WHERE conversation_id = $1 AND owner_id = $2 AND client_request_id = $13 \
             ), conversation AS ( \
                 UPDATE conversations SET \
                     message_count = message_count + 1, \
                     generation_count = generation_count + $3, \
                     last_activity_at = GREATEST(last_activity_at, $14), \
                     title = CASE WHEN auto_titled AND message_count = 0 THEN $18 ELSE title END \
                 WHERE id = $1 AND owner_id = $2 AND status = 'active' \
                   AND generation_count + $3 <= max_generations \
                   AND NOT EXISTS (SELECT 1 FROM existing) \
                 RETURNING auto_titled AND message_count = 1 AS sets_title \
             ), account AS ( \
                 UPDATE accounts SET balance = balance - $4, updated_at = $14 \
                 WHERE user_id = $2 AND balance >= $4 AND EXISTS (SELECT 1 FROM conversation) \
                 RETURNING balance \
             ), message AS ( \
                 INSERT INTO messages (id, conversation_id, owner_id, content, model, width, \
                     height, image_count, style_preset, seed, negative_prompt, status, cost, \
                     client_request_id, created_at, updated_at, unset_settings, traceparent) \
                 SELECT $5, $1, $2, $6, $7, $8, $9, $3, $10, $11, $12, 'queued', $4, $13, $14, $14, \
                     $25, $24 \
                 FROM account \
                 RETURNING id \
             ), generation AS ( \
                 INSERT INTO generations (id, message_id, conversation_id, owner_id, position, \
                     status, model, width, height, seed, negative_prompt, cost, created_at) \
                 SELECT g.id, message.id, $1, $2, g.ordinal - 1, 'queued', $7, $8, $9, g.seed, \
                     $12, $17, $14 \
                 FROM message, unnest($15::uuid[], $16::bigint[]) WITH ORDINALITY AS g(id, seed, ordinal) \
             ), reservation AS ( \
                 INSERT INTO credit_ledger (id, user_id, kind, amount, reference, created_at) \
                 SELECT $19, $2, 'reserve', $4, message.id::text, $14 FROM message \
             ), announcement AS ( \
                 INSERT INTO outbox (id, subject, payload, created_at, traceparent, message_id) \
                 SELECT o.id, o.subject, o.payload, $14, $24, message.id \
                 FROM message, unnest($20::uuid[], $21::text[], $22::bytea[], $23::bool[]) \
                     AS o(id, subject, payload, only_if_titled) \
                 WHERE NOT o.only_if_titled OR (SELECT sets_title FROM conversation) \
             ) \
             SELECT (SELECT id FROM existing), \
                    EXISTS (SELECT 1 FROM conversation), \
                    EXISTS (SELECT 1 FROM account), \
                    COALESCE((SELECT sets_title FROM conversation), false)",
        )
        .bind(rows.conversation_id) // $1
        .bind(rows.owner_id) // $2
        .bind(i16::try_from(rows.generation_ids.len()).unwrap_or(i16::MAX)) // $3
        .bind(rows.cost) // $4
        .bind(rows.message_id) // $5
        .bind(rows.content) // $6
        .bind(rows.model) // $7
        .bind(rows.width) // $8
        .bind(rows.height) // $9
        .bind(rows.style_preset) // $10
        .bind(rows.seed) // $11
        .bind(rows.negative_prompt) // $12
        .bind(rows.client_request_id) // $13
        .bind(rows.now) // $14
        .bind(&rows.generation_ids) // $15
        .bind(&rows.generation_seeds) // $16
        .bind(rows.price_per_image) // $17
        .bind(rows.automatic_title) // $18
        .bind(Uuid::now_v7()) // $19
        .bind(&outbox_ids) // $20
        .bind(&subjects) // $21
        .bind(&payloads) // $22
        .bind(&only_if_titled) // $23
        // One request, one trace: every row of it carries the same context.
        .bind(rows.outbox.first().and_then(|row| row.traceparent.as_deref())) // $24
        .bind(&rows.unset_settings) // $25
        .fetch_one(&mut *tx)
        .await?;

    Ok(match (existing, conversation_accepted, credits_reserved) {
        (Some(existing), _, _) => SendOutcome::Replay(existing),
        (None, false, _) => SendOutcome::ConversationRefused,
        (None, true, false) => SendOutcome::CreditsRefused,
        (None, true, true) => SendOutcome::Accepted { titled },
    })
}

/// The message a client_request_id of the owner already produced in a conversation.
#[tracing::instrument(skip(pool))]
pub async fn by_client_request_id(
    pool: &PgPool,
    owner_id: &str,
    conversation_id: Uuid,
    client_request_id: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "SELECT id FROM messages \
         WHERE conversation_id = $1 AND owner_id = $2 AND client_request_id = $3",
    )
    .bind(conversation_id)
    .bind(owner_id)
    .bind(client_request_id)
    .fetch_optional(pool)
    .await
}

/// The owner's message, `None` when it does not exist or is not theirs.
#[tracing::instrument(skip(pool))]
pub async fn get(pool: &PgPool, owner_id: &str, id: Uuid) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE id = $1 AND owner_id = $2"
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await
}

/// A page of a conversation's messages, newest first, one extra row to detect more.
/// Empty both for an empty conversation and for one that is not the owner's.
#[tracing::instrument(skip(pool))]
pub async fn page(
    pool: &PgPool,
    owner_id: &str,
    conversation_id: Uuid,
    page: &PageRequest,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages \
         WHERE conversation_id = $1 AND owner_id = $2 \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC \
         LIMIT $5"
    ))
    .bind(conversation_id)
    .bind(owner_id)
    .bind(page.after.map(|cursor| cursor.at))
    .bind(page.after.map(|cursor| cursor.id))
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await
}
