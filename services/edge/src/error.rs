//! Every way an edge call can fail, and the one place each becomes the client's status.
//!
//! Statuses from the conversation service are relayed with their code, message and
//! details (field violations, ErrorInfo), but without its headers, and with the few
//! codes that would mislead a user (a credential problem between services, transport
//! errors naming internal addresses) replaced by what the user can act on.

use std::collections::HashMap;
use std::time::Duration;

use atelier_proto::error_reason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error("rate limited; retry in {0:?}")]
    RateLimited(Duration),
    /// The caller's address failed to authenticate too often: every call from it waits.
    #[error("too many failed authentications; retry in {0:?}")]
    AuthRateLimited(Duration),
    /// The user has `limit` WatchEvents streams open on this edge already.
    #[error("too many event streams ({limit} open)")]
    TooManyStreams { limit: usize },
    #[error("upstream: {0}")]
    Upstream(Status),
}

/// How long a user refused another stream should wait: long enough for a client's
/// reconnect loop not to spin, short enough to get in once a tab closes.
const TOO_MANY_STREAMS_WAIT: Duration = Duration::from_secs(5);

impl From<EdgeError> for Status {
    fn from(err: EdgeError) -> Self {
        match err {
            EdgeError::Unauthenticated(auth) => match auth {
                // The edge cannot verify anything yet: not the caller's fault, and worth
                // a retry.
                AuthError::KeysUnavailable => Status::unavailable(auth.to_string()),
                AuthError::Missing
                | AuthError::Multiple
                | AuthError::NotBearer
                | AuthError::Malformed
                | AuthError::Unsigned
                | AuthError::AlgorithmNotAccepted(_)
                | AuthError::CriticalHeader
                | AuthError::UnknownKey
                | AuthError::MissingKeyId
                | AuthError::KeyAlgorithmMismatch
                | AuthError::BadSignature
                | AuthError::MissingClaim(_)
                | AuthError::Expired
                | AuthError::NotYetValid
                | AuthError::IssuedInFuture
                | AuthError::TooOld
                | AuthError::WrongIssuer
                | AuthError::WrongAudience
                | AuthError::BadSubject => Status::unauthenticated(auth.to_string()),
            },
            EdgeError::RateLimited(wait) => retry_later(
                error_reason::RATE_LIMITED,
                format!("too many calls; retry in {} ms", wait.as_millis().max(1)),
                wait,
            ),
            EdgeError::AuthRateLimited(wait) => retry_later(
                error_reason::AUTH_RATE_LIMITED,
                format!(
                    "too many failed authentications from this address; retry in {} ms",
                    wait.as_millis().max(1)
                ),
                wait,
            ),
            EdgeError::TooManyStreams { limit } => retry_later(
                error_reason::TOO_MANY_STREAMS,
                format!(
                    "this user has {limit} event streams open on this server already; close one or retry later"
                ),
                TOO_MANY_STREAMS_WAIT,
            ),
            EdgeError::Upstream(status) => relay(status),
        }
    }
}

/// RESOURCE_EXHAUSTED with `reason`, a RetryInfo delay of `wait`, and `retry_after_ms`.
fn retry_later(reason: &str, message: String, wait: Duration) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(wait));
    details.set_error_info(
        reason,
        error_reason::DOMAIN,
        HashMap::from([("retry_after_ms".to_owned(), wait.as_millis().to_string())]),
    );
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

