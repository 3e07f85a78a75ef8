//! The generation pipeline's writes: start, record intent, complete, fail or cancel, title.
//!
//! Every write that changes a message's generations first locks the message row
//! ([`lock_message`]), so the calls for one message (two images completing at once, a
//! cancel racing a completion) run one after the other and each sees the others' results.
//! Status changes are conditional (`WHERE status IN ('queued', 'running')`): only the call
//! that moves a generation writes its ledger row, and the ledger's unique key backs that
//! up, so credits are captured or released exactly once whatever is retried.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{GenerationRow, MessageRow};

/// The message row, locked for the rest of the transaction.
#[derive(Debug, sqlx::FromRow)]
pub struct LockedMessage {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// Locks the owner's message; `None` when it is not theirs or does not exist.
#[tracing::instrument(skip(tx))]
pub async fn lock_message(
    tx: &mut sqlx::PgConnection,
    owner_id: &str,
    message_id: Uuid,
) -> sqlx::Result<Option<LockedMessage>> {
    sqlx::query_as(
        "SELECT id, conversation_id, status, created_at FROM messages \
         WHERE id = $1 AND owner_id = $2 FOR UPDATE",
    )
    .bind(message_id)
    .bind(owner_id)
    .fetch_optional(&mut *tx)
    .await
}

/// The message of the owner's generation, locked; `None` when not theirs.
#[tracing::instrument(skip(tx))]
pub async fn lock_message_of_generation(
    tx: &mut sqlx::PgConnection,
    owner_id: &str,
    generation_id: Uuid,
) -> sqlx::Result<Option<LockedMessage>> {
    sqlx::query_as(
        "SELECT m.id, m.conversation_id, m.status, m.created_at \
         FROM messages m JOIN generations g ON g.message_id = m.id \
         WHERE g.id = $1 AND g.owner_id = $2 \
         FOR UPDATE OF m",
    )
    .bind(generation_id)
    .bind(owner_id)
    .fetch_optional(&mut *tx)
    .await
}

/// Locks the owner's message (as [`lock_message`]) and reads it whole. `None` when it is
/// not theirs or does not exist.
#[tracing::instrument(skip(tx))]
pub async fn lock_whole_message(
    tx: &mut sqlx::PgConnection,
    owner_id: &str,
    message_id: Uuid,
) -> sqlx::Result<Option<MessageRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m WHERE m.id = $1 AND m.owner_id = $2 FOR UPDATE OF m"
    ))
    .bind(message_id)
    .bind(owner_id)
    .fetch_optional(&mut *tx)
    .await
}

/// The owner's message with the conversation's message before it.
#[derive(Debug, sqlx::FromRow)]
pub struct MessageWithPrevious {
    #[sqlx(flatten)]
    pub message: MessageRow,
    #[sqlx(flatten)]
    pub previous: PreviousColumns,
}

/// The conversation's message before another: its prompt (resolved prompt of an edit, else
/// its content) and its first completed image. All `None` for a first message.
#[derive(Debug, sqlx::FromRow)]
pub struct PreviousColumns {
    pub previous_id: Option<Uuid>,
    pub previous_prompt: Option<String>,
    pub previous_generation_id: Option<Uuid>,
    pub previous_image_key: Option<String>,
    /// Its settings as made, for an edit or a re-roll to inherit.
    pub previous_model: Option<String>,
    pub previous_width: Option<i32>,
    pub previous_height: Option<i32>,
    pub previous_style_preset: Option<String>,
    pub previous_negative_prompt: Option<String>,
    /// The seed of its first completed image, which an edit starts from.
    pub previous_seed: Option<i64>,
}

/// Reads the owner's message and its previous message in one statement, locking nothing.
/// `None` when it is not theirs or does not exist.
#[tracing::instrument(skip(executor))]
pub async fn message_with_previous(
    executor: impl sqlx::PgExecutor<'_>,
    owner_id: &str,
    message_id: Uuid,
) -> sqlx::Result<Option<MessageWithPrevious>> {
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        ", p.* \
         FROM messages m \
         LEFT JOIN LATERAL ( \
             SELECT pm.id AS previous_id, \
                    COALESCE(NULLIF(pm.resolved_prompt, ''), pm.content) AS previous_prompt, \
                    g.id AS previous_generation_id, g.image_key AS previous_image_key, \
                    pm.model AS previous_model, pm.width AS previous_width, \
                    pm.height AS previous_height, pm.style_preset AS previous_style_preset, \
                    pm.negative_prompt AS previous_negative_prompt, g.seed AS previous_seed \
             FROM messages pm \
             LEFT JOIN LATERAL ( \
                 SELECT id, image_key, seed FROM generations \
                 WHERE message_id = pm.id AND status = 'completed' AND image_key IS NOT NULL \
                 ORDER BY position LIMIT 1 \
             ) g ON true \
             WHERE pm.conversation_id = m.conversation_id \
               AND (pm.created_at, pm.id) < (m.created_at, m.id) \
             ORDER BY pm.created_at DESC, pm.id DESC \
             LIMIT 1 \
         ) p ON true \
         WHERE m.id = $1 AND m.owner_id = $2"
    ))
    .bind(message_id)
    .bind(owner_id)
    .fetch_optional(executor)
    .await
}

