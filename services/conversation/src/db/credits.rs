//! Accounts and the credit ledger.
//!
//! The balance is a column changed only by conditional UPDATEs (`balance >= cost`), each
//! paired with a ledger row whose (user, kind, reference) key is unique: concurrency cannot
//! overdraw an account, a retry cannot move credits twice.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::OutboxRow;

/// The reference of the grant that opens every account.
pub const WELCOME_GRANT_REFERENCE: &str = "welcome";

/// Opens the user's account with `starting_balance` (and its grant in the ledger) if it does
/// not exist yet, and returns the balance either way. One statement, two when another call
/// opened the same account concurrently (its row is newer than this statement's snapshot).
#[tracing::instrument(skip(pool))]
pub async fn open_account(
    pool: &PgPool,
    user_id: &str,
    starting_balance: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<i64> {
    let balance: Option<i64> = sqlx::query_scalar(
        "WITH opened AS ( \
             INSERT INTO accounts (user_id, balance, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) \
             ON CONFLICT (user_id) DO NOTHING \
             RETURNING balance \
         ), welcome AS ( \
             INSERT INTO credit_ledger (id, user_id, kind, amount, reference, created_at) \
             SELECT $4, $1, 'grant', $2, $5, $3 FROM opened WHERE $2 > 0 \
         ) \
         SELECT balance FROM opened \
         UNION ALL \
         SELECT balance FROM accounts WHERE user_id = $1 \
         LIMIT 1",
    )
    .bind(user_id)
    .bind(starting_balance)
    .bind(now)
    .bind(Uuid::now_v7())
    .bind(WELCOME_GRANT_REFERENCE)
    .fetch_optional(pool)
    .await?;
    match balance {
        Some(balance) => Ok(balance),
        None => {
            sqlx::query_scalar("SELECT balance FROM accounts WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(pool)
                .await
        }
    }
}

/// Outcome of [`grant`].
#[derive(Debug, PartialEq, Eq)]
pub struct Granted {
    pub balance: i64,
    /// False when the reference had been granted before.
    pub granted: bool,
}

/// Adds `amount` credits once per `reference`, with its event in the outbox. The account
/// must exist ([`open_account`]).
#[tracing::instrument(skip(pool, event))]
pub async fn grant(
    pool: &PgPool,
    user_id: &str,
    amount: i64,
    reference: &str,
    event: &OutboxRow,
    now: DateTime<Utc>,
) -> sqlx::Result<Granted> {
    let (balance, granted): (i64, bool) = sqlx::query_as(
        "WITH entry AS ( \
             INSERT INTO credit_ledger (id, user_id, kind, amount, reference, created_at) \
             VALUES ($1, $2, 'grant', $3, $4, $5) \
             ON CONFLICT (user_id, kind, reference) DO NOTHING \
             RETURNING amount \
         ), credited AS ( \
             UPDATE accounts SET balance = balance + (SELECT amount FROM entry), updated_at = $5 \
             WHERE user_id = $2 AND EXISTS (SELECT 1 FROM entry) \
             RETURNING balance \
         ), announced AS ( \
             INSERT INTO outbox (id, subject, payload, created_at, traceparent) \
             SELECT $6, $7, $8, $5, $9 FROM entry \
         ) \
         SELECT balance, true FROM credited \
         UNION ALL \
         SELECT balance, false FROM accounts WHERE user_id = $2 \
         LIMIT 1",
    )
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(amount)
    .bind(reference)
    .bind(now)
    .bind(event.id)
    .bind(&event.subject)
    .bind(&event.payload)
    .bind(&event.traceparent)
    .fetch_one(pool)
    .await?;
    Ok(Granted { balance, granted })
}

/// The user's balance, `None` when they have no account.
#[tracing::instrument(skip(pool))]
pub async fn balance(pool: &PgPool, user_id: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT balance FROM accounts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await
}
