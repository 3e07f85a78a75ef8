//! Why a call produced no answer.

/// Why a call produced no answer.
///
/// Callers treat every variant the same way (they fall back to their heuristic); the
/// variants tell logs and metrics what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// The last attempt, or the whole call, ran out of time.
    #[error("the LLM did not answer in time")]
    Timeout,
    /// The circuit breaker is open: no request was sent.
    #[error("the LLM circuit breaker is open")]
    CircuitOpen,
    /// The endpoint answered with an error status, after any retries.
    #[error("the LLM endpoint answered {status}: {body_excerpt}")]
    Status {
        status: u16,
        /// The start of the response body, with the API key removed, for the log.
        body_excerpt: String,
    },
    /// The request could not be sent or the response could not be read.
    #[error("the LLM endpoint could not be reached: {0}")]
    Transport(String),
    /// The endpoint answered 200 with something that is not a usable answer.
    #[error("the LLM answer is malformed: {0}")]
    Malformed(String),
    /// The model answered, but not with JSON of the caller's shape, even read
    /// tolerantly (code fences and prose around the object are ignored). The endpoint
    /// works, so this does not count against the breaker.
    #[error("the LLM answer has the wrong shape: {0}")]
    WrongShape(String),
}

impl LlmError {
    /// A stable label for logs and metrics.
    /// Every [`LlmError::kind`], for counters that show each one from zero.
    pub const KINDS: [&'static str; 6] = [
        "timeout",
        "circuit_open",
        "status",
        "transport",
        "malformed",
        "wrong_shape",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Timeout => "timeout",
            LlmError::CircuitOpen => "circuit_open",
            LlmError::Status { .. } => "status",
            LlmError::Transport(_) => "transport",
            LlmError::Malformed(_) => "malformed",
            LlmError::WrongShape(_) => "wrong_shape",
        }
    }
}