/// A generation of a message just started, as it is now.
#[derive(Debug, sqlx::FromRow)]
pub struct StartedRow {
    #[sqlx(flatten)]
    pub generation: GenerationRow,
    /// To be made by this job (it is running).
    pub started: bool,
    /// Was queued until now: this is the first start of the message.
    pub first_start: bool,
    /// The message's new status, when this start changed it.
    pub message_status: Option<String>,
}

/// Moves the locked message's queued generations to running (running ones stay: a
/// redelivered job makes them again) and returns every generation of the message as it is
/// now, in position order. Must follow the lock in the same transaction: the statement's
/// snapshot then holds every change committed before it.
#[tracing::instrument(skip(tx))]
pub async fn start(
    tx: &mut sqlx::PgConnection,
    message_id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<StartedRow>> {
    sqlx::query_as(concat!(
        "WITH before AS ( \
             SELECT id AS before_id, status AS before_status FROM generations \
             WHERE message_id = $1 AND status IN ('queued', 'running') \
         ), started AS ( \
             UPDATE generations SET status = 'running', started_at = COALESCE(started_at, $2) \
             FROM before WHERE id = before_id \
             RETURNING ",
        generation_columns!(),
        ", before_status = 'queued' AS first_start \
         ), processing AS ( \
             UPDATE messages SET status = 'processing', updated_at = $2 \
             WHERE id = $1 AND status = 'queued' AND EXISTS (SELECT 1 FROM started) \
             RETURNING status \
         ) \
         SELECT every.*, (SELECT status FROM processing) AS message_status FROM ( \
             SELECT ",
        generation_columns!(),
        ", true AS started, first_start FROM started \
             UNION ALL \
             SELECT ",
        generation_columns!(),
        ", false, false FROM generations \
             WHERE message_id = $1 AND status NOT IN ('queued', 'running') \
         ) every \
         ORDER BY position"
    ))
    .bind(message_id)
    .bind(now)
    .fetch_all(&mut *tx)
    .await
}

/// What the pipeline resolved for a message.
pub struct ResolvedRow<'a> {
    pub intent_kind: &'a str,
    pub resolved_prompt: &'a str,
    pub edit_type: &'a str,
    pub strength: f32,
    pub enhanced_prompt: &'a str,
    pub negative_prompt: &'a str,
    pub init_generation_id: Option<Uuid>,
}

/// Stores the resolved intent and prompts on the message and its unfinished generations.
/// Returns false when nothing changed (a redelivered job resolving the same again).
#[tracing::instrument(skip_all, fields(%message_id))]
pub async fn record_intent(
    tx: &mut sqlx::PgConnection,
    message_id: Uuid,
    resolved: &ResolvedRow<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let changed: bool = sqlx::query_scalar(
        "WITH message AS ( \
             UPDATE messages SET intent_kind = $2, resolved_prompt = $3, edit_type = $4, \
                 strength = $5, enhanced_prompt = $6, effective_negative_prompt = $7, \
                 updated_at = $8 \
             WHERE id = $1 AND (intent_kind, resolved_prompt, edit_type, strength, \
                 enhanced_prompt, effective_negative_prompt) \
                 IS DISTINCT FROM ($2, $3, $4, $5, $6, $7) \
             RETURNING id \
         ), images AS ( \
             UPDATE generations SET prompt = $6, negative_prompt = $7, \
                 init_generation_id = $9, strength = CASE WHEN $9::uuid IS NULL THEN NULL ELSE $5 END \
             WHERE message_id = $1 AND status IN ('queued', 'running') \
         ) \
         SELECT EXISTS (SELECT 1 FROM message)",
    )
    .bind(message_id)
    .bind(resolved.intent_kind)
    .bind(resolved.resolved_prompt)
    .bind(resolved.edit_type)
    .bind(resolved.strength)
    .bind(resolved.enhanced_prompt)
    .bind(resolved.negative_prompt)
    .bind(now)
    .bind(resolved.init_generation_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(changed)
}

/// Settings an edit or a re-roll inherited, applied to the locked message and its
/// unfinished images ([`crate::inheritance`]).
pub struct InheritedRow<'a> {
    pub model: &'a str,
    pub width: i32,
    pub height: i32,
    pub style_preset: &'a str,
    pub negative_prompt: &'a str,
    /// Image i takes seed + i (modulo 2^32); `None` keeps each image's own.
    pub seed: Option<i64>,
    pub price_per_image: i64,
}

