//! All SQL of Atelier, as plain async functions over a pool or a transaction.
//!
//! Only this module (of this service) talks to PostgreSQL. Queries are runtime-checked
//! `sqlx::query_as` with `FromRow` rows; every function is a `tracing` span so a slow
//! statement shows in the trace of the RPC that ran it.

/// Column lists as macros so queries stay `&'static str` (sqlx 0.9 refuses built strings).
macro_rules! conversation_columns {
    () => {
        "id, title, auto_titled, status, message_count, \
    generation_count, max_generations, created_at, last_activity_at"
    };
}

macro_rules! message_columns {
    () => {
        "id, conversation_id, content, model, width, height, \
    image_count, style_preset, seed, negative_prompt, status, intent_kind, resolved_prompt, \
    edit_type, strength, enhanced_prompt, effective_negative_prompt, cost, client_request_id, \
    created_at, unset_settings"
    };
}

macro_rules! generation_columns {
    () => {
        "id, message_id, conversation_id, position, status, model, \
    width, height, seed, prompt, negative_prompt, init_generation_id, strength, image_key, \
    cost, is_favorite, error, created_at, started_at, completed_at"
    };
}

pub mod conversations;
pub mod credits;
pub mod generations;
pub mod messages;
pub mod outbox;
pub mod pipeline;
pub mod queue;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Opens the pool. `max_connections` caps what this process asks of PostgreSQL.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // A ping before every acquire would add a round trip to every RPC; a dead
        // connection fails its query instead and the pool replaces it.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// `now()` as PostgreSQL stores it (microseconds), so a value returned from memory equals
/// the same value read back.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[derive(Clone, Debug, FromRow)]
pub struct ConversationRow {
    pub id: Uuid,
    pub title: String,
    pub auto_titled: bool,
    pub status: String,
    pub message_count: i32,
    pub generation_count: i32,
    pub max_generations: i32,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
}

#[derive(Clone, Debug, FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub content: String,
    pub model: String,
    pub width: i32,
    pub height: i32,
    pub image_count: i16,
    pub style_preset: String,
    pub seed: Option<i64>,
    pub negative_prompt: String,
    pub status: String,
    pub intent_kind: Option<String>,
    pub resolved_prompt: Option<String>,
    pub edit_type: Option<String>,
    pub strength: Option<f32>,
    pub enhanced_prompt: Option<String>,
    /// What the image model was told to avoid; `None` until the pipeline resolved it.
    pub effective_negative_prompt: Option<String>,
    pub cost: i64,
    pub client_request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// What the request left unset ([`crate::inheritance::Unset`]).
    pub unset_settings: Vec<String>,
}

#[derive(Clone, Debug, FromRow)]
pub struct GenerationRow {
    pub id: Uuid,
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub position: i16,
    pub status: String,
    pub model: String,
    pub width: i32,
    pub height: i32,
    pub seed: i64,
    pub prompt: String,
    pub negative_prompt: String,
    pub init_generation_id: Option<Uuid>,
    pub strength: Option<f32>,
    pub image_key: Option<String>,
    pub cost: i64,
    pub is_favorite: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// One row for the outbox: `subject` is relative to the NATS subject prefix.
#[derive(Clone, Debug)]
pub struct OutboxRow {
    pub id: Uuid,
    pub subject: String,
    pub payload: Vec<u8>,
    /// The trace of the request that wrote it, continued when it is published.
    pub traceparent: Option<String>,
}
