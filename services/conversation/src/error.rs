//! Every way a conversation RPC can fail, and the one place each becomes a gRPC status.
//!
//! Handlers return [`ServiceError`]; the mapping below is exhaustive (no wildcard arm), so
//! a new failure cannot reach a client without a deliberate status. Internal errors keep
//! their cause chain in the log and send the client only a generic message.

use std::collections::HashMap;

use atelier_proto::error_reason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request breaks field rules: every violation is reported at once.
    #[error("invalid request: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist or belongs to another user: the two are
    /// indistinguishable on purpose, so ids cannot be probed.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("conversation {0} is archived")]
    Archived(String),
    /// A state that forbids the call, in words for the user.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(
        "conversation {conversation_id} allows {max} images, {used} used, {requested} requested"
    )]
    GenerationLimitReached {
        conversation_id: String,
        max: i32,
        used: i32,
        requested: i32,
    },
    #[error("balance {balance} does not cover cost {cost}")]
    CreditsExhausted { balance: i64, cost: i64 },
    /// A SendMessage reused a client_request_id of its conversation for another request;
    /// `fields` are the protobuf paths that differ from the first one.
    #[error(
        "client_request_id {client_request_id:?} made message {message_id}, with a different {}",
        fields.join(", ")
    )]
    IdempotencyKeyReused {
        client_request_id: String,
        message_id: String,
        fields: Vec<&'static str>,
    },
    /// PostgreSQL cannot be reached right now (connection refused or lost, terminated by a
    /// restart, pool exhausted): the caller may retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// An RPC whose implementation arrives with a later capability.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ServiceError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err),
            sqlx::Error::Database(ref db) if lost_connection(db.code().as_deref()) => {
                Self::Unavailable(err)
            }
            err => Self::Unexpected(anyhow::Error::new(err).context("database call failed")),
        }
    }
}

/// Whether a PostgreSQL error code (SQLSTATE) says the server, not the statement, failed:
/// a lost connection (class 08), one terminated by a shutdown or restart (57P01
/// admin_shutdown, "terminating connection due to administrator command"; 57P02
/// crash_shutdown; 57P03 cannot_connect_now, while it starts), or no connection to spare
/// (53300). After a restart every pooled connection fails once like this; the pool tests
/// a connection as it comes back (sqlx pings on release) and drops a dead one, so it is
/// not handed out again.
fn lost_connection(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
    })
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument(violations) => {
                atelier_runtime::grpc::invalid_argument(violations)
            }
            err @ ServiceError::NotFound { .. } => Status::not_found(err.to_string()),
            err @ ServiceError::Archived(_) => {
                Status::failed_precondition(format!("{err}: archived conversations are read-only"))
            }
            ServiceError::FailedPrecondition(message) => Status::failed_precondition(message),
            ServiceError::GenerationLimitReached {
                conversation_id,
                max,
                used,
                requested,
            } => Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "this conversation allows {max} images; {used} used, {requested} more requested"
                ),
                ErrorDetails::with_error_info(
                    error_reason::GENERATION_LIMIT_REACHED,
                    error_reason::DOMAIN,
                    HashMap::from([
                        ("conversation_id".to_owned(), conversation_id),
                        ("max_generations".to_owned(), max.to_string()),
                        ("generation_count".to_owned(), used.to_string()),
                    ]),
                ),
            ),
            ServiceError::CreditsExhausted { balance, cost } => Status::with_error_details(
                Code::ResourceExhausted,
                format!("this message costs {cost} credits; the balance is {balance}"),
                ErrorDetails::with_error_info(
                    error_reason::CREDITS_EXHAUSTED,
                    error_reason::DOMAIN,
                    HashMap::from([
                        ("balance".to_owned(), balance.to_string()),
                        ("cost".to_owned(), cost.to_string()),
                    ]),
                ),
            ),
            // FAILED_PRECONDITION, not INVALID_ARGUMENT: the request is valid on its own (with
            // a new key it succeeds), it is the state, the key already bound to another
            // request, that refuses it; and repeating it will not help until the client
            // changes something. Not ALREADY_EXISTS either, which a client could take for
            // "your message exists": this request's message was never made.
            ServiceError::IdempotencyKeyReused {
                client_request_id,
                message_id,
                fields,
            } => Status::with_error_details(
                Code::FailedPrecondition,
                format!(
                    "client_request_id {client_request_id:?} was already used in this \
                     conversation for message {message_id}, with a different {}; resend that \
                     request unchanged to get its message, or use a new client_request_id \
                     for a new request",
                    fields.join(", ")
                ),
                ErrorDetails::with_error_info(
                    error_reason::IDEMPOTENCY_KEY_REUSED,
                    error_reason::DOMAIN,
                    HashMap::from([
                        ("message_id".to_owned(), message_id),
                        ("fields".to_owned(), fields.join(",")),
                    ]),
                ),
            ),
            ServiceError::Unavailable(err) => {
                tracing::warn!(error = %err, "database unavailable");
                Status::unavailable("the service is temporarily unavailable; retry shortly")
            }
            ServiceError::Unimplemented(what) => Status::unimplemented(format!(
                "{what} is not implemented yet; it arrives with the generation pipeline"
            )),
            ServiceError::Unexpected(err) => {
                tracing::error!(error = ?err, "internal error");
                Status::internal("internal error; it has been logged")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable_not_internal() {
        for err in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            let status = Status::from(ServiceError::from(err));
            assert_eq!(status.code(), Code::Unavailable);
            assert!(!status.message().contains("pool"), "{}", status.message());
        }
        let status = Status::from(ServiceError::from(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), Code::Internal);
    }

    #[test]
    fn a_connection_the_server_ended_is_unavailable_a_failed_statement_is_not() {
        for code in ["57P01", "57P02", "57P03", "08006", "08003", "53300"] {
            assert!(lost_connection(Some(code)), "{code}");
        }
        // A constraint, a syntax error, a serialization failure, a statement timeout: the
        // statement's doing.
        for code in ["23505", "42601", "40001", "57014"] {
            assert!(!lost_connection(Some(code)), "{code}");
        }
        assert!(!lost_connection(None));
    }

    #[test]
    fn field_violations_are_listed_in_the_message_and_the_details() {
        let status = Status::from(ServiceError::InvalidArgument(vec![
            FieldViolation::new("prompt", "must not be empty"),
            FieldViolation::new("settings.width", "too small"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "prompt: must not be empty; settings.width: too small"
        );
        let details = status.get_details_bad_request().expect("details");
        assert_eq!(details.field_violations.len(), 2);
    }
}