/// Applies inherited settings to the message and its queued or running images and moves
/// the owner's credits by the change of price: a higher price is reserved (only if the
/// balance covers it), a lower one released, each with its ledger row. `None`: the balance
/// could not cover it and nothing changed; else the credits moved (negative: reserved).
/// Must follow the message's lock in the same transaction.
#[tracing::instrument(skip_all, fields(%message_id))]
pub async fn apply_inherited(
    tx: &mut sqlx::PgConnection,
    owner_id: &str,
    message_id: Uuid,
    settings: &InheritedRow<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    let (applied, reserved): (bool, i64) = sqlx::query_as(
        "WITH unfinished AS ( \
             SELECT id, cost FROM generations \
             WHERE message_id = $1 AND status IN ('queued', 'running') \
         ), delta AS ( \
             SELECT COALESCE(sum($9 - cost), 0)::bigint AS amount FROM unfinished \
         ), account AS ( \
             UPDATE accounts SET balance = balance - (SELECT amount FROM delta), updated_at = $10 \
             WHERE user_id = $2 AND balance >= (SELECT amount FROM delta) \
             RETURNING balance \
         ), images AS ( \
             UPDATE generations g SET model = $3, width = $4, height = $5, cost = $9, \
                 seed = CASE WHEN $8::bigint IS NULL THEN g.seed \
                             ELSE ($8::bigint + g.position) % 4294967296 END \
             FROM unfinished WHERE g.id = unfinished.id AND EXISTS (SELECT 1 FROM account) \
         ), message AS ( \
             UPDATE messages SET model = $3, width = $4, height = $5, style_preset = $6, \
                 negative_prompt = $7, seed = COALESCE($8, seed), \
                 cost = cost + (SELECT amount FROM delta), updated_at = $10 \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM account) \
         ), ledger AS ( \
             INSERT INTO credit_ledger (id, user_id, kind, amount, reference, created_at) \
             SELECT $11, $2, CASE WHEN amount > 0 THEN 'reserve' ELSE 'release' END, \
                 abs(amount), $1::text || '/settings/' || $11::text, $10 \
             FROM delta WHERE amount <> 0 AND EXISTS (SELECT 1 FROM account) \
         ) \
         SELECT EXISTS (SELECT 1 FROM account), (SELECT amount FROM delta)",
    )
    .bind(message_id) // $1
    .bind(owner_id) // $2
    .bind(settings.model) // $3
    .bind(settings.width) // $4
    .bind(settings.height) // $5
    .bind(settings.style_preset) // $6
    .bind(settings.negative_prompt) // $7
    .bind(settings.seed) // $8
    .bind(settings.price_per_image) // $9
    .bind(now) // $10
    .bind(Uuid::now_v7()) // $11
    .fetch_one(&mut *tx)
    .await?;
    Ok(applied.then_some(-reserved))
}

/// Completes a running (or queued) generation, captures its credits and, when it was the
/// message's last unfinished one, completes the message. `None` when it had already
/// ended: nothing changes. Must follow the message's lock in the same transaction (see
/// [`start`]).
#[tracing::instrument(skip(tx))]
pub async fn complete(
    tx: &mut sqlx::PgConnection,
    generation_id: Uuid,
    image_key: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<GenerationRow>> {
    sqlx::query_as(concat!(
        "WITH done AS ( \
             UPDATE generations SET status = 'completed', image_key = $2, completed_at = $3 \
             WHERE id = $1 AND status IN ('queued', 'running') \
             RETURNING ",
        generation_columns!(),
        ", owner_id \
         ), capture AS ( \
             INSERT INTO credit_ledger (id, user_id, kind, amount, reference, created_at) \
             SELECT $4, owner_id, 'capture', cost, id::text, $3 FROM done WHERE cost > 0 \
             ON CONFLICT (user_id, kind, reference) DO NOTHING \
         ), settled AS ( \
             UPDATE messages m SET status = 'completed', updated_at = $3 \
             FROM done \
             WHERE m.id = done.message_id AND m.status IN ('queued', 'processing') \
               AND NOT EXISTS ( \
                   SELECT 1 FROM generations other \
                   WHERE other.message_id = done.message_id AND other.id <> done.id \
                     AND other.status IN ('queued', 'running')) \
         ) \
         SELECT ",
        generation_columns!(),
        " FROM done"
    ))
    .bind(generation_id)
    .bind(image_key)
    .bind(now)
    .bind(Uuid::now_v7())
    .fetch_optional(&mut *tx)
    .await
}

/// How generations end without an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Failed,
    Cancelled,
}

