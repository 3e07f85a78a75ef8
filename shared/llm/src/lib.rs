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
//! - JSON answers are asked for with the caller's [`JsonSchema`] (strict), falling back
//!   to `json_object` on a server that refuses schemas, and parsed into the caller's
//!   type here, tolerantly (code fences, prose around the object): a reply of the wrong
//!   shape is [`LlmError::WrongShape`] for the caller, not a half-valid value, and not a
//!   failure for the breaker, since the endpoint answered.
//!
//! Every [`LlmError`] means the same thing to a caller: use the heuristic. The variants
//! exist for logs and metrics.
//!
//! With no endpoint configured ([`LlmConfig::from_env`] returns `None`) the services run
//! in heuristic mode and never build a client.

pub mod answers;
pub mod breaker;
mod client;
mod config;
mod error;
mod wire;

pub use breaker::BreakerState;
pub use client::{ChatRequest, JsonSchema, LlmClient};
pub use config::{LlmConfig, StructuredOutput};
pub use error::LlmError;
