//! GetBalance and the internal GrantCredits.

use atelier_proto::conversation::v1 as internal;
use atelier_proto::v1 as proto;
use tonic_types::FieldViolation;

use crate::State;
use crate::db;
use crate::error::ServiceError;
use crate::outbox::EventContext;

/// The largest single grant: far beyond any purchase, far below a bigint overflow.
const MAX_GRANT: i64 = 1_000_000_000_000;

pub async fn balance(
    state: &State,
    user_id: &str,
) -> Result<proto::GetBalanceResponse, ServiceError> {
    // Opening the account on first sight means a new user sees their starting credits.
    let balance = db::credits::open_account(
        &state.pool,
        user_id,
        state.config.starting_credits,
        db::now(),
    )
    .await?;
    Ok(proto::GetBalanceResponse { balance })
}

pub async fn grant(
    state: &State,
    request: internal::GrantCreditsRequest,
) -> Result<internal::GrantCreditsResponse, ServiceError> {
    let mut violations = Vec::new();
    // The same rule the edge applies to a JWT subject: user ids travel in metadata.
    let user_id = &request.user_id;
    if user_id.is_empty() || user_id.len() > 255 || !user_id.bytes().all(|b| b.is_ascii_graphic()) {
        violations.push(FieldViolation::new(
            "user_id",
            "must be 1 to 255 printable ASCII characters",
        ));
    }
    if !(1..=MAX_GRANT).contains(&request.amount) {
        violations.push(FieldViolation::new(
            "amount",
            format!("must be 1 to {MAX_GRANT}"),
        ));
    }
    let reference = request.reference.trim();
    if reference.is_empty() || reference.chars().count() > 200 {
        violations.push(FieldViolation::new(
            "reference",
            "must be 1 to 200 characters",
        ));
    } else if reference == db::credits::WELCOME_GRANT_REFERENCE {
        violations.push(FieldViolation::new(
            "reference",
            "is reserved for the welcome grant",
        ));
    }
    if !violations.is_empty() {
        return Err(ServiceError::InvalidArgument(violations));
    }

    let now = db::now();
    db::credits::open_account(
        &state.pool,
        &request.user_id,
        state.config.starting_credits,
        now,
    )
    .await?;
    let event = EventContext {
        user_id: &request.user_id,
        conversation_id: None,
        message_id: None,
        at: now,
    }
    .event(proto::event::Payload::CreditsChanged(
        proto::CreditsChanged {
            delta: request.amount,
            reason: proto::CreditsChangeReason::Grant.into(),
            reference: reference.to_owned(),
        },
    ));
    let granted = db::credits::grant(
        &state.pool,
        &request.user_id,
        request.amount,
        reference,
        &event,
        now,
    )
    .await?;
    tracing::info!(user_id = %request.user_id, amount = request.amount, reference, granted = granted.granted, "credits granted");
    Ok(internal::GrantCreditsResponse {
        balance: granted.balance,
        granted: granted.granted,
    })
}
