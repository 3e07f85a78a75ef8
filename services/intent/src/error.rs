//! How an AnalyzeIntent call can fail, and the one place that becomes a gRPC status.
//!
//! Only bad input fails a call: a missing, slow or failing LLM never does (the heuristic's
//! best guess answers instead), and a missing credential is refused by the interceptor
//! before the handler runs. The mapping has no wildcard arm, so a new failure cannot reach
//! a client without a deliberate status.

use tonic::Status;
use tonic_types::FieldViolation;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request breaks field rules: every violation is reported at once.
    #[error("invalid request: {0:?}")]
    InvalidArgument(Vec<FieldViolation>),
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument(violations) => {
                atelier_runtime::grpc::invalid_argument(violations)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn violations_are_in_the_message_and_the_details() {
        let status = Status::from(ServiceError::InvalidArgument(vec![
            FieldViolation::new("prompt", "must not be empty"),
            FieldViolation::new("previous_prompt", "must not contain NUL characters"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "prompt: must not be empty; previous_prompt: must not contain NUL characters"
        );
        let details = status.get_details_bad_request().expect("details");
        assert_eq!(details.field_violations.len(), 2);
        assert_eq!(details.field_violations[0].field, "prompt");
    }
}