fn relay(status: Status) -> Status {
    // An instance died or closed the connection mid-call: whether it committed is unknown
    // here, so the caller retries (SendMessage with its idempotency key replays).
    if atelier_runtime::grpc::cut_by_transport(&status) {
        tracing::warn!(upstream = ?status, "a call to the conversation service was cut");
        return Status::unavailable("the service is temporarily unavailable; retry shortly");
    }
    match status.code() {
        // The edge and the conversation service disagree on the service credential, or
        // the edge forgot the user: a deployment bug, not the caller's.
        Code::Unauthenticated | Code::PermissionDenied => {
            tracing::error!(upstream = ?status, "the conversation service refused the edge");
            Status::internal("internal error; it has been logged")
        }
        // Transport errors name internal hosts and ports: keep them in the log.
        Code::Unavailable => {
            tracing::warn!(upstream = ?status, "conversation service unavailable");
            Status::unavailable("the service is temporarily unavailable; retry shortly")
        }
        // The codes the conversation service gives on purpose carry messages and details
        // meant for the caller.
        code @ (Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::Aborted
        | Code::Unimplemented
        | Code::Cancelled
        | Code::DeadlineExceeded) => {
            Status::with_details(code, status.message(), status.details().to_vec().into())
        }
        // Internal, Unknown, DataLoss (and Ok, which is no error) may carry transport or
        // h2 text: logged, not shown.
        _ => {
            tracing::error!(upstream = ?status, "conversation service failed");
            Status::internal("internal error; it has been logged")
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::FieldViolation;

    use super::*;

    #[test]
    fn field_violations_survive_the_relay() {
        let upstream = Status::with_error_details(
            Code::InvalidArgument,
            "prompt: must not be empty",
            ErrorDetails::with_bad_request(vec![FieldViolation::new(
                "prompt",
                "must not be empty",
            )]),
        );
        let relayed = Status::from(EdgeError::Upstream(upstream));
        assert_eq!(relayed.code(), Code::InvalidArgument);
        assert_eq!(relayed.message(), "prompt: must not be empty");
        let violations = relayed
            .get_details_bad_request()
            .expect("details")
            .field_violations;
        assert_eq!(violations[0].field, "prompt");
    }

    #[test]
    fn internal_addresses_and_credentials_do_not_leak() {
        let unavailable = Status::from(EdgeError::Upstream(Status::unavailable(
            "tcp connect error: 10.0.0.7:50052",
        )));
        assert_eq!(unavailable.code(), Code::Unavailable);
        assert!(!unavailable.message().contains("10.0.0.7"));
        let credential = Status::from(EdgeError::Upstream(Status::unauthenticated(
            "invalid service credential",
        )));
        assert_eq!(credential.code(), Code::Internal);
    }

    #[test]
    fn calls_cut_in_transport_are_unavailable_but_the_upstreams_own_internal_is_not() {
        // What tonic makes of a connection reset mid-call: INTERNAL or UNKNOWN, with the
        // transport error as its source.
        let cut = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert!(matches!(
            cut.code(),
            Code::Unknown | Code::Internal | Code::Unavailable
        ));
        let relayed = Status::from(EdgeError::Upstream(cut));
        assert_eq!(relayed.code(), Code::Unavailable);
        // An INTERNAL the conversation service sent itself stays INTERNAL.
        let sent = Status::from(EdgeError::Upstream(Status::internal("a bug")));
        assert_eq!(sent.code(), Code::Internal);
    }

    #[test]
    fn auth_failures_are_unauthenticated_but_missing_keys_are_unavailable() {
        let status = Status::from(EdgeError::from(AuthError::Expired));
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "the token has expired");
        let status = Status::from(EdgeError::from(AuthError::KeysUnavailable));
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn a_flooding_address_is_told_when_to_retry_and_why() {
        let status = Status::from(EdgeError::AuthRateLimited(Duration::from_millis(1500)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "too many failed authentications from this address; retry in 1500 ms"
        );
        assert_eq!(
            status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
            Some(Duration::from_millis(1500))
        );
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, error_reason::AUTH_RATE_LIMITED);
        assert_eq!(info.domain, error_reason::DOMAIN);
        assert_eq!(info.metadata["retry_after_ms"], "1500");
    }

    #[test]
    fn rate_limits_say_when_to_retry() {
        let status = Status::from(EdgeError::RateLimited(Duration::from_millis(250)));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            status.get_details_error_info().map(|info| info.reason),
            Some(error_reason::RATE_LIMITED.to_owned())
        );
    }
}