impl Ending {
    fn status(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Ends the given unfinished generations of one message (all of them when `ids` is
/// `None`) and releases their credits to the owner once. Returns the ids that ended now
/// and the credits released.
#[tracing::instrument(skip(tx))]
pub async fn end(
    tx: &mut sqlx::PgConnection,
    message_id: Uuid,
    ids: Option<&[Uuid]>,
    ending: Ending,
    reason: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<(Vec<Uuid>, i64)> {
    let (ended, released): (Vec<Uuid>, i64) = sqlx::query_as(
        "WITH ended AS ( \
             UPDATE generations SET status = $3, error = NULLIF($4, ''), completed_at = $5 \
             WHERE message_id = $1 AND status IN ('queued', 'running') \
               AND ($2::uuid[] IS NULL OR id = ANY($2)) \
             RETURNING id, position, cost, owner_id \
         ), entries AS ( \
             INSERT INTO credit_ledger (id, user_id, kind, amount, reference, created_at) \
             SELECT ($6::uuid[])[position + 1], owner_id, 'release', cost, id::text, $5 \
             FROM ended WHERE cost > 0 \
             ON CONFLICT (user_id, kind, reference) DO NOTHING \
             RETURNING user_id, amount \
         ), refunded AS ( \
             UPDATE accounts a SET balance = a.balance + r.total, updated_at = $5 \
             FROM (SELECT user_id, sum(amount)::bigint AS total FROM entries GROUP BY user_id) r \
             WHERE a.user_id = r.user_id \
             RETURNING r.total \
         ) \
         SELECT ARRAY(SELECT id FROM ended ORDER BY position), \
                COALESCE((SELECT sum(total) FROM refunded), 0)::bigint",
    )
    .bind(message_id)
    .bind(ids)
    .bind(ending.status())
    .bind(reason)
    .bind(now)
    // Ledger ids by position: a message has at most four generations.
    .bind(
        (0..crate::requests::MAX_IMAGES_PER_MESSAGE)
            .map(|_| Uuid::now_v7())
            .collect::<Vec<_>>(),
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((ended, released))
}

/// Gives the message its final status once none of its generations is unfinished:
/// completed if any image was made, else failed if any failed, else cancelled.
#[tracing::instrument(skip(tx))]
pub async fn settle_message(
    tx: &mut sqlx::PgConnection,
    message_id: Uuid,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE messages m SET status = CASE \
                 WHEN s.any_completed THEN 'completed' \
                 WHEN s.any_failed THEN 'failed' \
                 ELSE 'cancelled' END, \
             updated_at = $2 \
         FROM ( \
             SELECT bool_or(status IN ('queued', 'running')) AS unfinished, \
                    bool_or(status = 'completed') AS any_completed, \
                    bool_or(status = 'failed') AS any_failed \
             FROM generations WHERE message_id = $1 \
         ) s \
         WHERE m.id = $1 AND NOT s.unfinished AND m.status IN ('queued', 'processing') \
         RETURNING m.status",
    )
    .bind(message_id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
}

/// Sets an LLM title if the owner's conversation is still auto-titled (the caller writes
/// its event in the same transaction). False when the user's own title stays (or the
/// conversation is not theirs).
#[tracing::instrument(skip(tx))]
pub async fn apply_title(
    tx: &mut sqlx::PgConnection,
    owner_id: &str,
    conversation_id: Uuid,
    title: &str,
) -> sqlx::Result<bool> {
    let titled: Option<Uuid> = sqlx::query_scalar(
        "UPDATE conversations SET title = $3 \
         WHERE id = $1 AND owner_id = $2 AND auto_titled AND title IS DISTINCT FROM $3 \
         RETURNING id",
    )
    .bind(conversation_id)
    .bind(owner_id)
    .bind(title)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(titled.is_some())
}

/// A message the reaper claimed: unfinished and unchanged since before the cutoff.
#[derive(Debug, sqlx::FromRow)]
pub struct ReapedRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub owner_id: String,
    pub status: String,
    /// How many times the reaper has now acted on it, this time included.
    pub reap_count: i16,
}

/// Claims up to `limit` unfinished messages unchanged since `cutoff`, oldest first, and
/// marks them reaped now (which also makes them recent: the next claim comes one stale
/// period later at the earliest). Rows another transaction holds are skipped, so two
/// replicas never claim one message in one period.
#[tracing::instrument(skip(pool))]
pub async fn claim_stale(
    pool: &sqlx::PgPool,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<ReapedRow>> {
    sqlx::query_as(
        "UPDATE messages m SET reap_count = reap_count + 1, reaped_at = $2, updated_at = $2 \
         FROM ( \
             SELECT id FROM messages \
             WHERE status IN ('queued', 'processing') AND updated_at < $1 \
             ORDER BY updated_at LIMIT $3 \
             FOR UPDATE SKIP LOCKED \
         ) stale \
         WHERE m.id = stale.id \
         RETURNING m.id, m.conversation_id, m.owner_id, m.status, m.reap_count",
    )
    .bind(cutoff)
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}
