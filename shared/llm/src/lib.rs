//! One client for every OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
//! Ollama, llama.cpp server, LiteLLM all speak it), used by the intent, enhancement and
//! title workers.
//!
//! The LLM is never on the critical path: every caller has a heuristic that answers
//! without it. So this client is built to fail quickly and cleanly rather than to
//! succeed at any cost:
//!
//! - each call has a deadline that covers all of its attempts, and each attempt has its
//!   own timeout, so a slow provider costs a bounded wait;
//! - only failures that may pass are retried (429, 5xx, timeouts, transport errors), a
//!   bounded number of times, with exponential backoff or the server's `Retry-After`,
//!   but never sleeping past the deadline;
//! - a circuit breaker ([`breaker`]) stops calling a provider that keeps failing, so
//!   while it is down the workers answer from their heuristics at once instead of
//!   waiting out a deadline per job, and the provider is not hammered while it recovers;
//! - JSON output is parsed into the caller's type here, so a reply of the wrong shape is
//!   one more [`LlmError`] for the caller (and a failure for the breaker), not a
//!   half-valid value.
//!
//! Every [`LlmError`] means the same thing to a caller: use the heuristic. The variants
//! exist for logs and metrics.
//!
//! With no endpoint configured ([`LlmConfig::from_env`] returns `None`) the services run
//! in heuristic mode and never build a client.

pub mod breaker;
mod client;
mod config;
mod error;
mod wire;

pub use breaker::BreakerState;
pub use client::{ChatRequest, LlmClient};
pub use config::LlmConfig;
pub use error::LlmError;
